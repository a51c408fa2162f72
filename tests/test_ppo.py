"""PPO end to end through `rlhf/train.py ppo`: a tiny policy, a hand-built reward model on disk, real rollouts."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from toy_reward import arithmetic_prompts, save_policy, save_token_reward_model, tiny_tokenizer  # noqa: E402

from rlhf import train  # noqa: E402


def n_heldout(prompts: str, fraction: float, seed: int = 42) -> int:
    """How many prompts the held-out split (rlhf.data.split_prompts, default seed) sets aside."""
    from rlhf.data import load_prompts, split_prompts

    return len(split_prompts(load_prompts(prompts), None, fraction, seed)[1])


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
    assert res["heldout_prompts"] == min(18, n_heldout(toy["prompts"], 0.3))
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


def test_ppo_requires_reward_model(toy, tmp_path, capsys):
    assert train.main(["ppo", "--model", toy["policy"], "--data", toy["prompts"], "--output-dir", str(tmp_path)]) == 2
    assert "--reward-model is required" in capsys.readouterr().err


def test_ppo_rejects_reward_model_with_other_tokenizer(toy, tmp_path, monkeypatch):
    from fixtures import arithmetic_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = save_token_reward_model(tmp_path / "rm_other", arithmetic_tokenizer(max_number=50))
    argv = ["ppo", "--model", toy["policy"], "--reward-model", other, "--data", toy["prompts"]]
    with pytest.raises(ValueError, match="different tokenizer"):
        train.main(argv + ["--output-dir", str(tmp_path / "out")])


# -- pieces of the loop, on the same toy models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(toy):
    from transformers import AutoModelForCausalLM

    from rlhf.data import load_prompts
    from rlhf.ppo import _policy_and_value, encode_prompts
    from rlhf.reward import load_reward_model

    tok = tiny_tokenizer()
    policy = AutoModelForCausalLM.from_pretrained(toy["policy"])
    ref = AutoModelForCausalLM.from_pretrained(toy["policy"]).eval().requires_grad_(False)
    rm = load_reward_model(toy["reward"], tok).eval().requires_grad_(False)
    model = _policy_and_value(policy, load_reward_model(toy["reward"], tok))
    queries = encode_prompts(load_prompts(toy["prompts"]), tok, 10**9, "train")
    return {"tok": tok, "model": model, "ref": ref, "rm": rm, "queries": queries}


def test_reward_shift_centres_reference_samples_on_zero(models, tmp_path):
    from accelerate import Accelerator

    from rlhf import ppo
    from rlhf.reward import load_reward_model

    tok, ref, queries = models["tok"], models["ref"], models["queries"]
    # A reward model whose reference samples score well away from 0, so the shift has something to remove.
    rm_dir = save_token_reward_model(tmp_path / "rm", tok, target_words=("user", "What", "is", "+", "?"))
    rm = load_reward_model(rm_dir, tok)
    cfg = ppo.PPOArgs(response_length=8, temperature=1.0, reward_norm_prompts=60, seed=0)
    shift = ppo.reward_shift(Accelerator(cpu=True), ref, rm, tok, queries, cfg, tok)
    assert abs(shift) > 0.2
    # Fresh reference samples on the training prompts score ~0 once shifted, as N+ normalisation intends.
    torch.manual_seed(123)
    fresh = ppo.sample(ref, queries, cfg, tok)
    raw = ppo.score_responses(rm, tok, tok, [q.messages for q in queries], fresh["responses"], 32)
    assert abs(float((raw - shift).mean())) < 0.05, (float(raw.mean()), shift)
    # ... and advantages() starts from the shifted scores.
    batch = ppo.rollout(models["model"], ref, rm, tok, queries[:4], cfg, tok)
    adv = ppo.advantages(batch, cfg, 0.05, shift)
    expected = batch["scores"] - shift - cfg.missing_eos_penalty * (~batch["has_eos"]).float()
    assert adv["penalised_scores"].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert ppo.reward_shift(None, ref, rm, tok, queries, ppo.PPOArgs(reward_norm_prompts=0), tok) == 0.0


def test_gradient_accumulation_gives_the_same_update(models):
    import copy
    import dataclasses

    from accelerate import Accelerator

    from rlhf import ppo

    tok, model, queries = models["tok"], models["model"], models["queries"][:6]
    cfg = ppo.PPOArgs(response_length=6, temperature=1.0, num_ppo_epochs=2, num_mini_batches=2)
    torch.manual_seed(0)
    batch = ppo.rollout(model.eval(), models["ref"], models["rm"], tok, queries, cfg, tok)
    adv = ppo.advantages(batch, cfg, 0.05)
    batch.update(advantages=adv["advantages"], returns=adv["returns"])
    before = torch.cat([p.detach().flatten() for p in model.parameters()])

    def update(accumulation: int) -> torch.Tensor:
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)  # update = -lr * gradient: any scaling error would show
        torch.manual_seed(1)  # same mini-batch permutation
        ppo.ppo_update(
            Accelerator(cpu=True), m, opt, batch, dataclasses.replace(cfg, gradient_accumulation_steps=accumulation)
        )
        assert all(p.grad is None for p in m.parameters())  # stepped and zeroed at the end of every mini-batch
        return torch.cat([p.detach().flatten() for p in m.parameters()]) - before

    # Mini-batches of 3 rollouts: 2 micro-batches of 2 + 1, or 3 of 1, must give the unaccumulated update.
    full, two, three = update(1), update(2), update(3)
    assert full.abs().max() > 1e-4
    torch.testing.assert_close(two, full, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(three, full, atol=1e-6, rtol=1e-4)


def test_weight_decay_and_learning_rate_reach_the_optimizers(models):
    from trl import RewardConfig

    from rlhf import ppo
    from rlhf.common import trl_args
    from rlhf.reward import RewardArgs
    from rlhf.rloo import RLOOArgs, _trl_config

    model = models["model"]
    opt = ppo.make_optimizer(ppo.PPOArgs(weight_decay=0.1, learning_rate=0.0), model)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_of[id(named["policy.model.layers.0.self_attn.q_proj.weight"])] == 0.1
    assert decay_of[id(named["value_model.score.weight"])] == 0.1
    assert decay_of[id(named["policy.model.norm.weight"])] == 0.0  # norms and biases never decay (as HF's Trainer)
    assert {g["lr"] for g in opt.param_groups} == {0.0}  # 0 is a learning rate, not "unset"
    default = ppo.make_optimizer(ppo.PPOArgs(), model)
    assert {g["weight_decay"] for g in default.param_groups} == {0.0}  # HF/TRL's default, not AdamW's 0.01
    assert {g["lr"] for g in default.param_groups} == {ppo.DEFAULT_LR}
    assert trl_args(RewardArgs(weight_decay=0.1), RewardConfig).weight_decay == 0.1
    assert _trl_config(RLOOArgs(weight_decay=0.1, learning_rate=0.0)).weight_decay == 0.1
    assert _trl_config(RLOOArgs(learning_rate=0.0)).learning_rate == 0.0


def test_learning_rate_zero_leaves_weights_and_flags_are_wired(toy, tmp_path, monkeypatch):
    """--learning-rate 0 trains nothing (weight decay included); --save-steps writes checkpoints;
    --gradient-checkpointing turns it on for policy and value model."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.ppo import PPOArgs, load_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "ppo"
    argv = ["ppo", "--model", toy["policy"], "--reward-model", toy["reward"], "--data", toy["prompts"]]
    argv += ["--output-dir", str(out), "--max-steps", "2", "--per-device-train-batch-size", "8"]
    argv += ["--response-length", "6", "--learning-rate", "0", "--weight-decay", "0.1", "--eval-prompts", "4"]
    argv += ["--save-steps", "1", "--gradient-checkpointing", "--reward-norm-prompts", "16"]
    assert train.main(argv) == 0
    start = AutoModelForCausalLM.from_pretrained(toy["policy"])
    for saved in (out, out / "checkpoint-1", out / "checkpoint-2"):
        after = AutoModelForCausalLM.from_pretrained(saved)
        assert all(torch.equal(a, b) for a, b in zip(start.parameters(), after.parameters())), saved
    assert (out / "checkpoint-2" / "value_model" / "config.json").exists()
    res = json.loads((out / "eval.json").read_text())
    assert math.isfinite(res["reward_shift"])
    # the speed figures a user plans with: 2 steps x 8 rollouts over the time spent sampling them
    assert res["rollouts_per_s"] == pytest.approx(16 / res["rollout_s"]) and res["update_s"] > 0
    assert res["score"] == pytest.approx(res["score_before"], abs=1e-6)  # same policy, same seed, same samples
    cfg = PPOArgs(model=toy["policy"], reward_model=toy["reward"], gradient_checkpointing=True)
    _, _, policy, _, _, value = load_models(cfg, "cpu")
    for m in (policy, value):
        assert any(getattr(layer, "gradient_checkpointing", False) for layer in m.modules())
