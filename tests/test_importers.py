"""Importers: HH-RLHF dialogues, TRL preference data (plain, conversational, implicit prompt; JSONL, Parquet,
saved datasets folders) and candidate pools, each read back from the store."""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.importers import main, parse_hh_dialogue
from annotate.pool import read_pool
from annotate.schema import SchemaError
from annotate.store import pool_dir, read_table

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


def run(src: Path, fmt: str, store: Path, **kw) -> int:
    ns = dict(src=src, format=fmt, store=store, annotator=None, source=None, strict=False, allow_empty=False)
    return main(argparse.Namespace(**{**ns, **kw}))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


HH_ROWS = [
    {
        "chosen": "\n\nHuman: Hi, how do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: How long?"
        "\n\nAssistant: About 9 minutes for hard-boiled.",
        "rejected": "\n\nHuman: Hi, how do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: How long?"
        "\n\nAssistant: An hour.",
    },
    {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
    {"chosen": "\n\nHuman: A?\n\nAssistant: x", "rejected": "\n\nHuman: B?\n\nAssistant: y"},  # prompts differ
]


def test_hh_split_multi_turn_prompt_and_reimport_is_idempotent(tmp_path, capsys):
    src = write_jsonl(tmp_path / "hh.jsonl.gz", HH_ROWS)
    assert run(src, "hh", tmp_path / "S") == 0
    err = capsys.readouterr().err
    assert "skipped 1 records" in err and "(lines 3)" in err
    rows = sorted(read_table(str(tmp_path / "S")).to_pylist(), key=lambda r: len(r["prompt"]))
    assert len(rows) == 2
    short, multi = rows
    assert multi["prompt"] == [
        {"role": "user", "content": "Hi, how do I boil an egg?"},
        {"role": "assistant", "content": "Put it in boiling water."},
        {"role": "user", "content": "How long?"},
    ]
    assert (multi["response_a"], multi["response_b"]) == ("About 9 minutes for hard-boiled.", "An hour.")
    assert (short["choice"], short["annotator"], short["source_a"]) == ("a", "hh-rlhf", "hh-rlhf")
    assert short["response_a_id"] != short["response_b_id"] and short["left"] == "a"
    assert run(src, "hh", tmp_path / "S") == 0  # same file again: nothing new
    assert read_table(str(tmp_path / "S")).num_rows == 2
    with pytest.raises(SchemaError, match=r"line 3: field 'rejected'"):
        run(src, "hh", tmp_path / "S2", strict=True)
    assert not (tmp_path / "S2").exists()


def test_parse_hh_dialogue_roles_and_errors():
    msgs = parse_hh_dialogue("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[2]["content"] == "c"
    with pytest.raises(SchemaError, match="does not start"):
        parse_hh_dialogue("hello\n\nHuman: a")


TRL_PLAIN = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
TRL_CONV = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "Hi"}],
        "rejected": [{"role": "assistant", "content": "Hello there, friend, how are you doing today?"}],
    }
]
TRL_IMPLICIT = [
    {
        "chosen": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Green"}],
    }
]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets", "datasetdict"])
def test_trl_plain_conversational_and_implicit(tmp_path, kind):
    rows = TRL_PLAIN + TRL_CONV  # mixed in one JSONL; Parquet/datasets need one type per column
    if kind == "jsonl":
        src = write_jsonl(tmp_path / "prefs.jsonl", rows + TRL_IMPLICIT)
        expect = rows + TRL_IMPLICIT
    elif kind == "parquet":
        other = {**TRL_CONV[0], "chosen": [{"role": "assistant", "content": "Hey"}]}
        src, expect = tmp_path / "prefs.parquet", TRL_CONV + [other]
        pq.write_table(pa.Table.from_pylist(expect), src)
    else:
        import datasets

        expect = TRL_PLAIN
        ds = datasets.Dataset.from_list(TRL_PLAIN)
        if kind == "datasetdict":
            ds = datasets.DatasetDict({"train": ds.select([0]), "test": ds.select([1])})
        src = tmp_path / "saved"
        ds.save_to_disk(str(src))
    assert run(src, "trl", tmp_path / "S", annotator="team") == 0
    got = read_table(str(tmp_path / "S")).to_pylist()
    assert len(got) == len(expect)
    by_chosen = {r["response_a"]: r for r in got}
    for e in expect:
        r = by_chosen[e["chosen"] if isinstance(e["chosen"], str) else e["chosen"][-1]["content"]]
        assert r["response_b"] == (e["rejected"] if isinstance(e["rejected"], str) else e["rejected"][-1]["content"])
        prompt = e.get("prompt", e["chosen"][:-1])
        assert r["prompt"] == ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        assert (r["choice"], r["annotator"]) == ("a", "team")


