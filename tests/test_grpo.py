"""GRPO through `rlhf/train.py grpo`: TRL's GRPOTrainer on a reward model blended with verifiers (rlhf/grpo.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

from toy_reward import save_policy, save_token_reward_model, tiny_tokenizer  # noqa: E402

from rlhf import train  # noqa: E402


def checkable_pool(path, n: int = 30, unverified: int = 0) -> str:
    """A pool of prompts with one right answer a tiny model can learn to give on unseen prompts: "What is n - n ?"
    (0) and "What is n + 1 - n ?" (1), each with a numeric verifier; the answer depends on the prompt's form, not
    on n. Plus `unverified` prompts "What is a + b ?" without a verifier (the reward model alone scores those)."""
    rows = []
    for k in range(1, n + 1):
        for text, answer in ((f"What is {k} - {k} ?", 0), (f"What is {k} + 1 - {k} ?", 1)):
            meta = {"verifier": {"type": "numeric", "answer": answer}}
            rows.append({"prompt_id": f"q{len(rows)}", "prompt": text, "response_id": "r", "response": str(answer),
                         "source": "oracle", "meta": json.dumps(meta)})  # fmt: skip
    for k in range(unverified):
        a, b = k % 10, 3 + k // 10
        rows.append({"prompt_id": f"u{k}", "prompt": f"What is {a} + {b} ?", "response_id": "r",
                     "response": str(a + b), "source": "oracle", "meta": "{}"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny_tokenizer()
    return {
        "tok": tok,
        "policy": save_policy(tmp_path / "policy", tok),
        "reward": save_token_reward_model(tmp_path / "reward", tok),
    }


def test_blended_reward_weights_verdicts_and_unverified_prompts(toy):
    """rm_weight * score + verifier_weight * [verified] where a prompt has a verifier, the score alone where it has
    none; the score is the one scoring path's (rlhf.reward.reward_function); with no reward model, the verdict."""
    from rlhf.grpo import blend, blended_reward
    from rlhf.reward import load_reward_model, reward_function

    tok = toy["tok"]
    rm_model = load_reward_model(toy["reward"], tok).eval()
    rm = reward_function(rm_model, tok, tok)
    prompts = [[{"role": "user", "content": "What is 2 - 2 ?"}]] * 3 + [
        [{"role": "user", "content": "What is 2 + 3 ?"}]
    ]
    texts = ["0", "7", "the answer is 0", "5"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    spec = json.dumps({"type": "numeric", "answer": 0})
    kw = dict(prompts=prompts, completions=texts, completion_ids=ids, verifier=[spec, spec, spec, ""])
    scores = rm(prompts=prompts, completions=texts, completion_ids=ids)
    logged = {}

    got = blended_reward(tok, rm, 0.5, 2.0)(**kw, log_metric=logged.__setitem__)
    want = [0.5 * scores[0] + 2.0, 0.5 * scores[1], 0.5 * scores[2] + 2.0, 0.5 * scores[3]]
    assert got == pytest.approx(want)
    assert logged["verifier/accuracy"] == pytest.approx(2 / 3)  # the unverified prompt is not counted
    assert logged["rm/score"] == pytest.approx(sum(scores) / 4)
    only = blended_reward(tok, None, 0.5, 2.0)(**{**kw, "verifier": [spec] * 4})
    assert only == [2.0, 0.0, 2.0, 0.0]  # verifiers alone: 0/1 times the weight, the reward model unused
    with pytest.raises(ValueError, match="no reward model and no verifier"):
        blend(None, [True, None], 1.0, 1.0)


def test_verifier_only_refuses_a_prompt_without_a_verifier(toy, tmp_path, capsys):
    pool = checkable_pool(tmp_path / "pool.jsonl", n=5, unverified=2)
    out = tmp_path / "grpo"
    argv = ["grpo", "--model", toy["policy"], "--reward-model", "none", "--data", pool, "--output-dir", str(out)]
    assert train.main(argv) == 2
    assert "--reward-model none: 2 of 12 prompts have no verifier" in capsys.readouterr().err
    assert not out.exists()  # refused before the run directory was made
    assert train.main(["grpo", "--data", pool, "--output-dir", str(out)]) == 2
    assert "--reward-model is required" in capsys.readouterr().err
    assert train.main([*argv, "--objective", "correct=1"]) == 2  # no reward model, so no heads to weigh
    assert "--objective weighs a reward model's heads" in capsys.readouterr().err


def test_grpo_config_takes_trl_fields(tmp_path):
    from rlhf.config import parse_config
    from rlhf.grpo import GRPOArgs, _trl_config

    cfg = parse_config(GRPOArgs, ["--data", "x.jsonl", "--loss-type", "grpo", "--scale-rewards", "batch"])
    trl = _trl_config(cfg)
    assert (trl.loss_type, trl.scale_rewards, trl.beta, trl.num_generations) == ("grpo", "batch", 0.04, 8)
    assert not hasattr(trl, "max_length")  # GRPOConfig has none (common.NOT_DECLARED); grpo.py drops long prompts


def test_verifier_only_trains_without_a_reward_model(toy, tmp_path):
    """--reward-model none: the verifiers alone are the reward (RL with verifiable rewards); no score reported."""
    pool = checkable_pool(tmp_path / "pool.jsonl", n=5)
    out = tmp_path / "grpo"
    argv = ["grpo", "--model", toy["policy"], "--reward-model", "none", "--data", pool, "--output-dir", str(out)]
    argv += ["--max-steps", "2", "--per-device-train-batch-size", "8", "--num-generations", "4"]
    argv += ["--response-length", "3", "--test-fraction", "0.3", "--eval-samples", "2", "--logging-steps", "1"]
    assert train.main(argv) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["score"] is None and res["score_before"] is None
    assert 0.0 <= res["accuracy"] <= 1.0 and res["heldout_checkable"] == res["heldout_prompts"] > 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("verifier/accuracy" in r for r in logs) and not any("rm/score" in r for r in logs)


@pytest.mark.slow
def test_grpo_raises_heldout_verifier_accuracy_with_kl_bounded(toy, tmp_path):
    """The blended reward on a pool where most prompts are checkable: held-out verifier accuracy rises from chance
    to most answers right, the reward model's score rises with it, and the policy stays near the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    pool = checkable_pool(tmp_path / "pool.jsonl", n=30, unverified=20)
    out = tmp_path / "grpo"
    argv = ["grpo", "--model", toy["policy"], "--reward-model", toy["reward"], "--data", pool]
    argv += ["--output-dir", str(out), "--rm-weight", "0.5", "--verifier-weight", "1.0", "--test-fraction", "0.3"]
    # 300 steps of 4 prompts x 8 samples: the policy first learns to end on a digit (half right), then which one.
    argv += ["--max-steps", "300", "--per-device-train-batch-size", "32", "--num-generations", "8"]
    argv += ["--response-length", "3", "--learning-rate", "5e-3", "--logging-steps", "75", "--eval-samples", "8"]
    assert train.main(argv) == 0

    res = json.loads((out / "eval.json").read_text())
    assert res["heldout_checkable"] >= 10 and res["heldout_prompts"] > res["heldout_checkable"], res
    assert res["accuracy_before"] < 0.1, res  # a random policy's last number is rarely right
    assert res["accuracy"] > 0.8 and res["accuracy"] > res["accuracy_before"] + 0.5, res  # more than "always 0"
    assert res["score"] > res["score_before"], res
    # Nats per 3-token response: under ln(116) ~ 4.75 a token, what making one token of the vocabulary certain
    # costs against a uniform reference (beta = 0.04 holds it there; the reward alone would push on).
    assert res["kl"] < 14.0, res
    assert res["length_change"] == pytest.approx(res["length"] - res["length_before"])
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_acc = [r["verifier/accuracy"] for r in logs if "verifier/accuracy" in r]
    assert len(train_acc) == 4 and train_acc[-1] > train_acc[0]
    assert all("rm/score" in r and "kl" in r for r in logs if "verifier/accuracy" in r)
    assert "GRPO" in (out / "README.md").read_text()
    before = AutoModelForCausalLM.from_pretrained(toy["policy"])
    after = AutoModelForCausalLM.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
