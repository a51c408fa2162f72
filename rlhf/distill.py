"""Distil an aligned policy (the teacher) into a smaller, faster student that shares its tokenizer.

    python rlhf/train.py distill --teacher runs/dpo --output-dir runs/distill --student-layers 15 --prompts p.jsonl

The student is either another checkpoint with the teacher's tokenizer (`--student`) or is cut from the teacher by
keeping N evenly spaced decoder layers, first and last included (`--student-layers N`), so nothing is downloaded.

The teacher first answers every prompt once (greedy by default); those answers are the training data. Two methods:

- `token` (default): match the teacher's full next-token distribution at every position of its answers with the
  generalised JSD of GKD (Eq. 1 of arXiv 2306.13649; `--beta 0` is forward KL(teacher || student), the classic
  word-level KD of Hinton et al. 2015 / Kim & Rush 2016). We use TRL's `experimental.gkd.GKDTrainer` with
  `lmbda=0`, i.e. purely on the fixed teacher answers. TRL 1.16's `DistillationTrainer` does not fit: it is
  on-policy only (the *student* generates every batch, then is scored by the teacher), which on CPU makes each
  step a generation run, and it never trains on teacher generations, which is what this command is for.
  GKD's own `seq_kd=True` regenerates teacher answers at every step; we generate them once and reuse them.
- `sequence`: sequence-level KD (Kim & Rush 2016), i.e. plain SFT (TRL `SFTTrainer`, completion-only loss) on
  the teacher's answers.

Both record the same held-out figure before and after training: forward KL(teacher || student) per answer token
on teacher answers to prompts not trained on (`eval.json`, `metrics.jsonl`). Then `rlhf.distill_report` writes
the report card (`distill_report.json` + `distill_report.png`) unless `--report false`. Answers come from the
project's one generation loop (`rlhf.sampling`); divergence and vocabulary trimming live in `rlhf.distill_models`,
which both this command and the report use.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.errors import UsageError
from annotate.schema import SchemaError
from rlhf.common import (
    BaseArgs,
    append_metrics,
    metrics_callback,
    say_plan,
    trl_args,
    use_cuda,
    write_eval,
    write_model_card,
)
from rlhf.config import parse_config, save_config
from rlhf.distill_models import Messages, divergence, trim_student
from rlhf.sampling import generate

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class DistillArgs(BaseArgs):
    """Distil a teacher policy into a smaller student sharing its tokenizer."""

    teacher: str | None = field(default=None, metadata={"help": "teacher checkpoint dir or Hub id (default: --model)"})
    output_dir: str = field(default="runs/distill", metadata={"help": "where the student and its reports go"})
    student: str | None = field(default=None, metadata={"help": "student checkpoint sharing the teacher's tokenizer"})
    student_layers: int | None = field(
        default=None, metadata={"help": "cut the student from the teacher: keep N evenly spaced layers"}
    )
    prompts: str | None = field(
        default=None, metadata={"help": "prompts file: JSONL with a 'prompt' field (a pool works), or .txt"}
    )
    method: str = field(
        default="token",
        metadata={
            "help": "token: GKD divergence on teacher answers; sequence: SFT on them",
            "choices": ["token", "sequence"],
        },
    )
    beta: float = field(default=0.0, metadata={"help": "generalised-JSD beta: 0 forward KL, 0.5 JSD, 1 reverse KL"})
    max_prompts: int = field(default=256, metadata={"help": "use at most this many prompts"})
    eval_prompts: int = field(default=16, metadata={"help": "prompts held out for divergence and the report card"})
    max_new_tokens: int = field(default=64, metadata={"help": "length of teacher answers (and of report generations)"})
    teacher_temperature: float = field(default=0.0, metadata={"help": "0: greedy teacher answers; >0 samples them"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model dir, for the report card"})
    report: bool = field(default=True, metadata={"help": "write distill_report.json and its plot"})
    speed_prompts: int = field(default=8, metadata={"help": "prompts timed for generation speed in the report"})
    speed_batch_size: int = field(
        default=8, metadata={"help": "batch for the report's second (batched) speed figure; 1 = batch 1 only"}
    )
    trim_vocab: bool = field(
        default=False,
        metadata={"help": "also save OUTPUT_DIR/trimmed-vocab: the student with only the tokens its prompts and "
                  "teacher answers use (a much smaller output layer; it cannot emit the others)"},
    )  # fmt: skip
    trim_vocab_data: str | None = field(
        default=None,
        metadata={"help": "preference export (or store) whose prompts and responses also count for --trim-vocab: "
                  "more of the domain's tokens kept, fewer out of reach, a little less speed"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        # --teacher and --model name the same thing; `model` is what the run's config.yaml and card call the base.
        self.teacher = self.teacher or self.model
        self.model = self.teacher


# ---------------------------------------------------------------- models


def keep_indices(n_layers: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices out of `n_layers`, first and last always kept."""
    if not 1 <= keep <= n_layers:
        raise UsageError(f"--student-layers must be in 1..{n_layers}, got {keep}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def cut_student(teacher: PreTrainedModel, keep: int) -> PreTrainedModel:
    """A copy of `teacher` with only `keep` of its decoder layers (embeddings, norm and head kept)."""
    import copy

    import torch.nn as nn

    base = getattr(teacher, "model", None)
    if base is None or not isinstance(getattr(base, "layers", None), nn.ModuleList):
        raise UsageError(f"--student-layers needs a decoder with model.layers (got {type(teacher).__name__})")
    idx = keep_indices(len(base.layers), keep)
    student = copy.deepcopy(teacher)
    student.model.layers = nn.ModuleList([student.model.layers[i] for i in idx])
    for j, layer in enumerate(student.model.layers):
        # The KV cache is indexed by layer_idx: it must be the new position, not the teacher's.
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = j
    student.config.num_hidden_layers = len(idx)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in idx]
    student.config.prefkit_kept_layers = idx  # recorded in config.json: how this student was made
    return student


