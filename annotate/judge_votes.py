"""An AI judge's votes, read back from the store: who is a judge, what each verdict carries, and per pair how sure
the judge was and whether it contradicted itself when the two responses swapped places.

A judge (`python rlhf/train.py judge`, rlhf/judge.py) is an annotator named `judge:<model>`. It judges every pair
twice, once with each response shown first (`left`), and writes each verdict as an ordinary vote. The schema has no
field for a probability, so the judge's own figures go in the vote's `rationale` as one JSON object:

    {"p_first": 0.62, "letter_mass": 0.91, "template": "3f2a9c1e0b7d"}

`p_first` is the judge's probability that the response shown first is the better one (from its next-token
log-probabilities of "A" vs "B"), `letter_mass` how much of its next-token probability went to those letters at
all, `template` a hash naming the prompt template. A judge vote without that JSON (a script voting through the JSON
API as `judge:...`) counts by its choice alone: 1 for the side it picked, 1/2 for a tie.

Per pair, in the sampler's canonical terms (a = the lower response id):

    p_a         = mean over the judge's votes of P(a is better)
    uncertainty = 1 - |2 p_a - 1|              (1 at p_a = 1/2, 0 when the judge is certain)
    flipped     = the judge's winner differs between the two orders (position, not content, decided)
    doubt       = 1 if flipped else uncertainty

which is what active sampling reads (annotate.active.JudgeStrategy): human votes go first where doubt is high.
Pure Python over an Arrow table: the labeling app uses it without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pyarrow as pa

JUDGE_PREFIX = "judge:"

PairKey = tuple[str, str, str]  # (prompt_id, lower response id, higher response id): the sampler's canonical a, b


def is_judge(annotator: str | None) -> bool:
    """Whether an annotator name is an AI judge's (`judge:<model>`)."""
    return bool(annotator) and annotator.startswith(JUDGE_PREFIX)


def verdict_rationale(p_first: float, letter_mass: float, template: str) -> str:
    """The rationale a judge vote carries (module doc); rounded, since it is read by people too."""
    return json.dumps({"p_first": round(p_first, 6), "letter_mass": round(letter_mass, 6), "template": template})


def p_first_of(rationale: str | None) -> float | None:
    """The judge's P(first shown is better) from a vote's rationale; None when it holds none."""
    if not rationale or not rationale.startswith("{"):
        return None
    try:
        value = json.loads(rationale).get("p_first")
    except (json.JSONDecodeError, AttributeError):
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    return float(value) if ok else None


@dataclass
class JudgedPair:
    """One pair as the judge saw it: P(a is better) per order shown (`left`: which side came first)."""

    key: PairKey
    by_left: dict[str, list[float]] = field(default_factory=dict)  # "a"/"b" -> P(a better) of each vote

    @property
    def p_a(self) -> float:
        values = [p for ps in self.by_left.values() for p in ps]
        return sum(values) / len(values)

    @property
    def uncertainty(self) -> float:
        return 1.0 - abs(2.0 * self.p_a - 1.0)

    @property
    def flipped(self) -> bool:
        """Both orders judged and their winners differ: the judge followed the position, not the responses."""
        winners = {_winner(sum(ps) / len(ps)) for ps in self.by_left.values()}
        return {"a", "b"} <= winners

    @property
    def doubt(self) -> float:
        return 1.0 if self.flipped else self.uncertainty


def _winner(p_a: float) -> str:
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def _p_a(choice: str, left: str, p_first: float | None) -> float | None:
    """P(response_a better) of one vote; None for a vote that decides nothing (skip, both bad)."""
    if p_first is not None:
        return p_first if left == "a" else 1.0 - p_first
    return {"a": 1.0, "b": 0.0, "tie": 0.5}.get(choice)


def judge_pairs(table: pa.Table, annotator: str | None = None) -> dict[PairKey, JudgedPair]:
    """Every pair some judge (or only `annotator`) voted on, keyed canonically. Retracted votes do not count."""
    from annotate.store import effective_table

    if table.num_rows == 0:
        return {}
    cols = ["annotator", "prompt_id", "response_a_id", "response_b_id", "left", "choice", "rationale"]
    rows = effective_table(table).select(cols).to_pylist()
    out: dict[PairKey, JudgedPair] = {}
    for r in rows:
        if not is_judge(r["annotator"]) or (annotator is not None and r["annotator"] != annotator):
            continue
        p = _p_a(r["choice"], r["left"], p_first_of(r["rationale"]))
        if p is None or r["response_a_id"] == r["response_b_id"]:  # an undecided vote, or a honeypot
            continue
        a, b, left = r["response_a_id"], r["response_b_id"], r["left"]
        if a > b:  # store a/b are not always the sampler's canonical order: turn the vote around
            a, b, p, left = b, a, 1.0 - p, "b" if left == "a" else "a"
        key = (r["prompt_id"], a, b)
        out.setdefault(key, JudgedPair(key)).by_left.setdefault(left, []).append(p)
    return out


def unsure_pairs(table: pa.Table, *, margin: float = 0.1, annotator: str | None = None) -> list[JudgedPair]:
    """The pairs worth a human vote: the judge flipped across orders, or its P(a better) lies within `margin` of
    1/2. Most doubtful first (flipped, then nearest 1/2)."""
    judged = judge_pairs(table, annotator).values()
    picked = [j for j in judged if j.flipped or abs(j.p_a - 0.5) <= margin]
    return sorted(picked, key=lambda j: (-j.doubt, j.key))


def summary(table: pa.Table, annotator: str | None = None) -> dict[str, float | int]:
    """Pairs judged in both orders, their flip rate, and the judge's mean confidence |2 p_a - 1|."""
    both = [j for j in judge_pairs(table, annotator).values() if len(j.by_left) == 2]
    n = len(both)
    return {
        "pairs_both_orders": n,
        "flip_rate": sum(j.flipped for j in both) / n if n else math.nan,
        "mean_confidence": sum(1 - j.uncertainty for j in both) / n if n else math.nan,
    }
