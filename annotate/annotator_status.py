"""Whose votes train: the app's verdicts on annotators (annotate.qualify) and the filter that applies them.

The app appends each verdict to `STORE/_prefkit/annotators.jsonl`, one JSON event per line (at, annotator, status,
reason, by), with fsync. Export, `push` and training straight from a store read the log here, with no Gradio and
no sampler, and leave out by default every vote of an annotator who failed qualification or is paused, and the
qualification votes (session `qualify:...`) of annotators who have not passed.
`python -m annotate annotators --store DIR` lists the verdicts, and `--release NAME` releases a held annotator as the
Dashboard does (a running app reads the log before each request that asks about an annotator, so it applies the
release at once).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

STATUS_FILE = "annotators.jsonl"  # under STORE/_prefkit/
QUALIFY_PREFIX = "qualify:"  # the session of a qualification vote
HELD = ("failed", "paused")  # statuses whose votes export leaves out
PASSED = ("qualified", "released")  # statuses under which qualification votes count


def status_path(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / "_prefkit" / STATUS_FILE


def read_events(store_root: str | os.PathLike) -> list[dict]:
    """The status log's events, oldest first (none when there is no log; a torn or damaged line is skipped)."""
    path = status_path(store_root)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    return parse_events(data[: data.rfind(b"\n") + 1])


def parse_events(data: bytes) -> list[dict]:
    out = []
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and isinstance(ev.get("annotator"), str) and isinstance(ev.get("status"), str):
            out.append(ev)
    return out


def new_event(annotator: str, status: str, reason: str, by: str = "", at: datetime | None = None) -> dict:
    """One status-log event (a fresh id; `at` defaults to now, UTC)."""
    at = at or datetime.now(UTC)
    return {"id": os.urandom(8).hex(), "at": at.isoformat(), "annotator": annotator, "status": status,
            "reason": reason, "by": by}  # fmt: skip


def append_event(path: Path, ev: dict) -> int:
    """Append `ev` to the status log at `path` durably; returns the bytes written.

    One O_APPEND write, so lines of several processes (app replicas, this module's CLI) never mix; fsync'd, since
    export relies on a verdict the way it relies on a vote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(ev, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(line)


def annotator_status(store_root: str | os.PathLike, as_of: datetime | None = None) -> dict[str, str]:
    """Each annotator's latest status in the log (annotators never checked are absent); with `as_of`, as it stood
    then (events whose time cannot be read are left out: they cannot be placed before or after)."""
    events = read_events(store_root)
    if as_of is not None:
        events = [ev for ev in events if (at := _time(ev.get("at"))) is not None and at <= as_of]
    return {ev["annotator"]: ev["status"] for ev in events}


def _time(text: object) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def held_out(table: pa.Table, status: dict[str, str]) -> tuple[pa.Table, int]:
    """`table` without the votes that must not train: every vote of an annotator who failed qualification or is
    paused, and the qualification votes of annotators who have not passed. Returns (kept, how many dropped)."""
    if not status or table.num_rows == 0:
        return table, 0
    held = [a for a, s in status.items() if s in HELD]
    passed = [a for a, s in status.items() if s in PASSED]
    annotator = table.column("annotator")
    qualifying = pc.and_(
        pc.starts_with(pc.fill_null(table.column("session"), ""), QUALIFY_PREFIX),
        pc.invert(pc.is_in(annotator, value_set=pa.array(passed, pa.string()))),
    )
    drop = pc.or_(pc.is_in(annotator, value_set=pa.array(held, pa.string())), qualifying)
    n = int(pc.sum(drop).as_py() or 0)
    return (table.filter(pc.invert(drop)), n) if n else (table, 0)


def trainable_votes(votes: pa.Table, store: str | os.PathLike) -> tuple[pa.Table, int]:
    """`votes` (annotate.export.usable_votes of the store `store`, a path or DIR@VERSION) without those the app's
    checks hold: the one filter export, push and training from a store share. Returns (kept, how many dropped).

    A store named without a version takes today's verdicts. DIR@VERSION takes the verdicts as they stood when that
    version was committed, so a pinned export or training run gives the same rows however the verdicts change later
    (a release or a new pause applies from the next version on)."""
    from annotate.store import parse_store_spec, version_time

    root, version = parse_store_spec(str(store))
    # A remote store (a URL) has no status log here: the app writes it beside a local store only.
    as_of = version_time(root, version) if version is not None and "://" not in root else None
    return held_out(votes, annotator_status(root, as_of))


def summary_line(status: dict[str, str]) -> str | None:
    """One line naming held annotators for the CLI (None when nobody is held)."""
    held = sorted(a for a, s in status.items() if s in HELD)
    if not held:
        return None
    return f"annotators held (failed qualification or paused; their votes are left out of export): {', '.join(held)}"


# -- `python -m annotate annotators --store DIR [--release NAME]` -----------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="store directory the app writes (its _prefkit/annotators.jsonl)")
    p.add_argument("--release", metavar="NAME", help="let a failed or paused annotator's votes count again (as the "
                   "Dashboard's release does; a running app applies it at its next request)")  # fmt: skip
    p.add_argument("--by", default="", help="who releases (recorded in the log; default: the CLI)")


def main(args: argparse.Namespace) -> int:
    """Each checked annotator's latest status (held ones first), or with --release one release."""
    from annotate.errors import UsageError

    root = Path(args.store)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such store (a folder the app writes)")
    latest: dict[str, dict] = {}
    for ev in read_events(root):
        latest[ev["annotator"]] = ev
    if args.release is not None:
        name = args.release
        ev = latest.get(name)
        if ev is None or ev["status"] not in HELD:
            have = "no verdict" if ev is None else f"status {ev['status']}"
            raise UsageError(f"--release: {name!r} is not held ({have} in {status_path(root)}); nothing changed. "
                             "Only a failed or paused annotator is released here; the Dashboard also vouches "
                             "for one still qualifying")  # fmt: skip
        by = args.by or "the CLI"
        append_event(status_path(root), new_event(name, "released", f"released by {by} (was {ev['status']})", by))
        print(f"released {_printable(name)} (was {ev['status']}): their votes count again; a running app applies it "
              "at once")  # fmt: skip
        return 0
    if not latest:
        print(f"no verdicts in {status_path(root)} (the app writes them under --qualify or --live-checks)")
        return 0
    for ev in sorted(latest.values(), key=lambda e: (e["status"] not in HELD, e["annotator"])):
        # Names and reasons are untrusted text: control characters are escaped, never sent to the terminal.
        print("\t".join(_printable(ev.get(k)) for k in ("annotator", "status", "at", "reason")))
    return 0


def _printable(x: object) -> str:
    return json.dumps("" if x is None else str(x), ensure_ascii=False)[1:-1]
