"""The counts behind PairSampler, kept incrementally so that a serve, a vote and `progress()` cost the same
on a pool of 300 pairs as on one of 300,000.

Per pair: distinct judges (annotators with a standing non-skip vote), serves in flight, the canonical tally,
and who has seen it. Open pairs sit in buckets by load (judges + in flight, below `overlap`) that are
IndexedSets, so strategies pick by rejection sampling. Per annotator: what they have seen, and how many of those
are open / gold / in each bucket (so "left for you" and "any unseen pair in this bucket?" are subtractions),
standing records per UTC day, gold accuracy, the pairs they decided (for audit repeats). When a pair closes,
reopens or changes bucket only the annotators who have seen it are adjusted.

Records are accounted for once each by comparison_id; a retraction that arrives before its vote still removes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from annotate.indexed_set import IndexedSet
from annotate.judge_votes import is_judge

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
DAY_US = 86_400_000_000


def to_micros(t: datetime | int | None) -> int:
    """A record's created_at as microseconds since the epoch (naive datetimes are UTC; None is now)."""
    if t is None:
        t = datetime.now(UTC)
    if isinstance(t, int):
        return t
    return ((t if t.tzinfo is not None else t.replace(tzinfo=UTC)) - EPOCH) // US


def day_number(d: date) -> int:
    """A UTC calendar day as the number of days since the epoch (what `micros // DAY_US` gives)."""
    return (d - EPOCH.date()).days


@dataclass(slots=True)
class Vote:
    cid: str
    annotator: str
    pair: int  # -1: honeypot or a pair not in this pool
    choice: str  # canonical a/b (when pair >= 0), tie, both_bad, skip
    left: str  # canonical side shown left
    created: int  # microseconds since the epoch (UTC)
    gold_correct: bool | None  # None when not a gold pair or not an a/b decision
    side: str | None  # the decision in canonical terms: "a", "b", "tie"; None for skips, both_bad, pair -1

    @property
    def created_at(self) -> datetime:
        return EPOCH + self.created * US


@dataclass(slots=True)
class AnnotatorState:
    name: str
    # [seen pairs with fewer than `overlap` judges, seen gold pairs, seen pairs in bucket 0, 1, ...]
    counts: list[int]
    seen: set[int] = field(default_factory=set)
    votes: dict[str, Vote] = field(default_factory=dict)  # standing records, in arrival order
    standing: dict[int, list[str]] = field(default_factory=dict)  # pair -> standing non-skip votes (ids), in order
    days: dict[int, int] = field(default_factory=dict)  # UTC day number -> standing records
    gold_n: int = 0
    gold_right: int = 0
    decided: IndexedSet = field(default_factory=IndexedSet)  # pairs with a standing a/b/tie vote (repeats)
    left_by: dict[int, str] = field(default_factory=dict)  # pair -> canonical side last shown left
    pending: int | None = None  # pair served and not yet judged (counted in flight)
    pending_clean: bool = False  # no record or other process has touched the pending pair since it was served


