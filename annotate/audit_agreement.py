"""Inter-annotator agreement and per-annotator quality (gold accuracy, agreement with the majority, timing).

Input is the side-normalised vote frame of annotate.audit.prepare_votes. Labels are nominal with four
categories (lower-id response won, higher-id response won, tie, both_bad); a tie is a category of its own, so
"tie" vs "A" is a disagreement like "A" vs "B".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from annotate.audit_stats import cohen_kappa, krippendorff_alpha, proportion, unit_counts, wilson
from annotate.audit_types import Agreement, AnnotatorQuality, HoneypotTies, KappaPair, MajorityAgreement, Timing

N_LABELS = 4


def first_votes(v: pd.DataFrame) -> pd.DataFrame:
    """Each annotator's first judgment of each (non-honeypot) pair; skips carry no label."""
    return v[(v["order"] == 0) & (v["label"] >= 0) & ~v["honeypot"]]


def agreement(v: pd.DataFrame, n_boot: int = 1000, seed: int = 0, min_shared: int = 5) -> Agreement:
    """Krippendorff's alpha over all pairs and Cohen's kappa for every annotator pair sharing >= min_shared items."""
    f = first_votes(v)
    alpha = krippendorff_alpha(unit_counts(f["key"].to_numpy(), f["label"].to_numpy(), N_LABELS), n_boot, seed)
    j = f[["key", "annotator", "label"]].merge(f[["key", "annotator", "label"]], on="key")
    j = j[j["annotator_x"] < j["annotator_y"]]
    pairs = []
    for (a1, a2), g in j.groupby(["annotator_x", "annotator_y"], sort=True):
        if len(g) < min_shared:
            continue
        k = cohen_kappa(g["label_x"].to_numpy(), g["label_y"].to_numpy(), N_LABELS, n_boot=n_boot, seed=seed)
        pairs.append(KappaPair(annotators=(a1, a2), kappa=k.kappa, ci=k.ci, n=k.n,
                               observed_agreement=k.observed_agreement))  # fmt: skip
    kappas = np.array([p.kappa for p in pairs], dtype=float)
    weights = np.array([p.n for p in pairs], dtype=float)
    ok = np.isfinite(kappas)
    mean_kappa = float(np.average(kappas[ok], weights=weights[ok])) if ok.any() else math.nan
    return Agreement(alpha=alpha, kappa_pairs=tuple(pairs), mean_kappa=mean_kappa, min_shared=min_shared)


def majority_agreement(v: pd.DataFrame) -> pd.DataFrame:
    """Per first vote: the leave-one-out majority label of the *other* annotators on the same pair.

    Returns the comparable votes (at least one other vote and a unique most frequent label among them) with
    columns annotator, label, majority, agree.
    """
    f = first_votes(v)
    keys, labels = f["key"].to_numpy(), f["label"].to_numpy()
    counts = np.zeros((int(keys.max()) + 1 if len(keys) else 0, N_LABELS))
    np.add.at(counts, (keys, labels), 1)
    others = counts[keys]
    others[np.arange(len(labels)), labels] -= 1
    top = others.max(axis=1)
    unique_top = (others == top[:, None]).sum(axis=1) == 1
    ok = (others.sum(axis=1) >= 1) & unique_top
    out = pd.DataFrame({"annotator": f["annotator"].to_numpy(), "label": labels, "majority": others.argmax(axis=1)})
    out = out[ok]
    out["agree"] = out["label"] == out["majority"]
    return out


def _majority_stats(m: pd.DataFrame) -> MajorityAgreement:
    """Agreement rate vs chance: chance = sum_c p_c q_c, the agreement of labels drawn independently of the
    item from the annotator's own label shares p and the majority's label shares q (as in Cohen's p_e)."""
    n, k = len(m), int(m["agree"].sum()) if len(m) else 0
    if n == 0:
        return MajorityAgreement(k=0, n=0, rate=math.nan, ci=(math.nan, math.nan), chance=math.nan, p_value=math.nan)
    p = np.bincount(m["label"], minlength=N_LABELS) / n
    q = np.bincount(m["majority"], minlength=N_LABELS) / n
    chance = float(min(max(p @ q, 1e-9), 1 - 1e-9))
    p_value = float(stats.binomtest(k, n, chance, alternative="greater").pvalue)
    return MajorityAgreement(k=k, n=n, rate=k / n, ci=wilson(k, n), chance=chance, p_value=p_value)


def _timing(ms: pd.Series) -> Timing:
    ms = ms.dropna()
    if ms.empty:
        return Timing(n=0, median=math.nan, mean=math.nan, p10=math.nan, p90=math.nan)
    q = ms.quantile([0.1, 0.5, 0.9]).to_numpy()
    return Timing(n=int(len(ms)), median=float(q[1]), mean=float(ms.mean()), p10=float(q[0]), p90=float(q[2]))


def annotator_quality(v: pd.DataFrame) -> dict[str, AnnotatorQuality]:
    """Per annotator: vote counts, decision time, gold accuracy, agreement with the majority, honeypot ties
    (flags are left empty: annotate.audit.flag_annotators sets them from the bias figures)."""
    maj = majority_agreement(v)
    gold = v[v["gold_winner"].notna() & (v["label"] >= 0) & ~v["honeypot"]]
    gold_ok = gold["winner_id"] == gold["gold_winner"]  # a tie or both_bad on a gold pair counts as wrong
    hp = v[v["honeypot"] & (v["choice"] != "skip")]
    out = {}
    for name, g in v.groupby("annotator", sort=True):
        gm = gold_ok[gold["annotator"] == name]
        h = hp[hp["annotator"] == name]
        out[str(name)] = AnnotatorQuality(
            votes=int(len(g)),
            choices={str(c): int(n) for c, n in g["choice"].value_counts().sort_index().items()},
            decision_ms=_timing(g["decision_ms"]),
            # one-sided: is the annotator better than a coin on pairs with a known answer?
            gold=proportion(int(gm.sum()), len(gm), 0.5, alternative="greater"),
            majority=_majority_stats(maj[maj["annotator"] == name]),
            honeypot=HoneypotTies(n=len(h), tie_rate=float((h["choice"] == "tie").mean()) if len(h) else math.nan),
        )
    return out
