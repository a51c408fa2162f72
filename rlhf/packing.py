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

Whether a model really reads restarting position ids as boundaries is up to its modelling code, so packing is on only
for the architectures in `PACKING_ARCHITECTURES`, each checked by tests/test_packing.py (packed forward = padded
forward, log-probs, gradients and rewards). Any other model trains padded, after a one-line notice. The TRL and
transformers internals this relies on come through rlhf/trl_compat.py.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch

# model_type values whose packed forward tests/test_packing.py checks against the padded one (with transformers as
# pinned): each builds its causal mask with transformers' `create_causal_mask(..., position_ids=...)`.
PACKING_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
_noticed: set[str] = set()  # architectures already told they train padded (one notice per process)


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


def packing_supported(model: Any) -> bool:
    """Whether `model`'s architecture is on the tested allow-list; if not, print (once per architecture) that it
    trains padded. Not an error: the padded path gives the same results, only slower."""
    kind = getattr(model.config, "model_type", None) or type(model).__name__
    if kind in PACKING_ARCHITECTURES:
        return True
    if kind not in _noticed:
        _noticed.add(kind)
        print(f"[packing] {kind} is not among the architectures packing is tested on "
              f"({', '.join(PACKING_ARCHITECTURES)}); training padded", flush=True)  # fmt: skip
    return False


def enable_packed_reward(model: Any, row_tokens: int) -> bool:
    """Make a `*ForSequenceClassification` model score right-padded batches padding-free (same logits).
    Returns whether it did (False: an architecture off the allow-list, left padded after a notice)."""
    import rlhf.trl_compat  # noqa: F401  (checks the transformers version whose masking packing relies on)

    if not packing_supported(model):
        return False
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
    return True


def _check_unscaled_logits(model: Any) -> None:
    cfg = model.config.get_text_config()
    scales = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier", "lm_head_multiplier")
    unusual = [a for a in scales if getattr(cfg, a, None) not in (None, 1.0)]
    if unusual:  # TRL's head rescales these; rather than re-derive each family's rule, leave such models padded
        raise ValueError(f"packing: {type(model).__name__} scales its logits ({', '.join(unusual)}); use --no-packing")


def enable_packed_logprobs(model: Any, row_tokens: int, outputs: tuple[str, ...] = ("log_probs",)) -> bool:
    """Wrap a causal LM (after TRL's `add_fused_lm_head`) so `model(..., labels=, fused_lm_head=True)` runs packed.

    Returns TRL's `FusedCausalLMOutput` in the padded shape [batch, seq-1]: per-token fields are zero where the
    label is -100, exactly as TRL's own fused head leaves them. `outputs` are the optional per-token fields
    (entropy, mean_logits, is_top1, ...) the trainer's metrics read. Returns whether it wrapped the model (False: an
    architecture off the allow-list, left padded after a notice).
    """
    from rlhf.trl_compat import FusedCausalLMOutput, chunked_logprobs

    if not packing_supported(model):
        return False
    _check_unscaled_logits(model)
    original = model.forward
    pad_id = model.config.get_text_config().pad_token_id
    pad_id = 0 if pad_id is None else pad_id

    def forward(self, *args, fused_lm_head=False, labels=None, attention_mask=None, **kwargs):
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        plain = not fused_lm_head or labels is None or input_ids is None or not _packable(attention_mask, kwargs)
        plain = plain or kwargs.get("output_router_logits")  # MoE aux loss needs the model's own path
        if plain:
            return original(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            fused_lm_head=fused_lm_head, **kwargs)  # fmt: skip
        hidden, lay = _backbone_hidden(self, input_ids, attention_mask, row_tokens, pad_id, **kwargs)
        # Next-token targets: the token at t+1 is predicted from the hidden state at t (same shift as TRL's head).
        target = labels[:, 1:]
        mask = target != -100
        src = lay.index[:, :-1][mask]
        per_token = chunked_logprobs(hidden[src], self.get_output_embeddings(), target[mask], outputs)
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero), as TRL does.
        per_token = [None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token]
        log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = per_token
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs,
                                   mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)  # fmt: skip

    model.forward = types.MethodType(forward, model)
    return True


def packed_dpo_trainer(row_tokens: int) -> type:
    """TRL's DPOTrainer with policy and reference forwards padding-free, including the reference pass that
    precomputes log-probs (TRL runs it inside `__init__`; rlhf.trl_compat hooks it). Models off the allow-list
    train padded."""
    from rlhf.trl_compat import dpo_trainer_with_hook

    def pack(trainer: Any) -> None:
        if getattr(trainer, "_packed", False):
            return
        # The same per-token fields TRL's own fused head computes for its metrics (and WPO weights).
        outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
        if trainer.use_weighting:
            outputs += ("log_sum_sq_probs",)
        policy = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        enable_packed_logprobs(policy, row_tokens, outputs)
        if trainer.ref_model is not None:
            enable_packed_logprobs(trainer.accelerator.unwrap_model(trainer.ref_model), row_tokens)
        trainer._packed = True

    return dpo_trainer_with_hook(pack)
