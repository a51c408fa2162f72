"""Annotator reliability in the audit: the Dawid-Skene latent-truth model (annotate.reliability) over the votes, per
annotator with CIs and per pair, and how it reads (findings, table rows, the report's HTML, a figure).

Which votes: the standing, decisive (A or B), non-honeypot votes of annotate.audit.prepare_votes, repeats and AI
judges included (a judge is an annotator like any other, and the model weighs it by how it agrees). Honeypots show
one text twice, so there is no better response to be right about: left in, they would let the fit "confirm" each
annotator against a truth made of nothing but their own picks, and a side habit on them is already measured by
position bias. The model's votes are coded as the app showed them (left/right), so an annotator who favours a side
shows it as unequal accuracies with the better response on the left and on the right.

An annotator is "unreliable" when their reliability's 95% CI lies wholly below RELIABILITY_THRESHOLD: their votes
match the latent truth less often than that even at best. 0.6 sits between a coin (0.5) and a usable annotator.

Untrusted names (annotators, prompt and response ids) reach HTML only through annotate.render.render_inline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from annotate.audit_types import AnnotatorReliability, PairPosterior, Reliability
from annotate.reliability import fit_dawid_skene
from annotate.render import render_inline

RELIABILITY_THRESHOLD = 0.6  # a CI wholly below it: "unreliable" (see the module docstring)
CONFIDENCE_BINS = ("0.9+", "0.7-0.9", "0.5-0.7")  # pairs by the posterior of the likelier response
MAX_EXAMPLES = 10  # overturned pairs kept in the result: a sample to read, not a listing (export has them all)


def model_votes(v: pd.DataFrame) -> pd.DataFrame:
    """prepare_votes' frame -> the columns annotate.reliability reads, decisive non-honeypot votes only, in order.
    `session` carries only what the model needs of it: imported votes ("import:") were never placed."""
    d = v[v["decisive"] & ~v["honeypot"]]
    return pd.DataFrame(
        {
            "prompt_id": d["prompt_id"].to_numpy(),
            "response_a_id": d["a_id"].to_numpy(),
            "response_b_id": d["b_id"].to_numpy(),
            "annotator": d["annotator"].to_numpy(),
            "choice": d["choice"].to_numpy(),
            "left": d["left"].to_numpy(),
            "session": np.where(d["placed"].to_numpy(bool), "", "import:"),
        }
    )


def annotator_reliability(v: pd.DataFrame, threshold: float = RELIABILITY_THRESHOLD) -> Reliability:
    """The Reliability section from annotate.audit.prepare_votes' frame (see the module docstring)."""
    fit = fit_dawid_skene(model_votes(v))
    ann = {
        str(name): AnnotatorReliability(
            votes=int(r.votes), reliability=float(r.reliability), ci=(float(r.ci_low), float(r.ci_high)),
            expected_correct=float(r.expected_correct), acc_better_left=float(r.acc_better_left),
            acc_better_right=float(r.acc_better_right),
        )
        for name, r in fit.annotators.iterrows()
    }  # fmt: skip
    unreliable = tuple(sorted(n for n, a in ann.items() if a.ci[1] < threshold))
    p_lo = fit.pairs["p_lo"].to_numpy(float)
    top = np.maximum(p_lo, 1.0 - p_lo)
    confidence = {
        "0.9+": int((top >= 0.9).sum()),
        "0.7-0.9": int(((top >= 0.7) & (top < 0.9)).sum()),
        "0.5-0.7": int((top < 0.7).sum()),
    }
    overturned, examples = _overturned(v, fit.pairs)
    return Reliability(
        method="dawid-skene", votes=int(fit.annotators["votes"].sum()), pairs=len(fit.pairs), annotators=ann,
        threshold=threshold, unreliable=unreliable, confidence=confidence, overturned=overturned,
        examples=examples, iterations=fit.iterations, converged=fit.converged,
    )  # fmt: skip


def _overturned(v: pd.DataFrame, pairs: pd.DataFrame) -> tuple[int, tuple[PairPosterior, ...]]:
    """Pairs whose likelier response under the fit is not the majority's: the count and the most confident few."""
    d = v[v["decisive"] & ~v["honeypot"] & (v["a_id"] != v["b_id"])]
    keys = pd.unique(d["key"])  # the fit numbers pairs in order of first vote, as here (DawidSkeneFit.pairs)
    n_keys = int(v["key"].max()) + 1 if len(v) else 0
    lab = d["label"].to_numpy()
    n_lo = np.bincount(d["key"], lab == 0, n_keys)[keys].astype(int)
    n_hi = np.bincount(d["key"], lab == 1, n_keys)[keys].astype(int)
    p_lo = pairs["p_lo"].to_numpy(float)
    flipped = (n_lo != n_hi) & (p_lo != 0.5) & ((n_lo > n_hi) != (p_lo > 0.5))
    idx = np.flatnonzero(flipped)
    idx = idx[np.argsort(-np.abs(p_lo[idx] - 0.5), kind="stable")][:MAX_EXAMPLES]
    examples = tuple(
        PairPosterior(prompt_id=str(pairs["prompt_id"].iat[i]), lo_id=str(pairs["lo_id"].iat[i]),
                      hi_id=str(pairs["hi_id"].iat[i]), votes_lo=int(n_lo[i]), votes_hi=int(n_hi[i]),
                      p_lo=float(p_lo[i]))
        for i in idx
    )  # fmt: skip
    return int(flipped.sum()), examples


