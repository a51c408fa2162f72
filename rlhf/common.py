"""Run plumbing shared by every training command: common flags, TRL config building, and what a run leaves behind.

Every run directory ends up with `config.yaml` (the resolved config: the record of what ran), `metrics.jsonl` (one
JSON object per logging step, then the held-out evaluation), `eval.json` and a model card `README.md`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from annotate.errors import UsageError
from annotate.jsonutil import to_jsonable
from rlhf.config import config_record, save_config

if TYPE_CHECKING:
    from transformers import TrainerCallback


@dataclass
class BaseArgs:
    """Flags every training command shares."""

    model: str = field(default="default", metadata={"help": "Hub id, local checkpoint, or 'default' (SmolLM2-135M)"})
    data: str | None = field(
        default=None, metadata={"help": "preference export (.parquet/.jsonl) or a comparison store directory"}
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "held-out pairs; default: X-test.parquet next to X-train.parquet, else a split"},
    )
    test_fraction: float = field(default=0.1, metadata={"help": "prompts held out when --eval-data is not given"})
    output_dir: str = field(default="runs/latest", metadata={"help": "where the model, config and metrics go"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1 = --num-train-epochs over the data"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the data when --max-steps is -1"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    learning_rate: float | None = field(default=None, metadata={"help": "peak learning rate; default: the method's"})
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW decoupled weight decay, not on biases or norms (HF/TRL default 0)"}
    )
    seed: int = field(default=42, metadata={"help": "seed for initialisation, shuffling and the held-out split"})
    max_length: int = field(
        default=512, metadata={"help": "pairs longer than this (tokens) are dropped, with a count"}
    )
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, wandb or trackio (passed to TRL)"})
    device: str = field(
        default="auto", metadata={"help": "auto (GPU when present), cpu or cuda", "choices": ["auto", "cpu", "cuda"]}
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on when supported"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "trade compute for memory; off by default (TRL turns it on, costing ~30% speed)"},
    )
    logging_steps: int = field(default=10, metadata={"help": "log metrics every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps; 0 = only the final model"})
    # Filled by parse_config from the recipe and the "TRL options" flags; trl_args applies them last.
    trl_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"cli": False, "help": "fields of the command's TRL config class to set"}
    )


@dataclass
class ResumeArgs:
    """Commands that train with a TRL Trainer, whose checkpoints hold model, optimizer, scheduler and RNG state."""

    resume: bool = field(
        default=False,
        metadata={"help": "continue from the last checkpoint in --output-dir (the run needs --save-steps N > 0)"},
    )


@dataclass
class PackingArgs:
    """Padding-free training (reward and dpo): see rlhf/packing.py."""

    packing: bool = field(
        default=True,
        metadata={"help": "pack each batch's sequences into rows without pad tokens: same loss, less compute"},
    )
    pack_row_tokens: int = field(default=0, metadata={"help": "tokens per packed row; 0 = --max-length"})


def row_tokens(cfg: Any) -> int:
    return cfg.pack_row_tokens or cfg.max_length


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job (or a plain run): the one process that writes files."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def use_cuda(cfg: BaseArgs) -> bool:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible (--device auto uses one when there is one)")
    return cfg.device != "cpu" and torch.cuda.is_available()


# Keys trl_args passes to every TRL config that a class does not declare, each with the reason it is right to leave
# out. Anything else a class lacks is an error: a field TRL renames must fail loudly, not become a no-op flag.
NOT_DECLARED = {
    # RLOO bounds prompt and completion itself (max_completion_length); rloo.py drops prompts over max_length.
    "RLOOConfig": {"max_length"},
    "GRPOConfig": {"max_length"},  # likewise (max_completion_length); grpo.py drops prompts over max_length
}


def trl_args(cfg: BaseArgs, trl_config_cls: type, default_lr: float | None = None, **extra: Any) -> Any:
    """Build a TRL config from our flags with CPU-safe settings (use_cpu, bf16 only where supported), then
    the command's `extra` keys, then the recipe's and flags' TRL overrides (cfg.trl_overrides), which win.

    Raises TypeError for a key the class does not declare, unless NOT_DECLARED lists it for that class."""
    import torch

    cuda = use_cuda(cfg)
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    known = {f.name for f in dataclasses.fields(trl_config_cls)}
    # transformers 5 renamed gradient_checkpointing; the old name still works but warns on every run
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        report_to=[] if cfg.report_to in ("none", "") else cfg.report_to.split(","),
        use_cpu=not cuda,
        bf16=bf16,
        fp16=False,
        **{checkpointing: cfg.gradient_checkpointing},
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        max_length=cfg.max_length,
        # 0 workers: on small CPU boxes worker processes cost more than they save; GPUs get a couple.
        dataloader_num_workers=2 if cuda else 0,
    )
    if cfg.save_steps > 0:
        kw["save_steps"] = cfg.save_steps
    lr = cfg.learning_rate if cfg.learning_rate is not None else default_lr
    if lr is not None:
        kw["learning_rate"] = lr
    kw.update(extra)
    kw.update(cfg.trl_overrides)
    excluded = NOT_DECLARED.get(trl_config_cls.__name__, set())
    if stale := excluded & known:  # TRL added the field: decide whether ours should reach it now
        raise TypeError(f"{trl_config_cls.__name__} now declares {sorted(stale)}: update NOT_DECLARED in {__name__}")
    if unknown := sorted(set(kw) - known - excluded):
        raise TypeError(f"{trl_config_cls.__name__} has no field {', '.join(unknown)} (TRL {_trl_version()})")
    return trl_config_cls(**{k: v for k, v in kw.items() if k not in excluded})


@dataclass
class OnlineArgs:
    """The options of the online RL commands on TRL's trainers (rloo, grpo): sampling, the KL penalty, held-out
    prompts. A command redeclares a field to give it its own default or help."""

    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "completions (not prompts) per device per step; a multiple of --num-generations"}
    )
    num_generations: int = field(default=4, metadata={"help": "samples per prompt"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta: KL penalty against the starting policy"})
    response_length: int = field(default=64, metadata={"help": "max new tokens per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out prompts sampled before and after training"})


def online_trl_args(cfg: OnlineArgs, trl_config_cls: type) -> Any:
    """TRL's config for its online trainers (RLOOTrainer, GRPOTrainer): our flags mapped to their common fields, at
    TRL's own default learning rate for both (1e-6)."""
    return trl_args(
        cfg,
        trl_config_cls,
        default_lr=1e-6,
        beta=cfg.kl_coef,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.response_length,
        temperature=cfg.temperature,
        disable_dropout=True,
        log_completions=False,
    )


