"""`python -m annotate export --store DIR --out FILE`: a store as TRL conversational preference data.

Columns: prompt (messages), chosen / rejected (one assistant message each), margin, prompt_id, n_votes, agreement,
chosen_id, rejected_id, chosen_source, rejected_source, then the per-criterion labels criterion_correct,
criterion_helpful, criterion_harmless, criterion_concise (int8: +1 the chosen response is better on it, -1 the
rejected one, 0 tie, null no pick) and correct_by ("verifier", "annotators" or null), what a multi-head reward model
trains on (annotate/criteria.py has the rules; TRL's trainers ignore them). `--raw` adds annotator, comparison_id,
strength.

Verifiers: where a pair's prompt has a verifier (`meta.verifier` of `--pool`, else of the pools kept in the store)
and exactly one of its two responses passes, the verdict is criterion_correct, over the annotators' pick
(annotate/criteria.py says why); `--no-verifiers` keeps the annotators' picks alone and runs no check.

Aggregation: ties, both_bad, skips, retractions and the votes they retract are dropped, and so is every vote on
a pair flagged as broken, offensive or a duplicate. The remaining votes on
one pair (same prompt_id and unordered pair of response ids) are summed with weight = strength (1 slight,
2 clear, 3 much; 1 when not given). The side with the larger weighted sum wins; a zero sum is "no majority" and
the pair is dropped (counted). agreement = share of votes for the winner; margin = (weighted votes for the
winner - weighted votes against) / n_votes, so one "much" vote gives margin 3 and a 2-1 split of "clear" votes
gives 2/3. TRL's RewardTrainer subtracts `margin` inside its loss (-log sigmoid(r_c - r_r - margin)).

Soft labels (`--aggregate`, annotate/reliability.py): each pair also gets p_chosen, P(chosen is the better response)
>= 0.5, and weight = 2 p_chosen - 1 (what rlhf's `--label-trust` trains on; TRL ignores both). `majority` (default)
leaves every other column as above, p_chosen = the chosen side's share of the strength. `weighted` and `dawid-skene`
pick chosen by their own p_chosen and may reverse a majority: agreement and margin stay the votes' figures toward the
exported chosen response (below 0.5 / negative on a reversed pair, which `--min-agreement` above 0.5 then drops);
`against_majority` counts such pairs. A pair with p_chosen exactly 0.5 is dropped, counted as without a majority.

Annotator checks (the app's --qualify and --live-checks: annotate.qualify, annotate.annotator_status): the votes of
annotators who failed qualification or were paused, and the qualification votes of annotators who have not passed,
are left out by default (`held_out` counts them; `--include-held` keeps them). Their status is read from the store's
`_prefkit/annotators.jsonl` as it is now, also for an older `DIR@VERSION`.

Everything is vectorised (Arrow + NumPy): 1M comparisons export in seconds. The train/test split is by prompt,
so no prompt is in both, and it is annotate.split's: the prompts held out here are the ones reward, DPO and PPO
hold out of the same data with the same --seed and fraction (about, not exactly, that fraction of the prompts).

The store is read through annotate.store.snapshot: the stats (and the line printed) name the store version read,
so `--store DIR@VERSION` reads exactly the same votes again later. Files are written to a temporary name in the
destination folder, fsync'd, then renamed: a crash never leaves a partial file under the final name, and with
--test-fraction both files are renamed only once both are complete. Every option and path is checked before the
store is read: bad ones exit 2 with nothing written. So does a store with no pair to export, or none left to train
on after the split (`--allow-empty` writes the empty files instead).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotate import criteria
from annotate.errors import UsageError
from annotate.schema import MESSAGES, PAIR_FLAGS, SchemaError


def _one_message(text: pa.Array) -> pa.Array:
    """Strings -> list<struct<role, content>> with one assistant message each, without a Python loop."""
    role = pa.repeat("assistant", len(text))
    values = pa.StructArray.from_arrays([role, text.cast(pa.string())], ["role", "content"])
    offsets = pa.array(np.arange(len(text) + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, type=MESSAGES)


def _pair_key(table: pa.Table) -> pa.Array:
    """prompt_id + the unordered pair of response ids, as one string per row (vectorised)."""
    a, b = table.column("response_a_id"), table.column("response_b_id")
    lo, hi = pc.min_element_wise(a, b), pc.max_element_wise(a, b)
    return pc.binary_join_element_wise(table.column("prompt_id"), lo, hi, "\x1f")


def usable_votes(table: pa.Table) -> pa.Table:
    """Standing a/b votes between two different responses (ties, skips, retractions removed), and none on a pair
    that someone flagged as broken, offensive or a duplicate: such a pair is not fit to train on."""
    from annotate.store import standing_mask

    # Masks first and one filter at the end: every filter copies the long text columns.
    standing = standing_mask(table)
    flagged = pc.and_(standing, pc.fill_null(pc.is_in(table.column("flag"), value_set=pa.array(PAIR_FLAGS)), False))
    keep = pc.and_(
        standing,
        pc.and_(
            pc.is_in(table.column("choice"), value_set=pa.array(["a", "b"])),
            pc.not_equal(table.column("response_a_id"), table.column("response_b_id")),
        ),
    )
    if pc.any(flagged).as_py():
        flagged_pairs = _pair_key(table.select(["prompt_id", "response_a_id", "response_b_id"]).filter(flagged))
        keep = pc.and_(keep, pc.invert(pc.is_in(_pair_key(table), value_set=flagged_pairs)))
    return table.filter(keep)


def aggregate(votes: pa.Table, method: str = "majority") -> tuple[pa.Table, dict[str, int]]:
    """One row per pair with a preference under `method` (annotate.reliability.METHODS): columns of the export (see
    module doc) plus counts of what was dropped."""
    a_id = votes.column("response_a_id").combine_chunks()
    b_id = votes.column("response_b_id").combine_chunks()
    a_is_lo = pc.less(a_id, b_id).to_numpy(zero_copy_only=False)
    lo, hi = pc.if_else(a_is_lo, a_id, b_id), pc.if_else(a_is_lo, b_id, a_id)
    chose_a = pc.equal(votes.column("choice"), "a").to_numpy(zero_copy_only=False)
    sign = np.where(chose_a == a_is_lo, 1.0, -1.0)  # +1: the vote prefers the lexically smaller id
    weight = pc.fill_null(votes.column("strength"), 1).to_numpy(zero_copy_only=False).astype(np.float64)

    # Arrow's hash aggregation (multithreaded C++) groups the votes by pair; sorted by each pair's first vote, so
    # pairs come out in the order they first appear, whatever the threads did.
    order = np.arange(votes.num_rows, dtype=np.int64)
    per_vote = pa.table({"p": votes.column("prompt_id"), "lo": lo, "hi": hi, "w": sign * weight, "s": weight,
                         "pos": (sign > 0).astype(np.float64), "i": order,
                         **criteria.per_vote_columns(votes, a_is_lo)})  # fmt: skip
    groups = (
        per_vote.group_by(["p", "lo", "hi"])
        .aggregate(
            [("w", "sum"), ("w", "count"), ("s", "sum"), ("pos", "sum"), ("i", "min"), *criteria.aggregations()]
        )
        .sort_by("i_min")
    )
    n_groups = groups.num_rows
    score = groups.column("w_sum").to_numpy()  # weighted votes for lo minus hi
    n_votes = groups.column("w_count").to_numpy()
    n_lo = groups.column("pos_sum").to_numpy()
    first = groups.column("i_min").to_numpy()  # a representative vote per pair: texts and prompt

    # P(lo is the better response): the majority's is lo's share of the strength (0.5 exactly iff score == 0).
    p_lo = 0.5 * (1.0 + score / np.maximum(groups.column("s_sum").to_numpy(), 1e-12))
    if method != "majority":
        from annotate.reliability import pair_p_lo

        keys = tuple(groups.column(c).to_numpy(zero_copy_only=False) for c in ("p", "lo", "hi"))
        p_lo = pair_p_lo(votes, method, keys)
    has_majority = p_lo != 0.5  # weight 0: no preference, dropped like a tied majority
    lo_wins = p_lo > 0.5
    agreement = np.where(lo_wins, n_lo, n_votes - n_lo) / np.maximum(n_votes, 1)
    p_chosen = np.where(lo_wins, p_lo, 1.0 - p_lo)[has_majority]
    rows = pa.array(first[has_majority])
    used = ["prompt", "prompt_id", "response_a", "response_b", "response_a_id", "response_b_id"]
    rep = votes.select([*used, "source_a", "source_b"]).take(rows)  # take copies: only the columns written
    # Winner of each pair, then whether the representative vote's "a" is that winner.
    win_id = pc.if_else(pa.array(lo_wins[has_majority]), lo.take(rows), hi.take(rows))
    a_wins = pc.equal(rep.column("response_a_id"), win_id)
    pick = lambda x, y: pc.if_else(a_wins, rep.column(x), rep.column(y))  # noqa: E731
    out = pa.table(
        {
            "prompt": rep.column("prompt"),
            "chosen": _one_message(pick("response_a", "response_b").combine_chunks()),
            "rejected": _one_message(pick("response_b", "response_a").combine_chunks()),
            # toward the chosen response: |score| / n_votes under the majority, negative where a model reversed it
            "margin": pa.array(np.where(lo_wins, score, -score)[has_majority] / n_votes[has_majority]),
            "prompt_id": rep.column("prompt_id"),
            "n_votes": pa.array(n_votes[has_majority].astype(np.int64)),
            "agreement": pa.array(agreement[has_majority]),
            "chosen_id": pick("response_a_id", "response_b_id"),
            "rejected_id": pick("response_b_id", "response_a_id"),
            "chosen_source": pick("source_a", "source_b"),
            "rejected_source": pick("source_b", "source_a"),
            **criteria.pair_columns(groups.filter(pa.array(has_majority)), lo_wins[has_majority]),
            "p_chosen": pa.array(p_chosen),
            "weight": pa.array(2.0 * p_chosen - 1.0),
        }
    )
    against = (np.where(lo_wins, score, -score) <= 0)[has_majority]  # the majority rejected it or was tied
    return out, {"pairs": n_groups, "no_majority": int((~has_majority).sum()), "against_majority": int(against.sum())}


def raw_rows(votes: pa.Table) -> pa.Table:
    """Every standing a/b vote as its own row, with annotator and comparison ids (no aggregation)."""
    a_wins = pc.equal(votes.column("choice"), "a")
    pick = lambda x, y: pc.if_else(a_wins, votes.column(x), votes.column(y))  # noqa: E731
    strength = pc.fill_null(votes.column("strength"), 1).cast(pa.float64())
    return pa.table(
        {
            "prompt": votes.column("prompt"),
            "chosen": _one_message(pick("response_a", "response_b").combine_chunks()),
            "rejected": _one_message(pick("response_b", "response_a").combine_chunks()),
            "margin": strength,
            "prompt_id": votes.column("prompt_id"),
            "n_votes": pa.array(np.ones(votes.num_rows, dtype=np.int64)),
            "agreement": pa.array(np.ones(votes.num_rows)),
            "chosen_id": pick("response_a_id", "response_b_id"),
            "rejected_id": pick("response_b_id", "response_a_id"),
            "chosen_source": pick("source_a", "source_b"),
            "rejected_source": pick("source_b", "source_a"),
            **criteria.raw_columns(votes),
            "annotator": votes.column("annotator"),
            "comparison_id": votes.column("comparison_id"),
            "strength": votes.column("strength"),
        }
    )


def split_by_prompt(table: pa.Table, test_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Hold out whole prompts with the project's one split (annotate.split): a prompt's side depends only on
    (seed, its messages), so training commands splitting the same data with the same seed and fraction agree."""
    from annotate.split import split_table

    return split_table(table, test_fraction, seed)


