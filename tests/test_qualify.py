"""Qualification and live checks (annotate.qualify) with simulated annotators, through the real AnnotationService,
sampler and store: a reliable annotator passes, a random one and an adversarial flipper fail qualification or are
paused by the sequential test; verdicts survive a restart, hold votes out of export, and an admin can release."""

import json
import math
import random

import pytest
from apphelpers import write_gold_pool  # tests/ is on sys.path under pytest

from annotate.annotator_status import QUALIFY_PREFIX, annotator_status
from annotate.export import export
from annotate.pool import read_pool
from annotate.qualify import AnnotatorGate, CheckConfig, Cusum, gold_reasons
from annotate.sampler import PairSampler
from annotate.session import AnnotationService, SessionState, VoteError
from annotate.store import ComparisonStore, read_table


def quality(cand) -> int:
    return -int(cand.response_id[1:])


def make_annotator(kind: str, seed: int):
    """(left, right, rng) -> a screen choice. `reliable` right 95% of the time and ties identical responses;
    `random` picks a side at random; `flipper` picks the worse response (and A when both are the same);
    `longer` picks the longer response (tie when they are equally long)."""
    rng = random.Random(seed)

    def choose(left, right) -> str:
        if kind == "random":
            return rng.choice("ab")
        if kind == "longer":
            d = len(left.text) - len(right.text)
            return "tie" if d == 0 else "a" if d > 0 else "b"
        if left.response_id == right.response_id:
            return "a" if kind == "flipper" else "tie"
        better = "a" if quality(left) > quality(right) else "b"
        worse = "b" if better == "a" else "a"
        if kind == "flipper":
            return worse
        return better if rng.random() < 0.95 else worse

    return choose


def start(tmp_path, config: CheckConfig, **sampler_kw):
    pool = read_pool(tmp_path / "pool.jsonl") if (tmp_path / "pool.jsonl").exists() else None
    if pool is None:
        pool = read_pool(write_gold_pool(tmp_path / "pool.jsonl"))
    store = ComparisonStore(tmp_path / "votes")
    records = store.read()
    sampler = PairSampler(pool, seed=sampler_kw.pop("seed", 0), votes=records, **sampler_kw)
    gate = AnnotatorGate(config, sampler.gold, gold_reasons(pool), store.root)
    gate.load(records)
    sampler.subscribe(gate.observe)
    return AnnotationService(store, sampler, gate=gate), store, gate


def run(svc, name: str, kind: str, votes: int, seed: int = 0):
    """Let a simulated annotator vote until nothing is served or `votes` were cast; returns (votes cast, last view)."""
    choose = make_annotator(kind, seed)
    st = SessionState()
    view = svc.next_pair(st, name)
    n = 0
    while st.pair is not None and n < votes:
        left, right = st.pair.shown
        view = svc.vote(st, name, choose(left, right), token=view.token)
        n += 1
    return n, view


KINDS = ("reliable", "random", "flipper", "longer")


def test_cusum_is_walds_sprt_restarted_at_zero():
    t = Cusum(0.85, 0.5, 0.001)
    assert math.isclose(t.wrong, math.log(0.5 / 0.15)) and math.isclose(t.right, math.log(0.5 / 0.85))
    assert math.isclose(t.h, math.log(1000))
    s = 0.0
    for _ in range(5):
        s = t.step(s, False)
    assert s < t.h and t.step(s, False) >= t.h  # six wrong checks in a row pause
    assert t.step(0.0, True) == 0.0  # never below zero: evidence of a good past does not bank credit
    assert CheckConfig(qualify_n=10, qualify_min=0.8).to_pass == 8
    assert CheckConfig(qualify_n=3, qualify_min=0.67).to_pass == 3  # 2 of 3 is 0.667, under 0.67
    with pytest.raises(ValueError):
        CheckConfig(p_good=0.4, p_bad=0.5)


def test_qualification_with_simulated_annotators(tmp_path):
    svc, store, gate = start(tmp_path, CheckConfig(qualify_n=10, qualify_min=0.8), overlap=4)
    outcome = {}
    for seed, kind in enumerate(KINDS):
        n, view = run(svc, kind, kind, votes=10, seed=seed)
        assert n == 10
        outcome[kind] = gate.checks(kind).status
    assert outcome["reliable"] == "qualified"
    assert outcome["random"] == "failed" and outcome["flipper"] == "failed"
    # Always picking the longer answer is right only where the better answer is the longer one (a third of the
    # prompts here): it fails.
    assert outcome["longer"] == "failed"
    votes = read_table(str(tmp_path / "votes")).to_pylist()
    assert len(votes) == 40 and all(v["session"].startswith(QUALIFY_PREFIX) for v in votes)
    # A failed annotator is told so and served nothing more; the reliable one moves on to ordinary pairs.
    st = SessionState()
    view = svc.next_pair(st, "random")
    assert st.pair is None and "did not pass the qualification" in view.message
    st = SessionState()
    svc.next_pair(st, "reliable")
    assert st.pair is not None and st.pair.kind != "qualify"
    store.close()


