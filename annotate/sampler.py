"""Choose the next pair of responses an annotator judges.

A pool (annotate.schema.POOL_SCHEMA) holds several candidates per prompt; every unordered pair of candidates
of one prompt is a comparable pair. The sampler keeps, per pair, how many different annotators judged it and,
per annotator, which pairs they have seen, so that:

- nobody is shown the same pair twice (except the deliberate audit repeats below);
- with `overlap=k` a pair is served until k different annotators judged it (inter-annotator agreement);
- `balanced` serves the least-judged pairs first, `uniform` any open pair;
- the left/right placement is a fair coin per serve, recorded in the comparison's `left` field;
- a `gold_share` of serves are gold pairs (known answer) to measure annotator accuracy. A pair is gold when
  both candidates carry a numeric `gold_score` in their pool `meta` and the scores differ; higher is better;
- `repeat_rate` re-serves a pair the annotator already judged with sides swapped and `honeypot_rate` serves a
  response against itself: both feed the audit's position-bias flip rate and are visible in the data
  (same annotator + pair twice; response_a_id == response_b_id).

State is rebuilt from the store's records at start-up, so a restart keeps counts. All public methods are
thread-safe (Gradio runs handlers in threads). Strategies plug in through STRATEGIES; `active` (annotate.active)
needs reward-model scores, so it is passed in as an instance.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

import pyarrow as pa

from annotate.active import ActiveStrategy
from annotate.pool import gold_pairs
from annotate.schema import SchemaError


@dataclass(frozen=True)
class Candidate:
    response_id: str
    text: str
    source: str


@dataclass(frozen=True)
class Pair:
    """One serve: canonical sides a/b (sorted by response id) and which of them is shown on the left."""

    index: int  # pair index in the sampler (-1 for honeypots)
    prompt_id: str
    prompt: list[dict[str, str]]
    a: Candidate
    b: Candidate
    left: str  # "a" or "b"
    kind: str = "normal"  # normal | gold | repeat | honeypot
    gold: str | None = None  # the known better side ("a"/"b") for gold pairs

    @property
    def shown(self) -> tuple[Candidate, Candidate]:
        """(left, right) candidates as displayed."""
        return (self.a, self.b) if self.left == "a" else (self.b, self.a)


@dataclass
class _Vote:
    annotator: str
    pair: int
    choice: str
    day: date
    gold_correct: bool | None  # None when not a gold pair or not an a/b decision
    side: str | None = None  # the decision in canonical terms: "a", "b", "tie"; None for skips and both_bad


class Strategy(Protocol):
    """Picks a pair index among those `sampler.open_pairs(annotator)` offers (None when nothing is left)."""

    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None: ...


class UniformStrategy:
    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None:
        cands = sampler.open_pairs(annotator)
        return rng.choice(cands) if cands else None


class BalancedStrategy:
    """Fewest judgments first: the lowest-load bucket that still has a pair this annotator has not seen."""

    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None:
        seen = sampler._seen[annotator]
        for bucket in sampler._buckets:
            cands = bucket - seen if seen else bucket
            if cands:
                return rng.choice(tuple(cands))
        return None


STRATEGIES: dict[str, type] = {"uniform": UniformStrategy, "balanced": BalancedStrategy, "active": ActiveStrategy}


class PairSampler:
    def __init__(
        self,
        pool: pa.Table,
        *,
        strategy: str | Strategy = "balanced",
        overlap: int = 1,
        gold_share: float = 0.0,
        repeat_rate: float = 0.0,
        honeypot_rate: float = 0.0,
        seed: int | None = None,
        votes: pa.Table | None = None,
    ):
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")
        for name, rate in (("gold_share", gold_share), ("repeat_rate", repeat_rate), ("honeypot_rate", honeypot_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if isinstance(strategy, str):
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown strategy {strategy!r}; choose from {sorted(STRATEGIES)}")
            strategy = STRATEGIES[strategy]()
        self.strategy: Strategy = strategy
        self.overlap, self.gold_share = overlap, gold_share
        self.repeat_rate, self.honeypot_rate = repeat_rate, honeypot_rate
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._build_pairs(pool)
        # load = distinct judges + in-flight serves; _buckets[l] holds the open pairs with load l (< overlap).
        self._judges: list[dict[str, int]] = [defaultdict(int) for _ in self.pairs]
        self._inflight = [0] * len(self.pairs)
        self._buckets: list[set[int]] = [set(range(len(self.pairs)))] + [set() for _ in range(overlap - 1)]
        self._seen: dict[str, set[int]] = defaultdict(set)
        self._pending: dict[str, int] = {}
        self._votes: dict[str, _Vote] = {}
        self._mine: dict[str, dict[str, _Vote]] = defaultdict(dict)  # annotator -> comparison_id -> vote
        self._left_by: dict[tuple[str, int], str] = {}  # (annotator, pair) -> canonical side last shown left
        self._tally: dict[int, dict[str, int]] = defaultdict(lambda: {"a": 0, "b": 0, "tie": 0})  # canonical votes
        if votes is not None and votes.num_rows:
            self.load_votes(votes)

    # -- set-up --------------------------------------------------------------------------------------------
    def _build_pairs(self, pool: pa.Table) -> None:
        self.gold = gold_pairs(pool)
        by_prompt: dict[str, tuple[list, list[Candidate]]] = {}
        for row in pool.select(["prompt_id", "prompt", "response_id", "response", "source", "meta"]).to_pylist():
            prompt, cands = by_prompt.setdefault(row["prompt_id"], (row["prompt"], []))
            cands.append(Candidate(row["response_id"], row["response"], row["source"]))
        self.prompts = {pid: prompt for pid, (prompt, _) in by_prompt.items()}
        self.candidates = {(pid, c.response_id): c for pid, (_, cs) in by_prompt.items() for c in cs}
        self.pairs: list[tuple[str, Candidate, Candidate, str | None]] = []
        for pid, (_, cands) in by_prompt.items():
            cands = sorted(cands, key=lambda c: c.response_id)  # canonical a/b: stable across restarts
            for i, a in enumerate(cands):
                for b in cands[i + 1 :]:
                    winner = self.gold.get((pid, a.response_id, b.response_id))
                    side = None if winner is None else ("a" if winner == a.response_id else "b")
                    self.pairs.append((pid, a, b, side))
        if not self.pairs:
            raise SchemaError("pool: no prompt has two or more candidates, so there is nothing to compare")
        self._index = {(pid, a.response_id, b.response_id): i for i, (pid, a, b, _) in enumerate(self.pairs)}
        self.gold_pairs = [i for i, p in enumerate(self.pairs) if p[3] is not None]

    def pair_index(self, prompt_id: str, response_a_id: str, response_b_id: str) -> int | None:
        lo, hi = sorted((response_a_id, response_b_id))
        return self._index.get((prompt_id, lo, hi))

    def load_votes(self, table: pa.Table) -> None:
        """Replay a store's records (votes and retractions) so a restarted app continues where it stopped."""
        cols = ["comparison_id", "prompt_id", "response_a_id", "response_b_id", "choice", "annotator"]
        rows = table.select([*cols, "created_at", "retracts"]).to_pylist()
        with self._lock:
            for r in rows:
                if r["retracts"] is None:
                    self._add_vote(r)
            for r in rows:
                if r["retracts"] is not None:
                    self._remove_vote(r["retracts"])

    # -- bookkeeping (callers hold the lock) ---------------------------------------------------------------
    def _load(self, i: int) -> int:
        return len(self._judges[i]) + self._inflight[i]

    def _move(self, i: int, old: int) -> None:
        new = self._load(i)
        if old < self.overlap:
            self._buckets[old].discard(i)
        if new < self.overlap:
            self._buckets[new].add(i)

    def _add_vote(self, rec: dict) -> None:
        i = self.pair_index(rec["prompt_id"], rec["response_a_id"], rec["response_b_id"])
        created = rec.get("created_at") or datetime.now(UTC)
        gold_correct, side = None, None
        if i is not None and rec["response_a_id"] != rec["response_b_id"]:
            self._seen[rec["annotator"]].add(i)
            if rec["choice"] != "skip":
                old = self._load(i)
                self._judges[i][rec["annotator"]] += 1
                self._move(i, old)
            if rec["choice"] in ("a", "b"):
                # The record's a/b may be in either order; compare by response id.
                chosen = rec["response_a_id"] if rec["choice"] == "a" else rec["response_b_id"]
                side = "a" if chosen == self.pairs[i][1].response_id else "b"
            elif rec["choice"] == "tie":
                side = "tie"
            if side is not None:
                self._tally[i][side] += 1
            gold = self.pairs[i][3]
            if gold is not None and side in ("a", "b"):
                gold_correct = side == gold
        vote = _Vote(rec["annotator"], -1 if i is None else i, rec["choice"], created.date(), gold_correct, side)
        self._votes[rec["comparison_id"]] = self._mine[rec["annotator"]][rec["comparison_id"]] = vote

    def _remove_vote(self, comparison_id: str) -> None:
        v = self._votes.pop(comparison_id, None)
        if v is not None:
            self._mine[v.annotator].pop(comparison_id, None)
        if v is None or v.pair < 0 or v.choice == "skip":
            return
        if v.side is not None:
            self._tally[v.pair][v.side] -= 1
        judges = self._judges[v.pair]
        if judges.get(v.annotator, 0) > 0:
            old = self._load(v.pair)
            judges[v.annotator] -= 1
            if judges[v.annotator] == 0:
                del judges[v.annotator]
            self._move(v.pair, old)

    def _release_pending(self, annotator: str) -> None:
        i = self._pending.pop(annotator, None)
        if i is not None:
            old = self._load(i)
            self._inflight[i] -= 1
            self._move(i, old)

    # -- public API ----------------------------------------------------------------------------------------
    def open_pairs(self, annotator: str) -> list[int]:
        """Pairs still needing judgments that this annotator has not seen (for strategies)."""
        seen = self._seen[annotator]
        return [i for bucket in self._buckets for i in bucket if i not in seen]

    def is_open(self, annotator: str, i: int) -> bool:
        """Pair i still needs judgments and this annotator has not seen it (for strategies)."""
        return self._load(i) < self.overlap and i not in self._seen[annotator]

    def voted_pairs(self) -> list[int]:
        """Pairs holding at least one a/b/tie vote (for strategies that weigh votes already cast)."""
        return [i for i, t in self._tally.items() if any(t.values())]

    def next_pair(self, annotator: str) -> Pair | None:
        """The next pair to show `annotator`, or None when nothing is left for them."""
        with self._lock:
            self._release_pending(annotator)
            roll = self._rng.random()
            if roll < self.honeypot_rate:
                return self._honeypot()
            roll -= self.honeypot_rate
            if roll < self.repeat_rate and (pair := self._repeat(annotator)) is not None:
                return pair
            roll -= self.repeat_rate
            i, kind = None, "normal"
            if roll < self.gold_share:
                unseen = [g for g in self.gold_pairs if g not in self._seen[annotator]]
                if unseen:
                    i, kind = self._rng.choice(unseen), "gold"
            if i is None:
                i = self.strategy.choose(self, annotator, self._rng)
            if i is None:
                return None
            self._seen[annotator].add(i)
            old = self._load(i)
            self._inflight[i] += 1
            self._move(i, old)
            self._pending[annotator] = i
            return self._make(i, self._rng.choice("ab"), kind)

    def _make(self, i: int, left: str, kind: str) -> Pair:
        pid, a, b, gold = self.pairs[i]
        kind = "gold" if gold is not None and kind == "normal" else kind
        return Pair(i, pid, self.prompts[pid], a, b, left, kind, gold)

    def _repeat(self, annotator: str) -> Pair | None:
        """A pair this annotator decided before, shown with the sides swapped relative to their last view."""
        last = {}
        for v in self._mine[annotator].values():
            if v.pair >= 0 and v.choice in ("a", "b", "tie"):
                last[v.pair] = v
        if not last:
            return None
        i = self._rng.choice(sorted(last))
        left = self._left_by.get((annotator, i), self._rng.choice("ab"))
        return self._make(i, "b" if left == "a" else "a", "repeat")

    def _honeypot(self) -> Pair:
        pid, a, _, _ = self.pairs[self._rng.randrange(len(self.pairs))]
        return Pair(-1, pid, self.prompts[pid], a, a, "a", "honeypot")

    def record(self, rec: dict) -> None:
        """Account for a comparison record once the store holds it (vote or retraction)."""
        with self._lock:
            if rec.get("retracts"):
                self._remove_vote(rec["retracts"])
                return
            self._add_vote(rec)
            i = self._votes[rec["comparison_id"]].pair
            if i >= 0:
                self._left_by[(rec["annotator"], i)] = (
                    rec["left"] if rec["response_a_id"] == self.pairs[i][1].response_id else _other(rec["left"])
                )
            if self._pending.get(rec["annotator"]) == i:
                self._release_pending(rec["annotator"])

    def hold(self, annotator: str, pair: Pair) -> None:
        """Mark a pair as being shown again (after an undo) so it counts as in flight."""
        with self._lock:
            dropped = self._pending.get(annotator)
            self._release_pending(annotator)
            if dropped is not None and dropped != pair.index:
                self._seen[annotator].discard(dropped)  # shown but never judged: it may come back
            if pair.index >= 0 and pair.kind not in ("repeat", "honeypot"):
                old = self._load(pair.index)
                self._inflight[pair.index] += 1
                self._move(pair.index, old)
                self._pending[annotator] = pair.index

    def progress(self, annotator: str, today: date | None = None) -> dict:
        """done_today, done (all time), left (pairs open to this annotator), needed, gold accuracy."""
        today = today or datetime.now(UTC).date()
        with self._lock:
            mine = list(self._mine[annotator].values())
            gold = [v.gold_correct for v in mine if v.gold_correct is not None]
            seen = self._seen[annotator]
            left = sum(1 for i, j in enumerate(self._judges) if len(j) < self.overlap and i not in seen)
            needed = sum(max(0, self.overlap - len(j)) for j in self._judges)
        return {
            "done_today": sum(1 for v in mine if v.day == today),
            "done": len(mine),
            "left": left,
            "needed": needed,
            "gold_n": len(gold),
            "gold_accuracy": (sum(gold) / len(gold)) if gold else None,
        }

    def tally(self, i: int) -> dict[str, int]:
        """Votes cast on pair i in canonical terms: {"a": n, "b": n, "tie": n} (retractions removed)."""
        with self._lock:
            return dict(self._tally[i]) if i in self._tally else {"a": 0, "b": 0, "tie": 0}

    def judgments(self, pairs: Iterable[int] | None = None) -> list[int]:
        """Distinct annotators who judged each pair (skips excluded)."""
        with self._lock:
            idx = range(len(self.pairs)) if pairs is None else pairs
            return [len(self._judges[i]) for i in idx]


def _other(side: str) -> str:
    return "b" if side == "a" else "a"
