"""PairSampler: fair left/right placement, no repeats per annotator, overlap, balance, gold, restarts."""

import json
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from annotate.sampler import PairSampler
from annotate.schema import comparisons_table, new_comparison, pool_table
from annotate.store import ComparisonStore


def make_pool(n_prompts: int, n_cands: int, gold: bool = False):
    rows = []
    for p in range(n_prompts):
        for r in range(n_cands):
            meta = {"temperature": 0.7} | ({"gold_score": r} if gold and p % 2 == 0 else {})
            rows.append(
                {
                    "prompt_id": f"p{p:04d}",
                    "prompt": [{"role": "user", "content": f"question {p}"}],
                    "response_id": f"r{r}",
                    "response": f"answer {r} to {p}",
                    "source": f"model{r}",
                    "meta": json.dumps(meta),
                }
            )
    return pool_table(rows)


def vote_record(pair, annotator: str, choice: str = "a") -> dict:
    return new_comparison(
        prompt_id=pair.prompt_id, prompt=pair.prompt, response_a_id=pair.a.response_id, response_a=pair.a.text,
        response_b_id=pair.b.response_id, response_b=pair.b.text, left=pair.left, choice=choice,
        annotator=annotator,
    )  # fmt: skip


def test_left_right_balanced_and_no_pair_twice():
    sampler = PairSampler(make_pool(250, 4), strategy="uniform", overlap=1, seed=1)  # 250 * C(4,2) = 1500 pairs
    assert len(sampler.pairs) == 1500
    seen, lefts = set(), Counter()
    for k in range(1000):
        annotator = f"ann{k % 7}"
        pair = sampler.next_pair(annotator)
        key = (annotator, pair.prompt_id, pair.a.response_id, pair.b.response_id)
        assert key not in seen
        seen.add(key)
        lefts[pair.left] += 1
        sampler.record(vote_record(pair, annotator))
    # Binomial(1000, 0.5): sd = 15.8; 4 sd is a false-alarm rate of ~6e-5.
    assert abs(lefts["a"] - 500) <= 4 * math.sqrt(1000 * 0.25)
    # The recorded `left` is what was shown: canonical a is the displayed left exactly when left == "a".
    pair = sampler.next_pair("x")
    assert pair.shown[0] is (pair.a if pair.left == "a" else pair.b)


def test_exhausts_pool_without_repeats_per_annotator():
    sampler = PairSampler(make_pool(20, 3), strategy="balanced", overlap=3, seed=2)  # 60 pairs
    shown = []
    while (pair := sampler.next_pair("solo")) is not None:
        shown.append(pair.index)
        sampler.record(vote_record(pair, "solo"))
    assert sorted(shown) == list(range(60))
    assert sampler.progress("solo")["left"] == 0


def test_overlap_k_distinct_annotators_per_pair():
    sampler = PairSampler(make_pool(10, 3), strategy="balanced", overlap=2, seed=3)  # 30 pairs
    judged = Counter()
    annotators = [f"a{i}" for i in range(5)]
    for _ in range(40):
        for ann in annotators:
            pair = sampler.next_pair(ann)
            if pair is None:
                continue
            judged[(pair.index, ann)] += 1
            sampler.record(vote_record(pair, ann, "tie"))
    assert max(judged.values()) == 1  # nobody judged a pair twice
    assert sampler.judgments() == [2] * 30  # each pair judged by exactly 2 different annotators
    assert all(sampler.next_pair(a) is None for a in annotators)


def test_balanced_serves_fewest_judged_first():
    sampler = PairSampler(make_pool(10, 3), strategy="balanced", overlap=5, seed=4)
    for step in range(90):  # 30 pairs: three full rounds by different annotators
        ann = f"ann{step}"
        pair = sampler.next_pair(ann)
        sampler.record(vote_record(pair, ann))
        counts = sampler.judgments()
        assert max(counts) - min(counts) <= 1  # never more than one judgment ahead
    assert sampler.judgments() == [3] * 30


