"""Time `annotate audit` on a synthetic store of N comparisons.

    .venv/bin/python bench/audit_bench.py --n 100000 --annotators 50 --sources 8

Synthetic data: prompts with 4 candidates from random sources (each candidate a random-length text with some
Markdown lists and hedging words), pairs judged by 3 annotators with a mild length bias. Reports the time to
read the store, run the audit (default bootstrap sizes) and write the HTML + JSON report.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

WORDS = "the a of to and is it in that this for answer might clearly step value case result".split()


def synth_records(n: int, annotators: int, sources: int, seed: int = 0) -> list[dict]:
    from annotate.schema import new_comparison

    rng = np.random.default_rng(seed)
    strength = rng.normal(size=sources)
    texts = {}
    records, t0 = [], datetime(2025, 1, 1, tzinfo=UTC)
    n_pairs = n // 3
    for i in range(n_pairs):
        pid = f"p{i // 6}"  # 4 candidates -> 6 pairs per prompt
        ids = sorted(rng.choice(4, size=2, replace=False))
        cands = []
        for j in ids:
            rid = f"{pid}-r{j}"
            if rid not in texts:
                body = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 300))))
                if rng.random() < 0.3:
                    body = "\n".join(f"- {line}" for line in body.split(" the "))
                texts[rid] = (body, f"model-{rng.integers(sources)}")
            cands.append((rid, *texts[rid]))
        (ra, ta, sa), (rb, tb, sb) = cands
        p_a = 1 / (1 + np.exp(strength[int(sb[6:])] - strength[int(sa[6:])] - 0.3 * np.sign(len(ta) - len(tb))))
        for who in rng.choice(annotators, size=3, replace=False):
            choice = "a" if rng.random() < p_a else "b"
            records.append(new_comparison(
                prompt_id=pid, prompt=[{"role": "user", "content": f"question {pid}"}], response_a_id=ra,
                response_a=ta, source_a=sa, response_b_id=rb, response_b=tb, source_b=sb, choice=choice,
                left=str(rng.choice(["a", "b"])), annotator=f"ann{who}", decision_ms=int(rng.integers(1000, 30000)),
                created_at=t0 + timedelta(seconds=len(records)),
            ))  # fmt: skip
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="comparisons (rounded down to a multiple of 3)")
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--sources", type=int, default=8)
    args = ap.parse_args()

    from annotate.audit import run_audit
    from annotate.audit_report import write_html, write_json
    from annotate.store import ComparisonStore, read_table

    t = time.perf_counter()
    records = synth_records(args.n, args.annotators, args.sources)
    with tempfile.TemporaryDirectory() as tmp:
        ComparisonStore(Path(tmp) / "s").write_batch(records)
        print(f"generated and stored {len(records)} comparisons in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        table = read_table(str(Path(tmp) / "s"))
        t_read = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        audit = run_audit(table)
        t_audit, cpu_audit = time.perf_counter() - t, time.process_time() - cpu
        t = time.perf_counter()
        write_html(audit, Path(tmp) / "r.html")
        write_json(audit, Path(tmp) / "r.json")
        t_report = time.perf_counter() - t
    print(f"read {t_read:.2f} s, audit {t_audit:.2f} s (CPU {cpu_audit:.2f} s), report {t_report:.2f} s "
          f"({len(records)} comparisons, "
          f"{args.annotators} annotators, {args.sources} sources, n_boot=1000)")  # fmt: skip


if __name__ == "__main__":
    main()
