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

Cost: a serve, a vote and `progress()` do not grow with the pool. Open pairs sit in buckets by load (distinct
judges + serves in flight) that are IndexedSets, so a strategy picks by rejection sampling (a few random draws
that skip pairs the annotator has seen) and scans a bucket only when most of it is seen; per annotator the
sampler keeps counts of seen pairs per bucket, seen open pairs, standing votes per UTC day and gold accuracy,
updated as votes come and go (a pair that closes or reopens adjusts only the annotators who have seen it).

State is rebuilt from the store's records at start-up in one pass, so a restart keeps counts; `apply()` takes
records written by other app processes on the same store (idempotent by comparison_id; a retraction may come
before the vote it retracts). All public methods are thread-safe (one RLock; Gradio runs handlers in threads).
Strategies plug in through STRATEGIES and read the sampler only through its public methods (`open_by_load`,
`seen_pairs`, `is_open`, `tally`, ...); `active` (annotate.active) needs reward-model scores, so it is passed in as an
instance. The dependency runs one way: this module imports annotate.active, never the reverse.
"""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from annotate.active import ActiveStrategy
from annotate.indexed_set import pick_unseen, pick_weighted
from annotate.ledger import AnnotatorState, Ledger, day_number, other_side
from annotate.pool import gold_pairs, pool_verifiers
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
    kind: str = "normal"  # normal | gold | repeat | honeypot | qualify (a gold pair served for qualification)
    gold: str | None = None  # the known better side ("a"/"b") for gold pairs

    @property
    def shown(self) -> tuple[Candidate, Candidate]:
        """(left, right) candidates as displayed."""
        return (self.a, self.b) if self.left == "a" else (self.b, self.a)


class Strategy(Protocol):
    """Picks an open pair (load < overlap) this annotator has not seen; None when there is none."""

    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None: ...


class UniformStrategy:
    """Any open pair, uniformly: rejection sampling over all buckets, then bucket by unseen count."""

    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None:
        seen = sampler.seen_pairs(annotator)
        buckets = sampler.open_by_load()
        i = pick_weighted(buckets, lambda x: x not in seen, rng)
        if i is not None:
            return i
        unseen = sampler.unseen_per_bucket(annotator)
        if not (total := sum(unseen)):
            return None
        r = rng.randrange(total)
        for items, n in zip(buckets, unseen):
            if r < n:
                return pick_unseen(items, seen, rng)
            r -= n
        return None


class BalancedStrategy:
    """Fewest judgments first: the lowest-load bucket that still has a pair this annotator has not seen."""

    def choose(self, sampler: PairSampler, annotator: str, rng: random.Random) -> int | None:
        seen = sampler.seen_pairs(annotator)
        for bucket, n in zip(sampler.open_by_load(), sampler.unseen_per_bucket(annotator)):
            if n:
                return pick_unseen(bucket, seen, rng)
        return None


STRATEGIES: dict[str, type] = {"uniform": UniformStrategy, "balanced": BalancedStrategy, "active": ActiveStrategy}


class PairSampler(Ledger):
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
        self.gold_share = gold_share
        self.repeat_rate, self.honeypot_rate = repeat_rate, honeypot_rate
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[dict], None]] = []
        with _gc_paused():
            self._build_pairs(pool)
            Ledger.__init__(self, overlap)
        if votes is not None and votes.num_rows:
            self.load_votes(votes)

    # -- set-up --------------------------------------------------------------------------------------------
    def _build_pairs(self, pool: pa.Table) -> None:
        meta = pool.column("meta")
        # Parse every meta only when some may name a gold score (a JSON key could also be spelt with \u escapes).
        maybe_gold = any(pc.any(pc.match_substring(meta, s)).as_py() for s in ("gold_score", "\\u"))
        self.gold = gold_pairs(pool) if maybe_gold else {}
        # The Dashboard's preferred vs verified reads the served pool's verifiers (same cheap pre-check as gold).
        maybe_checkable = any(pc.any(pc.match_substring(meta, s)).as_py() for s in ("verifier", "\\u"))
        self.verifiers = pool_verifiers(pool) if maybe_checkable else {}
        cols = [pool.column(c).to_pylist() for c in ("prompt_id", "response_id", "response", "source")]
        by_prompt: dict[str, list[Candidate]] = {}
        first: list[int] = []  # first row of each prompt: its prompt is read once
        for k, (pid, rid, text, source) in enumerate(zip(*cols)):
            if (cands := by_prompt.get(pid)) is None:
                by_prompt[pid] = cands = []
                first.append(k)
            cands.append(Candidate(rid, text, source))
        self.prompts = dict(zip(by_prompt, pool.column("prompt").take(first).to_pylist()))
        self.candidates = {(pid, c.response_id): c for pid, cs in by_prompt.items() for c in cs}
        self.pairs: list[tuple[str, Candidate, Candidate, str | None]] = []
        gold = self.gold
        for pid, cands in by_prompt.items():
            cands = sorted(cands, key=lambda c: c.response_id)  # canonical a/b: stable across restarts
            for i, a in enumerate(cands):
                for b in cands[i + 1 :]:
                    winner = gold.get((pid, a.response_id, b.response_id)) if gold else None
                    side = None if winner is None else ("a" if winner == a.response_id else "b")
                    self.pairs.append((pid, a, b, side))
        if not self.pairs:
            raise SchemaError("pool: no prompt has two or more candidates, so there is nothing to compare")
        self._index = {(pid, a.response_id, b.response_id): i for i, (pid, a, b, _) in enumerate(self.pairs)}
        self.gold_pairs = [i for i, p in enumerate(self.pairs) if p[3] is not None]

    def load_votes(self, table: pa.Table) -> None:
        """Replay a store's records (votes and retractions), oldest first, so a restarted app continues where it
        stopped. One pass; records already accounted for are skipped."""
        cols = ["comparison_id", "prompt_id", "response_a_id", "response_b_id", "choice", "annotator", "left"]
        micros = table.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        order = pc.sort_indices(micros)  # stable: equal times keep the store's order
        data = [table.column(c).take(order).to_pylist() for c in cols]
        data += [micros.take(order).to_pylist(), table.column("retracts").take(order).to_pylist()]
        with self._lock, _gc_paused():
            apply = self._apply_row
            for row in zip(*data):
                apply(*row)

    # -- public API ----------------------------------------------------------------------------------------
    def open_pairs(self, annotator: str) -> list[int]:
        """Pairs still needing judgments that this annotator has not seen. O(pool): the strategies here do not
        use it; it is for callers that want the whole list."""
        with self._lock:
            seen = self._seen_set(annotator)
            return [i for bucket in self._buckets for i in bucket if i not in seen]

    def open_by_load(self) -> list[Sequence[int]]:
        """The open pairs by load 0 .. overlap-1 (for strategies). Live views, O(overlap) to get: read them under
        the sampler's lock (a strategy's choose() runs under it) and never modify them."""
        with self._lock:
            return [b.items for b in self._buckets]

    def seen_pairs(self, annotator: str) -> set[int]:
        """Pairs this annotator has seen (for strategies). A live view, like open_by_load(): read it, never modify."""
        with self._lock:
            return self._seen_set(annotator)

    def unseen_per_bucket(self, annotator: str) -> list[int]:
        """For each load 0 .. overlap-1: how many open pairs of that load this annotator has not seen (O(overlap))."""
        with self._lock:
            ann = self._ann.get(annotator)
            seen = ann.counts[2:] if ann is not None else [0] * self.overlap
            return [len(b) - s for b, s in zip(self._buckets, seen)]

    def is_open(self, annotator: str, i: int) -> bool:
        """Pair i still needs judgments and this annotator has not seen it (for strategies)."""
        return self._load(i) < self.overlap and i not in self._seen_set(annotator)

    def voted_pairs(self) -> list[int]:
        """Pairs holding at least one a/b/tie vote (for strategies that weigh votes already cast)."""
        with self._lock:
            return [i for i, t in self._tally.items() if any(t.values())]

    def next_pair(self, annotator: str, gold_only: bool = False) -> Pair | None:
        """The next pair to show `annotator`, or None when nothing is left for them. `gold_only`: a gold pair they
        have not seen, of kind "qualify" (annotate.qualify), or None when none is left."""
        with self._lock:
            ann = self._annotator(annotator)
            self._release_pending(ann)
            if gold_only:
                if ann.counts[1] >= len(self.gold_pairs):
                    return None
                i = pick_unseen(self.gold_pairs, ann.seen, self._rng)
                if i is None:
                    return None
                self._serve(ann, i)
                return self._make(i, self._rng.choice("ab"), "qualify")
            roll = self._rng.random()
            if roll < self.honeypot_rate:
                return self._honeypot()
            roll -= self.honeypot_rate
            if roll < self.repeat_rate and (pair := self._repeat(ann)) is not None:
                return pair
            roll -= self.repeat_rate
            i, kind = None, "normal"
            if roll < self.gold_share and ann.counts[1] < len(self.gold_pairs):  # an unseen gold pair exists
                i, kind = pick_unseen(self.gold_pairs, ann.seen, self._rng), "gold"
            if i is None:
                i = self.strategy.choose(self, annotator, self._rng)
            if i is None:
                return None
            self._serve(ann, i)
            return self._make(i, self._rng.choice("ab"), kind)

    def _make(self, i: int, left: str, kind: str) -> Pair:
        pid, a, b, gold = self.pairs[i]
        kind = "gold" if gold is not None and kind == "normal" else kind
        return Pair(i, pid, self.prompts[pid], a, b, left, kind, gold)

    def _repeat(self, ann: AnnotatorState) -> Pair | None:
        """A pair this annotator decided before, shown with the sides swapped relative to their last view."""
        if not ann.decided:
            return None
        i = ann.decided.choice(self._rng)
        left = ann.left_by.get(i) or self._rng.choice("ab")
        return self._make(i, other_side(left), "repeat")

    def _honeypot(self) -> Pair:
        pid, a, _, _ = self.pairs[self._rng.randrange(len(self.pairs))]
        return Pair(-1, pid, self.prompts[pid], a, a, "a", "honeypot")

    def record(self, rec: dict) -> bool:
        """Account for a comparison record once the store holds it (vote or retraction); a vote on the pair this
        annotator has in flight ends that serve. False if its id was accounted for already (the serve still ends)."""
        with self._lock:
            applied = self._apply(rec)
            ann = self._ann.get(rec["annotator"])
            if not rec.get("retracts") and ann is not None and ann.pending is not None:
                if ann.pending == self.pair_index(rec["prompt_id"], rec["response_a_id"], rec["response_b_id"]):
                    self._release_pending(ann)  # even when a store tail applied it first
        if applied:
            self._notify(rec)
        return applied

    def apply(self, rec: dict) -> bool:
        """Account for a record written by another process (or replayed): idempotent by comparison_id, so it
        returns False and changes nothing if that vote or retraction was already accounted for."""
        with self._lock:
            applied = self._apply(rec)
        if applied:
            self._notify(rec)
        return applied

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        """Call `fn(record)` for every new record accounted for from now on by record() or apply() (each once; not
        for load_votes: a subscriber replays the store itself). Called outside the sampler's lock."""
        self._subscribers.append(fn)

    def _notify(self, rec: dict) -> None:
        for fn in self._subscribers:
            fn(rec)

    def release(self, annotator: str) -> None:
        """The annotator's in-flight pair is no longer shown (they are served nothing more for now)."""
        with self._lock:
            if (ann := self._ann.get(annotator)) is not None:
                self._release_pending(ann)

    def hold(self, annotator: str, pair: Pair) -> None:
        """Mark a pair as being shown again (after an undo) so it counts as in flight. The annotator's previous
        in-flight pair is released; if it was shown but never judged (here or elsewhere) it becomes unseen."""
        with self._lock:
            self._hold(self._annotator(annotator), pair.index, pair.kind)

    def reopen(self, annotator: str, i: int, left: str) -> Pair:
        """Serve pair i to `annotator` again with `left` on the left (kind normal or gold), counted as in flight
        and releasing their previous in-flight pair as hold() does."""
        if not 0 <= i < len(self.pairs) or left not in ("a", "b"):
            raise ValueError(f"reopen: no pair {i} with left {left!r}")
        with self._lock:
            pair = self._make(i, left, "normal")
            self._hold(self._annotator(annotator), pair.index, pair.kind)
            return pair

    def remote_serve(self, annotator: str, i: int) -> None:
        """Another process showed pair i to `annotator`: seen here too, and in flight until their vote on it or their
        next serve arrives, so that `overlap` counts serves in every process (i < 0, a honeypot: no-op)."""
        if i < 0:
            return
        with self._lock:
            ann = self._annotator(annotator)
            if ann.pending == i or i in ann.standing:
                self._see(ann, i)
                return
            self._release_pending(ann)
            self._serve(ann, i)
            ann.pending_clean = False  # another process's serve: never "shown here but unjudged"

    def standing_vote(self, annotator: str, i: int) -> str | None:
        """comparison_id of the annotator's most recent standing (not retracted, not skip) vote on pair i."""
        with self._lock:
            votes = ann.standing.get(i) if (ann := self._ann.get(annotator)) is not None else None
            return votes[-1] if votes else None

    def recent(self, annotator: str, n: int = 20) -> list[dict]:
        """The annotator's `n` most recent standing records (skips included), newest first: comparison_id,
        pair (-1 for honeypots), choice and left in canonical terms, created_at. "Recent" is the order this
        process accounted for them in (start-up replays the store oldest first)."""
        with self._lock:
            ann = self._ann.get(annotator)
            out: list[dict] = []
            for v in reversed(ann.votes.values()) if ann is not None else ():
                if len(out) >= n:
                    break
                out.append(
                    {"comparison_id": v.cid, "pair": v.pair, "choice": v.choice, "left": v.left,
                     "created_at": v.created_at}
                )  # fmt: skip
            return out

    def progress(self, annotator: str, today: date | None = None) -> dict:
        """done_today, done (all time), left (pairs open to this annotator), needed, gold accuracy."""
        today = today or datetime.now(UTC).date()
        with self._lock:
            ann = self._ann.get(annotator)
            if ann is None:
                return {"done_today": 0, "done": 0, "left": self._open, "needed": self._needed, "gold_n": 0,
                        "gold_accuracy": None}  # fmt: skip
            return {
                "done_today": ann.days.get(day_number(today), 0),
                "done": len(ann.votes),
                "left": self._open - ann.counts[0],
                "needed": self._needed,
                "gold_n": ann.gold_n,
                "gold_accuracy": (ann.gold_right / ann.gold_n) if ann.gold_n else None,
            }

    def tally(self, i: int) -> dict[str, int]:
        """Votes cast on pair i in canonical terms: {"a": n, "b": n, "tie": n} (retractions removed)."""
        with self._lock:
            return dict(self._tally[i]) if i in self._tally else {"a": 0, "b": 0, "tie": 0}

    def judgments(self, pairs: Iterable[int] | None = None) -> list[int]:
        """Distinct annotators who judged each pair (skips excluded)."""
        with self._lock:
            return list(self._judges) if pairs is None else [self._judges[i] for i in pairs]


@contextmanager
def _gc_paused():
    """Set-up makes hundreds of thousands of small objects and no cycles: without this the cyclic GC would rescan
    them all again and again meanwhile (a third of the start-up time on a 200,000-pair pool)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
