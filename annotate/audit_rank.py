"""Bradley-Terry ranking of candidate sources (models or authors), plain and style-controlled.

Model (Bradley & Terry 1952): P(source i beats j) = sigmoid(b_i - b_j), fitted by maximum likelihood as a
logistic regression on rows e_i - e_j; a tie or both_bad counts as half a win each way (y = 0.5). Scores are
reported on the Elo-like scale Chatbot Arena uses, 1000 + 400 / ln(10) * (b_i - mean(b)).

Style control (LMSYS, "Does style matter? Disentangling style and substance in Chatbot Arena", 2024): the
same regression with extra covariates for the normalised differences (a - b) / (a + b) in length and in
Markdown headers, list items and bold spans, each standardised. The source scores are then what remains of a
source's wins once its responses' length and formatting are accounted for.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from annotate.audit_stats import (
    bootstrap_logistic,
    coef_table,
    fit_logistic,
    newton_logistic,
    percentile_ci,
    standardise,
)
from annotate.audit_types import Ranking, RankRow

ELO_SCALE = 400 / math.log(10)
STYLE = ("length", "headers", "lists", "bold")
L2 = 0.01  # a very weak prior on strengths: keeps them finite when a source wins (or loses) every comparison
MAX_STYLE_BOOT = 200  # style bootstrap refits the per-vote regression: 200 draws keep 100k votes in seconds


def _scores(beta: np.ndarray) -> np.ndarray:
    """Centred strengths on the Elo-like scale; works on (K,) or (B, K)."""
    return 1000 + ELO_SCALE * (beta - beta.mean(axis=-1, keepdims=True))


def _norm_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total, dtype=float), where=total > 0)


def _table(sources: list[str], point: np.ndarray, boot: np.ndarray, counts: np.ndarray) -> tuple[RankRow, ...]:
    order = sorted(range(len(sources)), key=lambda i: -point[i])
    return tuple(
        RankRow(
            source=sources[i],
            score=float(point[i]),
            ci=percentile_ci(boot[:, i]),
            comparisons=int(counts[i]),
            rank=rank,
        )  # fmt: skip
        for rank, i in enumerate(order, 1)
    )


def bt_ranking(v: pd.DataFrame, n_boot: int = 1000, seed: int = 0, unit: str = "chars") -> Ranking:
    """Rank sources by Bradley-Terry strength with percentile bootstrap CIs (resampling votes)."""
    d = v[(v["label"] >= 0) & ~v["honeypot"] & (v["source_a"] != v["source_b"])]
    sources = sorted(set(d["source_a"]) | set(d["source_b"]))
    if len(sources) < 2:
        return Ranking(sources=tuple(sources), votes=int(len(d)), plain=(), style=(), style_coefficients={})
    idx = {s: i for i, s in enumerate(sources)}
    ia, ib = d["source_a"].map(idx).to_numpy(), d["source_b"].map(idx).to_numpy()
    y = np.where(d["choice"] == "a", 1.0, np.where(d["choice"] == "b", 0.0, 0.5))
    counts = np.bincount(ia, minlength=len(sources)) + np.bincount(ib, minlength=len(sources))
    rng = np.random.default_rng(seed)
    plain = _plain(ia, ib, y, len(sources), n_boot, rng)
    style, coefs = _style(d, ia, ib, y, len(sources), min(n_boot, MAX_STYLE_BOOT), rng, unit)
    return Ranking(
        sources=tuple(sources),
        votes=int(len(d)),
        plain=_table(sources, *plain, counts),
        style=_table(sources, *style, counts),
        style_coefficients=coefs,
        style_boot=min(n_boot, MAX_STYLE_BOOT),
    )


def _plain(ia, ib, y, k: int, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Votes collapse to (source_a, source_b, outcome) rows with counts; resampling votes with replacement is
    # then a multinomial draw of those counts, so all bootstrap replicates are solved in one batched Newton.
    rows, counts = np.unique(np.column_stack([ia, ib, y * 2]), axis=0, return_counts=True)
    x = np.zeros((len(rows), k))
    x[np.arange(len(rows)), rows[:, 0].astype(int)] += 1
    x[np.arange(len(rows)), rows[:, 1].astype(int)] -= 1
    yy = rows[:, 2] / 2
    point = _scores(newton_logistic(x, yy, counts.astype(float), l2=L2)[0])
    if n_boot <= 0:
        return point, np.full((1, k), np.nan)
    boot_w = rng.multinomial(counts.sum(), counts / counts.sum(), size=n_boot).astype(float)
    chunks = (newton_logistic(x, yy, boot_w[i : i + 250], l2=L2)[0] for i in range(0, n_boot, 250))
    boot = np.concatenate([_scores(b) for b in chunks])
    return point, boot


def _style(d, ia, ib, y, k: int, n_boot: int, rng: np.random.Generator, unit: str):
    n = len(y)
    x = np.zeros((n, k + len(STYLE)))
    x[np.arange(n), ia] += 1
    x[np.arange(n), ib] -= 1
    names = []
    for j, (name, feat) in enumerate(zip(STYLE, (unit, "headers", "lists", "bold"))):
        z, sd = standardise(_norm_diff(d[f"a_{feat}"].to_numpy(), d[f"b_{feat}"].to_numpy()))
        x[:, k + j] = z
        names.append(name if sd > 0 else None)
    keep = list(range(k)) + [k + j for j, nm in enumerate(names) if nm is not None]  # constant columns are dropped
    x = x[:, keep]
    beta, cov = fit_logistic(x, y, l2=L2)
    coefs = coef_table([nm for nm in names if nm is not None], beta[k:], cov[k:, k:])
    point = _scores(beta[:k])
    boot = _scores(bootstrap_logistic(x, y, beta, L2, n_boot, rng)[:, :k]) if n_boot > 0 else np.full((1, k), np.nan)
    return (point, boot), coefs
