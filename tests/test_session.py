"""The annotation actions without a browser: sessions bound to their owner, one record per token, limits, flags,
History changes and never two standing votes per annotator and pair."""

import threading

import pytest
from apphelpers import write_pool

from annotate.export import usable_votes
from annotate.pool import read_pool
from annotate.sampler import PairSampler
from annotate.session import AnnotationService, SessionState, VoteError
from annotate.stats import store_stats
from annotate.store import ComparisonStore, effective_table, read_table


@pytest.fixture
def service(tmp_path):
    pool = read_pool(write_pool(tmp_path / "pool.jsonl", n_prompts=20, n_cands=3, nasty=False))
    store = ComparisonStore(tmp_path / "votes")
    yield AnnotationService(store, PairSampler(pool, seed=0, overlap=2)), tmp_path / "votes"
    store.close()


def test_session_belongs_to_its_first_annotator(service):
    svc, store = service
    bob = SessionState()
    view = svc.next_pair(bob, "bob")
    for act in (
        lambda: svc.vote(bob, "alice", "a", token=view.token),
        lambda: svc.undo(bob, "alice"),
        lambda: svc.next_pair(bob, "alice"),
        lambda: svc.flag(bob, "alice", "broken", token=view.token),
    ):
        with pytest.raises(VoteError, match="belongs to another annotator"):
            act()
    assert read_table(str(store)).num_rows == 0
    svc.vote(bob, "bob", "a", token=view.token)  # the owner still can
    assert read_table(str(store))["annotator"].to_pylist() == ["bob"]


def test_empty_or_stale_token_refused(service):
    svc, store = service
    st = SessionState()
    view = svc.next_pair(st, "ann")
    for token in ("", None, "stale"):
        with pytest.raises(VoteError, match="no longer shown"):
            svc.vote(st, "ann", "a", token=token)
    assert read_table(str(store)).num_rows == 0
    svc.vote(st, "ann", "a", token=view.token)
    with pytest.raises(VoteError, match="no longer shown"):  # the token was used up by that vote
        svc.vote(st, "ann", "b", token=view.token)
    assert read_table(str(store)).num_rows == 1


