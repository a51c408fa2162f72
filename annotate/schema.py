"""The one place where the project's record layouts are defined (candidate pool and comparison).

Both are Arrow schemas carrying a version, so Parquet written by any release can be read and checked. Records are
checked here on their way into the project's own files: every comparison the store appends (check_comparison, via
new_comparison and the store) and every pool row read (annotate.pool, check_pool_row); validation errors name the
field. Files of other layouts are checked by their own readers, with the same SchemaError: TRL preference exports
and HH-RLHF dialogues (annotate.importers, rlhf.data), users files (annotate.users).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from annotate import __version__

SCHEMA_VERSION = 2  # 2: `flag` (a pair reported as broken, offensive, duplicate or not judgeable)

CHOICES = ("a", "b", "tie", "both_bad", "skip")
SIDES = ("a", "b")
CRITERION_PICKS = ("a", "b", "tie")
CRITERIA = ("correct", "helpful", "harmless", "concise")
STRENGTHS = {1: "slight", 2: "clear", 3: "much"}
ROLES = ("system", "user", "assistant", "tool")
# Why an annotator flagged a pair. Flags are skips that say why; `cannot_judge` is personal (the annotator lacks the
# expertise), the others describe the pair itself, so export drops every vote on a pair flagged that way.
FLAGS = ("broken", "offensive", "duplicate", "cannot_judge")
PAIR_FLAGS = ("broken", "offensive", "duplicate")
# Longest text accepted in one pool field (a response or a prompt turn): larger ones are almost always a broken
# generation or a pasted file, and a multi-megabyte response would stall every annotator's page.
MAX_POOL_TEXT = 100_000

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

POOL_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),
        ("response_id", pa.string()),
        ("response", pa.string()),
        ("source", pa.string()),  # model id or author
        ("meta", pa.string()),  # JSON: generation settings
    ],
    metadata={"prefkit.kind": "pool", "prefkit.schema_version": str(SCHEMA_VERSION)},
)

COMPARISON_SCHEMA = pa.schema(
    [
        ("comparison_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", MESSAGES),
        ("response_a_id", pa.string()),
        ("response_a", pa.string()),
        ("source_a", pa.string()),
        ("response_b_id", pa.string()),
        ("response_b", pa.string()),
        ("source_b", pa.string()),
        ("left", pa.string()),  # which response was shown on the left: "a" or "b"
        ("choice", pa.string()),
        ("strength", pa.int8()),  # 1 slight, 2 clear, 3 much; null for tie/skip
        ("criteria", pa.map_(pa.string(), pa.string())),
        ("rationale", pa.string()),
        ("annotator", pa.string()),
        ("session", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("decision_ms", pa.int64()),
        ("retracts", pa.string()),  # undo is a new record pointing at the one it cancels
        ("flag", pa.string()),  # null, or one of FLAGS (the record is then a skip)
        ("schema_version", pa.int16()),
        ("app_version", pa.string()),
    ],
    metadata={"prefkit.kind": "comparison", "prefkit.schema_version": str(SCHEMA_VERSION)},
)


class SchemaError(ValueError):
    """A record does not fit a schema; the message names the field (and row when known)."""


def _require_text(rec: dict, field: str, *, allow_empty: bool = False) -> str:
    value = rec.get(field)
    if not isinstance(value, str):
        raise SchemaError(f"field '{field}': expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise SchemaError(f"field '{field}': empty text")
    return value


def _check_size(value: str, field: str, limit: int | None) -> None:
    if limit is not None and len(value) > limit:
        raise SchemaError(f"field '{field}': {len(value):,} characters, over the limit of {limit:,}")


def check_messages(value: Any, field: str = "prompt", max_chars: int | None = None) -> list[dict[str, str]]:
    """Validate a conversation: a non-empty list of {role, content} with known roles and non-empty content."""
    if not isinstance(value, list) or not value:
        raise SchemaError(f"field '{field}': expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise SchemaError(f"field '{field}[{i}]': expected a message object, got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise SchemaError(f"field '{field}[{i}].role': unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise SchemaError(f"field '{field}[{i}].content': empty or not text")
        _check_size(content, f"{field}[{i}].content", max_chars)
        out.append({"role": role, "content": content})
    return out


def as_messages(prompt: str | list, max_chars: int | None = None) -> list[dict[str, str]]:
    """A plain-string prompt becomes a single user turn; a message list is checked and kept."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SchemaError("field 'prompt': empty text")
        _check_size(prompt, "prompt", max_chars)
        return [{"role": "user", "content": prompt}]
    return check_messages(prompt, max_chars=max_chars)


