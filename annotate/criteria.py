"""Per-criterion labels of exported pairs: the annotators' optional picks and the verifiers' verdicts, as the columns
a reward model's criterion heads train on (`rlhf/train.py reward --heads`, rlhf/reward_heads.py).

Columns, one per criterion of annotate.schema.CRITERIA, oriented to the row's chosen/rejected like the rest of it:

    criterion_correct, criterion_helpful, criterion_harmless, criterion_concise   int8
        +1    the chosen response is the better one on that criterion
        -1    the rejected response is (a pair preferred overall can be the less correct one: the point of a
              separate head)
         0    picked "tie", or the picks on the pair cancel out
        null  nobody made a pick on that criterion
    correct_by   string: where criterion_correct came from, "verifier", "annotators", or null (no label)

Several votes on a pair: each standing a/b vote's pick counts +1 for the side it names and 0 for "tie", without the
vote's strength (the strength grades the overall choice, not the criterion); the sign of the sum is the label. In a
`--raw` export each row carries its own vote's picks.

The verifier's verdict: where the pair's prompt has a verifier (a pool's `meta.verifier`, annotate.verifiers) and
exactly one of the two responses passes it, criterion_correct is +1 or -1 for that response, whatever the annotators
picked: a check of the answer is a fact, while raters miss errors in fluent, confident answers (Wen et al. 2024,
arXiv 2409.12822), the very errors a `correct` head is meant to catch. Where both or neither pass, the verifier cannot
say which is more correct and the annotators' pick stays.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotate.schema import CRITERIA

COLUMNS = tuple(f"criterion_{c}" for c in CRITERIA)
LABEL = pa.int8()


def column(criterion: str) -> str:
    """The export column holding `criterion`'s label."""
    return f"criterion_{criterion}"


def vote_picks(votes: pa.Table, criterion: str) -> np.ndarray:
    """Each vote's pick on `criterion`: +1 response a, -1 response b, 0 tie, NaN none (float, for the sums)."""
    if "criteria" not in votes.column_names:
        return np.full(votes.num_rows, np.nan)
    pick = pc.map_lookup(votes.column("criteria"), query_key=criterion, occurrence="first")
    s = np.asarray(pick.to_numpy(zero_copy_only=False), dtype=object)
    return np.select([s == "a", s == "b", s == "tie"], [1.0, -1.0, 0.0], np.nan)


def _labels(values: np.ndarray) -> pa.Array:
    """Floats (NaN = no label) -> the int8 label column, the sign of each value."""
    missing = np.isnan(values)
    return pa.array(np.sign(np.where(missing, 0.0, values)).astype(np.int8), type=LABEL, mask=missing)


def per_vote_columns(votes: pa.Table, a_is_lo: np.ndarray) -> dict[str, pa.Array]:
    """Each vote's picks oriented to the pair's lexically smaller response id (+1 picks it), null where none: the
    columns the export's group-by sums per pair (nulls are skipped by the sum and not counted)."""
    flip = np.where(a_is_lo, 1.0, -1.0)
    return {f"c_{c}": pa.array(vote_picks(votes, c) * flip, from_pandas=True) for c in CRITERIA}


def aggregations() -> list[tuple[str, str]]:
    """What the export's group-by computes from per_vote_columns: the sum and the number of picks per pair."""
    return [(f"c_{c}", agg) for c in CRITERIA for agg in ("sum", "count")]


def pair_columns(groups: pa.Table, lo_wins: np.ndarray) -> dict[str, pa.Array]:
    """The label columns of aggregated pairs, oriented to each pair's winner (the chosen response)."""
    to_chosen = np.where(lo_wins, 1.0, -1.0)
    out = {}
    for c in CRITERIA:
        total = pc.fill_null(groups.column(f"c_{c}_sum"), 0.0).to_numpy()
        picked = groups.column(f"c_{c}_count").to_numpy() > 0
        out[column(c)] = _labels(np.where(picked, total * to_chosen, np.nan))
    out["correct_by"] = pc.if_else(pc.is_valid(out["criterion_correct"]), "annotators", pa.scalar(None, pa.string()))
    return out


