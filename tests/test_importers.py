"""Importers: HH-RLHF dialogues, TRL preference data (plain, conversational, implicit prompt; JSONL, Parquet,
saved datasets folders) and candidate pools, each read back from the store."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.importers import main, parse_hh_dialogue
from annotate.pool import read_pool
from annotate.schema import SchemaError
from annotate.store import read_table


def run(src: Path, fmt: str, store: Path, **kw) -> int:
    ns = dict(src=src, format=fmt, store=store, annotator=None, source=None, strict=False)
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
    files = list((tmp_path / "S" / "pool").glob("pool-*.parquet"))
    assert len(files) == 1
    assert pq.read_table(files[0]).to_pylist() == read_pool(src).to_pylist()
    assert read_pool(files[0]).num_rows == 3  # the copy is itself a valid pool
    assert run(src, "pool", tmp_path / "S") == 0
    assert list((tmp_path / "S" / "pool").glob("pool-*.parquet")) == files
