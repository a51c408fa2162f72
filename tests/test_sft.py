"""rlhf.sft through `python rlhf/train.py sft`: held-out completion loss falls on the chosen responses."""

from __future__ import annotations

import json

from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import train
from rlhf.sft import to_prompt_completion


def test_sft_lowers_heldout_loss(tmp_path):
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=2, hidden=64, heads=4)
    data, _ = write_synthetic_export(tmp_path / "data", test_fraction=0.2, n_prompts=60, wrong_per_prompt=2)
    out = tmp_path / "run"
    argv = ["sft", "--model", model, "--data", str(data), "--output-dir", str(out), "--max-steps", "60"]
    assert train.main(argv + ["--learning-rate", "3e-3", "--per-device-train-batch-size", "16"]) == 0
    r = json.loads((out / "eval.json").read_text())
    # Untrained: ~log(116) = 4.75 nats per token; after: the template tokens and answer range are learnt.
    assert r["eval_loss_before"] > 4.0 and r["eval_loss"] < 0.6 * r["eval_loss_before"], r
    assert r["train_pairs"] == 96 and r["eval_pairs"] == 24
    assert (out / "model.safetensors").exists()


def test_one_sft_row_per_prompt_and_chosen():
    from datasets import Dataset
    from fixtures import synthetic_arithmetic

    pairs = Dataset.from_list(synthetic_arithmetic(n_prompts=5, wrong_per_prompt=3))
    rows = to_prompt_completion(pairs)
    assert len(pairs) == 15 and len(rows) == 5  # duplicates of (prompt, chosen) are trained once
    assert rows.column_names == ["prompt", "completion"] and rows[0]["completion"][0]["role"] == "assistant"
