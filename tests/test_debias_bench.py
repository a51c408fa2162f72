"""bench/debias.py (issue 14): the planted verbosity bias is exactly what it says, and the benchmark runs end to end.

The smoke test runs the script as users do, on the synthetic testbed only (2 reward methods, 1 DPO loss, 1 seed, a
few steps: about a minute on one core); the HH testbed's data path is the same code with the CLIs' import/export in
front, and is not run here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).parents[1] / "bench/debias.py"


def _bench():
    """bench/debias.py as a module (bench/ is not a package); registered first, as its dataclasses need."""
    if "debias_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("debias_bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["debias_bench"] = module
        spec.loader.exec_module(module)
    return sys.modules["debias_bench"]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Export-shaped rows with random-length responses, some of equal length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c, r = "x" * rng.randint(1, 30), "y" * rng.randint(1, 30)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"q{i}"}],
                "prompt_id": f"p{i}",
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
                "chosen_id": f"p{i}-c",
                "rejected_id": f"p{i}-r",
                "chosen_source": "good",
                "rejected_source": "bad",
                "margin": 1.0,
                "n_votes": 1,
                "agreement": 1.0,
            }
        )
    return rows


def _len(messages: list[dict]) -> int:
    return len(messages[-1]["content"])


def test_planting_relabels_exactly_the_share_and_always_to_the_longer_side(tmp_path):
    debias = _bench()
    rows = _pairs(200)
    out, picked = debias.plant_verbosity(rows, 0.3, seed=0)
    assert len(picked) == round(0.3 * len(rows)) == 60
    assert [i for i, (a, b) in enumerate(zip(rows, out)) if a != b] == picked  # nothing else changed
    for i in picked:
        before, after = rows[i], out[i]
        assert _len(before["chosen"]) < _len(before["rejected"])  # a label that favoured the shorter one ...
        assert _len(after["chosen"]) > _len(after["rejected"])  # ... now favours the longer one
        assert (after["chosen"], after["chosen_id"], after["chosen_source"]) == (
            before["rejected"],
            before["rejected_id"],
            before["rejected_source"],
        )
        assert (after["prompt"], after["margin"]) == (before["prompt"], before["margin"])
    assert debias.plant_verbosity(rows, 0.3, seed=0)[1] == picked  # seeded
    assert debias.plant_verbosity(rows, 0.3, seed=1)[1] != picked
    assert debias.plant_verbosity(rows, 0.0)[1] == []
    with pytest.raises(ValueError, match="shorter chosen response"):
        debias.plant_verbosity(rows, 0.9)  # more than the pairs whose chosen response is the shorter
    with pytest.raises(ValueError, match="share"):
        debias.plant_verbosity(rows, 1.5)

    # The file-level step: the training split is planted, the held-out split is copied untouched.
    train, test = tmp_path / "prefs-train.parquet", tmp_path / "prefs-test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), train)
    pq.write_table(pa.Table.from_pylist(_pairs(40, seed=9)), test)
    info = debias.plant_split(train, test, tmp_path / "planted", 0.3, seed=0)
    assert pq.read_table(tmp_path / "planted/planted-train.parquet").to_pylist() == out
    assert (tmp_path / "planted/planted-test.parquet").read_bytes() == test.read_bytes()
    assert (info["pairs"], info["relabelled"]) == (200, 60)
    assert info["chosen_longer_after"] > info["chosen_longer_before"]


def test_rebalanced_synthetic_pairs_keep_everything_but_the_length_confound():
    from fixtures import synthetic_arithmetic
    from test_length_debias import padded

    debias = _bench()
    rows = padded(synthetic_arithmetic(n_prompts=100, wrong_per_prompt=4, seed=0), 0.85, 0.75, random.Random(0))
    again = debias.rebalance_padding(rows, seed=0)
    assert debias.chosen_longer_share(rows) > 0.8 and abs(debias.chosen_longer_share(again) - 0.5) < 0.06
    for a, b in zip(rows, again):
        for side in ("chosen", "rejected"):
            assert debias._padding(a[side][0]["content"])[1] == debias._padding(b[side][0]["content"])[1]
        assert sorted(debias._padding(x[0]["content"])[0] for x in (a["chosen"], a["rejected"])) == sorted(
            debias._padding(x[0]["content"])[0] for x in (b["chosen"], b["rejected"])
        )


@pytest.mark.slow
def test_benchmark_smoke_on_the_synthetic_testbed(tmp_path):
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--testbeds",
        "synthetic",
        "--methods",
        "none",
        "poe",
        "--losses",
        "rdpo",
        "--seeds",
        "42",
        "--steps",
        "4",
        "--dpo-steps",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / "debias.json").read_text())
    rows = {(r["kind"], r["method"]): r for r in data["rows"]}
    assert set(rows) == {("reference", "none"), ("reward", "none"), ("reward", "poe"), ("dpo", "rdpo")}
    assert all(r["testbed"] == "synthetic" and r["seed"] == 42 and "error" not in r for r in rows.values())
    for key, r in rows.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_pairs"] == 80, key
        if key[0] != "dpo":
            assert all(math.isfinite(r[k]) and -1 <= r[k] <= 1 for k in ("length_spearman", "style_spearman")), r
            assert isinstance(r["ruler_flag"], bool)
    assert math.isfinite(rows["dpo", "rdpo"]["margin"]) and "win_rate_lc" not in rows["dpo", "rdpo"]  # no judge
    assert {(s["kind"], s["method"]) for s in data["summary"]} == set(rows)
    assert all(s["accuracy"]["n"] == 1 and s["accuracy"]["sd"] == 0 for s in data["summary"])
    checks = {c["method"]: c for c in data["check"]}
    assert set(checks) == {"none", "poe"}
    for c in checks.values():
        assert math.isfinite(c["accuracy_ratio"]) and math.isfinite(c["spearman_gap"])
        assert isinstance(c["meets"], bool) and c["seeds_checked"] == 1
    assert data["testbeds"]["synthetic"]["steps"] == 4 and data["testbeds"]["synthetic"]["train_pairs"] > 300

    table = (out / "debias.md").read_text()
    for line in ("| none on the **unbiased** labels (reference) |", "| `none` |", "| `poe` |", "| `rdpo` |"):
        assert line in table
    assert "## The bar (issue 14)" in table and table in proc.stdout  # printed as written
    assert (out / "debias.png").read_bytes()[:4] == b"\x89PNG"
