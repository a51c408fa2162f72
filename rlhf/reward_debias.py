"""`reward --length-debias`: keeping length (and style) out of a reward model trained on pairs that reward them.

Every method trains the Bradley-Terry reward model of rlhf/reward.py with something added that soaks up what raters
rewarded for length or style, and drops that something at inference: the saved model is always a plain one-output
*ForSequenceClassification that rlhf.reward.score reads unchanged.

    resample  the data: within bins of length difference, as many pairs with the chosen response the longer as the
              shorter (length_balanced)
    joint     a learned length weight in the BT logit plus a penalty on the batch correlation of reward with length
              (JointTrainer)
    odin      two linear heads on the shared backbone, quality and length, trained on their sum with a length loss
              and an orthogonality loss; only the quality head is kept (Chen et al. 2024, arXiv 2402.07319)
    poe       a product of experts with a bias-only model, a linear model on the style features of
              annotate/audit_features.py (length, Markdown, hedging, confidence); only the main model is kept
              (Shen et al. 2023, arXiv 2310.05199)

Each trainer's loss names the equation it implements. Tensor shapes: B pairs per batch, rewards (2B,) chosen then
rejected, as TRL's DataCollatorForPreference stacks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import RewardTrainer

from rlhf.label_trust import bt_pair_loss, labels_of, model_inputs

if TYPE_CHECKING:
    from datasets import Dataset

    from annotate.audit_ruler import StyleModel


# -- resample: the data -------------------------------------------------------------------------------------------
def length_balanced(ds: Dataset, seed: int = 0, bins: int = 4) -> Dataset:
    """Resample so the chosen response is the longer in half the pairs, separately per |length difference| bin.

    The minority direction of each bin is oversampled (with replacement) up to the majority's count: nothing is
    thrown away, and a rater's length preference can no longer be read off the training pairs. Needs the
    chosen_len/rejected_len columns that rlhf.data.drop_long adds.
    """
    d = np.array(ds["chosen_len"]) - np.array(ds["rejected_len"])  # the prompt cancels in the difference
    rng = np.random.default_rng(seed)
    keep = list(np.flatnonzero(d == 0))
    nz = np.flatnonzero(d != 0)
    edges = np.quantile(np.abs(d[nz]), np.linspace(0, 1, bins + 1)[1:-1]) if len(nz) else []
    which = np.digitize(np.abs(d[nz]), edges)
    for b in range(bins):
        idx = nz[which == b]
        small, big = sorted((idx[d[idx] > 0], idx[d[idx] < 0]), key=len)
        keep += list(idx)
        if len(small):  # a bin with one direction only cannot be balanced by resampling
            keep += list(rng.choice(small, len(big) - len(small)))
    rng.shuffle(keep)
    return ds.select([int(i) for i in keep])


def chosen_longer_share(ds: Dataset) -> float | None:
    """P(chosen longer | lengths differ) in a set with chosen_len/rejected_len columns."""
    d = [c - r for c, r in zip(ds["chosen_len"], ds["rejected_len"]) if c != r]
    return sum(x > 0 for x in d) / len(d) if d else None


# -- what the trainers share --------------------------------------------------------------------------------------
def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (N,) tensors, differentiable; 0 where either is constant (undefined)."""
    x0, y0 = x - x.mean(), y - y.mean()
    return (x0 * y0).sum() / (x0.norm() * y0.norm() + 1e-8)


