"""Typed command configs filled from a YAML recipe and CLI flags (flags win), in the spirit of TRL's TrlParser.

A config is a dataclass whose fields carry `metadata={"help": ...}`; `parse_config(Cls, argv)` turns each
field into `--field-name`, reads `--config recipe.yaml` first, and returns a `Cls`. A command that trains with a TRL
trainer names its TRL config class (`trl_config_class = "trl.DPOConfig"` on the dataclass): every field of that
class our dataclass does not declare is then also an option (a recipe key, and a flag under "TRL options"), kept in
`cfg.trl_overrides` and applied last when the TRL config is built (`rlhf.common.trl_args`). Any other key or flag is
an error naming it (exit 2), so a typo, or a field TRL renamed, never silently falls back to a default.

TRL's fields are read from `trl_options.json` (next to this file) when the installed TRL and transformers are the
versions it lists: importing a TRL config class imports torch and transformers, seconds that `--help` and a mistake
on the command line should not wait for. `python -m rlhf.config` rewrites the file from the installed classes, and
tests/test_train_cli.py checks that it matches them; with other versions installed the classes are read live.
Every parser error is one `error: ...` line (exit 2), as every other mistake `rlhf/train.py` reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import importlib
import json
import os
import sys
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

# TRL fields that are no option of ours, with where to go instead: the Trainer ignores resume_from_checkpoint (only
# TRL's scripts read it), so as a TRL option it would be a silent no-op.
NOT_TRL_OPTIONS = {"resume_from_checkpoint": "use --resume"}
TRL_OPTIONS_FILE = Path(__file__).with_name("trl_options.json")  # TRL's fields, listed (see the docstring)
PINNED = ("trl", "transformers")  # the packages whose versions decide those fields (pyproject.toml pins both)


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


def _flag_spec(tp: Any) -> dict[str, Any] | None:
    """How a field of type `tp` is read from a string, as JSON (trl_options.json keeps it): argparse's keywords, with
    `type` naming a converter of CONVERTERS (a list: the first that accepts the string). None when no command-line
    string can express the type."""
    tp, _ = _base_type(tp)
    if isinstance(tp, tuple):  # a union: TRL's `SchedulerType | str`, `dict | str`, `int | str`, `str | bool` ...
        if any(t is dict or typing.get_origin(t) is dict for t in tp):
            return {"type": "json_or_str", "metavar": "JSON|STR"}
        return {"type": [t.__name__ for t in (bool, int, float) if t in tp] or "str"}
    if tp is bool:
        return {"type": "bool", "nargs": "?", "const": True, "metavar": "BOOL"}
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (str,)
        return {"type": inner.__name__, "nargs": "+"} if inner in (str, int, float) else None
    if tp is dict or typing.get_origin(tp) is dict:
        return {"type": "json", "metavar": "JSON"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "str", "choices": [e.value for e in tp]}
    if typing.get_origin(tp) is typing.Literal:
        return {"type": "str", "choices": [str(a) for a in typing.get_args(tp)]}
    return {"type": tp.__name__} if tp in (str, int, float) else None


CONVERTERS = {
    "str": str, "int": int, "float": float, "bool": _str2bool, "json": json.loads, "json_or_str": _json_or_str
}  # fmt: skip


def _converter(spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    return _first_of(*(CONVERTERS[k] for k in kind)) if isinstance(kind, list) else CONVERTERS[kind]


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    """Fields a recipe or flag may set (`metadata={"cli": False}` marks one the parser fills itself)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _option(f: dataclasses.Field, tp: Any, help_text: str) -> dict[str, Any]:
    """A field as an option: {"flag": its _flag_spec (None: a recipe key only), "help": what --help shows}."""
    spec = _flag_spec(tp)
    if spec is not None and f.metadata.get("choices"):
        spec["choices"] = list(f.metadata["choices"])
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, enum.Enum):
        default = default.value
    if default not in (None, "", [], {}) and help_text:
        help_text += f" (default: {default})"
    return {"flag": spec, "help": help_text}


def _first_sentence(text: str, limit: int = 110) -> str:
    """TRL's help texts run to paragraphs: the first sentence keeps --help readable."""
    text = " ".join(text.split()).split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def trl_config_class(cls: type, trl_cls: type | str | None = None) -> type | None:
    """The TRL config class behind a command config: given, or named by the dataclass (`trl_config_class`)."""
    spec = trl_cls or getattr(cls, "trl_config_class", None)
    if isinstance(spec, str):  # "trl.DPOConfig": imported only now, so importing a command module stays light
        module, name = spec.rsplit(".", 1)
        spec = getattr(importlib.import_module(module), name)
    return spec


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _listed() -> dict[str, dict[str, dict[str, Any]]]:
    """trl_options.json's classes when it was written from the installed TRL and transformers, else {} (read them
    live). Also when TRL is not installed: --help then lists its options, and a run says what to install."""
    if not TRL_OPTIONS_FILE.exists():
        return {}
    listing = json.loads(TRL_OPTIONS_FILE.read_text())
    if any(_installed(p) not in (None, v) for p, v in listing["versions"].items()):
        return {}
    return listing["classes"]