# ---------------------------------------------------------------- training


def _answers_dataset(
    tokenizer: PreTrainedTokenizerBase, prompts: list[Messages], answers: list[list[int]], method: str
):
    """Teacher answers as TRL data: `messages` for GKD's ChatML collator, prompt/completion for SFT."""
    from datasets import Dataset

    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    if method == "token":
        rows = [{"messages": p + [{"role": "assistant", "content": t}]} for p, t in zip(prompts, texts)]
    else:  # prompt/completion: SFTTrainer trains on the completion only
        rows = [{"prompt": p, "completion": [{"role": "assistant", "content": t}]} for p, t in zip(prompts, texts)]
    return Dataset.from_list(rows)


def train_student(cfg: DistillArgs, student, teacher, tokenizer, prompts, answers) -> tuple[list[dict[str, Any]], int]:
    """Run GKD (token) or SFT (sequence) on the teacher's answers; returns the trainer's loss log and the optimizer
    steps it took (the log alone undercounts: it has no line until --logging-steps steps)."""
    extra = dict(lr_scheduler_type="constant")  # short runs: a decaying schedule mostly wastes the last steps
    data = _answers_dataset(tokenizer, prompts, answers, cfg.method)
    if cfg.method == "token":
        from rlhf.trl_compat import GKDConfig, GKDTrainer  # trl.experimental: behind the version check

        # lmbda=0: every batch is the teacher's fixed answers (no student sampling, no per-step teacher sampling).
        args = trl_args(cfg, GKDConfig, 1e-4, lmbda=0.0, beta=cfg.beta, temperature=1.0, **extra)
        trainer = GKDTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer
        )
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=student, args=trl_args(cfg, SFTConfig, 1e-4, **extra), train_dataset=data, processing_class=tokenizer
        )
    trainer.add_callback(metrics_callback(cfg.output_dir))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h], trainer.state.global_step


