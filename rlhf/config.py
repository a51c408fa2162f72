"""Typed command configs filled from a YAML recipe and CLI flags (flags win), in the spirit of TRL's TrlParser.

A config is a dataclass whose fields carry `metadata={"help": ...}`; `parse_config(Cls, argv)` turns each
field into `--field-name`, reads `--config recipe.yaml` first, and returns a `Cls`. Unknown YAML keys are an
error naming the key, so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip())
    parser.add_argument("--config", help="YAML recipe; flags given on the command line override its values")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            kw.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp) or (str,)
            kw.update(type=inner, nargs="+")
        elif tp is dict or typing.get_origin(tp) is dict:
            kw.update(type=json.loads, metavar="JSON")
        else:
            kw["type"] = tp
        default = f.default if f.default is not dataclasses.MISSING else None
        if default not in (None, "", [], {}) and kw["help"]:
            kw["help"] += f" (default: {default})"
        parser.add_argument(flag, **kw)
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse `argv` into a `cls` instance: defaults < YAML recipe (--config) < command-line flags."""
    parser = build_parser(cls, prog=prog)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    recipe = args.pop("config", None)
    if recipe:
        import yaml

        data = yaml.safe_load(Path(recipe).read_text()) or {}
        if not isinstance(data, dict):
            parser.error(f"{recipe}: expected a mapping of option: value")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                parser.error(f"{recipe}: unknown option '{key}'")
            values[name] = value
    values.update(args)
    return cls(**values)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to the run's outputs: the record of what was actually run."""
    import yaml

    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
