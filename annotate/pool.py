"""Candidate pools: prompts with several candidate responses each, read from JSONL, CSV or Parquet.

A pool row is (prompt_id, prompt, response_id, response, source, meta); see annotate.schema.POOL_SCHEMA.
`prompt` may be a plain string (one user turn) or a list of {role, content} messages; in CSV it is either
plain text or a JSON list. Every error names the file, the physical line (or Parquet row) and the field.

This module holds the one reader of each file kind (iter_lines, iter_jsonl, iter_csv, iter_parquet); the importers
reuse them. Text files are read as bytes and decoded one line at a time, so a byte that is not UTF-8 is reported on
its own physical line; a UTF-8 byte-order mark (Excel writes one), CRLF line ends and blank lines are accepted.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from annotate.schema import SchemaError, as_messages, check_pool_row, pool_table, prompt_id_for

# Fields are limited by the schema (MAX_POOL_TEXT), whose error names line and field; the csv module's own default
# of 128 KiB would refuse a long field first, with a worse message, and refuse long fields the schema allows (meta).
CSV_FIELD_LIMIT = 2**31 - 1
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): only text holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(physical line number, text with its line end) of a UTF-8 text file, gzip'd when named *.gz.

    Decoding line by line (not in chunks) makes a decoding error name the line it is on. A leading byte-order mark
    is dropped. Opening errors (missing file, a folder, no permission) propagate as they are: they name the path."""
    import gzip

    f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    n = 0
    with f:
        try:
            for n, raw in enumerate(f, start=1):
                if n == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad = raw[e.start : e.end].hex(" ")
                    raise SchemaError(
                        f"{path}: line {n}: not UTF-8 text (byte {bad} at column {e.start + 1}); save it as UTF-8"
                    ) from None
                yield n, text
        except (EOFError, OSError, zlib.error) as e:  # gzip raises these for a truncated or corrupt stream
            raise SchemaError(f"{path}: line {n + 1}: unreadable or truncated file ({e})") from None


