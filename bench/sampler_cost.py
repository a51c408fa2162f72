"""PairSampler cost per vote (next_pair + record + progress) and start-up time, at 378 and 200,004 pairs.

.venv/bin/python bench/sampler_cost.py
"""

import gc
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from annotate.sampler import PairSampler  # noqa: E402
from annotate.schema import new_comparison, pool_table  # noqa: E402


def make_pool(n_prompts):  # 4 candidates per prompt = 6 pairs per prompt
    return pool_table(
        [
            {
                "prompt_id": f"p{p:06d}",
                "prompt": [{"role": "user", "content": f"question {p}"}],
                "response_id": f"r{r}",
                "response": f"answer {r} to {p}",
                "source": f"m{r}",
                "meta": "{}",
            }
            for p in range(n_prompts)
            for r in range(4)
        ]
    )


def per_vote_us(pool, n, warm):
    s = PairSampler(pool, strategy="balanced", overlap=2, seed=1)
    gc.collect()  # one-time: promote the start-up objects (else the first full collection lands in the loop)
    total = 0.0
    for k in range(warm + n):
        ann = f"a{k % 20}"
        t0 = time.perf_counter()
        pair = s.next_pair(ann)
        t1 = time.perf_counter()
        rec = new_comparison(
            prompt_id=pair.prompt_id,
            prompt=pair.prompt,
            response_a_id=pair.a.response_id,
            response_a=pair.a.text,
            response_b_id=pair.b.response_id,
            response_b=pair.b.text,
            left=pair.left,
            choice="ab"[k % 2],
            annotator=ann,
        )  # the session's cost: not timed
        t2 = time.perf_counter()
        s.record(rec)
        s.progress(ann)
        t3 = time.perf_counter()
        total += (t1 - t0 + t3 - t2) if k >= warm else 0.0
    return total / n * 1e6


def startup_s(pool):
    s = PairSampler(pool, overlap=2, seed=1)
    rng, base, n = random.Random(0), datetime(2026, 1, 1, tzinfo=UTC), len(s.pairs)
    cols = {
        "comparison_id": [str(uuid.uuid4()) for _ in range(n)],
        "prompt_id": [p[0] for p in s.pairs],
        "response_a_id": [p[1].response_id for p in s.pairs],
        "response_b_id": [p[2].response_id for p in s.pairs],
        "choice": [rng.choice(["a", "b", "tie", "skip"]) for _ in range(n)],
        "annotator": [f"ann{rng.randrange(50)}" for _ in range(n)],
        "left": [rng.choice("ab") for _ in range(n)],
        "created_at": [base + timedelta(seconds=rng.randrange(864000)) for _ in range(n)],
        "retracts": [None] * n,
    }
    for k in rng.sample(range(n), n // 20):  # 5% of the votes retracted
        for c in cols:
            cols[c].append(cols[c][k])
        cols["comparison_id"][-1], cols["retracts"][-1] = str(uuid.uuid4()), cols["comparison_id"][k]
    table = pa.table(
        cols, schema=pa.schema([(c, pa.timestamp("us", tz="UTC") if c == "created_at" else pa.string()) for c in cols])
    )
    del s
    gc.collect()
    t0 = time.perf_counter()
    PairSampler(pool, overlap=2, seed=1)
    t1 = time.perf_counter()
    PairSampler(pool, overlap=2, seed=1, votes=table)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, table.num_rows


if __name__ == "__main__":
    small, big = make_pool(63), make_pool(33_334)
    print(f"per vote, 378 pairs (500 votes):      {per_vote_us(small, 500, 100):.1f} us")
    print(f"per vote, 200,004 pairs (2000 votes): {per_vote_us(big, 2000, 200):.1f} us")
    build, replay, n = startup_s(big)
    print(f"start-up, 200,004 pairs: build {build:.2f} s; build + replay of {n} records {replay:.2f} s")
