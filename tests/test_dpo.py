"""rlhf.dpo through `python rlhf/train.py dpo`: held-out implicit reward margin rises; the reference is frozen."""

from __future__ import annotations

import json

import pytest
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import train


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    model = save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=2, hidden=64, heads=4)
    train_path, _ = write_synthetic_export(root / "data", test_fraction=0.2, n_prompts=100, wrong_per_prompt=4)
    return root, model, train_path


def _argv(model, data, out, *extra):
    return ["dpo", "--model", model, "--data", str(data), "--output-dir", str(out), "--learning-rate", "1e-3", *extra]


@pytest.mark.slow
def test_heldout_margin_rises(inputs):
    root, model, data = inputs
    out = root / "run"
    argv = _argv(model, data, out, "--max-steps", "400", "--beta", "1.0", "--per-device-train-batch-size", "16")
    assert train.main(argv + ["--logging-steps", "100"]) == 0
    r = json.loads((out / "eval.json").read_text())
    import pyarrow.parquet as pq

    heldout = pq.read_table(data.with_name("prefs-test.parquet"))  # the export's held-out prompts
    assert r["eval_pairs"] == heldout.num_rows > 0
    assert r["eval_margin_before"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    assert r["eval_margin"] > 0.3, r
    assert r["eval_accuracy"] > 0.55, r
    assert r["eval_loss"] < r["eval_loss_before"]
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()


def test_reference_is_the_frozen_starting_policy(inputs, tmp_path):
    import torch

    from rlhf.dpo import DPOArgs, build_trainer

    root, model, data = inputs
    cfg = DPOArgs(
        model=model,
        data=str(data),
        output_dir=str(tmp_path),
        max_steps=5,
        learning_rate=1e-2,
        beta=1.0,
        precompute_ref_log_probs=False,
    )
    trainer, _ = build_trainer(cfg)
    policy, ref = trainer.model, trainer.ref_model
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    assert ref is not policy and not any(p.requires_grad for p in ref.parameters())
    # Same weights as the policy we started from (not a model TRL loaded by name from the config).
    assert all(torch.equal(start[k], v) for k, v in ref.state_dict().items())
    assert trainer.evaluate()["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    trainer.train()
    assert all(torch.equal(start[k], v) for k, v in ref.state_dict().items())  # frozen through training
    assert any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())  # the policy moved


def test_precomputed_reference_keeps_no_model_and_matches_the_frozen_copy(inputs, tmp_path):
    """The default (precompute) holds no second model, and its reference log-probs are the frozen copy's."""
    from rlhf.dpo import DPOArgs, build_trainer

    root, model, data = inputs
    kw = dict(model=model, data=str(data), max_steps=5, learning_rate=1e-2, beta=1.0, packing=False)
    pre, _ = build_trainer(DPOArgs(output_dir=str(tmp_path / "pre"), **kw))
    assert pre.ref_model is None
    copy_, _ = build_trainer(DPOArgs(output_dir=str(tmp_path / "copy"), precompute_ref_log_probs=False, **kw))
    want = copy_._precompute_ref_logps(copy_.train_dataset, "train", 8)  # scored by the explicit frozen copy
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        assert pre.train_dataset[col] == pytest.approx(want[col], abs=1e-4)
    assert pre.evaluate()["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    pre.train()  # the trained policy is scored against the precomputed start, not against itself
    assert pre.evaluate()["eval_rewards/margins"] != pytest.approx(0.0, abs=1e-4)


def test_max_steps_bounds_the_reference_pass(inputs, tmp_path):
    """--max-steps 2 with 4 pairs per step: the reference is scored on the 8 pairs training draws, not on all."""
    from rlhf.dpo import DPOArgs, build_trainer

    root, model, data = inputs
    kw = dict(model=model, data=str(data), learning_rate=1e-2, per_device_train_batch_size=2,
              gradient_accumulation_steps=2, packing=False)  # fmt: skip
    capped, info = build_trainer(DPOArgs(output_dir=str(tmp_path / "capped"), max_steps=2, **kw))
    assert len(capped.train_dataset) == info["train"]["pairs_used"] == 8 < info["train"]["pairs"]
    again, _ = build_trainer(DPOArgs(output_dir=str(tmp_path / "again"), max_steps=2, **kw))
    assert capped.train_dataset["ref_chosen_logps"] == again.train_dataset["ref_chosen_logps"]  # seeded: resumable
    whole, info = build_trainer(DPOArgs(output_dir=str(tmp_path / "whole"), num_train_epochs=1, **kw))
    assert len(whole.train_dataset) == info["train"]["pairs"] and "pairs_used" not in info["train"]
    capped.train()
    assert capped.state.global_step == 2


@pytest.mark.parametrize(
    "loss, extra",
    [("ipo", ["--precompute-ref-log-probs"]), ("sigmoid_norm", []), ("rdpo", ["--rdpo-alpha", "0.5"]), ("ld", [])],
)
def test_loss_variants_train(inputs, tmp_path, loss, extra):
    root, model, data = inputs
    argv = _argv(
        model, data, tmp_path, "--max-steps", "30", "--loss-type", loss, "--per-device-train-batch-size", "16"
    )
    assert train.main(argv + extra) == 0
    r = json.loads((tmp_path / "eval.json").read_text())
    assert r["eval_margin_before"] == pytest.approx(0.0, abs=1e-5)
    assert r["eval_margin"] != r["eval_margin_before"]  # the policy left the reference
    cfg = (tmp_path / "config.yaml").read_text()
    assert f"loss_type: {loss}" in cfg
