"""rlhf/judge.py (the `judge` command) and annotate/judge_votes.py (its votes read back for active sampling).

Models are tiny and built here: a random one for the end-to-end write, and a hand-set one whose next token is always
"A" (or "B") whatever it reads, i.e. a judge that always picks the response shown first (or second)."""

from __future__ import annotations

import json
import random

import pytest
from fixtures import save_tiny_model, word_tokenizer

from annotate.active import JudgeStrategy, judge_strategy
from annotate.judge_votes import judge_pairs, p_first_of, unsure_pairs
from annotate.pool import write_pool
from annotate.schema import comparisons_table, new_comparison, pool_table
from annotate.store import ComparisonStore, read_table
from rlhf import train


def judge_tokenizer():
    """A word-level tokenizer knowing the letters A and B and the test pool's words (the rest is unknown)."""
    words = ["user", "assistant", "\n", "A", "B", "Which", "answer", "is", "better?", "yes", "no", "maybe"]
    return word_tokenizer(words)


def save_letter_judge(out_dir, tokenizer, letter: str) -> str:
    """A 1-layer Llama whose next token is `letter` at every position: every layer adds nothing (zero weights), the
    embeddings carry a constant 1 in dimension 0, and the LM head reads that dimension into the letter's logit."""
    import torch
    from fixtures import tiny_config
    from transformers import LlamaForCausalLM

    config = tiny_config(len(tokenizer), layers=1, hidden=8, heads=1, tie_word_embeddings=False)
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "norm" in name else 0.0)
        model.model.embed_tokens.weight[:, 0] = 1.0  # after the final RMSNorm: sqrt(8) in dimension 0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(letter), 0] = 3.0  # logit ~8.5 vs 0: P ~ 0.9998
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture
def pool_and_store(tmp_path):
    """2 prompts x 3 candidates (6 pairs), and an empty store."""
    rng = random.Random(0)
    rows = [
        {"prompt_id": f"p{k}", "prompt": f"Which answer is better? {k}", "response_id": f"p{k}-r{i}",
         "response": " ".join(rng.choice(["yes", "no", "maybe"]) for _ in range(2 + 2 * i)), "source": f"m{i}"}
        for k in range(2) for i in range(3)
    ]  # fmt: skip
    pool = write_pool(rows, tmp_path / "pool.jsonl")
    ComparisonStore(tmp_path / "votes").close()
    return str(pool), str(tmp_path / "votes")


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_judge_writes_both_orders_of_each_pair_into_the_store_once(tmp_path, pool_and_store, capsys, monkeypatch):
    pool, store = pool_and_store
    model = save_tiny_model(tmp_path / "tiny", judge_tokenizer(), layers=1, hidden=16, heads=2)
    argv = ["judge", "--pool", pool, "--store", store, "--model", model, "--pairs", "4", "--device", "cpu"]
    assert train.main(argv + ["--batch-size", "3"]) == 0
    votes = read_table(store).to_pylist()
    assert len(votes) == 8 and {v["annotator"] for v in votes} == {"judge:tiny"}
    by_pair: dict[tuple, list[str]] = {}
    for v in votes:
        by_pair.setdefault((v["prompt_id"], v["response_a_id"], v["response_b_id"]), []).append(v["left"])
        assert v["response_a_id"] < v["response_b_id"]  # the app's canonical a/b
        assert v["session"].startswith("judge:") and v["choice"] in ("a", "b")
        assert 0.0 <= p_first_of(v["rationale"]) <= 1.0 and json.loads(v["rationale"])["template"]
    assert len(by_pair) == 4 and all(sorted(lefts) == ["a", "b"] for lefts in by_pair.values())
    # Same judge, template and pairs again: nothing is judged (no model is even loaded) or written twice.
    import rlhf.models

    monkeypatch.setattr(rlhf.models, "load_causal_lm", _no_model)
    assert train.main(argv) == 0
    assert read_table(store).num_rows == 8
    assert "0 votes by judge:tiny" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["pool", "store"])
def test_bad_pool_or_missing_store_is_one_line_before_any_model_loads(tmp_path, pool_and_store, which, capsys,
                                                                      monkeypatch):  # fmt: skip
    import rlhf.models

    monkeypatch.setattr(rlhf.models, "load_causal_lm", _no_model)
    monkeypatch.setattr(rlhf.models, "load_tokenizer", _no_model)
    pool, store = pool_and_store
    missing = str(tmp_path / "nowhere")
    argv = ["judge", "--pool", missing if which == "pool" else pool, "--store", missing if which == "store" else store]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and missing in err and len(err.splitlines()) == 1
    assert f"--{which}" in err


