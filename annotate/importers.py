"""`python -m annotate import SRC --format hh|trl|pool --store DIR`: bring outside data into a store.

- hh:   Anthropic HH-RLHF JSONL(.gz). `chosen`/`rejected` hold whole dialogues; the shared prompt is everything
        before the last "\\n\\nAssistant:", kept as messages. Chosen becomes response_a with choice "a".
        Records whose two dialogues do not share that prompt (a few exist in the real data) are skipped with a
        warning naming their lines; `--strict` makes them errors.
- trl:  TRL preference data (prompt/chosen/rejected, plain strings or conversational; or the implicit-prompt form
        with chosen/rejected as whole conversations; read by annotate.trl_rows) from JSONL(.gz), Parquet or a
        `datasets.save_to_disk` folder. A row that carries a gold answer keeps it as a verifier (annotate.verifiers):
        a `verifier` column (a spec, or its JSON text) is taken as it is; otherwise the first non-empty of the
        columns GOLD_COLUMNS ("answer", "gold_answer", "gold", "solution") becomes one: a number, or text that is
        one number ("1,234", "-3.5"), gives {"type": "numeric"}; other text {"type": "exact"}. Text holding "####"
        (GSM8K's convention for a worked solution) is cut to what follows the last "####". Gold text that is
        still not a one-line answer of at most GOLD_MAX_CHARS (a worked solution) gives no verifier; a warning
        counts those rows. Comparisons have no field for it, so the verifiers are stored the way pools are: a
        pool of the imported candidates (prompt and response ids as the comparisons') with `meta.verifier`, in the
        store's pool folder, where the audit reads pools from. Two rows of one prompt with different gold answers
        are refused, naming both places.
- pool: a candidate pool (JSONL, CSV or Parquet, see annotate.pool) is validated and copied as Parquet into
        the store's pool folder (annotate.store.pool_dir) as pool-<content hash>.parquet; the audit reads gold
        pairs from there.

Everything is read and validated before anything is written, and the comparisons land as one atomic batch
(ComparisonStore.add_new, under the store's lock): on bad input the store is left exactly as it was, and imports
running at the same time never write a comparison twice. A file without records is an error unless --allow-empty.

Ids are derived from content, never from where a record sits in the file:
- comparison_id = hash of (format, annotator, prompt, chosen, rejected). Blank lines, reordering, a repeated line or
  the file appended to itself therefore add nothing on re-import. The annotator is part of the vote's identity: the
  same pair judged by another annotator is another vote, so importing a file again under a different --annotator
  adds its votes again. The trl default annotator is trl:<file name>, so a renamed copy of a file counts as another
  annotator unless --annotator is given. --source (the model recorded for the responses) is not part of it: it
  describes the responses, not the judgement, and the first import's value is kept.
- Records repeated within one file are one vote: they are imported once and reported with their lines.
- prompt_id/response_id: the same response to the same prompt gets the same id across files (prompt ids come from
  annotate.schema.prompt_id_for, the one used everywhere a prompt has no id of its own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from annotate.errors import require_extra
from annotate.pool import read_pool
from annotate.readers import is_jsonl, iter_jsonl, iter_parquet
from annotate.schema import (
    SchemaError,
    check_pool_row,
    comparison_id_for,
    content_key,
    new_comparison,
    pool_table,
    prompt_id_for,
)
from annotate.trl_rows import check_distinct, split_trl
from annotate.verifiers import validate as validate_verifier

ASSISTANT = "\n\nAssistant:"
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# Columns of TRL-style data read as a gold answer, in this order of preference (see the module doc).
GOLD_COLUMNS = ("answer", "gold_answer", "gold", "solution")
GOLD_MAX_CHARS = 200  # longer gold text is a worked solution, which no exact comparison would ever match
_ONE_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
# prompt_id_for (imported above) is the schema's one prompt id; annotate.importers.prompt_id_for stays importable.


def response_id_for(prompt_id: str, text: str) -> str:
    return "r-" + hashlib.sha1(f"{prompt_id}\0{text}".encode()).hexdigest()[:16]


# -- HH-RLHF ---------------------------------------------------------------------------------------------------
def parse_hh_dialogue(text: str, field: str = "chosen") -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages (contents stripped; empty turns kept as they are)."""
    import re

    pieces = re.split(r"\n\n(Human|Assistant):", text)
    if pieces[0].strip():
        raise SchemaError(f"field '{field}': dialogue does not start with '\\n\\nHuman:'")
    return [{"role": HH_ROLES[r], "content": c.strip()} for r, c in zip(pieces[1::2], pieces[2::2])]