def _write_file(table: pa.Table, f, suffix: str, name: str) -> None:
    """Write `table` to the open binary file `f` as Parquet or JSONL, in chunks with a progress bar."""
    from tqdm import tqdm

    chunk = 65536
    bar = tqdm(total=table.num_rows, desc=f"writing {name}", unit=" rows", disable=table.num_rows < chunk)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        # Dictionary pages only for the few columns that repeat a handful of values: on the long, mostly distinct
        # texts they cost a third of the write time and make the file larger (measured on 600k pairs).
        few = [c for c in ("prompt_id", "chosen_source", "rejected_source", "annotator") if c in table.column_names]
        with pq.ParquetWriter(f, table.schema, compression="zstd", use_dictionary=few) as w:
            for batch in table.to_batches(max_chunksize=chunk):
                w.write_batch(batch)
                bar.update(batch.num_rows)
    else:
        for batch in table.to_batches(max_chunksize=chunk):
            # Integers with nulls stay integers (pandas would make them floats: a label of -1 written as -1.0).
            frame = batch.to_pandas(integer_object_nulls=True)
            f.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode())
            bar.update(batch.num_rows)
    bar.close()


def write_tables(outputs: list[tuple[pa.Table, Path]]) -> list[Path]:
    """Write each (table, path), Parquet or JSONL by suffix, so that no path ever holds a partial file: each is
    written to a temporary name in its own folder and fsync'd; only when all are complete are they renamed."""
    for _, path in outputs:
        if path.suffix not in (".parquet", ".jsonl"):
            raise UsageError(f"{path}: unknown output format (use .parquet or .jsonl)")
    temps: list[Path] = []
    try:
        for table, path in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Same folder as the target: the rename stays on one filesystem, hence atomic.
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            temps.append(tmp)
            with open(tmp, "xb") as f:
                _write_file(table, f, path.suffix, path.name)
                f.flush()
                os.fsync(f.fileno())
        for (_, path), tmp in zip(outputs, temps):
            os.replace(tmp, path)
        for folder in {path.parent for _, path in outputs}:
            fd = os.open(folder, os.O_RDONLY)  # make the renames durable too
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)  # gone already when renamed; removed when the write failed
    return [path for _, path in outputs]


