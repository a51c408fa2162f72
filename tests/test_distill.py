"""Distillation on tiny config-built models: the student gets closer to the teacher and the report card is whole."""

from __future__ import annotations

import json
import math

import pytest

from annotate.errors import UsageError
from rlhf.distill import DistillArgs, distill, keep_indices
from rlhf.distill_report import KEPT_TARGET


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 4-layer teacher, a reward model and a prompts file, all around a ~116-token word-level tokenizer."""
    import torch
    from fixtures import arithmetic_tokenizer, save_tiny_model, tiny_config
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("distill")
    tok = arithmetic_tokenizer()
    # A wide init gives the teacher peaked, input-dependent distributions, so there is something to imitate.
    teacher = save_tiny_model(root / "teacher", tok, layers=4, hidden=64, initializer_range=0.2)
    torch.manual_seed(1)
    cfg = tiny_config(len(tok), layers=1, hidden=32, num_labels=1, pad_token_id=tok.pad_token_id)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"What is {a} + {b} ?"}) + "\n" for a in range(8) for b in range(6))
    )
    return {"teacher": teacher, "rm": str(root / "rm"), "prompts": str(prompts), "root": root}


def test_keep_indices_keeps_first_and_last_evenly():
    assert keep_indices(30, 15)[0] == 0 and keep_indices(30, 15)[-1] == 29
    assert len(keep_indices(30, 15)) == 15
    assert keep_indices(4, 2) == [0, 3]
    assert keep_indices(5, 3) == [0, 2, 4]
    with pytest.raises(UsageError, match="student-layers"):
        keep_indices(4, 5)


def _cfg(models, out, **kw) -> DistillArgs:
    base = dict(
        teacher=models["teacher"],
        output_dir=str(out),
        prompts=models["prompts"],
        student_layers=2,
        eval_prompts=8,
        max_new_tokens=12,
        num_train_epochs=6,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        device="cpu",
        reward_model=models["rm"],
        speed_prompts=4,
        speed_batch_size=2,
    )
    return DistillArgs(**{**base, **kw})


@pytest.mark.slow
def test_token_distillation_reduces_divergence_and_writes_complete_report(models, tmp_path):
    out = tmp_path / "student"
    res = distill(_cfg(models, out))
    # Held-out divergence to the teacher falls, and so does the training loss (the GKD divergence itself).
    assert res["kl_after"] < 0.7 * res["kl_before"], res
    assert res["top1_agreement_after"] >= res["top1_agreement_before"]
    losses = [h["loss"] for h in res["train_loss"]]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3

    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2
    assert json.loads((out / "eval.json").read_text())["kl_after"] == pytest.approx(res["kl_after"])
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").read_text().count("\n") >= len(losses)

    report = json.loads((out / "distill_report.json").read_text())
    for side in ("teacher", "student"):
        s = report[side]
        assert s["parameters"] > 0 and s["size_on_disk_mb"] > 0 and s["tokens_per_s"] > 0
        assert 0 < s["mean_output_tokens"] <= 12
    assert report["teacher"]["layers"] == 4 and report["student"]["layers"] == 2
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert report["student"]["size_on_disk_mb"] < report["teacher"]["size_on_disk_mb"]
    assert report["speedup"] == pytest.approx(report["student"]["tokens_per_s"] / report["teacher"]["tokens_per_s"])
    batched = report["batched_tokens_per_s"]
    assert report["speed_batch_size"] == 2 and min(batched.values()) > 0
    ratio = batched["student_tokens_per_s"] / batched["teacher_tokens_per_s"]
    assert report["speedup_batched"] == pytest.approx(ratio)
    assert 0 <= report["top1_agreement"] <= 1 and report["kl_per_token"] >= 0
    assert report["top1_agreement"] == pytest.approx(res["top1_agreement_after"])
    rw = report["reward"]
    assert rw["model"] == models["rm"]
    assert 0 <= rw["student_win_rate"] <= 1 and 0 < rw["teacher_mean"] < 1 and 0 < rw["student_mean"] < 1
    assert rw["score_kept"] == pytest.approx(rw["student_mean"] / rw["teacher_mean"])
    assert all(math.isfinite(rw[k]) for k in ("teacher_mean_raw", "student_mean_raw"))
    assert report["output_length_ratio"] > 0 and report["prompts"] == 8 and report["speed_prompts"] == 4
    assert report["shortfalls"] and all(isinstance(x, str) and x for x in report["shortfalls"])
    if rw["score_kept"] < KEPT_TARGET:  # the card must say so in words
        assert any("reward score" in x for x in report["shortfalls"])
    png = (out / "distill_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_sequence_distillation_from_a_given_student(models, tmp_path):
    """--method sequence (SFT on teacher answers) with a separate student that shares the tokenizer."""
    from fixtures import arithmetic_tokenizer, save_tiny_model

    student = save_tiny_model(tmp_path / "init", arithmetic_tokenizer(), layers=2, hidden=32, seed=3)
    out = tmp_path / "seq"
    res = distill(_cfg(models, out, student=student, student_layers=None, method="sequence", report=False))
    assert res["kl_after"] < res["kl_before"]
    assert not (out / "distill_report.json").exists()


def test_the_run_writes_its_model_card_with_the_steps_it_took(models, tmp_path):
    """3 steps logged every 10: the trainer logged no loss, yet eval.json and the card say 3 steps (not 0)."""
    from huggingface_hub import ModelCard

    out = tmp_path / "carded"
    res = distill(_cfg(models, out, max_steps=3, logging_steps=10, report=False, max_new_tokens=4))
    assert res["steps"] == 3 and res["train_loss"] == []
    assert json.loads((out / "eval.json").read_text())["steps"] == 3
    card = ModelCard.load(out / "README.md")
    assert "distill" in card.data.tags and card.data.pipeline_tag == "text-generation"
    body = card.text
    assert "- **Training:** 3 optimizer steps" in body and "A student distilled from" in body
    assert "## Distillation" in body and "--report false" in body and "kl_after" in body


def test_bad_input_is_reported(models, tmp_path):
    with pytest.raises(UsageError, match="exactly one of"):
        distill(_cfg(models, tmp_path / "x", student=models["teacher"], student_layers=2))
    other = tmp_path / "other"
    from fixtures import save_tiny_model

    from rlhf.models import load_tokenizer

    save_tiny_model(other, load_tokenizer(None), layers=1, hidden=16)
    with pytest.raises(UsageError, match="tokenizer differs"):
        distill(_cfg(models, tmp_path / "y", student=str(other), student_layers=None))
