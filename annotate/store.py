"""The comparison store: a directory of Parquet files plus per-writer write-ahead segments.

Layout of a store directory:
    part-*.parquet      sealed, immutable data (COMPARISON_SCHEMA)
    wal/seg-*.jsonl     one append-only JSON-lines segment per live (or crashed) writer
    .tmp/               files being written; renamed into place only once fsync'd

Why this shape: an fsync'd append to a private segment costs one small write, so a single process does
thousands of durable appends per second, and writers in different processes never touch the same file.
A writer rolls its segment into a Parquet part every `seal_every` records. A part names in its metadata
the files it replaces, so a crash between "new file renamed in" and "old files deleted" never shows a
record twice: readers skip replaced files. A kill -9 can leave only a torn last line in a segment, which
was never acknowledged (the fsync had not returned), and readers drop it.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from annotate.schema import COMPARISON_SCHEMA, SchemaError, check_comparison, comparisons_table

REPLACES_KEY = b"prefkit.replaces"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_json_line(rec: dict) -> bytes:
    def default(o):
        if isinstance(o, datetime):
            return o.isoformat()
        raise TypeError(f"cannot serialise {type(o).__name__}")

    return (json.dumps(rec, default=default, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _from_json_line(line: str) -> dict:
    rec = json.loads(line)
    rec["created_at"] = datetime.fromisoformat(rec["created_at"])
    return rec


def write_parquet_atomic(root: Path, table: pa.Table, name: str, replaces: Iterable[str] = ()) -> Path:
    """Write `table` as root/name so that the file appears whole or not at all (tmp, fsync, rename)."""
    tmp_dir = root / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[REPLACES_KEY] = json.dumps(sorted(replaces)).encode()
    table = table.replace_schema_metadata(meta)
    tmp = tmp_dir / f"{name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / name)
    _fsync_dir(root)
    return root / name


class ComparisonStore:
    """Append comparisons durably and read them back. Safe for many threads and many processes."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        seal_every: int = 1000,
        seal_idle_s: float | None = None,
        compact_over: int = 64,
    ):
        """`seal_every`: records per segment before it becomes a Parquet part. `seal_idle_s`: also seal once no
        append came for that long (a long-running app, so plain Parquet readers see votes within seconds), and
        then compact when more than `compact_over` parts pile up."""
        self.root = Path(root)
        self.seal_every = seal_every
        (self.root / "wal").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seg_fd: int | None = None
        self._seg_name: str | None = None
        self._seg_records: list[dict] = []
        self._last_append = 0.0
        self._stop = threading.Event()
        if seal_idle_s is not None:
            args = (seal_idle_s, compact_over)
            threading.Thread(target=self._seal_when_idle, args=args, daemon=True, name="store-sealer").start()

    def _seal_when_idle(self, idle_s: float, compact_over: int) -> None:
        while not self._stop.wait(min(1.0, idle_s)):
            with self._lock:
                if not self._seg_records or time.monotonic() - self._last_append < idle_s:
                    continue
                self._seal_locked()
            if len(list(self.root.glob("part-*.parquet"))) > compact_over:
                self.compact()

    # -- writing -------------------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        name = f"seg-{uuid.uuid4().hex}.jsonl"
        wal = self.root / "wal"
        # Created under a name compact() does not look at, locked, and only then renamed into place: a segment is
        # never visible unlocked, so a compaction cannot take a new segment for a dead writer's and fold it away.
        pending = wal / f".{name}.new"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        # The lock says "a live writer owns this segment"; compact() folds in only segments nobody holds.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(pending, wal / name)  # the lock belongs to the open file, so it survives the rename
        _fsync_dir(wal)
        self._seg_fd, self._seg_name, self._seg_records = fd, name, []

    @property
    def segment_name(self) -> str | None:
        """The write-ahead segment this writer appends to now (None before the first append)."""
        return self._seg_name

    def append(self, record: dict) -> str:
        """Validate and append one comparison; returns its id once it is on disk (fsync'd)."""
        return self.append_many([record])[0]

    def append_many(self, records: list[dict]) -> list[str]:
        """Append records with a single fsync (all are durable when this returns)."""
        for rec in records:
            check_comparison(rec)
        data = b"".join(_to_json_line(r) for r in records)
        with self._lock:
            if self._seg_fd is None:
                self._open_segment()
            os.write(self._seg_fd, data)
            os.fsync(self._seg_fd)
            self._seg_records.extend(records)
            self._last_append = time.monotonic()
            if len(self._seg_records) >= self.seal_every:
                self._seal_locked()
        return [r["comparison_id"] for r in records]

    def write_batch(self, records: list[dict], *, name_hint: str = "import") -> Path | None:
        """Write many records as one Parquet part, all or nothing (used by import)."""
        if not records:
            return None
        for i, rec in enumerate(records):
            try:
                check_comparison(rec)
            except SchemaError as e:
                raise SchemaError(f"record {i}: {e}") from None
        name = f"part-{name_hint}-{uuid.uuid4().hex}.parquet"
        return write_parquet_atomic(self.root, comparisons_table(records), name)

    def _seal_locked(self) -> None:
        if self._seg_fd is None:
            return
        if self._seg_records:
            seg_id = self._seg_name.removesuffix(".jsonl")
            write_parquet_atomic(
                self.root, comparisons_table(self._seg_records), f"part-{seg_id}.parquet", [f"wal/{self._seg_name}"]
            )
        os.close(self._seg_fd)
        # A concurrent compact() may already have removed it (it was listed as replaced by our new part).
        (self.root / "wal" / self._seg_name).unlink(missing_ok=True)
        self._seg_fd, self._seg_name, self._seg_records = None, None, []

    def close(self) -> None:
        """Seal the open segment into Parquet. Not needed for durability, only to keep the file count low."""
        self._stop.set()
        with self._lock:
            self._seal_locked()

    def __enter__(self) -> ComparisonStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------------------
    def read(self) -> pa.Table:
        return read_table(str(self.root))

    def to_pandas(self) -> pd.DataFrame:
        return self.read().to_pandas()

    def __len__(self) -> int:
        return self.read().num_rows

    # -- maintenance ---------------------------------------------------------------------------------------
    def compact(self) -> Path | None:
        """Merge every part and every orphaned segment into one Parquet file, atomically.

        Live writers keep appending to their own segments meanwhile; those are left alone.
        """
        lock_fd = os.open(self.root / ".compact.lock", os.O_WRONLY | os.O_CREAT, 0o644)
        orphan_fds: list[int] = []
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fs = fsspec.filesystem("file")
            locked = self._lock_orphan_segments(orphan_fds)
            # List parts only now: a writer renames its sealed part in before it releases its segment's lock, so
            # a segment we hold is either still current or already named as replaced by a part listed here.
            parts, segments, replaced = _live_files(fs, str(self.root))
            orphans = [s for s in locked if s in set(segments)]
            # Files already replaced but still on disk (a crash between rename and unlink). The new part must
            # name them too: once the part that replaced them is deleted, nothing else would hide them.
            stale = [r for r in sorted(replaced) if os.path.exists(r)]
            if len(parts) <= 1 and not orphans and not stale:
                return Path(parts[0]) if parts else None
            table = pa.concat_tables([_read_parts(fs, parts)] + [_read_segment(fs, s) for s in orphans])
            replaces = [os.path.relpath(p, self.root) for p in parts + orphans + stale]
            out = write_parquet_atomic(self.root, table, f"part-compact-{uuid.uuid4().hex}.parquet", replaces)
            for p in parts + orphans + stale:
                Path(p).unlink(missing_ok=True)
            _fsync_dir(self.root)
            _fsync_dir(self.root / "wal")
            cutoff = time.time() - 3600  # younger ones may belong to a live writer sealing right now
            for tmp in (self.root / ".tmp").glob("*.tmp"):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink(missing_ok=True)  # left by writers killed mid-write; never visible to readers
            return out
        finally:
            for fd in orphan_fds:
                os.close(fd)
            os.close(lock_fd)

    def _lock_orphan_segments(self, fds: list[int]) -> list[str]:
        """Lock every segment no live writer holds (their writers are dead); the fds go into `fds`."""
        locked = []
        for seg in sorted(fsspec.filesystem("file").glob(f"{self.root}/wal/seg-*.jsonl")):
            try:
                fd = os.open(seg, os.O_RDONLY)
            except FileNotFoundError:
                continue  # sealed by its writer meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live writer owns it
                continue
            fds.append(fd)
            locked.append(seg)
        return locked