def prompt_id_for(prompt: str | list[dict[str, str]]) -> str:
    """The one prompt id derived from content: "p-" + the first 16 hex digits of SHA-1 of the messages as JSON.

    Every place that has to name a prompt without a given id uses this (imports, prompts files and pools without
    ids, generate, preference files without `prompt_id`, the train/test split), so the same messages get the same
    id whatever file they came from. Messages are reduced to {role, content} in that order and a plain string is
    one user turn, so key order or extra keys in a file never change the id. The hashing is exactly what imports
    always used (no sort_keys, ensure_ascii=False): ids already in users' stores stay valid. A pool or prompts
    file that gives its own prompt_id keeps it.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return "p-" + hashlib.sha1(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:16]


def check_pool_row(rec: dict, max_chars: int | None = MAX_POOL_TEXT) -> dict:
    """Validate and normalise one candidate-pool row. An empty or whitespace-only response is a legitimate (bad)
    candidate: the app shows it as "(empty response)" rather than refusing the pool."""
    out = {f: _require_text(rec, f) for f in ("prompt_id", "response_id", "source")}
    out["response"] = _require_text(rec, "response", allow_empty=True)
    _check_size(out["response"], "response", max_chars)
    out["prompt"] = as_messages(rec.get("prompt"), max_chars)
    meta = rec.get("meta") or "{}"
    if not isinstance(meta, str):
        meta = json.dumps(meta, sort_keys=True)
    try:
        json.loads(meta)
    except json.JSONDecodeError as e:
        raise SchemaError(f"field 'meta': not valid JSON ({e.msg})") from None
    out["meta"] = meta
    return out


def check_comparison(rec: dict) -> dict:
    """Validate one comparison record in full; returns it with defaults filled. Raises SchemaError."""
    for f in ("comparison_id", "prompt_id", "response_a_id", "response_b_id", "annotator"):
        _require_text(rec, f)
    for f in ("response_a", "response_b"):
        _require_text(rec, f, allow_empty=True)  # an empty response is a legitimate (bad) candidate
    for f in ("source_a", "source_b", "session", "rationale", "app_version"):
        if rec.get(f) is not None and not isinstance(rec[f], str):
            raise SchemaError(f"field '{f}': expected a string, got {type(rec[f]).__name__}")
    check_messages(rec.get("prompt"))
    if rec.get("left") not in SIDES:
        raise SchemaError(f"field 'left': must be 'a' or 'b', got {rec.get('left')!r}")
    if rec.get("choice") not in CHOICES:
        raise SchemaError(f"field 'choice': must be one of {CHOICES}, got {rec.get('choice')!r}")
    strength = rec.get("strength")
    if strength is not None and (isinstance(strength, bool) or strength not in STRENGTHS):
        raise SchemaError(f"field 'strength': must be 1, 2, 3 or null, got {strength!r}")
    criteria = rec.get("criteria") or {}
    if not isinstance(criteria, dict):
        raise SchemaError(f"field 'criteria': expected a mapping, got {type(criteria).__name__}")
    for k, v in criteria.items():
        if not isinstance(k, str) or v not in CRITERION_PICKS:
            raise SchemaError(f"field 'criteria.{k}': must be one of {CRITERION_PICKS}, got {v!r}")
    dm = rec.get("decision_ms")
    if dm is not None and (isinstance(dm, bool) or not isinstance(dm, int) or dm < 0):
        raise SchemaError(f"field 'decision_ms': expected a non-negative integer, got {dm!r}")
    if not isinstance(rec.get("created_at"), datetime):
        raise SchemaError("field 'created_at': expected a datetime")
    if rec.get("retracts") is not None and not isinstance(rec["retracts"], str):
        raise SchemaError("field 'retracts': expected a comparison_id or null")
    flag = rec.get("flag")
    if flag is not None and (flag not in FLAGS or rec["choice"] != "skip"):
        raise SchemaError(f"field 'flag': must be null or one of {FLAGS} on a skip, got {flag!r}")
    return rec


def new_comparison(
    *,
    prompt_id: str,
    prompt: list[dict[str, str]],
    response_a_id: str,
    response_a: str,
    response_b_id: str,
    response_b: str,
    choice: str,
    annotator: str,
    left: str = "a",
    source_a: str = "",
    source_b: str = "",
    strength: int | None = None,
    criteria: dict[str, str] | None = None,
    rationale: str = "",
    session: str = "",
    decision_ms: int | None = None,
    retracts: str | None = None,
    flag: str | None = None,
    created_at: datetime | None = None,
    comparison_id: str | None = None,
) -> dict:
    """Build a complete, validated comparison record (fresh uuid and UTC timestamp unless given)."""
    rec = {
        "comparison_id": comparison_id or str(uuid.uuid4()),
        "prompt_id": prompt_id,
        "prompt": prompt,
        "response_a_id": response_a_id,
        "response_a": response_a,
        "source_a": source_a,
        "response_b_id": response_b_id,
        "response_b": response_b,
        "source_b": source_b,
        "left": left,
        "choice": choice,
        "strength": strength,
        "criteria": dict(criteria or {}),
        "rationale": rationale,
        "annotator": annotator,
        "session": session,
        "created_at": created_at or datetime.now(UTC),
        "decision_ms": decision_ms,
        "retracts": retracts,
        "flag": flag,
        "schema_version": SCHEMA_VERSION,
        "app_version": __version__,
    }
    return check_comparison(rec)


def comparisons_table(records: list[dict]) -> pa.Table:
    """Records (as from new_comparison) to an Arrow table of COMPARISON_SCHEMA."""
    rows = [{**r, "criteria": list((r.get("criteria") or {}).items())} for r in records]
    return pa.Table.from_pylist(rows, schema=COMPARISON_SCHEMA)


def pool_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=POOL_SCHEMA)


def check_table_schema(table_schema: pa.Schema, expected: pa.Schema, where: str) -> None:
    """A Parquet file must carry every field of the expected schema with a castable type."""
    for field in expected:
        idx = table_schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{where}: missing field '{field.name}'")
        got = table_schema.field(idx).type
        if got != field.type and not _castable(got, field.type):
            raise SchemaError(f"{where}: field '{field.name}' has type {got}, expected {field.type}")


def _castable(got: pa.DataType, want: pa.DataType) -> bool:
    try:
        pa.array([], type=got).cast(want)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


# Fixed namespace: imported votes must get the same ids on every run and machine.
_ID_NAMESPACE = uuid.UUID("6f1c2b1e-6a43-4d0e-9a8e-2f1f4d2a7c10")


def content_key(prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    """A hash of one pair's content (prompt, chosen, rejected): repeated records within a source share it."""
    return hashlib.sha1(json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode()).hexdigest()


def comparison_id_for(fmt: str, annotator: str, prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    """The id of one imported vote: its content and who gave it, never its place in the file (annotate.importers
    explains the choice). Here, beside the schema, because the store's migration gives old imports these ids too."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{fmt}\0{annotator}\0{content_key(prompt, chosen, rejected)}"))
