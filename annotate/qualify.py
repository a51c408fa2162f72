"""Qualification and live checks of annotators: who may be served pairs, and whose votes count for training.

Plain Python (no Gradio), fed the same records the store holds, so the app, a restarted app and a test reach the
same verdicts. `AnnotatorGate` watches every record through `PairSampler.subscribe` (this process's votes and, via
the replica follower, other processes') after `load()` has replayed the store at start-up:

- **Qualification** (`--qualify N --qualify-min ACC`). An annotator without N qualification answers is served only
  gold pairs (pool meta `gold_score`, annotate.pool.gold_pairs), with feedback after each: the better response and
  why (the pool's meta `gold_reason`, `why` or `note` of each response; the demo pool has `note`). Those votes are
  stored like any other with session `qualify:<session>`. After N answers the annotator passes when at least
  ACC of them picked the known-better response (a tie, both bad or skip on a gold pair is not right: each has a
  known better side), and fails otherwise: a failed annotator is told so and is served nothing more.
- **Live checks** (`--live-checks`). Every later vote on a check item is scored right or wrong: a honeypot (a
  response against itself: right is tie or both bad), a gold pair (right is the known-better side) and a repeat
  (a pair the annotator already decided, shown swapped: right is the same response again). A sequential test on
  that stream pauses an annotator whose checks look like chance; see `Cusum`.
- **Daily cap** (`--daily-cap N`): no more pairs after N records on a UTC day (the sampler counts them).
- **Too fast** (`--too-fast S`): a vote decided in under S seconds is counted; the annotator is flagged for an admin
  (not paused) once at least half of 10 or more votes were.

Nobody is dropped silently. A failed or paused annotator's votes stay in the store; the verdict is appended to
`STORE/_prefkit/annotators.jsonl` (one JSON event per line: at, annotator, status, reason, by), which export reads
to leave their votes out by default (`held_out`), as well as the qualification votes of annotators who have not
passed. An admin sees everyone's checks on the Dashboard and releases a held annotator there (status `released`:
the admin vouches for them, their votes count again and the sequential test starts over). The verdicts themselves
are derived from the votes, so a restart reaches them again; only a release is an input, read back from the log.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from annotate.annotator_status import HELD, QUALIFY_PREFIX, append_event, new_event, parse_events, status_path
from annotate.judge_votes import is_judge

REASON_KEYS = ("gold_reason", "why", "note")  # where a pool's meta may say why a response is better or worse
FAST_MIN_VOTES, FAST_SHARE = 10, 0.5  # too-fast flag: at least half of 10 or more votes under the limit


@dataclass(frozen=True)
class CheckConfig:
    """What the app checks. Everything off by default: an app without these flags behaves as before."""

    qualify_n: int = 0  # gold pairs a new annotator judges before anything else; 0: no qualification
    qualify_min: float = 0.8  # share of them to get right to pass
    live: bool = False  # run the sequential bad-voter test on check items
    # Sequential test (see Cusum): a good annotator gets p_good of the checks right, a bad one (random) p_bad;
    # alpha bounds one run's chance of pausing a good annotator (Wald's approximation).
    p_good: float = 0.85
    p_bad: float = 0.5
    alpha: float = 0.001
    daily_cap: int = 0  # records per annotator per UTC day; 0: no cap
    too_fast_s: float = 0.0  # decision time under which a vote is "too fast"; 0: off

    def __post_init__(self) -> None:
        if self.qualify_n < 0 or self.daily_cap < 0 or self.too_fast_s < 0:
            raise ValueError("--qualify, --daily-cap and --too-fast must be >= 0")  # the flags that set them
        if not 0.0 <= self.qualify_min <= 1.0:
            raise ValueError(f"--qualify-min must be in [0, 1], got {self.qualify_min}")
        if not 0.0 < self.p_bad < self.p_good < 1.0 or not 0.0 < self.alpha < 1.0:
            raise ValueError("need 0 < p_bad < p_good < 1 and 0 < alpha < 1")

    @property
    def enabled(self) -> bool:
        return bool(self.qualify_n or self.live or self.daily_cap or self.too_fast_s)

    @property
    def to_pass(self) -> int:
        """Right answers needed out of qualify_n (the smallest count whose share reaches qualify_min)."""
        return math.ceil(self.qualify_min * self.qualify_n - 1e-9)


class Cusum:
    """Wald's sequential probability ratio test (Wald 1945, "Sequential tests of statistical hypotheses", Ann. Math.
    Statist. 16(2)) on the right/wrong outcomes of check items, run continuously as Page's CUSUM (Page 1954,
    "Continuous inspection schemes", Biometrika 41): the SPRT restarted whenever the evidence favours a good
    annotator, so one who turns bad later is still caught.

    H0: each check is right with probability p_good; H1: with p_bad (a random voter). Each outcome x (1 right, 0 wrong)
    adds the log-likelihood ratio  llr = x log(p_bad / p_good) + (1 - x) log((1 - p_bad) / (1 - p_good)),  and
    S_n = max(0, S_{n-1} + llr_n).  H1 is accepted (pause) when S_n >= h = log(1 / alpha), Wald's upper boundary
    log((1 - beta) / alpha) with beta ~ 0 (a bad voter is caught eventually; only the time to catch them depends on
    beta). Defaults p_good 0.85, p_bad 0.5, alpha 0.001: a wrong check adds 1.20, a right one takes 0.53 away,
    h = 6.91; six wrong checks in a row pause, a random voter is paused after about 20 checks, and a voter right on
    85% of checks waits about 7,600 checks on average for a false alarm (simulated; a tenth of them within 800),
    one right on 90% about 130,000.
    """

    def __init__(self, p_good: float, p_bad: float, alpha: float):
        self.right = math.log(p_bad / p_good)
        self.wrong = math.log((1.0 - p_bad) / (1.0 - p_good))
        self.h = math.log(1.0 / alpha)

    def step(self, s: float, right: bool) -> float:
        return max(0.0, s + (self.right if right else self.wrong))


@dataclass
class AnnotatorChecks:
    """One annotator's standing, as derived from their records (and any release by an admin)."""

    name: str
    status: str = "new"  # new | qualified | failed | paused | released
    reason: str = ""
    qual_n: int = 0  # qualification answers counted so far
    qual_right: int = 0
    score: float = 0.0  # the sequential test's statistic S_n
    checks: int = 0  # live check outcomes seen
    wrong: int = 0
    votes: int = 0  # decisions outside qualification (skips excluded)
    fast: int = 0  # of those, decided faster than too_fast_s
    qualify_cids: set[str] = field(default_factory=set)
    # comparison_id -> decided too fast, for each counted vote; comparison_id -> right, for each live check outcome
    # (all of them, and those since the last release, which the sequential test's S is made of): an undone vote
    # (a retraction) takes its share back out.
    decided: dict[str, bool] = field(default_factory=dict)
    outcomes: dict[str, bool] = field(default_factory=dict)
    since_release: dict[str, bool] = field(default_factory=dict)
    # pair key (prompt_id, lower id, higher id) -> {comparison_id: chosen response id} of standing a/b votes
    chosen: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    key_of: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # comparison_id -> pair key

    @property
    def held(self) -> bool:
        return self.status in HELD

    @property
    def too_fast(self) -> bool:
        return self.votes >= FAST_MIN_VOTES and self.fast >= FAST_SHARE * self.votes


