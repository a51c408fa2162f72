"""The one train/test split by prompt: export (--test-fraction), reward/DPO/SFT (rlhf.data.split_by_prompt) and
PPO/RLOO (rlhf.data.split_prompts) all hold out prompts through here.

A prompt's side is a pure function of (seed, the prompt's messages). Its score is a keyed hash (BLAKE2b keyed with
the seed) of annotate.schema.prompt_id_for(messages), read as a number in [0, 1); it is held out when
score < test_fraction. Consequences:

- The side never depends on the other prompts in the file, on row order or on the command that splits. With the
  same data, seed and fraction, the reward model's held-out prompts are exactly PPO's evaluation prompts, so PPO
  never evaluates on prompts the reward model trained on.
- Fractions nest: thresholds on one score make a smaller fraction's held-out set a subset of a larger one's. An
  evaluation split whose fraction is <= the reward model's therefore stays inside the reward model's held-out
  prompts; a larger one also takes prompts the reward model trained on (those scoring between the two fractions).
  Another seed is another split: the guarantee needs the same seed.
- The held-out share is test_fraction on average, not exactly (each prompt is an independent draw): 0.2 of 100
  prompts holds out about 20 (12 to 28 for 95 % of seeds). An exact count would have to look at the other prompts.
- With >= 2 prompts both sides are non-empty: when no score is under the fraction the lowest-scoring prompt is held
  out, and when all are the highest-scoring one stays in training. Those are the first prompt to enter and the last
  to leave the held-out set as the fraction grows, so the fallbacks keep the nesting for the same set of prompts.

The score is keyed on the messages' content id, not on a stored prompt_id: PPO sees only messages, and a pool may
name its prompts as it likes. Rows are still held out by prompt_id, whole. A prompt_id whose rows carry different
messages (a pool that reused an id) takes the lowest of their scores: if a messages-only split holds out any of its
prompts, the whole prompt_id is held out too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotate.schema import prompt_id_for

K = TypeVar("K", bound=Hashable)
Messages = list[dict[str, str]]


def split_score(prompt: str | Messages, seed: int) -> float:
    """The prompt's place in [0, 1) for split `seed` (uniform over prompts; see the module doc)."""
    return _score(prompt_id_for(prompt), seed)


def _score(content_id: str, seed: int) -> float:
    digest = hashlib.blake2b(content_id.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def held_out(scores: Mapping[K, float], test_fraction: float) -> set[K]:
    """Keys scoring under `test_fraction`; with >= 2 keys, at least one and never all (see the module doc).

    Ties move together, so keys with one score (the same messages under two ids) always share a side."""
    test = {k for k, s in scores.items() if s < test_fraction}
    if len(scores) >= 2:
        if not test:
            low = min(scores.values())
            test = {k for k, s in scores.items() if s == low}
        elif len(test) == len(scores):
            high = max(scores.values())
            test = {k for k, s in scores.items() if s != high}
    return test


def group_scores(table: pa.Table, seed: int) -> dict[str, float]:
    """prompt_id -> score, for a table with `prompt_id` and `prompt` (messages) columns.

    Only one row per distinct (prompt_id, messages) is hashed in Python: exports run to millions of rows."""
    if table.num_rows == 0:
        return {}
    prompts = table.column("prompt").combine_chunks()
    messages = prompts.flatten()
    # One string per row standing for its messages, so Arrow finds the distinct (prompt_id, messages) pairs.
    turns = pc.binary_join_element_wise(messages.field("role"), messages.field("content"), "\x1e")
    offsets = pc.subtract(prompts.offsets, prompts.offsets[0])
    text = pc.binary_join(pa.ListArray.from_arrays(offsets, turns), "\x1f")
    rows = pa.table({"id": table.column("prompt_id"), "text": text, "row": np.arange(table.num_rows)})
    firsts = rows.group_by(["id", "text"], use_threads=False).aggregate([("row", "min")])
    scores: dict[str, float] = {}
    ids = firsts.column("id").to_pylist()
    for pid, prompt in zip(ids, prompts.take(firsts.column("row_min")).to_pylist(), strict=True):
        s = split_score(prompt, seed)
        scores[pid] = min(s, scores.get(pid, s))
    return scores


def held_out_mask(table: pa.Table, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean per row of `table` (prompt_id, prompt columns): True for rows of held-out prompts."""
    test_ids = held_out(group_scores(table, seed), test_fraction)
    column = table.column("prompt_id")
    in_test = pc.is_in(column, value_set=pa.array(sorted(test_ids), type=column.type))
    return np.asarray(pc.fill_null(in_test, False).to_numpy(zero_copy_only=False), dtype=bool)


def split_table(table: pa.Table, test_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, test) rows of `table`, whole prompts on each side."""
    mask = held_out_mask(table, test_fraction, seed)
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def split_messages(prompts: list[Messages], test_fraction: float, seed: int) -> tuple[list[Messages], list[Messages]]:
    """(train, test) of a list of prompts given as messages, in their order. Repeats of one prompt share a side."""
    keys = [prompt_id_for(p) for p in prompts]
    test = held_out({k: _score(k, seed) for k in keys}, test_fraction)
    train = [p for k, p in zip(keys, prompts) if k not in test]
    return train, [p for k, p in zip(keys, prompts) if k in test]
