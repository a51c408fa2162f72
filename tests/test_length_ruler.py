"""The length ruler (annotate.audit_ruler): "pick the longer", "pick the shorter" and a style-only model on the pairs a
reward model is judged on, and the flag on a model that is not clearly above them, in eval.json and the model card.
"""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import arithmetic_tokenizer, save_tiny_model, synthetic_arithmetic

from annotate.audit_features import STYLE_FEATURES, style_differences, style_vectors, text_features
from annotate.audit_ruler import fit_style_model, length_ruler, rule_accuracies, verdict


def test_rules_count_ties_half():
    rules = rule_accuracies(["aaa", "b", "cc"], ["a", "bbb", "dd"])
    assert rules == {"longer": pytest.approx(0.5), "shorter": pytest.approx(0.5)}  # 1 right, 1 wrong, 1 tie each


def test_style_vectors_share_the_audits_definitions():
    texts = ["# Plan\n- one\n- **two**\nI think it might work.", "Definitely. The answer is 4.", ""]
    s, f = style_vectors(texts), text_features(texts)
    assert list(STYLE_FEATURES) == ["length", "headers", "lists", "bold", "hedges", "confidence"]
    np.testing.assert_allclose(s[:, 0], np.log1p(f["chars"]))
    np.testing.assert_allclose(s[:, 1:4], np.log1p(f[["headers", "lists", "bold"]].to_numpy()))
    np.testing.assert_allclose(s[:, 4:], f[["hedges", "confidence"]].to_numpy())
    d = style_differences(texts[:2], texts[1:])
    np.testing.assert_allclose(d, -style_differences(texts[1:], texts[:2]))  # swapping the pair flips the sign


def formatted_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Raters who like Markdown lists: the listed answer wins 90% of pairs; lengths vary at random."""
    rng = random.Random(seed)
    chosen, rejected = [], []
    for _ in range(n):
        words = [rng.choice(["apples", "pears", "plums", "figs"]) for _ in range(rng.randint(2, 6))]
        tail = lambda: " See " + "also " * rng.randint(0, 8)  # noqa: E731  (length noise on both sides)
        listed, plain = "\n".join(f"- {w}" for w in words) + tail(), ", ".join(words) + "." + tail()
        pair = (listed, plain) if rng.random() < 0.9 else (plain, listed)
        chosen.append(pair[0])
        rejected.append(pair[1])
    return chosen, rejected


def test_style_model_finds_formatting_that_length_misses():
    style = fit_style_model(*formatted_pairs(300, seed=0))
    assert max(style.coefficients(), key=style.coefficients().get) == "lists"
    test = formatted_pairs(200, seed=1)
    rules = rule_accuracies(*test, style)
    assert rules["style"] > 0.85 and rules["longer"] < 0.75 and rules["shorter"] < 0.75
    out = length_ruler(style, *test, model_accuracy=rules["style"] + 0.01)
    assert out["ruler_flag"] and out["ruler_best_rule"] == "style"
    assert out["ruler_verdict"].startswith("this reward model may be measuring style")


def test_verdict_needs_the_whole_interval_above_the_best_rule():
    rules = {"longer": 0.70, "shorter": 0.30, "style": 0.68}
    flagged = verdict(0.75, 80, rules)  # 95% CI about 0.65-0.83: not clearly above 0.70
    assert flagged["flag"] and flagged["best"] == "longer"
    assert flagged["text"].startswith("this reward model may be measuring length")
    clear = verdict(0.90, 200, rules)  # CI about 0.85-0.93
    assert not clear["flag"] and clear["text"].startswith("clearly above length and style")
    assert clear["ci95"][0] > 0.70


def test_model_card_shows_the_ruler_and_warns_when_flagged():
    from rlhf.cards import model_card

    style = fit_style_model(*formatted_pairs(100, seed=0))
    test = formatted_pairs(80, seed=1)
    for accuracy, flagged in ((0.9, True), (1.0, False)):
        ev = {"eval_pairs": 80, "eval_accuracy": accuracy} | length_ruler(style, *test, accuracy)
        assert ev["ruler_flag"] is flagged
        card = model_card({"config": {}, "eval": ev, "distill": None, "command": "reward"})
        assert "## Length ruler" in card and '"pick the longer"' in card and "style-only model" in card
        assert ("**Warning: this reward model may be measuring style" in card) is flagged
        assert ("The length ruler flags it" in card) is flagged  # under Known limitations too
        assert "| ruler_" not in card  # the ruler's keys are in its section, not repeated in the results table
    plain = model_card({"config": {}, "eval": {"eval_accuracy": 0.9}, "distill": None, "command": "sft"})
    assert "Length ruler" not in plain


def test_evaluate_carries_the_judges_verdict(tmp_path):
    from rlhf.evaluate import judge_ruler

    assert judge_ruler(str(tmp_path)) == {}
    (tmp_path / "eval.json").write_text(json.dumps({"ruler_flag": True, "ruler_verdict": "may be measuring length"}))
    assert judge_ruler(str(tmp_path)) == {"reward_model_ruler_flag": True,
                                          "reward_model_ruler_verdict": "may be measuring length"}  # fmt: skip


@pytest.mark.slow
def test_a_reward_model_trained_where_length_is_all_there_is_gets_flagged(tmp_path):
    """Both splits: the chosen response is the longer in 80% of pairs and the quality word is a coin flip, so no
    model can be clearly above "pick the longer": the trained model follows length and the ruler says so."""
    from test_length_debias import padded

    from rlhf import train

    rng = random.Random(1)
    rows = synthetic_arithmetic(n_prompts=100, wrong_per_prompt=4, seed=0)
    test_ids = {r["prompt_id"] for r in rows[-80:]}
    (tmp_path / "data").mkdir()
    for name, keep in (
        ("train", lambda r: r["prompt_id"] not in test_ids),
        ("test", lambda r: r["prompt_id"] in test_ids),
    ):
        part = padded([r for r in rows if keep(r)], p_chosen_longer=0.8, p_marked=0.5, rng=rng)
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"data/prefs-{name}.parquet")
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    out = tmp_path / "rm"
    argv = ["reward", "--model", model, "--data", str(tmp_path / "data/prefs-train.parquet"), "--max-steps", "100",
            "--output-dir", str(out), "--learning-rate", "3e-3", "--per-device-train-batch-size", "16"]  # fmt: skip
    assert train.main(argv) == 0
    ev = json.loads((out / "eval.json").read_text())
    print({k: v for k, v in ev.items() if k.startswith(("ruler_", "eval_acc", "eval_length"))})
    assert ev["eval_length_spearman"] > 0.5  # it did learn length
    assert 0.7 < ev["ruler_longer_accuracy"] < 0.9
    assert ev["ruler_flag"] is True and ev["ruler_best_rule"] in ("longer", "style")
    assert ev["ruler_verdict"].startswith("this reward model may be measuring")
    card = (out / "README.md").read_text()
    assert "## Length ruler" in card and "**Warning: this reward model may be measuring" in card
