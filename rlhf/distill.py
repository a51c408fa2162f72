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
the report card (`distill_report.json` + `distill_report.png`) unless `--report false`.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.schema import SchemaError
from rlhf.common import BaseConfig, append_metrics, metrics_callback, trl_args, use_cuda, write_eval
from rlhf.config import parse_config, save_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


@dataclass
class DistillConfig(BaseConfig):
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
        raise SchemaError(f"--student-layers must be in 1..{n_layers}, got {keep}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def cut_student(teacher: PreTrainedModel, keep: int) -> PreTrainedModel:
    """A copy of `teacher` with only `keep` of its decoder layers (embeddings, norm and head kept)."""
    import copy

    import torch.nn as nn

    base = getattr(teacher, "model", None)
    if base is None or not isinstance(getattr(base, "layers", None), nn.ModuleList):
        raise SchemaError(f"--student-layers needs a decoder with model.layers (got {type(teacher).__name__})")
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


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    min_new_tokens: int = 0,
    desc: str = "generating",
) -> list[list[int]]:
    """Answer token ids per prompt (chat template, left padding, stop at eos). Greedy when temperature == 0."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    model.eval()
    out: list[list[int]] = []
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        texts = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
            for p in prompts[i : i + batch_size]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sample = temperature > 0
        with torch.no_grad():
            seqs = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in seqs[:, enc["input_ids"].shape[1] :].tolist():
            ids = []
            for t in row:
                ids.append(t)
                if t in eos_ids and not min_new_tokens:
                    break
            out.append(ids)
    return out


def divergence(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    answers: list[list[int]],
    batch_size: int = 8,
) -> dict[str, float]:
    """Forward KL(teacher || student) per answer token and top-1 agreement, teacher-forced on teacher answers."""
    import torch
    import torch.nn.functional as F

    kl_sum, agree, n = 0.0, 0, 0
    student.eval()
    teacher.eval()
    for i in range(0, len(prompts), batch_size):
        seqs, starts = [], []
        for p, a in zip(prompts[i : i + batch_size], answers[i : i + batch_size]):
            ids = tokenizer(
                tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False), add_special_tokens=False
            )["input_ids"]
            seqs.append(ids + a)
            starts.append(len(ids))
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        attn = torch.zeros_like(input_ids)
        mask = torch.zeros_like(input_ids, dtype=torch.bool)  # positions whose *next* token is an answer token
        for r, (s, st) in enumerate(zip(seqs, starts)):
            input_ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
            mask[r, st - 1 : len(s) - 1] = True
        input_ids, attn, mask = input_ids.to(student.device), attn.to(student.device), mask.to(student.device)
        with torch.no_grad():
            ls = F.log_softmax(student(input_ids=input_ids, attention_mask=attn).logits.float(), -1)[mask]  # (N, V)
            lt = F.log_softmax(teacher(input_ids=input_ids, attention_mask=attn).logits.float(), -1)[mask]  # (N, V)
        kl_sum += (lt.exp() * (lt - ls)).sum().item()
        agree += (ls.argmax(-1) == lt.argmax(-1)).sum().item()
        n += int(mask.sum())
    return {"kl": kl_sum / max(n, 1), "top1_agreement": agree / max(n, 1), "tokens": n}


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


def train_student(cfg: DistillConfig, student, teacher, tokenizer, prompts, answers) -> list[dict[str, Any]]:
    """Run GKD (token) or SFT (sequence) on the teacher's answers; returns the trainer's log history."""
    extra = dict(lr_scheduler_type="constant")  # short runs: a decaying schedule mostly wastes the last steps
    data = _answers_dataset(tokenizer, prompts, answers, cfg.method)
    if cfg.method == "token":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

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
    return [h for h in trainer.state.log_history if "loss" in h]


def _load_prompts(cfg: DistillConfig) -> list[Messages]:
    if not (cfg.data or cfg.prompts):
        raise SchemaError("distill needs prompts: pass --prompts FILE or --data EXPORT.parquet")
    from rlhf.data import load_prompts  # exports, pools, JSONL or .txt prompt files

    return load_prompts(cfg.data or cfg.prompts)


def build_student(cfg: DistillConfig, teacher, tokenizer):
    """The student model: loaded (and checked to share the tokenizer) or cut from the teacher."""
    from rlhf.models import load_causal_lm, load_tokenizer

    if (cfg.student is None) == (cfg.student_layers is None):
        raise SchemaError("pass exactly one of --student ID_OR_PATH or --student-layers N")
    if cfg.student_layers is not None:
        return cut_student(teacher, cfg.student_layers)
    if load_tokenizer(cfg.student).get_vocab() != tokenizer.get_vocab():
        raise SchemaError(
            f"--student {cfg.student}: its tokenizer differs from the teacher's (token-level KD needs one)"
        )
    return load_causal_lm(cfg.student, dtype="float32")


def _save_answers(path: Path, splits: dict[str, tuple[list, list]]) -> None:
    """The teacher's answers: the training data, kept as the record of what the student saw."""
    with open(path, "w") as f:
        for split, (ps, ans) in splits.items():
            for p, a in zip(ps, ans):
                f.write(json.dumps({"split": split, "prompt": p, "answer_ids": a}) + "\n")


