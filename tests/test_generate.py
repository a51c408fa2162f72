"""rlhf.generate (`python -m annotate generate`): sampling candidate pools from tiny config-built models."""

from __future__ import annotations

import json
import os

import pytest

from annotate.__main__ import main as annotate_main
from annotate.pool import read_pool, read_prompts, write_pool
from annotate.schema import SchemaError
from rlhf.generate import generate_pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny Llama models around the SmolLM2 tokenizer (it has the chat template), different seeds."""
    from fixtures import save_tiny_model

    from rlhf.models import load_tokenizer

    tok = load_tokenizer(None)
    root = tmp_path_factory.mktemp("models")
    # Same directory name under different parents: the response ids must still differ between the two.
    return [save_tiny_model(root / f"run{i}" / "model", tok, seed=i, layers=1, hidden=32, heads=2) for i in range(2)]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt_id": "q1", "prompt": "What is 2 + 2?"},
        {
            "prompt": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "Colour?"},
            ]
        },
        {"prompt_id": "q3", "prompt": "Write a haiku about rain."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_generate_pool_rows_meta_and_roundtrip(tiny_models, prompts_file, tmp_path):
    prompts = read_prompts(prompts_file)
    assert [p["prompt_id"] for p in prompts][::2] == ["q1", "q3"]
    assert prompts[1]["prompt_id"].startswith("p-") and len(prompts[1]["prompt"]) == 3

    rows = generate_pool(prompts, tiny_models[:1], n=3, device="cpu", batch_size=2, max_new_tokens=6, progress=False)
    assert len(rows) == 3 * 3
    assert len({r["response_id"] for r in rows}) == len(rows)
    for p in prompts:
        assert sum(r["prompt_id"] == p["prompt_id"] for r in rows) == 3
    metas = [json.loads(r["meta"]) for r in rows]
    # Sample k uses the k-th (temperature, top_p) of the default grid, recorded per response.
    assert {(m["sample_index"], m["temperature"], m["top_p"]) for m in metas} == {
        (0, 0.3, 0.9),
        (1, 0.7, 0.95),
        (2, 1.0, 1.0),
    }
    assert all(m["max_new_tokens"] == 6 and m["seed"] == 0 and 1 <= m["new_tokens"] <= 6 for m in metas)
    assert {r["source"] for r in rows} == {tiny_models[0]}

    out = write_pool(rows, tmp_path / "pool.jsonl")
    table = read_pool(out)
    assert table.num_rows == 9 and set(table.column("prompt_id").to_pylist()) == {p["prompt_id"] for p in prompts}

    # Same seed, same arguments: the same pool.
    again = generate_pool(prompts, tiny_models[:1], n=3, device="cpu", batch_size=2, max_new_tokens=6, progress=False)
    assert [r["response"] for r in again] == [r["response"] for r in rows]


def test_generate_across_models_cli(tiny_models, prompts_file, tmp_path):
    out = tmp_path / "pool.parquet"
    argv = ["generate", "--prompts", str(prompts_file), "--n", "2", "--out", str(out), "--device", "cpu"]
    for m in tiny_models:
        argv += ["--model", m]
    argv += ["--max-new-tokens", "4", "--batch-size", "3", "--sampling", "0.5:0.8"]
    assert annotate_main(argv) == 0
    table = read_pool(out)
    assert table.num_rows == 3 * 2 * len(tiny_models)
    assert set(table.column("source").to_pylist()) == set(tiny_models)
    assert len(set(table.column("response_id").to_pylist())) == table.num_rows
    metas = [json.loads(m) for m in table.column("meta").to_pylist()]
    assert {(m["temperature"], m["top_p"]) for m in metas} == {(0.5, 0.8)}


def test_plain_text_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("First prompt\n\nSecond prompt\nFirst prompt\n")
    prompts = read_prompts(path)
    # Blank lines skipped; the repeated prompt collapses into one (same content, same id).
    assert [p["prompt"][0]["content"] for p in prompts] == ["First prompt", "Second prompt"]


def test_bad_prompts_file_names_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    assert annotate_main(["generate", "--prompts", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2" in err and "'prompt'" in err
    assert not (tmp_path / "o.jsonl").exists()

    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(SchemaError, match=r"line 2: missing field 'prompt'"):
        read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n\n{not json\n')
    with pytest.raises(SchemaError, match=r"line 3: invalid JSON"):
        read_prompts(bad)
    bad.write_text('{"prompt_id": "x", "prompt": "one"}\n{"prompt_id": "x", "prompt": "two"}\n')
    with pytest.raises(SchemaError, match=r"line 2: field 'prompt_id'"):
        read_prompts(bad)
