"""Bad input through `python -m annotate` (a real subprocess): exit 2 with one `error:` line naming the file, the
physical line (or row) and the field, never a traceback, and the store byte-for-byte as it was. Also what must be
accepted: a UTF-8 byte-order mark, CRLF, blank lines, CSV fields over the csv module's 128 KiB default."""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.__main__ import main
from annotate.schema import MAX_POOL_TEXT
from annotate.store import read_table

REPO = Path(__file__).resolve().parents[1]
GOOD_HH = {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}
GOOD_TRL = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
POOL_COLUMNS = ["prompt_id", "prompt", "response_id", "response", "source", "meta"]


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "annotate", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def tree_digest(root: Path) -> dict[str, str] | None:
    """sha256 of every file under `root` ("dir" for folders): equal before and after means nothing changed at all."""
    if not root.exists():
        return None
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def lines(path: Path, rows: list, *, end: str = "\n") -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + end for r in rows))
    return path


def trl_rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def pool_row(i: int, **kw) -> dict:
    return {"prompt_id": "p", "prompt": "Hi", "response_id": f"r{i}", "response": f"Hello {i}", "source": "me",
            "meta": "{}", **kw}  # fmt: skip


def csv_pool(path: Path, rows: list[dict | bytes], *, bom: bool = False, crlf: bool = False) -> Path:
    """A pool CSV; a bytes item is written as it is (a raw line), so tests can place exact bytes on exact lines."""
    out = io.BytesIO()
    out.write(codecs.BOM_UTF8 if bom else b"")
    for row in [dict(zip(POOL_COLUMNS, POOL_COLUMNS)), *rows]:
        if isinstance(row, bytes):
            out.write(row)
            continue
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerow([row[c] for c in POOL_COLUMNS])
        out.write(buf.getvalue().encode())
    path.write_bytes(out.getvalue())
    return path