def test_same_response_same_id_across_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "worse"}])
    run(a, "trl", tmp_path / "S")
    run(b, "trl", tmp_path / "S")
    rows = read_table(str(tmp_path / "S")).to_pylist()
    assert len(rows) == 2 and rows[0]["prompt_id"] == rows[1]["prompt_id"]
    assert rows[0]["response_a_id"] == rows[1]["response_a_id"] != rows[0]["response_b_id"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_pool_copied_into_store_as_parquet(tmp_path, suffix):
    from annotate.pool import write_pool

    rows = [
        {"prompt_id": "p1", "prompt": [{"role": "user", "content": "Hi"}], "response_id": f"r{i}",
         "response": f"hello {i}", "source": "team", "meta": "{}"}
        for i in range(3)
    ]  # fmt: skip
    if suffix == ".csv":
        import csv

        src = tmp_path / "pool.csv"
        with open(src, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "prompt": json.dumps(r["prompt"])} for r in rows)
    else:
        src = write_pool(rows, tmp_path / f"pool{suffix}")
    assert run(src, "pool", tmp_path / "S") == 0
    files = list(pool_dir(tmp_path / "S").glob("pool-*.parquet"))
    assert len(files) == 1
    assert pq.read_table(files[0]).to_pylist() == read_pool(src).to_pylist()
    assert read_pool(files[0]).num_rows == 3  # the copy is itself a valid pool
    assert run(src, "pool", tmp_path / "S") == 0
    assert list(pool_dir(tmp_path / "S").glob("pool-*.parquet")) == files