def test_live_checks_pause_random_and_flipper_not_reliable(tmp_path):
    config = CheckConfig(live=True)
    svc, store, gate = start(tmp_path, config, overlap=4, gold_share=0.1, repeat_rate=0.15, honeypot_rate=0.1)
    cast = {}
    for seed, kind in enumerate(KINDS):
        cast[kind], view = run(svc, kind, kind, votes=300, seed=seed)
    status = {k: gate.checks(k).status for k in KINDS}
    for k in KINDS:  # shown with -s: how fast each kind was caught
        c = gate.checks(k)
        print(f"{k}: {status[k]} after {cast[k]} votes, {c.wrong} of {c.checks} checks wrong, S = {c.score:.2f}")
    assert status["reliable"] != "paused" and cast["reliable"] > 100  # served until the pool ran out for them
    assert status["random"] == "paused" and status["flipper"] == "paused"
    assert cast["flipper"] < cast["random"] < cast["reliable"]  # the flipper is wrong on every check: caught first
    # Always-longer: consistent on repeats and right on honeypots (equal length -> tie); wrong on the gold pairs
    # whose better answer is the shorter one (two in three here), which the test catches too.
    assert status["longer"] == "paused"
    st = SessionState()
    view = svc.next_pair(st, "random")
    assert st.pair is None and "paused for review" in view.message
    # Never silently dropped: the votes are in the store, the verdict in the status log.
    votes = read_table(str(tmp_path / "votes"))
    assert votes.column("annotator").to_pylist().count("random") == cast["random"]
    logged = annotator_status(tmp_path / "votes")
    assert logged["random"] == "paused" and logged["flipper"] == "paused" and "reliable" not in logged
    store.close()


def test_verdicts_survive_a_restart_hold_votes_out_of_export_and_an_admin_releases(tmp_path):
    config = CheckConfig(qualify_n=4, qualify_min=0.75)
    svc, store, gate = start(tmp_path, config, overlap=4)
    run(svc, "good", "reliable", votes=4 + 6, seed=1)  # qualifies, then six ordinary votes
    run(svc, "bad", "flipper", votes=10)
    assert gate.checks("bad").status == "failed"
    store.close()
    out = tmp_path / "prefs.parquet"
    stats = export(str(tmp_path / "votes"), out, allow_empty=True)
    assert stats["held_out"] == 4  # the flipper's four qualification answers; the good annotator's ten count
    kept = export(str(tmp_path / "votes"), tmp_path / "all.parquet", include_held=True)
    assert kept["votes"] == stats["votes"] + 4
    from rlhf.data import load_preferences  # training straight from the store leaves out the same votes

    assert len(load_preferences(str(tmp_path / "votes"))) == stats["rows"]

    svc, store, gate = start(tmp_path, config, overlap=4)  # a restart derives the same verdicts from the store
    assert gate.checks("good").status == "qualified" and gate.checks("good").qual_n == 4
    assert gate.checks("bad").status == "failed"
    st = SessionState()
    assert "did not pass" in svc.next_pair(st, "bad").message
    with pytest.raises(VoteError, match="not held"):
        svc.release("good", "admin")
    svc.release("bad", "admin")
    st = SessionState()
    svc.next_pair(st, "bad")
    assert st.pair is not None and st.pair.kind != "qualify"  # vouched for: ordinary pairs, no new qualification
    rows = {r["annotator"]: r for r in gate.rows()}
    assert rows["bad"]["status"] == "released" and "released by admin" in rows["bad"]["why"]
    store.close()
    assert export(str(tmp_path / "votes"), out)["held_out"] == 0
    svc, store, gate = start(tmp_path, config, overlap=4)  # the release is in the log: it survives a restart too
    assert gate.checks("bad").status == "released"
    store.close()


def test_a_verdict_stands_when_the_app_restarts_with_other_checks(tmp_path):
    svc, store, gate = start(tmp_path, CheckConfig(qualify_n=2, qualify_min=1.0), overlap=4)
    run(svc, "bad", "flipper", votes=2)
    store.close()
    svc, store, gate = start(tmp_path, CheckConfig(daily_cap=100), overlap=4)  # qualification off now
    st = SessionState()
    assert "did not pass the qualification (0 of 2 right; 2 needed)" in svc.next_pair(st, "bad").message
    assert st.pair is None
    svc.release("bad", "lead")
    assert svc.next_pair(st, "bad").prompt
    store.close()


