"""Test fixtures for the training commands: a learnable synthetic preference set, a tiny word-level tokenizer for
it, and tiny models of SmolLM2's family, so tests train real TRL trainers in seconds. Only tests (and the benchmark
scripts that reuse a test's own set) use these; tests/toy_reward.py builds its reward model from them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerBase


def synthetic_arithmetic(
    n_prompts: int = 100, wrong_per_prompt: int = 4, seed: int = 0, max_operand: int = 9
) -> list[dict]:
    """Rows preferring the correct sum: prompt "What is a + b ?", chosen "a+b", rejected a wrong number.

    The wrong answers are near misses (off by 1, 3 or 5), so neither length nor "looks like a number" separates
    them: a model has to relate the answer to the operands (parity suffices, which is what makes it learnable by a
    tiny model on held-out prompts in seconds). Rows follow the export columns.
    """
    rng = random.Random(seed)
    combos = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(combos)
    rows = []
    for a, b in combos[:n_prompts]:
        right = a + b
        # Odd offsets: the wrong sum has the wrong parity, a rule a tiny model can learn and carry to unseen sums.
        wrongs = [right + d for d in (-5, -3, -1, 1, 3, 5) if right + d >= 0]
        for w in rng.sample(wrongs, min(wrong_per_prompt, len(wrongs))):
            rows.append(
                {
                    "prompt": [{"role": "user", "content": f"What is {a} + {b} ?"}],
                    "chosen": [{"role": "assistant", "content": str(right)}],
                    "rejected": [{"role": "assistant", "content": str(w)}],
                    "margin": 1.0,
                    "prompt_id": f"add-{a}-{b}",
                    "n_votes": 1,
                    "agreement": 1.0,
                    "chosen_id": f"add-{a}-{b}-{right}",
                    "rejected_id": f"add-{a}-{b}-{w}",
                    "chosen_source": "oracle",
                    "rejected_source": "corrupted",
                }
            )
    return rows


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def arithmetic_tokenizer(max_number: int = 99) -> PreTrainedTokenizerBase:
    """A ~130-token word-level tokenizer (numbers are single tokens) with a ChatML template, for fast tests.

    SmolLM2's 49k vocabulary would make a tiny model's logits dominate compute; this keeps tests in seconds.
    """
    words = ["user", "assistant", "system", "What", "is", "+", "-", "?", "=", "\n", "the", "answer"]
    return word_tokenizer(words + [str(n) for n in range(max_number + 1)])


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerBase:
    """A word-level tokenizer over `words` (split on spaces, newlines kept as tokens; anything else is <|unk|>)
    with ChatML special tokens and template: the one tiny tokenizer tests and benches build models around."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(words)))}  # unique, in order
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    # Split on whitespace but keep newlines as tokens, so the chat template's layout survives a round trip.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed")]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def bpe_tokenizer(texts: list[str], vocab_size: int, pad_token: str = "<|endoftext|>") -> PreTrainedTokenizerBase:
    """A GPT-2-style byte-level BPE (as SmolLM2's, which --trim-vocab needs) trained on `texts`, with SmolLM2's
    ChatML specials and template. `pad_token="<|im_end|>"` makes pad equal eos, as in SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=alphabet))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token=pad_token, unk_token="<|endoftext|>")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_synthetic_export(out_dir: str | Path, test_fraction: float = 0.2, seed: int = 0, **kw) -> tuple[Path, Path]:
    """synthetic_arithmetic() written like `annotate export --test-fraction`: prefs-train/-test.parquet by prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from rlhf.data import split_by_prompt

    train, test = split_by_prompt(Dataset.from_list(synthetic_arithmetic(seed=seed, **kw)), test_fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "prefs-train.parquet", out / "prefs-test.parquet"
    for ds, path in zip((train, test), paths):
        pq.write_table(pa.Table.from_pylist(ds.to_list()), path)
    return paths


def tiny_config(vocab_size: int, *, layers: int = 2, hidden: int = 64, heads: int = 4, **overrides) -> LlamaConfig:
    """A Llama config shaped like SmolLM2 but tiny (SmolLM2 is a Llama architecture)."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_tiny_model(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **cfg) -> str:
    """Build a tiny causal LM around `tokenizer`, save both, return the directory (a usable `--model`)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), **cfg)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
