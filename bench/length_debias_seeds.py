"""--length-debias over several seeds on the confounded synthetic set of tests/test_length_debias.py.

    .venv/bin/python bench/length_debias_seeds.py --packing true --seeds 42 1 2

Prints one line per (seed, mode): held-out accuracy and reward-length Spearman. Work files go to --work.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packing", default="true", choices=["true", "false"])
    p.add_argument("--seeds", nargs="+", default=["42", "1", "2"])
    p.add_argument("--work", default="/tmp/length-debias-seeds")
    args = p.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_length_debias import padded  # the test's own data recipe, so the figures describe the test's set

    from rlhf import train
    from rlhf.data import arithmetic_tokenizer, synthetic_arithmetic
    from rlhf.models import save_tiny_model

    root = Path(args.work)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = synthetic_arithmetic(n_prompts=100, wrong_per_prompt=4, seed=0)
    test_ids = {r["prompt_id"] for r in rows[-80:]}
    train_rows = padded([r for r in rows if r["prompt_id"] not in test_ids], 0.85, 0.75, rng)
    test_rows = padded([r for r in rows if r["prompt_id"] in test_ids], 0.5, 1.0, rng)
    for name, part in (("train", train_rows), ("test", test_rows)):
        pq.write_table(pa.Table.from_pylist(part), root / f"data/prefs-{name}.parquet")
    model = save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    for seed in args.seeds:
        for mode in ("none", "resample", "joint"):
            argv = ["reward", "--model", model, "--data", str(root / "data/prefs-train.parquet"), "--max-steps",
                    "150", "--output-dir", str(root / mode), "--learning-rate", "3e-3",
                    "--per-device-train-batch-size", "16", "--logging-steps", "50", "--length-debias", mode,
                    "--packing", args.packing, "--seed", seed]  # fmt: skip
            train.main(argv)
            r = json.loads((root / mode / "eval.json").read_text())
            print(f"RES packing={args.packing} seed={seed} {mode:8s} accuracy {r['eval_accuracy']:.4f} "
                  f"spearman {r['eval_length_spearman']:.3f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
