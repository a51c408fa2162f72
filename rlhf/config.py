"""Typed command configs filled from a YAML recipe and CLI flags (flags win), in the spirit of TRL's TrlParser.

A config is a dataclass whose fields carry `metadata={"help": ...}`; `parse_config(Cls, argv)` turns each
field into `--field-name`, reads `--config recipe.yaml` first, and returns a `Cls`. A command that trains with a TRL
trainer names its TRL config class (`trl_config_class = "trl.DPOConfig"` on the dataclass): every field of that
class our dataclass does not declare is then also an option (a recipe key, and a flag under "TRL options"), kept in
`cfg.trl_overrides` and applied last when the TRL config is built (`rlhf.common.trl_args`). Any other key or flag is
an error naming it (exit 2), so a typo, or a field TRL renamed, never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import importlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# TRL fields that are no option of ours, with where to go instead: the Trainer ignores resume_from_checkpoint (only
# TRL's scripts read it), so as a TRL option it would be a silent no-op.
NOT_TRL_OPTIONS = {"resume_from_checkpoint": "use --resume"}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]; a union of several types -> (tuple of them, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(tp) if a is not type(None))
        return (args[0] if len(args) == 1 else args), True
    return tp, False


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _json_or_str(v: str) -> Any:
    """TRL's `dict | str` fields (fsdp_config, lr_scheduler_kwargs, ...): inline JSON, or a string (a file path)."""
    return json.loads(v) if v.lstrip()[:1] in ("{", "[") else v


def _first_of(*converters: Any) -> Any:
    """The first converter that accepts the string (`int | str` -> an int when it parses as one, else the string)."""

    def convert(v: str) -> Any:
        for c in converters:
            try:
                return c(v)
            except (ValueError, argparse.ArgumentTypeError):
                continue
        return v

    return convert


