"""--length-debias over several seeds on the confounded synthetic set of tests/test_length_debias.py.

    .venv/bin/python bench/length_debias_seeds.py --packing true --seeds 42 1 2 3 4

Prints one line per (seed, mode): held-out accuracy and reward-length Spearman. Work files go to --work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packing", default="true", choices=["true", "false"])
    p.add_argument("--seeds", nargs="+", default=["42", "1", "2"])
    p.add_argument("--work", default="/tmp/length-debias-seeds")
    p.add_argument("--methods", nargs="+", default=["none", "resample", "joint", "odin", "poe"])
    args = p.parse_args()
    from test_length_debias import train_argv, write_confounded_set  # the test's own set, so figures describe it

    from rlhf import train

    root = Path(args.work)
    model = write_confounded_set(root)
    for seed in args.seeds:
        for mode in args.methods:
            train.main(train_argv(model, root, mode, "--packing", args.packing, "--seed", seed))
            r = json.loads((root / mode / "eval.json").read_text())
            print(f"RES packing={args.packing} seed={seed} {mode:8s} accuracy {r['eval_accuracy']:.4f} "
                  f"spearman {r['eval_length_spearman']:.3f} flagged {r.get('ruler_flag')}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
