"""`python -m annotate audit` end to end: a real store and pool in, HTML and JSON out, numbers as the library's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from annotate.audit import gold_from_pool, run_audit
from annotate.audit_report import read_json
from annotate.audit_types import SCHEMA_VERSION
from annotate.pool import read_pool, write_pool
from annotate.schema import new_comparison
from annotate.store import ComparisonStore, read_table

ROOT = Path(__file__).resolve().parents[1]


def _make_store(tmp_path: Path) -> tuple[Path, Path]:
    """40 prompts x 2 candidates from two sources; 3 annotators judge each pair; every 4th prompt is gold."""
    rng = np.random.default_rng(11)
    rows, records, t0 = [], [], datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(40):
        prompt = [{"role": "user", "content": f"q{i}"}]
        good, bad = "short right answer", "a much longer answer that is\n- wrong\n- **confident**"
        for rid, text, src, score in ((f"{i}-g", good, "m-good", 1.0), (f"{i}-b", bad, "m-bad", 0.0)):
            meta = json.dumps({"gold_score": score} if i % 4 == 0 else {})
            rows.append(dict(prompt_id=f"p{i}", prompt=prompt, response_id=rid, response=text, source=src, meta=meta))
        for who, acc in (("ann-a", 0.9), ("ann-b", 0.8), ("ann-c", 0.5)):
            left = str(rng.choice(["a", "b"]))
            choice = "a" if rng.random() < acc else "b"
            records.append(new_comparison(
                prompt_id=f"p{i}", prompt=prompt, response_a_id=f"{i}-g", response_a=good, source_a="m-good",
                response_b_id=f"{i}-b", response_b=bad, source_b="m-bad", left=left, choice=choice, annotator=who,
                decision_ms=int(rng.integers(500, 9000)), created_at=t0 + timedelta(minutes=i),
                criteria={"correct": "a"},
            ))  # fmt: skip
    pool = write_pool(rows, tmp_path / "pool.jsonl")
    with ComparisonStore(tmp_path / "store") as store:
        store.append_many(records)
    return tmp_path / "store", pool


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "annotate", "audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _assert_same(a, b, path="$"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_cli_writes_html_and_json_matching_library(tmp_path):
    store, pool = _make_store(tmp_path)
    html_path, json_path = tmp_path / "report.html", tmp_path / "out.json"
    proc = _cli("--store", str(store), "--report", str(html_path), "--json", str(json_path), "--pool", str(pool),
                "--n-boot", "200")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Annotators chose the longer response" in proc.stdout

    data = json.loads(json_path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION  # the JSON is versioned and reads back typed
    assert read_json(json_path).store.version == 1
    # The report names the store version it read, so the audit can be re-run on exactly those votes.
    assert data.pop("store") == {"store": str(store), "version": 1, "rows": 120}
    assert f"store {store}@1: 120 records" in proc.stderr
    expected = run_audit(read_table(f"{store}@1"), gold_from_pool(read_pool(pool)), n_boot=200).to_dict()
    _assert_same(data, expected)
    assert data["summary"]["votes"] == 120 and data["summary"]["gold_votes"] == 30
    assert data["annotators"]["ann-a"]["gold"]["n"] == 10
    # every annotator marked the short answer as more correct; ann-c's overall pick contradicts that ~half the time
    assert data["preferred_vs_correct"]["per_annotator"]["ann-a"]["rate"] < 0.3

    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') >= 4  # self-contained: plots embedded
    assert "http://" not in page and "https://" not in page
    pl = data["length"]["p_longer"]["overall"]
    assert f"Annotators chose the longer response {100 * pl['rate']:.0f}% of the time" in page


def test_cli_bad_input_exits_2(tmp_path):
    proc = _cli("--store", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "nope" in proc.stderr
    ComparisonStore(tmp_path / "empty")
    proc = _cli("--store", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no comparisons" in proc.stderr


def test_cli_help():
    proc = _cli("--help")
    assert proc.returncode == 0 and "--store" in proc.stdout and "--pool" in proc.stdout
