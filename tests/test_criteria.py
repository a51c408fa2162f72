"""annotate/criteria.py through `annotate export`: per-criterion picks as chosen/rejected-oriented columns, and the
verifier's verdict as the `correct` label."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotate.criteria import COLUMNS
from annotate.export import export
from annotate.importers import import_pool
from annotate.schema import CRITERIA, new_comparison
from annotate.store import ComparisonStore


def vote(prompt: str, x: str, y: str, choice: str, texts: dict[str, str], who: str = "u", **kw) -> dict:
    return new_comparison(
        prompt_id=prompt, prompt=[{"role": "user", "content": f"question {prompt}"}],
        response_a_id=x, response_a=texts[x], source_a="m", response_b_id=y, response_b=texts[y], source_b="m",
        choice=choice, strength=2 if choice in ("a", "b") else None, annotator=who, **kw,
    )  # fmt: skip


def reference(records: list[dict]) -> dict:
    """(prompt, winner, loser) -> {column: label}: the export's rules for criteria spelled out in plain Python."""
    pairs: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["choice"] in ("a", "b"):
            pairs[(r["prompt_id"], frozenset((r["response_a_id"], r["response_b_id"])))].append(r)
    out = {}
    for (pid, pair), votes in pairs.items():
        wins = defaultdict(int)
        for r in votes:
            wins[r["response_a_id"] if r["choice"] == "a" else r["response_b_id"]] += r["strength"]
        x, y = sorted(pair)
        if wins[x] == wins[y]:
            continue
        win, lose = (x, y) if wins[x] > wins[y] else (y, x)
        labels = {}
        for c in CRITERIA:
            picks = [r["criteria"][c] for r in votes if c in r["criteria"]]
            named = [r["response_a_id"] if p == "a" else r["response_b_id"] for r, p in
                     ((r, r["criteria"].get(c)) for r in votes) if p in ("a", "b")]  # fmt: skip
            total = sum(1 if n == win else -1 for n in named)
            labels[f"criterion_{c}"] = None if not picks else (total > 0) - (total < 0)
        out[(pid, win, lose)] = labels
    return out


def test_criterion_columns_match_a_plain_python_reference(tmp_path):
    rng = random.Random(3)
    texts = {f"r{i}": f"answer {i}" for i in range(4)}
    records = []
    for _ in range(400):
        x, y = rng.sample(sorted(texts), 2)
        picks = {c: rng.choice("ab") if rng.random() < 0.8 else "tie" for c in CRITERIA if rng.random() < 0.5}
        records.append(vote(f"p{rng.randrange(20)}", x, y, rng.choice("ab"), texts, who=f"u{rng.randrange(4)}",
                            criteria=picks))  # fmt: skip
    store = ComparisonStore(tmp_path / "s")
    store.append_many(records)
    store.close()
    export(str(tmp_path / "s"), tmp_path / "e.parquet")
    rows = pq.read_table(tmp_path / "e.parquet").to_pylist()
    ref = reference(records)
    assert len(rows) == len(ref) > 0
    seen = set()
    for row in rows:
        want = ref[(row["prompt_id"], row["chosen_id"], row["rejected_id"])]
        assert {c: row[c] for c in COLUMNS} == want
        assert row["correct_by"] == (None if want["criterion_correct"] is None else "annotators")
        seen |= {v for v in want.values()}
    assert {-1, 0, 1, None} <= seen  # every kind of label occurred
    # A raw export: each vote's own picks, oriented to its own choice.
    export(str(tmp_path / "s"), tmp_path / "raw.jsonl", raw=True)
    by_id = {r["comparison_id"]: r for r in records}
    for line in open(tmp_path / "raw.jsonl"):
        row = json.loads(line)
        src = by_id[row["comparison_id"]]
        pick = src["criteria"].get("helpful")
        want = None if pick is None else 0 if pick == "tie" else 1 if pick == src["choice"] else -1
        assert row["criterion_helpful"] == want  # an integer in JSONL, not 1.0


def checkable(tmp_path: Path) -> tuple[Path, Path]:
    """A pool of two checkable prompts (exact verifier "Canberra"; numeric 12) and a store where annotators
    prefer, and call more correct, the wrong verbose answer; on the second prompt both answers are right."""
    pool = [
        ("cap", "cap-right", "Canberra."),
        ("cap", "cap-wrong", "It is certainly Sydney, the largest and best-known city of Australia."),
        ("num", "num-short", "12"),
        ("num", "num-long", "Four times three makes 12, so the answer is 12."),
    ]
    spec = {"cap": {"type": "exact", "answer": "Canberra"}, "num": {"type": "numeric", "answer": 12}}
    # The pool names its prompts its own way: verifiers are matched to votes by the prompt's messages.
    rows = [{"prompt_id": f"pool-{p}", "prompt": [{"role": "user", "content": f"question {p}"}], "response_id": r,
             "response": t, "source": "m", "meta": json.dumps({"verifier": spec[p]})} for p, r, t in pool]  # fmt: skip
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = {r: t for _, r, t in pool}
    store = ComparisonStore(tmp_path / "s")
    store.append(vote("cap", "cap-right", "cap-wrong", "b", texts, criteria={"correct": "b"}))
    store.append(vote("num", "num-short", "num-long", "b", texts, criteria={"correct": "b"}))
    store.close()
    return tmp_path / "pool.jsonl", tmp_path / "s"


def test_the_verifier_decides_correct_where_exactly_one_response_passes(tmp_path):
    pool, store = checkable(tmp_path)
    stats = export(str(store), tmp_path / "e.parquet", pool=pool)
    rows = {r["prompt_id"]: r for r in pq.read_table(tmp_path / "e.parquet").to_pylist()}
    # cap: chosen is the wrong answer; the verifier overrides the annotators' "correct" pick.
    assert rows["cap"]["chosen_id"] == "cap-wrong"
    assert (rows["cap"]["criterion_correct"], rows["cap"]["correct_by"]) == (-1, "verifier")
    # num: both pass, the verifier cannot order them: the annotators' pick stays.
    assert (rows["num"]["criterion_correct"], rows["num"]["correct_by"]) == (1, "annotators")
    assert (stats["verifier_labels"], stats["verifier_overrides"]) == (1, 1)
    export(str(store), tmp_path / "plain.parquet", pool=pool, verifiers=False)
    plain = {r["prompt_id"]: r for r in pq.read_table(tmp_path / "plain.parquet").to_pylist()}
    assert (plain["cap"]["criterion_correct"], plain["cap"]["correct_by"]) == (1, "annotators")


def test_a_pool_kept_in_the_store_labels_both_export_and_training_data(tmp_path):
    pool, store = checkable(tmp_path)
    import_pool(pool, store)  # `annotate import --format pool`: the store's own pools
    export(str(store), tmp_path / "e.parquet")
    assert {r["prompt_id"]: r["correct_by"] for r in pq.read_table(tmp_path / "e.parquet").to_pylist()} == {
        "cap": "verifier", "num": "annotators"}  # fmt: skip
    pytest.importorskip("datasets")
    from rlhf.data import load_preferences

    rows = {r["prompt_id"]: r for r in load_preferences(str(store))}  # `--data STORE` reads the same labels
    assert (rows["cap"]["criterion_correct"], rows["cap"]["correct_by"]) == (-1, "verifier")


def test_a_bad_pool_fails_before_anything_is_written(tmp_path):
    _, store = checkable(tmp_path)
    with pytest.raises(FileNotFoundError):
        export(str(store), tmp_path / "e.parquet", pool=tmp_path / "missing.jsonl")
    assert not (tmp_path / "e.parquet").exists()
