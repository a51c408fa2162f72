"""Audit a store's judgments before training on them: agreement, annotator quality, position and length bias,
preferred-vs-correct, and a Bradley-Terry ranking of the candidate sources.

Everything here is a pure function of the comparisons (annotate.store.effective_votes / read_table), so the
CLI (annotate.audit_cli), the HTML/JSON report (annotate.audit_report) and the app's Dashboard tab
(`dashboard_summary`, `dashboard_figures`) all show the same numbers.

Conventions:
- a *pair* is prompt_id + the unordered pair of response ids, so a pair shown with sides swapped is the same
  item; a vote's *label* is which response id won ("lo"/"hi" = the lexicographically smaller/larger id), "tie"
  or "both_bad" (skips carry no judgment and are left out of agreement);
- the first vote of an annotator on a pair counts for agreement; later ones are the audit repeats (flip rate);
- honeypots (a response against itself: response_a_id == response_b_id or identical text) have no content
  difference, so they feed only the position-bias figures and the honeypot tie rate;
- imported votes (session "import:...") have no real left/right placement and are left out of position bias.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from annotate.audit_features import CONFIDENCE_MARKERS, FEATURES, HEDGE_MARKERS, pair_features
from annotate.pool import GoldMap, gold_pairs

RANDOM_CLICKER_RULE = (
    "An annotator is flagged as a random clicker when (1) at least {min_n} of their votes can be checked against "
    "the majority of the other annotators on the same pair (or, failing that, against gold pairs), (2) their "
    "agreement with that majority (or their gold accuracy) is not significantly above chance (one-sided exact "
    "binomial test, p >= {alpha_chance}; chance = the agreement expected if their labels were independent of the "
    "item, given their own label frequencies), and (3) their picks are near-uniform over position and length: "
    "neither the share of left wins nor the share of longer-response wins differs from 50% (two-sided binomial, "
    "p >= {alpha_bias}). Annotators failing only (3) have a systematic habit instead and are flagged for it "
    "('position_bias', 'length_bias')."
)


gold_from_pool = gold_pairs  # the one definition lives with the pool


def _effective(data: pa.Table | pd.DataFrame) -> pd.DataFrame:
    if isinstance(data, pa.Table):
        # The prompt (a list of message structs) is the costliest column to convert and the audit never reads it.
        data = data.select([c for c in data.column_names if c not in ("prompt", "rationale")])
    df = data.to_pandas() if isinstance(data, pa.Table) else data
    if "retracts" in df.columns and df["retracts"].notna().any():
        retracted = set(df["retracts"].dropna())
        df = df[df["retracts"].isna() & ~df["comparison_id"].isin(retracted)]
    return df.reset_index(drop=True)


def _criterion(value: Any, name: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    items = value.items() if isinstance(value, dict) else value  # Arrow maps come back as (key, value) tuples
    for k, v in items:
        if k == name:
            return v
    return None


def prepare_votes(data: pa.Table | pd.DataFrame, gold: GoldMap | None = None) -> pd.DataFrame:
    """One row per standing vote with everything the audit needs, side-normalised (see module docstring)."""
    df = _effective(data)
    a_id, b_id = df["response_a_id"].astype(str), df["response_b_id"].astype(str)
    swap = a_id > b_id
    lo, hi = a_id.where(~swap, b_id), b_id.where(~swap, a_id)
    choice = df["choice"].astype(str)
    v = pd.DataFrame(
        {
            "annotator": df["annotator"].astype(str),
            "prompt_id": df["prompt_id"].astype(str),
            "a_id": a_id,
            "b_id": b_id,
            "lo": lo,
            "hi": hi,
            "source_a": df["source_a"].fillna("").astype(str),
            "source_b": df["source_b"].fillna("").astype(str),
            "left": df["left"].astype(str),
            "choice": choice,
            "decision_ms": pd.to_numeric(df["decision_ms"], errors="coerce"),
            "created_at": df["created_at"],
        }
    )
    v["key"] = pd.factorize(v["prompt_id"] + "\x1f" + lo + "\x1f" + hi)[0]
    v["honeypot"] = (a_id == b_id) | (df["response_a"].fillna("") == df["response_b"].fillna(""))
    v["decisive"] = choice.isin(["a", "b"])
    a_won = choice == "a"
    v["winner_id"] = np.where(v["decisive"], np.where(a_won, a_id, b_id), None)
    a_is_lo = ~swap
    label = np.full(len(v), -1)
    label[(a_won & a_is_lo) | ((choice == "b") & ~a_is_lo)] = 0
    label[(a_won & ~a_is_lo) | ((choice == "b") & a_is_lo)] = 1
    label[choice == "tie"] = 2
    label[choice == "both_bad"] = 3
    v["label"] = label
    v["a_won"] = np.where(v["decisive"], a_won.astype(float), np.nan)
    v["left_won"] = np.where(v["decisive"], (choice == v["left"]).astype(float), np.nan)
    v["left_id"] = np.where(v["left"] == "a", a_id, b_id)
    # Imported judgments (annotate.importers marks their session "import:...") were never shown side by side.
    session = df["session"].fillna("").astype(str) if "session" in df else pd.Series("", index=df.index)
    v["placed"] = ~session.str.startswith("import:").to_numpy()
    fa, fb = pair_features(df)
    for f in FEATURES:
        v[f"a_{f}"], v[f"b_{f}"] = fa[f].to_numpy(), fb[f].to_numpy()
    v["correct_pick"] = [_criterion(c, "correct") for c in df["criteria"]] if "criteria" in df else None
    v["gold_winner"] = _gold_winners(v, gold or {})
    v = v.sort_values("created_at", kind="stable")
    v["order"] = v.groupby(["annotator", "key"]).cumcount()
    return v.sort_index()


def _gold_winners(v: pd.DataFrame, gold: GoldMap) -> list[str | None]:
    if not gold:
        return [None] * len(v)
    return [gold.get(k) for k in zip(v["prompt_id"], v["lo"], v["hi"])]


def run_audit(
    data: pa.Table | pd.DataFrame,
    gold: GoldMap | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    length_unit: str = "chars",
    min_n: int = 20,
    alpha_chance: float = 0.05,
    alpha_bias: float = 0.01,
) -> dict:
    """The full audit as a JSON-able dict (NaN where a figure is undefined; `to_jsonable` turns it into null)."""
    from annotate.audit_agreement import agreement, annotator_quality
    from annotate.audit_bias import length_bias, position_bias, preferred_vs_correct
    from annotate.audit_rank import bt_ranking

    if length_unit not in ("chars", "words"):
        raise ValueError(f"length_unit must be 'chars' or 'words', got {length_unit!r}")
    v = prepare_votes(data, gold)
    settings = {"n_boot": n_boot, "seed": seed, "length_unit": length_unit, "min_n": min_n}
    settings |= {"alpha_chance": alpha_chance, "alpha_bias": alpha_bias}
    result = {
        "summary": _summary(v),
        "settings": settings,
        "agreement": agreement(v, n_boot=n_boot, seed=seed),
        "annotators": annotator_quality(v),
        "position": position_bias(v),
        "length": length_bias(v, unit=length_unit, min_n=min_n),
        "preferred_vs_correct": preferred_vs_correct(v),
        "ranking": bt_ranking(v, n_boot=n_boot, seed=seed),
        "definitions": {
            "hedge_markers": list(HEDGE_MARKERS),
            "confidence_markers": list(CONFIDENCE_MARKERS),
            "random_clicker_rule": RANDOM_CLICKER_RULE.format(
                min_n=min_n, alpha_chance=alpha_chance, alpha_bias=alpha_bias
            ),
        },
    }
    result["flags"] = flag_annotators(result, min_n=min_n, alpha_chance=alpha_chance, alpha_bias=alpha_bias)
    return result


def _summary(v: pd.DataFrame) -> dict:
    return {
        "votes": int(len(v)),
        "annotators": int(v["annotator"].nunique()),
        "prompts": int(v["prompt_id"].nunique()),
        "pairs": int(v.loc[~v["honeypot"], "key"].nunique()),
        "choices": {str(k): int(n) for k, n in v["choice"].value_counts().sort_index().items()},
        "honeypot_votes": int(v["honeypot"].sum()),
        "repeat_votes": int(((v["order"] > 0) & ~v["honeypot"]).sum()),
        "gold_votes": int(v["gold_winner"].notna().sum()),
    }


def flag_annotators(result: dict, *, min_n: int = 20, alpha_chance: float = 0.05, alpha_bias: float = 0.01) -> dict:
    """Apply RANDOM_CLICKER_RULE and the habit flags; writes `flags` into each annotator's entry too."""
    out: dict[str, list[str]] = {}
    for name, ann in result["annotators"].items():
        flags = []
        pos = result["position"]["per_annotator"].get(name, {})
        lng = result["length"]["p_longer"]["per_annotator"].get(name, {})
        biased = {}
        for flag, stat in (("position_bias", pos), ("length_bias", lng)):
            biased[flag] = stat.get("n", 0) >= min_n and stat["p_value"] < alpha_bias
            if biased[flag]:
                flags.append(flag)
        evidence = ann["majority"] if ann["majority"]["n"] >= min_n else ann["gold"]
        if evidence["n"] >= min_n and evidence["p_value"] >= alpha_chance and not any(biased.values()):
            flags.insert(0, "random_clicker")
        ann["flags"] = flags
        out[name] = flags
    return {
        "per_annotator": out,
        "random_clickers": sorted(n for n, f in out.items() if "random_clicker" in f),
        "rule": result["definitions"]["random_clicker_rule"],
    }


