"""`python -m annotate COMMAND ...`: each command lives in its own module, imported only when it runs.

A command module exposes `add_arguments(parser)` and `main(args) -> int`; heavy imports stay inside `main`
so `--help` is instant, and the command list (`python -m annotate --help`) imports no command module at all. Bad
input raises SchemaError (naming file, line or row, and field) and a mistake on the command line UsageError
(naming the flag, annotate.errors): exit code 2. So does every other expected failure (see EXPECTED): a path that
is missing, a folder, under a file or not readable, text that is not valid Unicode, input nested too deeply. They
end as one `error: ...` line, never a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from annotate.errors import UsageError
from annotate.schema import SchemaError

# Failures that bad input or a bad path can cause (their messages name the path): exit 2, one line, no traceback.
EXPECTED = (
    SchemaError,  # includes annotate.store.StoreError
    UsageError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    UnicodeError,
)

# command -> (module, one-line help)
COMMANDS = {
    "import": ("annotate.importers", "import HH-RLHF, TRL preference data or a candidate pool into a store"),
    "export": ("annotate.export", "export a store as TRL preference data (Parquet or JSONL)"),
    "stats": ("annotate.stats", "counts by choice, annotator and source"),
    "compact": ("annotate.stats", "seal dead writers' votes, merge the table's small files, drop replaced ones"),
    "fsck": ("annotate.fsck", "check a store (torn tails, orphan segments, foreign files, duplicates); --repair"),
    "generate": ("rlhf.generate", "sample candidate responses from a model into a pool"),
    "add-user": ("annotate.users", "add or update an annotator in a users file"),
    "remove-user": ("annotate.users", "remove an annotator from a users file (ends their sessions)"),
    "audit": ("annotate.audit_cli", "agreement, position and length bias report"),
    "annotators": ("annotate.annotator_status", "the app's verdicts on annotators (qualified, paused...); --release"),
    "push": ("annotate.hub", "publish a store to the Hugging Face Hub as a dataset"),
}


def _entry_points(mod, name: str):
    """A module serving several commands names them `add_<cmd>_arguments`/`main_<cmd>`; else `add_arguments`/`main`."""
    key = name.replace("-", "_")
    if hasattr(mod, f"add_{key}_arguments"):
        return getattr(mod, f"add_{key}_arguments"), getattr(mod, f"main_{key}")
    return mod.add_arguments, mod.main


def build_parser() -> argparse.ArgumentParser:
    """The command list, for `--help` and a missing or unknown command. It imports no command module: `generate`
    lives in rlhf/ (it needs the training stack), and the list must not load it."""
    parser = argparse.ArgumentParser(prog="python -m annotate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv)  # --help prints the command list; a missing or unknown command exits 2
        parser.error("the command must come first")
    # Build only the requested command's parser, so one unfinished module cannot break the others.
    name = argv[0]
    module, help_text = COMMANDS[name]
    p = argparse.ArgumentParser(prog=f"python -m annotate {name}", description=help_text)
    add, run = _entry_points(importlib.import_module(module), name)
    add(p)
    args = p.parse_args(argv[1:])
    try:
        return int(run(args) or 0)
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RecursionError:
        # Readers name the line of JSON nested too deeply; this is the fallback for any other such input.
        print("error: the input is nested too deeply to process", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import os

    code = main()
    # Skip the interpreter's teardown, where Arrow's and deltalake's background threads can abort a finished command
    # ("terminate called without an active exception": apache/arrow#34314, delta-rs#2184). Files are closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