def gold_reasons(pool: pa.Table) -> dict[tuple[str, str], str]:
    """(prompt_id, response_id) -> why the response is better or worse, from the pool's meta (the first of
    REASON_KEYS present), for responses that carry a gold_score. Untrusted text: shown through annotate.render."""
    out: dict[tuple[str, str], str] = {}
    meta = pool.column("meta")
    keep = pc.match_substring(meta, "gold_score")
    rows = pool.select(["prompt_id", "response_id", "meta"]).filter(pc.fill_null(keep, False)).to_pylist()
    for row in rows:
        try:
            m = json.loads(row["meta"] or "{}")
        except json.JSONDecodeError:
            continue
        if not isinstance(m, dict):
            continue
        reason = next((m[k] for k in REASON_KEYS if isinstance(m.get(k), str) and m[k].strip()), None)
        if reason:
            out[(row["prompt_id"], row["response_id"])] = reason.strip()
    return out


class AnnotatorGate:
    """Qualification, live checks, daily cap and the too-fast flag for one app process (thread-safe).

    `gold`: annotate.pool.gold_pairs of the served pool ((prompt_id, lower id, higher id) -> better response id);
    `reasons`: gold_reasons of the pool; `store_root`: where the status log lives (None: nowhere, for tests)."""

    def __init__(
        self,
        config: CheckConfig,
        gold: dict[tuple[str, str, str], str],
        reasons: dict[tuple[str, str], str] | None = None,
        store_root: str | os.PathLike | None = None,
        now=lambda: datetime.now(UTC),
    ):
        self.config, self.gold, self.reasons = config, gold, reasons or {}
        self.path = status_path(store_root) if store_root is not None else None
        self.test = Cusum(config.p_good, config.p_bad, config.alpha)
        self.now = now
        self._lock = threading.RLock()
        self._ann: dict[str, AnnotatorChecks] = {}
        self._applied: set[str] = set()  # comparison_ids observed (the follower may hand one over twice)
        self._releases: set[str] = set()  # ids of release events applied
        self._offset = 0  # bytes of the log read so far

    # -- start-up ------------------------------------------------------------------------------------------------
    def load(self, table: pa.Table | None) -> None:
        """Replay a store's records (oldest first) and the releases in the log, in time order; then log any verdict
        the log does not hold yet (a first start with these checks, or changed thresholds)."""
        events = []
        if self.path is not None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            self._offset = data.rfind(b"\n") + 1
            events = parse_events(data[: self._offset])
        records = []
        if table is not None and table.num_rows:
            cols = ["comparison_id", "prompt_id", "response_a_id", "response_b_id", "choice", "annotator",
                    "session", "decision_ms", "retracts", "created_at"]  # fmt: skip
            records = table.select(cols).to_pylist()
        timeline = [(_utc(r["created_at"]), 0, r) for r in records]
        timeline += [(_utc(ev.get("at")), 1, ev) for ev in events if ev["status"] == "released"]
        timeline.sort(key=lambda t: (t[0], t[1]))  # stable: records keep the store's order at equal times
        with self._lock:
            for _, is_event, item in timeline:
                if is_event:
                    self._release(item)
                else:
                    self._observe(item)
            latest = {ev["annotator"]: ev for ev in events}
            for name, ev in latest.items():
                ann = self._entry(name)
                if ann.status == "new" and ev["status"] in HELD:
                    # A verdict stands until an admin releases it, even when the app restarts with other checks
                    # (export reads the log and keeps leaving the votes out: the app must not serve them meanwhile).
                    ann.status, ann.reason = ev["status"], str(ev.get("reason") or "")
            for ann in self._ann.values():
                if ann.status != "new" and latest.get(ann.name, {}).get("status") != ann.status:
                    self._write(ann.name, ann.status, ann.reason)

    # -- records -------------------------------------------------------------------------------------------------
    def observe(self, rec: dict) -> None:
        """Account for one record the store holds (a vote or a retraction); logs a verdict it leads to."""
        with self._lock:
            changed = self._observe(rec)
            if changed is not None:
                self._write(changed.name, changed.status, changed.reason)

    def _observe(self, rec: dict) -> AnnotatorChecks | None:
        cid, name = rec["comparison_id"], rec["annotator"]
        if cid in self._applied or is_judge(name):
            return None
        self._applied.add(cid)
        ann = self._entry(name)
        if rec.get("retracts"):
            self._retract(ann, rec["retracts"])
            return None
        a_id, b_id, choice = rec["response_a_id"], rec["response_b_id"], rec["choice"]
        key = _pair_key(rec["prompt_id"], a_id, b_id)
        picked = a_id if choice == "a" else b_id if choice == "b" else None
        before = status = ann.status
        if (rec.get("session") or "").startswith(QUALIFY_PREFIX):
            ann.qualify_cids.add(cid)
            if self._qualifying(ann):
                ann.qual_n += 1
                ann.qual_right += picked is not None and picked == self.gold.get(key)
                if ann.qual_n >= self.config.qualify_n:
                    status = "qualified" if ann.qual_right >= self.config.to_pass else "failed"
                    right, need = ann.qual_right, self.config.to_pass
                    ann.reason = f"qualification: {right} of {ann.qual_n} right; {need} needed"
        elif choice != "skip":
            ann.decided[cid] = self.too_fast(rec.get("decision_ms"))
            ann.votes += 1
            ann.fast += ann.decided[cid]
            right = self._check(ann, key, a_id == b_id, choice, picked)
            if right is not None and self.config.live:
                ann.outcomes[cid] = ann.since_release[cid] = right
                ann.checks += 1
                ann.wrong += not right
                ann.score = self.test.step(ann.score, right)
                if ann.score >= self.test.h and not ann.held:
                    status = "paused"
                    ann.reason = (f"sequential test: {ann.wrong} of {ann.checks} checks wrong "
                                  f"(S = {ann.score:.1f} >= {self.test.h:.1f})")  # fmt: skip
        if picked is not None and a_id != b_id:
            ann.chosen.setdefault(key, {})[cid] = picked
            ann.key_of[cid] = key
        ann.status = status
        return ann if status != before else None

    def _retract(self, ann: AnnotatorChecks, cid: str) -> None:
        """Take an undone vote back out: its choice (repeats compare with standing votes only), its count and speed,
        and its check outcome. The sequential test's S is replayed over the outcomes left since the last release, so
        it is what it would be had the vote never been cast. A verdict already reached stands (an admin releases)."""
        key = ann.key_of.pop(cid, None)
        if key is not None:
            ann.chosen.get(key, {}).pop(cid, None)
        if cid in ann.decided:
            ann.votes -= 1
            ann.fast -= ann.decided.pop(cid)
        if cid in ann.outcomes:
            ann.checks -= 1
            ann.wrong -= not ann.outcomes.pop(cid)
        if ann.since_release.pop(cid, None) is not None:
            ann.score = 0.0
            for right in ann.since_release.values():
                ann.score = self.test.step(ann.score, right)

    def _check(self, ann: AnnotatorChecks, key: tuple, honeypot: bool, choice: str, picked: str | None) -> bool | None:
        """Right (True), wrong (False) or no check (None) for a vote outside qualification."""
        if honeypot:  # a response against itself: the only right answers say they are equal
            return None if choice == "skip" else choice in ("tie", "both_bad")
        if picked is None:
            return None  # a tie or both bad says nothing checkable about a gold pair or a repeat
        if (better := self.gold.get(key)) is not None:
            return picked == better
        earlier = ann.chosen.get(key)
        if earlier:  # a swapped repeat of a pair this annotator decided (a changed vote retracts the old one first)
            return picked == next(iter(earlier.values()))
        return None

    def _entry(self, name: str) -> AnnotatorChecks:
        """The annotator's standing, created on first sight (call under the lock)."""
        if name not in self._ann:
            self._ann[name] = AnnotatorChecks(name)
        return self._ann[name]

    def _qualifying(self, ann: AnnotatorChecks) -> bool:
        return self.config.qualify_n > 0 and ann.status == "new" and ann.qual_n < self.config.qualify_n

    # -- the app's questions -------------------------------------------------------------------------------------
    def checks(self, annotator: str) -> AnnotatorChecks:
        """A copy-free view of the annotator's standing (read it, do not change it)."""
        self._sync()
        with self._lock:
            return self._ann.get(annotator) or AnnotatorChecks(annotator)

    def qualifying(self, annotator: str) -> bool:
        """Whether the next pair must be a qualification pair."""
        return self._qualifying(self.checks(annotator))

    def blocked(self, annotator: str, done_today: int) -> str | None:
        """Why `annotator` gets no pair now (plain text for the screen), or None."""
        ann = self.checks(annotator)
        if ann.status == "failed":
            # From the verdict's own reason: the thresholds of this run may not be the ones it was reached under.
            score = ann.reason.removeprefix("qualification: ")
            return (f"You did not pass the qualification ({score}), so no more pairs will be served to you. Your "
                    "answers are kept, and an admin can review them and let you continue.")  # fmt: skip
        if ann.status == "paused":
            return ("Your work is paused for review: too many of the built-in check pairs came out wrong. Nothing "
                    "was deleted, and an admin can review it and let you continue.")  # fmt: skip
        if self.config.daily_cap and done_today >= self.config.daily_cap:
            return f"You reached today's limit of {self.config.daily_cap} pairs. Thank you! More tomorrow (UTC)."
        return None

    def is_qualification_vote(self, annotator: str, comparison_id: str) -> bool:
        with self._lock:
            ann = self._ann.get(annotator)
            return ann is not None and comparison_id in ann.qualify_cids

    def too_fast(self, decision_ms: int | None) -> bool:
        return bool(self.config.too_fast_s) and decision_ms is not None and decision_ms < self.config.too_fast_s * 1000

    def feedback(self, prompt_id: str, a_id: str, b_id: str, left: str, picked: str | None) -> list[str]:
        """Plain-text lines shown after a qualification answer: right or not, the better response (as positioned on
        the screen that was answered: `left` is the canonical side shown as A) and why, from the pool's meta."""
        better = self.gold.get(_pair_key(prompt_id, a_id, b_id))
        shown = (a_id, b_id) if left == "a" else (b_id, a_id)
        pos = "A" if better == shown[0] else "B"
        lines = [("✓ Right: " if picked == better else "✗ Not right: ") + f"Response {pos} is the better one."]
        for letter, rid in zip("AB", shown):
            why = self.reasons.get((prompt_id, rid))
            if why:
                lines.append(f"Response {letter}: {why}")
        return lines

    def qualification_line(self, annotator: str) -> str:
        ann = self.checks(annotator)
        n, cfg = ann.qual_n, self.config
        if ann.status == "qualified":
            return f"You passed the qualification ({ann.qual_right} of {n} right). Your votes count from now on."
        if ann.status == "failed":
            return ""  # the screen says it once, as the reason it serves nothing more (AnnotatorGate.blocked)
        return f"Qualification: {n} of {cfg.qualify_n} answered, {ann.qual_right} right ({cfg.to_pass} needed)."

    # -- admin ---------------------------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row per annotator for the admin view: held ones first."""
        self._sync()
        cfg = self.config
        with self._lock:
            anns = sorted(self._ann.values(), key=lambda a: (not a.held, not a.too_fast, a.name))
            return [
                {
                    "annotator": a.name,
                    "status": a.status + (" · too fast" if a.too_fast else ""),
                    "qualification": f"{a.qual_right}/{a.qual_n}" if cfg.qualify_n else "off",
                    "checks wrong": f"{a.wrong}/{a.checks}" if cfg.live else "off",
                    "test S": round(a.score, 2) if cfg.live else "",
                    "too fast": f"{a.fast}/{a.votes}" if cfg.too_fast_s else "off",
                    "why": a.reason,
                }
                for a in anns
            ]

    def release(self, annotator: str, by: str = "") -> bool:
        """An admin lets a failed or paused annotator continue: their votes count again and the sequential test
        starts over. Also one still qualifying (say, one who judged every gold pair before qualification was turned
        on, so none is left to serve them): the admin vouches for them. False (nothing logged) for anyone else."""
        self._sync()
        with self._lock:
            ann = self._ann.get(annotator)
            if ann is None or not (ann.held or self._qualifying(ann)):
                return False
            ev = self._write(annotator, "released", f"released by {by or 'an admin'} (was {ann.status})", by=by)
            self._release(ev)
            return True

    def _release(self, ev: dict) -> None:
        key = str(ev.get("id") or f"{ev['annotator']}@{ev.get('at')}")
        if key in self._releases:
            return
        self._releases.add(key)
        ann = self._entry(ev["annotator"])
        ann.status, ann.reason, ann.score = "released", str(ev.get("reason") or ""), 0.0
        ann.since_release.clear()  # the test starts over

    def _sync(self) -> None:
        """Apply releases other processes wrote to the log since the last look (one stat when nothing changed)."""
        if self.path is None:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size <= self._offset:
            return
        with self._lock:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            for ev in parse_events(data[:end]):
                if ev["status"] == "released":
                    self._release(ev)

    def _write(self, annotator: str, status: str, reason: str, by: str = "") -> dict:
        ev = new_event(annotator, status, reason, by, self.now())
        if self.path is None:
            return ev
        n = append_event(self.path, ev)
        if os.path.getsize(self.path) == self._offset + n:
            self._offset += n  # our own line: nothing to re-read (another process's would be)
        return ev


def _pair_key(prompt_id: str, a_id: str, b_id: str) -> tuple[str, str, str]:
    """A pair in either order as annotate.pool.GoldMap keys it: (prompt_id, lower id, higher id)."""
    return prompt_id, min(a_id, b_id), max(a_id, b_id)


def _utc(t: object) -> datetime:
    if isinstance(t, datetime):
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    try:
        out = datetime.fromisoformat(str(t))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return out if out.tzinfo is not None else out.replace(tzinfo=UTC)
