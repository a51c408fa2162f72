"""rlhf.packing: the padding-free forwards give what the padded ones give, and training follows the same loss curve."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rlhf import train
from rlhf.data import arithmetic_tokenizer, write_synthetic_export
from rlhf.models import save_tiny_model, tiny_config
from rlhf.packing import enable_packed_logprobs, enable_packed_reward, first_fit_decreasing, layout

FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")


def right_padded(lengths: list[int], vocab: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def test_first_fit_decreasing_fills_rows_and_keeps_every_sequence():
    rows = first_fit_decreasing([5, 9, 3, 7, 2, 12], capacity=12)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert rows[0] == [5]  # the over-long-or-full one alone
    assert all(sum([5, 9, 3, 7, 2, 12][i] for i in r) <= 12 for r in rows)
    assert len(rows) == 4  # 38 tokens cannot fit in 3 rows of 12


def test_layout_round_trips_tokens_and_restarts_positions():
    lengths = [6, 2, 5, 1, 4]
    ids, mask = right_padded(lengths)
    lay = layout(ids, mask, row_tokens=8, pad_id=0)
    flat = lay.input_ids.reshape(-1)
    for i, n in enumerate(lengths):
        assert torch.equal(flat[lay.index[i, :n]], ids[i, :n])  # every real token is where the index says
        assert (lay.index[i, n:] == -1).all()
        assert torch.equal(lay.position_ids.reshape(-1)[lay.index[i, :n]], torch.arange(n))
    assert lay.input_ids.numel() < ids.numel()  # fewer slots than the padded batch: the point of packing


def _tiny(kind: str):
    """A tiny Llama, causal LM ("lm") or one-output reward model ("rm"), seeded."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if kind == "lm":
        return AutoModelForCausalLM.from_config(tiny_config(50, pad_token_id=0))
    return AutoModelForSequenceClassification.from_config(tiny_config(50, pad_token_id=0, num_labels=1))


def test_packed_logprobs_and_gradients_match_the_padded_forward():
    from trl.trainer.utils import add_fused_lm_head

    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a "prompt" the loss ignores
    padded = _tiny("lm")
    packed = copy.deepcopy(padded)
    add_fused_lm_head(padded, outputs=FIELDS)
    add_fused_lm_head(packed)
    enable_packed_logprobs(packed, row_tokens=24, outputs=FIELDS)
    a = padded(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    b = packed(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    for name in FIELDS:
        torch.testing.assert_close(getattr(b, name).float(), getattr(a, name).float(), atol=1e-5, rtol=1e-5)
    assert (a.log_probs != 0).sum() == (labels[:, 1:] != -100).sum()  # the fields are non-trivial
    a.log_probs.sum().backward()
    b.log_probs.sum().backward()
    for p, q in zip(padded.parameters(), packed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)


def test_packed_reward_logits_match_the_padded_forward():
    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    padded = _tiny("rm")
    packed = copy.deepcopy(padded)
    enable_packed_reward(packed, row_tokens=24)
    torch.testing.assert_close(packed(input_ids=ids, attention_mask=mask).logits,
                               padded(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)  # fmt: skip
    # Left padding (as some callers build batches) is not packable: it must fall through to the model's own path.
    left = torch.flip(mask, dims=[1])
    torch.testing.assert_close(packed(input_ids=ids, attention_mask=left).logits,
                               padded(input_ids=ids, attention_mask=left).logits)  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    model = save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=2, hidden=64, heads=4)
    train_path, _ = write_synthetic_export(root / "data", test_fraction=0.2, n_prompts=60, wrong_per_prompt=4)
    return root, model, train_path


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("method, lr", [("reward", "1e-2"), ("dpo", "1e-3")])
def test_training_follows_the_same_loss_curve_packed_or_padded(inputs, method, lr):
    root, model, data = inputs
    curves = {}
    for packing in ("false", "true"):
        out = root / f"{method}-{packing}"
        argv = [method, "--model", model, "--data", str(data), "--output-dir", str(out), "--max-steps", "30",
                "--per-device-train-batch-size", "8", "--learning-rate", lr, "--logging-steps", "1",
                "--packing", packing, "--pack-row-tokens", "64"]  # fmt: skip
        assert train.main(argv) == 0
        curves[packing] = losses(out)
    assert len(curves["true"]) == 30
    assert sum(curves["true"][-5:]) < sum(curves["true"][:5])  # it is training, not sitting still
    # Step by step the same loss, to float tolerance. Summation order differs between the two layouts, and at a
    # learning rate this high the rounding differences compound: tight for the first steps, looser later (a wrong
    # mask or position would be off by far more, from the first step).
    diffs = [abs(a - b) for a, b in zip(curves["true"], curves["false"])]
    assert max(diffs[:10]) < 1e-3 and max(diffs) < 2e-2, diffs
