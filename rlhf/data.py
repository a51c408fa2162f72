"""Preference data for training: an export file (Parquet/JSONL) or a store directory -> `datasets.Dataset`.

Rows follow the export contract (TRL conversational preference format): `prompt` (list of messages), `chosen` and
`rejected` (one assistant message each), plus `prompt_id`, `margin`, `n_votes`, ... Held-out splits are by prompt,
so no prompt is seen in both train and test, and every command splits with annotate.split (see there): reward, DPO,
PPO and export hold out the same prompts of the same data for the same seed and fraction. Pairs longer than
`max_length` tokens are dropped with a printed count (never truncated: a truncated pair may cut off exactly the part
that made one response better).

Also here: a learnable synthetic preference set (correct arithmetic preferred) and a tiny word-level tokenizer for
it, so tests train real trainers in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.schema import SchemaError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

REQUIRED = ("prompt", "chosen", "rejected")


def _check_row(row: dict, where: str) -> dict:
    """Normalise one preference row; plain-string prompt/responses become messages (TRL accepts both)."""
    for f in REQUIRED:
        if f not in row or row[f] is None:
            raise SchemaError(f"{where}: missing field '{f}'")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise SchemaError(f"{where}: field 'prompt': expected a list of messages or a string")
    out = dict(row)
    out["prompt"] = [{"role": m["role"], "content": m["content"]} for m in prompt]
    for f in ("chosen", "rejected"):
        value = row[f]
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        if not isinstance(value, list) or not value or not isinstance(value[0], dict):
            raise SchemaError(f"{where}: field '{f}': expected [{{role: assistant, content}}] or a string")
        out[f] = [{"role": m.get("role", "assistant"), "content": m.get("content") or ""} for m in value]
    if not out.get("prompt_id"):
        # Group by prompt text when the file carries no id, so the held-out split stays by prompt.
        from annotate.schema import prompt_id_for

        out["prompt_id"] = prompt_id_for(out["prompt"])  # the id an import of the same messages gets
    return out


def _read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(_check_row(json.loads(line), f"{path}: line {i}"))
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for f in REQUIRED:
        if f not in table.column_names:
            raise SchemaError(f"{path}: missing field '{f}'")
    return [_check_row(r, f"{path}: row {i}") for i, r in enumerate(table.to_pylist())]


def _read_store(path: str) -> list[dict]:
    """A comparison store ('DIR' or 'DIR@VERSION'): votes aggregated into pairs by the export's own functions."""
    from annotate.export import aggregate, usable_votes
    from annotate.store import snapshot

    table, info = snapshot(path)
    pairs, counts = aggregate(usable_votes(table))
    print(f"[data] {info['store']}@{info['version']}: {info['rows']} records -> {pairs.num_rows} pairs with a "
          f"majority ({counts['no_majority']} without, dropped)")  # fmt: skip
    return [_check_row(r, f"{path}: pair {i}") for i, r in enumerate(pairs.to_pylist())]