def test_skip_counts_as_seen_not_as_judgment():
    sampler = PairSampler(make_pool(1, 2), overlap=1, seed=5)
    pair = sampler.next_pair("a")
    sampler.record(vote_record(pair, "a", "skip"))
    assert sampler.judgments() == [0]
    assert sampler.next_pair("a") is None  # not shown to "a" again
    assert sampler.next_pair("b").index == pair.index  # still open for others


def test_gold_share_and_accuracy():
    sampler = PairSampler(make_pool(40, 3, gold=True), overlap=1, gold_share=1.0, seed=6)
    assert len(sampler.gold_pairs) == 60  # even prompts: 20 * C(3,2)
    right = 0
    for i in range(10):
        pair = sampler.next_pair("g")
        assert pair.kind == "gold" and pair.gold in ("a", "b")
        choice = pair.gold if i < 7 else ("b" if pair.gold == "a" else "a")
        right += choice == pair.gold
        sampler.record(vote_record(pair, "g", choice))
    prog = sampler.progress("g")
    assert prog["gold_n"] == 10 and prog["gold_accuracy"] == pytest.approx(right / 10)


def test_repeats_swap_sides_and_honeypots_show_one_response_twice():
    sampler = PairSampler(make_pool(30, 3), overlap=1, repeat_rate=0.3, honeypot_rate=0.1, seed=7)
    first_left, kinds = {}, Counter()
    for _ in range(200):
        pair = sampler.next_pair("r")
        if pair is None:
            break
        kinds[pair.kind] += 1
        if pair.kind == "honeypot":
            assert pair.a == pair.b
        elif pair.kind == "repeat":
            assert pair.left != first_left[pair.index]  # same pair, sides swapped relative to the last view
            first_left[pair.index] = pair.left
        else:
            first_left[pair.index] = pair.left
        sampler.record(vote_record(pair, "r"))
    assert kinds["repeat"] > 10 and kinds["honeypot"] > 5
    assert sampler.judgments(first_left) == [1] * len(first_left)  # repeats do not count as new judges


def test_restart_from_store_keeps_state(tmp_path):
    pool = make_pool(10, 3)
    store = ComparisonStore(tmp_path / "votes")
    sampler = PairSampler(pool, overlap=1, seed=8)
    done = []
    for _ in range(12):
        pair = sampler.next_pair("a")
        rec = vote_record(pair, "a")
        store.append(rec)
        sampler.record(rec)
        done.append((pair, rec["comparison_id"]))
    undo_rec = {**vote_record(done[-1][0], "a", "skip"), "retracts": done[-1][1]}  # as the app's Undo writes
    store.append(undo_rec)
    sampler.record(undo_rec)
    restarted = PairSampler(pool, overlap=1, seed=9, votes=store.read())
    assert restarted.judgments() == sampler.judgments()
    assert sum(restarted.judgments()) == 11
    assert restarted.progress("a")["done"] == sampler.progress("a")["done"] == 11
    rest = []
    while (pair := restarted.next_pair("a")) is not None:
        rest.append(pair.index)
        restarted.record(vote_record(pair, "a"))
    assert not set(rest) & {p.index for p, _ in done[:-1]}  # nothing judged before the restart comes back
    assert len(rest) == len(set(rest)) == 18  # 30 - 12 seen (the undone pair stays seen, as in the live app)


def test_strategy_registry_and_active_seam():
    with pytest.raises(ValueError, match="needs reward-model scores"):  # active is tested in test_active.py
        PairSampler(make_pool(2, 2), strategy="active")
    with pytest.raises(ValueError, match="unknown strategy"):
        PairSampler(make_pool(2, 2), strategy="nope")


