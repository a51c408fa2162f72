"""annotate.verifiers: each kind accepts right and refuses wrong answers, model code runs contained, malformed specs
are SchemaErrors naming the place and field, and the demo pool's checkable candidates agree with their labels."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from annotate.pool import pool_verifiers, read_pool
from annotate.schema import SchemaError
from annotate.verifiers import extract_code, final_number, validate, verify

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "datasets" / "demo" / "pool.jsonl"
ADD = {"type": "python", "test": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}


@pytest.mark.parametrize(
    "response",
    ["Canberra", "canberra.", "**Canberra**", "Let me think.\nThe answer is Canberra.", "Final answer: CANBERRA!"],
)
def test_exact_accepts_the_answer_in_each_documented_place(response):
    assert verify({"type": "exact", "answer": "Canberra"}, response)


@pytest.mark.parametrize(
    "response",
    ["Sydney", "Probably Canberra", "Sydney, not Canberra", "The answer is Sydney.\nCanberra is nearby.", ""],
)
def test_exact_refuses_wrong_or_buried_answers(response):
    assert not verify({"type": "exact", "answer": "Canberra"}, response)


def test_numeric_extraction_and_tolerance():
    spec = {"type": "numeric", "answer": 6912}
    assert verify(spec, "4 + 8 = 12, carry 1...\nAnswer: 6,912 (checked twice, 2 times)")
    assert verify(spec, "We add 1234 and 5678 to get 6912")
    assert not verify(spec, "The answer is 6812.") and not verify(spec, "no number here")
    assert verify({"type": "numeric", "answer": 0.1 + 0.2}, "0.3")  # default: float noise only
    big = {"type": "numeric", "answer": 1e9}  # the default 1e-6 is relative here: 1000 either side
    assert verify(big, "1000000500") and not verify(big, "1000002000")
    rounded = {"type": "numeric", "answer": 37.8, "tol": 0.05}  # `tol` is absolute
    assert verify(rounded, "37.78 °C") and not verify(rounded, "38.9 °C")
    assert final_number("from 3-5") == 5 and final_number("x = -5") == -5 and final_number("\u22122.5") == -2.5
    assert final_number("about .5 of it") == 0.5


def test_regex():
    spec = {"type": "regex", "pattern": r"(?i)\bleonardo\b"}
    assert verify(spec, "It was Leonardo da Vinci.") and not verify(spec, "Michelangelo, surely.")


def test_python_accepts_a_right_solution_and_refuses_wrong_ones():
    right = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nadd(1, 2)\n```"
    assert verify(ADD, right)
    assert verify(ADD, "def add(a, b):\n    return a + b\n")  # no fence: the whole text is the code
    assert not verify(ADD, "```python\ndef add(a, b):\n    return a - b\n```")
    assert not verify(ADD, "I don't know.")  # not Python at all
    demo = "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))"
    demo += "\n```"
    assert verify(ADD, demo)  # the answer is imported as a module: its __main__ demo does not run
    assert not verify(ADD, demo.replace("if __name__ == '__main__':\n    ", ""))  # stdin is closed: EOFError
    assert extract_code("```js\nx\n```\n```py\ny = 1\n```") == "y = 1\n"


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",  # exits "successfully" before the test runs
        "import os\nos._exit(0)",
        "raise SystemExit",
        "while True:\n    pass",  # infinite loop: killed at the timeout
        "while True:\n    print('x' * 10000)",  # floods its output: stopped at the file-size limit
        "x = bytearray(4 << 30)",  # over the memory limit
        "import subprocess\nsubprocess.Popen(['sleep', '30'])\nwhile True: pass",  # leaves a child behind
        "open('test.py').read()",  # reading the test for its expected values: it is gone before the answer runs
    ],
)
def test_python_malicious_or_runaway_answers_fail_within_the_timeout(code):
    spec = {**ADD, "timeout": 2}
    start = time.monotonic()
    assert not verify(spec, f"```python\ndef add(a, b):\n    return a + b\n{code}\n```")
    assert time.monotonic() - start < 10


def test_python_runs_isolated_from_this_process(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFKIT_SECRET_TOKEN", "hunter2")
    monkeypatch.chdir(tmp_path)
    probe = "import os, sys\nassert 'PREFKIT_SECRET_TOKEN' not in os.environ\nassert sys.flags.isolated\n"
    probe += f"assert os.getcwd() != {str(tmp_path)!r}\nassert sys.stdin is None or sys.stdin.read() == ''"
    assert verify({"type": "python", "test": probe}, "pass")
    marker = tmp_path / "ran-here"
    assert not verify(ADD, f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(0)")
    assert marker.exists()  # it ran, in a child process, and still failed; nothing ran in this interpreter


# spec -> the field its SchemaError must name
MALFORMED = [
    ("not a dict", "meta.verifier'"),
    ({"answer": "x"}, "meta.verifier.type"),
    ({"type": "fuzzy", "answer": "x"}, "meta.verifier.type"),
    ({"type": "exact"}, "meta.verifier.answer"),
    ({"type": "exact", "answer": " . "}, "meta.verifier.answer"),
    ({"type": "exact", "answer": "x", "tolerance": 1}, "meta.verifier.tolerance"),
    ({"type": "numeric", "answer": "12"}, "meta.verifier.answer"),
    ({"type": "numeric", "answer": True}, "meta.verifier.answer"),
    ({"type": "numeric", "answer": float("nan")}, "meta.verifier.answer"),
    ({"type": "numeric", "answer": 1, "tol": -1}, "meta.verifier.tol"),
    ({"type": "regex", "pattern": "(unclosed"}, "meta.verifier.pattern"),
    ({"type": "regex", "pattern": ""}, "meta.verifier.pattern"),
    ({"type": "python", "test": "assert (("}, "meta.verifier.test"),
    ({"type": "python", "test": "pass", "timeout": 0}, "meta.verifier.timeout"),
    ({"type": "python", "test": "pass", "timeout": 3600}, "meta.verifier.timeout"),
]


@pytest.mark.parametrize(("spec", "field"), MALFORMED)
def test_malformed_specs_name_the_place_and_field(spec, field):
    with pytest.raises(SchemaError, match=rf"^pool\.jsonl: line 7: field '{field}"):
        validate(spec, "pool.jsonl: line 7")
    with pytest.raises(SchemaError):
        verify(spec, "anything")  # verify refuses a bad spec too, rather than guessing


def pool_line(rid: str, verifier: object, pid: str = "p") -> str:
    meta = {"verifier": verifier}
    row = {"prompt_id": pid, "prompt": "2+2?", "response_id": rid, "response": "4", "source": "me", "meta": meta}
    return json.dumps(row) + "\n"


def test_read_pool_validates_verifiers_and_keeps_one_per_prompt(tmp_path):
    ok = {"type": "numeric", "answer": 4}
    src = tmp_path / "pool.jsonl"
    src.write_text(pool_line("a", ok) + "\n" + pool_line("b", ok) + pool_line("c", ok, pid="q"))
    assert pool_verifiers(read_pool(src)) == {"p": ok, "q": ok}
    src.write_text(pool_line("a", ok) + "\n" + pool_line("b", {"type": "numeric", "answer": "4"}))
    with pytest.raises(SchemaError, match=rf"^{src}: line 3: field 'meta.verifier.answer'"):
        read_pool(src)
    src.write_text(pool_line("a", ok) + pool_line("b", {"type": "numeric", "answer": 5}))
    with pytest.raises(SchemaError, match=r"line 2: field 'meta.verifier': differs from the verifier on line 1"):
        read_pool(src)


def test_demo_pool_checkable_candidates_agree_with_their_verifiers():
    rows = read_pool(POOL).to_pylist()
    verifiers = pool_verifiers(read_pool(POOL))
    by_prompt = defaultdict(list)
    for r in rows:
        meta = json.loads(r["meta"])
        if r["prompt_id"] in verifiers:
            assert meta["verifier"] == verifiers[r["prompt_id"]], r["response_id"]  # on every row of the prompt
            by_prompt[r["prompt_id"]].append((r, meta))
    assert len(by_prompt) >= 40
    assert Counter(json.loads(c[0][0]["meta"])["category"] for c in by_prompt.values()).keys() >= {
        "arithmetic", "units", "dates", "facts", "coding"
    }  # fmt: skip
    assert {v["type"] for v in verifiers.values()} == {"exact", "numeric", "regex", "python"}
    for pid, cands in by_prompt.items():
        kinds = {m["kind"]: r for r, m in cands}
        assert set(kinds) == {"right_short", "right_long", "wrong_confident", "wrong_hedged"}, pid
        assert len(kinds["right_long"]["response"]) > len(kinds["right_short"]["response"]), pid
        for r, m in cands:
            assert m["correct"] is m["kind"].startswith("right_"), r["response_id"]
            assert m["confident"] is (m["kind"] != "wrong_hedged"), r["response_id"]
            assert verify(verifiers[pid], r["response"]) is m["correct"], r["response_id"]