def split_hh(row: dict) -> tuple[list[dict[str, str]], str, str] | None:
    """(prompt messages, chosen reply, rejected reply), or None when the two dialogues share no prompt."""
    for f in ("chosen", "rejected"):
        if f not in row:
            raise SchemaError(f"field '{f}': missing")
        if not isinstance(row[f], str):
            raise SchemaError(f"field '{f}': expected a string, got {type(row[f]).__name__}")
        if not row[f].strip():
            raise SchemaError(f"field '{f}': empty text")
        if ASSISTANT not in row[f]:
            raise SchemaError(f"field '{f}': no '\\n\\nAssistant:' turn")
    # The prompt is the shared dialogue up to the last "\n\nAssistant:" the two have in common. Splitting each at
    # its own last marker would break records whose reply itself contains "Human:"/"Assistant:" text.
    ic = os.path.commonprefix([row["chosen"], row["rejected"]]).rfind(ASSISTANT)
    if ic < 0:
        return None
    ir = ic
    prompt = parse_hh_dialogue(row["chosen"][:ic])
    if not prompt or prompt[-1]["role"] != "user":
        raise SchemaError("field 'chosen': the prompt does not end with a Human turn")
    for i, m in enumerate(prompt):
        if not m["content"]:
            raise SchemaError(f"field 'chosen': prompt turn {i + 1} ({m['role']}) is empty")
    chosen, rejected = row["chosen"][ic + len(ASSISTANT) :].strip(), row["rejected"][ir + len(ASSISTANT) :].strip()
    check_distinct(chosen, rejected)
    return prompt, chosen, rejected


def read_hh(path: Path, *, strict: bool = False) -> tuple[list[tuple[str, list, str, str]], list[int]]:
    """[(where, prompt, chosen, rejected)] and the line numbers skipped because their prompts differ."""
    from tqdm import tqdm

    out, skipped = [], []
    for n, row in tqdm(iter_jsonl(path), desc=f"reading {path.name}", unit=" lines", mininterval=0.5):
        try:
            parsed = split_hh(row)
        except SchemaError as e:
            raise SchemaError(f"{path}: line {n}: {e}") from None
        if parsed is None:
            if strict:
                raise SchemaError(f"{path}: line {n}: field 'rejected': its prompt differs from the chosen one")
            skipped.append(n)
            continue
        out.append((f"line {n}", *parsed))
    return out, skipped


# -- TRL preference data ---------------------------------------------------------------------------------------
def _trl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if path.is_dir():
        datasets = require_extra("datasets", f"{path}: reading a `datasets.save_to_disk` folder")
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise SchemaError(f"{path}: not a saved `datasets` folder ({e})") from None
        splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
        for split, d in splits:
            for i, row in enumerate(d):
                yield (f"split {split} row {i + 1}" if split else f"row {i + 1}"), row
    elif path.suffix == ".parquet":
        for n, row in iter_parquet(path):
            yield f"row {n}", row
    elif is_jsonl(path):
        for n, row in iter_jsonl(path):
            yield f"line {n}", row
    else:
        raise SchemaError(f"{path}: unknown format (use .jsonl, .jsonl.gz, .parquet or a saved datasets folder)")


def read_trl(path: Path) -> list[tuple[str, list, str, str]]:
    return read_trl_gold(path)[0]


# prompt_id -> (verifier spec, where it was first given)
Verifiers = dict[str, tuple[dict, str]]


def gold_verifier(row: dict) -> tuple[dict | None, str | None, bool]:
    """(verifier or None, the column it came from, whether a gold column was there but gave no verifier) of a TRL
    row, per the module doc. A malformed `verifier` column raises SchemaError naming it."""
    spec = row.get("verifier")
    if isinstance(spec, str) and spec.strip():
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SchemaError(f"field 'verifier': not valid JSON ({e.msg})") from None
    if isinstance(spec, dict):  # a Parquet struct column fills the keys other rows' kinds use with None
        spec = {k: v for k, v in spec.items() if v is not None}
    if spec is not None and spec != "":
        validate_verifier(spec, "", field="verifier")
        return spec, "verifier", False
    for col in GOLD_COLUMNS:
        value = row.get(col)
        if value is None or value == "":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            numeric = {"type": "numeric", "answer": value}
            try:
                validate_verifier(numeric, "", field=col)
            except SchemaError:
                return None, col, True  # nan or inf: nothing to compare with
            return numeric, col, False
        if not isinstance(value, str):
            return None, col, True
        text = value.rsplit("####", 1)[-1].strip()
        if not text or "\n" in text or len(text) > GOLD_MAX_CHARS:
            return None, col, True
        if _ONE_NUMBER.fullmatch(text):
            return {"type": "numeric", "answer": float(text.replace(",", ""))}, col, False
        return {"type": "exact", "answer": text}, col, False
    return None, None, False


