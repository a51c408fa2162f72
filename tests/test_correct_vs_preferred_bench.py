"""bench/correct_vs_preferred.py (issue 15, item 5): the generated checkable set and the simulated annotators plant
exactly the gap they say, and the benchmark runs end to end on tiny models.

The smoke test runs the script with --tiny --in-process (tiny config-built models, one RL step per policy, the
training CLIs called in one process as the other tests call them): it checks the outputs' structure and the data
path (store, export, the by-prompt split), not the hoped-for result, which needs the default model (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
SCRIPT = BENCH / "correct_vs_preferred.py"
sys.path.insert(0, str(BENCH))

import checkable_set  # noqa: E402


def test_generated_candidates_cover_every_style_and_their_verifier_agrees():
    from annotate.verifiers import verify

    rows = checkable_set.generate_pool(40, seed=3)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert len(by_prompt) == 40 and len({r["prompt"][0]["content"] for r in rows}) == 40
    assert {pid.split("-")[1] for pid in by_prompt} == {"arithmetic", "units"}
    for cands in by_prompt.values():
        metas = [json.loads(r["meta"]) for r in cands]
        assert {(m["correct"], m["long"], m["confident"]) for m in metas} == {
            (c, n, f) for c in (True, False) for n in (True, False) for f in (True, False)
        }
        for r, m in zip(cands, metas):
            assert verify(m["verifier"], r["response"]) == m["correct"], r["response"]
        long = [len(r["response"]) for r, m in zip(cands, metas) if m["long"]]
        short = [len(r["response"]) for r, m in zip(cands, metas) if not m["long"]]
        assert min(long) > max(short)  # "long" is long against every short candidate of the prompt
    assert checkable_set.generate_pool(40, seed=3) == rows  # seeded
    with pytest.raises(ValueError, match="distinct prompts"):
        checkable_set.generate_pool(2000)  # units run out at 330 distinct prompts


def _cand(correct: bool, confident: bool, text: str) -> checkable_set.Candidate:
    return checkable_set.Candidate({"response": text}, correct, confident)


def test_simulated_annotators_prefer_style_at_the_planted_rate_and_otherwise_the_right_answer():
    right_plain, wrong_fancy = _cand(True, False, "42"), _cand(False, True, "It is definitely 41, no doubt at all.")
    assert checkable_set.appeal(wrong_fancy, right_plain) == (2, 0)
    rng = random.Random(0)
    assert {checkable_set.choose(wrong_fancy, right_plain, rng, 1.0) for _ in range(50)} == {"a"}  # style alone
    assert {checkable_set.choose(wrong_fancy, right_plain, rng, 0.0) for _ in range(50)} == {"b"}  # correctness
    n = 4000
    won = sum(checkable_set.choose(wrong_fancy, right_plain, rng, 0.7) == "a" for _ in range(n)) / n
    assert abs(won - 0.7) < 3 * math.sqrt(0.21 / n)
    # Where style favours the right answer too, it always wins.
    assert {checkable_set.choose(_cand(False, False, "41"), _cand(True, True, "It is 42, clearly."), rng, 0.7)
            for _ in range(50)} == {"b"}  # fmt: skip


def test_votes_go_into_a_store_and_plant_the_gap(tmp_path):
    from annotate.store import read_table

    pool, store = tmp_path / "pool.jsonl", tmp_path / "store"
    info = checkable_set.write_checkable_pool(pool, 60, seed=0, demo=False)
    assert info == {"generated_prompts": 60, "demo_prompts": 0, "candidates": 480}
    v = checkable_set.simulate_votes(pool, store, bias=0.7, pairs_per_prompt=28, seed=1)
    assert v["votes"] == v["written"] == read_table(store).num_rows == 60 * 28  # every pair of every prompt
    assert v["right_vs_wrong"] == 60 * 16
    assert abs(v["wrong_preferred_when_more_appealing"] - 0.7) < 3 * math.sqrt(0.21 / v["wrong_appealing"])
    again = checkable_set.simulate_votes(pool, store, bias=0.7, pairs_per_prompt=28, seed=1)
    assert again["written"] == 0  # the same votes have the same ids: writing them again adds nothing


@pytest.mark.slow
def test_benchmark_smoke_on_tiny_models(tmp_path):
    import pyarrow.parquet as pq

    from annotate.schema import prompt_id_for
    from annotate.split import split_messages
    from rlhf.data import load_prompts

    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--in-process",
        "--seeds",
        "42",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / "correct_vs_preferred.json").read_text())
    info = data["data"]
    assert info["generated_prompts"] == 16 and info["demo_prompts"] == 40
    assert info["votes"]["written"] == info["votes"]["votes"] > 0 and 0 < info["votes"]["wrong_preferred"] < 1
    assert info["train_verifier_labelled"] > 0  # the export's criterion_correct came from the verifiers

    # The held-out prompts are annotate.split's for the export's seed and fraction.
    work = out / "work/data"
    prompts = load_prompts(work / "pool.jsonl")
    _, held = split_messages(prompts, data["settings"]["test_fraction"], data["settings"]["data_seed"])
    test_prompts = {prompt_id_for(p) for p in load_prompts(work / "prefs-test.parquet")}
    assert test_prompts == {prompt_id_for(p) for p in held} and len(test_prompts) == info["test_prompts"]
    assert not test_prompts & {prompt_id_for(p) for p in load_prompts(work / "prefs-train.parquet")}
    assert pq.read_table(work / "prefs-train.parquet").num_rows == info["train_pairs"]

    rows = {r["arm"]: r for r in data["rows"]}
    assert set(rows) == {"overall", "correct", "blended"} and all("error" not in r for r in rows.values())
    assert (rows["overall"]["trainer"], rows["correct"]["trainer"], rows["blended"]["trainer"]) == (
        "rloo",
        "rloo",
        "grpo",
    )
    assert rows["blended"]["verifier_weight"] > 0 and rows["overall"]["verifier_weight"] is None
    for arm, r in rows.items():
        assert r["seed"] == 42 and r["heldout_checkable"] == info["test_prompts"], arm
        assert r["heldout_generated"] + r["heldout_demo"] == r["heldout_checkable"]
        for k in ("accuracy_before", "accuracy_after", "win_rate", "win_rate_lc"):
            assert 0.0 <= r[k] <= 1.0, (arm, k)
        assert math.isfinite(r["length_change"]) and math.isfinite(r["rl_kl"]) and math.isfinite(r["rl_score"])
        assert r["wrong_answers"] == round((1 - r["accuracy_after"]) * r["heldout_checkable"])
        for k in ("wrong_longer", "wrong_more_confident", "wrong_longer_or_more_confident"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0, (arm, k)
    assert rows["blended"]["rl_accuracy"] is not None  # GRPO's own held-out verifier accuracy
    rm = data["reward_models"]["42"]
    assert 0 <= rm["rm-overall"]["eval_accuracy"] <= 1 and rm["rm-correct"]["eval_head_correct_pairs"] > 0

    assert {s["arm"] for s in data["summary"]} == set(rows)
    assert all(s["win_rate"]["n"] == 1 and s["win_rate"]["sd"] == 0 for s in data["summary"])
    assert set(data["check"]) == {"overall", "blended", "per_seed"}
    assert isinstance(data["check"]["overall"], bool) and isinstance(data["check"]["blended"], bool)

    table = (out / "correct_vs_preferred.md").read_text()
    for line in ("| `overall`: RLOO on rm-overall", "| `correct`: RLOO on rm-correct", "| `blended`: GRPO",
                 "## The bar (issue 15)"):  # fmt: skip
        assert line in table
    assert table in proc.stdout  # printed as written
    assert (out / "correct_vs_preferred.png").read_bytes()[:4] == b"\x89PNG"