def test_audit_names_held_annotators(tmp_path, capsys):
    import argparse

    from annotate.audit_cli import add_arguments, main

    svc, store, gate = start(tmp_path, CheckConfig(qualify_n=2, qualify_min=1.0), overlap=4)
    run(svc, "good", "reliable", votes=6, seed=3)
    run(svc, "bad", "flipper", votes=2)
    store.close()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--store", str(tmp_path / "votes"), "--n-boot", "0"])) == 0
    assert "- Annotators held (failed qualification or paused; their votes are left out of export): bad." in (
        capsys.readouterr().out
    )


def test_feedback_after_each_qualification_answer_and_answers_are_final(tmp_path):
    svc, store, gate = start(tmp_path, CheckConfig(qualify_n=3, qualify_min=0.67), overlap=2)
    st = SessionState()
    view = svc.next_pair(st, "ann")
    assert st.pair.kind == "qualify" and st.pair.gold is not None
    better = "a" if st.pair.left == st.pair.gold else "b"  # the position of the known-better response
    view = svc.vote(st, "ann", better, token=view.token)
    assert "Right: Response " + better.upper() + " is the better one" in view.message
    assert "correct and to the point" in view.message or "half right" in view.message  # the pool's meta note
    assert "Qualification: 1 of 3 answered, 1 right (3 needed)" in view.message
    wrong = "b" if (st.pair.left == st.pair.gold) else "a"
    view = svc.vote(st, "ann", wrong, token=view.token)
    assert "Not right" in view.message
    assert "Nothing to undo" in svc.undo(st, "ann").message  # qualification answers are final
    cid = read_table(str(tmp_path / "votes")).column("comparison_id")[0].as_py()
    with pytest.raises(VoteError, match="final"):
        svc.reopen(st, "ann", cid)
    assert svc.history_choices("ann") == []
    view = svc.next_pair(st, "ann")
    view = svc.vote(st, "ann", "tie", token=view.token)  # a tie on a gold pair is not right
    assert st.pair is None and "did not pass the qualification (1 of 3 right; 3 needed)" in view.message
    assert view.message.count("did not pass") == 1
    store.close()


def test_daily_cap_and_too_fast(tmp_path):
    svc, store, gate = start(tmp_path, CheckConfig(daily_cap=12, too_fast_s=1000.0), overlap=2)
    n, view = run(svc, "quick", "reliable", votes=50)
    assert n == 12 and "limit of 12 pairs" in view.message
    assert "very quick" in view.message
    row = {r["annotator"]: r for r in gate.rows()}["quick"]
    assert row["status"] == "new · too fast" and row["too fast"] == "12/12"
    store.close()


def test_status_log_lines_are_json_and_reasons_come_from_meta(tmp_path):
    svc, store, gate = start(tmp_path, CheckConfig(qualify_n=2, qualify_min=1.0), overlap=2)
    run(svc, "x", "flipper", votes=2)
    lines = (tmp_path / "votes" / "_prefkit" / "annotators.jsonl").read_text().splitlines()
    ev = json.loads(lines[-1])
    assert ev["annotator"] == "x" and ev["status"] == "failed" and "0 of 2 right" in ev["reason"]
    assert gold_reasons(read_pool(tmp_path / "pool.jsonl"))[("p0", "r0")] == "correct and to the point"
    store.close()