# -- how it reads --------------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _ci(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{100 * lo:.0f}-{100 * hi:.0f}%"


def reliability_findings(r: Reliability | None) -> list[str]:
    """Plain-language sentences: the fit, then one per unreliable annotator."""
    if r is None or not r.votes:
        return []
    ranked = sorted(r.annotators.items(), key=lambda kv: -kv[1].reliability)
    order = ", ".join(f"{name} {_pct(a.reliability)}" for name, a in ranked)
    out = [
        f"A Dawid-Skene latent-truth model over {r.votes} decisive votes on {r.pairs} pairs puts annotator "
        f"reliability (share of votes matching the inferred better response) at: {order}. It is confident (90%+) "
        f"about {r.confidence['0.9+']} pairs and overturns the plain majority on {r.overturned}."
    ]
    for name in r.unreliable:
        a = r.annotators[name]
        out.append(
            f"{name} looks unreliable: reliability {_pct(a.reliability)} (95% CI {_ci(a.ci)}, {a.votes} votes), "
            f"wholly below {_pct(r.threshold)}."
        )
    return out


def reliability_rows(r: Reliability) -> list[dict[str, str]]:
    """One row per annotator, plain text (every renderer escapes it): the report's, Dashboard's and card's table."""
    rows = []
    for name, a in sorted(r.annotators.items()):
        rows.append({
            "annotator": name, "votes": str(a.votes), "reliability": _pct(a.reliability), "95% CI": _ci(a.ci),
            "accuracy, better on the left": _pct(a.acc_better_left),
            "accuracy, better on the right": _pct(a.acc_better_right),
            "flag": "unreliable" if name in r.unreliable else "",
        })  # fmt: skip
    return rows


def example_rows(r: Reliability) -> list[dict[str, str]]:
    """The overturned pairs kept as examples: ids, the votes for each response and the fit's probabilities."""
    return [{"prompt": e.prompt_id, "response lo": e.lo_id, "response hi": e.hi_id,
             "votes lo : hi": f"{e.votes_lo} : {e.votes_hi}", "P(lo better)": f"{e.p_lo:.2f}",
             "P(hi better)": f"{1 - e.p_lo:.2f}"} for e in r.examples]  # fmt: skip


def html_table(rows: list[dict[str, Any]]) -> str:
    """Rows of untrusted text as an HTML table, every header and cell through render_inline."""
    if not rows:
        return ""
    head = "".join(f"<th>{render_inline(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{render_inline(c)}</td>" for c in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


RELIABILITY_NOTE = (
    "A Dawid-Skene model (annotate.reliability) infers which response of each pair is better from all decisive, "
    "non-honeypot votes at once, weighing each annotator by how well they agree with that inferred truth. "
    "Reliability is the share of an annotator's votes that match it (Wilson 95% CI, given the fitted truth); the "
    "accuracies with the better response on the left and on the right differ for an annotator who favours a side. "
    "'unreliable': CI wholly below {threshold}."
)


def reliability_html(r: Reliability | None) -> str:
    """The report's section, heading included."""
    head = "<h2>Annotator reliability (Dawid-Skene)</h2>"
    if r is None:
        return head + "<p>Not in this audit (read from an audit JSON of schema version 1 or 2).</p>"
    if not r.votes:
        return head + "<p>No decisive vote to fit.</p>"
    bins = ", ".join(f"{k} {n}" for k, n in r.confidence.items())
    out = (
        head + f"<p>{render_inline(RELIABILITY_NOTE.format(threshold=_pct(r.threshold)))}</p>"
        + html_table(reliability_rows(r))
        + f"<p>{r.pairs} pairs by the probability of the likelier response: {bins}. "
        f"The model overturns the plain majority on {r.overturned} pairs"
    )  # fmt: skip
    if r.examples:
        return out + "; the most confident of them:</p>" + html_table(example_rows(r))
    return out + ".</p>"


def reliability_figure(r: Reliability) -> Any:
    """A matplotlib Figure: each annotator's reliability (95% CI) with their accuracies when the better response
    was on the left and on the right, and the threshold."""
    from matplotlib.figure import Figure

    names = sorted(r.annotators)
    stats = [r.annotators[n] for n in names]
    fig = Figure(figsize=(max(6.5, 0.7 * len(names) + 4), 3.8))
    ax = fig.subplots()
    xs = np.arange(len(names))
    ys = [a.reliability for a in stats]
    err = [[max(y - a.ci[0], 0) for y, a in zip(ys, stats)], [max(a.ci[1] - y, 0) for y, a in zip(ys, stats)]]
    ax.errorbar(xs, ys, yerr=err, fmt="o", color="black", capsize=4, label="reliability (95% CI)")
    ax.scatter(xs - 0.15, [a.acc_better_left for a in stats], marker="<", color="tab:blue",
               label="accuracy, better on the left")  # fmt: skip
    ax.scatter(xs + 0.15, [a.acc_better_right for a in stats], marker=">", color="tab:orange",
               label="accuracy, better on the right")  # fmt: skip
    ax.axhline(r.threshold, color="tab:red", ls="--", lw=1, label=f"threshold ({r.threshold:.0%})")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    flagged = set(r.unreliable)
    ax.set_xticks(xs, [f"{n} *" if n in flagged else n for n in names], rotation=30, ha="right")
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("share (95% CI)")
    ax.set_title(f"Annotator reliability, Dawid-Skene (* = unreliable; {r.votes} votes, {r.pairs} pairs)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: markers reach every corner
    fig.tight_layout()
    return fig
