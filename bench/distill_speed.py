"""Generation speed of SmolLM2-135M-Instruct (30 layers) vs a 15-layer student cut from it (untrained), same CPU.

    python bench/distill_speed.py [LAYERS ...]      (default: 15; e.g. `15 14` times both students)

Speed depends only on the architecture, so this needs no training: batch 1, greedy, exactly 24 new tokens per
prompt, teacher and student timed alternately (rlhf.distill_report._speed, the report card's own measurement).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from rlhf.distill import cut_student
    from rlhf.distill_report import _speed
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(None)
    teacher = load_causal_lm(None, dtype="float32").eval()
    asks = ["How do I bake bread?", "What is the capital of France?", "Give me a tip for sleeping better."]
    prompts = [[{"role": "user", "content": a}] for a in asks]
    for layers in [int(a) for a in sys.argv[1:]] or [15]:
        student = cut_student(teacher, layers).eval()
        t_tps, s_tps = _speed(teacher, student, tok, prompts, 24)
        params = [sum(p.numel() for p in m.parameters()) for m in (teacher, student)]
        figures = {
            "student_layers": layers,
            "teacher_tps": t_tps,
            "student_tps": s_tps,
            "speedup": s_tps / t_tps,
            "param_ratio": params[1] / params[0],
            "threads": torch.get_num_threads(),
        }
        print(json.dumps({**figures, "teacher_params": params[0], "student_params": params[1]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
