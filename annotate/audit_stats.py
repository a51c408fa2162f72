"""Statistics the audit is built from: proportions with CIs, agreement coefficients, logistic and Bradley-Terry fits.

Plain numpy + scipy (no sklearn/statsmodels), vectorised so an audit of 100k comparisons takes seconds.
Every function returns plain Python numbers (NaN where undefined) so results serialise to JSON unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better than Wald near 0/1 and for small n)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def proportion(k: int, n: int, null: float = 0.5, alternative: str = "two-sided") -> dict:
    """k successes out of n: rate, Wilson 95% CI and an exact binomial test against `null`."""
    k, n = int(k), int(n)
    lo, hi = wilson(k, n)
    p_value = float(stats.binomtest(k, n, null, alternative=alternative).pvalue) if n > 0 else math.nan
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "ci": [lo, hi], "p_value": p_value, "null": null}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval; NaN samples (undefined statistic in a resample) are ignored."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return [math.nan, math.nan]
    a = (1 - level) / 2 * 100
    return [float(np.percentile(s, a)), float(np.percentile(s, 100 - a))]


# -- agreement ---------------------------------------------------------------------------------------------
def _kappa_from_counts(conf: np.ndarray) -> np.ndarray:
    """Cohen's kappa from confusion counts, batched: conf is (..., C, C). kappa = (po - pe) / (1 - pe)."""
    n = conf.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        po = np.trace(conf, axis1=-2, axis2=-1) / n
        pe = (conf.sum(axis=-1) * conf.sum(axis=-2)).sum(axis=-1) / (n * n)
        k = (po - pe) / (1 - pe)
    return np.where(np.isclose(pe, 1.0), np.nan, k)


