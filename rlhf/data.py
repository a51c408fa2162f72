"""Preference data for training: an export file (Parquet/JSONL) or a store directory -> `datasets.Dataset`.

Rows follow the export contract (TRL conversational preference format): `prompt` (list of messages), `chosen` and
`rejected` (one assistant message each), plus `prompt_id`, `margin`, `n_votes`, ... Held-out splits are by prompt,
so no prompt is seen in both train and test, and every command splits with annotate.split (see there): reward, DPO,
PPO and export hold out the same prompts of the same data for the same seed and fraction. Pairs longer than
`max_length` tokens are dropped with a printed count (never truncated: a truncated pair may cut off exactly the part
that made one response better).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.schema import SchemaError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

REQUIRED = ("prompt", "chosen", "rejected")


def _check_row(row: dict, where: str) -> dict:
    """One preference row in TRL's conversational form (annotate.trl_rows, the reader `annotate import` uses too);
    plain-string prompt/responses become messages, a missing prompt_id the import's id. Errors name `where`."""
    from annotate.trl_rows import conversational

    try:
        return conversational(row)
    except SchemaError as e:
        raise SchemaError(f"{where}: {e}") from None


def _read_jsonl(path: Path) -> list[dict]:
    from annotate.readers import iter_jsonl  # the one JSONL reader: physical line numbers, gzip by suffix

    return [_check_row(row, f"{path}: line {n}") for n, row in iter_jsonl(path)]


def _read_parquet(path: Path) -> list[dict]:
    from annotate.readers import iter_parquet

    return [_check_row(row, f"{path}: row {n}") for n, row in iter_parquet(path, required=REQUIRED)]


def _read_store(path: str) -> list[dict]:
    """A comparison store ('DIR' or 'DIR@VERSION'): votes aggregated into pairs by the export's own functions, with
    criterion_correct decided by the verifiers of the store's pools where they can, as `annotate export` does."""
    from annotate.annotator_status import trainable_votes
    from annotate.criteria import load_verifiers, with_verifier_labels
    from annotate.export import aggregate, usable_votes
    from annotate.store import snapshot

    table, info = snapshot(path)
    votes, held = trainable_votes(usable_votes(table), path)  # as export: votes the app's checks hold train no one
    if held:
        print(f"[data] {held} votes of annotators held by the app's checks (or not yet qualified) left out")
    pairs, counts = aggregate(votes)
    pairs, verdicts = with_verifier_labels(pairs, load_verifiers(path))
    print(f"[data] {info['store']}@{info['version']}: {info['rows']} records -> {pairs.num_rows} pairs with a "
          f"majority ({counts['no_majority']} without, dropped; {verdicts['verified']} labelled `correct` by a "
          "verifier)")  # fmt: skip
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


# -- prompts (for methods that generate: ppo, rloo, evaluate, distill) ----------------------------------------
Messages = list[dict[str, str]]


def load_prompts(path: str | Path) -> list[Messages]:
    """Unique prompts (as messages) from an export (.parquet or .jsonl), a candidate pool, or a .txt file."""
    from annotate.readers import iter_parquet
    from annotate.schema import SchemaError, as_messages

    path = Path(path)
    if path.suffix == ".parquet":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such prompts file")
        seen: dict[str, Messages] = {}
        for n, row in iter_parquet(path, columns=["prompt"]):
            try:
                msgs = as_messages(row["prompt"])
            except SchemaError as e:
                raise SchemaError(f"{path}: row {n}: {e}") from None
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
