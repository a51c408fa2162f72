"""Distil the bundled SmolLM2-135M-Instruct (30 layers) into a 15-layer student cut from it, on CPU.

    python bench/distill_bench.py [OUT_DIR] [extra distill flags...]

Prompts: first human turns of the HH-RLHF harmless sample in ../shared/data (real user requests). The figures land
in OUT_DIR/distill_report.json; copy them with the exact command into bench/results/distill.md.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HH = REPO.parent / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


def hh_prompts(out: Path) -> Path:
    with gzip.open(HH, "rt") as f, open(out, "w") as g:
        for line in f:
            first = json.loads(line)["chosen"].split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
            if first:
                g.write(json.dumps({"prompt": first}) + "\n")
    return out


def main() -> int:
    from rlhf.distill import main as distill_main

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-distill")
    out.mkdir(parents=True, exist_ok=True)
    prompts = hh_prompts(out.parent / "hh_prompts.jsonl")
    argv = ["--teacher", "default", "--student-layers", "15", "--prompts", str(prompts), "--output-dir", str(out),
            "--max-prompts", "112", "--eval-prompts", "16", "--max-new-tokens", "48", "--num-train-epochs", "2",
            "--per-device-train-batch-size", "8", "--learning-rate", "5e-5", "--logging-steps", "1",
            "--device", "cpu", "--speed-prompts", "8"] + sys.argv[2:]  # fmt: skip
    print("python rlhf/train.py distill " + " ".join(argv))
    return distill_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
