"""Store benchmark: durable appends/s (1 process, 8 writer processes), sealing throughput into the Delta table,
export time of 1M comparisons, and how long DuckDB and Polars take to count 1M sealed votes.

    .venv/bin/python bench/store_bench.py [--appends 3000] [--writers 8] [--export-n 1000000] [--out-md FILE]

Each append is validated and fsync'd before it returns (the same call the app makes per vote; the writer's seals
into the Delta table every 1,000 records are inside the timing). The export is timed end to end: read the sealed
table, drop retractions/ties, aggregate repeated votes, write Parquet.
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
from annotate.store import ComparisonStore, _commit, read_table  # noqa: E402


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
    ctx = mp.get_context("spawn")  # deltalake's runtime does not survive a fork
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


def seal_records_per_s(root: Path, n: int) -> float:
    """One writer's segment of n records sealed into the table as one commit (what a writer does every
    `seal_every` records and the app after a lull), timed from the rotation to the segment's deletion."""
    store = ComparisonStore(root, seal_every=n + 1)
    for k in range(0, n, 500):
        store.append_many(make_records(min(500, n - k), "seal"))
    t = time.perf_counter()
    store.close()
    return n / (time.perf_counter() - t)


def engine_count_seconds(root: Path) -> dict[str, float]:
    """Wall time to count the sealed votes: DuckDB over the files the Delta log lists (its delta extension cannot
    be downloaded here), Polars' own Delta reader, deltalake's DataFusion SQL. Each includes reading the log."""
    import duckdb
    import polars as pl
    from deltalake import DeltaTable, QueryBuilder

    out = {}
    t = time.perf_counter()
    files = DeltaTable(str(root)).file_uris()
    n_duck = duckdb.sql("select count(*) from read_parquet($f)", params={"f": files}).fetchall()[0][0]
    out["duckdb"] = time.perf_counter() - t
    t = time.perf_counter()
    n_pl = pl.scan_delta(str(root)).select(pl.len()).collect().item()
    out["polars"] = time.perf_counter() - t
    t = time.perf_counter()
    qb = QueryBuilder().register("v", DeltaTable(str(root)))
    n_dl = pa.table(qb.execute("select count(*) as n from v").read_all()).column("n")[0].as_py()
    out["deltalake"] = time.perf_counter() - t
    assert n_duck == n_pl == n_dl, (n_duck, n_pl, n_dl)
    return out


def export_seconds(root: Path, n: int, repeats: int) -> tuple[list[float], dict, dict[str, list[float]]]:
    from annotate.export import export

    ComparisonStore(root)  # creates the table
    _commit(root, synthetic_table(n))
    counts: dict[str, list[float]] = {}
    for _ in range(repeats):
        for k, v in engine_count_seconds(root).items():
            counts.setdefault(k, []).append(v)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        stats = export(str(root), root.parent / "export" / "prefs.parquet", test_fraction=0.1)
        times.append(time.perf_counter() - t)
    return times, stats, counts


def _fig(xs: list[float], fmt: str) -> str:
    """median (best) of repeated runs: the box is shared, so the best run is the one least disturbed."""
    return f"{format(float(np.median(xs)), fmt)} ({format(max(xs) if fmt == ',.0f' else min(xs), fmt)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=3000, help="appends from the single process")
    ap.add_argument("--writers", type=int, default=8, help="concurrent writer processes")
    ap.add_argument("--per-writer", type=int, default=500, help="appends per concurrent writer")
    ap.add_argument("--export-n", type=int, default=1_000_000, help="synthetic comparisons to export")
    ap.add_argument("--seal-n", type=int, default=20_000, help="records in the segment whose seal is timed")
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
        seal = [seal_records_per_s(tmp / f"seal{k}", args.seal_n) for k in range(args.repeats)]
        secs, stats, counts = export_seconds(tmp / "big" / "store", args.export_n, args.repeats)
    expected = args.writers * args.per_writer
    rows = [
        ("bare write+fsync/s of this disk, 1 process (ceiling)", _fig(raw, ",.0f"), ""),
        ("durable appends/s, 1 process", _fig(single, ",.0f"), ">= 5,000"),
        (f"durable appends/s, {args.writers} writer processes (total)", _fig([m for m, _ in multi], ",.0f"), ""),
        (f"records read back after each concurrent run (expected {expected})", str([g for _, g in multi]), "all"),
        (f"sealing: records/s of a {args.seal_n:,}-record segment into the Delta table", _fig(seal, ",.0f"), ""),
        (f"export of {args.export_n:,} comparisons (s)", _fig(secs, ".2f"), "<= 3"),
        ("  pairs exported / no-majority dropped", f"{stats['rows']:,} / {stats['no_majority']:,}", ""),
        *[(f"{k}: count {args.export_n:,} sealed votes (s)", _fig(v, ".3f"), "") for k, v in counts.items()],
    ]
    table = f"| measure | median (best) of {args.repeats} | target |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    print(table)
    cmd = "python bench/store_bench.py " + " ".join(sys.argv[1:])
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())  # other jobs on a shared box skew fsync and CPU figures
    import deltalake

    where = (f"{os.cpu_count()} CPUs, load average {load}, Python {platform.python_version()}, "
             f"pyarrow {pa.__version__}, deltalake {deltalake.__version__}")  # fmt: skip
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
