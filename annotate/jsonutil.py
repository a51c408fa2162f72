"""The one JSON cleaner: results holding NumPy or PyTorch numbers, NaN, tuples or dataclasses -> plain JSON values.

Audit results (annotate.audit_types), training metrics and eval.json (rlhf.common) and the pipeline report all go
through to_jsonable before json.dumps, so an undefined figure is null everywhere (never the non-JSON `NaN`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


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
