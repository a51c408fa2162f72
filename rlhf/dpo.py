"""`python rlhf/train.py dpo`: direct preference optimisation on collected comparisons (TRL DPOTrainer).

Losses (logratio(y) = log pi(y|x) - log ref(y|x); h = beta * (logratio(y_w) - logratio(y_l)); |y| = completion tokens):
  sigmoid       -log sigmoid(h)                          Eq. 7 of Rafailov et al. 2023 (arXiv 2305.18290)
  ipo           (h / beta - 1 / (2 beta))^2              Eq. 17 of Azar et al. 2023 (arXiv 2310.12036)
  sigmoid_norm  -log sigmoid(beta * (mean-per-token log-ratio of y_w - that of y_l)): length-normalised DPO, so
                a longer response no longer earns a larger implicit reward just by having more tokens (the
                normalisation SimPO uses, Eq. 4 of arXiv 2405.14734, but keeping the reference model).
  rdpo          -log sigmoid(h + alpha * (|y_w| - |y_l|)): R-DPO, Eq. 9 of Park et al. 2024 (arXiv 2403.19159);
                the length gap is credited up front, so the policy does not have to learn it (`--rdpo-alpha`).
  ld            sigmoid with LD-DPO's likelihood (Liu et al. 2024, arXiv 2409.06411): log-probs of the tokens past
                the shorter response of the pair weighted by alpha in [0, 1] (`--ld-alpha`, 0.5 if unset); TRL's
                own `ld_alpha`. `--ld-alpha` also adds that weighting to sigmoid, ipo and sigmoid_norm.
  simpo         -log sigmoid(beta / |y_w| log pi(y_w|x) - beta / |y_l| log pi(y_l|x) - gamma): SimPO, Eq. 6 of
                Meng et al. 2024 (arXiv 2405.14734); reference-free, with a target margin (`--simpo-gamma`). Its beta
                defaults to 2.0 (the paper uses 2.0-2.5, on a per-token scale), not DPO's 0.1.
sigmoid, ipo, sigmoid_norm and ld are TRL's own code; rdpo and simpo are computed in rlhf/dpo_losses.py, on the same
(packed or padded) forward, and so is every loss when the pairs carry soft labels (`--label-trust`, on by default
where the data has p_chosen: per-pair conservative DPO, p l(d) + (1 - p) l(-d)) or weights (rlhf/label_trust.py).

The reference is the starting policy itself. With `--precompute-ref-log-probs` (the default) TRL scores every train
and held-out pair with the policy before the first step and keeps no reference model at all (one model's weights
less in memory: 0.54 GB fp32 for the default model). Without precompute it gets an explicit frozen copy: given a
policy built in memory and no reference, TRL would then load a model *by name* from the policy's config, which may
be a different model. SimPO has no reference: no copy, no reference pass.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from annotate.errors import UsageError
from rlhf.common import (
    BaseArgs,
    PackingArgs,
    ResumeArgs,
    load_data,
    metrics_callback,
    pairs_for_steps,
    row_tokens,
    trl_args,
)
from rlhf.label_trust import LabelTrustArgs, mode_of
from rlhf.skeleton import TrainerRun

LOSS_TYPES = ["sigmoid", "ipo", "sigmoid_norm", "rdpo", "ld", "simpo"]
# Defaults that depend on the loss, applied when the option is not given (DPOArgs.__post_init__).
DEFAULT_BETA = {"simpo": 2.0}  # SimPO's reward is per token, so its scale is ~|y| times DPO's; paper: 2.0-2.5
DEFAULT_BETA_OTHERS = 0.1
DEFAULT_LD_ALPHA = 0.5  # for --loss-type ld; LD-DPO's alpha in [0, 1] (1 = plain DPO, 0 = the shared prefix only)
DEFAULT_RDPO_ALPHA = 0.05  # logit nats per token of length gap: a 20-token longer chosen response starts 1 nat ahead
DEFAULT_SIMPO_GAMMA = 0.5  # SimPO's target margin; TRL's CPOConfig default (simpo_gamma)


@dataclass
class DPOArgs(ResumeArgs, PackingArgs, LabelTrustArgs, BaseArgs):
    """Direct preference optimisation of a policy on preference pairs (TRL DPOTrainer)."""

    trl_config_class: ClassVar[str] = "trl.DPOConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/dpo", metadata={"help": "where the model, config and metrics go"})
    beta: float | None = field(
        default=None,
        metadata={"help": "strength of the pull towards the reference (tau for ipo, the reward scale for simpo); "
                  f"default: {DEFAULT_BETA['simpo']} for simpo, {DEFAULT_BETA_OTHERS} otherwise"},
    )  # fmt: skip
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": "sigmoid (DPO), ipo, sigmoid_norm (length-normalised DPO), rdpo (length-regularised DPO), "
                  "ld (LD-DPO) or simpo (reference-free, length-normalised); see rlhf/dpo.py",
                  "choices": LOSS_TYPES},
    )  # fmt: skip
    ld_alpha: float | None = field(
        default=None,
        metadata={"help": "LD-DPO weight in [0, 1] for tokens past the shorter response; "
                  f"default: {DEFAULT_LD_ALPHA} for ld, off otherwise (not with rdpo or simpo)"},
    )  # fmt: skip
    rdpo_alpha: float | None = field(
        default=None,
        metadata={"help": "R-DPO: logit credit per token the chosen response is longer than the rejected one; "
                  f"default {DEFAULT_RDPO_ALPHA} (only with --loss-type rdpo)"},
    )  # fmt: skip
    simpo_gamma: float | None = field(
        default=None,
        metadata={"help": "SimPO's target reward margin gamma; "
                  f"default {DEFAULT_SIMPO_GAMMA} (only with --loss-type simpo)"},
    )  # fmt: skip
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "score the whole dataset with the reference once, then train without it (faster)"},
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "batch size of that one pass (no gradients, so it can be large)"}
    )

    def __post_init__(self) -> None:
        # Loss-dependent defaults resolved here, so config.yaml records the values the run used; a parameter of
        # another loss is an error rather than silently ignored.
        self.label_trust = mode_of(self.label_trust)
        loss = self.loss_type
        if self.beta is None:
            self.beta = DEFAULT_BETA.get(loss, DEFAULT_BETA_OTHERS)
        if loss == "ld" and self.ld_alpha is None:
            self.ld_alpha = DEFAULT_LD_ALPHA
        if self.ld_alpha is not None:
            if loss in ("rdpo", "simpo"):
                raise UsageError(f"--ld-alpha does not apply to --loss-type {loss}")
            if not 0.0 <= self.ld_alpha <= 1.0:
                raise UsageError(f"--ld-alpha must be in [0, 1], got {self.ld_alpha}")
        for name, owner, default in (("rdpo_alpha", "rdpo", DEFAULT_RDPO_ALPHA),
                                     ("simpo_gamma", "simpo", DEFAULT_SIMPO_GAMMA)):  # fmt: skip
            if loss == owner and getattr(self, name) is None:
                setattr(self, name, default)
            elif loss != owner and getattr(self, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} is a parameter of --loss-type {owner}, not {loss}")


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

    from rlhf.data import REQUIRED, trainer_columns
    from rlhf.dpo_losses import LENGTH_LOSSES, REFERENCE_FREE, dpo_loss_trainer
    from rlhf.label_trust import prepare as with_label_trust
    from rlhf.models import load_causal_lm
    from rlhf.packing import packed_dpo_trainer

    tokenizer, train, test, info = load_data(cfg)
    train, test, label_column, info["label_trust"] = with_label_trust(cfg.label_trust, train, test)
    train = pairs_for_steps(cfg, train, info)  # the reference pass below scores only what training will use
    set_seed(cfg.seed)
    policy = load_causal_lm(cfg.model, dtype="float32")  # master weights in fp32; bf16 autocast when enabled
    reference_free = cfg.loss_type in REFERENCE_FREE
    args = trl_args(
        cfg,
        DPOConfig,
        default_lr=1e-6,
        beta=cfg.beta,
        # ld is TRL's sigmoid with ld_alpha; rdpo and simpo replace TRL's loss (rlhf/dpo_losses.py), whose
        # loss_type then only names what TRL would otherwise compute.
        loss_type=["sigmoid" if cfg.loss_type in ("ld", *LENGTH_LOSSES) else cfg.loss_type],
        ld_alpha=cfg.ld_alpha,
        # Reference-free: "precompute" is how TRL is told to hold no reference model; the pass itself is skipped.
        precompute_ref_log_probs=cfg.precompute_ref_log_probs or reference_free,
        precompute_ref_batch_size=cfg.precompute_ref_batch_size,
        eval_strategy="no",
    )
    trainer_cls = packed_dpo_trainer(row_tokens(cfg)) if cfg.packing else DPOTrainer
    if cfg.loss_type in LENGTH_LOSSES or label_column:
        trainer_cls = dpo_loss_trainer(trainer_cls, cfg.loss_type, rdpo_alpha=cfg.rdpo_alpha or 0.0,
                                       simpo_gamma=cfg.simpo_gamma or 0.0, label_column=label_column)  # fmt: skip
    precomputed = args.precompute_ref_log_probs and not _fsdp(args)
    trainer = trainer_cls(
        model=policy,
        # None only where TRL reads the reference from the untouched policy before training (dpo_trainer.py, the
        # `precompute_ref_log_probs and not fsdp` branch) or where there is none (simpo); FSDP or no precompute get
        # an explicit frozen copy.
        ref_model=None if precomputed or reference_free else frozen_copy(policy),
        args=args,
        train_dataset=trainer_columns(train, (*REQUIRED, label_column)),
        eval_dataset=trainer_columns(test, (*REQUIRED, label_column)),
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
        from annotate.audit_stats import wilson  # scipy: not for `--help`

        results = {f"eval_{k}": v for k, v in after.items()}
        results.update({f"eval_{k}_before": v for k, v in before.items()})
        results.update({f"train_{k}": v for k, v in self.info["train"].items()})
        results["eval_pairs"] = n = self.info["test"]["pairs"]
        # A share of a few pairs says little on its own ("0.250 on 7 pairs"): its Wilson 95% interval goes with it.
        # TRL averages the accuracy per eval batch, so acc * n is the count of pairs exactly when batches are equal.
        results["eval_accuracy_ci95"] = list(wilson(round(after["accuracy"] * n), n)) if n else None
        results["label_trust"] = self.info["label_trust"]
        return results

    def about(self) -> str:
        cfg = self.cfg
        params = {"beta": cfg.beta, "ld_alpha": cfg.ld_alpha, "rdpo_alpha": cfg.rdpo_alpha, "gamma": cfg.simpo_gamma}
        shown = ", ".join(f"{k} {v}" for k, v in params.items() if v is not None)
        return f"A policy trained with DPO (loss `{cfg.loss_type}`, {shown})."

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        ci = results.get("eval_accuracy_ci95")
        ci = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        return (
            f"[dpo] held-out implicit reward margin {before['margin']:.4f} -> {after['margin']:.4f}, "
            f"accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}{ci} on {results['eval_pairs']} pairs, "
            f"after {results.get('steps', '?')} optimizer steps"
        )


def run(cfg: DPOArgs) -> dict[str, Any]:
    return DPORun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return DPORun.main(argv)