def _load_prompts(cfg: DistillArgs) -> list[Messages]:
    from rlhf.data import load_prompts  # exports, pools, JSONL or .txt prompt files

    return load_prompts(cfg.data or cfg.prompts)


def build_student(cfg: DistillArgs, teacher, tokenizer):
    """The student model: loaded (and checked to share the tokenizer) or cut from the teacher."""
    from rlhf.models import load_causal_lm, load_tokenizer

    if cfg.student_layers is not None:
        return cut_student(teacher, cfg.student_layers)
    if load_tokenizer(cfg.student).get_vocab() != tokenizer.get_vocab():
        raise UsageError(
            f"--student {cfg.student}: its tokenizer differs from the teacher's (token-level KD needs one)"
        )
    return load_causal_lm(cfg.student, dtype="float32")


def check_options(cfg: DistillArgs) -> None:
    """What the flags alone can be refused for (rlhf/preflight.py then checks the files and models they name)."""
    if not (cfg.data or cfg.prompts):
        raise UsageError("distill needs prompts: pass --prompts FILE or --data EXPORT.parquet")
    if (cfg.student is None) == (cfg.student_layers is None):
        raise UsageError("pass exactly one of --student ID_OR_PATH or --student-layers N")
    if cfg.method not in ("token", "sequence"):
        raise UsageError(f"--method must be token or sequence, got {cfg.method!r}")


def _save_answers(path: Path, splits: dict[str, tuple[list, list]]) -> None:
    """The teacher's answers: the training data, kept as the record of what the student saw."""
    with open(path, "w") as f:
        for split, (ps, ans) in splits.items():
            for p, a in zip(ps, ans):
                f.write(json.dumps({"split": split, "prompt": p, "answer_ids": a}) + "\n")


def _eval_and_train_prompts(cfg: DistillArgs) -> tuple[list[Messages], list[Messages]]:
    """(held-out, training) prompts: a seeded shuffle, at most --max-prompts, the first --eval-prompts held out."""
    prompts = _load_prompts(cfg)
    random.Random(cfg.seed).shuffle(prompts)
    prompts = prompts[: cfg.max_prompts]
    if len(prompts) <= cfg.eval_prompts:
        raise UsageError(f"{len(prompts)} prompts: need more than --eval-prompts {cfg.eval_prompts}")
    return prompts[: cfg.eval_prompts], prompts[cfg.eval_prompts :]


def _start_run(cfg: DistillArgs) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")  # the resolved config, as every training command leaves it
    (out / "metrics.jsonl").write_text("")
    return out


def _teacher_answers(cfg: DistillArgs, teacher, tokenizer, out: Path, train_p: list, eval_p: list):
    """(train answers, eval answers) of the teacher, also saved to teacher_answers.jsonl."""
    gen = dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.teacher_temperature,
        batch_size=cfg.per_device_train_batch_size,
    )
    train_a = generate(teacher, tokenizer, train_p, desc="teacher answers (train)", **gen)
    eval_a = generate(teacher, tokenizer, eval_p, desc="teacher answers (eval)", **gen)
    _save_answers(out / "teacher_answers.jsonl", {"train": (train_p, train_a), "eval": (eval_p, eval_a)})
    return train_a, eval_a


def _results(cfg: DistillArgs, before: dict, after: dict, steps: int, n_train: int, n_eval: int) -> dict:
    return {
        "method": cfg.method,
        "kl_before": before["kl"],
        "kl_after": after["kl"],
        "top1_agreement_before": before["top1_agreement"],
        "top1_agreement_after": after["top1_agreement"],
        "eval_tokens": after["tokens"],
        "train_prompts": n_train,
        "eval_prompts": n_eval,
        "steps": steps,
    }


