"""Padding-free training forwards for the reward and DPO trainers: same inputs, same outputs, no compute on pads.

TRL's collators hand the model right-padded batches; in preference data lengths vary a lot, so a third to a half of
a padded batch is pad tokens that still cost full forward and backward passes. `enable_packing` wraps a model's
forward so that, inside the call, the real tokens are re-laid out into rows of at most `row_tokens` (first-fit
decreasing), each sequence restarting its `position_ids` at 0. transformers reads those restarts as sequence
boundaries (block-diagonal attention: `masking_utils.find_packed_sequence_indices`) so no token attends across
sequences. The results are scattered back to the padded shape the trainer expects, so TRL's loss and metrics code
runs unchanged, and the loss matches the padded forward to float tolerance (tests/test_packing.py checks both).

For DPO the wrapped forward also projects through the LM head only the completion tokens (the ones with a label),
in chunks, with TRL's `ChunkedLogProbFunction`: the prompt, most of each HH sequence, never meets the
49k-column output layer, and the full `[tokens, vocab]` logits are never materialised.

Rows are bounded because SDPA attends over a whole row under a dense block mask: one row for a whole batch would
cost O(batch tokens^2). With `row_tokens` near the longest sequence the attention overhead stays small.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Layout:
    """Where each real token of a right-padded batch lives in the packed rows."""

    input_ids: torch.Tensor  # [rows, width] packed tokens (filler = pad id)
    position_ids: torch.Tensor  # [rows, width] restarting at 0 for every sequence (and for the filler)
    index: torch.Tensor  # [batch, seq] flat index into rows*width for each padded position; -1 on pads


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices grouped into rows of at most `capacity` tokens (longest first, each into the first row
    with room). A sequence longer than `capacity` gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, row_tokens: int, pad_id: int) -> Layout:
    """Pack a right-padded batch (pads only at the end of each row, as TRL's collators make them)."""
    lengths = attention_mask.sum(dim=1).tolist()
    rows = first_fit_decreasing(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    batch, seq = input_ids.shape
    device = input_ids.device
    packed = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype, device=device)
    positions = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    index = torch.full((batch, seq), -1, dtype=torch.long, device=device)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            packed[r, at : at + n] = input_ids[i, :n]
            positions[r, at : at + n] = torch.arange(n, device=device)
            index[i, :n] = torch.arange(r * width + at, r * width + at + n, device=device)
            at += n
        # The filler is its own "sequence" (positions restart at 0), so nothing real attends to it.
        positions[r, at:] = torch.arange(width - at, device=device)
    return Layout(packed, positions, index)


def _backbone_hidden(model, input_ids, attention_mask, row_tokens: int, pad_id: int, **kwargs) -> tuple:
    """Last hidden states of the packed rows, flattened to [rows*width, hidden], and the layout."""
    lay = layout(input_ids, attention_mask, row_tokens, pad_id)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("position_ids", "use_cache")}
    backbone = getattr(model, model.base_model_prefix)
    # attention_mask=None is what makes transformers derive the sequence boundaries from the position ids.
    out = backbone(input_ids=lay.input_ids, position_ids=lay.position_ids, attention_mask=None, use_cache=False,
                   **kwargs)  # fmt: skip
    hidden = out.last_hidden_state
    return hidden.reshape(-1, hidden.size(-1)), lay


