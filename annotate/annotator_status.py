"""Whose votes train: the app's verdicts on annotators (annotate.qualify) and the filter that applies them.

The app appends each verdict to `STORE/_prefkit/annotators.jsonl`, one JSON event per line (at, annotator, status,
reason, by), with fsync. Export, `push` and training straight from a store read the log here, with no Gradio and
no sampler, and leave out by default every vote of an annotator who failed qualification or is paused, and the
qualification votes (session `qualify:...`) of annotators who have not passed.
"""

from __future__ import annotations

import json
import os
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


def annotator_status(store_root: str | os.PathLike) -> dict[str, str]:
    """Each annotator's latest status in the log (annotators never checked are absent)."""
    return {ev["annotator"]: ev["status"] for ev in read_events(store_root)}


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
    The log is read as it is now, also for an older DIR@VERSION (verdicts are not versioned)."""
    from annotate.store import parse_store_spec

    return held_out(votes, annotator_status(parse_store_spec(str(store))[0]))


def summary_line(status: dict[str, str]) -> str | None:
    """One line naming held annotators for the CLI (None when nobody is held)."""
    held = sorted(a for a, s in status.items() if s in HELD)
    if not held:
        return None
    return f"annotators held (failed qualification or paused; their votes are left out of export): {', '.join(held)}"
