"""Preferred vs verified: on prompts whose answers can be checked, how often annotators preferred the wrong one.

A pool row may carry a verifier in `meta.verifier` (annotate.verifiers). For each standing, decisive (A or B),
non-honeypot vote on such a prompt where exactly one of the two responses passes the verifier, the vote counts, and
it is "wrong preferred" when its winner is the response that fails. Repeats count like any vote, as in length
bias. Humans miss errors in long, fluent, assertive answers (Wen et al., arXiv 2409.12822; Hosking et al., arXiv
2309.16349), so the share is split by two traits of the wrong response, both read from annotate.audit_features:

- longer / not_longer: its length (in the audit's length unit) is greater than the right one's / at most it;
- hedged / confident: hedged when it carries more hedging markers than confidence markers (per 100 words),
  confident otherwise, so a flat assertion with neither ("17 x 23 = 381.") counts as confident;

and the four combinations. Shares come with Wilson 95% intervals (votes taken as independent), overall and per
annotator. annotate.audit_bias.preferred_vs_correct compares the pick with the annotator's own criteria['correct']
pick; this compares it with the verifier, which does not depend on the annotator noticing the error.

Each distinct response text is verified once per prompt however often it was shown; python verifiers run in
subprocesses (annotate.verifiers.run_python), several at a time. Where no vote qualifies there is no figure
(None): the report, the Dashboard and the dataset card then leave it out.

The second half of the module is how the figure reads: findings, table rows (one source for the report's HTML,
the Dashboard's table and the dataset card's Markdown) and its plot.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from annotate.audit_stats import proportion
from annotate.audit_types import PreferredVsVerified, Proportion, WrongPicks
from annotate.verifiers import verify

Verifiers = dict[str, dict]  # prompt_id -> verifier spec (annotate.pool.pool_verifiers)
LENGTHS = ("longer", "not_longer")
TONES = ("confident", "hedged")
SPLITS = LENGTHS + TONES + tuple(f"{n}_{t}" for n, t in itertools.product(LENGTHS, TONES))
SPLIT_LABELS = {
    "longer": "wrong one longer",
    "not_longer": "wrong one not longer",
    "confident": "wrong one confident",
    "hedged": "wrong one hedged",
    "longer_confident": "longer and confident",
    "longer_hedged": "longer and hedged",
    "not_longer_confident": "not longer, confident",
    "not_longer_hedged": "not longer, hedged",
}
MAX_WORKERS = 8  # python verifiers at once: each is a short-lived subprocess, mostly interpreter start-up


# -- verdicts ------------------------------------------------------------------------------------------------------
def verify_texts(jobs: set[tuple[str, str]], verifiers: Verifiers) -> dict[tuple[str, str], bool]:
    """(prompt_id, response text) -> whether the text passes the prompt's verifier, each job run once."""
    slow = [j for j in jobs if verifiers[j[0]]["type"] == "python"]
    out = {j: verify(verifiers[j[0]], j[1]) for j in jobs if verifiers[j[0]]["type"] != "python"}
    if slow:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1, len(slow))) as pool:
            out.update(zip(slow, pool.map(lambda j: verify(verifiers[j[0]], j[1]), slow)))
    return out


def verdicts(
    prompt_ids: Sequence[str], texts_a: Sequence[str | None], texts_b: Sequence[str | None], verifiers: Verifiers
) -> tuple[np.ndarray, np.ndarray]:
    """The verifier's verdict on each side of each vote: 1.0 passes, 0.0 fails, NaN where the prompt has none."""
    pids, sides = list(prompt_ids), (list(texts_a), list(texts_b))
    out = np.full((2, len(pids)), np.nan)
    rows = [i for i, p in enumerate(pids) if p in verifiers] if verifiers else []
    if rows:
        passed = verify_texts({(pids[i], side[i] or "") for side in sides for i in rows}, verifiers)
        for s, side in enumerate(sides):
            out[s, rows] = [float(passed[(pids[i], side[i] or "")]) for i in rows]
    return out[0], out[1]


# -- the figure ----------------------------------------------------------------------------------------------------
def _picks(wrong_won: np.ndarray, rows: np.ndarray, masks: dict[str, np.ndarray]) -> WrongPicks:
    def share(m: np.ndarray) -> Proportion:
        return proportion(int(wrong_won[m].sum()), int(m.sum()))

    return WrongPicks(overall=share(rows), splits={k: share(rows & m) for k, m in masks.items()})


def preferred_vs_verified(v: pd.DataFrame, unit: str = "chars") -> PreferredVsVerified | None:
    """The figure from annotate.audit.prepare_votes' frame (its a_pass/b_pass verdicts); None when no vote
    qualifies (see the module docstring)."""
    if "a_pass" not in v:
        return None
    a_ok, b_ok = v["a_pass"].to_numpy(dtype=float), v["b_pass"].to_numpy(dtype=float)
    checkable = ~np.isnan(a_ok) & ~np.isnan(b_ok)
    one_right = checkable & (a_ok != b_ok)
    decisive, honeypot = v["decisive"].to_numpy(dtype=bool), v["honeypot"].to_numpy(dtype=bool)
    counted = one_right & decisive & ~honeypot  # a honeypot shows one text twice: one verdict, never counted here
    if not counted.any():
        return None
    d = v[counted]
    a_wrong = d["a_pass"].to_numpy(dtype=float) == 0.0
    wrong_won = (d["choice"].to_numpy() == "a") == a_wrong

    def wrong_and_right(feature: str) -> tuple[np.ndarray, np.ndarray]:
        a, b = d[f"a_{feature}"].to_numpy(dtype=float), d[f"b_{feature}"].to_numpy(dtype=float)
        return np.where(a_wrong, a, b), np.where(a_wrong, b, a)

    wrong_len, right_len = wrong_and_right(unit)
    hedged = wrong_and_right("hedges")[0] > wrong_and_right("confidence")[0]
    longer = wrong_len > right_len
    trait = {"longer": longer, "not_longer": ~longer, "confident": ~hedged, "hedged": hedged}
    masks = {k: trait[k] for k in LENGTHS + TONES}
    masks.update({f"{n}_{t}": trait[n] & trait[t] for n, t in itertools.product(LENGTHS, TONES)})
    ann = d["annotator"].to_numpy()
    return PreferredVsVerified(
        overall=_picks(wrong_won, np.ones(len(d), dtype=bool), masks),
        per_annotator={str(name): _picks(wrong_won, ann == name, masks) for name in sorted(set(ann))},
        prompts=int(d["prompt_id"].nunique()),
        checkable_votes=int(checkable.sum()),
        excluded={
            "both_pass": int((checkable & (a_ok == 1) & (b_ok == 1)).sum()),
            "both_fail": int((checkable & (a_ok == 0) & (b_ok == 0)).sum()),
            "not_decisive": int((one_right & ~decisive).sum()),
        },
        length_unit=unit,
    )


