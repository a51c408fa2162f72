"""Candidate pools: prompts with several candidate responses each, read from JSONL, CSV or Parquet.

A pool row is (prompt_id, prompt, response_id, response, source, meta); see annotate.schema.POOL_SCHEMA.
`prompt` may be a plain string (one user turn) or a list of {role, content} messages; in CSV it is either
plain text or a JSON list. Every error names the file, the row and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from annotate.schema import SchemaError, as_messages, check_pool_row, pool_table


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file; errors name file and line."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise SchemaError(f"{path}: line {n}: expected a JSON object")
                yield n, row
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path}: line {n + 1}: not UTF-8 text ({e.reason})") from None
    except (EOFError, OSError) as e:  # gzip raises these for a truncated or corrupt stream
        raise SchemaError(f"{path}: line {n + 1}: unreadable or truncated file ({e})") from None


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield i + 1, row
    elif path.suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                prompt = row.get("prompt") or ""
                if prompt.lstrip().startswith("["):
                    try:
                        row["prompt"] = json.loads(prompt)
                    except json.JSONDecodeError:
                        pass  # plain text that happens to start with '['
                yield i + 2, row  # line 1 is the header
    elif path.suffix == ".jsonl" or suffixes == ".jsonl.gz":
        yield from iter_jsonl(path)
    else:
        raise SchemaError(f"{path}: unknown pool format (use .jsonl, .jsonl.gz, .csv or .parquet)")


def read_pool(path: str | Path) -> pa.Table:
    """Read and validate a candidate pool. Raises SchemaError naming file, line/row and field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such pool file")
    unit = "row" if path.suffix == ".parquet" else "line"
    rows, seen = [], set()
    for n, raw in _rows(path):
        try:
            row = check_pool_row(raw)
        except SchemaError as e:
            raise SchemaError(f"{path}: {unit} {n}: {e}") from None
        key = (row["prompt_id"], row["response_id"])
        if key in seen:
            raise SchemaError(f"{path}: {unit} {n}: field 'response_id': duplicate {key[1]!r} for prompt {key[0]!r}")
        seen.add(key)
        rows.append(row)
    if not rows:
        raise SchemaError(f"{path}: the pool is empty")
    return pool_table(rows)


def write_pool(table_or_rows: pa.Table | list[dict], path: str | Path) -> Path:
    """Write a pool as JSONL (readable, diffable) or Parquet, by suffix."""
    path = Path(path)
    rows = table_or_rows.to_pylist() if isinstance(table_or_rows, pa.Table) else table_or_rows
    rows = [check_pool_row(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pool_table(rows), path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


GoldMap = dict[tuple[str, str, str], str]  # (prompt_id, lower response id, higher response id) -> winning id


def gold_pairs(pool: pa.Table) -> GoldMap:
    """Gold pairs (known answer) of a pool: both responses carry a numeric `gold_score` in `meta` and the scores
    differ; the higher score is the known-better response. The sampler and the audit both read gold from here."""
    scores: dict[str, dict[str, float]] = {}
    for row in pool.select(["prompt_id", "response_id", "meta"]).to_pylist():
        try:
            value = json.loads(row["meta"] or "{}").get("gold_score")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            scores.setdefault(row["prompt_id"], {})[row["response_id"]] = float(value)
    gold: GoldMap = {}
    for pid, by_id in scores.items():
        ids = sorted(by_id)
        for i, lo in enumerate(ids):
            for hi in ids[i + 1 :]:
                if by_id[lo] != by_id[hi]:
                    gold[(pid, lo, hi)] = lo if by_id[lo] > by_id[hi] else hi
    return gold


def _prompt_id(messages: list[dict[str, str]]) -> str:
    # Content hash: the same prompt gets the same id when the file is edited or reordered.
    digest = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return f"p-{digest[:10]}"


def _prompt_lines(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """(line number, raw prompt, prompt_id or None) from JSONL(.gz) rows or the lines of a plain text file."""
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        for n, row in iter_jsonl(path):  # names file and line for bad JSON or a truncated gzip
            if "prompt" not in row:
                raise SchemaError(f"{path}: line {n}: missing field 'prompt'")
            yield n, row["prompt"], row.get("prompt_id")
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield n, line.rstrip("\n"), None


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read prompts from JSONL ({prompt_id?, prompt: text or messages} per line) or plain text (one per line).

    A candidate pool also works as a prompts file: rows repeating a prompt_id with the same prompt collapse
    into one. Errors name the file, the line and the field.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts: dict[str, dict[str, Any]] = {}
    for n, raw_prompt, pid in _prompt_lines(path):
        where = f"{path}: line {n}"
        try:
            messages = as_messages(raw_prompt)
        except SchemaError as e:
            raise SchemaError(f"{where}: {e}") from None
        if pid is None:
            pid = _prompt_id(messages)
        elif not isinstance(pid, str) or not pid.strip():
            raise SchemaError(f"{where}: field 'prompt_id': expected non-empty text, got {pid!r}")
        if pid in prompts and prompts[pid]["prompt"] != messages:
            raise SchemaError(f"{where}: field 'prompt_id': {pid!r} already used for a different prompt")
        prompts.setdefault(pid, {"prompt_id": pid, "prompt": messages})
    if not prompts:
        raise SchemaError(f"{path}: no prompts found")
    return list(prompts.values())
