"""The one reader of each file kind the project reads: text lines, JSONL (optionally gzip'd), CSV and Parquet.

Pools, prompts files, imports (HH, TRL) and the training data (rlhf.data) all read through these, so every error
names the file, the physical line (or Parquet row) and, where there is one, the field. Text files are read as bytes
and decoded one line at a time, so a byte that is not UTF-8 is reported on its own physical line; a UTF-8 byte-order
mark (Excel writes one), CRLF line ends and blank lines are accepted. Errors are annotate.schema.SchemaError
(exit 2 on the command line).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from annotate.schema import SchemaError

# Fields are limited by the schema (MAX_POOL_TEXT), whose error names line and field; the csv module's own default
# of 128 KiB would refuse a long field first, with a worse message, and refuse long fields the schema allows (meta).
CSV_FIELD_LIMIT = 2**31 - 1
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): only text holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def is_jsonl(path: Path) -> bool:
    """A .jsonl or .jsonl.gz name."""
    return path.suffix == ".jsonl" or "".join(path.suffixes[-2:]) == ".jsonl.gz"


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


def iter_parquet(
    path: Path, batch_rows: int = 4096, *, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row) of a Parquet file, one row group at a time. A corrupt page names the rows it holds,
    text that is not UTF-8 its row and field. `columns`: read only these; they and `required` must exist (checked
    before any row, so a file without rows still names a missing field)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)  # checks pages whose writer stored a checksum
    except (pa.ArrowException, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
    for name in [*required, *(columns or ())]:
        if name not in pf.schema_arrow.names:
            raise SchemaError(f"{path}: missing field '{name}'")
    done = 0
    for g in range(pf.num_row_groups):
        size = pf.metadata.row_group(g).num_rows
        try:
            table = pf.read_row_group(g, columns=list(columns) if columns is not None else None)
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
