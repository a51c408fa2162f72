"""Active pair sampling: serve first the pairs a reward model is least sure about, or that annotators dispute.

Each pool candidate is scored once by a reward model and a pair's priority is

    priority = u + w * d
    u = 1 - |2 sigmoid(r_a - r_b) - 1|       (1 when the rewards are equal: the Bradley-Terry probability is 1/2)
    d = max(split, against)                   (0 with no votes)
    split   = 1 - |n_a - n_b| / n             (1-1 is fully split; a tie vote counts as split)
    against = (votes for the side the reward model ranks lower + tie / 2) / n

so with `overlap >= 2` a pair whose first votes contradict the reward model, or each other, is re-served before
a fresh pair the model is merely unsure about. With overlap 1 a judged pair is closed and only `u` matters.
Scores are given; `refresh()` calls the `rescore` callable to get new ones (the swap is atomic and scoring runs
outside the sampler's lock, so serving never waits on a model). Nothing here loads a model: the entry point wires
in rlhf.reward.active_strategy, so the labeling app and this module run without torch.

JudgeStrategy is the same ranking with an AI judge's votes in place of the reward model (annotate.judge_votes):
u is the judge's doubt on the pair (1 where it flipped across the two orders or never judged the pair, else
1 - |2 p_a - 1|) and "the side the model ranks lower" is the side the judge ranked lower.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from annotate.judge_votes import JudgedPair, PairKey

Scores = Mapping[tuple[str, str], float]  # (prompt_id, response_id) -> reward


class _Candidate(Protocol):
    @property
    def response_id(self) -> str: ...


class SamplerView(Protocol):
    """What this strategy reads of annotate.sampler.PairSampler, spelt out here so that this module does not import
    the sampler (which imports this one for its STRATEGIES table): a one-way dependency."""

    @property
    def pairs(self) -> Sequence[tuple[str, _Candidate, _Candidate, str | None]]: ...

    def tally(self, i: int) -> dict[str, int]: ...

    def is_open(self, annotator: str, i: int) -> bool: ...

    def voted_pairs(self) -> list[int]: ...


def disagreement(tally: Mapping[str, int], prefers: str) -> float:
    """max(split, against) over the votes cast (see the module docstring); 0 with no votes."""
    n_a, n_b, n_tie = tally.get("a", 0), tally.get("b", 0), tally.get("tie", 0)
    n = n_a + n_b + n_tie
    if n == 0:
        return 0.0
    split = 1 - abs(n_a - n_b) / n
    against = ((n_b if prefers == "a" else n_a) + n_tie / 2) / n
    return max(split, against)


class ActiveStrategy:
    """A PairSampler strategy ranking open pairs by reward-model uncertainty and vote disagreement."""

    def __init__(
        self,
        scores: Scores | None = None,
        *,
        disagreement_weight: float = 1.0,
        rescore: Callable[[], Scores] | None = None,
        model_dir: str | Path | None = None,
    ):
        """`rescore()`: fresh scores for `refresh()`; `model_dir`: where `watch()` looks for new weights."""
        if scores is None:
            raise ValueError(
                "strategy 'active' needs reward-model scores: pass ActiveStrategy(scores) or "
                "rlhf.reward.active_strategy(pool, DIR) (app.py: --strategy active --reward-model DIR)"
            )
        self.disagreement_weight = disagreement_weight
        self.rescore, self.model_dir = rescore, model_dir
        self.version = 0  # bumped by every update_scores(): callers can tell a refresh happened
        self._lock = threading.RLock()
        self._scores = dict(scores)
        self._bound: SamplerView | None = None  # the sampler the derived arrays below belong to
        self._uncertainty: list[float] = []
        self._prefers: list[str] = []
        self._order: list[int] = []  # pair indices, most uncertain first

    # -- scores ---------------------------------------------------------------------------------------------
    def update_scores(self, scores: Scores) -> None:
        """Swap in new scores (e.g. from a retrained reward model); the ranking is rebuilt on the next serve."""
        scores = dict(scores)
        with self._lock:
            self._scores, self._bound = scores, None
            self.version += 1

    def refresh(self) -> None:
        """Re-score the pool with the (newer) reward model; scoring happens before the lock is taken."""
        if self.rescore is None:
            raise ValueError("refresh() needs a rescore callable (rlhf.reward.active_strategy gives one)")
        self.update_scores(self.rescore())

    def watch(self, every_s: float) -> threading.Thread:
        """Re-score whenever the model directory's weights change (checked every `every_s` seconds)."""

        def stamp() -> float:
            files = list(Path(self.model_dir).glob("*.safetensors"))
            return max((f.stat().st_mtime for f in files), default=0.0)

        def loop() -> None:
            last = stamp()
            while not stop.wait(every_s):
                if (now := stamp()) != last:
                    last = now
                    try:
                        self.refresh()
                    except Exception as e:  # a half-written checkpoint: keep the old scores, retry next change
                        print(f"[active] re-scoring from {self.model_dir} failed: {e}", flush=True)
                        last = 0.0

        stop = threading.Event()
        thread = threading.Thread(target=loop, name="active-rescore", daemon=True)
        thread.stop = stop  # type: ignore[attr-defined]
        thread.start()
        return thread

    def _prepare(self, sampler: SamplerView, rng: random.Random) -> None:
        missing = [(pid, c.response_id) for pid, a, b, _ in sampler.pairs for c in (a, b)]
        missing = [k for k in missing if k not in self._scores]
        if missing:
            raise ValueError(f"active: {len(missing)} pool candidates have no reward score, e.g. {missing[0]}")
        self._uncertainty, self._prefers = [], []
        for pid, a, b, _ in sampler.pairs:
            gap = self._scores[(pid, a.response_id)] - self._scores[(pid, b.response_id)]
            self._uncertainty.append(2 / (1 + math.exp(min(abs(gap), 700.0))))  # = 1 - |2 sigmoid(gap) - 1|
            self._prefers.append("a" if gap >= 0 else "b")
        order = list(range(len(sampler.pairs)))
        rng.shuffle(order)  # equal uncertainty (e.g. an untrained model scoring everything alike): random order
        self._order = sorted(order, key=lambda i: -self._uncertainty[i])
        self._bound = sampler

    # -- Strategy -------------------------------------------------------------------------------------------
    def priority(self, sampler: SamplerView, i: int) -> float:
        with self._lock:
            if self._bound is not sampler:
                self._prepare(sampler, random.Random(0))
            return self._uncertainty[i] + self.disagreement_weight * disagreement(sampler.tally(i), self._prefers[i])

    def choose(self, sampler: SamplerView, annotator: str, rng: random.Random) -> int | None:
        with self._lock:
            if self._bound is not sampler:
                self._prepare(sampler, rng)
            # Pairs without votes rank by uncertainty alone, so the first open one in order beats every other
            # vote-free pair; only pairs holding votes (d > 0 possible) can outrank it.
            first = next((i for i in self._order if sampler.is_open(annotator, i)), None)
            cands = [i for i in sampler.voted_pairs() if sampler.is_open(annotator, i)]
            if first is not None:
                cands.insert(0, first)
            if not cands:
                return None
            return max(cands, key=lambda i: self.priority(sampler, i))  # max keeps the first of equals