def test_simultaneous_votes_with_one_token_store_one(service):
    svc, store = service
    for trial in range(30):
        st = SessionState()
        view = svc.next_pair(st, f"ann{trial}")
        barrier, errors = threading.Barrier(2), []

        def send(choice, st=st, view=view, trial=trial, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                svc.vote(st, f"ann{trial}", choice, token=view.token)
            except VoteError as e:
                errors.append(e)

        threads = [threading.Thread(target=send, args=(c,)) for c in "ab"]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(errors) == 1
    votes = read_table(str(store)).to_pylist()
    assert len(votes) == 30 and len({v["annotator"] for v in votes}) == 30


def test_rationale_limit(service):
    svc, store = service
    st = SessionState()
    view = svc.next_pair(st, "ann")
    with pytest.raises(VoteError, match="over the limit of 5,000"):
        svc.vote(st, "ann", "a", rationale="x" * 5001, token=view.token)
    assert read_table(str(store)).num_rows == 0
    svc.vote(st, "ann", "a", rationale="y" * 5000, token=view.token)
    assert read_table(str(store))["rationale"].to_pylist() == ["y" * 5000]


def test_flag_is_a_skip_kept_out_of_training(service):
    svc, store = service
    a, b = SessionState(), SessionState()
    va = svc.next_pair(a, "ann1")
    pair = a.pair
    svc.vote(a, "ann1", "a", token=va.token)  # a real preference on the pair
    vb = svc.next_pair(b, "ann2")
    while b.pair.index != pair.index:  # serve ann2 until the same pair comes up
        vb = svc.vote(b, "ann2", "skip", token=vb.token)

    def on_pair(rows):
        return [r for r in rows if r["prompt_id"] == pair.prompt_id
                and {r["response_a_id"], r["response_b_id"]} == {pair.a.response_id, pair.b.response_id}]  # fmt: skip

    assert len(on_pair(usable_votes(read_table(str(store))).to_pylist())) == 1  # trainable before the flag
    with pytest.raises(VoteError, match="flag must be one of"):
        svc.flag(b, "ann2", "boring", token=vb.token)
    out = svc.flag(b, "ann2", "offensive", token=vb.token)
    assert "flagged as offensive" in out.message
    table = read_table(str(store))
    flagged = [r for r in table.to_pylist() if r["flag"]]
    assert [(r["choice"], r["flag"], r["annotator"]) for r in flagged] == [("skip", "offensive", "ann2")]
    assert on_pair(usable_votes(table).to_pylist()) == []  # and not after
    totals = store_stats(str(store))["totals"]
    assert totals["flagged offensive"] == 1 and totals["flagged broken"] == 0


def test_history_change_is_retraction_plus_vote(service):
    svc, store = service
    st = SessionState()
    v = svc.next_pair(st, "ann")
    first_pair = st.pair
    v = svc.vote(st, "ann", "a", strength="slight", token=v.token)
    v = svc.vote(st, "ann", "tie", token=v.token)
    entries = svc.history_choices("ann")
    assert "Saved" in v.message and len(entries) == 2 and v.history.count("<li ") == 2
    old_id = entries[-1][1]  # newest first: the last entry is the first vote
    v = svc.reopen(st, "ann", old_id)
    assert st.pair.index == first_pair.index and st.pair.left == first_pair.left  # shown as it was
    v = svc.vote(st, "ann", "b", strength="much", token=v.token)
    assert "Changed" in v.message
    table = read_table(str(store))
    standing = effective_table(table).to_pylist()
    assert len(standing) == 2 and old_id not in {r["comparison_id"] for r in standing}
    changed = [r for r in standing if r["response_a_id"] == first_pair.a.response_id
               and r["prompt_id"] == first_pair.prompt_id][0]  # fmt: skip
    assert changed["choice"] != first_pair.left and changed["strength"] == 3
    assert [r["retracts"] for r in table.to_pylist()].count(old_id) == 1


def test_never_two_standing_votes_across_sessions(service):
    svc, store = service
    s1, s2 = SessionState(), SessionState()
    v1 = svc.next_pair(s1, "ann")
    v1 = svc.vote(s1, "ann", "a", token=v1.token)
    judged_id = svc.history_choices("ann")[0][1]
    judged = s1.history[-1][1]
    # Session 2 gets a pair, then is made to show the judged pair (as a replica that missed the vote would).
    v2 = svc.next_pair(s2, "ann")
    s2.pair = judged
    svc._shown[s2.session_id] = s2.token = v2.token
    out = svc.vote(s2, "ann", "b", token=v2.token)
    assert "already judged" in out.message
    standing = effective_table(read_table(str(store))).to_pylist()
    assert [r["comparison_id"] for r in standing] == [judged_id]


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
from apphelpers import write_pool
from pathlib import Path
from annotate.pool import read_pool
from annotate.sampler import PairSampler
from annotate.session import AnnotationService, NotSaved, SessionState
from annotate.store import ComparisonStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
root = Path(sys.argv[1])
pool = read_pool(write_pool(root / "pool.jsonl", n_prompts=5, n_cands=3, nasty=False))
store = ComparisonStore(root / "votes")
svc = AnnotationService(store, PairSampler(pool, seed=0, overlap=2))
st = SessionState()
view = svc.next_pair(st, "ann")
svc.vote(st, "ann", "a", token=view.token)  # opens the segment
view = svc.next_pair(st, "ann")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # the disk is full from here on
shown = st.pair
try:
    svc.vote(st, "ann", "b", rationale="long " * 100, token=view.token)
    print("saved?!")
except NotSaved as e:
    print("refused:", e)
assert st.pair is shown  # the pair stays on screen, with the same token
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
svc.vote(st, "ann", "b", token=view.token)
store.close()
print("landed")
"""


def test_a_full_disk_says_not_saved_keeps_the_pair_and_the_next_try_lands(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    res = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), str(tests)], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "refused: Not saved" in res.stdout and "landed" in res.stdout
    votes = read_table(str(tmp_path / "votes"))
    assert votes.num_rows == 2 and not any("long" in r for r in votes["rationale"].to_pylist())  # the refused one
