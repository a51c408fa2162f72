"""Evaluate: win rates and their length control on known numbers, then end to end through `rlhf/train.py`."""

from __future__ import annotations

import json
import math

import pytest

from rlhf import evaluate as ev


def test_outcomes_count_ties_as_half():
    assert ev.outcomes([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == [1.0, 0.5, 0.0]


def test_length_control_discounts_wins_bought_with_length():
    # 10 pairs where the policy is 50% longer (15 vs 10 tokens) and wins 9; 10 equal-length pairs, 5 wins.
    pol_scores = [1.0] * 9 + [0.0] + [1.0] * 5 + [0.0] * 5
    ref_scores = [0.5] * 20
    pol_len, ref_len = [15] * 10 + [10] * 10, [10] * 20
    s = ev.summarize(pol_scores, ref_scores, pol_len, ref_len, tolerance=0.1)
    assert s["win_rate"] == pytest.approx(14 / 20)  # raw: 0.7
    assert s["win_rate_length_matched"] == pytest.approx(5 / 10)  # only the 10 equal-length pairs are within 10%
    assert s["length_matched_pairs"] == 10
    # Two length groups make the logistic model saturated: it fits each group's rate exactly, so
    # sigmoid(a) = 0.5 (equal length) and a + b * 0.5 = logit(0.9) -> b = 2 ln 9 (x = 5 extra tokens / mean 10).
    assert s["win_rate_length_controlled"] == pytest.approx(0.5, abs=1e-4)
    assert s["length_coef"] == pytest.approx(2 * math.log(9), rel=1e-3)
    assert s["length_change"] == pytest.approx(2.5) and s["length_change_pct"] == pytest.approx(25.0)
    assert s["policy_score"] == pytest.approx(14 / 20) and s["reference_score"] == pytest.approx(0.5)


def test_length_control_changes_nothing_when_lengths_match():
    pol_scores = [1.0] * 7 + [0.0] * 2 + [0.5]  # 7 wins, 2 losses, 1 tie -> 7.5 / 10
    s = ev.summarize(pol_scores, [0.5] * 10, [12] * 10, [12] * 10)
    assert s["win_rate"] == pytest.approx(0.75) and s["ties"] == 1
    assert s["win_rate_length_matched"] == pytest.approx(0.75)
    assert s["win_rate_length_controlled"] == pytest.approx(0.75, abs=1e-4)
    assert s["length_change"] == 0


def test_length_matched_uses_tolerance_relative_to_reference():
    wins = [1.0, 0.0, 1.0]
    # |11-10| <= 1 kept, |12-10| > 1 dropped, |9-10| <= 1 kept
    assert ev.length_matched_win_rate(wins, [11, 12, 9], [10, 10, 10], 0.1) == (1.0, 2)
    assert ev.length_matched_win_rate(wins, [20, 20, 20], [10, 10, 10], 0.1) == (None, 0)


def test_outputs_plot_and_side_by_side(tmp_path):
    examples = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "policy": f"long answer {i}", "reference": f"r{i}",
         "policy_score": float(i % 3), "reference_score": 1.0, "policy_length": 3 + i, "reference_length": 2}
        for i in range(6)
    ]  # fmt: skip
    s = ev.summarize([e["policy_score"] for e in examples], [1.0] * 6, [e["policy_length"] for e in examples], [2] * 6)
    ev.write_outputs(tmp_path, s, examples, num_examples=2)
    assert (tmp_path / "eval.png").stat().st_size > 1000
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["win_rate"] == pytest.approx(s["win_rate"]) and len(data["examples"]) == 2
    md = (tmp_path / "samples.md").read_text()
    assert "| long answer 0 | r0 |" in md and "| long answer 1 | r1 |" in md and "r2" not in md


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from toy_reward import arithmetic_prompts, save_policy, save_token_reward_model, tiny_tokenizer

    from rlhf import train
    from rlhf.reward import load_reward_model, score

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny_tokenizer()
    policy, reference = save_policy(tmp_path / "pol", tok, seed=1), save_policy(tmp_path / "ref", tok, seed=2)
    rm_dir = save_token_reward_model(tmp_path / "rm", tok)
    prompts = arithmetic_prompts(tmp_path / "prefs.jsonl", n=12)
    out = tmp_path / "eval"
    argv = ["evaluate", "--policy", policy, "--reference", reference, "--reward-model", rm_dir]
    argv += ["--prompts", prompts, "--output-dir", str(out), "--max-new-tokens", "8", "--num-examples", "12"]
    assert train.main(argv) == 0

    data = json.loads((out / "eval.json").read_text())
    ex = data["examples"]
    assert data["pairs"] == len(ex) == 12
    # Re-score the recorded generations independently: eval.json's win rate must follow from them.
    rm = load_reward_model(rm_dir, tok)
    prompts_ = [e["prompt"] for e in ex]
    pol_scores, ref_scores = (
        score(rm, tok, prompts_, [e["policy"] for e in ex]),
        score(rm, tok, prompts_, [e["reference"] for e in ex]),
    )
    assert [e["policy_score"] for e in ex] == pytest.approx(pol_scores, abs=1e-5)
    expected = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(pol_scores, ref_scores)) / 12
    assert data["win_rate"] == pytest.approx(expected)
    lengths = [len(tok(e["policy"], add_special_tokens=False)["input_ids"]) for e in ex]
    assert [e["policy_length"] for e in ex] == lengths
    assert data["length_change"] == pytest.approx(sum(lengths) / 12 - sum(e["reference_length"] for e in ex) / 12)
    assert (out / "eval.png").exists() and (out / "samples.md").exists() and (out / "config.yaml").exists()


def test_an_export_train_file_is_evaluated_on_its_heldout_sibling(tmp_path, capsys):
    from rlhf.evaluate import heldout_prompts

    train, test = tmp_path / "prefs-train.parquet", tmp_path / "prefs-test.parquet"
    train.write_bytes(b"")
    assert heldout_prompts(str(train)) == str(train)  # no sibling: kept, with a warning
    assert "may have trained on" in capsys.readouterr().out
    test.write_bytes(b"")
    assert heldout_prompts(str(train)) == str(test)
    assert heldout_prompts(str(test)) == str(test)  # a held-out file is used as given


def test_reference_answers_are_generated_once_and_only_reused_for_the_same_key(tmp_path):
    """The pipeline evaluates several policies against one reference: its answers come from the cache when the
    model, prompts and generation settings match, and are regenerated when any of them differs."""
    cfg = ev.EvalArgs(max_new_tokens=8)
    prompts = [[{"role": "user", "content": "2+2?"}]]
    cache, calls = str(tmp_path / "ref.json"), []

    def make(text):
        return lambda: calls.append(text) or [text]

    key = ev.answer_key("ref-model", prompts, cfg)
    assert ev.cached_answers(cache, key, make("first")) == ["first"]
    assert ev.cached_answers(cache, key, make("second")) == ["first"]  # reused, not regenerated
    assert calls == ["first"]
    longer = ev.answer_key("ref-model", prompts, ev.EvalArgs(max_new_tokens=16))
    other_prompts = ev.answer_key("ref-model", [[{"role": "user", "content": "3+3?"}]], cfg)
    assert ev.cached_answers(cache, longer, make("third")) == ["third"]
    assert ev.cached_answers(cache, other_prompts, make("fourth")) == ["fourth"]
    assert calls == ["first", "third", "fourth"]
    assert ev.cached_answers(None, key, make("fifth")) == ["fifth"]  # no cache path: always generate
