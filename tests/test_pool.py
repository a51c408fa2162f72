"""Pool reading: limits on text size, blank responses accepted as candidates, errors naming file, line and field."""

import json

import pytest

from annotate.pool import read_pool
from annotate.schema import MAX_POOL_TEXT, SchemaError


def rows(response: str, prompt: str = "Say something.") -> list[dict]:
    return [
        {"prompt_id": "p0", "prompt": prompt, "response_id": "r0", "response": response, "source": "m"},
        {"prompt_id": "p0", "prompt": prompt, "response_id": "r1", "response": "Something.", "source": "m"},
    ]


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_blank_response_is_a_candidate(tmp_path):
    table = read_pool(write(tmp_path / "pool.jsonl", rows("   \n\t ")))
    assert table["response"].to_pylist() == ["   \n\t ", "Something."]


@pytest.mark.parametrize(
    "records, field",
    [
        (rows("x" * (MAX_POOL_TEXT + 1)), "response"),
        (rows("ok", prompt="y" * (MAX_POOL_TEXT + 1)), "prompt"),
        (rows("ok", prompt=[{"role": "user", "content": "z" * (MAX_POOL_TEXT + 1)}]), r"prompt\[0\].content"),
    ],
)
def test_oversize_text_refused_naming_line_and_field(tmp_path, records, field):
    path = write(tmp_path / "pool.jsonl", records)
    with pytest.raises(SchemaError, match=rf"pool.jsonl: line 1: field '{field}': 100,001 characters, over the limit"):
        read_pool(path)
