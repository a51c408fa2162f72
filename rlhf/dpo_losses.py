"""The length-debiasing DPO losses TRL's DPOTrainer lacks, on the trainer's own forward (padded or packed).

TRL 1.16's DPOTrainer computes sigmoid, ipo, sigmoid_norm and LD-DPO (`ld_alpha`) itself; prefkit uses those as they
are. It has no R-DPO, and SimPO only in the experimental CPOTrainer, which has its own data pipeline and no fused LM
head (so no packing). The two are added here, as a `compute_loss` override on top of DPOTrainer (or the packed
subclass from rlhf.packing): one policy forward with TRL's fused head returning per-token log-probs, then

  rdpo   -log sigmoid(beta * (logratio_w - logratio_l) + alpha * (|y_w| - |y_l|))
         R-DPO, Eq. 9 of Park et al. 2024 (arXiv 2403.19159). Derived from the length-penalised objective
         max E[r(x, y) - alpha |y|] - beta KL: the preference reward is then beta * logratio + alpha |y|, so a pair
         whose chosen response is longer starts with a margin it did not have to earn, and the policy learns less
         from length. logratio = log pi(y|x) - log ref(y|x); |y| = completion tokens.
  simpo  -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)
         SimPO, Eq. 6 of Meng et al. 2024 (arXiv 2405.14734): the mean per-token log-prob as the reward (no
         reference model at all) and a target margin gamma. The same logit as TRL's CPOTrainer `loss_type="simpo"`
         with `cpo_alpha=0`.

Logged metrics keep TRL's names, so reports read them unchanged. `rewards/*` are each method's implicit reward:
beta * logratio for rdpo (the length term belongs to the data, not the policy, so the margin is comparable with
sigmoid's and 0 at the start), and beta / |y| * log pi(y|x) for simpo (its reward, Eq. 4 of the SimPO paper; not 0
at the start, since there is no reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LENGTH_LOSSES = ("rdpo", "simpo")  # loss types computed here rather than by TRL
REFERENCE_FREE = ("simpo",)
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}  # batch keys that are not inputs


def rdpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    alpha: float,
) -> torch.Tensor:
    """Per-pair R-DPO loss, Eq. 9 of arXiv 2403.19159:
    -log sigmoid(beta * (logratio_w - logratio_l) + alpha * (|y_w| - |y_l|))."""
    length_term = alpha * (chosen_lengths - rejected_lengths).to(chosen_logratios.dtype)
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios) + length_term)


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """Per-pair SimPO loss, Eq. 6 of arXiv 2405.14734:
    -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)."""
    return -F.logsigmoid(simpo_reward(chosen_logps, chosen_lengths, beta)
                         - simpo_reward(rejected_logps, rejected_lengths, beta) - gamma)  # fmt: skip


def simpo_reward(logps: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """SimPO's reward, Eq. 4 of arXiv 2405.14734: beta times the mean per-token log-prob of the response."""
    return beta * logps / lengths.clamp(min=1).to(logps.dtype)


def length_dpo_trainer(base: type, loss_type: str, rdpo_alpha: float = 0.0, simpo_gamma: float = 0.0) -> type:
    """`base` (TRL's DPOTrainer or a subclass of it) computing `loss_type` ("rdpo" or "simpo") instead of TRL's
    loss; every other part of the trainer (data, reference pass, packing, evaluation) is `base`'s. A SimPO trainer
    keeps no reference model and runs no reference pass: build it with `precompute_ref_log_probs=True` and no
    `ref_model` (TRL then holds none), and the pass TRL would start in `__init__` is skipped."""
    if loss_type not in LENGTH_LOSSES:
        raise ValueError(f"length_dpo_trainer: unknown loss type {loss_type!r} (one of {', '.join(LENGTH_LOSSES)})")
    from rlhf.trl_compat import dpo_trainer_without_reference, record_metric

    if loss_type in REFERENCE_FREE:
        base = dpo_trainer_without_reference(base)

    class LengthDPOTrainer(base):
        """DPOTrainer with the R-DPO or SimPO loss (rlhf/dpo_losses.py)."""

        length_loss, alpha, gamma = loss_type, rdpo_alpha, simpo_gamma

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
            model_kwargs["use_cache"] = False
            if self.aux_loss_enabled:  # MoE: the router's load-balancing loss, as TRL adds it
                model_kwargs["output_router_logits"] = True
            completion_mask = inputs["completion_mask"]
            mask = completion_mask[:, 1:]  # the tokens that are predicted, as TRL's fused head aligns them
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            per_token = outputs.log_probs[:, -mask.size(1) :]  # 0 wherever the label is -100
            chosen_logps, rejected_logps = per_token.sum(dim=1).chunk(2, dim=0)  # batch is [chosen, rejected]
            chosen_lengths, rejected_lengths = mask.sum(dim=1).chunk(2, dim=0)

            if self.length_loss == "simpo":
                losses = simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, self.beta,
                                    self.gamma)  # fmt: skip
                chosen_rewards = simpo_reward(chosen_logps.detach(), chosen_lengths, self.beta)
                rejected_rewards = simpo_reward(rejected_logps.detach(), rejected_lengths, self.beta)
            else:
                if self.precompute_ref_logps:
                    ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
                else:  # TRL's own reference forward (no grad; PEFT adapters disabled where there is no ref model)
                    ref_chosen, ref_rejected = self.compute_ref_log_probs(
                        self.ref_model if self.ref_model is not None else self.model, inputs
                    )
                chosen_logratios, rejected_logratios = chosen_logps - ref_chosen, rejected_logps - ref_rejected
                losses = rdpo_loss(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths,
                                   self.beta, self.alpha)  # fmt: skip
                chosen_rewards = self.beta * chosen_logratios.detach()
                rejected_rewards = self.beta * rejected_logratios.detach()
                gap = (chosen_lengths - rejected_lengths).float()
                self._log_mean(mode, "rdpo/length_term", self.alpha * gap)
            loss = losses.mean()
            if self.aux_loss_enabled:
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss

            self._log_mean(mode, "rewards/chosen", chosen_rewards)
            self._log_mean(mode, "rewards/rejected", rejected_rewards)
            self._log_mean(mode, "rewards/margins", chosen_rewards - rejected_rewards)
            self._log_mean(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).float())
            self._log_mean(mode, "logps/chosen", chosen_logps.detach())
            self._log_mean(mode, "logps/rejected", rejected_logps.detach())
            if outputs.entropy is not None:  # token-weighted, as TRL logs it
                entropy = (outputs.entropy[:, -mask.size(1) :].detach() * mask).sum()
                total = self.accelerator.gather_for_metrics(entropy).sum()
                tokens = self.accelerator.gather_for_metrics(mask.sum()).sum()
                record_metric(self, mode, "entropy", (total / tokens.clamp(min=1)).item())
            if return_outputs:  # Trainer asks for logits only when compute_metrics is set: one plain forward
                with torch.no_grad():
                    outputs = model(**{k: v for k, v in model_kwargs.items() if k != "output_router_logits"})
                return loss, outputs
            return loss

        def _log_mean(self, mode: str, name: str, values: torch.Tensor) -> None:
            record_metric(self, mode, name, self.accelerator.gather_for_metrics(values).float().mean().item())

    LengthDPOTrainer.__name__ = LengthDPOTrainer.__qualname__ = f"{loss_type.upper()}{base.__name__}"
    return LengthDPOTrainer
