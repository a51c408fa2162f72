"""Store benchmark: durable appends/s (1 process, 8 concurrent writer processes) and export time of 1M comparisons.

    .venv/bin/python bench/store_bench.py [--appends 3000] [--writers 8] [--export-n 1000000] [--out-md FILE]

Each append is validated and fsync'd before it returns (the same call the app makes per vote). The export is
timed end to end: read the store, drop retractions/ties, aggregate repeated votes, write Parquet.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate.schema import COMPARISON_SCHEMA, MESSAGES, new_comparison  # noqa: E402
from annotate.store import ComparisonStore, read_table, write_parquet_atomic  # noqa: E402


def make_records(n: int, tag: str) -> list[dict]:
    return [
        new_comparison(
            prompt_id=f"p{i % 50}",
            prompt=[{"role": "user", "content": f"question {i % 50}?"}],
            response_a_id=f"r{i % 7}",
            response_a="an answer " * 20,
            response_b_id=f"r{i % 7 + 7}",
            response_b="another answer " * 20,
            choice="a" if i % 3 else "b",
            strength=2,
            annotator=tag,
        )
        for i in range(n)
    ]


def raw_fsyncs_per_s(root: Path, n: int) -> float:
    """Bare write + fsync of a 600-byte line: the disk's ceiling for one process's durable appends right now."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, b"x" * 599 + b"\n")
        os.fsync(fd)
    os.close(fd)
    return n / (time.perf_counter() - t)


def appends_per_s(root: Path, n: int) -> float:
    records = make_records(n, "single")
    store = ComparisonStore(root)
    t = time.perf_counter()
    for r in records:
        store.append(r)
    dt = time.perf_counter() - t
    store.close()
    return n / dt


def _writer(root: str, n: int, tag: str, barrier) -> None:
    records = make_records(n, tag)
    store = ComparisonStore(root)
    barrier.wait()
    for r in records:
        store.append(r)
    store.close()


def concurrent_appends_per_s(root: Path, writers: int, n_each: int) -> tuple[float, int]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=_writer, args=(str(root), n_each, f"w{k}", barrier)) for k in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    t = time.perf_counter()
    for p in procs:
        p.join()
    dt = time.perf_counter() - t
    assert all(p.exitcode == 0 for p in procs)
    got = read_table(str(root)).num_rows
    return writers * n_each / dt, got


def synthetic_table(n: int, seed: int = 0) -> pa.Table:
    """n comparisons over n/4 prompts x 4 responses, several votes per pair, all choice kinds, 1% retractions."""
    rng = np.random.default_rng(seed)
    n_prompts = max(n // 4, 1)
    p = rng.integers(0, n_prompts, n)
    ra, rb = rng.integers(0, 4, n), (rng.integers(1, 4, n) + rng.integers(0, 4, n)) % 4
    rb = np.where(rb == ra, (ra + 1) % 4, rb)
    pid = np.char.add("p", p.astype(str))
    a_id = np.char.add(pid, np.char.add("-r", ra.astype(str)))
    b_id = np.char.add(pid, np.char.add("-r", rb.astype(str)))
    text = lambda ids: pa.array(np.char.add("An answer with some words in it, for ", ids))  # noqa: E731
    choice = rng.choice(np.array(["a", "b", "tie", "both_bad", "skip"]), n, p=[0.45, 0.4, 0.08, 0.04, 0.03])
    decided = np.isin(choice, ["a", "b"])
    strength = pa.array(np.where(decided, rng.integers(1, 4, n), 0), mask=~decided)  # null for tie/skip
    ids = np.char.add("c", np.arange(n).astype(str))
    retract = np.full(n, None, dtype=object)
    k = n // 100
    retract[n - k :] = ids[rng.choice(n - k, k, replace=False)]  # the last 1% retract earlier votes
    questions = pa.array(np.char.add("Question ", pid))
    prompt_msgs = pa.StructArray.from_arrays([pa.repeat("user", n), questions], ["role", "content"])
    cols = {
        "comparison_id": pa.array(ids),
        "prompt_id": pa.array(pid),
        "prompt": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), prompt_msgs, type=MESSAGES),
        "response_a_id": pa.array(a_id),
        "response_a": text(a_id),
        "source_a": pa.array(np.char.add("model-", ra.astype(str))),
        "response_b_id": pa.array(b_id),
        "response_b": text(b_id),
        "source_b": pa.array(np.char.add("model-", rb.astype(str))),
        "left": pa.array(rng.choice(np.array(["a", "b"]), n)),
        "choice": pa.array(choice),
        "strength": strength.cast(pa.int8()),
        "criteria": pa.array([[]] * n, type=pa.map_(pa.string(), pa.string())),
        "rationale": pa.repeat("", n),
        "annotator": pa.array(np.char.add("ann", rng.integers(0, 20, n).astype(str))),
        "session": pa.repeat("bench", n),
        "created_at": pa.repeat(pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC")), n),
        "decision_ms": pa.array(rng.integers(500, 20000, n)),
        "retracts": pa.array(retract, type=pa.string()),
        "flag": pa.nulls(n, pa.string()),
        "schema_version": pa.repeat(pa.scalar(2, pa.int16()), n),
        "app_version": pa.repeat("bench", n),
    }
    return pa.table(cols, schema=COMPARISON_SCHEMA)