def test_an_undone_vote_takes_its_check_back_out(tmp_path):
    """An annotator who clicks the wrong side and undoes it at once is judged on the votes that stand: through the
    real service, one who first picks the worse response on every pair, undoes it and then picks the better one is
    never paused (the flipper who does not undo is: test_live_checks_pause_random_and_flipper_not_reliable), and
    their counts (votes, too-fast votes, checks) are those of the standing votes."""
    config = CheckConfig(live=True, too_fast_s=2.0)
    svc, store, gate = start(tmp_path, config, overlap=4, gold_share=0.1, repeat_rate=0.15, honeypot_rate=0.1)
    wrong, right = make_annotator("flipper", 0), make_annotator("reliable", 0)
    st, n = SessionState(), 0
    view = svc.next_pair(st, "oops")
    while st.pair is not None:  # until the pool has nothing more for them
        left, rgt = st.pair.shown
        view = svc.vote(st, "oops", wrong(left, rgt), token=view.token)
        view = svc.undo(st, "oops")
        left, rgt = st.pair.shown
        view = svc.vote(st, "oops", right(left, rgt), token=view.token)
        n += 1
    c = gate.checks("oops")
    # Every vote here is instant, so too fast; an undone one no longer counts toward the share.
    assert n > 100 and c.status == "new" and c.votes == c.fast == n and c.checks > 20
    assert c.wrong <= 0.15 * c.checks  # the reliable picks alone (right 95% of the time)

    # The statistic is replayed without the undone outcome: exactly what it would be had it never been cast.
    from annotate.schema import new_comparison

    gate2 = AnnotatorGate(CheckConfig(live=True), gold={})

    def honeypot(i: int, choice: str, **kw) -> dict:
        return new_comparison(prompt_id=f"p{i}", prompt=[{"role": "user", "content": "q"}], response_a_id="r",
                              response_a="x", response_b_id="r", response_b="x", choice=choice, annotator="x",
                              session="s", **kw)  # fmt: skip

    outcomes = ["a", "tie", "a", "a", "tie", "b"]  # wrong, right, wrong, wrong, right, wrong
    recs = [honeypot(i, c) for i, c in enumerate(outcomes)]
    for r in recs:
        gate2.observe(r)
    with_all = gate2.checks("x").score
    gate2.observe(honeypot(99, "skip", retracts=recs[2]["comparison_id"]))
    t, s = Cusum(0.85, 0.5, 0.001), 0.0
    for c in outcomes[:2] + outcomes[3:]:
        s = t.step(s, c == "tie")
    assert math.isclose(gate2.checks("x").score, s) and s < with_all
    assert gate2.checks("x").checks == 5 and gate2.checks("x").wrong == 3 and gate2.checks("x").votes == 5
    store.close()


def test_the_annotators_command_lists_verdicts_and_releases_into_a_running_app(tmp_path):
    """`python -m annotate annotators --store DIR` lists the log's verdicts (held first, control characters escaped);
    `--release NAME` writes the release a running app's gate applies at its next question, and refuses (exit 2, one
    line, nothing written) anyone who is not held."""
    import subprocess
    import sys

    from annotate.annotator_status import status_path

    config = CheckConfig(qualify_n=4, qualify_min=0.75)
    svc, store, gate = start(tmp_path, config, overlap=4)
    run(svc, "good", "reliable", votes=4, seed=1)
    run(svc, "bad\x1b[31m", "flipper", votes=10)
    assert gate.checks("bad\x1b[31m").status == "failed"

    def cli(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "annotate", "annotators", "--store", str(tmp_path / "votes"), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    listed = cli()
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("bad\\u001b[31m\tfailed\t") and "qualification: " in lines[0]
    assert lines[1].startswith("good\tqualified\t") and "\x1b" not in listed.stdout

    size = status_path(tmp_path / "votes").stat().st_size
    for who in ("good", "nobody"):
        refused = cli("--release", who)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "is not held" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert status_path(tmp_path / "votes").stat().st_size == size  # nothing written
    missing = subprocess.run([sys.executable, "-m", "annotate", "annotators", "--store", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "no such store" in missing.stderr

    done = cli("--release", "bad\x1b[31m", "--by", "lead")
    assert done.returncode == 0 and "released bad\\u001b[31m (was failed)" in done.stdout
    # The running app's gate has not been told; it reads the log at its next question about an annotator.
    assert gate.checks("bad\x1b[31m").status == "released"
    st = SessionState()
    svc.next_pair(st, "bad\x1b[31m")
    assert st.pair is not None and st.pair.kind != "qualify"
    assert "released by lead" in {r["annotator"]: r for r in gate.rows()}["bad\x1b[31m"]["why"]
    store.close()


def test_a_pinned_version_takes_the_verdicts_of_its_time(tmp_path):
    """Export of DIR@VERSION applies the verdicts as they stood when that version was committed: a release written
    later changes the latest export, never the pinned one (a training run on DIR@V can be repeated)."""
    from datetime import timedelta

    from annotate.store import parse_store_spec, pin_version, version_time

    config = CheckConfig(qualify_n=4, qualify_min=0.75)
    svc, store, gate = start(tmp_path, config, overlap=4)
    run(svc, "good", "reliable", votes=4 + 6, seed=1)
    run(svc, "bad", "flipper", votes=10)
    store.close()
    pinned = pin_version(tmp_path / "votes")
    root, version = parse_store_spec(pinned)
    assert version_time(root, version) >= gate.now() - timedelta(minutes=5)  # a real commit time, in UTC
    before = export(pinned, tmp_path / "before.parquet", allow_empty=True)
    assert before["held_out"] == 4

    svc, store, gate = start(tmp_path, config, overlap=4)
    svc.release("bad", "admin")
    store.close()
    again = export(pinned, tmp_path / "again.parquet", allow_empty=True)
    assert (again["held_out"], again["rows"], again["votes"]) == (before["held_out"], before["rows"], before["votes"])
    assert export(str(tmp_path / "votes"), tmp_path / "now.parquet", allow_empty=True)["held_out"] == 0