def _live_files(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[str], list[str], set[str]]:
    """Parquet parts and WAL segments that hold current data (replaced ones filtered out)."""
    root = root.rstrip("/")
    # Segments before parts: a segment sealed in between is then found as a part (and its file is gone).
    segments = sorted(fs.glob(f"{root}/wal/seg-*.jsonl"))
    parts = sorted(p for p in fs.glob(f"{root}/part-*.parquet"))
    replaced: set[str] = set()
    for p in parts:
        with fs.open(p, "rb") as f:
            meta = pq.read_schema(f).metadata or {}
        replaced.update(f"{root}/{r}" for r in json.loads(meta.get(REPLACES_KEY, b"[]")))
    norm = {_strip_protocol(fs, r) for r in replaced}
    parts = [p for p in parts if _strip_protocol(fs, p) not in norm]
    segments = [s for s in segments if _strip_protocol(fs, s) not in norm]
    return parts, segments, norm


def _strip_protocol(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs._strip_protocol(path)


def _read_parts(fs: fsspec.AbstractFileSystem, parts: list[str]) -> pa.Table:
    if not parts:
        return COMPARISON_SCHEMA.empty_table()
    dataset = pads.dataset(parts, schema=COMPARISON_SCHEMA, format="parquet", filesystem=fs)
    return dataset.to_table().replace_schema_metadata(COMPARISON_SCHEMA.metadata)


def _read_segment(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    # The last element is "" after a complete final line; anything else is a torn, unacknowledged write.
    for i, line in enumerate(lines[:-1]):
        try:
            records.append(_from_json_line(line))
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise SchemaError(f"{path}: line {i + 1}: corrupt record ({e})") from None
    return comparisons_table(records)


def read_table(root: str) -> pa.Table:
    """Read every current comparison of a store: a local path or any fsspec URL (hf://, s3://, memory://)."""
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        raise FileNotFoundError(f"no store at {root}")
    for attempt in range(20):
        try:
            parts, segments, _ = _live_files(fs, path)
            tables = [_read_parts(fs, parts)] + [_read_segment(fs, s) for s in segments]
            return pa.concat_tables(tables)
        except FileNotFoundError:
            # A writer sealed or a compaction replaced files while we listed them: list again.
            if attempt == 19:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def effective_table(table: pa.Table) -> pa.Table:
    """Votes that stand, as Arrow (vectorised): retraction records and the votes they retract are both removed."""
    import pyarrow.compute as pc

    retracts = table.column("retracts")
    retracted = pc.unique(pc.drop_null(retracts))
    keep = pc.and_(pc.is_null(retracts), pc.invert(pc.is_in(table.column("comparison_id"), value_set=retracted)))
    return table.filter(keep)


def effective_votes(table: pa.Table) -> pd.DataFrame:
    """Votes that stand: retraction records and the votes they retract are both removed."""
    return effective_table(table).to_pandas()


class StoreTail:
    """The records that appear in a local store since the last `poll()`, read incrementally (several app processes
    on one store use it to see each other's votes).

    Per WAL segment it remembers the byte offset after the last complete line and reads only the bytes past it (a
    torn trailing line waits until its newline arrives). A Parquet part is read once: first only its
    `comparison_id` column, then only the row groups holding ids not returned before (a sealed segment or a
    compaction output holds records already returned). A file that vanishes before it is read was sealed or
    compacted; its records come back through the part that replaced it. No comparison_id is returned twice.
    Records come as dicts like a segment line: `created_at` a datetime, `criteria` a dict.

    A record is returned once it is in its segment file, which can be just before its writer's fsync returns.
    """

    def __init__(self, root: str | os.PathLike, *, from_now: bool = False):
        """`from_now`: what the store holds already counts as returned (for a caller that replayed the store)."""
        self.root = Path(root)
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}  # segment name -> bytes consumed (complete lines)
        self._parts: set[str] = set()  # part names already read
        self._ids: set[str] = set()  # comparison_ids returned (or skipped by from_now)
        if from_now:
            self.poll()

    def poll(self, skip: Iterable[str] = ()) -> list[dict]:
        """Records that appeared since the previous poll (all current ones on the first, unless from_now). `skip`:
        segment names not to read now (a caller's own live segment, whose records it has already)."""
        skip = set(skip)
        with self._lock:
            out: list[dict] = []
            # Segments before parts: a segment sealed after it was listed is found as a part.
            segments = sorted((self.root / "wal").glob("seg-*.jsonl"))
            self._offsets = {s.name: self._offsets.get(s.name, 0) for s in segments}
            for seg in segments:
                if seg.name not in skip:
                    out += self._read_segment(seg)
            parts = sorted(self.root.glob("part-*.parquet"))
            self._parts &= {p.name for p in parts}  # names are unique: a removed part never comes back
            for part in parts:
                if part.name not in self._parts:
                    out += self._read_part(part)
            return out

    def _new(self, rec: dict) -> bool:
        cid = rec["comparison_id"]
        if cid in self._ids:
            return False
        self._ids.add(cid)
        return True

    def _read_segment(self, path: Path) -> list[dict]:
        start = self._offsets[path.name]
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            del self._offsets[path.name]  # sealed meanwhile
            return []
        end = data.rfind(b"\n") + 1  # past the last complete line; what follows is torn (for now)
        records = []
        for k, line in enumerate(data[:end].decode("utf-8", errors="replace").split("\n")[:-1]):
            try:
                records.append(_from_json_line(line))
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise SchemaError(f"{path}: record {k + 1} after byte {start}: corrupt ({e})") from None
        self._offsets[path.name] = start + end
        return [r for r in records if self._new(r)]

    def _read_part(self, path: Path) -> list[dict]:
        try:
            f = open(path, "rb")  # once open, the file stays readable even if a compaction deletes it
        except FileNotFoundError:
            return []
        with f:
            pf = pq.ParquetFile(f)
            ids = pf.read(columns=["comparison_id"]).column(0).to_pylist()
            fresh = [k for k, cid in enumerate(ids) if cid not in self._ids]
            starts = [0]  # first row of each row group, then the row count
            for g in range(pf.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
            by_group: dict[int, list[int]] = {}
            for k in fresh:
                by_group.setdefault(bisect.bisect_right(starts, k) - 1, []).append(k)
            take, base = [], 0  # row positions within the row groups read
            for g in by_group:  # ascending: `fresh` is
                take += [base + k - starts[g] for k in by_group[g]]
                base += starts[g + 1] - starts[g]
            rows = pf.read_row_groups(list(by_group)).take(take).to_pylist() if by_group else []
        self._parts.add(path.name)
        out = []
        for rec in rows:
            rec["criteria"] = dict(rec.get("criteria") or [])
            if self._new(rec):
                out.append(rec)
        return out