def to_jsonable(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively, so json.dumps(allow_nan=False) works."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dashboard_summary(table: pa.Table | pd.DataFrame, gold: GoldMap | None = None, n_boot: int = 200) -> dict:
    """What the app's Dashboard tab shows: headline figures, one row per annotator, and the full audit (under
    "audit", for `dashboard_figures`). Fewer bootstrap draws than the CLI so that it refreshes quickly."""
    audit = run_audit(table, gold, n_boot=n_boot)
    rows = []
    for name, ann in audit["annotators"].items():
        pos = audit["position"]["per_annotator"].get(name, {})
        lng = audit["length"]["p_longer"]["per_annotator"].get(name, {})
        rows.append(
            {
                "annotator": name,
                "votes": ann["votes"],
                "gold_accuracy": ann["gold"]["rate"],
                "majority_agreement": ann["majority"]["rate"],
                "median_decision_s": ann["decision_ms"]["median"] / 1000,
                "left_share": pos.get("rate", math.nan),
                "longer_share": lng.get("rate", math.nan),
                "flags": ", ".join(ann["flags"]),
            }
        )
    from annotate.audit_report import findings

    return to_jsonable(
        {
            "summary": audit["summary"],
            "alpha": audit["agreement"]["alpha"],
            "left_share": audit["position"]["overall"],
            "longer_share": audit["length"]["p_longer"]["overall"],
            "random_clickers": audit["flags"]["random_clickers"],
            "annotators": rows,
            "findings": findings(audit),
            "audit": audit,
        }
    )


def dashboard_figures(summary_or_audit: dict) -> dict:
    """Matplotlib figures (name -> Figure) for `gr.Plot`s, from `dashboard_summary(...)` or `run_audit(...)`."""
    from annotate.audit_report import make_figures

    return make_figures(summary_or_audit.get("audit", summary_or_audit))