def test_template_without_its_placeholders_is_refused(pool_and_store, capsys):
    pool, store = pool_and_store
    assert train.main(["judge", "--pool", pool, "--store", store, "--template", "Which is better? {first}"]) == 2
    assert "--template: missing {prompt}, {second}" in capsys.readouterr().err


@pytest.mark.parametrize("letter", ["A", "B"])
def test_verdict_is_read_from_the_letter_logits(tmp_path, pool_and_store, letter):
    # A model that always says "A" always picks the response shown first (left); one saying "B", the other one.
    pool, store = pool_and_store
    model = save_letter_judge(tmp_path / f"always-{letter}", judge_tokenizer(), letter)
    assert train.main(["judge", "--pool", pool, "--store", store, "--model", model, "--device", "cpu"]) == 0
    votes = read_table(store).to_pylist()
    assert len(votes) == 12  # all 6 pairs, both orders
    for v in votes:
        shown_second = "b" if v["left"] == "a" else "a"
        assert v["choice"] == (v["left"] if letter == "A" else shown_second)
        assert v["strength"] == 3 and p_first_of(v["rationale"]) == pytest.approx(
            1.0 if letter == "A" else 0.0, abs=1e-3
        )
    # Read back: a judge that follows the position flips on every pair, so active sampling wants them all.
    judged = judge_pairs(read_table(store))
    assert len(judged) == 6 and all(j.flipped and j.doubt == 1.0 for j in judged.values())
    assert len(unsure_pairs(read_table(store))) == 6


def _judge_vote(pid: str, left: str, p_first: float, who: str = "judge:m") -> dict:
    return new_comparison(
        prompt_id=pid, prompt=[{"role": "user", "content": "q"}], response_a_id=f"{pid}-1", response_a="x",
        response_b_id=f"{pid}-2", response_b="y", left=left, annotator=who,
        choice=left if p_first > 0.5 else ("b" if left == "a" else "a"),
        rationale=json.dumps({"p_first": p_first, "letter_mass": 1.0, "template": "t"}),
    )  # fmt: skip


def test_judge_doubt_ranks_pairs_for_human_votes():
    from annotate.sampler import PairSampler

    votes = comparisons_table(
        [_judge_vote("sure", "a", 0.95), _judge_vote("sure", "b", 0.05)]  # a both ways, confidently
        + [_judge_vote("flip", "a", 0.9), _judge_vote("flip", "b", 0.9)]  # whatever is shown first
        + [_judge_vote("unsure", "a", 0.55), _judge_vote("unsure", "b", 0.5)]
        + [new_comparison(prompt_id="sure", prompt=[{"role": "user", "content": "q"}], response_a_id="sure-1",
                          response_a="x", response_b_id="sure-2", response_b="y", choice="b", annotator="alice")]
    )  # fmt: skip
    judged = judge_pairs(votes)
    assert judged[("sure", "sure-1", "sure-2")].p_a == pytest.approx(0.95)
    assert [j.key[0] for j in unsure_pairs(votes)] == ["flip", "unsure"]
    strategy, human = judge_strategy(votes)
    assert isinstance(strategy, JudgeStrategy) and human.column("annotator").to_pylist() == ["alice"]
    rows = [{"prompt_id": p, "prompt": [{"role": "user", "content": "q"}], "response_id": f"{p}-{i}",
             "response": "xy"[i - 1], "source": "s", "meta": "{}"} for p in ("sure", "flip", "unsure", "fresh")
            for i in (1, 2)]  # fmt: skip  # "fresh": a pair the judge never saw
    sampler = PairSampler(pool_table(rows), strategy=strategy, overlap=2, votes=human, seed=0)
    doubt = {sampler.pairs[i][0]: strategy.priority(sampler, i) for i in range(len(sampler.pairs))}
    assert doubt["flip"] == doubt["fresh"] == 1.0 and doubt["unsure"] == pytest.approx(0.95)
    # "sure": the judge is confident in a (doubt 0.1), but alice voted b against it, so it comes first of all.
    assert doubt["sure"] == pytest.approx(0.1 + 1.0)
    assert sampler.next_pair("bob").prompt_id == "sure"
    assert sampler.next_pair("carol").prompt_id in ("flip", "fresh")  # then the judge's own doubts, before "unsure"


def test_recipe_template_is_the_built_in_one():
    # recipes/judge.yaml records the template in use; it must not drift from the default it documents.
    from pathlib import Path

    from rlhf.config import parse_config
    from rlhf.judge import DEFAULT_TEMPLATE, JudgeArgs, load_template

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "judge.yaml"
    cfg = parse_config(JudgeArgs, ["--config", str(recipe), "--pairs", "3"])
    assert load_template(cfg.template) == DEFAULT_TEMPLATE and cfg.pairs == 3 and cfg.model == "default"