def _packable(attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Only plain right-padded 2-D batches are packed; anything else (embeds, caches, left padding) passes through."""
    if attention_mask is None or attention_mask.dim() != 2 or kwargs.get("inputs_embeds") is not None:
        return False
    if kwargs.get("past_key_values") is not None:
        return False
    # Right padding means each row's mask is a run of ones then zeros: its ones-count equals its first-zero index.
    lengths = attention_mask.sum(dim=1)
    first_zero = (
        torch.where(
            attention_mask == 0,
            torch.arange(attention_mask.size(1), device=attention_mask.device),
            attention_mask.size(1),
        )
        .min(dim=1)
        .values
    )
    return bool((lengths == first_zero).all()) and bool((lengths > 0).all())


def enable_packed_reward(model, row_tokens: int) -> None:
    """Make a `*ForSequenceClassification` model score right-padded batches padding-free (same logits)."""
    if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
        raise ValueError(f"packing: {type(model).__name__} has no `score` head over a backbone; use --no-packing")
    original = model.forward
    pad_id = model.config.get_text_config().pad_token_id

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        plain = input_ids is None or pad_id is None or kwargs.get("labels") is not None
        if plain or not _packable(attention_mask, kwargs):
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        kwargs.pop("return_dict", None)
        hidden, lay = _backbone_hidden(self, input_ids, attention_mask, row_tokens, pad_id, **kwargs)
        # The same token the model's own forward pools: the rightmost one that is not the pad id.
        cols = torch.arange(input_ids.size(1), device=input_ids.device)
        last = (cols * (input_ids != pad_id)).argmax(dim=-1)
        flat = lay.index[torch.arange(input_ids.size(0), device=input_ids.device), last]
        return SequenceClassifierOutputWithPast(logits=self.score(hidden[flat]))

    model.forward = types.MethodType(forward, model)


def enable_packed_logprobs(model, row_tokens: int, outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """Wrap a causal LM (after TRL's `add_fused_lm_head`) so `model(..., labels=, fused_lm_head=True)` runs packed.

    Returns TRL's `FusedCausalLMOutput` in the padded shape [batch, seq-1]: per-token fields are zero where the
    label is -100, exactly as TRL's own fused head leaves them. `outputs` are the optional per-token fields
    (entropy, mean_logits, is_top1, ...) the trainer's metrics read.
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput

    cfg = model.config.get_text_config()
    unusual = [
        a
        for a in (
            "final_logit_softcapping",
            "logit_scale",
            "logits_scaling",
            "output_multiplier",
            "lm_head_multiplier",
        )
        if getattr(cfg, a, None) not in (None, 1.0)
    ]
    if unusual:  # TRL's head rescales these; rather than re-derive each family's rule, leave such models padded
        raise ValueError(f"packing: {type(model).__name__} scales its logits ({', '.join(unusual)}); use --no-packing")
    original = model.forward
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0

    def forward(self, *args, fused_lm_head=False, labels=None, attention_mask=None, **kwargs):
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        plain = not fused_lm_head or labels is None or input_ids is None or not _packable(attention_mask, kwargs)
        plain = plain or kwargs.get("output_router_logits")  # MoE aux loss needs the model's own path
        if plain:
            return original(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=labels,
                fused_lm_head=fused_lm_head,
                **kwargs,
            )
        hidden, lay = _backbone_hidden(self, input_ids, attention_mask, row_tokens, pad_id, **kwargs)
        # Next-token targets: the token at t+1 is predicted from the hidden state at t (same shift as TRL's head).
        target = labels[:, 1:]
        mask = target != -100
        src = lay.index[:, :-1][mask]
        head = self.get_output_embeddings()
        per_token = ChunkedLogProbFunction.apply(
            hidden[src], head.weight, head.bias, target[mask], 1.0, 32768, None, 1.0, outputs
        )
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero), as TRL does.
        per_token = [None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token]
        log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = per_token
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        return FusedCausalLMOutput(
            loss=loss,
            log_probs=log_probs,
            entropy=entropy,
            log_sum_sq_probs=log_sum_sq_probs,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)


def packed_dpo_trainer(row_tokens: int) -> type:
    """TRL's DPOTrainer with policy and reference forwards padding-free, including the reference pass that
    precomputes log-probs (TRL runs it inside `__init__`, hence the hook there)."""
    from trl import DPOTrainer

    class PackedDPOTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pack()

        def _precompute_ref_logps(self, *args, **kwargs):
            self._pack()
            return super()._precompute_ref_logps(*args, **kwargs)

        def _pack(self) -> None:
            if getattr(self, "_packed", False):
                return
            # The same per-token fields TRL's own fused head computes for its metrics (and WPO weights).
            outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
            if self.use_weighting:
                outputs += ("log_sum_sq_probs",)
            policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            enable_packed_logprobs(policy, row_tokens, outputs)
            if self.ref_model is not None:
                enable_packed_logprobs(self.accelerator.unwrap_model(self.ref_model), row_tokens)
            self._packed = True

    return PackedDPOTrainer