def _surrogate_field(value: Any, field: str = "") -> str | None:
    """Path of the first string holding a lone surrogate, named as check_messages does ('prompt[0].content')."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field or "(value)"
        return None
    if isinstance(value, dict):
        items = ((k, v, f"{field}.{k}" if field else str(k)) for k, v in value.items())
    elif isinstance(value, list):
        items = ((None, v, f"{field}[{i}]") for i, v in enumerate(value))
    else:
        return None
    for key, v, sub in items:
        if key is not None and _surrogate_field(key) is not None:
            return sub
        if (found := _surrogate_field(v, sub)) is not None:
            return found
    return None


def parse_json(text: str, where: str, field: str = "") -> Any:
    """json.loads that names `where` (file and line) and the field for every way a text can fail: invalid JSON,
    nesting too deep to parse, or an escaped lone surrogate (valid JSON, but never encodable as UTF-8 later)."""
    prefix = f"{where}: field '{field}'" if field else where
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{prefix}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise SchemaError(f"{prefix}: JSON nested too deeply to read") from None
    check_surrogates(text, value, where, field)
    return value


def check_surrogates(text: str, value: Any, where: str, field: str = "") -> None:
    """Refuse a value parsed from JSON `text` that holds a lone surrogate, naming the field it is in."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    try:
        bad = _surrogate_field(value, field)
    except RecursionError:
        raise SchemaError(f"{where}: JSON nested too deeply to read") from None
    if bad is not None:
        raise SchemaError(f"{where}: field '{bad}': a lone surrogate escape (\\ud800-\\udfff): not valid Unicode text")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl or .jsonl.gz file; errors name file and line."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}: line {n}")
        if not isinstance(row, dict):
            raise SchemaError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def iter_csv(path: Path) -> Iterator[tuple[int, dict]]:
    """(physical line where the record starts, {column: text}) for each record of a CSV file with a header row.

    A quoted field may span lines, so the line is taken from the reader's line count, not the record count. Rows
    whose cells are all blank (blank lines; Excel's ',,,' rows) are skipped."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    # strict: a stray quote ('"ab"cd') or a quote never closed is an error naming its lines, not a silently
    # mangled field (or the rest of the file swallowed into one).
    reader = csv.reader((text for _, text in iter_lines(path)), strict=True)
    header: list[str] | None = None
    end = 0  # physical line the previous record ended on

    def place(start: int) -> str:
        return f"{path}: line {start}" if reader.line_num <= start else f"{path}: lines {start}-{reader.line_num}"

    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise SchemaError(f"{place(start)}: malformed CSV ({e})") from None
        end = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            raise SchemaError(f"{place(start)}: {len(row)} fields, but the header has {len(header)}")
        yield start, dict(zip(header, row))


def iter_parquet(path: Path, batch_rows: int = 4096) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) of a Parquet file, one row group at a time. A corrupt page names the rows it holds,
    text that is not UTF-8 its row and field."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)  # checks pages whose writer stored a checksum
    except (pa.ArrowException, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
    done = 0
    for g in range(pf.num_row_groups):
        size = pf.metadata.row_group(g).num_rows
        try:
            table = pf.read_row_group(g)
        except (pa.ArrowException, OSError) as e:
            raise SchemaError(f"{path}: rows {done + 1}-{done + size}: corrupt Parquet data ({e})") from None
        for batch in table.to_batches(max_chunksize=batch_rows):
            try:
                rows = batch.to_pylist()
            except UnicodeDecodeError:
                raise SchemaError(f"{path}: {_bad_text(batch, done)}: not UTF-8 text (corrupt file?)") from None
            for row in rows:
                done += 1
                yield done, row


def _bad_text(batch: pa.RecordBatch, before: int) -> str:
    """'row N: field 'x'' of the first value in `batch` that does not decode (only called once one fails)."""
    for name, column in zip(batch.schema.names, batch.columns):
        for i in range(len(column)):
            try:
                column[i].as_py()
            except UnicodeDecodeError:
                return f"row {before + i + 1}: field '{name}'"
    return f"rows {before + 1}-{before + len(batch)}"


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix == ".parquet":
        yield from iter_parquet(path)
    elif path.suffix == ".csv":
        for n, row in iter_csv(path):
            prompt = row.get("prompt") or ""
            if prompt.lstrip().startswith("["):
                try:
                    value = json.loads(prompt)
                except (json.JSONDecodeError, RecursionError):
                    pass  # plain text that happens to start with '[' (the schema checks it as text)
                else:
                    check_surrogates(prompt, value, f"{path}: line {n}", "prompt")
                    row["prompt"] = value
            yield n, row
    elif path.suffix == ".jsonl" or suffixes == ".jsonl.gz":
        yield from iter_jsonl(path)
    else:
        raise SchemaError(f"{path}: unknown pool format (use .jsonl, .jsonl.gz, .csv or .parquet)")


def read_pool(path: str | Path, *, allow_empty: bool = False) -> pa.Table:
    """Read and validate a candidate pool. Raises SchemaError naming file, line/row and field; a pool without rows
    is an error ("no records") unless `allow_empty`."""
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
        except RecursionError:  # the only recursive step is parsing `meta`
            raise SchemaError(f"{path}: {unit} {n}: field 'meta': JSON nested too deeply to read") from None
        key = (row["prompt_id"], row["response_id"])
        if key in seen:
            raise SchemaError(f"{path}: {unit} {n}: field 'response_id': duplicate {key[1]!r} for prompt {key[0]!r}")
        seen.add(key)
        rows.append(row)
    if not rows and not allow_empty:
        raise SchemaError(f"{path}: no records (the pool is empty)")
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


def _prompt_lines(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """(line number, raw prompt, prompt_id or None) from JSONL(.gz) rows or the lines of a plain text file."""
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        for n, row in iter_jsonl(path):  # names file and line for bad JSON or a truncated gzip
            if "prompt" not in row:
                raise SchemaError(f"{path}: line {n}: missing field 'prompt'")
            yield n, row["prompt"], row.get("prompt_id")
        return
    for n, line in iter_lines(path):
        if line.strip():
            yield n, line.rstrip("\r\n"), None


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read prompts from JSONL ({prompt_id?, prompt: text or messages} per line) or plain text (one per line).

    A candidate pool also works as a prompts file: rows repeating a prompt_id with the same prompt collapse
    into one. A prompt without a prompt_id gets annotate.schema.prompt_id_for's, the id an import of the same
    messages gets. Errors name the file, the line and the field.
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
            pid = prompt_id_for(messages)  # the id an import of the same prompt gets
        elif not isinstance(pid, str) or not pid.strip():
            raise SchemaError(f"{where}: field 'prompt_id': expected non-empty text, got {pid!r}")
        if pid in prompts and prompts[pid]["prompt"] != messages:
            raise SchemaError(f"{where}: field 'prompt_id': {pid!r} already used for a different prompt")
        prompts.setdefault(pid, {"prompt_id": pid, "prompt": messages})
    if not prompts:
        raise SchemaError(f"{path}: no prompts found")
    return list(prompts.values())
