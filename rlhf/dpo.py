"""`python rlhf/train.py dpo`: direct preference optimisation on collected comparisons (TRL DPOTrainer).

Losses (h = beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]):
  sigmoid       -log sigmoid(h)                          Eq. 7 of Rafailov et al. 2023 (arXiv 2305.18290)
  ipo           (h / beta - 1 / (2 beta))^2              Eq. 17 of Azar et al. 2023 (arXiv 2310.12036)
  sigmoid_norm  -log sigmoid(beta * (mean-per-token log-ratio of y_w - that of y_l)): length-normalised DPO, so
                a longer response no longer earns a larger implicit reward just by having more tokens (the
                normalisation SimPO uses, Eq. 4 of arXiv 2405.14734, but keeping the reference model).
`--ld-alpha` adds LD-DPO's down-weighting of the tokens past the shorter response (arXiv 2409.06411) to any of them.

The reference is the starting policy itself. With `--precompute-ref-log-probs` (the default) TRL scores every train
and held-out pair with the policy before the first step and keeps no reference model at all (one model's weights
less in memory: 0.54 GB fp32 for the default model). Without precompute it gets an explicit frozen copy: given a
policy built in memory and no reference, TRL would then load a model *by name* from the policy's config, which may
be a different model.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf.common import BaseArgs, PackingArgs, ResumeArgs, load_data, metrics_callback, row_tokens, trl_args
from rlhf.skeleton import TrainerRun

LOSS_TYPES = ["sigmoid", "ipo", "sigmoid_norm"]


@dataclass
class DPOArgs(ResumeArgs, PackingArgs, BaseArgs):
    """Direct preference optimisation of a policy on preference pairs (TRL DPOTrainer)."""

    trl_config_class: ClassVar[str] = "trl.DPOConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/dpo", metadata={"help": "where the model, config and metrics go"})
    beta: float = field(default=0.1, metadata={"help": "strength of the pull towards the reference (tau for ipo)"})
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "sigmoid (DPO), ipo, or sigmoid_norm (length-normalised DPO)", "choices": LOSS_TYPES},
    )
    ld_alpha: float | None = field(
        default=None, metadata={"help": "LD-DPO weight in [0, 1] for tokens past the shorter response; off if unset"}
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "score the whole dataset with the reference once, then train without it (faster)"},
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "batch size of that one pass (no gradients, so it can be large)"}
    )


def frozen_copy(model):
    """The reference: the same weights as the starting policy, never updated (no grads, eval mode)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def _fsdp(args) -> bool:
    """FSDP from the config or from `accelerate launch` (the two ways TRL's `is_fsdp_enabled` becomes true)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def build_trainer(cfg: DPOArgs):
    """(trainer, data info): policy, frozen reference, data and config wired together; nothing trained yet."""
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from rlhf.data import trainer_columns
    from rlhf.models import load_causal_lm
    from rlhf.packing import packed_dpo_trainer

    tokenizer, train, test, info = load_data(cfg)
    set_seed(cfg.seed)
    policy = load_causal_lm(cfg.model, dtype="float32")  # master weights in fp32; bf16 autocast when enabled
    args = trl_args(
        cfg,
        DPOConfig,
        default_lr=1e-6,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        ld_alpha=cfg.ld_alpha,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        precompute_ref_batch_size=cfg.precompute_ref_batch_size,
        eval_strategy="no",
    )
    trainer_cls = packed_dpo_trainer(row_tokens(cfg)) if cfg.packing else DPOTrainer
    trainer = trainer_cls(
        model=policy,
        # None only where TRL reads the reference from the untouched policy before training (dpo_trainer.py, the
        # `precompute_ref_log_probs and not fsdp` branch); FSDP or no precompute get an explicit frozen copy.
        ref_model=None if cfg.precompute_ref_log_probs and not _fsdp(args) else frozen_copy(policy),
        args=args,
        train_dataset=trainer_columns(train),
        eval_dataset=trainer_columns(test),
        processing_class=tokenizer,
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    return trainer, info


def implicit_margin(trainer) -> dict[str, float]:
    """Held-out implicit reward margin beta*(log-ratio chosen - log-ratio rejected), and how often it is > 0."""
    m = trainer.evaluate()
    return {"margin": m["eval_rewards/margins"], "accuracy": m["eval_rewards/accuracies"], "loss": m["eval_loss"]}


class DPORun(TrainerRun):
    """Held-out implicit reward margin before (~0 by construction: policy == reference at step 0) and after."""

    command, config_class = "dpo", DPOArgs
    build_trainer = staticmethod(build_trainer)

    def measure(self) -> dict[str, Any]:
        return implicit_margin(self.trainer)

    def results(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        results = {f"eval_{k}": v for k, v in after.items()}
        results.update({f"eval_{k}_before": v for k, v in before.items()})
        results.update({f"train_{k}": v for k, v in self.info["train"].items()})
        results["eval_pairs"] = self.info["test"]["pairs"]
        return results

    def about(self) -> str:
        return f"A policy trained with DPO (loss `{self.cfg.loss_type}`, beta {self.cfg.beta})."

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        return (
            f"[dpo] held-out implicit reward margin {before['margin']:.4f} -> {after['margin']:.4f}, "
            f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} on {results['eval_pairs']} pairs"
        )


def run(cfg: DPOArgs) -> dict[str, Any]:
    return DPORun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return DPORun.main(argv)