def read_trl_gold(path: Path) -> tuple[list[tuple[str, list, str, str]], Verifiers, int]:
    """(pairs as read_trl's, the verifiers of prompts whose rows carry gold answers, how many rows had gold text
    that gave no verifier)."""
    from tqdm import tqdm

    out, verifiers, unusable = [], {}, 0
    for where, row in tqdm(_trl_rows(path), desc=f"reading {path.name}", unit=" rows", mininterval=0.5):
        try:
            pair = split_trl(row)
            spec, col, skipped = gold_verifier(row)
        except SchemaError as e:
            raise SchemaError(f"{path}: {where}: {e}") from None
        out.append((where, *pair))
        unusable += skipped
        if spec is None:
            continue
        first = verifiers.setdefault(prompt_id_for(pair[0]), (spec, where))
        if first[0] != spec:
            why = f"the gold answer differs from the one on {first[1]} for the same prompt"
            raise SchemaError(f"{path}: {where}: field '{col}': {why}")
    return out, verifiers, unusable


def verifier_pool(pairs: list, verifiers: Verifiers, *, source: str, origin: str) -> list[dict]:
    """Pool rows (annotate.pool) of the candidates of prompts with a verifier, with the comparisons' ids; each
    response once. The file's path does not go in (`origin` only names it in errors): importing the file again,
    from anywhere, finds the same pool file (pool-<content hash>) rather than adding a second one."""
    rows, seen = [], set()
    for where, prompt, chosen, rejected in pairs:
        pid = prompt_id_for(prompt)
        if pid not in verifiers:
            continue
        meta = json.dumps({"verifier": verifiers[pid][0]}, sort_keys=True)
        for text in (chosen, rejected):
            rid = response_id_for(pid, text)
            if (pid, rid) in seen:
                continue
            seen.add((pid, rid))
            row = {"prompt_id": pid, "prompt": prompt, "response_id": rid, "response": text, "source": source}
            try:
                rows.append(check_pool_row({**row, "meta": meta}))
            except SchemaError as e:
                raise SchemaError(f"{origin}: {where}: {e}") from None
    return rows


# -- into the store --------------------------------------------------------------------------------------------
def drop_duplicates(pairs: list) -> tuple[list, list[str]]:
    """(pairs with each (prompt, chosen, rejected) once, first occurrence kept; the places of the repeats)."""
    seen: set[str] = set()
    out, repeats = [], []
    for pair in pairs:
        key = content_key(*pair[1:])
        if key in seen:
            repeats.append(pair[0])
        else:
            seen.add(key)
            out.append(pair)
    return out, repeats


def to_comparisons(pairs: list, *, path: Path, fmt: str, annotator: str, source: str) -> list[dict]:
    """(where, prompt, chosen, rejected) -> validated comparison records (chosen is response_a, choice 'a').
    A repeated pair yields one record (the same vote: same id)."""
    now, session = datetime.now(UTC), f"import:{fmt}:{path.name}"
    records, ids = [], set()
    for where, prompt, chosen, rejected in pairs:
        cid = comparison_id_for(fmt, annotator, prompt, chosen, rejected)
        if cid in ids:
            continue
        ids.add(cid)
        pid = prompt_id_for(prompt)
        try:
            rec = new_comparison(
                comparison_id=cid,
                prompt_id=pid,
                prompt=prompt,
                response_a_id=response_id_for(pid, chosen),
                response_a=chosen,
                source_a=source,
                response_b_id=response_id_for(pid, rejected),
                response_b=rejected,
                source_b=source,
                choice="a",
                annotator=annotator,
                session=session,
                created_at=now,
            )
        except SchemaError as e:
            raise SchemaError(f"{path}: {where}: {e}") from None
        records.append(rec)
    return records


def import_pool(src: Path, store_dir: Path, *, allow_empty: bool = False) -> Path | None:
    """Validate a pool and copy it into the store's pool folder as pool-<hash>.parquet (atomic; same content, same
    file). None when the pool has no rows (only with `allow_empty`): there is nothing to copy."""
    table = read_pool(src, allow_empty=allow_empty)
    if table.num_rows == 0:
        return None
    return store_pool(table, store_dir)


