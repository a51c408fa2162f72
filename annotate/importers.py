"""`python -m annotate import SRC --format hh|trl|pool --store DIR`: bring outside data into a store.

- hh:   Anthropic HH-RLHF JSONL(.gz). `chosen`/`rejected` hold whole dialogues; the shared prompt is everything
        before the last "\\n\\nAssistant:", kept as messages. Chosen becomes response_a with choice "a".
        Records whose two dialogues do not share that prompt (a few exist in the real data) are skipped with a
        warning naming their lines; `--strict` makes them errors.
- trl:  TRL preference data (prompt/chosen/rejected, plain strings or conversational; or the implicit-prompt form
        with chosen/rejected as whole conversations) from JSONL(.gz), Parquet or a `datasets.save_to_disk` folder.
- pool: a candidate pool (JSONL, CSV or Parquet, see annotate.pool) is validated and copied as Parquet into
        DIR/pool/pool-<content hash>.parquet, next to the store's comparisons; the app can serve it from there.

Everything is read and validated before anything is written, and the comparisons land as one atomic Parquet
part: on bad input the store is left exactly as it was. Ids are derived from content, so a re-import of the
same file adds nothing, and the same response to the same prompt gets the same id across files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from annotate.pool import iter_jsonl, read_pool
from annotate.schema import SchemaError, as_messages, check_messages, new_comparison

ASSISTANT = "\n\nAssistant:"
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_ID_NAMESPACE = uuid.UUID("6f1c2b1e-6a43-4d0e-9a8e-2f1f4d2a7c10")  # fixed: ids must be stable across runs


def prompt_id_for(prompt: list[dict[str, str]]) -> str:
    return "p-" + hashlib.sha1(json.dumps(prompt, ensure_ascii=False).encode()).hexdigest()[:16]


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
    return prompt, row["chosen"][ic + len(ASSISTANT) :].strip(), row["rejected"][ir + len(ASSISTANT) :].strip()


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
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise SchemaError(f"{path}: not a saved `datasets` folder ({e})") from None
        splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
        for split, d in splits:
            for i, row in enumerate(d):
                yield (f"split {split} row {i + 1}" if split else f"row {i + 1}"), row
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                n += 1
                yield f"row {n}", row
    elif path.suffix == ".jsonl" or "".join(path.suffixes[-2:]) == ".jsonl.gz":
        for n, row in iter_jsonl(path):
            yield f"line {n}", row
    else:
        raise SchemaError(f"{path}: unknown format (use .jsonl, .jsonl.gz, .parquet or a saved datasets folder)")


def _as_reply(value: object, field: str, prompt: list[dict[str, str]] | None) -> tuple[list | None, str]:
    """A chosen/rejected value -> (its implied prompt prefix or None, the assistant reply text)."""
    if isinstance(value, str):
        return None, value  # empty replies are legitimate (bad) candidates
    if not isinstance(value, list) or not value:
        raise SchemaError(f"field '{field}': expected a string or a list of messages, got {type(value).__name__}")
    if prompt is not None and len(value) > len(prompt) and value[: len(prompt)] == prompt:
        value = value[len(prompt) :]  # conversational rows sometimes repeat the prompt in chosen/rejected
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise SchemaError(f"field '{field}': the last message must be an assistant message with text content")
    prefix = check_messages(value[:-1], field) if len(value) > 1 else None
    return prefix, last["content"]


def split_trl(row: dict) -> tuple[list[dict[str, str]], str, str]:
    for f in ("chosen", "rejected"):
        if f not in row or row[f] is None:
            raise SchemaError(f"field '{f}': missing")
    prompt = row.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str | list):
            raise SchemaError(f"field 'prompt': expected a string or a list of messages, got {type(prompt).__name__}")
        prompt = as_messages(prompt)
    pre_c, chosen = _as_reply(row["chosen"], "chosen", prompt)
    pre_r, rejected = _as_reply(row["rejected"], "rejected", prompt)
    if prompt is None:  # implicit prompt: the shared conversation before the two replies
        if pre_c is None or pre_c != pre_r:
            raise SchemaError("field 'prompt': missing, and chosen/rejected do not share a conversation prefix")
        prompt = pre_c
    elif pre_c is not None or pre_r is not None:
        raise SchemaError("field 'chosen': has several messages that are not the prompt")
    return prompt, chosen, rejected


def read_trl(path: Path) -> list[tuple[str, list, str, str]]:
    from tqdm import tqdm

    out = []
    for where, row in tqdm(_trl_rows(path), desc=f"reading {path.name}", unit=" rows", mininterval=0.5):
        try:
            out.append((where, *split_trl(row)))
        except SchemaError as e:
            raise SchemaError(f"{path}: {where}: {e}") from None
    return out


# -- into the store --------------------------------------------------------------------------------------------
def to_comparisons(pairs: list, *, path: Path, fmt: str, annotator: str, source: str) -> list[dict]:
    """(where, prompt, chosen, rejected) -> validated comparison records (chosen is response_a, choice 'a')."""
    now, session = datetime.now(UTC), f"import:{fmt}:{path.name}"
    records = []
    for where, prompt, chosen, rejected in pairs:
        pid = prompt_id_for(prompt)
        digest = hashlib.sha1(json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode()).hexdigest()
        try:
            rec = new_comparison(
                comparison_id=str(uuid.uuid5(_ID_NAMESPACE, f"{fmt}\0{where}\0{digest}")),
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


def import_pool(src: Path, store_dir: Path) -> Path:
    """Validate a pool and copy it to store_dir/pool/pool-<hash>.parquet (atomic; same content, same file)."""
    import pyarrow.parquet as pq

    from annotate.store import write_parquet_atomic

    table = read_pool(src)
    digest = hashlib.sha1(json.dumps(table.to_pylist(), ensure_ascii=False).encode()).hexdigest()[:16]
    out = store_dir / "pool" / f"pool-{digest}.parquet"
    if out.exists() and pq.read_table(out).equals(table):
        return out
    return write_parquet_atomic(store_dir / "pool", table, out.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="file (.jsonl, .jsonl.gz, .parquet, .csv for pools) or datasets folder")
    parser.add_argument(
        "--format",
        required=True,
        choices=("hh", "trl", "pool"),
        help="what SRC holds (a pool is copied into DIR/pool/)",
    )
    parser.add_argument("--store", required=True, type=Path, help="store directory (created if missing)")
    parser.add_argument("--annotator", default=None, help="annotator id to record (default: hh-rlhf / trl:<name>)")
    parser.add_argument("--source", default=None, help="source (model) to record for both responses")
    parser.add_argument("--strict", action="store_true", help="hh: fail on records whose prompts differ")


def main(args: argparse.Namespace) -> int:
    src, store_dir = Path(args.src), Path(args.store)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if args.format == "pool":
        out = import_pool(src, store_dir)
        print(f"pool {src} -> {out}")
        return 0
    if args.format == "hh":
        pairs, skipped = read_hh(src, strict=args.strict)
        default_who = "hh-rlhf"
    else:
        pairs, skipped = read_trl(src), []
        default_who = f"trl:{src.name.split('.')[0]}"
    records = to_comparisons(
        pairs, path=src, fmt=args.format, annotator=args.annotator or default_who, source=args.source or default_who
    )
    if skipped:
        lines = ", ".join(map(str, skipped[:20])) + (" ..." if len(skipped) > 20 else "")
        msg = f"warning: skipped {len(skipped)} records whose chosen/rejected prompts differ (lines {lines})"
        print(msg, file=sys.stderr)
    _write(records, store_dir, src)
    return 0


def _write(records: list[dict], store_dir: Path, src: Path) -> None:
    from annotate.store import ComparisonStore, read_table

    if store_dir.exists() and (store_dir / "wal").exists():
        have = set(read_table(str(store_dir)).column("comparison_id").to_pylist())
        new = [r for r in records if r["comparison_id"] not in have]
    else:
        new = records
    if new:
        ComparisonStore(store_dir).write_batch(new, name_hint="import")
    print(f"imported {len(new)} comparisons from {src} into {store_dir} ({len(records) - len(new)} already there)")