def export_seconds(root: Path, n: int, repeats: int) -> tuple[list[float], dict]:
    from annotate.export import export

    write_parquet_atomic(root, synthetic_table(n), "part-bench.parquet")
    (root / "wal").mkdir(exist_ok=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        stats = export(str(root), root.parent / "export" / "prefs.parquet", test_fraction=0.1)
        times.append(time.perf_counter() - t)
    return times, stats


def _fig(xs: list[float], fmt: str) -> str:
    """median (best) of repeated runs: the box is shared, so the best run is the one least disturbed."""
    return f"{format(float(np.median(xs)), fmt)} ({format(max(xs) if fmt == ',.0f' else min(xs), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=3000, help="appends from the single process")
    ap.add_argument("--writers", type=int, default=8, help="concurrent writer processes")
    ap.add_argument("--per-writer", type=int, default=500, help="appends per concurrent writer")
    ap.add_argument("--export-n", type=int, default=1_000_000, help="synthetic comparisons to export")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measure (median and best reported)")
    ap.add_argument("--out-md", type=Path, default=Path(__file__).parent / "results" / "store.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        raw, single = [], []
        for k in range(args.repeats):  # interleaved: the shared disk's fsync latency drifts minute to minute
            raw.append(raw_fsyncs_per_s(tmp / f"raw{k}", args.appends))
            single.append(appends_per_s(tmp / f"single{k}", args.appends))
        multi = [
            concurrent_appends_per_s(tmp / f"multi{k}", args.writers, args.per_writer) for k in range(args.repeats)
        ]
        secs, stats = export_seconds(tmp / "big" / "store", args.export_n, args.repeats)
    expected = args.writers * args.per_writer
    rows = [
        ("bare write+fsync/s of this disk, 1 process (ceiling)", _fig(raw, ",.0f"), ""),
        ("durable appends/s, 1 process", _fig(single, ",.0f"), ">= 1,000"),
        (f"durable appends/s, {args.writers} writer processes (total)", _fig([m for m, _ in multi], ",.0f"), ""),
        (f"records read back after each concurrent run (expected {expected})", str([g for _, g in multi]), "all"),
        (f"export of {args.export_n:,} comparisons (s)", _fig(secs, ".2f"), "< 10"),
        ("  pairs exported / no-majority dropped", f"{stats['rows']:,} / {stats['no_majority']:,}", ""),
    ]
    table = f"| measure | median (best) of {args.repeats} | target |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    print(table)
    cmd = "python bench/store_bench.py " + " ".join(sys.argv[1:])
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())  # other jobs on a shared box skew fsync and CPU figures
    where = f"{os.cpu_count()} CPUs, load average {load}, Python {platform.python_version()}, pyarrow {pa.__version__}"
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(
        f"# Store benchmark\n\nCommand: `{cmd.strip()}`\n\nMachine: {where}; "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.\n\n{table}\n\n"
        "Each append is fsync'd before it returns, so one process can never beat the bare write+fsync row, which is\n"
        "measured in the same minutes: on a shared VM disk it swings from hundreds to thousands per second with\n"
        "other jobs' I/O. Compare the two rows rather than the append figure alone.\n"
    )


if __name__ == "__main__":
    main()
