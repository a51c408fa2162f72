"""The comparison store under crashes (SIGKILL), full disks, concurrent writers, compaction, other engines,
versions, migration from the previous format and fsck."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, WriterProperties, write_deltalake

from annotate.schema import comparisons_table, new_comparison
from annotate.store import (
    LEGACY_REPLACES_KEY,
    SEG_APP_PREFIX,
    ComparisonStore,
    StoreError,
    StoreTail,
    _commit,
    _to_json_line,
    is_store,
    read_table,
    seal_orphans,
    snapshot,
    wal_dir,
)

REPO = Path(__file__).resolve().parents[1]

# A writer that prints each id only after append() returned, i.e. once the record is acknowledged as durable.
WRITER = """
import sys
from annotate.schema import new_comparison
from annotate.store import ComparisonStore
store = ComparisonStore(sys.argv[1], seal_every=int(sys.argv[3]))
for i in range(int(sys.argv[2])):
    rec = new_comparison(prompt_id=f"p{i % 9}", prompt=[{"role": "user", "content": "q"}], response_a_id="x",
                         response_a="A" * 300, response_b_id="y", response_b="B", choice="a", annotator="w")
    print(store.append(rec), flush=True)
store.close()
"""


def record(i: int, **kw) -> dict:
    base = dict(
        prompt_id=f"p{i % 5}",
        prompt=[{"role": "user", "content": f"question {i % 5}"}],
        response_a_id=f"r{i}",
        response_a="a",
        response_b_id=f"s{i}",
        response_b="b",
        choice="a",
        annotator="t",
    )
    return new_comparison(**{**base, **kw})


def ids_of(root: Path | str) -> list[str]:
    return read_table(str(root)).column("comparison_id").to_pylist()


def start_writer(root: Path, n: int, seal_every: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", WRITER, str(root), str(n), str(seal_every)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def test_sigkill_mid_stream_loses_no_acknowledged_record(tmp_path):
    rng = random.Random(0)
    acked: list[str] = []
    for round_ in range(10):
        proc = start_writer(tmp_path, 10_000, seal_every=rng.choice([3, 7, 50]))
        for _ in range(rng.randint(1, 80)):  # let it run a random while, through seals, then kill it mid-stream
            acked.append(proc.stdout.readline().strip())
        threading.Event().wait(rng.random() * 0.01)
        proc.send_signal(signal.SIGKILL)
        acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]  # printed before death
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if round_ % 3 == 2:
            ComparisonStore(tmp_path).compact()  # folds in the dead writers' segments
        got = ids_of(tmp_path)
        assert set(acked) <= set(got), f"round {round_}: lost {len(set(acked) - set(got))} acknowledged records"
        assert len(got) == len(set(got)), "a record is visible twice"
    ComparisonStore(tmp_path).compact()
    got = ids_of(tmp_path)
    assert set(acked) <= set(got) and len(got) == len(set(got))
    assert len(DeltaTable(str(tmp_path)).file_uris()) == 1 and not list(wal_dir(tmp_path).glob("*.jsonl"))


def test_concurrent_writer_processes_lose_nothing_while_compacting(tmp_path):
    procs = [start_writer(tmp_path, 150, seal_every=20) for _ in range(4)]
    outs: list[list[str]] = [[] for _ in procs]
    readers = [
        threading.Thread(target=lambda p=p, o=o: o.extend(p.stdout.read().split())) for p, o in zip(procs, outs)
    ]
    for t in readers:
        t.start()
    while any(p.poll() is None for p in procs):
        ComparisonStore(tmp_path).compact()  # compaction racing with live writers must not lose or duplicate
        got = ids_of(tmp_path)
        assert len(got) == len(set(got))
    for t in readers:
        t.join()
    assert all(p.returncode == 0 for p in procs)
    acked = [i for o in outs for i in o]
    assert len(acked) == 600
    got = ids_of(tmp_path)
    assert sorted(got) == sorted(acked)


def test_a_seal_killed_between_commit_and_delete_never_shows_a_record_twice(tmp_path):
    """The writer commits its segment (with its app transaction) and dies before deleting it: readers skip the
    segment, and the next fold deletes it without committing it again."""
    store = ComparisonStore(tmp_path)
    ids = store.append_many([record(i) for i in range(3)])
    seg = wal_dir(tmp_path) / store.segment_name
    _commit(tmp_path, read_table(str(tmp_path)), [SEG_APP_PREFIX + seg.name])
    os.close(store._seg_fd)  # the writer "dies" here: its lock goes, the segment stays on disk
    store._seg_fd = None
    assert sorted(ids_of(tmp_path)) == sorted(ids)
    for _ in range(2):
        ComparisonStore(tmp_path).compact()
        assert sorted(ids_of(tmp_path)) == sorted(ids)
    assert not seg.exists()


def test_a_dead_writers_torn_tail_is_dropped_and_its_complete_records_sealed(tmp_path):
    donor = ComparisonStore(tmp_path / "donor")
    ok_id = donor.append(record(99))
    line = (wal_dir(tmp_path / "donor") / donor.segment_name).read_bytes()
    store = ComparisonStore(tmp_path / "s")
    dead = wal_dir(tmp_path / "s") / "seg-dead.jsonl"
    dead.write_bytes(line + line[: len(line) // 2])
    assert ids_of(tmp_path / "s") == [ok_id]
    assert seal_orphans(tmp_path / "s") == 1 and not dead.exists()
    assert ids_of(tmp_path / "s") == [ok_id] and snapshot(str(tmp_path / "s"))[1]["rows"] == 1
    store.close()


def test_readers_see_every_record_during_compaction(tmp_path):
    store = ComparisonStore(tmp_path)
    expected = set(store.append_many([record(i) for i in range(20)]))
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = ids_of(tmp_path)
            if len(got) != len(set(got)) or not expected <= set(got):
                errors.append(f"read {len(got)} ids, {len(set(got))} distinct")

    t = threading.Thread(target=reader)
    t.start()
    for k in range(8):
        store.write_batch([record(100 * k + i) for i in range(5)])
        ComparisonStore(tmp_path).compact()
    stop.set()
    t.join()
    assert not errors
    assert len(ids_of(tmp_path)) == 20 + 40


def test_read_from_a_file_url(tmp_path):
    store = ComparisonStore(tmp_path / "s", seal_every=3)
    ids = store.append_many([record(i) for i in range(3)]) + [store.append(record(3))]  # sealed + in a segment
    table = read_table((tmp_path / "s").as_uri())
    assert sorted(table.column("comparison_id").to_pylist()) == sorted(ids)
    assert table.sort_by("comparison_id").equals(read_table(str(tmp_path / "s")).sort_by("comparison_id"))


def test_append_validates_and_missing_store_is_reported(tmp_path):
    store = ComparisonStore(tmp_path)
    bad = record(0)
    bad["choice"] = "maybe"
    with pytest.raises(Exception, match="choice"):
        store.append(bad)
    assert ids_of(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        read_table(str(tmp_path / "nope"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a store"):
        read_table(str(tmp_path / "plain"))
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and not a store"):
        ComparisonStore(tmp_path / "plain")
    with pytest.raises(StoreError, match="is a file"):
        read_table(str(tmp_path / "plain" / "notes.txt"))


def test_idle_writer_seals_into_the_delta_table_that_other_engines_read(tmp_path):
    """A long-running writer (the app) seals its segment after a lull, so DuckDB, Polars and deltalake see the
    votes; too many data files are compacted into one."""
    root = tmp_path / "s"
    store = ComparisonStore(root, seal_idle_s=0.2, compact_over=3)
    ids = []
    for burst in range(5):
        ids += [store.append(record(burst * 10 + i)) for i in range(3)]
        deadline = time.monotonic() + 30
        while list(wal_dir(root).glob("seg-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list(wal_dir(root).glob("seg-*.jsonl")), "segment not sealed after the lull"
    assert engine_ids(root) == {"deltalake": sorted(ids), "polars": sorted(ids), "duckdb": sorted(ids)}
    store.close()


# -- torn writes, races, kills ---------------------------------------------------------------------------------
FSIZE_WRITER = """
import json, resource, signal, sys
from annotate.schema import new_comparison
from annotate.store import ComparisonStore, StoreWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) or falls short
store = ComparisonStore(sys.argv[1])
def rec(i):
    return new_comparison(prompt_id="p", prompt=[{"role": "user", "content": "q"}], response_a_id="x",
                          response_a="A" * 700, response_b_id="y", response_b="B", choice="a", annotator="w")