def trim_student(
    student_dir: str, rows: list[dict[str, Any]], model=None, tokenizer=None, data: str | None = None
) -> str:
    """Write STUDENT_DIR/trimmed-vocab: the student keeping only the tokens of its training prompts (as the chat
    template renders them) and teacher answers, plus those of a preference export's conversations if `data` is
    given (rlhf/vocab_trim.py). Returns the directory."""
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.vocab_trim import trim

    tokenizer = tokenizer or load_tokenizer(student_dir)
    model = model or load_causal_lm(student_dir, dtype="float32")
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    texts += tokenizer.batch_decode([r["answer_ids"] for r in rows], skip_special_tokens=False)
    if data:
        from rlhf.data import load_preferences

        for pair in load_preferences(data):
            for side in ("chosen", "rejected"):
                texts.append(tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=False))
    where = Path(student_dir) / "trimmed-vocab"
    info = trim(model, tokenizer, texts, where)
    (where / "vocab_trim.json").write_text(json.dumps(info))
    if (Path(student_dir) / "config.yaml").exists():  # the run's record travels with the model (Hub cards read it)
        shutil.copy(Path(student_dir) / "config.yaml", where / "config.yaml")
    print(f"[distill] trimmed vocabulary: {info['kept']:,} of {info['full']:,} tokens kept -> {where}")
    return str(where)


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Teacher answers -> student -> training -> held-out divergence; saves the student, metrics and report."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer

    if cfg.method not in ("token", "sequence"):
        raise SchemaError(f"--method must be token or sequence, got {cfg.method!r}")
    prompts = _load_prompts(cfg)
    random.Random(cfg.seed).shuffle(prompts)
    prompts = prompts[: cfg.max_prompts]
    if len(prompts) <= cfg.eval_prompts:
        raise SchemaError(f"{len(prompts)} prompts: need more than --eval-prompts {cfg.eval_prompts}")
    eval_p, train_p = prompts[: cfg.eval_prompts], prompts[cfg.eval_prompts :]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")  # the resolved config, as every training command leaves it
    (out / "metrics.jsonl").write_text("")

    torch.manual_seed(cfg.seed)
    device = "cuda" if use_cuda(cfg) else "cpu"
    tokenizer = load_tokenizer(cfg.teacher)
    teacher = load_causal_lm(cfg.teacher, dtype="float32", device=device)
    student = build_student(cfg, teacher, tokenizer).to(device)
    gen = dict(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.teacher_temperature,
        batch_size=cfg.per_device_train_batch_size,
    )
    train_a = generate(teacher, tokenizer, train_p, desc="teacher answers (train)", **gen)
    eval_a = generate(teacher, tokenizer, eval_p, desc="teacher answers (eval)", **gen)
    _save_answers(out / "teacher_answers.jsonl", {"train": (train_p, train_a), "eval": (eval_p, eval_a)})

    before = divergence(student, teacher, tokenizer, eval_p, eval_a)
    append_metrics(out, {"split": "eval", "step": 0, "kl": before["kl"], "top1_agreement": before["top1_agreement"]})
    history = train_student(cfg, student, teacher, tokenizer, train_p, train_a)
    after = divergence(student, teacher, tokenizer, eval_p, eval_a)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = {
        "method": cfg.method,
        "kl_before": before["kl"],
        "kl_after": after["kl"],
        "top1_agreement_before": before["top1_agreement"],
        "top1_agreement_after": after["top1_agreement"],
        "eval_tokens": after["tokens"],
        "train_prompts": len(train_p),
        "eval_prompts": len(eval_p),
        "steps": history[-1]["step"] if history else 0,
    }
    write_eval(out, results)  # eval.json + a `split: eval` line in metrics.jsonl
    print(
        f"[distill] held-out KL(teacher||student) {before['kl']:.4f} -> {after['kl']:.4f} nats/token; top-1 "
        f"agreement {before['top1_agreement']:.3f} -> {after['top1_agreement']:.3f}; student saved to {out}"
    )
    trimmed = None
    if cfg.trim_vocab:
        rows = [{"prompt": p, "answer_ids": a} for p, a in zip(train_p, train_a)]
        trimmed = trim_student(str(out), rows, model=student, tokenizer=tokenizer, data=cfg.trim_vocab_data)
    if cfg.report:
        from rlhf.distill_report import build_report

        build_report(
            cfg.teacher, str(out), eval_p, eval_a, out_dir=out, reward_model=cfg.reward_model,
            max_new_tokens=cfg.max_new_tokens, speed_prompts=cfg.speed_prompts, speed_batch_size=cfg.speed_batch_size,
            trimmed_dir=trimmed, teacher_model=teacher, student_model=student, tokenizer=tokenizer,
        )  # fmt: skip
    return {**results, "train_loss": [{"step": h["step"], "loss": h["loss"]} for h in history]}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DistillConfig, argv, prog="python rlhf/train.py distill")
    try:
        distill(cfg)
    except (SchemaError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