def raw_columns(votes: pa.Table) -> dict[str, pa.Array]:
    """The label columns of un-aggregated votes: each vote's own picks, oriented to its own choice."""
    chose_a = pc.equal(votes.column("choice"), "a").to_numpy(zero_copy_only=False)
    out = {column(c): _labels(vote_picks(votes, c) * np.where(chose_a, 1.0, -1.0)) for c in CRITERIA}
    out["correct_by"] = pc.if_else(pc.is_valid(out["criterion_correct"]), "annotators", pa.scalar(None, pa.string()))
    return out


def with_verifier_labels(
    rows: pa.Table, verifiers: dict[str, dict], check: Callable[[dict, str], bool] | None = None
) -> tuple[pa.Table, dict[str, int]]:
    """`rows` (an export) with criterion_correct set by the verifier wherever it decides (module doc), and counts:
    `verified` pairs labelled by a verifier, `overridden` where the annotators had picked the other response.

    `verifiers` are keyed by the prompt's messages (annotate.pool.verifiers_by_prompt: a pool may name its prompts
    as it likes); `check(spec, answer)` defaults to annotate.verifiers.verify; each response is checked once."""
    from annotate.schema import prompt_id_for
    from annotate.verifiers import verify

    check = check or verify
    counts = {"verified": 0, "overridden": 0}
    if not verifiers or rows.num_rows == 0:
        return rows, counts
    passed: dict[tuple[str, str], bool] = {}

    def passes(pid: str, rid: str, text: str) -> bool:
        if (pid, rid) not in passed:
            passed[(pid, rid)] = bool(check(verifiers[pid], text))
        return passed[(pid, rid)]

    text = lambda side: pc.struct_field(pc.list_element(rows.column(side), 0), "content").to_pylist()  # noqa: E731
    row_pids = rows.column("prompt_id").to_pylist()
    first = {pid: i for i, pid in reversed(list(enumerate(row_pids)))}  # one row per prompt: its messages
    messages = rows.column("prompt").take(pa.array(list(first.values()), pa.int64())).to_pylist()
    keys = {pid: prompt_id_for(m) for pid, m in zip(first, messages)}  # prompt_id -> the verifiers' key
    pids, chosen, rejected = [keys[p] for p in row_pids], text("chosen"), text("rejected")
    ids = zip(rows.column("chosen_id").to_pylist(), rows.column("rejected_id").to_pylist())
    label, by = rows.column("criterion_correct").to_pylist(), rows.column("correct_by").to_pylist()
    for i, (pid, (c_id, r_id)) in enumerate(zip(pids, ids)):
        if pid not in verifiers:
            continue
        c_ok, r_ok = passes(pid, c_id, chosen[i]), passes(pid, r_id, rejected[i])
        if c_ok != r_ok:
            verdict = 1 if c_ok else -1
            counts["verified"] += 1
            counts["overridden"] += label[i] is not None and label[i] != 0 and label[i] != verdict
            label[i], by[i] = verdict, "verifier"
    rows = rows.set_column(rows.schema.get_field_index("criterion_correct"), "criterion_correct",
                           pa.array(label, LABEL))  # fmt: skip
    return rows.set_column(rows.schema.get_field_index("correct_by"), "correct_by", pa.array(by, pa.string())), counts


def load_verifiers(store: str, pool: str | Path | None = None) -> dict[str, dict]:
    """The verifiers of `pool` when given, else of the pools kept in the store (none for a store URL), keyed as
    annotate.pool.read_verifiers keys them."""
    from annotate.pool import read_verifiers
    from annotate.store import parse_store_spec

    if pool is not None:
        return read_verifiers(pool)
    return read_verifiers(store) if Path(parse_store_spec(store)[0]).is_dir() else {}