store.append(rec(0))  # opens the segment before the limit
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, hard))  # stands in for a full disk, mid-record
for phase, n in (("limited", 12), ("lifted", 3)):
    if phase == "lifted":
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    for i in range(n):
        r = rec(i)
        try:
            store.append(r)
            print("ok", r["comparison_id"], flush=True)
        except StoreWriteError as e:
            print("fail", r["comparison_id"], str(e).replace(" ", "_"), flush=True)
"""


def test_a_write_short_of_its_length_is_not_acknowledged_and_the_store_stays_readable(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    ok = [cid for status, cid, *_ in lines if status == "ok"]
    failed = [cid for status, cid, *_ in lines if status == "fail"]
    assert failed and "not_saved" in lines[[s for s, *_ in lines].index("fail")][2]
    assert [s for s, *_ in lines][-3:] == ["ok", "ok", "ok"], "votes after the limit was lifted must land"
    got = ids_of(tmp_path)  # readable: no torn line was left for later appends to glue onto
    assert len(got) == len(set(got)) == len(ok) + 1
    assert set(ok) <= set(got) and not set(failed) & set(got)
    seg = next(wal_dir(tmp_path).glob("seg-*.jsonl")).read_bytes()
    assert seg.endswith(b"\n") and seg.count(b"\n") == len(ok) + 1


def test_a_new_segment_cannot_be_folded_before_its_writer_locks_it(tmp_path, monkeypatch):
    """The old race: create, (compaction folds and deletes it), lock, append to a deleted file. Widened here by a
    delay before the lock; a fold during the delay must not see the segment."""
    import annotate.store as st

    real_flock, delayed = st.fcntl.flock, threading.Event()

    def slow_flock(fd, op):
        if op == st.fcntl.LOCK_EX | st.fcntl.LOCK_NB and not delayed.is_set():
            delayed.set()
            time.sleep(0.5)
        return real_flock(fd, op)

    ComparisonStore(tmp_path)
    writer = ComparisonStore(tmp_path)
    monkeypatch.setattr(st.fcntl, "flock", slow_flock)
    acked: list[str] = []
    t = threading.Thread(target=lambda: acked.extend(writer.append_many([record(i) for i in range(4)])))
    t.start()
    assert delayed.wait(10)
    monkeypatch.setattr(st.fcntl, "flock", real_flock)
    for _ in range(5):  # folds and compactions inside the window
        ComparisonStore(tmp_path).compact()
    t.join()
    acked += writer.append_many([record(10 + i) for i in range(2)])
    seg = wal_dir(tmp_path) / writer.segment_name
    assert seg.exists()
    os.close(writer._seg_fd)  # the writer dies before sealing: its records live only in its segment
    writer._seg_fd = None
    assert sorted(ids_of(tmp_path)) == sorted(acked)
    ComparisonStore(tmp_path).compact()
    assert sorted(ids_of(tmp_path)) == sorted(acked)


COMPACTOR = """
import sys, time
from annotate.store import ComparisonStore
store = ComparisonStore(sys.argv[1])
while True:
    store.compact(vacuum=True)