def write_table(table: pa.Table, path: Path) -> Path:
    """Parquet or JSONL by suffix, atomically (see write_tables)."""
    return write_tables([(table, path)])[0]


def check_options(
    *, test_fraction: float, min_agreement: float, seed: int, method: str = "majority", raw: bool = False
) -> None:
    """Refuse option values that cannot mean anything (NaN included), naming the command-line flag."""
    from annotate.reliability import METHODS

    if method not in METHODS:
        raise UsageError(f"--aggregate: must be one of {', '.join(METHODS)}, got {method!r}")
    if raw and method != "majority":
        raise UsageError("--aggregate: --raw writes every vote un-aggregated; leave --aggregate out")
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"--test-fraction: must be in [0, 1), got {test_fraction}")
    if not 0.0 <= min_agreement <= 1.0:  # also false for NaN
        raise UsageError(f"--min-agreement: must be in [0, 1], got {min_agreement}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed: must be a non-negative integer, got {seed}")


def check_outputs(paths: list[Path]) -> None:
    """Each output must name a file that can be created: not a folder, not under a file, not inside a store (whose
    folder belongs to the store's own files)."""
    from annotate.store import StoreError, file_in_the_way, store_containing

    for path in paths:
        if path.suffix not in (".parquet", ".jsonl"):
            raise UsageError(f"{path}: unknown output format (use .parquet or .jsonl)")
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; --out names the file to write")
        blocker = file_in_the_way(path)
        if blocker is not None:
            raise NotADirectoryError(f"{path}: {blocker} is a file, not a folder")
        inside = store_containing(path)
        if inside is not None:
            raise StoreError(f"{path}: inside the store {inside}; write exports outside it")