def cohen_kappa(
    labels1: np.ndarray, labels2: np.ndarray, n_categories: int, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Cohen's kappa (1960) of two raters on the same items (integer-coded labels), with a bootstrap CI.

    Resampling items with replacement is the same as drawing the confusion table from a multinomial with the
    observed cell shares, which makes the bootstrap a single vectorised draw.
    """
    labels1, labels2 = np.asarray(labels1), np.asarray(labels2)
    conf = np.zeros((n_categories, n_categories))
    np.add.at(conf, (labels1, labels2), 1)
    n = int(conf.sum())
    kappa = float(_kappa_from_counts(conf)) if n else math.nan
    ci = [math.nan, math.nan]
    if n >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        boot = rng.multinomial(n, conf.ravel() / n, size=n_boot).reshape(n_boot, n_categories, n_categories)
        ci = percentile_ci(_kappa_from_counts(boot.astype(float)))
    return {"kappa": kappa, "ci": ci, "n": n, "observed_agreement": float(np.trace(conf) / n) if n else math.nan}


def _alpha_terms(counts: np.ndarray) -> np.ndarray:
    """Per-unit sufficient statistics for nominal alpha: [disagreeing pairs / (m_u - 1), n_u1..n_uC]."""
    m = counts.sum(axis=1)
    d = (m * m - (counts * counts).sum(axis=1)) / (m - 1)
    return np.column_stack([d, counts])


def _alpha_from_terms(sums: np.ndarray) -> np.ndarray:
    """alpha = 1 - (n - 1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k  (Krippendorff 2011, nominal metric)."""
    d, nc = sums[..., 0], sums[..., 1:]
    n = nc.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - (n - 1) * d / (n * n - (nc * nc).sum(axis=-1))


def unit_counts(units: np.ndarray, labels: np.ndarray, n_categories: int) -> np.ndarray:
    """(U, C) matrix of how many raters gave each label to each unit; units with < 2 values are dropped."""
    _, inv = np.unique(np.asarray(units), return_inverse=True)
    counts = np.zeros((inv.max() + 1 if inv.size else 0, n_categories))
    np.add.at(counts, (inv, np.asarray(labels)), 1)
    return counts[counts.sum(axis=1) >= 2]


def krippendorff_alpha(counts: np.ndarray, n_boot: int = 1000, seed: int = 0, chunk: int = 50) -> dict:
    """Krippendorff's alpha for nominal data from a (units, categories) count matrix, with a bootstrap CI.

    Only pairable values count (units rated at least twice). The bootstrap resamples units, in chunks so that
    memory stays bounded for large stores.
    """
    counts = np.asarray(counts, dtype=float)
    counts = counts[counts.sum(axis=1) >= 2]
    u = counts.shape[0]
    if u == 0:
        return {"alpha": math.nan, "ci": [math.nan, math.nan], "units": 0, "values": 0}
    terms = _alpha_terms(counts)
    alpha = float(_alpha_from_terms(terms.sum(axis=0)))
    ci = [math.nan, math.nan]
    if n_boot > 0 and u >= 2:
        rng = np.random.default_rng(seed)
        boots = []
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, u, size=(min(chunk, n_boot - start), u))
            boots.append(_alpha_from_terms(terms[idx].sum(axis=1)))
        ci = percentile_ci(np.concatenate(boots))
    return {"alpha": alpha, "ci": ci, "units": int(u), "values": int(counts.sum())}


# -- regression --------------------------------------------------------------------------------------------
def _logistic_loss(beta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float):
    """Weighted negative log-likelihood of a logistic model and its gradient; y may be fractional (ties = 0.5)."""
    z = x @ beta
    # log(1 + e^z) - y z, written stably
    nll = float(w @ (np.logaddexp(0, z) - y * z)) + 0.5 * l2 * float(beta @ beta)
    p = 1 / (1 + np.exp(-z))
    grad = x.T @ (w * (p - y)) + l2 * beta
    return nll, grad


def _newton(x, y, w, l2, beta, iters: int = 50, tol: float = 1e-9) -> tuple[np.ndarray, bool]:
    """Newton-Raphson with step halving on the weighted logistic loss (convex, so this converges fast)."""
    eye = l2 * np.eye(x.shape[1])
    loss, grad = _logistic_loss(beta, x, y, w, l2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ beta)))
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + eye
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-4:
            new_loss, new_grad = _logistic_loss(beta - t * step, x, y, w, l2)
            if new_loss <= loss + 1e-12:
                break
            t /= 2
        else:
            return beta, False
        beta, loss, grad = beta - t * step, new_loss, new_grad
        if np.abs(t * step).max() < tol:
            return beta, True
    return beta, bool(np.abs(grad).max() < 1e-6 * max(1.0, float(w.sum())))


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    l2: float = 0.0,
    beta0: np.ndarray | None = None,
    with_cov: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Maximum-likelihood logistic regression; returns coefficients and, if asked, their covariance (inverse of
    the observed information X' W p(1-p) X + l2 I).

    Newton-Raphson first (a handful of iterations for a few columns); scipy's L-BFGS if Newton stalls, e.g. on
    separable data without a penalty.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    b0 = np.zeros(x.shape[1]) if beta0 is None else np.asarray(beta0, dtype=float)
    beta, ok = _newton(x, y, w, l2, b0)
    if not ok:
        beta = optimize.minimize(_logistic_loss, b0, args=(x, y, w, l2), jac=True, method="L-BFGS-B").x
    if not with_cov:
        return beta, None
    p = 1 / (1 + np.exp(-(x @ beta)))
    info = (x * (w * p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
    return beta, np.linalg.pinv(info)


def bootstrap_logistic(
    x: np.ndarray, y: np.ndarray, beta: np.ndarray, l2: float, n_boot: int, rng: np.random.Generator, chunk: int = 32
) -> np.ndarray:
    """Coefficients refitted on n_boot Poisson-bootstrap resamples of the rows; returns (n_boot, K).

    Each replicate is solved by the chord method: Newton steps that reuse the full-data Hessian. A resample's
    Hessian differs from it by O(1/sqrt(n)), so the iteration contracts fast to the replicate's exact MLE, and
    every step is one matrix product for a whole chunk of replicates (100k rows x 200 draws in about a second).
    """
    n, k = x.shape
    p0 = 1 / (1 + np.exp(-(x @ beta)))
    h_inv = np.linalg.pinv((x * (p0 * (1 - p0))[:, None]).T @ x + l2 * np.eye(k))
    out = []
    for start in range(0, n_boot, chunk):
        w = rng.poisson(1.0, size=(min(chunk, n_boot - start), n)).astype(float)  # (b, N)
        b = np.repeat(beta[None, :], len(w), axis=0)  # (b, K)
        scale = n / np.maximum(w.sum(axis=1, keepdims=True), 1.0)  # the shared Hessian, per replicate's size
        for _ in range(30):
            p = 1 / (1 + np.exp(-(b @ x.T)))  # (b, N)
            step = (((w * (p - y)) @ x + l2 * b) @ h_inv.T) * scale  # (b, K)
            b -= step
            if np.abs(step).max() < 1e-7:  # log-odds; far below what any reported figure resolves
                break
        # Small samples can make the chord iteration slow or unstable: refit those replicates exactly.
        for i in np.flatnonzero(~np.isfinite(step).all(axis=1) | (np.abs(step).max(axis=1) > 1e-5)):
            b[i] = fit_logistic(x, y, weights=w[i], l2=l2, beta0=beta, with_cov=False)[0]
        out.append(b)
    return np.concatenate(out) if out else np.empty((0, k))


def coef_table(names: list[str], beta: np.ndarray, cov: np.ndarray) -> dict:
    """Wald summaries: coefficient, SE, 95% CI, two-sided p-value and odds ratio for each named term."""
    out = {}
    for i, name in enumerate(names):
        se = float(math.sqrt(max(cov[i, i], 0.0)))
        b = float(beta[i])
        p = float(2 * stats.norm.sf(abs(b) / se)) if se > 0 else math.nan
        out[name] = {
            "coef": b,
            "se": se,
            "ci": [b - Z95 * se, b + Z95 * se],
            "p_value": p,
            "odds_ratio": float(math.exp(min(b, 700))),
        }
    return out


def standardise(v: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide by the standard deviation (no centring: a zero difference must stay zero). Returns (z, sd)."""
    sd = float(np.std(v)) if len(v) else 0.0
    return (v / sd if sd > 0 else np.zeros_like(v, dtype=float)), sd
