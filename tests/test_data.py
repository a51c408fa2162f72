"""rlhf.data: export files and stores -> Datasets, held-out split by prompt, long pairs dropped with a count."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import arithmetic_tokenizer, synthetic_arithmetic, write_synthetic_export

from annotate.schema import SchemaError
from rlhf.data import describe, drop_long, load_preferences, load_splits, prepare, split_by_prompt

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


def test_parquet_and_jsonl_read_the_same_pairs(tmp_path):
    rows = synthetic_arithmetic(n_prompts=10, wrong_per_prompt=2)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    a, b = load_preferences(tmp_path / "p.parquet"), load_preferences(tmp_path / "p.jsonl.gz")
    assert len(a) == len(b) == 20
    assert a["prompt"] == b["prompt"] == [r["prompt"] for r in rows]
    assert a["chosen"][0] == [{"role": "assistant", "content": rows[0]["chosen"][0]["content"]}]
    assert a["prompt_id"] == [r["prompt_id"] for r in rows]


def test_plain_strings_become_messages_with_a_stable_prompt_id(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go away"}) + "\n")
    ds = load_preferences(path)
    assert ds[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "go away"}]
    assert ds[0]["prompt_id"] == load_preferences(path)[0]["prompt_id"] != ""


def test_bad_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "q"}))
    with pytest.raises(SchemaError, match=r"bad\.jsonl: line 2: missing field 'chosen'"):
        load_preferences(path)
    path.write_text("{not json\n")
    with pytest.raises(SchemaError, match="line 1: invalid JSON"):
        load_preferences(path)
    pq.write_table(pa.table({"prompt": ["q"], "chosen": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match="missing field 'rejected'"):
        load_preferences(tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError):
        load_preferences(tmp_path / "nope.parquet")


def test_split_holds_out_whole_prompts():
    from datasets import Dataset

    from annotate.split import split_score

    ds = Dataset.from_list(synthetic_arithmetic(n_prompts=50, wrong_per_prompt=3))
    train, test = split_by_prompt(ds, 0.2, seed=1)
    assert len(train) + len(test) == len(ds)
    assert not set(train["prompt_id"]) & set(test["prompt_id"])
    # Held out: exactly the prompts whose seeded score is under the fraction (about 10 of 50, not exactly).
    expected = {r["prompt_id"] for r in ds if split_score(r["prompt"], 1) < 0.2}
    assert set(test["prompt_id"]) == expected and 0 < len(expected) < 50
    assert split_by_prompt(ds, 0.0)[1].num_rows == 0


def test_export_siblings_are_found(tmp_path):
    from datasets import Dataset

    train_path, test_path = write_synthetic_export(tmp_path, n_prompts=20, wrong_per_prompt=1)
    train, test = load_splits(str(train_path))
    assert not set(train["prompt_id"]) & set(test["prompt_id"])
    # The sibling holds what splitting the whole data would have held out.
    _, again = split_by_prompt(Dataset.from_list(synthetic_arithmetic(n_prompts=20, wrong_per_prompt=1)), 0.2)
    assert len(train) + len(test) == 20 and sorted(test["prompt_id"]) == sorted(again["prompt_id"])


def test_long_pairs_are_dropped_with_a_printed_count(capsys):
    from datasets import Dataset

    rows = synthetic_arithmetic(n_prompts=5, wrong_per_prompt=1)
    rows[2]["chosen"] = [{"role": "assistant", "content": " ".join(["1"] * 40)}]  # 40 extra tokens
    tok = arithmetic_tokenizer()
    kept = drop_long(Dataset.from_list(rows), tok, max_length=30)
    assert len(kept) == 4 and rows[2]["prompt_id"] not in kept["prompt_id"]
    assert "dropped 1 of 5 pairs longer than 30 tokens" in capsys.readouterr().out
    info = describe(kept)
    # Each short pair: chat-templated prompt+response is 17 tokens on both sides.
    assert info == {"pairs": 4, "prompts": 4, "tokens": sum(kept["chosen_len"]) + sum(kept["rejected_len"])}
    assert set(kept["chosen_len"]) == {17}


def test_store_directory_is_aggregated_like_the_export(tmp_path):
    from annotate.schema import new_comparison
    from annotate.store import ComparisonStore

    prompt = [{"role": "user", "content": "What is 2 + 2 ?"}]
    common = dict(prompt_id="p1", prompt=prompt, response_a_id="r4", response_a="4", response_b_id="r5")
    with ComparisonStore(tmp_path / "store") as store:
        store.append(new_comparison(**common, response_b="5", choice="a", annotator="ann1"))
        store.append(new_comparison(**common, response_b="5", choice="a", annotator="ann2", strength=3))
    ds = load_preferences(tmp_path / "store")
    assert len(ds) == 1
    assert ds[0]["chosen"][0]["content"] == "4" and ds[0]["n_votes"] == 2


@pytest.mark.skipif(not HH.exists(), reason="needs ../shared/data (not part of a user's clone)")
def test_hh_export_prepares_with_counts(tmp_path, capsys):
    from annotate.export import export
    from annotate.importers import read_hh, to_comparisons
    from annotate.store import ComparisonStore

    pairs, _ = read_hh(HH)
    records = to_comparisons(pairs[:200], path=HH, fmt="hh", annotator="hh", source="hh")
    ComparisonStore(tmp_path / "store").write_batch(records)
    export(str(tmp_path / "store"), tmp_path / "prefs.parquet", test_fraction=0.1)
    train, test, info = prepare(str(tmp_path / "prefs-train.parquet"), arithmetic_tokenizer(), max_length=64)
    out = capsys.readouterr().out
    assert "pairs longer than 64 tokens" in out  # HH dialogues are long: some must be dropped, visibly
    assert info["train"]["pairs"] == len(train) < 180 and info["test"]["pairs"] == len(test)
