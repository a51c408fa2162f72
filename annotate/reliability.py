"""Annotator reliability and per-pair soft labels from pairwise votes: a Dawid-Skene latent-truth model.

Model (Dawid & Skene 1979, "Maximum likelihood estimation of observer error-rates using the EM algorithm", JRSS C
28(1), 20-28). An item is a pair, prompt_id + the unordered pair of response ids, normalised as the audit does
(annotate.audit.prepare_votes): lo/hi = the lexicographically smaller/larger id. Its latent truth z is 0 (lo is the
better response) or 1 (hi is), with prior rho = P(z = 0), fixed at 0.5 by default since the order of two ids says
nothing about quality (`class_prior=None` learns it, eq. 2.4). Annotator k answers from a 2x2 confusion matrix
pi_k[r, l] = P(picks side l | the better response is on side r), coded in the frame in which they saw the pair:

- a vote placed in the app is coded by screen side (0 left, 1 right). pi_k then holds two free numbers, the
  annotator's accuracy when the better response is on the left and when it is on the right: position bias is an
  asymmetric matrix, and the E step weighs a pick against the annotator's habit (a right pick from someone who
  mostly picks left) as the stronger evidence it is. Coded by response id, the same asymmetry would mean "prefers
  the id that sorts first", which means nothing;
- an imported vote (session "import:...") was never shown side by side (importers store the chosen response as a),
  so it goes through a one-coin channel coded by id: one accuracy, pi_k[0, 0] = pi_k[1, 1].
  Each annotator has one channel of each kind (in practice an annotator uses only one).

EM, initialised from the majority: T_i = each pair's share of votes for lo, then alternate
- M step (eq. 2.3, with a prior): pi_k[r, r] = (sum_v P(better on r) [v picked r] + a) / (sum_v P(better on r) + a + b)
  over annotator k's votes v; the MAP estimate under a Beta(a + 1, b + 1) prior on each row's accuracy, i.e. a and b
  pseudo-votes right and wrong (eq. 2.3 itself when a = b = 0). The default a = 2, b = 1 (mean 2/3, three
  pseudo-votes) keeps an annotator with two or three votes away from accuracy 0 or 1, hence from infinite
  log-odds, and is negligible after a few dozen votes. The one-coin channel pools both rows and adds a, b once;
- E step (eq. 2.5): log P(z_i = z | votes) = log rho_z + sum_{v in i} log pi_{k_v}[r_v(z), l_v] + const, where
  r_v(z) is the side on which response z was shown to vote v and l_v the side picked;
until no posterior moves by more than `tol`, then one last M step. No randomness anywhere: the fit is a
deterministic function of the votes.

Reliability = P(a vote of the annotator matches the truth) under the fit: sum_r E[n_k,r] pi_k[r, r] / n_k, with
E[n_k,r] their expected votes with the better response on side r. The 95% CI is Wilson's on the expected count of
correct votes (sum_v P(the response picked is the better one)) out of n_k. Why Wilson rather than a bootstrap over
pairs: the bootstrap needs one EM fit per replicate for every audit and Dashboard refresh, and the annotator's own
binomial noise dominates once pairs have a few votes. It is conditional on the fitted truth, so it is too narrow
where the truth itself is uncertain (pairs with one or two votes).

Which votes: standing (retractions and retracted votes removed when `retracts` is given), decisive (choice a or b),
between two different response ids. Ties, both_bad and skips are left out: they say nothing about which response
is better, and a third observed category would have the model learn when people shrug, not who is right; export
drops them too. Repeated votes of one annotator on a pair count as separate observations, as in the majority.
Strength is not used by the latent model (the fit learns each annotator's trustworthiness from agreement instead);
the majority weighs by it as annotate.export always has.

Why not crowd-kit's DawidSkene: crowd-kit hard-requires `transformers` (with nltk and scikit-learn), and annotate/
must install and import without the training stack (tests/test_layers.py); it also has no screen-side frame and no
prior. tests/test_reliability.py checks this module against crowd-kit's DawidSkene and OneCoinDawidSkene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from annotate.audit_stats import wilson

METHODS = ("majority", "weighted", "dawid-skene")
PRIOR = (2.0, 1.0)  # (a, b): pseudo-votes right and wrong per confusion row; see the module docstring
_EPS = 1e-10  # probabilities are kept in [eps, 1 - eps] so that log-odds stay finite (crowd-kit clips the same)
_COLUMNS = ("prompt_id", "response_a_id", "response_b_id", "annotator", "choice")


@dataclass(frozen=True)
class DawidSkeneFit:
    """The fitted model. `annotators`, one row per annotator (sorted by name): votes, reliability, ci_low, ci_high
    (Wilson 95%), expected_correct, acc_better_left / acc_better_right (accuracy when the better response was shown
    on that side; NaN without placed votes). `pairs`, one row per pair in order of first vote: prompt_id, lo_id,
    hi_id, n_votes, p_lo / p_hi (posterior probability that that response is the better one)."""

    annotators: pd.DataFrame
    pairs: pd.DataFrame
    class_prior: float  # rho = P(lo is better)
    iterations: int
    converged: bool


def decisive_votes(votes: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """The votes the models read, one row each in input order: annotator, prompt_id, lo, hi, pair (item index,
    pairs numbered in order of first vote), picked_lo, placed, lo_left (lo shown on the left), strength."""
    needed = [*_COLUMNS, "left", "session", "strength", "comparison_id", "retracts"]
    if isinstance(votes, pa.Table):  # only the few columns read: the texts are the costly ones to convert
        votes = votes.select([c for c in needed if c in votes.column_names]).to_pandas()
    df = votes
    if "retracts" in df.columns and "comparison_id" in df.columns:
        from annotate.store import standing_mask  # the store's one retraction rule

        ids = pa.table({"comparison_id": pa.array(df["comparison_id"].astype(str), pa.string()),
                        "retracts": pa.array(df["retracts"], pa.string(), from_pandas=True)})  # fmt: skip
        df = df[standing_mask(ids).to_numpy(zero_copy_only=False)]
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"votes: missing column(s) {', '.join(missing)}")
    a_id, b_id = df["response_a_id"].astype(str), df["response_b_id"].astype(str)
    keep = (df["choice"].isin(["a", "b"]) & (a_id != b_id)).to_numpy()
    df, a_id, b_id = df[keep], a_id[keep], b_id[keep]
    a_is_lo = (a_id < b_id).to_numpy()
    lo, hi = np.where(a_is_lo, a_id, b_id), np.where(a_is_lo, b_id, a_id)
    chose_a = (df["choice"] == "a").to_numpy()
    left = df["left"].astype(str).to_numpy() if "left" in df else np.full(len(df), "")
    session = df["session"].fillna("").astype(str) if "session" in df else pd.Series("", index=df.index)
    # Imported votes were never shown side by side; neither was a vote without a valid `left`.
    placed = np.isin(left, ["a", "b"]) & ~session.str.startswith("import:").to_numpy()
    strength = pd.to_numeric(df["strength"], errors="coerce") if "strength" in df else pd.Series(np.nan, df.index)
    out = pd.DataFrame(
        {
            "annotator": df["annotator"].astype(str).to_numpy(),
            "prompt_id": df["prompt_id"].astype(str).to_numpy(),
            "lo": lo,
            "hi": hi,
            "picked_lo": chose_a == a_is_lo,
            "placed": placed,
            "lo_left": (left == "a") == a_is_lo,
            "strength": strength.fillna(1.0).to_numpy(dtype=float),
        }
    )
    out["pair"] = pd.factorize(out["prompt_id"] + "\x1f" + out["lo"] + "\x1f" + out["hi"])[0]
    return out


class _Coded(NamedTuple):
    """Each vote as indices (V,): pair; channel (2 * annotator, + 1 for the one-coin channel); flip (the row of
    truth z is z ^ flip); side (the side picked in the channel's frame). Placed: row/side 0 = left, so lo's row is
    0 when lo was shown left. One-coin: row/side 0 = lo."""

    pair: np.ndarray
    channel: np.ndarray
    flip: np.ndarray
    side: np.ndarray
    n_pairs: int
    n_channels: int


def _coded(v: pd.DataFrame, n_annotators: int) -> _Coded:
    ann = pd.factorize(v["annotator"], sort=True)[0]
    placed, lo_left, picked_lo = (v[c].to_numpy(bool) for c in ("placed", "lo_left", "picked_lo"))
    flip = np.where(placed, ~lo_left, False).astype(np.int64)
    side = np.where(placed, picked_lo != lo_left, ~picked_lo).astype(np.int64)
    pair = v["pair"].to_numpy()
    return _Coded(pair, 2 * ann + ~placed, flip, side, int(pair.max()) + 1 if len(v) else 0, 2 * n_annotators)


def _m_step(p_lo: np.ndarray, c: _Coded, prior: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2.3 with pseudo-votes: expected counts C[channel, row, side] (C, 2, 2) and row accuracies (C, 2)."""
    w_lo = p_lo[c.pair]  # P(lo is better) per vote; lo's row is `flip`, hi's is 1 - flip
    size = 4 * c.n_channels
    counts = np.bincount(4 * c.channel + 2 * c.flip + c.side, w_lo, size)
    counts += np.bincount(4 * c.channel + 2 * (1 - c.flip) + c.side, 1.0 - w_lo, size)
    counts = counts.reshape(c.n_channels, 2, 2)
    a, b = prior
    correct, total = counts[:, [0, 1], [0, 1]], counts.sum(axis=2)  # (C, 2) each
    acc = np.divide(correct + a, total + a + b, out=np.full(correct.shape, 0.5), where=total + a + b > 0)
    one_coin = np.arange(c.n_channels) % 2 == 1  # pooled over both rows: pi[0, 0] = pi[1, 1]
    pooled_total = total.sum(axis=1) + a + b
    pooled = np.divide(correct.sum(axis=1) + a, pooled_total, out=np.full(c.n_channels, 0.5), where=pooled_total > 0)
    acc[one_coin] = pooled[one_coin, None]
    return counts, np.clip(acc, _EPS, 1 - _EPS)


def _e_step(acc: np.ndarray, c: _Coded, rho: float) -> np.ndarray:
    """Eq. 2.5 in log space: P(lo is better) per pair."""
    log_right, log_wrong = np.log(acc), np.log1p(-acc)  # (C, 2): log pi[r, r] and log pi[r, 1 - r]

    def loglik(row: np.ndarray) -> np.ndarray:  # each vote's log-likelihood when the better response is on `row`
        return np.where(c.side == row, log_right[c.channel, row], log_wrong[c.channel, row])

    rho = min(max(rho, _EPS), 1 - _EPS)
    d = np.bincount(c.pair, loglik(c.flip) - loglik(1 - c.flip), c.n_pairs) + math.log(rho) - math.log1p(-rho)
    return 0.5 * (1.0 + np.tanh(0.5 * d))  # the logistic function, stable for any d


def fit_dawid_skene(
    votes: pa.Table | pd.DataFrame,
    *,
    prior: tuple[float, float] = PRIOR,
    class_prior: float | None = 0.5,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> DawidSkeneFit:
    """Fit the model of the module docstring to `votes` (the columns of `aggregate`). `prior` = (a, b) pseudo-votes
    right and wrong per confusion row ((0, 0): plain maximum likelihood); `class_prior` = P(lo is better), None to
    learn it (eq. 2.4)."""
    return _fit(decisive_votes(votes), prior, class_prior, tol, max_iter)


def _fit(
    v: pd.DataFrame,
    prior: tuple[float, float] = PRIOR,
    class_prior: float | None = 0.5,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> DawidSkeneFit:
    names = np.sort(v["annotator"].unique())
    c = _coded(v, len(names))
    n_per_pair = np.bincount(c.pair, None, c.n_pairs)
    p_lo = np.bincount(c.pair, v["picked_lo"].to_numpy(float), c.n_pairs) / np.maximum(n_per_pair, 1)
    converged, it = c.n_pairs == 0, 0
    while not converged and it < max_iter:
        rho = float(p_lo.mean()) if class_prior is None else class_prior
        new = _e_step(_m_step(p_lo, c, prior)[1], c, rho)
        converged, p_lo, it = bool(np.max(np.abs(new - p_lo)) < tol), new, it + 1
    counts, acc = _m_step(p_lo, c, prior)
    first = v.drop_duplicates("pair").sort_values("pair")
    pairs = pd.DataFrame(
        {
            "prompt_id": first["prompt_id"].to_numpy(),
            "lo_id": first["lo"].to_numpy(),
            "hi_id": first["hi"].to_numpy(),
            "n_votes": n_per_pair.astype(np.int64),
            "p_lo": p_lo,
            "p_hi": 1.0 - p_lo,
        }
    )
    rho = (float(p_lo.mean()) if c.n_pairs else 0.5) if class_prior is None else class_prior
    n_votes = np.bincount(c.channel // 2, None, len(names)).astype(np.int64)
    return DawidSkeneFit(_annotator_table(names, n_votes, counts, acc), pairs, rho, it, converged)


def _annotator_table(names: np.ndarray, n: np.ndarray, counts: np.ndarray, acc: np.ndarray) -> pd.DataFrame:
    """Per annotator, both channels together; counts (C, 2, 2) and acc (C, 2) as from _m_step."""
    total = counts.sum(axis=2)  # (C, 2): expected votes with the better response on each row
    correct = counts[:, [0, 1], [0, 1]].sum(axis=1).reshape(-1, 2).sum(axis=1)  # (annotators,)
    reliability = (total * acc).sum(axis=1).reshape(-1, 2).sum(axis=1) / np.maximum(n, 1)
    placed_n = total[0::2].sum(axis=1)
    ci = [wilson(k, m) for k, m in zip(correct, n)]
    return pd.DataFrame(
        {
            "votes": n,
            "reliability": reliability,
            "ci_low": [c[0] for c in ci],
            "ci_high": [c[1] for c in ci],
            "expected_correct": correct,
            "acc_better_left": np.where(placed_n > 0, acc[0::2, 0], np.nan),
            "acc_better_right": np.where(placed_n > 0, acc[0::2, 1], np.nan),
        },
        index=pd.Index(names, name="annotator"),
    )


def _p_lo(v: pd.DataFrame, method: str) -> np.ndarray:
    """P(lo is the better response) per pair of decisive votes `v` under `method` (see aggregate)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pair = v["pair"].to_numpy()
    n_pairs = int(pair.max()) + 1 if len(v) else 0
    sign = np.where(v["picked_lo"].to_numpy(), 1.0, -1.0)  # +1: the vote prefers lo
    if method == "majority":
        w = v["strength"].to_numpy()
        return 0.5 * (1.0 + np.bincount(pair, sign * w, n_pairs) / np.maximum(np.bincount(pair, w, n_pairs), _EPS))
    if method == "weighted":
        r = np.clip(_fit(v).annotators["reliability"], _EPS, 1 - _EPS)
        log_odds = np.log(r / (1 - r)).reindex(v["annotator"]).to_numpy()
        return 0.5 * (1.0 + np.tanh(0.5 * np.bincount(pair, sign * log_odds, n_pairs)))
    return _fit(v).pairs["p_lo"].to_numpy()


def pair_p_lo(votes: pa.Table | pd.DataFrame, method: str, keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """P(lo is better) under `method` for the pairs `keys` = (prompt_id, lo id, hi id) arrays listing every pair of
    `votes` in order of first vote, as annotate.export groups them. Checked, since a misalignment would swap labels."""
    v = decisive_votes(votes)
    first = v.drop_duplicates("pair").sort_values("pair")
    mine = (first["prompt_id"].to_numpy(object), first["lo"].to_numpy(object), first["hi"].to_numpy(object))
    if len(first) != len(keys[0]) or not all((a == np.asarray(b, object)).all() for a, b in zip(mine, keys)):
        raise RuntimeError(f"{method}: the pairs do not line up with the caller's (a bug; please report)")
    return _p_lo(v, method)


def aggregate(votes: pa.Table | pd.DataFrame, method: str = "dawid-skene") -> pd.DataFrame:
    """One row per pair: prompt_id, chosen_id, rejected_id, p_chosen, weight, n_votes (pairs in order of first vote).

    `votes`: an Arrow table or DataFrame with prompt_id, response_a_id, response_b_id, annotator and choice; optional
    left ("a"/"b": shown on the left; else the vote is unplaced), session ("import:..." = unplaced), strength
    (majority only; null = 1) and comparison_id + retracts (retractions applied when present). Only decisive votes
    between two different ids are read (see the module docstring); export passes annotate.export.usable_votes.

    Methods: `majority`, the strength-weighted vote as annotate.export has always counted it, p_chosen = the chosen
    side's share of the strength; `weighted`, each vote weighted by its annotator's log-odds of reliability from the
    Dawid-Skene fit, log(r / (1 - r)) (optimal for independent voters, Nitzan & Paroush 1982; an adversarial
    annotator's votes count reversed), p_chosen = logistic(weighted sum), the one-coin posterior; `dawid-skene`,
    p_chosen = the model's posterior. chosen is the side with p >= 0.5. weight = 2 p_chosen - 1 in [0, 1]: a
    hard-label loss scaled by it has the soft-label loss's slope at zero margin (BCE on logit m with target p has
    slope 1/2 - p there, a hard label -1/2) without the soft label's pull of confident pairs back toward zero
    margin; 0 means no preference (the export drops those pairs, as it drops pairs without a majority today).
    Use p_chosen or weight in a loss, not both: each already carries the pair's uncertainty.
    """
    v = decisive_votes(votes)
    p_lo = _p_lo(v, method)
    pair = v["pair"].to_numpy()
    n_pairs = len(p_lo)
    first = v.drop_duplicates("pair").sort_values("pair")
    lo_chosen = p_lo >= 0.5
    lo, hi = first["lo"].to_numpy(), first["hi"].to_numpy()
    p_chosen = np.where(lo_chosen, p_lo, 1.0 - p_lo)
    return pd.DataFrame(
        {
            "prompt_id": first["prompt_id"].to_numpy(),
            "chosen_id": np.where(lo_chosen, lo, hi),
            "rejected_id": np.where(lo_chosen, hi, lo),
            "p_chosen": p_chosen,
            "weight": 2.0 * p_chosen - 1.0,
            "n_votes": np.bincount(pair, None, n_pairs).astype(np.int64),
        }
    )