def bt_loss(logit: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """-log sigmoid(logit - margin): the Bradley-Terry loss (Ouyang et al. 2022, arXiv 2203.02155, Eq. 1) on a
    logit that a method may have extended, with TRL's optional per-pair margin (Llama 2's, arXiv 2307.09288 Eq. 2),
    and the soft label or weight of each pair where `inputs` carries one (`--label-trust`, rlhf/label_trust.py)."""
    if "margin" in inputs:
        logit = logit - inputs["margin"]
    return bt_pair_loss(logit, labels_of(inputs)).mean()


class TermState(TrainerCallback, ExportableState):
    """A dropped-at-inference parameter (joint's length weight, poe's bias model) through checkpoints and steps.

    Being no model weight, it rides in trainer_state.json (written as the checkpoint's last file) and a resumed run
    restores it when training begins. The Trainer zeroes only the model's gradients after each optimizer step, so
    this one's is zeroed here: otherwise it would add up over all steps (it did once; the length-debiasing figures
    in BENCHMARKS.md dated before 2026-12-02 had that). The state key is the class name, LengthWeightState for joint
    so that checkpoints written before this class was shared still resume.
    """

    def __init__(self, param: nn.Parameter, attribute: str):
        self.param, self.attribute = param, attribute

    def state(self) -> dict:
        return {"args": {}, "attributes": {self.attribute: self.param.detach().cpu().tolist()}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if saved:  # the checkpoint's value under --resume, the initial one otherwise
            with torch.no_grad():
                self.param.copy_(torch.tensor(saved["attributes"][self.attribute], dtype=self.param.dtype))

    def on_step_end(self, args, state, control, **kwargs):
        self.param.grad = None  # after the optimizer step, as the Trainer does for the model


class LengthWeightState(TermState):
    """joint's length weight (the state key older checkpoints were written under)."""


@dataclass
class ColumnsCollator:
    """TRL's preference collator plus per-pair float columns it does not know, stacked to (B, ...) tensors."""

    base: Any
    columns: tuple[str, ...]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extra = {c: torch.tensor([ex[c] for ex in examples], dtype=torch.float32) for c in self.columns}
        return {**self.base([{k: v for k, v in ex.items() if k not in self.columns} for ex in examples]), **extra}


class DroppedTermTrainer(RewardTrainer):
    """RewardTrainer carrying `extra_columns` of the dataset into compute_loss, and optimising `extra_params` (not
    model weights, so save_pretrained never writes them: dropped at inference) at their own learning rate.
    `label_column`: the pairs' soft label or weight (rlhf/label_trust.py) rides along too, for bt_loss."""

    extra_columns: tuple[str, ...] = ()

    def __init__(self, *args, extra_lr: float = 0.0, label_column: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_lr = extra_lr
        self.extra_params: list[nn.Parameter] = []
        if label_column:
            self.extra_columns = (*self.extra_columns, label_column)
        if self.extra_columns:
            self.data_collator = ColumnsCollator(self.data_collator, self.extra_columns)

    @staticmethod
    def pair_forward(model: nn.Module, inputs: dict[str, Any]) -> Any:
        """The model on a batch's chosen then rejected sequences; label columns stay out of its inputs."""
        return model(**model_inputs(inputs), use_cache=False)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # TRL's: chosen_ids, rejected_ids, margin
        self._signature_columns = [*self._signature_columns, *self.extra_columns]

    def add_dropped_param(self, value: torch.Tensor, state: type[TermState], attribute: str) -> nn.Parameter:
        param = nn.Parameter(value.to(next(self.model.parameters()).device), requires_grad=self.extra_lr > 0)
        self.extra_params.append(param)
        self.add_callback(state(param, attribute))
        return param

    def create_optimizer(self, model=None):
        opt = super().create_optimizer(model)
        mine = [p for p in self.extra_params if p.requires_grad]
        if mine and all(p is not q for g in opt.param_groups for p in g["params"] for q in mine):
            # Their own (larger) rate: a few scalars at the backbone's 1e-5 would barely move in a run.
            opt.add_param_group({"params": mine, "lr": self.extra_lr, "weight_decay": 0.0})
        return opt

    def log_pair_metrics(self, main_c: torch.Tensor, main_r: torch.Tensor, **extra: float) -> None:
        """accuracy and margin of the kept model alone (what inference sees), plus the method's own figures."""
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append((main_c > main_r).float().mean().item())
            self._metrics[mode]["margin"].append((main_c - main_r).mean().item())
            for k, v in extra.items():
                self._metrics[mode][k].append(float(v))


# -- joint --------------------------------------------------------------------------------------------------------
class JointTrainer(DroppedTermTrainer):
    """The Bradley-Terry logit gets a learned length term, dropped at inference:

    loss = -log sigmoid(r(x, y_c) - r(x, y_r) + w * (len_c - len_r) / scale) + lambda * |Pearson(r, len)|

    The length term is the length control of Chatbot Arena's style-controlled Bradley-Terry
    (lmsys.org/blog/2024-08-28-style-control): w soaks up the part of the preference that length explains. On its
    own it does not stop r from learning length too (a network counts tokens as easily as w does), so, as in ODIN
    (Chen et al. 2024, arXiv 2402.07319, its length loss L^L on the quality head), a penalty on the batch
    correlation of r with length keeps r length-free. Lengths here are whole sequences (prompt + response): the
    prompt's tokens cancel in the logit's difference.
    """

    def __init__(self, *args, length_scale: float, decorrelation: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_scale, self.decorrelation = length_scale, decorrelation
        self.length_w = self.add_dropped_param(torch.zeros(()), LengthWeightState, "length_w")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = self.pair_forward(model, inputs)
        rewards = outputs.logits.squeeze(-1)  # (2B,): chosen then rejected
        r_c, r_r = torch.chunk(rewards, chunks=2)  # (B,), (B,)
        lengths = inputs["attention_mask"].sum(-1).float() / self.length_scale  # (2B,)
        l_c, l_r = torch.chunk(lengths, chunks=2)
        loss = bt_loss(r_c - r_r + self.length_w * (l_c - l_r), inputs)
        if self.decorrelation > 0 and lengths.std() > 0:
            loss = loss + self.decorrelation * pearson(rewards, lengths).abs()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
        self.log_pair_metrics(r_c, r_r, length_weight=self.length_w.item())
        return (loss, outputs) if return_outputs else loss


# -- odin ---------------------------------------------------------------------------------------------------------
def head_weight(model: nn.Module) -> torch.Tensor:
    """The (2, H) weight of the two-output `score` head the forward really uses (peft: the trained copy)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.score
    if hasattr(head, "modules_to_save"):  # peft's ModulesToSaveWrapper: the adapter's trainable copy
        head = head.modules_to_save[head.active_adapters[0]]
    return head.weight


class OdinTrainer(DroppedTermTrainer):
    """ODIN (Chen et al. 2024, arXiv 2402.07319): the model's `score` head has two outputs on the shared last-token
    features, r^Q (quality, column 0) and r^L (length, column 1). With rho the Pearson correlation over the batch's
    2B responses and len the response length in tokens:

    loss = L^R + lambda_L * L^L + lambda_O * L^O
      L^R = -log sigmoid((r^Q_c + r^L_c) - (r^Q_r + r^L_r))   the ranking (BT) loss on the sum of the heads
      L^L = |rho(r^Q, len)| - rho(r^L, len)                    ODIN's length loss: the length head takes up the
                                                               length-reward correlation, the quality head none
      L^O = |cos(w^Q, w^L)|                                    ODIN's orthogonality loss on the heads' weights

    (symbols as in the paper; its reference implementation, RLHFlow/RLHF-Reward-Modeling odin/gemma_two_head.py,
    writes L^L as (1 - rho(r^L, len)) + |rho(r^Q, len)|, the same gradient.) L^O uses normalised weights: on raw
    weights |w^Q . w^L| is minimised by shrinking both heads, which disentangles nothing. The correlation is over the
    local batch (the paper gathers a global one across devices). Only r^Q is kept (rlhf.reward's save).
    """

    extra_columns = ("response_lengths",)  # (B, 2): tokens of the chosen and the rejected response

    def __init__(self, *args, length_weight: float, orthogonality: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_weight, self.orthogonality = length_weight, orthogonality

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lengths = inputs.pop("response_lengths")
        outputs = self.pair_forward(model, inputs)
        quality, length = outputs.logits.float().unbind(-1)  # (2B,) each: chosen then rejected
        ln = torch.cat([lengths[:, 0], lengths[:, 1]])  # (2B,) in the same order
        q_c, q_r = torch.chunk(quality, 2)
        l_c, l_r = torch.chunk(length, 2)
        loss = bt_loss((q_c + l_c) - (q_r + l_r), inputs)
        rho_q, rho_l = (pearson(quality, ln), pearson(length, ln)) if ln.std() > 0 else (quality.new_zeros(()),) * 2
        loss = loss + self.length_weight * (rho_q.abs() - rho_l)
        w = head_weight(self.model).float()  # (2, H)
        cos = nn.functional.cosine_similarity(w[0], w[1], dim=0)
        loss = loss + self.orthogonality * cos.abs()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((q_c + l_c + q_r + l_r) ** 2)
        self.log_pair_metrics(q_c, q_r, quality_length_corr=rho_q.item(), length_head_length_corr=rho_l.item(),
                              head_cosine=cos.item())  # fmt: skip
        return (loss, outputs) if return_outputs else loss


def keep_quality_head(model: nn.Module) -> nn.Linear:
    """Make a trained ODIN model (in place) a plain one-output reward model whose `score` is the quality head, as
    rlhf.reward.score and every other command expect. Returns the dropped length head (for the held-out report)."""
    from rlhf.reward_heads import combine_rows  # one-output layers from rows of a head, as --heads folds them

    head = model.score
    if head.out_features != 2:
        raise ValueError(f"odin: expected a two-output score head, found {head.out_features} outputs")
    length = combine_rows(head, [0.0, 1.0])
    model.score = combine_rows(head, [1.0, 0.0])
    model.num_labels = 1  # the classification forward reads it
    model.config.num_labels = 1  # and a reload builds a one-output head
    return length


# -- poe ----------------------------------------------------------------------------------------------------------
class PoETrainer(DroppedTermTrainer):
    """Product of experts with a bias-only model (Shen et al. 2023, arXiv 2310.05199): the preference probability is
    the normalised product of the main expert's and the bias expert's Bradley-Terry probabilities, which for two
    logistic experts is one sigmoid of the summed logits:

    loss = -log sigmoid([r(x, y_c) - r(x, y_r)] + [b(y_c) - b(y_r)]),   b(y) = v . s(y) / scale

    r is the reward model, b the bias-only expert: a linear model on the style vector s(y) (annotate/audit_features:
    length, Markdown headers, list items, bold, hedging, confidence), so b(y_c) - b(y_r) = v . (s(y_c) - s(y_r)) /
    scale, the `style` column. Shen et al. make their bias expert a small language model blinded by input noise so
    it can only learn shallow cues; a model that sees nothing but the style features is blind by construction. v
    starts at the length ruler's style-only fit on the training pairs (annotate.audit_ruler.fit_style_model), so the
    style share of the preferences is explained from the first step and r is left the rest, and it keeps training
    with r at its own rate (0 freezes it). Only r is saved.
    """

    extra_columns = ("style",)  # (B, K): standardised style differences, chosen minus rejected

    def __init__(self, *args, style_weights: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_v = self.add_dropped_param(torch.tensor(style_weights, dtype=torch.float32), TermState, "bias_v")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        style = inputs.pop("style")  # (B, K)
        outputs = self.pair_forward(model, inputs)
        r_c, r_r = torch.chunk(outputs.logits.squeeze(-1).float(), 2)  # (B,), (B,)
        bias = style @ self.bias_v  # (B,) b(y_c) - b(y_r)
        loss = bt_loss(r_c - r_r + bias, inputs)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
        self.log_pair_metrics(r_c, r_r, bias_accuracy=(bias > 0).float().mean().item(),
                              bias_length_weight=self.bias_v[0].item())  # fmt: skip
        return (loss, outputs) if return_outputs else loss


# -- wiring -------------------------------------------------------------------------------------------------------
def with_debias_columns(ds: Dataset, method: str, style: StyleModel | None = None) -> Dataset:
    """The training set with the per-pair column its method's trainer reads (none for the others).

    odin: `response_lengths`, [chosen, rejected] response tokens (rlhf.data.pair_lengths' prompt+response counts
    less the prompt's). poe: `style`, the standardised style differences the bias expert reads."""
    if method == "odin":
        p = np.array(ds["prompt_len"])
        lengths = np.stack([np.array(ds["chosen_len"]) - p, np.array(ds["rejected_len"]) - p], axis=1)
        return ds.add_column("response_lengths", lengths.astype(float).tolist())
    if method == "poe":
        if style is None:
            raise ValueError("poe needs the style model fitted on the training pairs")
        chosen = [m[-1]["content"] for m in ds["chosen"]]
        rejected = [m[-1]["content"] for m in ds["rejected"]]
        return ds.add_column("style", style.standardised(chosen, rejected).tolist())
    return ds


def debias_trainer(cfg: Any, kw: dict[str, Any], train: Dataset, style: StyleModel | None = None) -> RewardTrainer:
    """The trainer of cfg.length_debias (a RewardArgs) from RewardTrainer's keyword arguments `kw`: a plain
    RewardTrainer for none and resample. `style` is the ruler's style model, poe's starting bias expert."""
    method = cfg.length_debias
    if method == "joint":
        # Scale: one standard deviation of the length difference, so w is O(1) whatever the data.
        spread = float(np.std(np.array(train["chosen_len"]) - np.array(train["rejected_len"])))
        return JointTrainer(length_scale=spread or 1.0, extra_lr=cfg.length_lr, decorrelation=cfg.length_decorrelation,
                            **kw)  # fmt: skip
    if method == "odin":
        return OdinTrainer(length_weight=cfg.odin_length_weight, orthogonality=cfg.odin_orthogonality, **kw)
    if method == "poe":
        if style is None:
            raise ValueError("poe needs the style model fitted on the training pairs")
        return PoETrainer(style_weights=style.weights, extra_lr=cfg.length_lr, **kw)
    return LabelTrustTrainer(**kw) if kw.get("label_column") else RewardTrainer(**kw)


class LabelTrustTrainer(DroppedTermTrainer):
    """The plain Bradley-Terry reward model (none, resample) on soft labels or weighted pairs (`--label-trust`):
    bt_loss per pair as rlhf/label_trust.py gives it, -[p log sigmoid(d) + (1 - p) log sigmoid(-d)] or
    -w log sigmoid(d), d = r(x, y_c) - r(x, y_r) (Ouyang et al. 2022, arXiv 2203.02155, Eq. 1 at p = w = 1)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = self.pair_forward(model, inputs)
        r_c, r_r = torch.chunk(outputs.logits.squeeze(-1).float(), 2)  # (B,), (B,)
        loss = bt_loss(r_c - r_r, inputs)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
        self.log_pair_metrics(r_c, r_r)
        return (loss, outputs) if return_outputs else loss
