"""One scoring path: reward evaluation, PPO, RLOO and evaluate give a (prompt, response) the same number, read at the
conversation's last token, also when pad == eos (SmolLM2's setup); and scoring batches by length."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from toy_reward import save_policy, save_token_reward_model, tiny_tokenizer  # noqa: E402

from rlhf.reward import (  # noqa: E402
    conversation_ids,
    length_batches,
    load_reward_model,
    response_text,
    reward_function,
    score,
    training_tokenizer,
)

PROMPTS = [[{"role": "user", "content": f"What is {a} + {b} ?"}] for a, b in [(1, 2), (3, 4), (5, 0), (2, 2), (9, 8)]]


def pad_is_eos(tok):
    tok.pad_token = tok.eos_token  # as load_tokenizer leaves SmolLM2: pad == eos == <|im_end|>
    return tok


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("scoring")
    tok = pad_is_eos(tiny_tokenizer())
    assert tok.pad_token_id == tok.eos_token_id
    return {"tok": tok, "policy": save_policy(d / "policy", tok), "rm": save_token_reward_model(d / "rm", tok)}


def random_reward_model(tok, seed: int = 0):
    """A tiny randomly initialised Llama reward model: every position matters (unlike the hand-built toy)."""
    from fixtures import tiny_config
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_config(len(tok), layers=2, hidden=32, heads=2, num_labels=1)
    config.pad_token_id = tok.pad_token_id
    return LlamaForSequenceClassification(config).eval()


def test_ppo_rloo_and_evaluate_score_like_score_when_pad_is_eos(toy):
    from transformers import AutoModelForCausalLM

    from rlhf import evaluate as ev
    from rlhf.ppo import PPOArgs, _policy_and_value, encode_prompts, rollout, score_responses

    tok = toy["tok"]
    rm = load_reward_model(toy["rm"], tok)
    policy = AutoModelForCausalLM.from_pretrained(toy["policy"])
    ref = AutoModelForCausalLM.from_pretrained(toy["policy"]).eval()
    model = _policy_and_value(policy, load_reward_model(toy["rm"], tok)).eval()
    cfg = PPOArgs(response_length=8, temperature=1.0, forward_batch_size=3)
    queries = encode_prompts(PROMPTS * 2, tok, 10**9, "test")
    torch.manual_seed(0)
    out = rollout(model, ref, rm, tok, queries, cfg, tok)
    messages = [q.messages for q in queries]
    texts = [response_text(tok, r) for r in out["responses"]]
    one_by_one = [score(rm, tok, [m], [t], batch_size=1)[0] for m, t in zip(messages, texts)]
    assert out["scores"].tolist() == pytest.approx(one_by_one, abs=1e-5)  # PPO's score == score()

    # RLOO: TRL hands its reward function the completion ids up to and including the first EOS and their decoding.
    ids = [r[: int(last) + 1].tolist() for r, last in zip(out["responses"], out["last"])]
    completions = [[{"role": "assistant", "content": tok.decode(x, skip_special_tokens=True)}] for x in ids]
    rloo = reward_function(rm, tok, tok)(prompts=messages, completions=completions, completion_ids=ids)
    assert rloo == pytest.approx(one_by_one, abs=1e-5)
    (pol_scores, ref_scores), _ = ev.judge(rm, tok, messages, texts, texts[::-1])  # evaluate's scorer
    assert pol_scores == pytest.approx(one_by_one, abs=1e-5)
    assert ref_scores == pytest.approx(one_by_one[::-1], abs=1e-5)

    # The old PPO path, the stock head on the raw left-padded query+response ids, reads another token: pad == eos
    # hides the EOS, and the template's closing "\n" is missing. The test would catch a return to it.
    stock = rm(input_ids=out["query_responses"], attention_mask=out["attention_mask"]).logits[:, 0]
    assert (stock - out["scores"]).abs().max() > 1e-3

    # An EOS mid-response ends it: what follows (pads, which are EOS too) is not scored; an empty answer is scored.
    t = {w: tok.convert_tokens_to_ids(w) for w in ("7", "the", "3", "<|im_end|>")}
    rows = torch.tensor(
        [[t["7"], t["the"], t["<|im_end|>"], t["3"], t["3"]], [t["<|im_end|>"]] + [t["<|im_end|>"]] * 4]
    )
    got = score_responses(rm, tok, tok, PROMPTS[:2], rows, batch_size=2)
    assert got.tolist() == pytest.approx(score(rm, tok, PROMPTS[:2], ["7 the", ""]), abs=1e-6)


@pytest.mark.parametrize("ends_with_eos", [False, True])
def test_reward_training_reads_the_token_score_reads(tmp_path, ends_with_eos):
    """RewardTrainer's ids are conversation_ids', and its head (rightmost non-pad) reads score()'s last token."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tok = pad_is_eos(tiny_tokenizer())
    if ends_with_eos:  # Llama-3 style: no newline after the end-of-turn token, so every conversation ends in pad
        tok.chat_template = tok.chat_template.replace("<|im_end|>\n{% endfor %}", "<|im_end|>{% endfor %}")
    rows = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in zip(PROMPTS, ["3", "7 7", "5", "4 the answer", "17"], ["4", "6", "5 5 5", "2", "the"])
    ]
    rm = random_reward_model(tok)
    train_tok = training_tokenizer(tok, rows[0])
    assert (train_tok is tok) != ends_with_eos  # swapped only when the template ends with the pad token
    assert train_tok.pad_token_id != conversation_ids(tok, PROMPTS[0], "3")[-1]
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    trainer = RewardTrainer(model=rm, args=args, train_dataset=Dataset.from_list(rows), processing_class=train_tok)
    examples = list(trainer.train_dataset)
    assert [e["chosen_ids"] for e in examples] == [
        conversation_ids(tok, r["prompt"], r["chosen"][0]["content"]) for r in rows
    ]
    batch = trainer.data_collator(examples)  # right-padded with the training pad id: chosen then rejected
    with torch.no_grad():
        trained_on = rm(**batch).logits[:, 0].tolist()
    prompts = [r["prompt"] for r in rows] * 2
    texts = [r["chosen"][0]["content"] for r in rows] + [r["rejected"][0]["content"] for r in rows]
    assert trained_on == pytest.approx(score(rm, tok, prompts, texts), abs=1e-5)
    if ends_with_eos:  # without the swap, "last non-pad" skips the final EOS and reads the token before it
        rm.config.pad_token_id = tok.pad_token_id
        with torch.no_grad():
            stock = rm(**trainer.data_collator(examples)).logits[:, 0].tolist()
        assert max(abs(a - b) for a, b in zip(stock, trained_on)) > 1e-4


