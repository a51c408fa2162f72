"""PPO end to end through `rlhf/train.py ppo`: a tiny policy, a hand-built reward model on disk, real rollouts."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")

from toy_reward import arithmetic_prompts, save_policy, save_token_reward_model, tiny_tokenizer  # noqa: E402

from rlhf import train  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo_toy")
    tok = tiny_tokenizer()
    return {
        "policy": save_policy(d / "policy", tok),
        "reward": save_token_reward_model(d / "reward", tok),
        "prompts": arithmetic_prompts(d / "prefs.jsonl", n=60),
    }


@pytest.mark.slow
def test_ppo_raises_heldout_reward_with_bounded_kl(toy, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "ppo"
    argv = ["ppo", "--model", toy["policy"], "--reward-model", toy["reward"], "--data", toy["prompts"]]
    argv += ["--output-dir", str(out), "--max-steps", "14", "--per-device-train-batch-size", "16"]
    argv += ["--response-length", "8", "--temperature", "1.0", "--learning-rate", "5e-3", "--test-fraction", "0.3"]
    argv += ["--missing-eos-penalty", "0.1", "--adaptive-kl", "--kl-coef", "0.05", "--kl-target", "2.0"]
    argv += ["--kl-horizon", "500", "--logging-steps", "1", "--eval-prompts", "18"]
    assert train.main(argv) == 0

    res = json.loads((out / "eval.json").read_text())
    assert res["heldout_prompts"] == 18
    assert res["kl_before"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its own reference
    # The reward model's mean score on held-out prompts rises clearly ...
    assert res["score"] > res["score_before"] + 0.1, res
    # ... while the policy stays near its reference: KL (nats per 8-token response) moved but is bounded.
    assert 0.05 < res["kl"] < 10.0, res
    assert res["final_kl_coef"] != pytest.approx(0.05)  # the adaptive controller acted

    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "step" in s]
    assert [s["step"] for s in train_steps] == list(range(1, 15))
    assert all(math.isfinite(s["loss/policy"]) and math.isfinite(s["loss/value"]) for s in train_steps)
    assert steps[-1]["split"] == "eval"
    assert (out / "config.yaml").exists() and "ppo" in (out / "README.md").read_text()

    # The saved policy is the trained one, not the starting weights.
    before = AutoModelForCausalLM.from_pretrained(toy["policy"])
    after = AutoModelForCausalLM.from_pretrained(out)
    moved = [not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters())]
    assert any(moved)


def test_ppo_requires_reward_model(toy, tmp_path):
    with pytest.raises(SystemExit, match="--reward-model"):
        train.main(["ppo", "--model", toy["policy"], "--data", toy["prompts"], "--output-dir", str(tmp_path)])


def test_ppo_rejects_reward_model_with_other_tokenizer(toy, tmp_path, monkeypatch):
    from rlhf.data import arithmetic_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = save_token_reward_model(tmp_path / "rm_other", arithmetic_tokenizer(max_number=50))
    argv = ["ppo", "--model", toy["policy"], "--reward-model", other, "--data", toy["prompts"]]
    with pytest.raises(ValueError, match="different tokenizer"):
        train.main(argv + ["--output-dir", str(tmp_path / "out")])