def corrupt_parquet(path: Path, rows: list[dict]) -> Path:
    """A valid (snappy) Parquet file with 64 bytes in the middle of its data pages inverted."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="snappy")
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    return path


def deep_json(depth: int = 100_000) -> str:
    return '{"prompt": "q", "chosen": ' + "[" * depth + "]" * depth + ', "rejected": "r"}'


# A pool record spanning lines 2-4 (a quoted response with two newlines), so record 2 is on physical line 5.
MULTILINE = pool_row(9, response="one\ntwo\nthree")
CP1252 = b"p,Hi,r1,caf\xe9 cr\xe8me,me,{}\n"  # Windows-1252: \xe9 and \xe8 are not UTF-8
VERIFIER = {"verifier": {"type": "exact", "answer": "Hello"}}
OTHER_VERIFIER = {"verifier": {"type": "exact", "answer": "Bye"}}
BAD_REGEX = {"verifier": {"type": "regex", "pattern": "("}}

# case -> (format, file name, writer, patterns the message must hold besides the file name)
IMPORT_CASES = {
    "lone surrogate escape": (
        "trl", "t.jsonl", lambda p: lines(p, [GOOD_TRL, {**GOOD_TRL, "chosen": "\ud800 half a pair"}]),
        ["line 2", "field 'chosen'", "surrogate"],
    ),
    "lone surrogate in a prompt message": (
        "trl", "t.jsonl", lambda p: lines(p, [{**GOOD_TRL, "prompt": [{"role": "user", "content": "x\udc00"}]}]),
        ["line 1", r"field 'prompt\[0\]\.content'", "surrogate"],
    ),
    "lone surrogate in a CSV prompt list": (
        "pool", "p.csv", lambda p: csv_pool(p, [pool_row(0, prompt='[{"role": "user", "content": "\\ud800"}]')]),
        ["line 2", r"field 'prompt\[0\]\.content'", "surrogate"],
    ),
    "JSON nested 100,000 deep": (
        "trl", "t.jsonl", lambda p: lines(p, [GOOD_TRL, deep_json()]), ["line 2", "nested too deeply"],
    ),
    "corrupt Parquet pages": (
        "trl", "t.parquet", lambda p: corrupt_parquet(p, trl_rows(3000)), [r"rows \d+-\d+", "corrupt"],
    ),
    "corrupt pool Parquet pages": (
        "pool", "p.parquet", lambda p: corrupt_parquet(p, [pool_row(i) for i in range(3000)]),
        [r"rows \d+-\d+", "corrupt"],
    ),
    "Windows-1252 CSV": (
        "pool", "p.csv", lambda p: csv_pool(p, [MULTILINE, CP1252]), ["line 5", "not UTF-8", "e9"],
    ),
    "CSV schema error after a multi-line record": (
        "pool", "p.csv", lambda p: csv_pool(p, [MULTILINE, pool_row(1, response_id=" ")]),
        ["line 5", "field 'response_id'"],
    ),
    "CSV quote never closed": (
        "pool", "p.csv", lambda p: csv_pool(p, [pool_row(0), b'p,Hi,r1,"never closed,me,{}\n', pool_row(2)]),
        ["lines 3-4", "malformed CSV"],
    ),
    "CSV response over 128 KiB": (
        "pool", "p.csv", lambda p: csv_pool(p, [pool_row(0), pool_row(1, response="x" * 140_000)]),
        ["line 3", "field 'response'", f"over the limit of {MAX_POOL_TEXT:,}"],
    ),
    # Decoding in chunks reported these thousands of lines off; each line is decoded on its own now.
    "not UTF-8 on line 3001 of a JSONL": (
        "trl", "t.jsonl",
        lambda p: p.write_bytes(lines(p, trl_rows(3000)).read_bytes() + b'{"prompt": "\xff"}\n' + b"{}\n" * 50),
        ["line 3001", "not UTF-8"],
    ),
    "not UTF-8 on line 3001 of a gzip'd JSONL": (
        "trl", "t.jsonl.gz",
        lambda p: p.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in trl_rows(3000)).encode()
                                              + b'{"prompt": "\xff"}\n')),
        ["line 3001", "not UTF-8"],
    ),
    "hh: chosen identical to rejected": (
        "hh", "hh.jsonl", lambda p: lines(p, [GOOD_HH, {**GOOD_HH, "rejected": GOOD_HH["chosen"] + "  "}]),
        ["line 2", "field 'rejected'", "identical to 'chosen'"],
    ),
    "trl: chosen identical to rejected": (
        "trl", "t.jsonl", lambda p: lines(p, [GOOD_TRL, GOOD_TRL, {**GOOD_TRL, "rejected": "4"}]),
        ["line 3", "field 'rejected'", "identical to 'chosen'"],
    ),
    "0-byte file": ("trl", "t.jsonl", lambda p: p.write_bytes(b""), ["no records"]),
    "0-byte gzip file": ("hh", "hh.jsonl.gz", lambda p: p.write_bytes(b""), ["no records"]),
    "empty gzip stream": ("hh", "hh.jsonl.gz", lambda p: p.write_bytes(gzip.compress(b"")), ["no records"]),
    "blank lines only": ("trl", "t.jsonl", lambda p: p.write_bytes(b"\n  \r\n\t\n"), ["no records"]),
    "0-row Parquet": (
        "trl", "t.parquet", lambda p: pq.write_table(pa.Table.from_pylist(trl_rows(1)).slice(0, 0), p), ["no records"],
    ),
    "0-row pool Parquet": (
        "pool", "p.parquet", lambda p: pq.write_table(pa.Table.from_pylist([pool_row(0)]).slice(0, 0), p),
        ["no records"],
    ),
    "pool CSV with a header only": ("pool", "p.csv", lambda p: csv_pool(p, []), ["no records"]),
    # A verifier (meta.verifier, annotate.verifiers) is checked on load, not when a reward first calls it.
    "pool: malformed verifier after a blank line": (
        "pool", "p.jsonl",
        lambda p: lines(p, [pool_row(0, meta=VERIFIER), "", pool_row(1, meta={"verifier": {"type": "numeric"}})]),
        ["line 3", r"field 'meta\.verifier\.answer'"],
    ),
    "pool CSV: verifier regex that does not compile": (
        "pool", "p.csv",
        lambda p: csv_pool(p, [MULTILINE, pool_row(1, meta=json.dumps(BAD_REGEX))]),
        ["line 5", r"field 'meta\.verifier\.pattern'", "not a valid regular expression"],
    ),
    "pool: two verifiers for one prompt": (
        "pool", "p.jsonl",
        lambda p: lines(p, [pool_row(0, meta=VERIFIER), pool_row(1, meta=OTHER_VERIFIER)]),
        ["line 2", r"field 'meta\.verifier'", "differs from the verifier on line 1"],
    ),
}  # fmt: skip
EMPTY = [c for c, (*_, patterns) in IMPORT_CASES.items() if patterns == ["no records"]]


def assert_refused(r: subprocess.CompletedProcess, *named: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    for pattern in named:
        assert re.search(pattern, last), f"{pattern!r} not in {last!r}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "store"
    src = lines(root.parent / "good.jsonl", trl_rows(3))
    assert main(["import", str(src), "--format", "trl", "--store", str(root)]) == 0
    return root


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_bad_import_exits_2_naming_the_place_and_leaves_the_store_unchanged(case, store, tmp_path):
    fmt, name, make, patterns = IMPORT_CASES[case]
    src = tmp_path / name
    make(src)
    before = tree_digest(store)
    r = cli("import", src, "--format", fmt, "--store", store)
    assert_refused(r, re.escape(str(src)), *patterns)
    assert tree_digest(store) == before
    if case in ("lone surrogate escape", "Windows-1252 CSV"):  # nor is a missing store created
        assert_refused(cli("import", src, "--format", fmt, "--store", tmp_path / "fresh"), re.escape(str(src)))
        assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("case", EMPTY)
def test_empty_input_is_accepted_with_allow_empty(case, tmp_path, capsys):
    fmt, name, make, _ = IMPORT_CASES[case]
    src = tmp_path / name
    make(src)
    assert main(["import", str(src), "--format", fmt, "--store", str(tmp_path / "S"), "--allow-empty"]) == 0
    assert "imported 0 comparisons" in capsys.readouterr().out or fmt == "pool"
    if fmt != "pool":
        assert read_table(str(tmp_path / "S")).num_rows == 0


def test_import_store_that_is_a_file_or_a_foreign_folder(tmp_path):
    src = lines(tmp_path / "t.jsonl", trl_rows(2))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    for target, message in [(a_file, "is a file"), (a_file / "S", "is a file"), (foreign, "not a store")]:
        before = tree_digest(a_file), tree_digest(foreign)
        assert_refused(cli("import", src, "--format", "trl", "--store", target), re.escape(str(target)), message)
        assert (tree_digest(a_file), tree_digest(foreign)) == before


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path, capsys):
    rows = trl_rows(3)
    body = "".join(json.dumps(r) + "\r\n" + ("\r\n" if i == 1 else "") for i, r in enumerate(rows))
    (tmp_path / "t.jsonl").write_bytes(codecs.BOM_UTF8 + body.encode())
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(codecs.BOM_UTF8 + body.encode()))
    for name, store in [("t.jsonl", tmp_path / "S1"), ("t.jsonl.gz", tmp_path / "S2")]:
        assert main(["import", str(tmp_path / name), "--format", "trl", "--store", str(store)]) == 0
        got = read_table(str(store)).to_pylist()
        assert sorted(r["prompt"][0]["content"] for r in got) == [r["prompt"] for r in rows]
        assert {(r["response_a"], r["response_b"]) for r in got} == {(r["chosen"], r["rejected"]) for r in rows}

    from annotate.pool import read_pool

    src = csv_pool(tmp_path / "p.csv", [pool_row(0), b",,,,,\r\n", pool_row(1), b"\r\n", MULTILINE], bom=True,
                   crlf=True)  # fmt: skip
    table = read_pool(src)
    assert table.column("prompt_id").to_pylist() == ["p", "p", "p"]  # the header's first cell lost its BOM
    assert table.column("response").to_pylist() == ["Hello 0", "Hello 1", "one\ntwo\nthree"]
    assert main(["import", str(src), "--format", "pool", "--store", str(tmp_path / "P")]) == 0


def test_csv_field_over_128_kib_is_accepted(tmp_path):
    from annotate.pool import read_pool

    meta = json.dumps({"note": "m" * 200_000})  # meta has no schema size limit: the csv module's must not apply
    src = csv_pool(tmp_path / "p.csv", [pool_row(0, meta=meta), pool_row(1, response="y" * MAX_POOL_TEXT)])
    table = read_pool(src)
    assert table.column("meta").to_pylist()[0] == meta and len(table.column("response")[1].as_py()) == MAX_POOL_TEXT
    r = cli("import", src, "--format", "pool", "--store", tmp_path / "S")
    assert r.returncode == 0, r.stderr


EXPORT_CASES = {
    "--seed -1": (["--seed", "-1"], "o.parquet", ["--seed"]),
    "--min-agreement 2": (["--min-agreement", "2"], "o.parquet", ["--min-agreement", r"\[0, 1\]"]),
    "--min-agreement -5": (["--min-agreement", "-5"], "o.parquet", ["--min-agreement"]),
    "--min-agreement nan": (["--min-agreement", "nan"], "o.parquet", ["--min-agreement", "nan"]),
    "--test-fraction 1.5": (["--test-fraction", "1.5"], "o.parquet", ["--test-fraction"]),
    "--test-fraction nan": (["--test-fraction", "nan"], "o.parquet", ["--test-fraction"]),
    "--out a folder": ([], "folder.parquet", ["folder.parquet", "is a folder"]),
    "--out under a file": ([], "notes.txt/o.parquet", ["notes.txt", "is a file"]),
    "--out inside the store": ([], "STORE/exports/o.parquet", ["inside the store"]),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_bad_export_exits_2_and_writes_nothing(case, store, tmp_path):
    extra, out_name, patterns = EXPORT_CASES[case]
    (tmp_path / "folder.parquet").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    out = store / out_name[len("STORE/") :] if out_name.startswith("STORE/") else tmp_path / out_name
    before, files_before = tree_digest(store), tree_digest(tmp_path)
    r = cli("export", "--store", store, "--out", out, *extra)
    assert_refused(r, *patterns)
    assert tree_digest(store) == before and tree_digest(tmp_path) == files_before


def test_export_store_that_is_missing_a_file_or_not_a_store(tmp_path):
    a_file = tmp_path / "votes.parquet"
    a_file.write_bytes(b"PAR1")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    for store, message in [(tmp_path / "missing", "no such store"), (a_file, "is a file"), (folder, "not a store")]:
        r = cli("export", "--store", store, "--out", tmp_path / "o.parquet")
        assert_refused(r, re.escape(str(store)), message)
    assert not (tmp_path / "o.parquet").exists()
