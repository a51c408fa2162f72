"""`python -m annotate import/export/stats/compact`: malformed input exits 2 naming the place, store untouched."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.__main__ import main
from annotate.schema import new_comparison
from annotate.store import ComparisonStore, read_table

REPO = Path(__file__).resolve().parents[1]
GOOD_HH = {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}
GOOD_TRL = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
GOOD_POOL = {"prompt_id": "p", "prompt": "Hi", "response_id": "r", "response": "Hello", "source": "me", "meta": "{}"}


def jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def truncated_gzip(path: Path) -> Path:
    blob = gzip.compress("".join(json.dumps(GOOD_HH) + "\n" for _ in range(3000)).encode())
    path.write_bytes(blob[: len(blob) // 2])
    return path


def parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def snapshot(root: Path) -> dict[str, bytes] | None:
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def not_gzip(path: Path) -> Path:
    path.write_bytes(b"plain text, not gzip\n")
    return path


def vote(prompt_id: str, choice: str, annotator: str, retracts: str | None = None) -> dict:
    return new_comparison(
        prompt_id=prompt_id, prompt=[{"role": "user", "content": "q"}], response_a_id="x", response_a="x",
        source_a="m1", response_b_id="y", response_b="y", source_b="m2", choice=choice, annotator=annotator,
        retracts=retracts,
    )  # fmt: skip


BAD_TRL_TYPE = {**GOOD_TRL, "chosen": 5}
# case -> (format, file name, how to write it, what the message must name)
CASES = {
    "truncated gzip": ("hh", "hh.jsonl.gz", truncated_gzip, [r"line \d+", "truncated"]),
    "bad JSON line": ("hh", "hh.jsonl", lambda p: jsonl(p, [GOOD_HH, '{"chosen": "x",']), ["line 2", "invalid JSON"]),
    "missing field": ("hh", "hh.jsonl", lambda p: jsonl(p, [{"chosen": GOOD_HH["chosen"]}]), ["line 1", "'rejected'"]),
    "empty text": (
        "trl",
        "t.jsonl",
        lambda p: jsonl(p, [GOOD_TRL, {**GOOD_TRL, "prompt": " "}]),
        ["line 2", "prompt"],
    ),
    "wrong type": ("trl", "t.jsonl", lambda p: jsonl(p, [GOOD_TRL, GOOD_TRL, BAD_TRL_TYPE]), ["line 3", "'chosen'"]),
    "wrong Parquet schema": ("trl", "t.parquet", lambda p: parquet(p, [{"q": "q", "a": "a"}]), ["row 1", "'chosen'"]),
    "wrong pool Parquet": (
        "pool",
        "p.parquet",
        lambda p: parquet(p, [{"prompt_id": "p"}]),
        ["row 1", "'response_id'"],
    ),
    # An empty response is a legitimate (bad) candidate; one over the size limit is not.
    "oversize pool response": (
        "pool",
        "p.jsonl",
        lambda p: jsonl(p, [{**GOOD_POOL, "response": "x" * 100_001}]),
        ["line 1", "response", "over the limit"],
    ),
    "not gzip at all": ("hh", "hh.jsonl.gz", not_gzip, ["line 1"]),
}


@pytest.fixture(scope="module")
def populated_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "store"
    src = jsonl(root.parent / "good.jsonl", [GOOD_TRL, {**GOOD_TRL, "chosen": "four"}])
    pool = jsonl(root.parent / "pool.jsonl", [GOOD_POOL])
    assert main(["import", str(src), "--format", "trl", "--store", str(root)]) == 0
    assert main(["import", str(pool), "--format", "pool", "--store", str(root)]) == 0
    ComparisonStore(root).append(vote("p", "tie", "z"))  # leaves a live-looking WAL segment too
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_exits_2_naming_place_and_leaves_store_unchanged(case, populated_store, tmp_path, capsys):
    fmt, name, make, expected = CASES[case]
    src = tmp_path / name
    make(src)
    for store in (populated_store, tmp_path / "fresh"):
        before = snapshot(store)
        assert main(["import", str(src), "--format", fmt, "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert str(src) in err, err
        for pattern in expected:
            assert re.search(pattern, err), f"{case}: {pattern!r} not in {err!r}"
        assert snapshot(store) == before
        assert "Traceback" not in err


def test_export_errors_exit_2(populated_store, tmp_path, capsys):
    assert main(["export", "--store", str(tmp_path / "missing"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["export", "--store", str(populated_store), "--out", str(tmp_path / "o.csv")]) == 2
    assert "o.csv" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


def test_export_stats_compact_commands(tmp_path, capsys):
    store = ComparisonStore(tmp_path / "s", seal_every=2)
    ids = [store.append(vote(f"p{i}", c, "u1")) for i, c in enumerate(["a", "a", "tie"])]
    ids.append(store.append(vote("p3", "b", "u2")))
    store.append(vote("p2", "skip", "u1", retracts=ids[2]))  # undo of u1's tie
    store.close()
    assert main(["stats", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"standing votes\s*│\s*3\b", out) and re.search(r"retractions\s*│\s*1\b", out)
    assert re.search(r"u1\s*│\s*2\s*│\s*2\s*│\s*0\s*│\s*0", out)  # u1: 2 standing votes, both "a"
    assert re.search(r"m1\s*│\s*3\s*│\s*2\s*│\s*1\b", out)  # m1: in 3 votes, won 2, lost 1
    before = sorted(read_table(str(tmp_path / "s")).column("comparison_id").to_pylist())
    assert main(["compact", "--store", str(tmp_path / "s")]) == 0
    from deltalake import DeltaTable  # the store is a Delta table: any engine reads it

    assert len(DeltaTable(str(tmp_path / "s")).file_uris()) == 1
    assert sorted(read_table(str(tmp_path / "s")).column("comparison_id").to_pylist()) == before
    assert main(["export", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "p.jsonl")]
    assert sorted(r["prompt_id"] for r in rows) == ["p0", "p1", "p3"]


@pytest.mark.parametrize("command", ["import", "export", "stats", "compact"])
def test_help(command):
    r = subprocess.run([sys.executable, "-m", "annotate", command, "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--store" in r.stdout and "usage" in r.stdout


@pytest.mark.parametrize(
    "exc",
    [
        IsADirectoryError(21, "Is a directory", "/some/path"),
        NotADirectoryError(20, "Not a directory", "/some/file/x"),
        PermissionError(13, "Permission denied", "/some/path"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        RecursionError("maximum recursion depth exceeded"),
    ],
)
def test_expected_failures_exit_2_with_one_error_line(exc, monkeypatch, capsys):
    import annotate.importers

    def fail(args):
        raise exc

    monkeypatch.setattr(annotate.importers, "main", fail)
    assert main(["import", "x.jsonl", "--format", "trl", "--store", "S"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_usage_errors_are_not_schema_errors_and_exit_2(populated_store, tmp_path, capsys):
    from annotate.errors import UsageError
    from annotate.schema import SchemaError

    assert not issubclass(UsageError, SchemaError) and not issubclass(SchemaError, UsageError)
    assert main(["export", "--store", str(populated_store), "--out", str(tmp_path / "o.parquet"), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seed") and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_extra_is_a_usage_error_naming_it():
    from annotate.errors import UsageError, require_extra

    assert require_extra("json", "reading JSON").dumps([]) == "[]"
    with pytest.raises(UsageError, match=r"x\.arrow: reading it needs the `prefkit_absent` package.*prefkit\[train\]"):
        require_extra("prefkit_absent", "x.arrow: reading it")


def test_the_command_list_imports_no_command_module():
    code = "import sys; from annotate.__main__ import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print(sorted(m for m in sys.modules if m.startswith(('rlhf', 'annotate.importers', 'annotate.hub'))))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "push" in r.stdout and r.stdout.strip().endswith("[]"), r.stderr


def test_a_bug_still_shows_its_traceback(monkeypatch):
    import annotate.importers

    monkeypatch.setattr(annotate.importers, "main", lambda args: {}["missing"])
    with pytest.raises(KeyError):
        main(["import", "x.jsonl", "--format", "trl", "--store", "S"])
