"""The DPO losses prefkit computes itself, on the trainer's own forward (padded or packed): the length-debiasing
losses TRL's DPOTrainer lacks, and every loss with a per-pair label (`--label-trust`, rlhf/label_trust.py).

TRL 1.16's DPOTrainer computes sigmoid, ipo, sigmoid_norm and LD-DPO (`ld_alpha`) itself; prefkit uses those as they
are for hard labels. It has no R-DPO, and SimPO only in the experimental CPOTrainer, which has its own data pipeline
and no fused LM head (so no packing); and it has no per-pair label smoothing or weight (its `label_smoothing` is one
number for the data set, and its `sigmoid` loss no longer reads it). `dpo_loss_trainer` adds these as a
`compute_loss` override on top of DPOTrainer (or the packed subclass from rlhf.packing): one policy forward with
TRL's fused head returning per-token log-probs, then a per-pair logit d and loss l(d). With
logratio = log pi(y|x) - log ref(y|x) and |y| = completion tokens:

  sigmoid       d = beta * (logratio_w - logratio_l), l = -log sigmoid(d)     Eq. 7 of Rafailov et al. 2023
  ld            sigmoid on LD-DPO's likelihoods (tokens past the shorter response count ld_alpha times; arXiv
                2409.06411), TRL's own weighting, which ld_alpha also adds to sigmoid, ipo and sigmoid_norm
  sigmoid_norm  d = beta * (logratio_w / |y_w| - logratio_l / |y_l|), l = -log sigmoid(d)
  ipo           d = logratio_w / |y_w| - logratio_l / |y_l|, l = (d - 1/(2 beta))^2   Eq. 17 of arXiv 2310.12036,
                per token as TRL normalises it (confirmed with the IPO authors, TRL's note)
  rdpo          d = beta * (logratio_w - logratio_l) + alpha * (|y_w| - |y_l|), l = -log sigmoid(d)
                R-DPO, Eq. 9 of Park et al. 2024 (arXiv 2403.19159). Derived from the length-penalised objective
                max E[r(x, y) - alpha |y|] - beta KL: the preference reward is then beta * logratio + alpha |y|, so a
                pair whose chosen response is longer starts with a margin it did not have to earn, and the policy
                learns less from length.
  simpo         d = beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x), l = -log sigmoid(d - gamma)
                SimPO, Eq. 6 of Meng et al. 2024 (arXiv 2405.14734): the mean per-token log-prob as the reward (no
                reference model at all) and a target margin gamma. The same logit as TRL's CPOTrainer
                `loss_type="simpo"` with `cpo_alpha=0`.

Each pair's loss is then rlhf.label_trust.pair_loss: l(d) for a hard label, p l(d) + (1 - p) l(-d) for a soft one
(per-pair conservative DPO, cDPO, for the logistic losses), w l(d) for a weighted one; the batch loss is the mean.

Logged metrics keep TRL's names, so reports read them unchanged. `rewards/*` are each method's implicit reward:
beta * logratio (for rdpo too: the length term belongs to the data, not the policy, so the margin is comparable with
sigmoid's and 0 at the start), and beta / |y| * log pi(y|x) for simpo (its reward, Eq. 4 of the SimPO paper; not 0
at the start, since there is no reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LENGTH_LOSSES = ("rdpo", "simpo")  # loss types always computed here rather than by TRL
OWN_LOSSES = ("sigmoid", "ld", "sigmoid_norm", "ipo", *LENGTH_LOSSES)  # every loss computed here with --label-trust
REFERENCE_FREE = ("simpo",)
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}  # batch keys that are not inputs


def simpo_reward(logps: torch.Tensor, lengths: torch.Tensor, beta: float) -> torch.Tensor:
    """SimPO's reward, Eq. 4 of arXiv 2405.14734: beta times the mean per-token log-prob of the response."""
    return beta * logps / lengths.clamp(min=1).to(logps.dtype)


def ld_weighted(per_token: torch.Tensor, mask: torch.Tensor, ld_alpha: float | None) -> torch.Tensor:
    """Sequence log-probs (2B,) from per-token ones (2B, T) with mask (2B, T) of the predicted completion tokens:
    their sum, or with ld_alpha LD-DPO's, the tokens past the shorter response of the pair counted ld_alpha times
    (TRL's own weighting, as its reference pass computes it)."""
    if ld_alpha is None:
        return per_token.sum(dim=1)
    position = mask.cumsum(dim=1)  # 1, 2, ... along each completion
    shared = torch.minimum(*mask.sum(dim=1).chunk(2)).repeat(2)[:, None]  # min(|y_w|, |y_l|) for both sides
    shared_mask, tail_mask = (position > 0) & (position <= shared), position > shared
    return (per_token * shared_mask).sum(dim=1) + ld_alpha * (per_token * tail_mask).sum(dim=1)