def export(
    store: str,
    out: str | Path,
    *,
    test_fraction: float = 0.0,
    min_agreement: float = 0.0,
    raw: bool = False,
    seed: int = 0,
    live: bool = False,
    pool: str | Path | None = None,
    verifiers: bool = True,
    method: str = "majority",
    allow_empty: bool = False,
    include_held: bool = False,
) -> dict:
    """Export a store (path, DIR@VERSION or URL); returns counts, the store version read (`store_version`,
    None when the store has no versions) and the files written. `live`: also votes not yet sealed into a version.
    `pool`: the pool whose verifiers set criterion_correct (default: the store's own pools); `verifiers=False`: none.
    `method`: how votes become one label per pair (--aggregate; see the module doc). No pair to export, or none left
    to train on after the split, raises SchemaError before anything is written, unless `allow_empty`: an empty file
    would only fail later, in a training run far from its cause. `include_held`: keep the votes of annotators held by
    the app's checks (see the module doc).
    """
    from annotate.annotator_status import trainable_votes
    from annotate.store import snapshot

    out = Path(out)
    check_options(test_fraction=test_fraction, min_agreement=min_agreement, seed=seed, method=method, raw=raw)
    files = [out.with_name(f"{out.stem}-{part}{out.suffix}") for part in ("train", "test")] if test_fraction else [out]
    check_outputs(files)
    checks = criteria.load_verifiers(str(store), pool) if verifiers else {}  # a bad pool fails before any reading
    table, info = snapshot(str(store), live=live)
    votes, held = usable_votes(table), 0
    if not include_held:
        votes, held = trainable_votes(votes, store)
    stats = {
        "store": str(info["store"]),
        "store_version": info.get("version"),
        "store_rows": info.get("rows", table.num_rows),
        "unsealed": info.get("unsealed", 0),
        "records": table.num_rows,
        "votes": votes.num_rows,
        "held_out": held,
    }
    if raw:
        rows = raw_rows(votes)
    else:
        rows, counts = aggregate(votes, method)
        stats["aggregate"] = method
        stats.update(counts)
        low = pc.less(rows.column("agreement"), min_agreement)
        stats["below_min_agreement"] = int(pc.sum(low).as_py() or 0)
        rows = rows.filter(pc.invert(low))
    rows, verdicts = criteria.with_verifier_labels(rows, checks)
    stats.update(verifier_labels=verdicts["verified"], verifier_overrides=verdicts["overridden"])
    stats["rows"] = rows.num_rows
    if not allow_empty:
        _refuse_empty(stats, rows.num_rows)
    if test_fraction > 0:
        train, test = split_by_prompt(rows, test_fraction, seed)
        if train.num_rows == 0 and not allow_empty:
            why = f"all {rows.num_rows} pairs fell in the held-out split; lower --test-fraction"
            raise SchemaError(f"{store_label(stats)}: no pairs to train on ({why} or pass --allow-empty)")
        write_tables([(train, files[0]), (test, files[1])])
        stats.update(train=train.num_rows, test=test.num_rows)
    else:
        write_tables([(rows, out)])
    stats["files"] = [str(f) for f in files]
    return stats