def test_next_pair_is_fast_on_1000_pairs():
    # Measured, not a timing target: print it so a regression shows in -s output; assert only sanity.
    sampler = PairSampler(make_pool(167, 4), strategy="balanced", overlap=2, seed=10)
    t0 = time.perf_counter()
    for k in range(500):
        pair = sampler.next_pair(f"a{k % 20}")
        sampler.record(vote_record(pair, f"a{k % 20}"))
    per_call_ms = (time.perf_counter() - t0) / 500 * 1000
    print(f"next_pair + record: {per_call_ms:.3f} ms per call over {len(sampler.pairs)} pairs")
    assert sum(sampler.judgments()) == 500


# -- incremental counts, multi-process records, undo support --------------------------------------------------
def pair_record(sampler, i: int, annotator: str, choice: str, *, swap=False, left="a", **kw) -> dict:
    """A vote on pair i as another process (or an importer) may write it: a/b possibly in either order."""
    pid, a, b, _ = sampler.pairs[i]
    if swap:
        a, b = b, a
    return new_comparison(
        prompt_id=pid, prompt=sampler.prompts[pid], response_a_id=a.response_id, response_a=a.text,
        response_b_id=b.response_id, response_b=b.text, left=left, choice=choice, annotator=annotator, **kw,
    )  # fmt: skip


def retraction(rec: dict, **kw) -> dict:
    return {**rec, "comparison_id": str(uuid.uuid4()), "choice": "skip", "retracts": rec["comparison_id"], **kw}


class Model:
    """An independent, brute-force account of what the sampler should report (recounted from scratch)."""

    def __init__(self, sampler):
        self.s = sampler
        self.log: list[dict] = []  # every record accounted for, in arrival order
        self.seen, self.pending = defaultdict(set), {}
        self.clean = {}  # annotator -> no record and no remote serve touched their pending pair since it was served

    def canonical(self, rec):
        i = self.s.pair_index(rec["prompt_id"], rec["response_a_id"], rec["response_b_id"])
        if i is None or rec["response_a_id"] == rec["response_b_id"]:
            return -1, rec["choice"]
        flipped = rec["response_a_id"] != self.s.pairs[i][1].response_id
        choice = {"a": "b", "b": "a"}.get(rec["choice"], rec["choice"]) if flipped else rec["choice"]
        return i, choice

    def accounted(self, rec):
        self.log.append(rec)
        i, _ = self.canonical(rec)
        if not rec.get("retracts") and i >= 0:
            self.seen[rec["annotator"]].add(i)
            if self.pending.get(rec["annotator"]) == i:
                self.clean[rec["annotator"]] = False

    def remote_serve(self, ann, i):
        """Seen; and in flight (their pending serve) unless it already is, or they hold a vote on it."""
        self.seen[ann].add(i)
        voted = any(r["annotator"] == ann and self.canonical(r)[0] == i and self.canonical(r)[1] != "skip"
                    for r in self.standing())  # fmt: skip
        if self.pending.get(ann) != i and not voted:
            self.pending[ann], self.clean[ann] = i, False

    def standing(self):
        retracted = {r["retracts"] for r in self.log if r.get("retracts")}
        return [r for r in self.log if not r.get("retracts") and r["comparison_id"] not in retracted]

    def judges(self):
        out = [set() for _ in self.s.pairs]
        for r in self.standing():
            i, choice = self.canonical(r)
            if i >= 0 and choice != "skip":
                out[i].add(r["annotator"])
        return [len(x) for x in out]

    def progress(self, ann, today):
        ov, judges = self.s.overlap, self.judges()
        mine = [r for r in self.standing() if r["annotator"] == ann]
        gold = []
        for r in mine:
            i, choice = self.canonical(r)
            if i >= 0 and self.s.pairs[i][3] is not None and choice in ("a", "b"):
                gold.append(choice == self.s.pairs[i][3])
        return {
            "done_today": sum(r["created_at"].date() == today for r in mine),
            "done": len(mine),
            "left": sum(1 for i, j in enumerate(judges) if j < ov and i not in self.seen[ann]),
            "needed": sum(max(0, ov - j) for j in judges),
            "gold_n": len(gold),
            "gold_accuracy": sum(gold) / len(gold) if gold else None,
        }

    def unseen_per_bucket(self, ann):
        load = self.judges()
        for i in self.pending.values():
            load[i] += 1
        out = [0] * self.s.overlap
        for i, x in enumerate(load):
            if x < self.s.overlap and i not in self.seen[ann]:
                out[x] += 1
        return out