def _trl_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PREFS = [{"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(5)]


EDITS = ["blank lines added", "a line duplicated", "file concatenated with itself", "reordered"]


@pytest.mark.parametrize("edit", EDITS)
def test_reimport_of_an_edited_file_adds_nothing(tmp_path, capsys, edit):
    src = _trl_file(tmp_path / "prefs.jsonl", PREFS)
    store = tmp_path / "S"
    assert run(src, "trl", store) == 0
    text = src.read_text()
    src.write_text(
        {
            "blank lines added": "\n" + text.replace("\n", "\n\n", 2) + "\n\n",
            "a line duplicated": text + text.splitlines(keepends=True)[2],
            "file concatenated with itself": text + text,
            "reordered": "".join(reversed(text.splitlines(keepends=True))),
        }[edit]
    )
    capsys.readouterr()
    assert run(src, "trl", store) == 0
    assert "imported 0 comparisons" in capsys.readouterr().out
    ids = read_table(str(store)).column("comparison_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(PREFS)


def test_duplicates_within_a_file_are_reported_and_imported_once(tmp_path, capsys):
    rows = [PREFS[0], PREFS[1], PREFS[0], PREFS[2], PREFS[1], PREFS[0]]
    src = _trl_file(tmp_path / "prefs.jsonl", rows)
    assert run(src, "trl", tmp_path / "S") == 0
    out = capsys.readouterr()
    assert f"3 duplicate records in {src} (lines 3, 5, 6) imported once" in out.err
    assert "imported 3 comparisons" in out.out
    assert read_table(str(tmp_path / "S")).num_rows == 3
    # hh too, with the default annotator: the same records in another file are the same votes
    hh = write_jsonl(tmp_path / "hh.jsonl", [HH_ROWS[1], HH_ROWS[0], HH_ROWS[1]])
    assert run(hh, "hh", tmp_path / "H") == 0
    assert "1 duplicate records" in capsys.readouterr().err
    copy = write_jsonl(tmp_path / "hh-copy.jsonl.gz", HH_ROWS[:2])
    assert run(copy, "hh", tmp_path / "H") == 0
    assert "imported 0 comparisons" in capsys.readouterr().out


def test_the_annotator_is_part_of_a_votes_identity_the_source_is_not(tmp_path, capsys):
    src = _trl_file(tmp_path / "prefs.jsonl", PREFS)
    store = tmp_path / "S"
    assert run(src, "trl", store, annotator="alice") == 0
    assert run(src, "trl", store, annotator="alice", source="gpt-x") == 0  # same votes, other model label
    assert read_table(str(store)).num_rows == len(PREFS)
    assert run(src, "trl", store, annotator="bob") == 0  # bob's votes on the same pairs are other votes
    rows = read_table(str(store)).to_pylist()
    assert len(rows) == 2 * len(PREFS) and {r["annotator"] for r in rows} == {"alice", "bob"}
    assert {r["source_a"] for r in rows} == {"trl:prefs"}  # the first import's value is kept


def test_concurrent_imports_of_one_file_write_each_comparison_once(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    rows = [{"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(300)]
    src = _trl_file(tmp_path / "prefs.jsonl", rows)
    cmd = [sys.executable, "-m", "annotate", "import", str(src), "--format", "trl", "--store", str(tmp_path / "S")]
    pipe = subprocess.PIPE
    procs = [subprocess.Popen(cmd, cwd=repo, stdout=pipe, stderr=pipe, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
    written = sorted(int(re.search(r"imported (\d+) comparisons", out).group(1)) for out, _ in results)
    assert written == [0, 0, 0, len(rows)]  # exactly one import wrote, the others found everything there
    ids = read_table(str(tmp_path / "S")).column("comparison_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(rows)


@pytest.mark.skipif(not HH.exists(), reason="needs ../shared/data (not part of a user's clone)")
def test_real_hh_file_reimported_doubled_adds_nothing(tmp_path, capsys):
    assert run(HH, "hh", tmp_path / "S") == 0
    n = read_table(str(tmp_path / "S")).num_rows
    doubled = tmp_path / HH.name
    doubled.write_bytes(gzip.compress(gzip.decompress(HH.read_bytes()) * 2))
    capsys.readouterr()
    assert run(doubled, "hh", tmp_path / "S") == 0
    out = capsys.readouterr()
    assert "imported 0 comparisons" in out.out and f"{n} duplicate records" in out.err
    assert read_table(str(tmp_path / "S")).num_rows == n


GOLD_ROWS = [
    {"prompt": "What is 6 x 7?", "chosen": "42", "rejected": "The answer is 48.", "answer": 42},
    {"prompt": "Natalia sold 48 clips, then half as many. Total?", "chosen": "72", "rejected": "96",
     "answer": "She sold 48 / 2 = 24 more.\n48 + 24 = 72.\n#### 72"},  # GSM8K's worked solution
    {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco.", "gold": "Lima"},
    {"prompt": "Say hi in French.", "chosen": "Bonjour", "rejected": "Hola",
     "verifier": json.dumps({"type": "regex", "pattern": "(?i)bonjour|salut"})},
    {"prompt": "What is 6 x 7?", "chosen": "6 x 7 = 42", "rejected": "41", "answer": "42"},  # same gold again
    {"prompt": "No gold here", "chosen": "a", "rejected": "b"},
]  # fmt: skip


def test_trl_gold_columns_become_verifiers_in_the_store_pool(tmp_path, capsys):
    from annotate.pool import pool_verifiers
    from annotate.verifiers import verify

    src = write_jsonl(tmp_path / "gold.jsonl", GOLD_ROWS)
    assert run(src, "trl", tmp_path / "S") == 0
    assert "kept 4 verifiers (10 candidates)" in capsys.readouterr().out
    (pool_file,) = pool_dir(tmp_path / "S").glob("pool-*.parquet")
    pool = read_pool(pool_file)  # a valid pool, verifiers validated on load
    verifiers = pool_verifiers(pool)
    assert sorted(v["type"] for v in verifiers.values()) == ["exact", "numeric", "numeric", "regex"]
    assert {"type": "numeric", "answer": 72.0} in verifiers.values()
    # The pool's ids are the comparisons': the audit joins votes to verdicts on them.
    votes = read_table(tmp_path / "S").to_pylist()
    texts = {(r["prompt_id"], r["response_id"]): r["response"] for r in pool.to_pylist()}
    for v in votes:
        if v["prompt_id"] in verifiers:
            spec = verifiers[v["prompt_id"]]
            assert verify(spec, texts[(v["prompt_id"], v["response_a_id"])])  # chosen is right in GOLD_ROWS
            assert not verify(spec, texts[(v["prompt_id"], v["response_b_id"])])
    assert run(src, "trl", tmp_path / "S") == 0  # re-import: the same pool file, nothing added
    assert len(list(pool_dir(tmp_path / "S").glob("pool-*.parquet"))) == 1


def test_trl_gold_that_is_no_short_answer_keeps_no_verifier(tmp_path, capsys):
    rows = [{**GOLD_ROWS[0], "answer": None, "solution": "First we note that...\nso it is 42."}, GOLD_ROWS[5]]
    assert run(write_jsonl(tmp_path / "long.jsonl", rows), "trl", tmp_path / "S") == 0
    assert "1 rows have a gold column" in capsys.readouterr().err
    assert not list(pool_dir(tmp_path / "S").glob("pool-*.parquet"))


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({**GOLD_ROWS[0], "answer": "41"}, r"line 2: field 'answer': the gold answer differs from the one on line 1"),
        ({**GOLD_ROWS[5], "verifier": {"type": "numeric"}}, r"line 2: field 'verifier\.answer'"),
        ({**GOLD_ROWS[5], "verifier": "{not json"}, r"line 2: field 'verifier': not valid JSON"),
    ],
)
def test_trl_bad_gold_is_refused_naming_line_and_field(tmp_path, row, named):
    src = write_jsonl(tmp_path / "bad.jsonl", [GOLD_ROWS[0], row])
    with pytest.raises(SchemaError, match=named):
        run(src, "trl", tmp_path / "S")
    assert not (tmp_path / "S").exists()  # refused before anything was written
