"""rlhf.vocab_trim on a real byte-level BPE tokenizer trained on the bundled demo pool, and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.vocab_trim import byte_alphabet, trim

ROOT = Path(__file__).resolve().parents[1]


def pool_texts() -> list[str]:
    rows = [json.loads(x) for x in (ROOT / "datasets/demo/pool.jsonl").read_text().splitlines()]
    return [r["response"] if isinstance(r["response"], str) else json.dumps(r["response"]) for r in rows]


@pytest.fixture(scope="module")
def bpe():
    """A GPT-2-style byte-level BPE (as SmolLM2's) with ChatML specials, trained on the demo pool's responses."""
    from fixtures import bpe_tokenizer

    return bpe_tokenizer(pool_texts(), vocab_size=3000, pad_token="<|im_end|>")


@pytest.fixture(scope="module")
def trimmed(bpe, tmp_path_factory):
    from fixtures import tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config(len(bpe), pad_token_id=bpe.pad_token_id, eos_token_id=bpe.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    texts = pool_texts()
    corpus, other = texts[: len(texts) // 8], texts[len(texts) // 8 :]
    out = tmp_path_factory.mktemp("trim") / "trimmed"
    info = trim(model, bpe, corpus, out)
    return {"model": model, "info": info, "out": out, "corpus": corpus, "other": other}


def test_keeps_a_fraction_and_every_byte_and_special(bpe, trimmed):
    info = trimmed["info"]
    assert 256 + 3 <= info["kept"] < 0.8 * info["full"]
    kept = set(bpe.convert_ids_to_tokens(info["old_ids"]))
    assert byte_alphabet() <= kept and {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= kept


def test_corpus_tokenizes_exactly_as_before_and_any_text_still_round_trips(bpe, trimmed):
    from transformers import AutoTokenizer

    new = AutoTokenizer.from_pretrained(trimmed["out"])
    to_new = {old: i for i, old in enumerate(trimmed["info"]["old_ids"])}
    for text in trimmed["corpus"]:
        old_ids = bpe(text, add_special_tokens=False)["input_ids"]
        assert new(text, add_special_tokens=False)["input_ids"] == [to_new[i] for i in old_ids]
    longer = 0
    for text in trimmed["other"] + ["naïve café 🙂 — ÆØÅ\tz"]:
        ids = new(text, add_special_tokens=False)["input_ids"]
        assert new.decode(ids) == text  # nothing is unencodable, only split into smaller pieces
        longer += len(ids) > len(bpe(text, add_special_tokens=False)["input_ids"])
    assert longer > 0  # held-out text does lose some merges: the trim is real
    # Special tokens keep their meaning (and here their ids), so the chat template still works.
    assert new.eos_token_id == to_new[bpe.eos_token_id]
    msgs = [{"role": "user", "content": trimmed["corpus"][0][:40]}]
    assert new.apply_chat_template(msgs, tokenize=False) == bpe.apply_chat_template(msgs, tokenize=False)


def test_trimmed_model_gives_the_same_logits_on_kept_tokens(bpe, trimmed):
    from transformers import AutoModelForCausalLM

    model, info = trimmed["model"], trimmed["info"]
    small = AutoModelForCausalLM.from_pretrained(trimmed["out"]).eval()
    assert small.config.vocab_size == info["kept"] and small.config.eos_token_id == info["old_ids"].index(
        bpe.eos_token_id
    )
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings().weight.shape[0] == len(bpe)  # the original is left untouched
    old = torch.tensor([bpe(trimmed["corpus"][1], add_special_tokens=False)["input_ids"][:40]])
    to_new = {o: i for i, o in enumerate(info["old_ids"])}
    new = torch.tensor([[to_new[i] for i in old[0].tolist()]])
    with torch.no_grad():
        full, cut = model(old).logits, small(new).logits
    torch.testing.assert_close(cut, full[..., info["old_ids"]], atol=1e-5, rtol=1e-5)


def test_distill_with_trim_vocab_reports_the_trimmed_student(bpe, tmp_path):
    from fixtures import save_tiny_model, tiny_config
    from transformers import AutoModelForSequenceClassification

    from rlhf.distill import DistillArgs, distill

    teacher = save_tiny_model(tmp_path / "teacher", bpe, layers=4, hidden=64)
    torch.manual_seed(1)
    rm_cfg = tiny_config(len(bpe), layers=1, hidden=32, num_labels=1, pad_token_id=bpe.pad_token_id)
    AutoModelForSequenceClassification.from_config(rm_cfg).save_pretrained(tmp_path / "rm")
    bpe.save_pretrained(tmp_path / "rm")
    rows = [json.loads(x) for x in (ROOT / "datasets/demo/pool.jsonl").read_text().splitlines()]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:120]))
    out = tmp_path / "student"
    cfg = DistillArgs(
        teacher=teacher, output_dir=str(out), prompts=str(prompts), student_layers=2, eval_prompts=6,
        max_new_tokens=8, max_prompts=24, num_train_epochs=1, per_device_train_batch_size=6, learning_rate=1e-3,
        device="cpu", reward_model=str(tmp_path / "rm"), speed_prompts=2, speed_batch_size=2, trim_vocab=True,
    )  # fmt: skip
    distill(cfg)
    tv = json.loads((out / "distill_report.json").read_text())["trimmed_vocab"]
    assert tv["vocab_full"] == len(bpe) and tv["vocab_kept"] < tv["vocab_full"]
    assert tv["parameters"] < json.loads((out / "distill_report.json").read_text())["student"]["parameters"]
    assert tv["speedup"] > 0 and tv["speedup_batched"] > 0 and 0 <= tv["same_answer_as_student"] <= 1
    assert 0 <= tv["heldout_teacher_tokens_dropped"] < 1 and tv["score_kept"] > 0
    assert (out / "trimmed-vocab" / "model.safetensors").exists()
    # Published, its card describes the trimmed model (read from the run it sits in), limitation included.
    from huggingface_hub import ModelCard

    from rlhf.hub import main_push

    assert (
        main_push(["--model-dir", str(out / "trimmed-vocab"), "--repo-id", "me/t", "--dry-run", str(tmp_path / "up")])
        == 0
    )
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert f"{tv['vocab_kept']:,} of {tv['vocab_full']:,} tokens" in card.text and "cannot emit" in card.text
    assert "distill" in card.data.tags