def test_progress_matches_a_brute_force_recount():
    rng = random.Random(11)
    sampler = PairSampler(make_pool(12, 4, gold=True), overlap=2, gold_share=0.2, repeat_rate=0.1,
                          honeypot_rate=0.05, seed=12)  # fmt: skip
    model, anns = Model(sampler), ["ann0", "ann1", "ann2", "ann3"]
    today, yesterday = datetime.now(UTC), datetime.now(UTC) - timedelta(days=1)
    for step in range(1500):
        ann, op = rng.choice(anns), rng.random()
        if op < 0.45:
            pair = sampler.next_pair(ann)
            model.pending.pop(ann, None)
            if pair is None:
                continue
            if pair.kind in ("normal", "gold"):
                model.seen[ann].add(pair.index)
                model.pending[ann], model.clean[ann] = pair.index, True
            if rng.random() < 0.8:
                rec = vote_record(pair, ann, rng.choice(["a", "b", "tie", "both_bad", "skip"]))
                assert sampler.record(rec)
                model.accounted(rec)
                if model.pending.get(ann) == pair.index and pair.index >= 0:
                    del model.pending[ann]
                assert not sampler.record(rec)  # a second delivery changes nothing
        elif op < 0.6:  # undo one of this annotator's standing votes, through record() or apply()
            mine = [r for r in model.standing() if r["annotator"] == ann]
            if mine:
                rec = retraction(rng.choice(mine))
                assert (sampler.record if rng.random() < 0.5 else sampler.apply)(rec)
                model.accounted(rec)
        elif op < 0.8:  # another process's vote, a/b in either order, some from yesterday
            i = rng.randrange(len(sampler.pairs))
            when = rng.choice([today, yesterday])
            rec = pair_record(sampler, i, ann, rng.choice(["a", "b", "tie", "skip"]), swap=rng.random() < 0.5,
                              created_at=when)  # fmt: skip
            if rng.random() < 0.2:  # its retraction overtakes it
                undo = retraction(rec)
                assert sampler.apply(undo)
                model.accounted(undo)
            assert sampler.apply(rec) and not sampler.apply(rec)
            model.accounted(rec)
        elif op < 0.87:
            i = rng.randrange(len(sampler.pairs))
            sampler.remote_serve(ann, i)  # another process showed it to them
            model.remote_serve(ann, i)
        elif op < 0.95:  # the session's undo: show a pair this annotator voted on again
            mine = [r for r in model.standing() if r["annotator"] == ann and model.canonical(r)[0] >= 0]
            if mine:
                i = model.canonical(rng.choice(mine))[0]
                pair = sampler.reopen(ann, i, "b")
                assert (pair.index, pair.left) == (i, "b")
                assert pair.kind == ("gold" if sampler.pairs[i][3] else "normal")
                dropped = model.pending.get(ann)
                if dropped is not None and dropped != i and model.clean[ann]:
                    model.seen[ann].discard(dropped)
                model.pending[ann], model.clean[ann] = i, True
                model.seen[ann].add(i)
        elif model.log:  # a record delivered twice (a store tail and the writer itself): no effect
            rec, by_record = rng.choice(model.log), rng.random() < 0.5
            assert not (sampler.record if by_record else sampler.apply)(rec)
            on_pending = model.pending.get(rec["annotator"]) == model.canonical(rec)[0]
            if by_record and on_pending and not rec.get("retracts"):
                del model.pending[rec["annotator"]]  # record() still ends the serve in flight
        if step % 50 == 0 or step == 1499:
            assert sampler.judgments() == model.judges()
            for a in anns:
                assert sampler.progress(a, today.date()) == pytest.approx(model.progress(a, today.date()))
                assert sampler.unseen_per_bucket(a) == model.unseen_per_bucket(a)
    standing = model.standing()
    for a in anns:
        mine = [r for r in standing if r["annotator"] == a]
        got = sampler.recent(a, 7)
        assert [r["comparison_id"] for r in got] == [r["comparison_id"] for r in mine[::-1][:7]]
        for r, g in zip(mine[::-1], got):
            i, choice = model.canonical(r)
            assert (g["pair"], g["choice"], g["created_at"]) == (i, choice, r["created_at"])
        for i in range(len(sampler.pairs)):
            votes = [r for r in mine if model.canonical(r)[0] == i and r["choice"] != "skip"]
            assert sampler.standing_vote(a, i) == (votes[-1]["comparison_id"] if votes else None)


