"""Generation speed of SmolLM2-135M-Instruct (30 layers) vs students cut from it (untrained), same CPU.

    python bench/distill_speed.py [--layers 15 14] [--batch 1 8] [--tokens 24]

Speed depends only on the architecture, so this needs no training: greedy, exactly --tokens new tokens per prompt,
8 prompts, teacher and student timed alternately (rlhf.distill_report._speed, the report card's own measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ASKS = [
    "How do I bake bread?",
    "What is the capital of France?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "How can I stop procrastinating?",
    "What should I pack for a weekend hike?",
    "Explain what a mortgage is.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[15])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=24)
    args = p.parse_args()
    import torch

    from rlhf.distill import cut_student
    from rlhf.distill_report import _speed
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(None)
    teacher = load_causal_lm(None, dtype="float32").eval()
    prompts = [[{"role": "user", "content": a}] for a in ASKS]
    for layers in args.layers:
        student = cut_student(teacher, layers).eval()
        params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
        for batch in args.batch:
            t_tps, s_tps = _speed(teacher, student, tok, prompts, args.tokens, batch)
            row = {"student_layers": layers, "batch": batch, "teacher_tps": round(t_tps, 1),
                   "student_tps": round(s_tps, 1), "speedup": round(s_tps / t_tps, 3),
                   "param_ratio": round(params[1] / params[0], 3), "threads": torch.get_num_threads()}  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