"""


def engine_ids(root: Path) -> dict[str, list[str]]:
    """comparison_ids as three other engines read the sealed table, each in a fresh process (and a crash there
    cannot take the test run down)."""
    code = """
import json, sys
import duckdb, polars as pl, pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
root = sys.argv[1]
dt = DeltaTable(root)
out = {
    "deltalake": pa.table(QueryBuilder().register("v", dt).execute("select comparison_id from v").read_all()),
    "polars": pl.read_delta(root).select("comparison_id").to_arrow(),
}
try:  # DuckDB's own Delta reader, where its extension is installed; otherwise the files the log lists
    duckdb.sql("LOAD delta")
    out["duckdb"] = duckdb.sql(f"select comparison_id from delta_scan('{root}')").fetch_arrow_table()
except duckdb.Error:
    files = {"f": dt.file_uris()}
    out["duckdb"] = duckdb.sql("select comparison_id from read_parquet($f)", params=files).fetch_arrow_table()
print(json.dumps({k: sorted(v.column("comparison_id").to_pylist()) for k, v in out.items()}))
"""
    res = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=300)
    assert res.stdout, res.stderr
    return json.loads(res.stdout)


def test_killing_writers_seals_and_compactions_at_random_instants_every_engine_reads_each_vote_once(tmp_path):
    rng = random.Random(7)
    acked: list[str] = []
    ComparisonStore(tmp_path)
    compactor = None
    for round_ in range(20):
        writers = [start_writer(tmp_path, 10_000, seal_every=rng.choice([2, 5, 20])) for _ in range(2)]
        if compactor is None or compactor.poll() is not None:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            compactor = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(tmp_path)], env=env)
        for w in writers:
            for _ in range(rng.randint(1, 30)):
                acked.append(w.stdout.readline().strip())
        time.sleep(rng.random() * 0.05)
        victims = writers + ([compactor] if rng.random() < 0.5 else [])
        for p in victims:
            p.send_signal(signal.SIGKILL)  # mid-append, mid-seal or mid-compaction: wherever it is
        for w in writers:
            acked += [line.strip() for line in w.stdout.read().splitlines() if line.strip()]
            w.wait()
        got = ids_of(tmp_path)
        assert set(acked) <= set(got), f"round {round_}: lost {len(set(acked) - set(got))} acknowledged records"
        assert len(got) == len(set(got)), f"round {round_}: a record is visible twice"
    compactor.send_signal(signal.SIGKILL)
    compactor.wait()
    seal_orphans(tmp_path)  # every acknowledged vote is now sealed
    sealed = sorted(snapshot(str(tmp_path))[0].column("comparison_id").to_pylist())
    assert set(acked) <= set(sealed) and len(sealed) == len(set(sealed))
    assert engine_ids(tmp_path) == {"deltalake": sealed, "polars": sealed, "duckdb": sealed}


# -- versions, migration, fsck ---------------------------------------------------------------------------------
def test_a_version_reads_the_same_rows_later(tmp_path):
    store = ComparisonStore(tmp_path, seal_every=3)
    store.append_many([record(i) for i in range(3)])
    table, info = snapshot(str(tmp_path))
    v = info["version"]
    store.append_many([record(10 + i) for i in range(3)])
    store.close()
    ComparisonStore(tmp_path).compact(vacuum=True)  # rewrites the files; the old ones are kept (retention)
    again, info2 = snapshot(f"{tmp_path}@{v}")
    assert info2["version"] == v and again.sort_by("comparison_id").equals(table.sort_by("comparison_id"))
    assert len(ids_of(tmp_path)) == 6
    with pytest.raises(StoreError, match="version 999"):
        snapshot(f"{tmp_path}@999")


def legacy_store(root: Path) -> list[str]:
    """A store in the previous format (Parquet parts naming what they replace, plus wal/ segments), built with
    the same file layout that release wrote: two parts (one replacing the other), a segment, a pool."""
    root.mkdir()
    (root / "wal").mkdir()
    recs = [record(i) for i in range(7)]
    # The same vote imported twice by the old release, from lines 1 and 2 of a file (old ids held the line).
    imported = [record(40, session="import:trl:prefs.jsonl", annotator="trl:prefs") for _ in range(2)]
    recs[5:5] = imported
    t = comparisons_table(recs[:3])
    meta = {**(t.schema.metadata or {}), LEGACY_REPLACES_KEY: b"[]"}
    pq.write_table(t.replace_schema_metadata(meta), root / "part-import-aa.parquet")
    t2 = comparisons_table(recs[:5])  # a compaction output that replaces the first part
    meta2 = {**(t2.schema.metadata or {}), LEGACY_REPLACES_KEY: json.dumps(["part-import-aa.parquet"]).encode()}
    pq.write_table(t2.replace_schema_metadata(meta2), root / "part-compact-bb.parquet")
    lines = b"".join(_to_json_line(r) for r in recs[5:])
    (root / "wal" / "seg-cc.jsonl").write_bytes(lines + lines[:20])  # with a torn, never acknowledged tail
    (root / "pool").mkdir()
    (root / "pool" / "pool-1.parquet").write_bytes(b"pool")
    from annotate.schema import comparison_id_for

    r = imported[0]
    new_id = comparison_id_for("trl", r["annotator"], r["prompt"], r["response_a"], r["response_b"])
    return [x["comparison_id"] for x in recs if x not in imported] + [new_id]


def test_a_store_in_the_previous_format_migrates_with_every_record(tmp_path):
    ids = legacy_store(tmp_path / "old")
    assert is_store(tmp_path / "old")
    assert sorted(ids_of(tmp_path / "old")) == sorted(ids)  # the first open migrates; imports get content ids
    root = tmp_path / "old"
    assert (root / "_delta_log").is_dir() and not (root / "wal").exists()
    assert (root / "_prefkit" / "legacy" / "MIGRATED").exists()
    assert (root / "_prefkit" / "pool" / "pool-1.parquet").read_bytes() == b"pool"
    store = ComparisonStore(root)
    new = store.append(record(50))
    store.close()
    assert sorted(ids_of(root)) == sorted(ids + [new])
    assert engine_ids(root)["polars"] == sorted(ids + [new])


def test_a_migration_interrupted_after_its_commit_is_not_committed_twice(tmp_path, monkeypatch):
    import annotate.store as st

    ids = legacy_store(tmp_path / "old")
    real = st._fsync_dir
    calls = {"n": 0}

    def dies_before_the_marker(path):
        if Path(path).name == "legacy" and (Path(path).parent.parent / "_delta_log").is_dir():
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt  # stands in for a kill between the commit and the MIGRATED marker
        return real(path)

    monkeypatch.setattr(st, "_fsync_dir", dies_before_the_marker)
    (tmp_path / "old" / "_prefkit").mkdir()
    with pytest.raises(KeyboardInterrupt):
        ComparisonStore(tmp_path / "old")
    monkeypatch.setattr(st, "_fsync_dir", real)
    (tmp_path / "old" / "_prefkit" / "legacy" / "MIGRATED").unlink(missing_ok=True)
    assert sorted(ids_of(tmp_path / "old")) == sorted(ids)  # re-run: the transaction says it is committed


def test_fsck_reports_and_repairs_without_losing_a_record(tmp_path):
    from annotate.fsck import check, repair

    store = ComparisonStore(tmp_path, seal_every=3)
    ids = store.append_many([record(i) for i in range(3)])
    store.close()
    donor = ComparisonStore(tmp_path / "_prefkit" / "donor")
    orphan_ids = donor.append_many([record(20 + i) for i in range(3)])
    lines = (wal_dir(tmp_path / "_prefkit" / "donor") / donor.segment_name).read_bytes().splitlines(keepends=True)
    (wal_dir(tmp_path) / "seg-orphan.jsonl").write_bytes(lines[0] + lines[1] + b'{"torn')
    (wal_dir(tmp_path) / "seg-bad.jsonl").write_bytes(lines[2] + b"not json\n")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "part-x.parquet")  # e.g. an export written into the store
    report = check(tmp_path)
    assert [t["file"] for t in report["torn"]] == ["_prefkit/wal/seg-orphan.jsonl"]
    assert report["corrupt"] == [{"file": "_prefkit/wal/seg-bad.jsonl", "line": 2}]
    assert {o["file"] for o in report["orphans"]} == {"_prefkit/wal/seg-orphan.jsonl", "_prefkit/wal/seg-bad.jsonl"}
    assert report["foreign"] == [{"file": "part-x.parquet"}] and not report["missing"]
    assert sorted(ids_of(tmp_path)) == sorted(ids + orphan_ids)  # part-x is never read; the bad line is skipped
    done = repair(tmp_path)
    assert any("foreign" in d for d in done)
    after = check(tmp_path)
    assert not any(after[k] for k in ("torn", "corrupt", "orphans", "stale", "foreign", "missing", "dups"))
    assert sorted(ids_of(tmp_path)) == sorted(ids + orphan_ids) and not list(wal_dir(tmp_path).glob("*.jsonl"))
    assert (tmp_path / "_prefkit" / "quarantine" / "part-x.parquet").exists()
    assert (tmp_path / "_prefkit" / "quarantine" / "seg-bad.jsonl").exists()


def test_fsck_command_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def fsck(*args):
        return subprocess.run([sys.executable, "-m", "annotate", "fsck", *args], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip

    store = ComparisonStore(tmp_path / "s")
    store.append(record(0))
    store.close()
    assert fsck("--store", str(tmp_path / "s")).returncode == 0
    (tmp_path / "s" / "stray.parquet").write_bytes(b"x")
    res = fsck("--store", str(tmp_path / "s"))
    assert res.returncode == 1 and "stray.parquet" in res.stdout
    assert fsck("--store", str(tmp_path / "s"), "--repair").returncode == 0
    res = fsck("--store", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


# -- StoreTail: other processes' records, incrementally ------------------------------------------------------
def tail_ids(tail: StoreTail) -> list[str]:
    return [r["comparison_id"] for r in tail.poll()]


def test_tail_returns_each_new_record_once_through_seal_and_compaction(tmp_path):
    mine = ComparisonStore(tmp_path)
    before = mine.append_many([record(i) for i in range(3)])
    tail = StoreTail(tmp_path)
    first = tail.poll()
    assert sorted(r["comparison_id"] for r in first) == sorted(before)  # the first poll returns what is there
    assert all(isinstance(r["created_at"], datetime) and isinstance(r["criteria"], dict) for r in first)
    assert tail.poll() == []
    other = ComparisonStore(tmp_path)  # a second writer: its own segment
    new = other.append_many([record(10 + i, criteria={"correct": "a"}) for i in range(4)])
    got = tail.poll()
    assert [r["comparison_id"] for r in got] == new
    assert got[0]["criteria"] == {"correct": "a"} and got[0]["created_at"].tzinfo is not None
    other.close()  # its segment becomes a part: records already returned
    assert tail.poll() == []
    ComparisonStore(tmp_path).compact()
    assert tail.poll() == []
    late = mine.append(record(20))
    assert tail_ids(tail) == [late]
    mine.close()
    ComparisonStore(tmp_path).compact()
    assert tail.poll() == []
    # A new tail reads the compacted store from Parquet, with the same records as the first one returned.
    again = StoreTail(tmp_path).poll()
    assert sorted(r["comparison_id"] for r in again) == sorted(before + new + [late])
    assert {r["comparison_id"]: r["criteria"] for r in again}[new[0]] == {"correct": "a"}
    assert StoreTail(tmp_path, from_now=True).poll() == []


def test_tail_reads_the_log_only_when_a_version_was_added(tmp_path, monkeypatch):
    # Every serve polls: with nothing committed, a poll must not re-read the Delta log (it cost 0.3-1 ms each
    # and throttled the app), yet a commit seen in no segment (an import, a skipped segment) is still found.
    mine = ComparisonStore(tmp_path)
    mine.append(record(0))
    tail = StoreTail(tmp_path)
    tail.poll()
    calls = []
    real = type(tail._dt).update_incremental
    monkeypatch.setattr(type(tail._dt), "update_incremental", lambda dt: calls.append(1) or real(dt))
    for _ in range(3):
        assert tail.poll() == []
    assert calls == []
    batch = [record(1), record(2)]
    ComparisonStore(tmp_path).write_batch(batch)  # a commit with no segment behind it
    assert sorted(tail_ids(tail)) == sorted(r["comparison_id"] for r in batch)
    skipped = mine.append(record(3))
    assert tail.poll(skip=[mine.segment_name]) == []
    mine.close()  # sealed as version 2: the tail finds it in the table
    assert tail_ids(tail) == [skipped] and len(calls) == 2


def test_tail_waits_for_a_torn_line_to_complete(tmp_path):
    ComparisonStore(tmp_path)  # creates the layout
    donor = ComparisonStore(tmp_path / "donor")
    ids = [donor.append(record(i)) for i in range(2)]
    lines = next(wal_dir(tmp_path / "donor").glob("*.jsonl")).read_bytes().splitlines(keepends=True)
    seg = wal_dir(tmp_path) / "seg-manual.jsonl"
    tail = StoreTail(tmp_path)
    seg.write_bytes(lines[0] + lines[1][:25])
    assert tail_ids(tail) == [ids[0]]  # the torn line is not returned
    assert tail.poll() == []
    with open(seg, "ab") as f:
        f.write(lines[1][25:-1])  # all but the newline: still not complete
    assert tail.poll() == []
    with open(seg, "ab") as f:
        f.write(b"\n")
    assert tail_ids(tail) == [ids[1]]
    assert tail.poll() == []


def test_tail_interleaved_with_appends_seals_and_compactions_returns_each_record_once(tmp_path):
    rng = random.Random(1)
    writers = [ComparisonStore(tmp_path, seal_every=rng.choice([3, 5, 8])) for _ in range(3)]
    tail = StoreTail(tmp_path)
    written, returned = [], []
    for step in range(300):
        w = rng.choice(writers)
        written += w.append_many([record(step * 10 + k) for k in range(rng.randint(1, 3))])
        if rng.random() < 0.4:
            returned += tail_ids(tail)
        if rng.random() < 0.05:
            ComparisonStore(tmp_path).compact()
        if rng.random() < 0.02:
            w.close()  # seals; the next append opens a new segment
    returned += tail_ids(tail)
    assert len(returned) == len(set(returned)) and sorted(returned) == sorted(written)
    for w in writers:
        w.close()
    ComparisonStore(tmp_path).compact()
    assert tail.poll() == []


def test_tail_polling_while_a_writer_thread_appends(tmp_path):
    store = ComparisonStore(tmp_path, seal_every=7)
    tail = StoreTail(tmp_path, from_now=True)
    written: list[str] = []

    def write() -> None:
        for i in range(400):
            written.append(store.append(record(i)))
            if i % 97 == 0:
                ComparisonStore(tmp_path).compact()

    t = threading.Thread(target=write)
    t.start()
    returned: list[str] = []
    while t.is_alive():
        returned += tail_ids(tail)
    t.join()
    returned += tail_ids(tail)
    assert len(returned) == len(set(returned)) and sorted(returned) == sorted(written)


def test_tail_returns_only_unseen_rows_of_a_part_with_many_row_groups(tmp_path):
    store = ComparisonStore(tmp_path)
    old = store.append_many([record(i) for i in range(5)])
    tail = StoreTail(tmp_path)
    assert sorted(tail_ids(tail)) == sorted(old)
    table = read_table(str(tmp_path))
    store.close()
    fresh = [record(100 + i) for i in range(7)]
    rows = [{**r, "criteria": list(r["criteria"].items())} for r in fresh]
    mixed = pa.concat_tables([table, pa.Table.from_pylist(rows, schema=table.schema)])
    mixed = mixed.take([0, 1, 2, 5, 6, 3, 4, 7, 8, 9, 10, 11])  # row group 0 (3 rows) holds only old records
    # One data file with several row groups, some holding only records already returned (as a compaction's).
    write_deltalake(str(tmp_path), mixed, mode="append", writer_properties=WriterProperties(max_row_group_size=3))
    assert tail_ids(tail) == [fresh[k]["comparison_id"] for k in (0, 1, 2, 3, 4, 5, 6)]
    assert tail.poll() == []
