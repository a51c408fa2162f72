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


def test_csv_lines_are_physical_lines(tmp_path):
    from annotate.pool import iter_csv

    path = tmp_path / "p.csv"
    path.write_bytes(b'a,b\r\n\r\n1,"x\r\ny\r\nz"\r\n,\r\n2,w\r\n')
    assert list(iter_csv(path)) == [(3, {"a": "1", "b": "x\r\ny\r\nz"}), (7, {"a": "2", "b": "w"})]
    path.write_bytes(b"a,b\n1,2,3\n")
    with pytest.raises(SchemaError, match=r"p.csv: line 2: 3 fields, but the header has 2"):
        list(iter_csv(path))


def test_prompts_file_with_bom_crlf_and_a_bad_byte(tmp_path):
    from annotate.pool import read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst?\r\n\r\nSecond?\r\n")
    assert [p["prompt"][0]["content"] for p in read_prompts(path)] == ["First?", "Second?"]
    path.write_bytes(b"First?\r\n" * 5000 + b"caf\xe9?\r\n")
    with pytest.raises(SchemaError, match=r"prompts.txt: line 5001: not UTF-8 text"):
        read_prompts(path)


def test_parquet_text_that_is_not_utf8_names_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = [f"Hello {i}" for i in range(5)]
    data = "".join(good).encode()
    offsets = [0]
    for s in good:
        offsets.append(offsets[-1] + len(s))
    raw = bytearray(data)
    raw[offsets[3]] = 0xFF  # row 4's first byte: Arrow does not validate, so the file is written as is
    response = pa.Array.from_buffers(pa.string(), 5, [None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
                                                      pa.py_buffer(bytes(raw))])  # fmt: skip
    table = pa.table({"prompt_id": ["p"] * 5, "prompt": ["Hi"] * 5, "response_id": [f"r{i}" for i in range(5)],
                      "response": response, "source": ["m"] * 5})  # fmt: skip
    pq.write_table(table, tmp_path / "pool.parquet")
    with pytest.raises(SchemaError, match=r"pool.parquet: row 4: field 'response': not UTF-8 text"):
        read_pool(tmp_path / "pool.parquet")


def test_verifiers_are_keyed_by_the_prompts_content_from_a_pool_or_a_store(tmp_path):
    """GRPO finds a prompt's verifier whatever file the prompt came from: keyed by prompt_id_for(messages), not by
    the pool's own id; a store's pool folder gives the same; two verifiers for one prompt's messages are refused."""
    from annotate.importers import store_pool
    from annotate.pool import is_pool, read_verifiers
    from annotate.schema import prompt_id_for

    spec = {"type": "numeric", "answer": 4}
    checkable = [{**r, "meta": json.dumps({"verifier": spec})} for r in rows("4", prompt="What is 2 + 2?")]
    pool = write(tmp_path / "pool.jsonl", checkable + [{**r, "prompt_id": "p1"} for r in rows("Hi.")])
    key = prompt_id_for("What is 2 + 2?")
    assert read_verifiers(pool) == {key: spec}  # the pool calls it p0; the prompt without a verifier is absent
    store_pool(read_pool(pool), tmp_path / "store")
    assert read_verifiers(tmp_path / "store") == read_verifiers(f"{tmp_path / 'store'}@3") == {key: spec}
    assert is_pool(pool) and not is_pool(write(tmp_path / "prompts.jsonl", [{"prompt": "What is 2 + 2?"}]))
    other = [{**r, "prompt_id": "p9", "meta": json.dumps({"verifier": {"type": "exact", "answer": "4"}})}
             for r in rows("4", prompt="What is 2 + 2?")]  # fmt: skip
    with pytest.raises(SchemaError, match="repeats an earlier prompt's messages with a different verifier"):
        read_verifiers(write(tmp_path / "clash.jsonl", checkable + other))