def test_balanced_never_serves_a_seen_pair_and_serves_least_loaded_first():
    rng = random.Random(13)
    sampler = PairSampler(make_pool(15, 4), strategy="balanced", overlap=3, seed=14)  # 90 pairs
    model, anns = Model(sampler), [f"a{k}" for k in range(6)]
    for _ in range(900):
        ann = rng.choice(anns)
        if rng.random() < 0.1:
            i = rng.randrange(len(sampler.pairs))
            sampler.remote_serve(ann, i)  # another process showed it to them
            model.remote_serve(ann, i)
            continue
        model.pending.pop(ann, None)
        expected = model.unseen_per_bucket(ann)
        pair = sampler.next_pair(ann)
        if pair is None:
            assert sum(expected) == 0  # None only when nothing is open for this annotator
            continue
        assert pair.index not in model.seen[ann]
        load = model.judges()[pair.index] + sum(p == pair.index for p in model.pending.values())
        assert load == next(k for k, n in enumerate(expected) if n)  # the lowest load with an unseen pair
        model.seen[ann].add(pair.index)
        model.pending[ann], model.clean[ann] = pair.index, True
        if rng.random() < 0.85:  # else walk away: the serve stays in flight until this annotator's next serve
            rec = vote_record(pair, ann, rng.choice(["a", "skip"]))
            sampler.record(rec)
            model.accounted(rec)
            del model.pending[ann]


def test_uniform_serves_any_open_unseen_pair_uniformly():
    sampler = PairSampler(make_pool(5, 4), strategy="uniform", overlap=2, seed=15)  # 30 pairs
    for i in range(15):  # 0-9 closed (two judges), 10-14 half judged (load 1), 15-29 fresh
        sampler.apply(pair_record(sampler, i, "x", "a"))
        if i < 10:
            sampler.apply(pair_record(sampler, i, "y", "b"))
    got = Counter()
    for k in range(950):
        ann = f"u{k}"
        sampler.remote_serve(ann, 29)  # shown to them by another process
        pair = sampler.next_pair(ann)
        got[pair.index] += 1
        sampler.record(vote_record(pair, ann, "skip"))  # ends the serve without judging it
    assert sorted(got) == list(range(10, 29))  # every open pair but the one seen; load 1 as likely as load 0
    assert all(25 <= n <= 75 for n in got.values())  # Binomial(950, 1/19): mean 50, sd 6.9


