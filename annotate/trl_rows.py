"""TRL preference rows: the one place a row of prompt/chosen/rejected is read and normalised.

`annotate import --format trl` turns rows into comparisons with split_trl; rlhf.data reads exports and other TRL
files into the conversational columns the trainers take with conversational(). Accepted: prompt/chosen/rejected as
plain strings or as messages, chosen/rejected repeating the prompt, and the implicit-prompt form (chosen/rejected
whole conversations that share the prompt). Errors name the field; callers add the file and line.
"""

from __future__ import annotations

from typing import Any

from annotate.schema import SchemaError, as_messages, check_messages, prompt_id_for


def check_distinct(chosen: str, rejected: str) -> None:
    # Both replies would get one response id: a response compared with itself says nothing about preference.
    if chosen == rejected:
        raise SchemaError("field 'rejected': identical to 'chosen' (a response compared with itself)")


def _as_reply(value: object, field: str, prompt: list[dict[str, str]] | None) -> tuple[list | None, str]:
    """A chosen/rejected value -> (its implied prompt prefix or None, the assistant reply text)."""
    if isinstance(value, str):
        return None, value  # empty replies are legitimate (bad) candidates
    if not isinstance(value, list) or not value:
        raise SchemaError(f"field '{field}': expected a string or a list of messages, got {type(value).__name__}")
    if prompt is not None and len(value) > len(prompt) and value[: len(prompt)] == prompt:
        value = value[len(prompt) :]  # conversational rows sometimes repeat the prompt in chosen/rejected
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise SchemaError(f"field '{field}': the last message must be an assistant message with text content")
    prefix = check_messages(value[:-1], field) if len(value) > 1 else None
    return prefix, last["content"]


def split_trl(row: dict, *, distinct: bool = True) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen reply, rejected reply) of a TRL preference row: prompt/chosen/rejected as plain
    strings or messages, or the implicit-prompt form (chosen/rejected whole conversations sharing the prompt).
    `distinct`: refuse a pair whose two replies are the same text (an import would give both one response id)."""
    for f in ("chosen", "rejected"):
        if f not in row or row[f] is None:
            raise SchemaError(f"missing field '{f}'")
    prompt = row.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str | list):
            raise SchemaError(f"field 'prompt': expected a string or a list of messages, got {type(prompt).__name__}")
        prompt = as_messages(prompt)
    pre_c, chosen = _as_reply(row["chosen"], "chosen", prompt)
    pre_r, rejected = _as_reply(row["rejected"], "rejected", prompt)
    if prompt is None:  # implicit prompt: the shared conversation before the two replies
        if pre_c is None or pre_c != pre_r:
            raise SchemaError("field 'prompt': missing, and chosen/rejected do not share a conversation prefix")
        prompt = pre_c
    elif pre_c is not None or pre_r is not None:
        raise SchemaError("field 'chosen': has several messages that are not the prompt")
    if distinct:
        check_distinct(chosen, rejected)
    return prompt, chosen, rejected


def conversational(row: dict[str, Any]) -> dict[str, Any]:
    """The row in TRL's conversational preference form: prompt (messages), chosen and rejected (one assistant message
    each); other columns are kept, and a missing prompt_id becomes prompt_id_for's, the id an import of the same
    messages gets (so a held-out split stays by prompt). Identical replies are allowed: data is read, not judged."""
    prompt, chosen, rejected = split_trl(row, distinct=False)
    out = dict(row)
    out["prompt"] = prompt
    out["chosen"] = [{"role": "assistant", "content": chosen}]
    out["rejected"] = [{"role": "assistant", "content": rejected}]
    if not out.get("prompt_id"):
        out["prompt_id"] = prompt_id_for(prompt)
    return out