def test_length_bucketed_scoring_pads_little_and_changes_no_score():
    tok = pad_is_eos(tiny_tokenizer())
    rm = random_reward_model(tok, seed=1)
    rng = random.Random(0)
    words = ["the", "answer", "is", "7", "12", "+", "\n", "?"]
    # Lengths spread like real data: mostly short, a long tail.
    responses = [" ".join(rng.choices(words, k=int(rng.paretovariate(1.2) * 3) % 120)) for _ in range(150)]
    prompts = [rng.choice(PROMPTS) for _ in responses]
    real = sum(len(conversation_ids(tok, p, r)) for p, r in zip(prompts, responses))
    pushed = []
    backbone = rm.model
    hook = backbone.register_forward_pre_hook(
        lambda mod, args, kw: pushed.append((kw["input_ids"].numel(), int(kw["attention_mask"].sum()))),
        with_kwargs=True,
    )
    try:
        batched = score(rm, tok, prompts, responses, batch_size=16)
    finally:
        hook.remove()
    assert sum(n for _, n in pushed) == real  # every real token once
    assert sum(n for n, _ in pushed) <= 1.1 * real, (sum(n for n, _ in pushed), real)
    # File-order batches of 16 (the old scheme) would have pushed far more through the model.
    lengths = [len(conversation_ids(tok, p, r)) for p, r in zip(prompts, responses)]
    file_order = sum(16 * max(lengths[i : i + 16]) if i + 16 <= len(lengths) else
                     (len(lengths) - i) * max(lengths[i:]) for i in range(0, len(lengths), 16))  # fmt: skip
    assert file_order > 1.5 * real
    singly = [score(rm, tok, [p], [r], batch_size=1)[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(singly, abs=1e-5)  # and the original order is restored


def test_length_batches_bound_and_cover():
    rng = random.Random(1)
    lengths = [int(rng.lognormvariate(5, 1)) + 1 for _ in range(2000)]
    batches = length_batches(lengths, max_rows=32, max_padding=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each sequence exactly once
    for b in batches:
        assert len(b) <= 32 and len(b) * max(lengths[i] for i in b) <= 1.1 * sum(lengths[i] for i in b)
    assert len(batches) < len(lengths) / 8  # and batches are still mostly full