class Ledger:
    """PairSampler's state. The subclass sets `pairs` [(prompt_id, a, b, gold side)] and `_index` {(prompt_id,
    lower response id, higher one): pair} before calling `__init__`; every method here expects the caller to
    hold the sampler's lock."""

    def __init__(self, overlap: int):
        self.overlap = overlap
        n = len(self.pairs)
        # load = distinct judges + in-flight serves; _buckets[l] holds the open pairs with load l (< overlap).
        self._judges = [0] * n  # distinct annotators with a standing non-skip vote
        self._inflight = [0] * n
        self._buckets = [IndexedSet(range(n))] + [IndexedSet() for _ in range(overlap - 1)]
        self._open = n  # pairs with fewer than `overlap` judges
        self._needed = n * overlap  # sum over pairs of max(0, overlap - judges)
        self._seen_by: dict[int, list[str]] = {}  # pair -> annotators who have seen it
        self._ann: dict[str, AnnotatorState] = {}
        self._votes: dict[str, Vote] = {}  # standing records by comparison_id
        self._applied: set[str] = set()  # comparison_ids accounted for (votes and retractions)
        self._retracted: set[str] = set()  # comparison_ids some retraction names
        self._tally: dict[int, dict[str, int]] = {}  # pair -> canonical votes {"a": n, "b": n, "tie": n}

    def pair_index(self, prompt_id: str, response_a_id: str, response_b_id: str) -> int | None:
        if response_b_id < response_a_id:
            response_a_id, response_b_id = response_b_id, response_a_id
        return self._index.get((prompt_id, response_a_id, response_b_id))

    def _load(self, i: int) -> int:
        return self._judges[i] + self._inflight[i]

    def _annotator(self, name: str) -> AnnotatorState:
        if (ann := self._ann.get(name)) is None:
            ann = self._ann[name] = AnnotatorState(name, [0] * (self.overlap + 2))
        return ann

    def _seen_set(self, annotator: str) -> set[int]:
        ann = self._ann.get(annotator)
        return ann.seen if ann is not None else set()

    def _shift(self, i: int, judges: int = 0, inflight: int = 0) -> None:
        """Change pair i's judges / in-flight count and keep buckets and every derived count in step."""
        ov = self.overlap
        old_j = self._judges[i]
        old_load = old_j + self._inflight[i]
        new_j = self._judges[i] = old_j + judges
        self._inflight[i] += inflight
        new_load = old_load + judges + inflight
        if old_load < ov:
            self._buckets[old_load].discard(i)
        if new_load < ov:
            self._buckets[new_load].add(i)
        opened = (new_j < ov) - (old_j < ov)  # +1 reopened, -1 closed
        self._open += opened
        self._needed += max(0, ov - new_j) - max(0, ov - old_j)
        for name in self._seen_by.get(i, ()):
            counts = self._ann[name].counts
            counts[0] += opened
            if old_load < ov:
                counts[2 + old_load] -= 1
            if new_load < ov:
                counts[2 + new_load] += 1

    def _see(self, ann: AnnotatorState, i: int, sign: int = 1) -> None:
        """Add pair i to (sign 1) or drop it from (sign -1) what `ann` has seen."""
        if (i in ann.seen) == (sign > 0):
            return
        if sign > 0:
            ann.seen.add(i)
            if (names := self._seen_by.get(i)) is None:
                self._seen_by[i] = [ann.name]
            else:
                names.append(ann.name)
        else:
            ann.seen.discard(i)
            self._seen_by[i].remove(ann.name)
        load = self._judges[i] + self._inflight[i]
        counts = ann.counts
        if self._judges[i] < self.overlap:
            counts[0] += sign
        if self.pairs[i][3] is not None:
            counts[1] += sign
        if load < self.overlap:
            counts[2 + load] += sign

    def _apply(self, rec: dict) -> bool:
        return self._apply_row(
            rec["comparison_id"], rec["prompt_id"], rec["response_a_id"], rec["response_b_id"], rec["choice"],
            rec["annotator"], rec.get("left"), rec.get("created_at"), rec.get("retracts"),
        )  # fmt: skip

    def _apply_row(self, cid, prompt_id, a_id, b_id, choice, annotator, left, created, retracts) -> bool:
        """Account for one record once (False if its comparison_id was accounted for already)."""
        if cid in self._applied:
            return False
        self._applied.add(cid)
        if is_judge(annotator):  # an AI judge's verdicts (rlhf/train.py judge) never close a pair for people
            return True
        if retracts:
            self._retracted.add(retracts)
            self._remove_vote(retracts)
        else:
            self._add_vote(cid, prompt_id, a_id, b_id, choice, annotator, left or "a", to_micros(created))
            if cid in self._retracted:  # its retraction came first
                self._remove_vote(cid)
        return True

    def _add_vote(self, cid, prompt_id, a_id, b_id, choice, annotator, left, created: int) -> None:
        ann = self._ann.get(annotator) or self._annotator(annotator)
        i = self.pair_index(prompt_id, a_id, b_id) if a_id != b_id else None
        gold_correct = side = None
        if i is not None:
            _, a, _, gold = self.pairs[i]
            if a_id != a.response_id:  # the record's a/b is canonical b/a
                choice, left = {"a": "b", "b": "a"}.get(choice, choice), other_side(left)
            if choice in ("a", "b", "tie"):
                side = choice
                if gold is not None and side != "tie":
                    gold_correct = side == gold
        vote = Vote(cid, ann.name, -1 if i is None else i, choice, left, created, gold_correct, side)
        self._votes[cid] = ann.votes[cid] = vote
        day = created // DAY_US
        ann.days[day] = ann.days.get(day, 0) + 1
        if gold_correct is not None:
            ann.gold_n += 1
            ann.gold_right += gold_correct
        if i is None:
            return
        if ann.pending == i:
            ann.pending_clean = False
        self._see(ann, i)
        ann.left_by[i] = left
        if side is not None:
            if (tally := self._tally.get(i)) is None:
                tally = self._tally[i] = {"a": 0, "b": 0, "tie": 0}
            tally[side] += 1
            ann.decided.add(i)
        if choice != "skip":
            if (votes := ann.standing.get(i)) is None:
                ann.standing[i] = [cid]
                self._shift(i, judges=1)
            else:
                votes.append(cid)

    def _remove_vote(self, comparison_id: str) -> None:
        v = self._votes.pop(comparison_id, None)
        if v is None:
            return
        ann = self._ann[v.annotator]
        del ann.votes[comparison_id]
        day = v.created // DAY_US
        ann.days[day] -= 1
        if not ann.days[day]:
            del ann.days[day]
        if v.gold_correct is not None:
            ann.gold_n -= 1
            ann.gold_right -= v.gold_correct
        if v.pair < 0 or v.choice == "skip":
            return
        if v.side is not None:
            self._tally[v.pair][v.side] -= 1
        votes = ann.standing[v.pair]
        votes.remove(comparison_id)
        if not votes:
            del ann.standing[v.pair]
            self._shift(v.pair, judges=-1)
        if v.side is not None and not any(self._votes[c].side is not None for c in votes):
            ann.decided.discard(v.pair)

    def _serve(self, ann: AnnotatorState, i: int) -> None:
        """Pair i is shown to `ann`: seen, and in flight until judged or until their next serve."""
        self._see(ann, i)
        self._shift(i, inflight=1)
        ann.pending, ann.pending_clean = i, True

    def _release_pending(self, ann: AnnotatorState) -> None:
        if (i := ann.pending) is not None:
            ann.pending = None
            self._shift(i, inflight=-1)

    def _hold(self, ann: AnnotatorState, index: int, kind: str) -> None:
        dropped, clean = ann.pending, ann.pending_clean
        self._release_pending(ann)
        if dropped is not None and dropped != index and clean:
            self._see(ann, dropped, -1)  # shown but never judged: it may come back
        if index >= 0 and kind not in ("repeat", "honeypot"):
            self._serve(ann, index)


def other_side(side: str) -> str:
    return "b" if side == "a" else "a"