def _trim_and_report(cfg: DistillArgs, out: Path, teacher, student, tokenizer, train, heldout) -> None:
    """--trim-vocab and the report card (--report), both on the trained student. `train`, `heldout`: (prompts,
    teacher answers)."""
    trimmed = None
    if cfg.trim_vocab:
        rows = [{"prompt": p, "answer_ids": a} for p, a in zip(*train)]
        trimmed = trim_student(str(out), rows, model=student, tokenizer=tokenizer, data=cfg.trim_vocab_data)
    if cfg.report:
        from rlhf.distill_report import build_report  # matplotlib and the reward model: only when a report is asked

        build_report(
            cfg.teacher, str(out), *heldout, out_dir=out, reward_model=cfg.reward_model,
            max_new_tokens=cfg.max_new_tokens, speed_prompts=cfg.speed_prompts, speed_batch_size=cfg.speed_batch_size,
            trimmed_dir=trimmed, teacher_model=teacher, student_model=student, tokenizer=tokenizer,
        )  # fmt: skip


def _write_card(cfg: DistillArgs, out: Path, results: dict[str, Any]) -> None:
    """The run's model card, by the writer every run uses (rlhf.cards via write_model_card), with the report card
    when one was written: last, so it describes everything the run left."""
    report = out / "distill_report.json"
    how = "GKD divergence" if cfg.method == "token" else "SFT"
    about = (f"A student distilled from `{cfg.teacher}` ({how} on the teacher's answers, {results['steps']} optimizer "
             f"steps). Held-out KL(teacher||student) {results['kl_before']:.4f} -> {results['kl_after']:.4f} "
             "nats/token.")  # fmt: skip
    distilled = json.loads(report.read_text()) if report.exists() else None
    write_model_card(out, cfg, "distill", results, about, distill=distilled)


def distill(cfg: DistillArgs) -> dict[str, Any]:
    """Teacher answers -> student -> training -> held-out divergence; saves the student, metrics and report."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer

    check_options(cfg)
    eval_p, train_p = _eval_and_train_prompts(cfg)
    out = _start_run(cfg)

    torch.manual_seed(cfg.seed)
    device = "cuda" if use_cuda(cfg) else "cpu"
    tokenizer = load_tokenizer(cfg.teacher)
    teacher = load_causal_lm(cfg.teacher, dtype="float32", device=device)
    student = build_student(cfg, teacher, tokenizer).to(device)
    planned = cfg.max_steps if cfg.max_steps > 0 else f"{cfg.num_train_epochs:g} epochs of"
    say_plan(f"teacher answers for {len(train_p)} training and {len(eval_p)} held-out prompts (up to "
             f"{cfg.max_new_tokens} tokens), then {planned} student steps "
             f"({cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps} answers per step)")  # fmt: skip
    train_a, eval_a = _teacher_answers(cfg, teacher, tokenizer, out, train_p, eval_p)

    before = divergence(student, teacher, tokenizer, eval_p, eval_a)
    append_metrics(out, {"split": "eval", "step": 0, "kl": before["kl"], "top1_agreement": before["top1_agreement"]})
    history, steps = train_student(cfg, student, teacher, tokenizer, train_p, train_a)
    after = divergence(student, teacher, tokenizer, eval_p, eval_a)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = _results(cfg, before, after, steps, len(train_p), len(eval_p))
    write_eval(out, results)  # eval.json + a `split: eval` line in metrics.jsonl
    print(
        f"[distill] held-out KL(teacher||student) {before['kl']:.4f} -> {after['kl']:.4f} nats/token; top-1 "
        f"agreement {before['top1_agreement']:.3f} -> {after['top1_agreement']:.3f}; student saved to {out}"
    )
    _trim_and_report(cfg, out, teacher, student, tokenizer, (train_p, train_a), (eval_p, eval_a))
    _write_card(cfg, out, results)
    return {**results, "train_loss": [{"step": h["step"], "loss": h["loss"]} for h in history]}


def main(argv: list[str] | None = None) -> int:
    from rlhf.preflight import preflight

    cfg = parse_config(DistillArgs, argv, prog="python rlhf/train.py distill")
    try:
        check_options(cfg)
        preflight(cfg, data="prompts")  # a mistake exits 2 before the teacher loads
        distill(cfg)
    except (SchemaError, UsageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
