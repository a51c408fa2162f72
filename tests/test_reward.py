"""rlhf.reward through `python rlhf/train.py reward`: a tiny reward model learns to prefer correct sums."""

from __future__ import annotations

import json

import pytest
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import train
from rlhf.data import load_preferences
from rlhf.reward import score


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    model = save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=2, hidden=64, heads=4)
    # All six near misses per prompt: more signal per prompt makes held-out generalisation less seed-sensitive.
    train_path, _ = write_synthetic_export(root / "data", test_fraction=0.2, n_prompts=100, wrong_per_prompt=6)
    return root, model, train_path


@pytest.fixture(scope="module")
def trained(inputs):
    root, model, train_path = inputs
    out = root / "run"
    argv = ["reward", "--model", model, "--data", str(train_path), "--output-dir", str(out), "--max-steps", "600"]
    argv += ["--learning-rate", "1e-3", "--per-device-train-batch-size", "16", "--logging-steps", "100"]
    from rlhf import reward

    calls = []  # every score() call of the run, with how many conversations it scored
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reward, "score", lambda model, tok, p, r, *a, **k: calls.append(len(r)) or score(model, tok, p, r))
        assert train.main(argv) == 0
    (out / "score_calls.json").write_text(json.dumps(calls))
    return out


@pytest.mark.slow
def test_heldout_accuracy_beats_chance(trained):
    results = json.loads((trained / "eval.json").read_text())
    assert results["eval_pairs"] == len(load_preferences(trained.parent / "data/prefs-test.parquet"))
    assert results["eval_accuracy"] >= 0.7, results  # 20 held-out prompts, none seen in training
    # The held-out set is scored once, by the trained model, chosen and rejected in one length-sorted pass (an
    # untrained head's "before" accuracy would say nothing).
    assert json.loads((trained / "score_calls.json").read_text()) == [2 * results["eval_pairs"]]
    assert "eval_accuracy_before" not in results
    log = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert log[-1]["split"] == "eval" and log[-1]["eval_accuracy"] == results["eval_accuracy"]


@pytest.mark.slow
def test_score_ranks_correct_sums_and_reports_length_correlation(trained):
    from rlhf.reward import heldout_report, load_reward_model

    tok = arithmetic_tokenizer()
    model = load_reward_model(str(trained), tok)
    prompts = [f"What is {a} + {b} ?" for a, b in [(2, 3), (4, 4), (7, 1), (6, 9)]]
    right = score(model, tok, prompts, ["5", "8", "8", "15"])
    wrong = score(model, tok, prompts, ["6", "5", "9", "12"])
    assert len(right) == 4 and sum(r > w for r, w in zip(right, wrong)) >= 3
    # Batching and padding must not change a score.
    assert score(model, tok, prompts[:1], ["5"], batch_size=1)[0] == pytest.approx(right[0], abs=1e-4)

    from datasets import Dataset

    varied = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for p, c, r in zip(prompts, ["5", "8", "8 8", "15"], ["6 6 6", "5", "9", "12 12"])
        ]
    )
    rep = heldout_report(model, tok, varied)
    assert -1 <= rep["eval_length_pearson"] <= 1 and -1 <= rep["eval_length_spearman"] <= 1


def test_lora_trains_adapters_and_saves_a_plain_checkpoint(inputs, tmp_path):
    import torch
    from safetensors.torch import load_file

    root, model, train_path = inputs
    out = tmp_path / "lora"
    argv = ["reward", "--model", model, "--data", str(train_path), "--output-dir", str(out), "--max-steps", "20"]
    assert train.main(argv + ["--lora-r", "4", "--learning-rate", "1e-2", "--per-device-train-batch-size", "8"]) == 0
    before, after = load_file(f"{model}/model.safetensors"), load_file(out / "model.safetensors")
    assert not any("lora" in k for k in after)  # merged: loadable without peft
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[key], after[key])  # the merged adapter moved the backbone
    assert "score.weight" in after
    held_out = load_preferences(root / "data" / "prefs-test.parquet")  # the export's sibling test split
    assert json.loads((out / "eval.json").read_text())["eval_pairs"] == len(held_out) > 50
