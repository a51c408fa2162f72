"""Trained tokens/s, MFU and peak memory for reward and DPO training: TRL's plain defaults vs the project's defaults.

    python bench/train_throughput.py --data /tmp/prefkit-hh/prefs-train.parquet [--model default] [--steps 5]

Each (method, settings) runs in its own subprocess so peak memory is its own. Device-agnostic: CUDA when visible,
else CPU. Tokens are non-pad tokens the trainer saw (TRL's `num_tokens`), timed over steps after the first (warm-up).
MFU = 6 * params * tokens/s / peak FLOP/s (the forward+backward of the trained model only; DPO's reference forward
is not counted as useful work). Peak FLOP/s: 989e12 for an H100 (bf16 dense), else --peak-tflops, else a CPU
estimate of cores x GHz x 32 FLOP/cycle (fp32 AVX2 FMA; 64 with AVX-512).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# What differs between the columns. "trl": TRL 1.16's config defaults (checkpointing on, batch 8, reference forward
# every step). "trl-knobs": TRL's own throughput knobs (checkpointing off, a larger batch, precomputed reference
# log-probs). "project": what `rlhf/train.py` does by default on the device: the knobs plus padding-free packing
# with completion-only log-probs (rlhf/packing.py). `batch=None` means the device's batch: 32 on a GPU (as in
# recipes/*-gpu.yaml) and 8 on a CPU (the CLI default; bigger CPU batches buy no speed, only memory).
SETTINGS = {
    "trl": {"gradient_checkpointing": True, "batch": 8, "precompute": False, "packing": False},
    "trl-knobs": {"gradient_checkpointing": False, "batch": None, "precompute": True, "packing": False},
    "project": {"gradient_checkpointing": False, "batch": None, "precompute": True, "packing": True},
}


def cpu_peak_flops() -> float:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    per_cycle = 64 if "avx512f" in flags else 32
    mhz = [float(line.split(":")[1]) for line in flags.splitlines() if line.startswith("cpu MHz")]
    ghz = (max(mhz) / 1000) if mhz else 2.5
    return (os.cpu_count() or 1) * ghz * 1e9 * per_cycle


def peak_flops(arg: float | None) -> tuple[float, str]:
    import torch

    if arg:
        return arg * 1e12, "given"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return (989e12, name) if "H100" in name else (312e12, f"{name} (A100-class bf16 assumed)")
    return cpu_peak_flops(), "cpu estimate"


def timer_callback():
    """A TrainerCallback recording (time, cumulative tokens) at each log (logging_steps=1)."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.points: list[tuple[float, float]] = []
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.points.append((time.perf_counter(), float(logs["num_tokens"])))
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Timer()


def one(method: str, setting: str, args) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from rlhf.data import prepare, trainer_columns
    from rlhf.dpo import frozen_copy
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.packing import enable_packed_reward, packed_dpo_trainer
    from rlhf.reward import load_reward_model

    cuda = torch.cuda.is_available()
    s = dict(SETTINGS[setting])
    s["batch"] = s["batch"] or (32 if cuda else 8)
    tok = load_tokenizer(args.model)
    n_pairs = s["batch"] * args.steps
    train, _, _ = prepare(args.data, tok, eval_data=args.data, max_length=args.max_length)
    train = trainer_columns(train.select(range(min(n_pairs, len(train)))))
    common = dict(
        output_dir="/tmp/throughput",
        max_steps=args.steps,
        per_device_train_batch_size=s["batch"],
        gradient_checkpointing=s["gradient_checkpointing"],
        use_cpu=not cuda,
        bf16=cuda,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=args.max_length,
        dataloader_num_workers=0,
    )
    timer = timer_callback()
    t0 = time.perf_counter()
    if method == "reward":
        from transformers import set_seed

        set_seed(0)  # the score head is new: the same draw in every column, so their loss curves can be compared
        model = load_reward_model(args.model, tok)
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=train, processing_class=tok)
        if s["packing"]:
            enable_packed_reward(model, args.max_length)
    else:
        model = load_causal_lm(args.model, dtype="float32")
        cfg = DPOConfig(**common, precompute_ref_log_probs=s["precompute"], precompute_ref_batch_size=2 * s["batch"])
        cls = packed_dpo_trainer(args.max_length) if s["packing"] else DPOTrainer
        trainer = cls(model, frozen_copy(model), args=cfg, train_dataset=train, processing_class=tok)
    setup_s = time.perf_counter() - t0  # includes the reference pass when precomputed
    pre = s["precompute"] and method == "dpo"  # reward training has no reference: nothing to precompute
    trainer.add_callback(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    pts = timer.points
    (ta, na), (tb, nb) = pts[0], pts[-1]  # steady state: from the end of step 1 to the last step
    tps = (nb - na) / (tb - ta) if tb > ta else float("nan")
    params = sum(p.numel() for p in model.parameters())
    flops, where = peak_flops(args.peak_tflops)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)
    return {
        "method": method,
        "setting": setting,
        **s,
        "steps": args.steps,
        "tokens": nb,
        "tokens_per_s": tps,
        "end_to_end_tokens_per_s": nb / (train_s + (setup_s if pre else 0.0)),
        "precompute_s": setup_s if pre else None,
        "mfu": 6 * params * tps / flops,
        "peak_gib": peak,
        "params": params,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "peak_flops_source": where,
        "losses": timer.losses,  # same data, same order in every column: the curves should coincide
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="preference export (e.g. the HH sample's prefs-train.parquet)")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per configuration (first is warm-up)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--methods", nargs="+", default=["reward", "dpo"])
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak (TFLOP/s)")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: METHOD:SETTING in a subprocess
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print("RESULT " + json.dumps(one(*args.one.split(":"), args)))
        return 0
    rows = []
    for method in args.methods:
        for setting in SETTINGS:
            cmd = [sys.executable, __file__, "--one", f"{method}:{setting}"] + sys.argv[1:]
            done = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{method}:{setting} failed (exit {done.returncode})")
            rows.append(json.loads(lines[0][7:]))
            r = rows[-1]
            print(
                f"{method:7s} {setting:9s} batch {r['batch']:3d} ckpt {r['gradient_checkpointing']!s:5s} "
                f"{r['tokens_per_s']:9.0f} tok/s  end-to-end {r['end_to_end_tokens_per_s']:9.0f} tok/s  "
                f"MFU {100 * r['mfu']:5.2f}%  peak {r['peak_gib']:.2f} GiB",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    for method in args.methods:
        by = {r["setting"]: r for r in rows if r["method"] == method}
        base = by["trl"]["tokens_per_s"]
        ratios = [f"{k} / trl = {r['tokens_per_s'] / base:.2f}x" for k, r in by.items() if k != "trl"]
        print(f"{method}: " + ", ".join(ratios))
        gaps = [max((abs(a - b) for a, b in zip(r["losses"], by["trl"]["losses"])), default=float("nan"))
                for k, r in by.items() if k != "trl"]  # fmt: skip
        print(f"{method}: largest per-step loss gap to the trl column: " + ", ".join(f"{g:.2e}" for g in gaps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
