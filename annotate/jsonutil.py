"""The one JSON cleaner: results holding NumPy or PyTorch numbers, NaN, tuples or dataclasses -> plain JSON values,
and its inverse for typed dataclasses (`from_jsonable`, `Record`).

Audit results (annotate.audit_types), training metrics and eval.json (rlhf.common) and the pipeline report all go
through to_jsonable before json.dumps, so an undefined figure is null everywhere (never the non-JSON `NaN`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


def to_jsonable(obj: Any) -> Any:
    """NaN/inf -> None, NumPy and PyTorch scalars and arrays -> Python numbers and lists, tuples -> lists and
    dataclasses -> dicts, recursively, so that json.dumps(allow_nan=False) accepts the result."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        # NumPy scalars and arrays, torch tensors: duck-typed, so neither library is imported here.
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def from_jsonable(tp: Any, data: Any) -> Any:
    """JSON value -> the annotated type: the inverse of to_jsonable for float (null -> NaN), int, str, bool,
    `X | None`, dict, tuple, list and dataclasses (keys a dataclass does not know are ignored: a newer minor
    version's)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float:
        return math.nan if data is None else float(data)
    if tp in (int, str, bool, Any):
        return data
    if origin in (types.UnionType, typing.Union):  # only `X | None` is used
        (inner,) = [a for a in args if a is not type(None)]
        return None if data is None else from_jsonable(inner, data)
    if origin is dict:
        return {str(k): from_jsonable(args[1], v) for k, v in data.items()}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], x) for x in data)
        return tuple(from_jsonable(a, x) for a, x in zip(args, data, strict=True))
    if origin is list:
        return [from_jsonable(args[0], x) for x in data]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)  # resolved in the dataclass's own module
        known = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: from_jsonable(hints[k], v) for k, v in data.items() if k in known})
    raise TypeError(f"no JSON decoding for {tp!r}")


class Record:
    """JSON conversion shared by typed results (the audit's, annotate.audit_types)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN -> None)."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Inverse of to_dict (None -> NaN for float fields)."""
        return from_jsonable(cls, data)