def test_cost_per_vote_does_not_grow_with_the_pool(monkeypatch):
    """A 200,004-pair pool: serving, recording and progress never scan the pool or a bucket (checked by making
    every O(pool) path raise), and setting up from the pool and its votes is one pass. Timing: see the report."""
    import annotate.indexed_set as indexed_set
    from annotate.indexed_set import IndexedSet

    pool = make_pool(33_334, 4)
    sampler = PairSampler(pool, strategy="balanced", overlap=2, gold_share=0.0, seed=16)
    assert len(sampler.pairs) == 200_004

    class NoScan(list):
        def __iter__(self):
            raise AssertionError("scanned every pair")

    def no_scan(*a, **kw):
        raise AssertionError("scanned a bucket")

    sampler._judges, sampler._inflight = NoScan(sampler._judges), NoScan(sampler._inflight)
    monkeypatch.setattr(indexed_set, "scan_unseen", no_scan)
    monkeypatch.setattr(IndexedSet, "__iter__", no_scan)
    monkeypatch.setattr(PairSampler, "open_pairs", no_scan)
    records = []
    for k in range(2000):
        ann = f"a{k % 20}"
        pair = sampler.next_pair(ann)
        rec = vote_record(pair, ann, "a" if k % 5 else "skip")
        sampler.record(rec)
        records.append(rec)
        if k % 7 == 0:
            undo = retraction(rec)
            sampler.record(undo)
            sampler.reopen(ann, pair.index, pair.left)
            records.append(undo)
        sampler.progress(ann)
    prog = sampler.progress("a0")
    assert prog["done"] == 100 - len(range(0, 2000, 140))  # a0 votes at k = 0, 20, ...; every 7th is undone
    judged = sum(1 for k in range(2000) if k % 5 and k % 7)  # standing a votes, each on a fresh pair
    assert prog["needed"] == 2 * 200_004 - judged
    monkeypatch.undo()
    sampler._judges, sampler._inflight = sampler._judges[:], sampler._inflight[:]  # plain lists again
    assert sum(sampler.judgments()) == judged
    restarted = PairSampler(pool, overlap=2, seed=17, votes=comparisons_table(records))
    assert restarted.judgments() == sampler.judgments()
    assert restarted.progress("a3")["left"] == sampler.progress("a3")["left"]


def test_apply_is_idempotent_and_retractions_may_come_first():
    sampler = PairSampler(make_pool(3, 3), overlap=2, seed=18)
    vote = pair_record(sampler, 4, "x", "a", swap=True)  # the record's a is canonical b
    undo = retraction(vote)
    assert sampler.apply(undo) and not sampler.apply(undo)
    assert sampler.apply(vote) and not sampler.apply(vote) and not sampler.record(vote)
    assert sampler.judgments([4]) == [0] and sampler.tally(4) == {"a": 0, "b": 0, "tie": 0}
    assert sampler.progress("x")["done"] == 0 and sampler.standing_vote("x", 4) is None
    assert 4 not in [p.index for p in iter(lambda: sampler.next_pair("x"), None)]  # still seen by x
    again = pair_record(sampler, 4, "x", "a", swap=True)
    assert sampler.apply(again)
    assert sampler.tally(4) == {"a": 0, "b": 1, "tie": 0} and sampler.standing_vote("x", 4) == again["comparison_id"]
    assert sampler.recent("x")[0] | {"created_at": None} == {
        "comparison_id": again["comparison_id"], "pair": 4, "choice": "b", "left": "b", "created_at": None
    }  # fmt: skip
    table = comparisons_table([undo, vote, again])
    restarted = PairSampler(make_pool(3, 3), overlap=2, seed=19, votes=table)
    assert restarted.judgments() == sampler.judgments()
    restarted.load_votes(table)  # replaying the same records again changes nothing
    assert restarted.judgments() == sampler.judgments() and restarted.progress("x")["done"] == 1


