"""The judge bias card: an AI judge audited as an annotator, next to the humans.

The `judge` command (rlhf/judge.py) writes each verdict of a model through the store as annotator "judge:<model>",
for both orders of each pair (one vote with one response on the left, one with the other). The rest of the audit
already counts a judge as an annotator (agreement, reliability, ranking, ruler); the card adds what matters about a
judge, for every annotator whose id starts with "judge:" (annotate.judge_votes.JUDGE_PREFIX) and, for comparison, for
the humans (every other annotator, together):

- agreement with the human majority: of the judge's labelled, non-honeypot verdicts (both orders, repeats
  included) on pairs where the humans' first votes have a unique most frequent label (annotate.audit_agreement's
  first votes and labels; a tie is a label), the share with that label. Wilson 95% CI;
- position: the share of its decisive, placed votes won by the left response, and its flip rate: of the pairs it
  judged in both orders, how often the response it picked changed (annotate.audit_bias.position_bias, the same flip
  rate as the humans' on swapped repeats); position consistency is 1 minus it. A pair with a tie or skip in
  either order is not counted;
- length and style: the share of longer wins, the choice regressed on position and on length, hedging and
  confidence differences, mean chosen and rejected lengths (annotate.audit_bias.length_bias), and what "pick the
  longer" and a style-only model predict of its votes (annotate.audit.vote_ruler). Each is measured on that
  group's votes alone, so a regression slope is per standard deviation of that group's differences.

The measures are the audit's own; annotate.audit passes them in as `profile` (they live there), so this module
computes only the agreement and the flags, and says how the card reads (findings, rows, HTML, a figure).
Untrusted names reach HTML only through annotate.render.render_inline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from annotate.audit_agreement import N_LABELS, first_votes
from annotate.audit_reliability import html_table
from annotate.audit_stats import proportion
from annotate.audit_types import BiasProfile, JudgeBias, JudgeCard, Proportion
from annotate.judge_votes import JUDGE_PREFIX  # the one definition of who is a judge
from annotate.render import render_inline

FLIP_LIMIT = 0.2  # a flip rate whose CI lies wholly above this is position bias (see JUDGE_RULE)
JUDGE_RULE = (
    "A judge is flagged for position_bias when the 95% CI of its share of left picks excludes 50% or the 95% CI of "
    "its flip rate (pairs judged in both orders where its pick changed) lies wholly above {flip_limit:.0%}; for "
    "length_bias when the 95% CI of its share of longer picks excludes 50%; and length_bias_beyond_humans when that "
    "CI also lies wholly beyond the humans' on the same side of 50%."
)


def judge_votes(v: pd.DataFrame) -> pd.Series:
    """Which votes are an AI judge's (annotate.judge_votes.is_judge, vectorised: the audit may read 200k votes)."""
    return v["annotator"].str.startswith(JUDGE_PREFIX)


def human_agreement(v: pd.DataFrame, judge: str) -> Proportion:
    """The judge's verdicts that match the humans' majority label on the same pair (see the module docstring)."""
    humans = first_votes(v[~judge_votes(v)])
    n_keys = int(v["key"].max()) + 1 if len(v) else 0
    counts = np.zeros((n_keys, N_LABELS))
    np.add.at(counts, (humans["key"].to_numpy(), humans["label"].to_numpy()), 1)
    top = counts.max(axis=1)
    unique = (counts == top[:, None]).sum(axis=1) == 1
    majority = np.where((top > 0) & unique, counts.argmax(axis=1), -1)
    j = v[(v["annotator"] == judge) & (v["label"] >= 0) & ~v["honeypot"]]
    ref = majority[j["key"].to_numpy()]
    counted = ref >= 0
    return proportion(int((j["label"].to_numpy()[counted] == ref[counted]).sum()), int(counted.sum()))


def _excludes_half(p: Proportion) -> bool:
    return p.n > 0 and (p.ci[0] > 0.5 or p.ci[1] < 0.5)


def judge_flags(j: BiasProfile, humans: BiasProfile, flip_limit: float = FLIP_LIMIT) -> tuple[str, ...]:
    """JUDGE_RULE applied to one judge's profile."""
    flags = []
    if _excludes_half(j.left) or (j.flips.n > 0 and j.flips.ci[0] > flip_limit):
        flags.append("position_bias")
    if _excludes_half(j.longer):
        flags.append("length_bias")
        h, mine = humans.longer, j.longer
        if h.n and ((mine.rate > 0.5 and mine.ci[0] > h.ci[1]) or (mine.rate < 0.5 and mine.ci[1] < h.ci[0])):
            flags.append("length_bias_beyond_humans")
    return tuple(flags)


def judge_card(
    v: pd.DataFrame, profile: Callable[[pd.DataFrame], BiasProfile], flip_limit: float = FLIP_LIMIT
) -> JudgeCard | None:
    """The card from annotate.audit.prepare_votes' frame; `profile` measures a group's votes (annotate.audit's
    bias_profile). None when no annotator is a judge."""
    judge_of = judge_votes(v)
    judges = sorted(str(a) for a in v.loc[judge_of, "annotator"].unique())
    if not judges:
        return None
    humans = profile(v[~judge_of])
    out = {}
    for name in judges:
        p = profile(v[v["annotator"] == name])
        fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
        out[name] = JudgeBias(**fields, agreement=human_agreement(v, name), flags=judge_flags(p, humans, flip_limit))
    return JudgeCard(judges=out, humans=humans, flip_limit=flip_limit, rule=JUDGE_RULE.format(flip_limit=flip_limit))