def _trl_version() -> str:
    from importlib.metadata import version

    return version("trl")


def start_run(cfg: BaseArgs) -> Path:
    """Create the output directory and record the resolved config before anything can fail halfway.

    Under --resume the run continues in place: on the data version the original run pinned, with metrics.jsonl
    cut back to the checkpoint's step (the resumed run logs the later steps again: one clean curve)."""
    out = Path(cfg.output_dir)
    resuming = getattr(cfg, "resume", False)
    if resuming:
        step = checkpoint_step(resume_checkpoint(cfg))
        _keep_original_data(cfg, out)
    elif not cfg.data:  # rlhf/preflight.py says so first; this is for callers of start_run that skip it
        raise UsageError("--data is required (a preference export or a store directory)")
    out.mkdir(parents=True, exist_ok=True)
    from annotate.store import pin_version

    # A store given as data is pinned to its current version before the config is written: config.yaml then says
    # exactly which votes this run trained (and evaluated) on, and the run reads exactly those.
    for name in ("data", "eval_data"):
        if getattr(cfg, name, None):
            setattr(cfg, name, pin_version(getattr(cfg, name)))
    if is_main_process():
        save_config(cfg, out / "config.yaml")
        if resuming:
            _trim_metrics(out / "metrics.jsonl", step)
        else:
            (out / "metrics.jsonl").write_text("")
    return out


def _usage_error(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[1])