def _flag_kwargs(tp: Any) -> dict[str, Any] | None:
    """argparse keywords for a field of type `tp`, or None when no command-line string can express it."""
    tp, _ = _base_type(tp)
    if isinstance(tp, tuple):  # a union: TRL's `SchedulerType | str`, `dict | str`, `int | str`, `str | bool` ...
        if any(t is dict or typing.get_origin(t) is dict for t in tp):
            return {"type": _json_or_str, "metavar": "JSON|STR"}
        simple = [t for t in (bool, int, float) if t in tp]
        return {"type": _first_of(*[_str2bool if t is bool else t for t in simple]) if simple else str}
    if tp is bool:
        return {"type": _str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (str,)
        return {"type": inner, "nargs": "+"} if inner in (str, int, float) else None
    if tp is dict or typing.get_origin(tp) is dict:
        return {"type": json.loads, "metavar": "JSON"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": str, "choices": [e.value for e in tp]}
    if typing.get_origin(tp) is typing.Literal:
        return {"type": str, "choices": [str(a) for a in typing.get_args(tp)]}
    return {"type": tp} if tp in (str, int, float) else None


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    """Fields a recipe or flag may set (`metadata={"cli": False}` marks one the parser fills itself)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def trl_config_class(cls: type, trl_cls: type | str | None = None) -> type | None:
    """The TRL config class behind a command config: given, or named by the dataclass (`trl_config_class`)."""
    spec = trl_cls or getattr(cls, "trl_config_class", None)
    if isinstance(spec, str):  # "trl.DPOConfig": imported only now, so importing a command module stays light
        module, name = spec.rsplit(".", 1)
        spec = getattr(importlib.import_module(module), name)
    return spec


def trl_options(cls: type, trl_cls: type | str | None = None) -> dict[str, dataclasses.Field]:
    """Fields of the command's TRL config class that a recipe or flag may set: every init field our dataclass does
    not declare itself (ours win: `--max-length` is our option, translated by trl_args)."""
    trl_cls = trl_config_class(cls, trl_cls)
    if trl_cls is None:
        return {}
    skip = {f.name for f in dataclasses.fields(cls)} | set(NOT_TRL_OPTIONS)
    return {f.name: f for f in dataclasses.fields(trl_cls) if f.init and f.name[0] != "_" and f.name not in skip}


def recipe_keys(cls: type, trl_cls: type | str | None = None) -> set[str]:
    """Every key a recipe for this command may hold: our options and its TRL config class's (see trl_options)."""
    return {f.name for f in _cli_fields(cls)} | set(trl_options(cls, trl_cls))


def _add_field(parser: Any, f: dataclasses.Field, tp: Any, help_text: str) -> bool:
    """Add `--field-name`; False when no command-line string can express the type (a recipe can still set it)."""
    kw = _flag_kwargs(tp)
    if kw is None:
        return False
    if f.metadata.get("choices"):
        kw["choices"] = f.metadata["choices"]
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, enum.Enum):
        default = default.value
    if default not in (None, "", [], {}) and help_text:
        help_text += f" (default: {default})"
    # argparse %-formats help texts: a literal "%" ("~30% speed") must be doubled.
    kw.update(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
    parser.add_argument("--" + f.name.replace("_", "-"), **kw)
    return True


def _first_sentence(text: str, limit: int = 110) -> str:
    """TRL's help texts run to paragraphs: the first sentence keeps --help readable."""
    text = " ".join(text.split()).split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_parser(
    cls: type, prog: str | None = None, description: str | None = None, trl_cls: type | str | None = None
) -> argparse.ArgumentParser:
    """A parser with one `--field-name` per field of `cls`, then one per TRL option in a "TRL options" group."""
    trl = trl_config_class(cls, trl_cls)
    # With a hundred-odd TRL flags argparse's usage line would fill a screen: name the groups instead.
    usage = f"{prog or '%(prog)s'} [-h] [--config CONFIG] [options] [TRL options]" if trl else None
    parser = argparse.ArgumentParser(prog=prog, usage=usage, description=description or (cls.__doc__ or "").strip())
    parser.add_argument("--config", help="YAML recipe; flags given on the command line override its values")
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        if not _add_field(parser, f, hints[f.name], f.metadata.get("help", "")):
            raise TypeError(f"{cls.__name__}.{f.name}: no flag can express {hints[f.name]}")
    if trl is not None:
        group = parser.add_argument_group(
            "TRL options",
            f"any field of {trl.__module__.split('.')[0]}.{trl.__name__} not set above (also as a recipe key); "
            "overrides what the options above compute",
        )
        trl_hints = typing.get_type_hints(trl)
        for name, f in trl_options(cls, trl).items():  # a field no flag can express (a class) stays recipe-only
            _add_field(group, f, trl_hints[name], _first_sentence(f.metadata.get("help", "")))
    return parser


def _unknown(key: str, known: set[str]) -> str:
    name = key.replace("-", "_")
    if name in NOT_TRL_OPTIONS:
        return f"unknown option '{key}' ({NOT_TRL_OPTIONS[name]})"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"unknown option '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def _coerce(value: Any, tp: Any) -> Any:
    """A recipe's string for a numeric TRL field, converted as its flag would be: PyYAML reads `1e-4` as a string."""
    kw = _flag_kwargs(tp)
    if isinstance(value, str) and kw and kw.get("type") in (int, float):
        try:
            return kw["type"](value)
        except ValueError:
            return value
    return value


def parse_config(
    cls: type[T], argv: list[str] | None = None, prog: str | None = None, trl_cls: type | str | None = None
) -> T:
    """Parse `argv` into a `cls` instance: defaults < YAML recipe (--config) < command-line flags.

    With a TRL config class (`trl_cls`, or the dataclass's `trl_config_class`), that class's fields are options too;
    they land in `cfg.trl_overrides`. Unknown keys or flags exit 2 naming them (argparse's parser.error)."""
    parser = build_parser(cls, prog=prog, trl_cls=trl_cls)
    args = vars(parser.parse_args(argv))
    ours = {f.name for f in _cli_fields(cls)}
    trl = trl_options(cls, trl_cls)
    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    recipe = args.pop("config", None)
    if recipe:
        import yaml

        data = yaml.safe_load(Path(recipe).read_text()) or {}
        if not isinstance(data, dict):
            parser.error(f"{recipe}: expected a mapping of option: value")
        trl_hints = typing.get_type_hints(trl_config_class(cls, trl_cls)) if trl else {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name in ours:
                values[name] = value
            elif name in trl:
                overrides[name] = _coerce(value, trl_hints[name])
            else:
                parser.error(f"{recipe}: {_unknown(key, ours | set(trl))}")
    for name, value in args.items():
        (values if name in ours else overrides)[name] = value
    cfg = cls(**values)
    if overrides:
        cfg.trl_overrides = overrides
    return cfg


def config_record(cfg: Any) -> dict[str, Any]:
    """The resolved config as one flat mapping, TRL overrides included: a valid recipe for the same command."""
    record = dataclasses.asdict(cfg)
    record.update(record.pop("trl_overrides", None) or {})
    return record


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to the run's outputs: the record of what was actually run."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config_record(cfg), sort_keys=False))
