"""The comparison store under crashes (SIGKILL), concurrent writers, compaction and fsspec URLs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.schema import new_comparison
from annotate.store import ComparisonStore, StoreTail, read_table, write_parquet_atomic

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
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1 and not list((tmp_path / "wal").glob("*.jsonl"))


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


def test_compaction_is_atomic_at_every_crash_point(tmp_path):
    store = ComparisonStore(tmp_path, seal_every=4)
    ids = store.append_many([record(i) for i in range(5)]) + store.append_many([record(i) for i in range(5, 10)])
    ids += [store.append(record(10))]  # 2 sealed parts + 1 record in the open segment
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 2 and len(list((tmp_path / "wal").glob("*.jsonl"))) == 1
    # Compact killed after renaming its merged part in, before deleting the inputs: nothing shows twice.
    sealed = pa.concat_tables([pq.read_table(p) for p in parts])
    write_parquet_atomic(tmp_path, sealed, "part-compact-crash.parquet", [p.name for p in parts])
    assert sorted(ids_of(tmp_path)) == sorted(ids)
    # The next compaction finishes the job (the live writer's segment is left to its writer).
    ComparisonStore(tmp_path).compact()
    assert sorted(ids_of(tmp_path)) == sorted(ids)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1
    # A dead writer's segment with a torn (never acknowledged) last line: complete lines kept, torn one dropped.
    other = ComparisonStore(tmp_path / "other")
    ok_id = other.append(record(99))
    line = next((tmp_path / "other" / "wal").glob("*.jsonl")).read_bytes()
    dead = tmp_path / "wal" / "seg-dead.jsonl"
    dead.write_bytes(line + line[: len(line) // 2])
    assert sorted(ids_of(tmp_path)) == sorted(ids + [ok_id])
    store.close()
    out = ComparisonStore(tmp_path).compact()
    assert sorted(ids_of(tmp_path)) == sorted(ids + [ok_id])
    assert [p.name for p in tmp_path.glob("part-*.parquet")] == [out.name] and not dead.exists()


def test_stale_segment_never_reappears_after_two_compactions(tmp_path):
    """A seal killed between rename and unlink leaves the segment; later compactions must keep it hidden."""
    store = ComparisonStore(tmp_path)
    ids = [store.append(record(i)) for i in range(3)]
    seg = next((tmp_path / "wal").glob("seg-*.jsonl"))
    write_parquet_atomic(tmp_path, read_table(str(tmp_path)), "part-sealed.parquet", [f"wal/{seg.name}"])
    os.close(store._seg_fd)  # the writer "dies" here: its lock goes, the segment stays on disk
    for _ in range(2):
        ComparisonStore(tmp_path).compact()
        assert sorted(ids_of(tmp_path)) == sorted(ids)
    assert not seg.exists()


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


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_read_from_fsspec_url(tmp_path, scheme):
    store = ComparisonStore(tmp_path / "s", seal_every=3)
    ids = store.append_many([record(i) for i in range(3)]) + [store.append(record(3))]  # a part and a segment
    if scheme == "file":
        url = (tmp_path / "s").as_uri()
    else:
        fs = fsspec.filesystem("memory")
        fs.put(str(tmp_path / "s"), "/prefkit-test-store", recursive=True)
        url = "memory://prefkit-test-store"
    table = read_table(url)
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


def test_idle_writer_seals_into_parquet_and_compacts(tmp_path):
    """A long-running writer (the app) turns its segment into a Parquet part after a lull, so plain Parquet
    readers see the votes; too many parts are compacted into one."""
    import pyarrow.dataset as pads

    store = ComparisonStore(tmp_path / "s", seal_idle_s=0.2, compact_over=3)
    ids = []
    for burst in range(5):
        ids += [store.append(record(burst * 10 + i)) for i in range(3)]
        deadline = time.monotonic() + 10
        while list((tmp_path / "s" / "wal").glob("seg-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list((tmp_path / "s" / "wal").glob("seg-*.jsonl")), "segment not sealed after the lull"
    parts = sorted((tmp_path / "s").glob("part-*.parquet"))
    assert len(parts) <= 4  # compacted once more than 3 piled up
    plain = pads.dataset([str(p) for p in parts], format="parquet").to_table()
    assert sorted(plain.column("comparison_id").to_pylist()) == sorted(ids)
    assert sorted(read_table(str(tmp_path / "s")).column("comparison_id").to_pylist()) == sorted(ids)
    store.close()


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


def test_tail_waits_for_a_torn_line_to_complete(tmp_path):
    ComparisonStore(tmp_path)  # creates the layout
    donor = ComparisonStore(tmp_path / "donor")
    ids = [donor.append(record(i)) for i in range(2)]
    lines = next((tmp_path / "donor" / "wal").glob("*.jsonl")).read_bytes().splitlines(keepends=True)
    seg = tmp_path / "wal" / "seg-manual.jsonl"
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
    pq.write_table(mixed, tmp_path / "part-mixed.parquet", row_group_size=3)
    assert tail_ids(tail) == [fresh[k]["comparison_id"] for k in (0, 1, 2, 3, 4, 5, 6)]
    assert tail.poll() == []