def resume_checkpoint(cfg: BaseArgs) -> str | None:
    """The checkpoint a --resume run continues from (None without --resume): the last complete `checkpoint-N` in
    --output-dir. None there is a usage error (exit 2)."""
    if not getattr(cfg, "resume", False):
        return None
    out = Path(cfg.output_dir)
    # Unlike transformers' get_last_checkpoint, skip a checkpoint the kill cut short: Trainer._save_checkpoint
    # writes trainer_state.json last, so a folder without it (whole) may lack the optimizer or RNG state.
    done = [p for p in out.glob("checkpoint-*") if p.name[11:].isdigit() and _whole_json(p / "trainer_state.json")]
    if not done:
        _usage_error(f"--resume: no checkpoint in {out} (a run writes them every --save-steps N steps, N > 0)")
    return str(max(done, key=checkpoint_step))


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _keep_original_data(cfg: BaseArgs, out: Path) -> None:
    """A resumed run reads the data the original run pinned (`votes@12`), not the store's newest version: the
    Trainer's data-order skip assumes the same dataset. Other changed settings are allowed and listed."""
    import yaml

    from annotate.store import parse_store_spec

    path = out / "config.yaml"
    if not path.exists():
        _usage_error(f"--resume: {path} is missing, so the data this run trained on is unknown")
    original = yaml.safe_load(path.read_text()) or {}
    for name in ("data", "eval_data"):
        given, pinned = getattr(cfg, name), original.get(name)
        same_store = given and pinned and parse_store_spec(given) == (parse_store_spec(pinned)[0], None)
        if given and given != pinned and not same_store:
            _usage_error(f"--resume: this run trained with {name} {pinned}, not {given} (leave --{name} out)")
        setattr(cfg, name, pinned)
    now = config_record(cfg)
    changed = [f"{k} {original.get(k)!r} -> {v!r}" for k, v in now.items() if k != "resume" and original.get(k) != v]
    if is_main_process():
        print(f"[resume] from {resume_checkpoint(cfg)}" + (f"; changed: {', '.join(changed)}" if changed else ""))


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the lines logged up to the checkpoint's step: the killed run may have logged later steps, which the
    resumed run logs again (and any line the kill cut short)."""
    keep = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record.get("step"), int) and record["step"] <= step and "split" not in record:
            keep.append(line + "\n")
    path.write_text("".join(keep))


def append_metrics(out_dir: str | Path, record: dict[str, Any]) -> None:
    with open(Path(out_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(to_jsonable(record)) + "\n")  # NaN -> null, tensors -> numbers


def metrics_callback(out_dir: str | Path) -> TrainerCallback:
    """A TrainerCallback appending every log (loss, lr, rewards/...) to metrics.jsonl, one JSON object per line."""
    from transformers import TrainerCallback

    class JsonlMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                append_metrics(out_dir, {"step": state.global_step, "time": round(time.time(), 3), **logs})

    return JsonlMetrics()


def write_eval(out_dir: str | Path, results: dict[str, Any]) -> None:
    """Held-out results: eval.json, plus one `split: eval` line in metrics.jsonl."""
    if not is_main_process():
        return
    clean = to_jsonable(results)
    Path(out_dir, "eval.json").write_text(json.dumps(clean, indent=2) + "\n")
    append_metrics(out_dir, {"split": "eval", **clean})


def write_model_card(
    out_dir: str | Path, cfg: BaseArgs, command: str, results: dict[str, Any], about: str, distill: dict | None = None
) -> None:
    """README.md of a finished run: the model card (rlhf.cards.model_card, the writer `push` uses too) with the
    command, the exact command line, the resolved config and the held-out results (`distill`: distill's report)."""
    if not is_main_process():
        return
    from rlhf.cards import model_card

    argv = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("train.py") else f"{command} ..."
    run = {"config": config_record(cfg), "eval": to_jsonable(results), "distill": distill,
           "trim": None, "command": command, "about": about, "argv": argv}  # fmt: skip
    Path(out_dir, "README.md").write_text(model_card(run))


def load_data(cfg: BaseArgs):
    """(tokenizer, train, test, data info) for a training run: the model's tokenizer and the prepared splits."""
    from rlhf.data import prepare
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    kw = dict(eval_data=cfg.eval_data, test_fraction=cfg.test_fraction, seed=cfg.seed, max_length=cfg.max_length)
    train, test, info = prepare(cfg.data, tokenizer, **kw)
    info["plan"] = plan(cfg, info)
    return (tokenizer, *shared_on_disk(train, test, cfg.output_dir), info)


def plan(cfg: BaseArgs, info: dict[str, Any]) -> dict[str, Any]:
    """What the run will cost, printed before it starts: optimizer steps, pairs and tokens through the model."""
    import os

    pairs, tokens = info["train"]["pairs"], info["train"]["tokens"] or 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * pairs / per_step))
    per_pair = tokens / pairs if pairs else 0.0
    out = {"steps": steps, "pairs_per_step": per_step, "train_tokens": round(steps * per_step * per_pair),
           "heldout_tokens": info["test"]["tokens"]}  # fmt: skip
    print(f"[plan] {steps} optimizer steps x {per_step} pairs = about {out['train_tokens']:,} training tokens "
          f"(chosen+rejected, {per_pair:.0f} per pair); held-out set {out['heldout_tokens'] or 0:,} tokens; "
          f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}")  # fmt: skip
    return out