def load_preferences(path: str | Path) -> Dataset:
    """Read an export (.parquet, .jsonl, .jsonl.gz) or a store directory into a Dataset of preference pairs."""

    from annotate.store import parse_store_spec

    root, version = parse_store_spec(path)
    if version is not None and Path(root).is_dir():
        return _as_dataset(_read_store(str(path)), path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no preference data at {path}")
    if path.is_dir():
        rows = _read_store(str(path))
    elif path.suffix == ".parquet":
        rows = _read_parquet(path)
    elif path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        rows = _read_jsonl(path)
    else:
        raise SchemaError(f"{path}: unknown format (expected .parquet, .jsonl, .jsonl.gz or a store directory)")
    return _as_dataset(rows, path)


def _as_dataset(rows: list[dict], path: str | Path) -> Dataset:
    from datasets import Dataset

    if not rows:
        raise SchemaError(f"{path}: no preference pairs")
    return Dataset.from_list(rows)


def split_by_prompt(ds: Dataset, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out whole prompts (never one pair of a prompt in train and another in test).

    The split is annotate.split's, the one export and PPO/RLOO (split_prompts) use: a prompt's side depends only
    on (seed, its messages), so PPO never evaluates on a prompt the reward model trained on when both split the
    same data with the same seed and fraction."""
    from annotate.split import held_out_mask

    if test_fraction <= 0:
        return ds, ds.select([])
    n_prompts = len(set(ds["prompt_id"]))
    if n_prompts < 2:
        raise SchemaError(f"a held-out split needs at least 2 prompts, got {n_prompts} (or pass --eval-data)")
    table = ds.select_columns(["prompt_id", "prompt"]).with_format("arrow")[:]
    is_test = held_out_mask(table, test_fraction, seed)
    if is_test.all() or not is_test.any():  # only when every prompt_id holds the same messages
        raise SchemaError(
            f"test fraction {test_fraction}: all {n_prompts} prompt ids hold one prompt, nothing to split"
        )
    train = ds.select([i for i, t in enumerate(is_test) if not t])
    test = ds.select([i for i, t in enumerate(is_test) if t])
    return train, test


def load_splits(data: str, eval_data: str | None = None, test_fraction: float = 0.1, seed: int = 0):
    """(train, test) from --data/--eval-data. An export's X-train.parquet finds its X-test.parquet sibling."""
    eval_data = heldout_path(data, eval_data)
    train = load_preferences(data)
    if eval_data is not None:
        return train, load_preferences(eval_data)
    return split_by_prompt(train, test_fraction, seed)


def pair_lengths(example: dict, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Token counts of prompt and of prompt+response, formatted by the chat template as the trainers do."""

    def n_tokens(messages: list[dict], **kw) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"])

    return {
        "prompt_len": n_tokens(example["prompt"], add_generation_prompt=True),
        "chosen_len": n_tokens(example["prompt"] + example["chosen"]),
        "rejected_len": n_tokens(example["prompt"] + example["rejected"]),
    }


def drop_long(ds: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, name: str = "train") -> Dataset:
    """Drop pairs whose prompt+response exceeds max_length tokens, printing how many (never silently)."""
    with_len = ds.map(lambda ex: pair_lengths(ex, tokenizer), desc=f"Measuring {name} pairs")
    keep = with_len.filter(lambda ex: max(ex["chosen_len"], ex["rejected_len"]) <= max_length)
    dropped = len(ds) - len(keep)
    if dropped:
        print(f"[data] {name}: dropped {dropped} of {len(ds)} pairs longer than {max_length} tokens")
    if len(keep) == 0:
        raise SchemaError(f"{name}: every pair is longer than max_length={max_length} tokens")
    return keep


def describe(ds: Dataset, name: str = "train") -> dict[str, Any]:
    """Pairs, prompts and tokens (needs the length columns added by drop_long); printed and returned."""
    tokens = sum(ds["chosen_len"]) + sum(ds["rejected_len"]) if "chosen_len" in ds.column_names else None
    info = {"pairs": len(ds), "prompts": len(set(ds["prompt_id"])), "tokens": tokens}
    print(f"[data] {name}: {info['pairs']} pairs, {info['prompts']} prompts, {tokens} tokens (chosen+rejected)")
    return info


# -- synthetic data for tests -------------------------------------------------------------------------------------


def synthetic_arithmetic(n_prompts: int = 100, wrong_per_prompt: int = 4, seed: int = 0, max_operand: int = 9):
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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
    words = ["user", "assistant", "system", "What", "is", "+", "-", "?", "=", "\n", "the", "answer"]
    vocab = {w: i for i, w in enumerate(specials + words + [str(n) for n in range(max_number + 1)])}
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


def prepare(
    data: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    eval_data: str | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_length: int = 512,
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Train/test splits with over-long pairs dropped (counted), plus pairs/prompts/tokens for each."""
    train, test = load_splits(data, eval_data, test_fraction, seed)
    train = drop_long(train, tokenizer, max_length, "train")
    test = drop_long(test, tokenizer, max_length, "test")
    return train, test, {"train": describe(train, "train"), "test": describe(test, "test")}


def trainer_columns(ds: Dataset, keep: tuple[str, ...] = REQUIRED) -> Dataset:
    """Only the columns a TRL trainer reads (extra export columns confuse some collators)."""
    return ds.remove_columns([c for c in ds.column_names if c not in keep])


def write_synthetic_export(out_dir: str | Path, test_fraction: float = 0.2, seed: int = 0, **kw) -> tuple[Path, Path]:
    """synthetic_arithmetic() written like `annotate export --test-fraction`: prefs-train/-test.parquet by prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    train, test = split_by_prompt(Dataset.from_list(synthetic_arithmetic(seed=seed, **kw)), test_fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "prefs-train.parquet", out / "prefs-test.parquet"
    for ds, path in zip((train, test), paths):
        pq.write_table(pa.Table.from_pylist(ds.to_list()), path)
    return paths


# -- prompts (for methods that generate: ppo, rloo, evaluate, distill) ----------------------------------------
Messages = list[dict[str, str]]


def load_prompts(path: str | Path) -> list[Messages]:
    """Unique prompts (as messages) from an export (.parquet or .jsonl), a candidate pool, or a .txt file."""
    from annotate.schema import SchemaError, as_messages

    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.exists():
            raise FileNotFoundError(f"{path}: no such prompts file")
        table = pq.read_table(path)
        if "prompt" not in table.column_names:
            raise SchemaError(f"{path}: missing field 'prompt'")
        seen: dict[str, Messages] = {}
        for i, p in enumerate(table.column("prompt").to_pylist()):
            try:
                msgs = as_messages(p)
            except SchemaError as e:
                raise SchemaError(f"{path}: row {i}: {e}") from None
            seen.setdefault(json.dumps(msgs, sort_keys=True), msgs)
        return list(seen.values())
    from annotate.pool import read_prompts  # JSONL (export, pool, prompts) or plain text

    return [row["prompt"] for row in read_prompts(path)]


def heldout_path(data: str, eval_data: str | None) -> str | None:
    """--eval-data, else the X-test.parquet an export wrote next to X-train.parquet, else None (split instead)."""
    if eval_data or "-train." not in Path(data).name:
        return eval_data
    sibling = Path(data).with_name(Path(data).name.replace("-train.", "-test."))
    return str(sibling) if sibling.exists() else None


def split_prompts(
    prompts: list[Messages], eval_path: str | None, test_fraction: float, seed: int
) -> tuple[list[Messages], list[Messages]]:
    """(train, held-out) prompts: --eval-data when given, else annotate.split's split by prompt.

    That split is the one split_by_prompt and export use, so on the same data, seed and fraction the held-out prompts
    here are exactly the ones the reward model did not train on (a smaller fraction gives a subset of them).
    """
    from annotate.split import split_messages

    if eval_path:
        return prompts, load_prompts(eval_path)
    train, test = split_messages(prompts, test_fraction, seed)
    if not train or not test:
        n = len({json.dumps(p, sort_keys=True) for p in prompts})
        raise ValueError(f"a held-out split needs at least 2 distinct prompts, got {n} (or pass --eval-data)")
    return train, test
