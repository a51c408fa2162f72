"""Position bias, length (and hedging/confidence) bias, and preferred-vs-correct, from the audit's vote frame.

Only decisive votes (A or B) say which side or which response won; ties, both_bad and skips are left out of
these figures. Honeypots count for position only (identical responses: any preference is for a side).
Imported votes (session "import:...", e.g. HH-RLHF) were never shown left/right, so they have no position.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from annotate.audit_stats import coef_table, fit_logistic, proportion, standardise
from annotate.audit_types import (
    Breakdown,
    LengthBias,
    LogitFit,
    LongerShare,
    MeanLength,
    PositionBias,
    PreferredVsCorrect,
    Proportion,
    Regression,
)

REGRESSORS = ("length", "hedges", "confidence")


def _per_annotator(d: pd.DataFrame, success: pd.Series, null: float = 0.5) -> dict[str, Proportion]:
    return {
        str(name): proportion(int(s.sum()), len(s), null) for name, s in success.groupby(d["annotator"], sort=True)
    }


def position_bias(v: pd.DataFrame) -> PositionBias:
    """Share of decisive votes won by the left response (binomial test vs 50%), and the flip rate on repeats."""
    d = v[v["decisive"] & v["placed"]]
    left = d["left_won"] == 1.0
    hp = d[d["honeypot"]]
    return PositionBias(
        overall=proportion(int(left.sum()), len(left)),
        per_annotator=_per_annotator(d, left),
        honeypots=proportion(int((hp["left_won"] == 1.0).sum()), len(hp)),
        flips=flip_rate(v),
    )


def flip_rate(v: pd.DataFrame) -> Breakdown:
    """On a pair an annotator judged twice with the sides swapped, how often the winning *response* changed
    (i.e. they stuck to a side rather than to content). First vs second decisive judgment of the pair."""
    d = v[v["decisive"] & ~v["honeypot"] & v["placed"]].sort_values("created_at", kind="stable")
    d = d.assign(n=d.groupby(["annotator", "key"]).cumcount())
    cols = ["annotator", "key", "left_id", "winner_id"]
    m = d.loc[d["n"] == 0, cols].merge(d.loc[d["n"] == 1, cols], on=["annotator", "key"])
    m = m[m["left_id_x"] != m["left_id_y"]]
    flipped = m["winner_id_x"] != m["winner_id_y"]
    return Breakdown(overall=proportion(int(flipped.sum()), len(flipped)), per_annotator=_per_annotator(m, flipped))


def _lo_minus_hi(d: pd.DataFrame, feature: str) -> np.ndarray:
    """feature(lower-id response) - feature(higher-id response): an orientation unrelated to content or side."""
    a, b = d[f"a_{feature}"].to_numpy(), d[f"b_{feature}"].to_numpy()
    return np.where((d["a_id"] == d["lo"]).to_numpy(), a - b, b - a)


def _logit_summary(x: np.ndarray, y: np.ndarray, names: list[str]) -> LogitFit:
    beta, cov = fit_logistic(x, y)
    return LogitFit(n=int(len(y)), coefficients=coef_table(names, beta, cov))


def _design(d: pd.DataFrame, unit: str) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Rows oriented lower-id vs higher-id response; y = the lower-id one won.

    Columns: intercept; position (+1 when the lower-id response was on the left, -1 when on the right, 0 when
    no placement was recorded) only when placements vary and both sides won sometimes (otherwise it is
    perfectly confounded, e.g. imported data); then standardised differences in length, hedging, confidence.
    """
    y = (d["winner_id"] == d["lo"]).to_numpy(dtype=float)
    placed = d["placed"].to_numpy()
    pos = np.where(placed, np.where((d["left_id"] == d["lo"]).to_numpy(), 1.0, -1.0), 0.0)
    left_won = d.loc[d["placed"], "left_won"]
    columns, names, sds = [np.ones(len(d))], ["intercept"], {}
    if left_won.nunique() == 2:
        columns.append(pos)
        names.append("position")
    for name, feat in zip(REGRESSORS, (unit, "hedges", "confidence")):
        z, sds[name] = standardise(_lo_minus_hi(d, feat))
        if sds[name] > 0:  # a constant column would make the fit singular
            columns.append(z)
            names.append(name)
    return np.column_stack(columns), y, names, sds


def length_bias(v: pd.DataFrame, unit: str = "chars", min_n: int = 20) -> LengthBias:
    """P(the longer response is chosen) with a Wilson CI and binomial test, and a logistic regression of the
    choice on position and on standardised differences in length, hedging and confidence markers.

    Each slope is the change in log-odds of choosing a response per standard deviation of that difference (SDs
    pooled over all votes, so annotators compare); the position slope is the log-odds of choosing the left side.
    """
    d = v[v["decisive"] & ~v["honeypot"]]
    la, lb = d[f"a_{unit}"], d[f"b_{unit}"]
    differ = la != lb
    longer_won = ((la > lb) == (d["a_won"] == 1.0))[differ]
    dd = d[differ]
    x, y, names, sds = _design(d, unit)
    per_annotator = {}
    ann = d["annotator"].to_numpy()
    for name in sorted(d["annotator"].unique()):
        rows = ann == name
        if rows.sum() >= min_n:
            per_annotator[str(name)] = _logit_summary(x[rows], y[rows], names)
    overall = _logit_summary(x, y, names) if len(y) >= min_n else None
    return LengthBias(
        unit=unit,
        p_longer=LongerShare(
            overall=proportion(int(longer_won.sum()), len(longer_won)),
            per_annotator=_per_annotator(dd, longer_won),
            equal_length_excluded=int((~differ).sum()),
        ),
        regression=Regression(overall=overall, per_annotator=per_annotator),
        sd=sds,
        mean_length=MeanLength(
            chosen=float(np.where(d["a_won"] == 1.0, la, lb).mean()) if len(d) else math.nan,
            rejected=float(np.where(d["a_won"] == 1.0, lb, la).mean()) if len(d) else math.nan,
        ),
    )


def preferred_vs_correct(v: pd.DataFrame) -> PreferredVsCorrect:
    """Where the annotator also picked the more *correct* response (criteria['correct'] = a or b), how often the
    overall winner is the other one: preference overriding correctness."""
    d = v[v["decisive"] & v["correct_pick"].isin(["a", "b"])]
    mismatch = d["choice"] != d["correct_pick"]
    return PreferredVsCorrect(
        overall=proportion(int(mismatch.sum()), len(mismatch)),
        per_annotator=_per_annotator(d, mismatch),
        correct_ties=int((v["decisive"] & (v["correct_pick"] == "tie")).sum()),
    )