# -- how it reads --------------------------------------------------------------------------------------------------
def _pct(p: Proportion) -> str:
    return "n/a" if not p.n else f"{100 * p.rate:.0f}%"


def _cell(p: Proportion) -> str:
    lo, hi = p.ci
    return "n/a (none)" if not p.n else f"{_pct(p)} ({100 * lo:.0f}-{100 * hi:.0f}%, n={p.n})"


def _odds(profile: BiasProfile, term: str) -> str:
    """exp(slope) of a regression term: the odds of being chosen per SD of that difference. Capped for show: a
    judge that always picks the longer separates the votes completely, and its slope runs off to infinity."""
    c = profile.regression.coefficients.get(term) if profile.regression is not None else None
    if c is None or math.isnan(c.coef):
        return "n/a"
    return ">x100" if c.coef > math.log(100) else "<x0.01" if c.coef < -math.log(100) else f"x{math.exp(c.coef):.2f}"


def _acc(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def card_rows(card: JudgeCard) -> list[dict[str, str]]:
    """The humans, then one row per judge: plain text, escaped by every renderer (report, Dashboard, card)."""
    rows = []
    for name, p in [("humans (all other annotators)", card.humans), *sorted(card.judges.items())]:
        j = p if isinstance(p, JudgeBias) else None
        rows.append({
            "annotator": name, "votes": str(p.votes),
            "agrees with human majority": _cell(j.agreement) if j else "-",
            "left chosen": _cell(p.left), "flip rate (both orders)": _cell(p.flips),
            "longer chosen": _cell(p.longer),
            "odds per SD: length / hedging / confidence": " / ".join(_odds(p, t) for t in ("length", "hedges",
                                                                                          "confidence")),
            '"pick the longer" predicts': _acc(p.ruler.longer.accuracy),
            "style-only model predicts": _acc(p.ruler.style_cv.accuracy),
            "flags": ", ".join(j.flags) if j else "",
        })  # fmt: skip
    return rows


def judge_findings(card: JudgeCard | None) -> list[str]:
    """One sentence per judge, then one per flag."""
    if card is None:
        return []
    out, h = [], card.humans
    for name, j in sorted(card.judges.items()):
        agree = (f"agreed with the human majority on {_cell(j.agreement)} of its verdicts" if j.agreement.n
                 else "judged no pair that has a human majority")  # fmt: skip
        both = "judged no pair decisively in both orders"
        if j.flips.n:
            both = (f"picked the same response in both orders on {100 * (1 - j.flips.rate):.0f}% of {j.flips.n} "
                    f"pairs (flip rate {_cell(j.flips)})")  # fmt: skip
        out.append(
            f"AI judge {name}: {agree}; chose the left response {_cell(j.left)}; {both}; chose the longer response "
            f"{_cell(j.longer)}, the humans {_cell(h.longer)}."
        )
        if "position_bias" in j.flags:
            out.append(f"{name} is flagged for position bias: its verdicts depend on which side a response is on.")
        if "length_bias" in j.flags:
            beyond = " beyond the humans'" if "length_bias_beyond_humans" in j.flags else ""
            out.append(f"{name} is flagged for length bias{beyond}: it chose the longer response {_pct(j.longer)} "
                       "of the time.")  # fmt: skip
    return out


JUDGE_NOTE = (
    "Every annotator whose id starts with 'judge:' (an AI judge, written by the judge command in both orders of each "
    "pair), next to the humans together, each measured on its own votes by the audit's measures. Cells: "
    "share (Wilson 95% CI, n). 'Odds per SD': how the odds of being chosen change per standard deviation of the "
    "length, hedging and confidence difference (logistic regression, as in length bias)."
)


def judge_html(card: JudgeCard | None) -> str:
    """The report's section, heading included; empty without judges."""
    if card is None:
        return ""
    note, rule = render_inline(JUDGE_NOTE), render_inline(card.rule)
    return f"<h2>Judge bias card</h2><p>{note}</p>{html_table(card_rows(card))}<p>{rule}</p>"


def judge_figure(card: JudgeCard) -> Any:
    """A matplotlib Figure: for the humans and each judge, the shares of left and longer picks, the flip rate and
    the agreement with the human majority, each with its 95% CI."""
    from matplotlib.figure import Figure

    names = ["humans", *sorted(card.judges)]
    groups: list[BiasProfile] = [card.humans, *(card.judges[n] for n in names[1:])]
    none = proportion(0, 0)
    series = (
        ("left chosen", "tab:blue", lambda g: g.left),
        ("flip rate", "tab:red", lambda g: g.flips),
        ("longer chosen", "tab:green", lambda g: g.longer),
        ("agrees with humans", "black", lambda g: g.agreement if isinstance(g, JudgeBias) else none),
    )
    fig = Figure(figsize=(max(7, 1.4 * len(names) + 3.5), 3.8))
    ax = fig.subplots()
    for i, (label, color, get) in enumerate(series):
        stats = [get(g) for g in groups]
        ys = [s.rate if s.n else math.nan for s in stats]
        err = [[max(y - s.ci[0], 0) if s.n else 0 for y, s in zip(ys, stats)],
               [max(s.ci[1] - y, 0) if s.n else 0 for y, s in zip(ys, stats)]]  # fmt: skip
        xs = np.arange(len(names)) + (i - 1.5) * 0.15
        ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, capsize=3, label=label)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    flagged = {n for n in names[1:] if card.judges[n].flags}
    ax.set_xticks(range(len(names)), [f"{n} *" if n in flagged else n for n in names], rotation=15, ha="right")
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("share (95% CI)")
    ax.set_title("Judge bias card (* = flagged)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)  # outside: markers reach every corner
    fig.tight_layout()
    return fig