def _refuse_empty(stats: dict, rows: int) -> None:
    """SchemaError (exit 2, one line) for an export without a single pair, saying where the votes went."""
    if rows:
        return
    gone = [f"{stats[k]} {what}" for k, what in (("no_majority", "pairs without a majority"),
            ("below_min_agreement", "pairs below --min-agreement")) if stats.get(k)]  # fmt: skip
    why = f"{stats['records']} records, {stats['votes']} usable a/b votes" + "".join(f", {g}" for g in gone)
    raise SchemaError(f"{store_label(stats)}: no preference pairs to export ({why}; ties, both_bad, skips, retracted "
                      "and flagged votes make none); --allow-empty writes empty files")  # fmt: skip


def store_label(stats: dict) -> str:
    """'DIR@VERSION' (what --store takes to read the same votes again), or DIR for a store without versions."""
    return stats["store"] if stats.get("store_version") is None else f"{stats['store']}@{stats['store_version']}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        required=True,
        help="store directory, DIR@VERSION (exactly that version, as printed by an earlier export) or a store URL",
    )
    parser.add_argument("--out", required=True, type=Path, help="output file: .parquet or .jsonl")
    parser.add_argument(
        "--test-fraction", type=float, default=0.0, help="share of prompts held out: writes OUT-train and OUT-test"
    )
    parser.add_argument("--min-agreement", type=float, default=0.0, help="drop pairs whose agreement is lower (0-1)")
    parser.add_argument("--raw", action="store_true", help="every vote un-aggregated, with annotator ids")
    parser.add_argument(
        "--aggregate", default="majority", choices=["majority", "weighted", "dawid-skene"],
        help="one label per pair from: the strength-weighted majority (default); votes weighted by annotator "
        "reliability; or the Dawid-Skene latent-truth posterior (annotate/reliability.py). Every method writes "
        "p_chosen (soft label) and weight",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (0 or more)")
    parser.add_argument(
        "--live", action="store_true", help="also votes not yet sealed into a store version (not reproducible)"
    )
    parser.add_argument(
        "--pool", type=Path, default=None,
        help="pool whose meta.verifier sets criterion_correct where exactly one response passes (default: the "
        "pools kept in the store)",
    )  # fmt: skip
    parser.add_argument(
        "--no-verifiers", dest="verifiers", action="store_false",
        help="run no verifier: criterion_correct holds the annotators' picks alone",
    )  # fmt: skip
    parser.add_argument(
        "--include-held", action="store_true",
        help="keep the votes of annotators who failed the app's qualification or were paused by its live checks, "
        "and unpassed qualification votes (default: left out)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-empty", action="store_true",
        help="write the files even when no pair is left to export (default: exit 2 naming why)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    s = export(
        args.store,
        args.out,
        test_fraction=args.test_fraction,
        min_agreement=args.min_agreement,
        raw=args.raw,
        seed=args.seed,
        live=args.live,
        pool=args.pool,
        verifiers=args.verifiers,
        method=args.aggregate,
        allow_empty=args.allow_empty,
        include_held=args.include_held,
    )
    dropped = "" if args.raw else f", {s['no_majority']} pairs without a majority dropped"
    if s.get("against_majority"):
        dropped += f", {s['against_majority']} labelled against the majority vote ({args.aggregate})"
    low = f", {s['below_min_agreement']} below --min-agreement" if s.get("below_min_agreement") else ""
    if s["held_out"]:
        low += f", {s['held_out']} votes of held or unqualified annotators left out (--include-held keeps them)"
    line = f"store {store_label(s)}: {s['records']} records, {s['votes']} usable votes -> {s['rows']} rows"
    print(f"{line}{dropped}{low}", file=sys.stderr)
    if s["verifier_labels"]:
        print(f"verifiers decided criterion_correct on {s['verifier_labels']} pairs ({s['verifier_overrides']} "
              "against the annotators' pick)", file=sys.stderr)  # fmt: skip
    if s["unsealed"]:
        if args.live:
            print(f"note: {s['unsealed']} of them not yet in a store version", file=sys.stderr)
        else:
            print(f"note: {s['unsealed']} newer votes not yet in a store version left out (--live)", file=sys.stderr)
    if args.test_fraction and s.get("test") == 0:
        print(f"note: no prompt fell in the held-out split (--test-fraction {args.test_fraction})", file=sys.stderr)
    for f in s["files"]:
        print(f)
    return 0
