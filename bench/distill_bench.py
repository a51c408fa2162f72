"""Issue 5 benchmark, end to end on CPU: reward model -> short DPO of SmolLM2 (the teacher) -> half-depth student.

    python bench/distill_bench.py [--work /tmp/distill-bench] [--reward-model DIR] [size flags] [-- distill flags]

1. HH-RLHF harmless sample -> `python -m annotate import --format hh` -> `export --test-fraction 0.1`;
   a reward model (`rlhf/train.py reward --model default`) unless `--reward-model DIR` reuses one (e.g. from
   bench/hh_reward.sh, which trains the same recipe on an export of the same sample).
2. The teacher: `rlhf/train.py dpo --model default` for `--dpo-steps` steps of `--dpo-batch` pairs on that export.
3. `rlhf/train.py distill --teacher WORK/dpo --student-layers 15 --reward-model RM --trim-vocab
   --trim-vocab-data WORK/prefs-train.parquet` on the first human turns of the same HH sample (short, single-turn
   preference prompts); the report card, with the vocabulary-trimmed student's figures, lands in WORK/distill.

Every step runs as the CLI a user would type (printed before it runs); a step whose output already holds an
eval.json is skipped, so an interrupted run resumes. Copy the figures and the printed commands into
bench/results/distill.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


def hh_prompts(hh: Path, out: Path) -> Path:
    """First human turn of every HH dialogue, as a prompts JSONL for `distill --prompts`."""
    from annotate.readers import iter_jsonl  # the project's one JSONL reader (gzip by suffix)

    with open(out, "w") as g:
        for _, row in iter_jsonl(hh):
            first = row["chosen"].split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
            if first:
                g.write(json.dumps({"prompt": first}) + "\n")
    return out


def sh(argv: list[str]) -> None:
    """Run one CLI step from the repository root, echoing it; stop the benchmark if it fails."""
    print("\n$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable if a == "python" else a for a in argv], cwd=REPO, env=env, check=True)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python bench/distill_bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/distill-bench", help="work directory (outside the repo)")
    p.add_argument("--hh", default=str(HH), help="HH-RLHF JSONL(.gz)")
    p.add_argument("--reward-model", help="reuse this reward model instead of training one")
    p.add_argument("--reward-steps", type=int, default=40, help="reward model steps (batch 4) when training one")
    p.add_argument("--dpo-steps", type=int, default=40, help="DPO steps for the teacher")
    p.add_argument("--dpo-batch", type=int, default=8, help="DPO pairs per step")
    p.add_argument("--dpo-lr", default="5e-6", help="DPO learning rate")
    p.add_argument("--student-layers", type=int, default=15, help="layers kept in the student (teacher has 30)")
    p.add_argument("--max-prompts", type=int, default=96, help="distill prompts, held-out ones included")
    p.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts for the report card")
    p.add_argument("--max-new-tokens", type=int, default=48, help="teacher answer / report generation length")
    p.add_argument("--epochs", default="2", help="distillation epochs over the teacher answers")
    p.add_argument("--speed-prompts", type=int, default=8, help="prompts timed for tokens/s")
    args, extra = p.parse_known_args(argv)
    return args, [a for a in extra if a != "--"]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # 1. preference data and the reward model
    store, prefs = work / "store", work / "prefs.parquet"
    if not (work / "prefs-train.parquet").exists():
        sh(["python", "-m", "annotate", "import", args.hh, "--format", "hh", "--store", str(store)])
        sh(["python", "-m", "annotate", "export", "--store", str(store), "--out", str(prefs),
            "--test-fraction", "0.1"])  # fmt: skip
    train = str(work / "prefs-train.parquet")
    common = ["--max-length", "256", "--logging-steps", "2", "--device", "cpu"]
    rm = args.reward_model or str(work / "reward")
    if not (Path(rm) / "eval.json").exists():
        sh(["python", "rlhf/train.py", "reward", "--model", "default", "--data", train, "--output-dir", rm,
            "--max-steps", str(args.reward_steps), "--learning-rate", "2e-5", "--per-device-train-batch-size", "4",
            *common])  # fmt: skip
    # 2. the teacher: a short DPO of the default SmolLM2
    dpo = str(work / "dpo")
    if not (Path(dpo) / "eval.json").exists():
        sh(["python", "rlhf/train.py", "dpo", "--model", "default", "--data", train, "--output-dir", dpo,
            "--max-steps", str(args.dpo_steps), "--learning-rate", args.dpo_lr, *common,
            "--per-device-train-batch-size", str(args.dpo_batch)])  # fmt: skip
    # 3. the half-depth student and its report card
    prompts = hh_prompts(Path(args.hh), work / "hh_prompts.jsonl")
    out = str(work / "distill")
    sh(["python", "rlhf/train.py", "distill", "--teacher", dpo, "--student-layers", str(args.student_layers),
        "--reward-model", rm, "--prompts", str(prompts), "--output-dir", out,
        "--max-prompts", str(args.max_prompts), "--eval-prompts", str(args.eval_prompts),
        "--max-new-tokens", str(args.max_new_tokens), "--num-train-epochs", args.epochs,
        "--per-device-train-batch-size", "8", "--logging-steps", "1", "--device", "cpu",
        "--speed-prompts", str(args.speed_prompts), "--trim-vocab", "--trim-vocab-data", train, *extra])  # fmt: skip
    report = json.loads((Path(out) / "distill_report.json").read_text())
    rw = report["reward"]
    print(
        f"\nspeed-up {report['speedup']:.2f}x, top-1 agreement {report['top1_agreement']:.3f}, "
        f"score kept {rw.get('score_kept', float('nan')):.3f}, student win rate {rw.get('student_win_rate', 0):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
