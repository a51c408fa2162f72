"""rlhf.packing: the padding-free forwards give what the padded ones give, and training follows the same loss curve."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

import rlhf.packing as pk
from rlhf import train
from rlhf.packing import (
    PACKING_ARCHITECTURES,
    enable_packed_logprobs,
    enable_packed_reward,
    first_fit_decreasing,
    layout,
)
from rlhf.trl_compat import add_fused_lm_head, find_packed_sequence_indices

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
    # transformers' reading of the restarts (what the models' masks use): one id per sequence, none shared in a row.
    seq = find_packed_sequence_indices(lay.position_ids).reshape(-1)
    ids_of = [set(seq[lay.index[i, :n]].tolist()) for i, n in enumerate(lengths)]
    assert all(len(s) == 1 for s in ids_of)
    rows = [int(lay.index[i, 0]) // lay.input_ids.size(1) for i in range(len(lengths))]
    assert len({(r, *s) for r, s in zip(rows, ids_of)}) == len(lengths)


# Each tiny config differs from the family's defaults only in size; grouped-query attention (2 KV heads) throughout.
# Mistral gets a sliding window shorter than the longest test sequence, so its windowed mask is packed too.
ARCH_OVERRIDES: dict[str, dict] = {"mistral": {"sliding_window": 8}}


def _config(model_type: str, **overrides):
    from transformers import AutoConfig

    if model_type == "gpt2":  # an architecture off the allow-list (learned absolute positions)
        kw = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)
    else:
        kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)  # fmt: skip
        kw.update(ARCH_OVERRIDES.get(model_type, {}))
    kw = dict(vocab_size=50, pad_token_id=0, bos_token_id=1, eos_token_id=2) | kw | overrides
    return AutoConfig.for_model(model_type, **kw)


def _tiny(kind: str, model_type: str = "llama"):
    """A tiny model of `model_type`, causal LM ("lm") or one-output reward model ("rm"), seeded."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if kind == "lm":
        return AutoModelForCausalLM.from_config(_config(model_type))
    return AutoModelForSequenceClassification.from_config(_config(model_type, num_labels=1))


@pytest.mark.parametrize("model_type", PACKING_ARCHITECTURES)
def test_packed_logprobs_and_gradients_match_the_padded_forward(model_type):
    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a "prompt" the loss ignores
    padded = _tiny("lm", model_type)
    packed = copy.deepcopy(padded)
    add_fused_lm_head(padded, outputs=FIELDS)
    add_fused_lm_head(packed)
    assert enable_packed_logprobs(packed, row_tokens=24, outputs=FIELDS)
    a = padded(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    b = packed(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    for name in FIELDS:
        torch.testing.assert_close(getattr(b, name).float(), getattr(a, name).float(), atol=1e-5, rtol=1e-5)
    assert (a.log_probs != 0).sum() == (labels[:, 1:] != -100).sum()  # the fields are non-trivial
    a.log_probs.sum().backward()
    b.log_probs.sum().backward()
    for p, q in zip(padded.parameters(), packed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", PACKING_ARCHITECTURES)
def test_packed_reward_logits_match_the_padded_forward(model_type):
    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    padded = _tiny("rm", model_type)
    packed = copy.deepcopy(padded)
    assert enable_packed_reward(packed, row_tokens=24)
    torch.testing.assert_close(packed(input_ids=ids, attention_mask=mask).logits,
                               padded(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)  # fmt: skip
    # Left padding (as some callers build batches) is not packable: it must fall through to the model's own path.
    left = torch.flip(mask, dims=[1])
    torch.testing.assert_close(packed(input_ids=ids, attention_mask=left).logits,
                               padded(input_ids=ids, attention_mask=left).logits)  # fmt: skip


def test_an_unlisted_architecture_stays_padded_after_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(pk, "_noticed", set())
    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    labels = ids.masked_fill(mask == 0, -100)
    rm, lm = _tiny("rm", "gpt2"), _tiny("lm", "gpt2")
    add_fused_lm_head(lm)
    forwards = (rm.forward, lm.forward)
    assert not enable_packed_reward(rm, row_tokens=24)
    assert not enable_packed_logprobs(lm, row_tokens=24)
    assert (rm.forward, lm.forward) == forwards  # untouched: the model's own padded path
    notice = capsys.readouterr().out.splitlines()
    assert len(notice) == 1 and notice[0].startswith("[packing] gpt2 is not among the architectures"), notice
    assert "training padded" in notice[0]
    out = lm(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    assert (out.log_probs != 0).sum() == (labels[:, 1:] != -100).sum()


def test_the_allow_list_guards_a_real_difference(monkeypatch):
    # GPT-2 does not read restarting position ids as sequence boundaries: forced to pack, it scores differently.
    # This is what the allow-list keeps away, and it shows the equality tests above can fail.
    monkeypatch.setattr(pk, "PACKING_ARCHITECTURES", ("gpt2",))
    ids, mask = right_padded([20, 7, 13, 3, 17, 11])
    padded = _tiny("rm", "gpt2")
    packed = copy.deepcopy(padded)
    assert enable_packed_reward(packed, row_tokens=24)
    gap = packed(input_ids=ids, attention_mask=mask).logits - padded(input_ids=ids, attention_mask=mask).logits
    assert gap.abs().max() > 1e-3


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
    assert max(diffs) > 0  # not bit-identical: the packed path really ran (a silent fallback would match exactly)


def test_an_unlisted_architecture_trains_padded(inputs, tmp_path, monkeypatch, capsys):
    """DPO with --packing on a GPT-2: one notice, then exactly the padded run's losses."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(pk, "_noticed", set())
    _, _, data = inputs
    tok = arithmetic_tokenizer()
    torch.manual_seed(0)
    config = _config("gpt2", vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    curves = {}
    for flag in ("false", "true"):
        out = tmp_path / f"dpo-{flag}"
        argv = ["dpo", "--model", str(tmp_path / "gpt2"), "--data", str(data), "--output-dir", str(out),
                "--max-steps", "3", "--per-device-train-batch-size", "8", "--learning-rate", "1e-3",
                "--logging-steps", "1", "--packing", flag, "--pack-row-tokens", "64"]  # fmt: skip
        assert train.main(argv) == 0
        curves[flag] = losses(out)
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[packing]")]
    assert len(notices) == 1 and "gpt2" in notices[0], notices  # policy and reference: told once
    assert len(curves["true"]) == 3 and curves["true"] == curves["false"]