def dpo_loss_trainer(
    base: type, loss_type: str, rdpo_alpha: float = 0.0, simpo_gamma: float = 0.0, label_column: str | None = None
) -> type:
    """`base` (TRL's DPOTrainer or a subclass of it) computing `loss_type` here (module doc), with each pair's
    `label_column` ("p_chosen" soft, "weight" weighted; None hard) carried from the dataset into the loss. Every
    other part of the trainer (data, reference pass, packing, evaluation) is `base`'s. A SimPO trainer keeps no
    reference model and runs no reference pass: build it with `precompute_ref_log_probs=True` and no `ref_model`
    (TRL then holds none), and the pass TRL would start in `__init__` is skipped."""
    if loss_type not in OWN_LOSSES:
        raise ValueError(f"dpo_loss_trainer: unknown loss type {loss_type!r} (one of {', '.join(OWN_LOSSES)})")
    from annotate.errors import UsageError
    from rlhf.label_trust import labels_of, model_inputs, pair_loss
    from rlhf.reward_debias import ColumnsCollator
    from rlhf.trl_compat import dpo_trainer_without_reference, record_metric

    if loss_type in REFERENCE_FREE:
        base = dpo_trainer_without_reference(base)

    class LossDPOTrainer(base):
        """DPOTrainer with the loss of rlhf/dpo_losses.py."""

        length_loss, alpha, gamma = loss_type, rdpo_alpha, simpo_gamma

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # TRL's reference pass runs here, with TRL's own collator
            if label_column:
                ignored = [name for name, on in (("use_weighting", self.use_weighting),
                           ("f_divergence_type", self.f_divergence_type != "reverse_kl"),
                           ("several loss types", len(self.loss_types) > 1)) if on]  # fmt: skip
                if ignored:  # TRL options this loss does not compute: refuse rather than drop them
                    raise UsageError(f"--label-trust: not with {', '.join(ignored)} (pass --label-trust off)")
                self.data_collator = ColumnsCollator(self.data_collator, (label_column,))

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if label_column and label_column not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, label_column]

        def compute_ref_log_probs(self, model, inputs):
            return super().compute_ref_log_probs(model, model_inputs(inputs))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            model_kwargs = {k: v for k, v in model_inputs(inputs).items() if k not in _NON_MODEL_KEYS}
            model_kwargs["use_cache"] = False
            if self.aux_loss_enabled:  # MoE: the router's load-balancing loss, as TRL adds it
                model_kwargs["output_router_logits"] = True
            completion_mask = inputs["completion_mask"]
            mask = completion_mask[:, 1:]  # the tokens that are predicted, as TRL's fused head aligns them
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            per_token = outputs.log_probs[:, -mask.size(1) :]  # 0 wherever the label is -100
            chosen_logps, rejected_logps = ld_weighted(per_token, mask, self.ld_alpha).chunk(2, dim=0)
            chosen_lengths, rejected_lengths = mask.sum(dim=1).chunk(2, dim=0)  # batch is [chosen, rejected]

            if self.length_loss == "simpo":
                chosen_rewards = simpo_reward(chosen_logps, chosen_lengths, self.beta)
                rejected_rewards = simpo_reward(rejected_logps, rejected_lengths, self.beta)
                d = chosen_rewards - rejected_rewards
            else:
                if self.precompute_ref_logps:
                    ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
                else:  # TRL's own reference forward (no grad; PEFT adapters disabled where there is no ref model)
                    ref_chosen, ref_rejected = self.compute_ref_log_probs(
                        self.ref_model if self.ref_model is not None else self.model, inputs
                    )
                chosen_logratios, rejected_logratios = chosen_logps - ref_chosen, rejected_logps - ref_rejected
                chosen_rewards, rejected_rewards = self.beta * chosen_logratios, self.beta * rejected_logratios
                d = self._logit(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths)
            losses = pair_loss(self._loss, d, labels_of(inputs))  # (B,)
            loss = losses.mean()
            if self.aux_loss_enabled:
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss

            chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
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

        def _logit(self, ratio_w, ratio_l, len_w, len_l) -> torch.Tensor:
            """The preference logit d (B,) of the reference-based losses (module doc)."""
            if self.length_loss in ("ipo", "sigmoid_norm"):  # per-token log-ratios
                d = ratio_w / len_w.clamp(min=1) - ratio_l / len_l.clamp(min=1)
                return d if self.length_loss == "ipo" else self.beta * d
            d = self.beta * (ratio_w - ratio_l)
            if self.length_loss == "rdpo":
                mode = "train" if self.model.training else "eval"
                length_term = self.alpha * (len_w - len_l).to(d.dtype)
                self._log_mean(mode, "rdpo/length_term", length_term)
                d = d + length_term
            return d

        def _loss(self, d: torch.Tensor) -> torch.Tensor:
            """l(d) per pair: IPO's square, or the logistic loss (with SimPO's margin gamma)."""
            if self.length_loss == "ipo":
                return (d - 1 / (2 * self.beta)) ** 2
            return -F.logsigmoid(d - (self.gamma if self.length_loss == "simpo" else 0.0))

        def _log_mean(self, mode: str, name: str, values: torch.Tensor) -> None:
            record_metric(self, mode, name, self.accelerator.gather_for_metrics(values).float().mean().item())

    LossDPOTrainer.__name__ = LossDPOTrainer.__qualname__ = f"{loss_type.upper()}{base.__name__}"
    return LossDPOTrainer