def store_pool(table: pa.Table, store_dir: Path) -> Path:
    """Copy a validated pool table into the store's pool folder as pool-<hash>.parquet (atomic; idempotent)."""
    import pyarrow.parquet as pq

    from annotate.store import ComparisonStore, pool_dir, write_parquet_atomic

    ComparisonStore(store_dir)  # make the folder a store, so later imports of comparisons accept it
    digest = hashlib.sha1(json.dumps(table.to_pylist(), ensure_ascii=False).encode()).hexdigest()[:16]
    out = pool_dir(store_dir) / f"pool-{digest}.parquet"
    if out.exists() and pq.read_table(out).equals(table):
        return out
    return write_parquet_atomic(out.parent, table, out.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="file (.jsonl, .jsonl.gz, .parquet, .csv for pools) or datasets folder")
    parser.add_argument(
        "--format",
        required=True,
        choices=("hh", "trl", "pool"),
        help="what SRC holds (a pool is copied into the store's pool folder)",
    )
    parser.add_argument("--store", required=True, type=Path, help="store directory (created if missing)")
    parser.add_argument(
        "--annotator",
        default=None,
        help="annotator id to record (default: hh-rlhf / trl:<name>); part of each vote's id, see the module doc",
    )
    parser.add_argument("--source", default=None, help="source (model) to record for both responses")
    parser.add_argument("--strict", action="store_true", help="hh: fail on records whose prompts differ")
    parser.add_argument("--allow-empty", action="store_true", help="a SRC without records is not an error")


def _places(wheres: list[str], limit: int = 20) -> str:
    """['line 3', 'line 7'] -> 'lines 3, 7' (the first `limit`; 'lines' even for one, as the callers' messages
    read 'lines ...'); mixed places are listed as they are."""
    shown = wheres[:limit]
    more = " ..." if len(wheres) > limit else ""
    units = {w.split(" ", 1)[0] for w in shown}
    if len(units) == 1 and all(w.count(" ") == 1 for w in shown):
        unit = units.pop()
        return f"{unit}s " + ", ".join(w.split(" ", 1)[1] for w in shown) + more
    return ", ".join(shown) + more


def check_store_dir(store_dir: Path) -> None:
    """Refuse at once (before reading SRC) a --store that is a file or lies under one. A folder that exists but is
    not a store is refused by the store itself when it is opened, still before anything is written (checking that
    here would race with a concurrent import that is creating the store)."""
    from annotate.store import StoreError, file_in_the_way

    if store_dir.exists() and not store_dir.is_dir():
        raise StoreError(f"{store_dir}: is a file, not a store folder")
    blocker = file_in_the_way(store_dir)
    if blocker is not None:
        raise StoreError(f"{store_dir}: cannot create a store there, {blocker} is a file")


def main(args: argparse.Namespace) -> int:
    src, store_dir = Path(args.src), Path(args.store)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    check_store_dir(store_dir)
    if args.format == "pool":
        out = import_pool(src, store_dir, allow_empty=args.allow_empty)
        print(f"pool {src} -> {out}" if out else f"pool {src}: no records, nothing imported")
        return 0
    verifiers: Verifiers = {}  # HH data has no gold answers
    if args.format == "hh":
        pairs, skipped = read_hh(src, strict=args.strict)
        default_who = "hh-rlhf"
    else:
        pairs, verifiers, unusable = read_trl_gold(src)
        skipped = []
        default_who = f"trl:{src.name.split('.')[0]}"
        if unusable:
            why = f"a gold column ({', '.join(GOLD_COLUMNS)}) that is not a one-line answer"
            print(f"warning: {unusable} rows have {why}: no verifier kept for them", file=sys.stderr)
    if skipped:
        msg = f"warning: skipped {len(skipped)} records whose chosen/rejected prompts differ"
        print(f"{msg} ({_places([f'line {n}' for n in skipped])})", file=sys.stderr)
    if not pairs and not args.allow_empty:
        why = f" ({len(skipped)} skipped, see above)" if skipped else ""
        raise SchemaError(f"{src}: no records to import{why}; --allow-empty accepts that")
    pairs, repeats = drop_duplicates(pairs)
    if repeats:
        print(f"{len(repeats)} duplicate records in {src} ({_places(repeats)}) imported once", file=sys.stderr)
    who = args.annotator or default_who
    records = to_comparisons(pairs, path=src, fmt=args.format, annotator=who, source=args.source or default_who)
    checkable = verifier_pool(pairs, verifiers, source=args.source or default_who, origin=str(src))
    _write(records, store_dir, src)
    if checkable:  # after the votes: a failed write here is repaired by importing again (both are idempotent)
        out = store_pool(pool_table(checkable), store_dir)
        print(f"kept {len(verifiers)} verifiers ({len(checkable)} candidates) in {out}")
    return 0


def _write(records: list[dict], store_dir: Path, src: Path) -> None:
    from annotate.store import ComparisonStore

    # add_new checks for ids already there and writes under one store-wide lock: concurrent imports cannot both
    # write a record, and the batch lands whole or not at all.
    written, there = ComparisonStore(store_dir).add_new(records)
    print(f"imported {len(written)} comparisons from {src} into {store_dir} ({there} already there)")
