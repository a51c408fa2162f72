"""The command-line mistake: UsageError, apart from SchemaError (annotate.schema), which says the data is wrong.

Both end a command (`python -m annotate ...`, `python rlhf/train.py ...`, `app.py`) as one `error: ...` line and
exit code 2, never a traceback. A SchemaError names the file, line or row and field that is wrong; a UsageError
names the flag or the combination of flags to change.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TRAIN_EXTRA = "pip install 'prefkit[train]'"


class UsageError(ValueError):
    """The command line asks for something that cannot be done as given: a flag value out of range, flags that
    exclude or need each other, a missing option, a feature that needs the `train` extra. The message names the
    flag. A ValueError, as SchemaError is, so callers that catch bad values keep working."""


def require_extra(module: str, feature: str) -> ModuleType:
    """Import `module` of the `train` extra, or raise a UsageError naming `feature` and the extra to install: the
    base install (no torch, no `datasets`) reports this as one line, not an ImportError traceback."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.partition(".")[0] != module.partition(".")[0]:
            raise  # the package is there but broken (one of its own imports is missing): keep the traceback
        why = f"{feature} needs the `{module}` package, which the base install lacks"
        raise UsageError(f"{why}: {TRAIN_EXTRA}") from None
