"""RLOO end to end through `rlhf/train.py rloo`: TRL's RLOOTrainer with a reward model from disk as reward."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from toy_reward import arithmetic_prompts, save_policy, save_token_reward_model, tiny_tokenizer  # noqa: E402

from rlhf import train  # noqa: E402


@pytest.mark.slow
def test_rloo_raises_heldout_reward(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny_tokenizer()
    policy = save_policy(tmp_path / "policy", tok)
    reward = save_token_reward_model(tmp_path / "reward", tok)
    prompts = arithmetic_prompts(tmp_path / "prefs.jsonl", n=60)
    out = tmp_path / "rloo"
    argv = ["rloo", "--model", policy, "--reward-model", reward, "--data", prompts, "--output-dir", str(out)]
    argv += ["--max-steps", "12", "--per-device-train-batch-size", "16", "--num-generations", "4"]
    argv += ["--response-length", "8", "--learning-rate", "2e-2", "--logging-steps", "4", "--test-fraction", "0.3"]
    assert train.main(argv) == 0

    res = json.loads((out / "eval.json").read_text())
    from rlhf.data import load_prompts, split_prompts

    assert res["heldout_prompts"] == len(split_prompts(load_prompts(prompts), None, 0.3, 42)[1])  # eval_prompts 64
    assert res["score"] > res["score_before"] + 0.05, res  # the reward model's held-out mean score rises
    assert res["kl"] < 10.0, res  # and the policy stays near the reference
    assert res["completions_per_s"] == pytest.approx(12 * 16 / res["train_s"])  # 12 steps x 16 completions

    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in logs if "reward" in r]  # TRL's mean reward of the training batches
    assert len(rewards) == 3 and rewards[-1] > rewards[0]
    assert "rloo" in (out / "README.md").read_text()
    before = AutoModelForCausalLM.from_pretrained(policy)
    after = AutoModelForCausalLM.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_rloo_requires_reward_model(tmp_path, capsys):
    assert train.main(["rloo", "--data", "x.jsonl", "--output-dir", str(tmp_path)]) == 2
    assert "--reward-model is required" in capsys.readouterr().err