class JudgeStrategy(ActiveStrategy):
    """ActiveStrategy ranked by an AI judge's doubt instead of reward-model scores (see the module docstring)."""

    def __init__(self, judged: Mapping[PairKey, JudgedPair], *, disagreement_weight: float = 1.0):
        super().__init__({}, disagreement_weight=disagreement_weight)
        self._judged = dict(judged)

    def _prepare(self, sampler: SamplerView, rng: random.Random) -> None:
        self._uncertainty, self._prefers = [], []
        for pid, a, b, _ in sampler.pairs:  # the sampler's a has the lower response id, as judge_pairs keys
            j = self._judged.get((pid, a.response_id, b.response_id))
            self._uncertainty.append(1.0 if j is None else j.doubt)  # unjudged: nothing known, a human decides
            self._prefers.append("a" if j is None or j.p_a >= 0.5 else "b")
        order = list(range(len(sampler.pairs)))
        rng.shuffle(order)
        self._order = sorted(order, key=lambda i: -self._uncertainty[i])
        self._bound = sampler


def judge_strategy(votes: pa.Table, annotator: str | None = None) -> tuple[JudgeStrategy, pa.Table]:
    """(a JudgeStrategy from the judge votes in `votes`, the votes without them). The sampler gets the second: a
    judge's votes must not count as judgments toward `overlap`, or the pairs it judged would never reach a human."""
    import pyarrow.compute as pc

    from annotate.judge_votes import JUDGE_PREFIX, judge_pairs

    human = votes.filter(pc.invert(pc.starts_with(votes.column("annotator"), JUDGE_PREFIX)))
    return JudgeStrategy(judge_pairs(votes, annotator)), human
