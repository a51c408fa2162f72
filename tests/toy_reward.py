"""Test fixtures for the RL commands: a tiny policy and a hand-built, deterministic reward model saved to disk.

The reward model is a real `LlamaForSequenceClassification` (so PPO, RLOO and evaluate load it like any other),
with weights set by hand so that its score rises with the fraction of target tokens (single digits) in the
conversation:
  - embeddings: a target token -> e0, every other token -> e1 (unit vectors);
  - attention: q = k = 0, so every position attends uniformly to its prefix; v = e2 * (x0 - 0.1 x1), so the
    last position's attention output is z e2, z = sqrt(H) (1.1 f - 0.1), f the fraction of target tokens;
  - the MLP is zero; the head reads e2 after the final RMSNorm, a monotonic function of f.
A tiny policy can learn to raise this reward quickly, and nothing about it is random.
"""

from __future__ import annotations

from pathlib import Path

TARGET_WORDS = tuple(str(d) for d in range(10))  # single digits: ~1 in 12 tokens of a random tiny policy


def tiny_tokenizer():
    from fixtures import arithmetic_tokenizer

    return arithmetic_tokenizer()


def save_token_reward_model(out_dir: str | Path, tokenizer, target_words: tuple[str, ...] = TARGET_WORDS) -> str:
    import torch
    from fixtures import tiny_config
    from transformers import LlamaForSequenceClassification

    H = 8
    config = tiny_config(len(tokenizer), layers=1, hidden=H, heads=1, tie_word_embeddings=False, num_labels=1)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = LlamaForSequenceClassification(config)
    targets = tokenizer.convert_tokens_to_ids(list(target_words))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        emb = model.model.embed_tokens.weight  # (V, H)
        emb[:, 1] = 1.0
        emb[targets, 1], emb[targets, 0] = 0.0, 1.0
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[2, 0], attn.v_proj.weight[2, 1] = 1.0, -0.1  # z = 0 at f = 1/11
        attn.o_proj.weight.copy_(torch.eye(H))
        model.score.weight[0, 2] = H**-0.5  # score = z / sqrt(1 + z^2) in (-1, 1)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def save_policy(out_dir: str | Path, tokenizer, seed: int = 0) -> str:
    from fixtures import save_tiny_model

    return save_tiny_model(out_dir, tokenizer, seed=seed, layers=1, hidden=32, heads=2)


def arithmetic_prompts(path: str | Path, n: int = 60) -> str:
    """A JSONL export of the synthetic arithmetic preferences (the prompts are what PPO/RLOO use)."""
    import json

    from fixtures import synthetic_arithmetic

    rows = synthetic_arithmetic(n_prompts=n, wrong_per_prompt=1)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