def trl_class_options(trl_cls: type | str) -> dict[str, dict[str, Any]]:
    """Every init field of a TRL config class ("trl.DPOConfig", or the class) as an option (see _option)."""
    if isinstance(trl_cls, str) and trl_cls in _listed():
        return _listed()[trl_cls]
    trl_cls = trl_config_class(object, trl_cls)
    hints = typing.get_type_hints(trl_cls)
    return {f.name: _option(f, hints[f.name], _first_sentence(f.metadata.get("help", "")))
            for f in dataclasses.fields(trl_cls) if f.init and f.name[0] != "_"}  # fmt: skip


def trl_options(cls: type, trl_cls: type | str | None = None) -> dict[str, dict[str, Any]]:
    """Options from the command's TRL config class that a recipe or flag may set: every init field our dataclass
    does not declare itself (ours win: `--max-length` is our option, translated by trl_args)."""
    spec = trl_cls or getattr(cls, "trl_config_class", None)
    if spec is None:
        return {}
    skip = {f.name for f in dataclasses.fields(cls)} | set(NOT_TRL_OPTIONS)
    return {name: o for name, o in trl_class_options(spec).items() if name not in skip}


def write_trl_options(classes: list[str] | None = None) -> Path:
    """Rewrite trl_options.json from the installed TRL (`python -m rlhf.config`): the TRL config class of every
    command of rlhf/train.py, or `classes`."""
    if classes is None:
        from rlhf.train import COMMANDS

        names = [getattr(c, "trl_config_class", None) for module, _ in COMMANDS.values()
                 for c in vars(importlib.import_module(module)).values() if dataclasses.is_dataclass(c)]  # fmt: skip
        classes = sorted({n for n in names if isinstance(n, str)})
    listing = {"versions": {p: _installed(p) for p in PINNED},
               "classes": {name: trl_class_options(trl_config_class(object, name)) for name in classes}}  # fmt: skip
    TRL_OPTIONS_FILE.write_text(json.dumps(listing, indent=1) + "\n")
    return TRL_OPTIONS_FILE


def recipe_keys(cls: type, trl_cls: type | str | None = None) -> set[str]:
    """Every key a recipe for this command may hold: our options and its TRL config class's (see trl_options)."""
    return {f.name for f in _cli_fields(cls)} | set(trl_options(cls, trl_cls))


def _add_option(parser: Any, name: str, option: dict[str, Any]) -> bool:
    """Add `--name`; False when no command-line string can express the type (a recipe can still set it)."""
    if option["flag"] is None:
        return False
    kw = {**option["flag"], "type": _converter(option["flag"])}
    # argparse %-formats help texts: a literal "%" ("~30% speed") must be doubled.
    kw.update(dest=name, default=argparse.SUPPRESS, help=option["help"].replace("%", "%%"))
    parser.add_argument("--" + name.replace("_", "-"), **kw)
    return True


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one `error: ...` line (exit 2) naming the flag, as every other mistake of
    rlhf/train.py is: not argparse's usage block, which for a TRL command would list a hundred flags."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(
    cls: type, prog: str | None = None, description: str | None = None, trl_cls: type | str | None = None
) -> argparse.ArgumentParser:
    """A parser with one `--field-name` per field of `cls`, then one per TRL option in a "TRL options" group."""
    trl = trl_cls or getattr(cls, "trl_config_class", None)
    # With a hundred-odd TRL flags argparse's usage line would fill a screen: name the groups instead.
    usage = f"{prog or '%(prog)s'} [-h] [--config CONFIG] [options] [TRL options]" if trl else None
    description = description or (cls.__doc__ or "").strip()
    parser = OneLineParser(prog=prog, usage=usage, description=description)
    parser.add_argument("--config", help="YAML recipe; flags given on the command line override its values")
    hints = typing.get_type_hints(cls)
    for f in _cli_fields(cls):
        if not _add_option(parser, f.name, _option(f, hints[f.name], f.metadata.get("help", ""))):
            raise TypeError(f"{cls.__name__}.{f.name}: no flag can express {hints[f.name]}")
    if trl is not None:
        name = trl if isinstance(trl, str) else f"{trl.__module__.split('.')[0]}.{trl.__name__}"
        group = parser.add_argument_group(
            "TRL options",
            f"any field of {name} not set above (also as a recipe key); overrides what the options above compute",
        )
        for key, option in trl_options(cls, trl).items():  # a field no flag can express (a class) stays recipe-only
            _add_option(group, key, option)
    return parser


