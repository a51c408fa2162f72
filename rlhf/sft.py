"""`python rlhf/train.py sft`: optional supervised warm-up on the chosen responses (TRL SFTTrainer).

Loss is the usual next-token cross-entropy on the completion only (prompt tokens masked), so the policy starts
DPO/PPO close to the distribution the annotators preferred (the SFT stage of Ouyang et al. 2022, arXiv 2203.02155).
Reports held-out completion loss before and after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rlhf.common import BaseConfig, load_data, metrics_callback, start_run, trl_args, write_eval, write_model_card
from rlhf.config import parse_config


@dataclass
class SFTArgs(BaseConfig):
    """Supervised fine-tuning on the chosen response of each pair (TRL SFTTrainer)."""

    output_dir: str = field(default="runs/sft", metadata={"help": "where the model, config and metrics go"})
    packing: bool = field(default=False, metadata={"help": "pack several examples per sequence (faster on GPU)"})


def to_prompt_completion(ds):
    """Preference pairs -> TRL conversational prompt/completion rows (the chosen side; one row per prompt+chosen)."""
    rows = {(str(p), str(c)): {"prompt": p, "completion": c} for p, c in zip(ds["prompt"], ds["chosen"])}
    from datasets import Dataset

    return Dataset.from_list(list(rows.values()))


def build_trainer(cfg: SFTArgs):
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from rlhf.models import load_causal_lm

    tokenizer, train, test, info = load_data(cfg)
    set_seed(cfg.seed)
    model = load_causal_lm(cfg.model, dtype="float32")
    args = trl_args(cfg, SFTConfig, default_lr=2e-5, packing=cfg.packing, eval_strategy="no")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_prompt_completion(train),
        eval_dataset=to_prompt_completion(test),
        processing_class=tokenizer,
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    return trainer, info


def run(cfg: SFTArgs) -> dict[str, Any]:
    out = start_run(cfg)
    trainer, info = build_trainer(cfg)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(out))  # rank 0 only, with the weights gathered under ZeRO-3/FSDP
    results = {"eval_loss": after, "eval_loss_before": before, "eval_pairs": info["test"]["pairs"]}
    results.update({f"train_{k}": v for k, v in info["train"].items()})
    write_eval(out, results)
    write_model_card(out, cfg, "sft", results, "A policy fine-tuned on the chosen responses of preference pairs.")
    print(f"[sft] held-out completion loss {before:.4f} -> {after:.4f}")
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SFTArgs, argv, prog="python rlhf/train.py sft")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(cfg)
    return 0
