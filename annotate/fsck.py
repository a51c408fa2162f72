"""`python -m annotate fsck --store DIR [--repair]`: check a store; with --repair, fix what can be fixed safely.

Reports, each with its file:
- torn tails: bytes after a segment's last complete record (an append cut short by a kill; never acknowledged);
- corrupt lines: a complete segment line that is not a record (damage on disk);
- orphan segments: segments no live writer holds (their votes are read, but not yet in a table version);
- stale segments: segments already sealed (their transaction is in the table) that were not deleted;
- foreign files: files in the table folder that no table version lists (an export written into the store, a
  data file whose writer died before its commit): never read by any Delta reader;
- missing files: files the current version lists that are gone (readers fail: restore them from a backup);
- duplicate comparison ids across the sealed and unsealed records.

--repair seals orphan segments (dropping only torn tails, which were never acknowledged), deletes stale segments,
and moves foreign files and segments with corrupt lines into `_prefkit/quarantine/` (their readable records are
sealed first; nothing is deleted). Duplicates are reported, not removed: the table is append-only, and which copy
to keep is a decision for a person. Exit code 0: clean (after repair); 1: problems remain; 2: not a store.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections import Counter
from pathlib import Path

from annotate.schema import comparisons_table
from annotate.store import (
    META,
    Segment,
    _commit,
    _committed,
    _fsync_dir,
    _load,
    _seg_app_id,
    _store_lock,
    parse_segment,
    prepare,
    seal_orphans,
    snapshot,
    wal_dir,
)


def _ever_added(root: Path) -> set[str]:
    """Every data file any commit in the log added (relative paths): files of older versions are not foreign."""
    out: set[str] = set()
    for commit in sorted((root / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            if '"add"' in line:
                action = json.loads(line).get("add")
                if action:
                    out.add(action["path"])
    return out


def _segment_state(seg: Path) -> tuple[Segment, bool]:
    """(the segment parsed as every reader parses it, held by a live writer)."""
    parsed = parse_segment(seg.read_bytes())
    fd = os.open(seg, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        live = False
    except BlockingIOError:
        live = True
    finally:
        os.close(fd)
    return parsed, live


def check(root: str | os.PathLike) -> dict:
    """Everything fsck reports, as a dict of lists (empty lists: clean)."""
    root = prepare(root, create=False)
    dt = _load(root)
    report: dict[str, list] = {k: [] for k in ("torn", "corrupt", "orphans", "stale", "foreign", "missing", "dups")}
    for seg in sorted(wal_dir(root).glob("seg-*.jsonl")):
        try:
            parsed, live = _segment_state(seg)
        except FileNotFoundError:
            continue  # sealed meanwhile
        name = str(seg.relative_to(root))
        n = None if parsed.corrupt else len(parsed.records)
        if parsed.torn:
            report["torn"].append({"file": name, "bytes": parsed.torn, "live": live})
        if parsed.corrupt:
            report["corrupt"].append({"file": name, "line": parsed.corrupt[0][0]})
        if _committed(dt, _seg_app_id(seg.name)):
            report["stale"].append({"file": name})
        elif not live:
            report["orphans"].append({"file": name, "records": n})
    current = {os.path.relpath(p, root) for p in dt.file_uris()}
    known = current | _ever_added(root)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in ("_delta_log", META) and str(rel) not in known:
            report["foreign"].append({"file": str(rel)})
    report["missing"] = [{"file": f} for f in sorted(current) if not (root / f).exists()]
    if not report["missing"] and not report["corrupt"]:
        ids = snapshot(root, live=True)[0].column("comparison_id").to_pylist()
        report["dups"] = [{"comparison_id": c, "copies": k} for c, k in Counter(ids).items() if k > 1]
    report["version"] = dt.version()
    return report


def repair(root: str | os.PathLike) -> list[str]:
    """Fix what can be fixed without dropping an acknowledged record; returns what was done."""
    root = prepare(root, create=False)
    quarantine = root / META / "quarantine"
    done: list[str] = []
    before = check(root)
    for item in before["corrupt"]:
        seg = root / item["file"]
        if _segment_state(seg)[1]:
            done.append(f"left {item['file']} alone: its writer is alive")
            continue
        with _store_lock(root, exclusive=True):
            records = parse_segment(seg.read_bytes()).records  # corrupt lines and torn tail: in the quarantined copy
            if records and not _committed(_load(root), _seg_app_id(seg.name)):
                _commit(root, comparisons_table(records), [_seg_app_id(seg.name)])
            quarantine.mkdir(parents=True, exist_ok=True)
            os.rename(seg, quarantine / seg.name)
            _fsync_dir(seg.parent)
        done.append(f"sealed {len(records)} readable records of {item['file']}; the file is in {quarantine.name}/")
    sealed = seal_orphans(root)  # also deletes stale segments
    if before["orphans"] or before["stale"]:
        done.append(f"sealed {sealed} records of {len(before['orphans'])} orphan segments; "
                    f"deleted {len(before['stale'])} stale segments")  # fmt: skip
    for item in before["foreign"]:
        dest = quarantine / item["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(root / item["file"], dest)
        done.append(f"moved foreign file {item['file']} to {dest.relative_to(root)}")
    return done


def _print(report: dict) -> int:
    problems = 0
    labels = {
        "torn": "torn tail (never acknowledged)",
        "corrupt": "corrupt line",
        "orphans": "orphan segment (dead writer; not yet sealed)",
        "stale": "stale segment (already sealed, not deleted)",
        "foreign": "foreign file (no table version lists it; never read)",
        "missing": "MISSING data file of the current version",
        "dups": "duplicate comparison_id",
    }
    for key, label in labels.items():
        for item in report[key]:
            if key == "torn" and item["live"]:
                print(f"  note: {item['file']}: {item['bytes']} bytes in flight (its writer is alive)")
                continue
            problems += 1
            detail = ", ".join(f"{k} {v}" for k, v in item.items() if k != "file" and k != "live")
            print(f"  {label}: {item.get('file', '')} {detail}".rstrip())
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, type=Path, help="store directory")
    parser.add_argument("--repair", action="store_true", help="fix what can be fixed without losing a record")


def main(args: argparse.Namespace) -> int:
    report = check(args.store)
    print(f"{args.store}: table version {report['version']}")
    problems = _print(report)
    if args.repair and problems:
        for line in repair(args.store):
            print(f"  repaired: {line}")
        report = check(args.store)
        print("after repair:")
        problems = _print(report)
    print("clean" if not problems else f"{problems} problem(s)", file=sys.stderr)
    return 0 if not problems else 1