def _unknown(key: str, known: set[str]) -> str:
    name = key.replace("-", "_")
    if name in NOT_TRL_OPTIONS:
        return f"unknown option '{key}' ({NOT_TRL_OPTIONS[name]})"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"unknown option '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def _recipe_value(key: str, value: Any, option: dict[str, Any]) -> Any:
    """A recipe's value checked as its flag would be: a string converted by the flag's type (PyYAML reads `1e-4` as
    a string), a number, a boolean or a choice of the wrong kind refused with a ValueError naming the key. Types no
    flag checks (JSON, lists, unions) pass as given."""
    spec = option["flag"]
    if value is None or spec is None or isinstance(spec["type"], list) or spec.get("nargs") == "+":
        return value
    kind = spec["type"]
    wrong = f"{key}: expected {'an' if kind == 'int' else 'a'} {kind}, got {value!r}"
    if isinstance(value, str) and kind in ("int", "float", "bool"):
        try:
            value = _converter(spec)(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise ValueError(wrong) from None
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "bool": lambda v: isinstance(v, bool),
          "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
    if kind in ok and not ok[kind](value):
        raise ValueError(wrong)
    if spec.get("choices") and value not in spec["choices"]:
        raise ValueError(f"{key}: expected one of {', '.join(map(str, spec['choices']))}, got {value!r}")
    return float(value) if kind == "float" else value


def _read_recipe(parser: argparse.ArgumentParser, recipe: str) -> dict[str, Any]:
    """The recipe's mapping; a missing, unreadable or malformed file is a parser error naming it (exit 2)."""
    import yaml

    path = Path(recipe)
    if not path.is_file():
        parser.error(f"--config {recipe}: {'not a file' if path.exists() else 'no such file'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeError) as e:
        parser.error(f"--config {recipe}: cannot read it ({e.__class__.__name__}: {e})")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        parser.error(f"--config {recipe}: not valid YAML{at} ({getattr(e, 'problem', None) or e})")
    if not isinstance(data, dict):
        parser.error(f"{recipe}: expected a mapping of option: value")
    return data


def parse_config(
    cls: type[T], argv: list[str] | None = None, prog: str | None = None, trl_cls: type | str | None = None
) -> T:
    """Parse `argv` into a `cls` instance: defaults < YAML recipe (--config) < command-line flags.

    With a TRL config class (`trl_cls`, or the dataclass's `trl_config_class`), that class's fields are options too;
    they land in `cfg.trl_overrides`. Unknown keys or flags, a missing recipe and a value of the wrong type exit 2
    naming them (OneLineParser.error)."""
    parser = build_parser(cls, prog=prog, trl_cls=trl_cls)
    args = vars(parser.parse_args(argv))
    hints = typing.get_type_hints(cls)
    ours = {f.name: _option(f, hints[f.name], "") for f in _cli_fields(cls)}
    trl = trl_options(cls, trl_cls)
    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    recipe = args.pop("config", None)
    if recipe:
        for key, value in _read_recipe(parser, recipe).items():
            name = key.replace("-", "_")
            if name not in ours and name not in trl:
                parser.error(f"{recipe}: {_unknown(key, set(ours) | set(trl))}")
            try:
                value = _recipe_value(key, value, ours.get(name) or trl[name])
            except ValueError as e:
                parser.error(f"{recipe}: {e}")
            (values if name in ours else overrides)[name] = value
    for name, value in args.items():
        (values if name in ours else overrides)[name] = value
    cfg = cls(**values)
    if overrides:
        cfg.trl_overrides = overrides
    _cap_for_tests(cfg)
    return cfg


# Test hook, never needed by a user: tests/test_readme.py runs every README command exactly as written, and
# PREFKIT_TEST_MAX_STEPS=N bounds each run's work (optimizer steps and prompt counts, never data or model) so the whole
# session fits in a test. Applied here, where every command's `*Args` is parsed, so no command can escape it.
TEST_MAX_STEPS_ENV = "PREFKIT_TEST_MAX_STEPS"
# field -> multiple of N: distill holds --eval-prompts out of --max-prompts, so that one needs more than N
_CAPPED_FIELDS = {"max_steps": 1, "num_prompts": 1, "eval_prompts": 1, "reward_norm_prompts": 1, "speed_prompts": 1,
                  "max_prompts": 2}  # fmt: skip


def _cap_for_tests(cfg: Any) -> None:
    cap = os.environ.get(TEST_MAX_STEPS_ENV)
    if not cap:
        return
    n = int(cap)
    for name, factor in _CAPPED_FIELDS.items():
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(cfg, name, n * factor if value < 0 else min(value, n * factor))  # -1 (= epochs) would be unbounded


def config_record(cfg: Any) -> dict[str, Any]:
    """The resolved config as one flat mapping, TRL overrides included: a valid recipe for the same command."""
    record = dataclasses.asdict(cfg)
    record.update(record.pop("trl_overrides", None) or {})
    return record


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to the run's outputs: the record of what was actually run."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config_record(cfg), sort_keys=False))


if __name__ == "__main__":
    print(f"wrote {write_trl_options()}")
