"""`python rlhf/train.py sft`: optional supervised warm-up on the chosen responses (TRL SFTTrainer).

Loss is the usual next-token cross-entropy on the completion only (prompt tokens masked), so the policy starts
DPO/PPO close to the distribution the annotators preferred (the SFT stage of Ouyang et al. 2022, arXiv 2203.02155).
Reports held-out completion loss before and after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf.common import BaseArgs, ResumeArgs, load_data, metrics_callback, trl_args
from rlhf.skeleton import TrainerRun


@dataclass
class SFTArgs(ResumeArgs, BaseArgs):
    """Supervised fine-tuning on the chosen response of each pair (TRL SFTTrainer)."""

    trl_config_class: ClassVar[str] = "trl.SFTConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/sft", metadata={"help": "where the model, config and metrics go"})
    packing: bool = field(default=False, metadata={"help": "pack several examples per sequence (faster on GPU)"})


def to_prompt_completion(ds):
    """Preference pairs -> TRL conversational prompt/completion rows (the chosen side; one row per prompt+chosen)."""
    rows = {(str(p), str(c)): {"prompt": p, "completion": c} for p, c in zip(ds["prompt"], ds["chosen"])}
    from datasets import Dataset

    return Dataset.from_list(list(rows.values()))


def trl_config(cfg: SFTArgs):
    from trl import SFTConfig

    return trl_args(cfg, SFTConfig, default_lr=2e-5, packing=cfg.packing, eval_strategy="no")


def build_trainer(cfg: SFTArgs):
    from transformers import set_seed
    from trl import SFTTrainer

    from rlhf.models import load_causal_lm

    tokenizer, train, test, info = load_data(cfg)
    set_seed(cfg.seed)
    model = load_causal_lm(cfg.model, dtype="float32")
    args = trl_config(cfg)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_prompt_completion(train),
        eval_dataset=to_prompt_completion(test),
        processing_class=tokenizer,
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    return trainer, info


class SFTRun(TrainerRun):
    """Held-out completion loss before and after (rlhf/skeleton.py runs the rest)."""

    command, config_class = "sft", SFTArgs
    build_trainer = staticmethod(build_trainer)
    trl_config = staticmethod(trl_config)

    def measure(self) -> dict[str, Any]:
        return {"eval_loss": self.trainer.evaluate()["eval_loss"]}

    def results(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        results = {"eval_loss": after["eval_loss"], "eval_loss_before": before["eval_loss"],
                   "eval_pairs": self.info["test"]["pairs"]}  # fmt: skip
        return results | {f"train_{k}": v for k, v in self.info["train"].items()}

    def about(self) -> str:
        return "A policy fine-tuned on the chosen responses of preference pairs."

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        return f"[sft] held-out completion loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}"


def run(cfg: SFTArgs) -> dict[str, Any]:
    return SFTRun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return SFTRun.main(argv)