def test_reopen_standing_vote_and_recent_support_undo():
    sampler = PairSampler(make_pool(4, 3), overlap=1, repeat_rate=0.0, seed=20)  # 12 pairs
    first = sampler.next_pair("u")
    v1 = vote_record(first, "u", "a")
    sampler.record(v1)
    second = sampler.next_pair("u")  # shown, not judged yet
    assert sampler.standing_vote("u", first.index) == v1["comparison_id"]
    assert sampler.standing_vote("u", second.index) is None
    skip = vote_record(second, "u", "skip")
    sampler.record(skip)
    assert sampler.standing_vote("u", second.index) is None  # a skip is not a standing vote
    assert [r["comparison_id"] for r in sampler.recent("u")] == [skip["comparison_id"], v1["comparison_id"]]
    assert sampler.recent("u", 1)[0]["choice"] == "skip"
    third = sampler.next_pair("u")  # pending, never judged
    # Undo v1: retract it, then show the first pair again with the same sides.
    sampler.record(retraction(v1))
    assert sampler.standing_vote("u", first.index) is None and sampler.judgments([first.index]) == [0]
    again = sampler.reopen("u", first.index, first.left)
    assert (again.index, again.left, again.kind) == (first.index, first.left, "normal")
    assert sampler.judgments([first.index]) == [0] and sampler._inflight[first.index] == 1
    assert sampler._inflight[third.index] == 0  # released, and unseen again: it may come back
    assert sampler.progress("u")["left"] == 12 - 2  # all 12 open (a retracted vote and a skip judge nothing)
    other = sampler.next_pair("other")
    assert other.index != first.index  # in flight with overlap 1: not served to others
    sampler.record(vote_record(other, "other", "skip"))
    v2 = vote_record(again, "u", "b")
    sampler.record(v2)
    assert sampler._inflight[first.index] == 0 and sampler.standing_vote("u", first.index) == v2["comparison_id"]
    served = [p.index for p in iter(lambda: sampler.next_pair("u"), None)]
    assert third.index in served and first.index not in served and second.index not in served


def test_repeat_serves_leave_the_newest_vote_standing():
    sampler = PairSampler(make_pool(1, 2), overlap=1, repeat_rate=1.0, seed=21)
    pair = sampler.next_pair("r")
    assert pair.kind == "normal"
    v1 = vote_record(pair, "r", "a")
    sampler.record(v1)
    rep = sampler.next_pair("r")
    assert rep.kind == "repeat" and rep.left != pair.left
    v2 = vote_record(rep, "r", "b")
    sampler.record(v2)
    assert sampler.standing_vote("r", 0) == v2["comparison_id"] and sampler.judgments() == [1]
    sampler.record(retraction(v2))
    assert sampler.standing_vote("r", 0) == v1["comparison_id"] and sampler.judgments() == [1]
    sampler.record(retraction(v1))
    assert sampler.standing_vote("r", 0) is None and sampler.judgments() == [0]
    assert sampler.next_pair("r") is None  # nothing decided to repeat, and the pair was seen


def test_an_ai_judges_votes_never_close_a_pair_for_people():
    """`rlhf/train.py judge` writes into the same store: with overlap 1 its verdicts on every pair, live or
    replayed, must leave every pair open for the human annotators."""
    sampler = PairSampler(make_pool(5, 2), strategy="balanced", overlap=1, seed=11)  # 5 pairs
    judge_votes = []
    for i in range(len(sampler.pairs)):
        pair = sampler._make(i, "a", "normal")
        judge_votes.append(vote_record(pair, "judge:some-model", "a"))
    for rec in judge_votes:
        sampler.apply(rec)  # as the follower applies another process's records
    assert sampler.judgments() == [0] * 5
    restarted = PairSampler(make_pool(5, 2), overlap=1, seed=12, votes=comparisons_table(judge_votes))
    assert restarted.judgments() == [0] * 5
    served = []
    while (pair := restarted.next_pair("human")) is not None:
        served.append(pair.index)
        restarted.record(vote_record(pair, "human", "b"))
    assert sorted(served) == [0, 1, 2, 3, 4]  # every pair still reaches a person
    assert restarted.judgments() == [1] * 5
