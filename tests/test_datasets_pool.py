"""The bundled demo pool (datasets/demo/pool.jsonl): valid, large enough, varied, and data only."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from annotate.pool import read_pool

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "datasets" / "demo" / "pool.jsonl"
CATEGORIES = {"facts", "how_to", "advice", "coding", "yes_no", "decline", "unknown"}


@pytest.fixture(scope="module")
def rows():
    return read_pool(POOL).to_pylist()  # read_pool validates every row (raises SchemaError naming the line)


def test_size_and_candidates_per_prompt(rows):
    per_prompt = Counter(r["prompt_id"] for r in rows)
    assert len(per_prompt) >= 60
    assert set(per_prompt.values()) <= {3, 4}
    assert sum(len(r["prompt"]) > 1 for r in rows if r["response_id"].endswith("-t1")) >= 3  # multi-turn prompts


def test_categories_and_contrasts(rows):
    team = [(r, json.loads(r["meta"])) for r in rows if r["source"] == "team"]
    assert CATEGORIES <= {m["category"] for _, m in team}
    kinds = Counter(m["kind"] for _, m in team)
    for kind in ("confidently_wrong", "verbose", "over_hedged", "needless_refusal", "fabricated"):
        assert kinds[kind] >= 3, kind
    # Code answers carry fenced code blocks.
    assert sum("```" in r["response"] for r, m in team if m["category"] == "coding") >= 10


def test_gold_pairs_derivable(rows):
    """Each prompt has exactly one team candidate marked gold_best; gold vs a known-wrong one is a gold pair."""
    by_prompt = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt_id"]].append((r, json.loads(r["meta"])))
    pairs = []
    for pid, cands in by_prompt.items():
        gold = [r for r, m in cands if m.get("gold_best")]
        assert len(gold) == 1, pid
        gold_meta = json.loads(gold[0]["meta"])
        assert gold_meta.get("correct", True) is True and gold[0]["source"] == "team"
        pairs += [(gold[0], r) for r, m in cands if m.get("correct") is False or m.get("harmless") is False]
    assert len(pairs) >= 50


def test_model_candidates_record_settings(rows):
    generated = [(r, json.loads(r["meta"])) for r in rows if r["source"] != "team"]
    assert len(generated) >= 20
    assert {r["source"] for r, _ in generated} == {"HuggingFaceTB/SmolLM2-135M-Instruct"}
    for _, m in generated:
        assert {"temperature", "top_p", "max_new_tokens", "seed"} <= set(m)


def test_unsafe_html_present_for_render_tests(rows):
    text = "\n".join(r["response"] for r in rows)
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(1)>" in text


def test_datasets_folder_is_data_only_and_does_not_shadow_hf():
    import datasets

    assert "site-packages" in str(Path(datasets.__file__).resolve())
    assert hasattr(datasets, "load_dataset")
    assert not list((ROOT / "datasets").rglob("*.py"))
    assert not (ROOT / "datasets" / "__init__.py").exists()
    assert (ROOT / "datasets" / "README.md").exists()