# -- how it reads --------------------------------------------------------------------------------------------------
def _pct(p: Proportion) -> str:
    return "n/a" if not p.n else f"{100 * p.rate:.0f}%"


def _ci(p: Proportion) -> str:
    lo, hi = p.ci
    return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{100 * lo:.0f}-{100 * hi:.0f}%"


def _cell(p: Proportion) -> str:
    return "n/a (no votes)" if not p.n else f"{_pct(p)} ({_ci(p)}, n={p.n})"


def verified_findings(p: PreferredVsVerified | None) -> list[str]:
    """The plain-language sentence of the figure (none without it)."""
    if p is None:
        return []
    o, s = p.overall.overall, p.overall.splits
    return [
        f"On {o.n} votes between a response that passes its prompt's verifier and one that fails it "
        f"({p.prompts} checkable prompts), annotators preferred the wrong one {_pct(o)} of the time (95% CI "
        f"{_ci(o)}): {_pct(s['longer'])} when the wrong one was longer ({s['longer'].n} votes) vs "
        f"{_pct(s['not_longer'])} when it was not ({s['not_longer'].n}), {_pct(s['confident'])} when it sounded "
        f"confident ({s['confident'].n}) vs {_pct(s['hedged'])} when it hedged ({s['hedged'].n})."
    ]


def split_rows(p: PreferredVsVerified) -> list[dict[str, str]]:
    """All annotators: the wrong-preferred share in every split, one row each."""
    rows = [{"votes": "all counted votes", "wrong preferred": _pct(p.overall.overall),
             "95% CI": _ci(p.overall.overall), "n": str(p.overall.overall.n)}]  # fmt: skip
    for key in SPLITS:
        st = p.overall.splits[key]
        rows.append({"votes": SPLIT_LABELS[key], "wrong preferred": _pct(st), "95% CI": _ci(st), "n": str(st.n)})
    return rows


def annotator_rows(p: PreferredVsVerified) -> list[dict[str, str]]:
    """One row per annotator (all annotators first): the overall share and the four one-trait splits, each a
    "rate (95% CI, n)" cell. Names are untrusted: every renderer escapes them."""
    rows = []
    for name, picks in [("all annotators", p.overall), *sorted(p.per_annotator.items())]:
        row = {"annotator": name, "wrong preferred": _cell(picks.overall)}
        row.update({SPLIT_LABELS[k]: _cell(picks.splits[k]) for k in LENGTHS + TONES})
        rows.append(row)
    return rows


VERIFIED_NOTE = (
    "Votes between a response that passes its prompt's verifier and one that fails it (decisive votes only, "
    "honeypots left out): how often the failing one was preferred. 'Longer' compares the wrong response with the "
    "right one ({unit}); 'hedged' means more hedging than confidence markers per 100 words (definitions below), "
    "'confident' otherwise. Wilson 95% intervals."
)


def _html_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def verified_html(p: PreferredVsVerified | None) -> str:
    """The report's section (heading included); empty without the figure."""
    if p is None:
        return ""
    skipped = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in p.excluded.items())
    return (
        "<h2>Preferred vs verified (checkable prompts)</h2>"
        f"<p>{html.escape(VERIFIED_NOTE.format(unit=p.length_unit))}</p>"
        + _html_table(split_rows(p))
        + _html_table(annotator_rows(p))
        + f"<p>{p.checkable_votes} standing votes on checkable prompts; left out: {html.escape(skipped)}.</p>"
    )


def verified_figure(p: PreferredVsVerified) -> Any:
    """A matplotlib Figure: the wrong-preferred share (95% CI) over all annotators, overall and in every split."""
    from matplotlib.figure import Figure

    stats = [p.overall.overall] + [p.overall.splits[k] for k in SPLITS]
    labels = ["all"] + [SPLIT_LABELS[k] for k in SPLITS]
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
    ys = [st.rate if st.n else math.nan for st in stats]
    err = [[max(y - st.ci[0], 0) if st.n else 0 for y, st in zip(ys, stats)],
           [max(st.ci[1] - y, 0) if st.n else 0 for y, st in zip(ys, stats)]]  # fmt: skip
    ax.errorbar(range(len(stats)), ys, yerr=err, fmt="o", color="black", capsize=4)
    ax.set_xticks(range(len(stats)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("wrong one preferred (95% CI)")
    ax.set_title(f"Preferred vs verified: {p.overall.overall.n} votes on {p.prompts} checkable prompts")
    fig.tight_layout()
    return fig