def pairs_for_steps(cfg: BaseArgs, train, info: dict[str, Any]):
    """With --max-steps, only the training pairs those steps draw: a seeded sample of steps x pairs per step.

    TRL's DPO scores the reference on every training pair before the first step, so a 3-step run on 5,000 pairs
    otherwise pays for 5,000 (issue 17: 1 h 42 min predicted for 3 steps). The steps draw their batches at random
    from the whole set anyway; here the draw happens up front, with --seed, so a resumed run gets the same pairs."""
    need = info["plan"]["steps"] * info["plan"]["pairs_per_step"]
    if cfg.max_steps <= 0 or need >= len(train):
        return train
    print(f"[plan] --max-steps {cfg.max_steps}: training on {need:,} of {len(train):,} pairs (drawn with --seed)")
    info["train"]["pairs_used"] = need
    return train.shuffle(seed=cfg.seed).select(range(need)).flatten_indices()


def say_plan(text: str) -> None:
    """One line saying what a stage will do, printed before its long work starts: a run that says nothing for
    minutes looks hung, and a user can stop a run that will cost more than they meant to spend."""
    if is_main_process():
        print(f"[plan] {text}", flush=True)


def shared_on_disk(train, test, out_dir: str | Path, timeout_s: float = 1800.0):
    """Under several processes, the splits as one Arrow copy on disk that every rank reads.

    In-memory datasets keep their cache files in a per-process temporary directory, so a cache that rank 0 writes
    (TRL's precomputed reference log-probs, for one) is invisible to the other ranks, which then fail. Saved under
    the run directory, the splits and their caches are shared. A single process keeps them in memory.
    No process group exists yet at this point, so rank 0 publishes the copy with an atomic rename and the others
    wait for it; the folder is named for this launch so a previous run's copy is never read."""
    import os
    import shutil

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return train, test
    from datasets import load_from_disk

    launch = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "0")
    where = Path(out_dir) / f"prepared-data-{launch}"
    if is_main_process():
        tmp = where.with_name(where.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        train.save_to_disk(str(tmp / "train"))
        test.save_to_disk(str(tmp / "test"))
        tmp.rename(where)
    else:
        waited = 0.0
        while not where.exists():
            if waited > timeout_s:
                raise TimeoutError(f"rank {os.environ.get('RANK')}: {where} never appeared (did rank 0 fail?)")
            time.sleep(0.2)
            waited += 0.2
    return load_from_disk(str(where / "train")), load_from_disk(str(where / "test"))


def finish_rl_run(out_dir: str | Path, cfg: BaseArgs, command: str, results: dict[str, Any], method: str) -> None:
    """eval.json, model card and a one-line summary for a policy trained against a reward model (ppo, rloo),
    whose results carry the held-out score before/after and the KL to the starting policy."""
    write_eval(out_dir, results)
    change = f"{results['score_before']:.3f} -> {results['score']:.3f}, KL {results['kl']:.2f} nats"
    about = f"{method} against reward model `{cfg.reward_model}`. Held-out mean reward {change}."
    write_model_card(out_dir, cfg, command, results, about)
    print(f"[{command}] held-out score {change}")
