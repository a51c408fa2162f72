"""The comparison store: a Delta Lake table of sealed votes, fed by per-writer write-ahead segments.

Layout of a store folder:
    _delta_log/                 the Delta transaction log: which Parquet files hold the sealed votes, per version
    part-*.parquet              the Delta table's data files (written by deltalake; never edited)
    _prefkit/wal/seg-*.jsonl    one append-only, fsync'd JSON-lines segment per live (or crashed) writer
    _prefkit/pool/              candidate pools imported into the store
    _prefkit/serves/            what each app replica has served (annotate.replicas)
    _prefkit/lock               the store-wide lock (see "Locks" below)
    _prefkit/legacy/            the files of a store in the old format, kept after its migration

Why this shape. A vote must be durable when the app acknowledges it, at thousands per second: one small append
plus fsync to a file only this writer touches does that (a Delta commit per vote managed ~20/s here). Sealed data
must be readable by every engine, transactionally: a writer seals its segment as one Delta commit, so DuckDB,
Polars, Spark, pandas (through deltalake) see exactly the sealed votes, at any version, and never a half-written
file. Everything prefkit keeps beside the table lives under `_prefkit/`: engines and `VACUUM` skip folders whose
names begin with an underscore.

Exactly once. A segment is sealed in one commit that also records a Delta app transaction
(`appId = prefkit-wal:<segment name>`). The segment is deleted only after that commit. Whatever instant a
writer is killed at, either the commit did not happen (the segment is still there and is sealed later by
whoever folds orphans) or it did (its transaction marks the segment as sealed: readers skip it and the next fold
only deletes it). A segment is never read twice and never lost.

Segments and their writers. A writer creates its segment under a hidden name, locks it (flock), then renames it
into place: a segment is never visible unlocked while its writer lives. The lock belongs to the open file, so it
lasts exactly as long as the writer process: an unlocked segment belongs to a dead writer (an orphan), and
`seal_orphans` (run by `compact`, by an app at start, by export and training before they read) seals it.

Torn writes. Every write's byte count is checked; on a short write or an error (a full disk, a file size limit)
the segment is cut back to its last complete record and the append raises StoreWriteError: the vote is reported
as not saved and the segment stays clean for the next append. A kill -9 mid-write can leave a torn last line:
it was never acknowledged (the fsync had not returned) and readers drop it.

Locks. `_prefkit/lock` is taken shared by a writer's seal and exclusively by what must see the table still:
folding orphans, imports (read ids, then write the new ones), migration and repair.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from annotate.schema import COMPARISON_SCHEMA, SchemaError, check_comparison, check_table_schema, comparisons_table

META = "_prefkit"
LEGACY_REPLACES_KEY = b"prefkit.replaces"  # the old format's "this part replaces those files"
MIGRATE_APP_ID = "prefkit-migrate-legacy"
SEG_APP_PREFIX = "prefkit-wal:"
# Delta table properties. Data files a compaction replaced stay 30 days, so any version of the last 30 days can be
# read again exactly (`DIR@VERSION`); the log itself is kept ten years. appendOnly: votes are never updated or
# deleted in place (an undo is a new record), and Delta then refuses any engine's attempt to.
TABLE_CONFIG = {
    "delta.appendOnly": "true",
    "delta.deletedFileRetentionDuration": "interval 30 days",
    "delta.logRetentionDuration": "interval 3650 days",
}


class StoreError(SchemaError):
    """A path is not a store, or a store cannot be read or written as asked (exit code 2)."""


class StoreWriteError(OSError):
    """An append did not reach the disk whole (full disk, file size limit, I/O error): nothing of it was kept."""


# -- paths ---------------------------------------------------------------------------------------------------------
def wal_dir(root: str | os.PathLike) -> Path:
    return Path(root) / META / "wal"


def pool_dir(root: str | os.PathLike) -> Path:
    """Where `import --format pool` keeps the pools of a store."""
    return Path(root) / META / "pool"


def serves_dir(root: str | os.PathLike) -> Path:
    return Path(root) / META / "serves"


def _is_legacy(root: Path) -> bool:
    """A store of the previous format (Parquet parts + wal/ beside them, no Delta log), or one half migrated."""
    if (root / "_delta_log").is_dir():
        return (root / META / "legacy").is_dir() and not (root / META / "legacy" / "MIGRATED").exists()
    return (root / "wal").is_dir() or (root / META / "legacy").is_dir()


def is_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a comparison store folder (current or previous format)."""
    p = Path(path)
    return p.is_dir() and ((p / "_delta_log").is_dir() or _is_legacy(p))


def store_containing(path: str | os.PathLike) -> Path | None:
    """The store folder that `path` is, or lies inside; None when it is in no store."""
    p = Path(path).absolute()
    for cand in [p, *p.parents]:
        if is_store(cand):
            return cand
    return None


def parse_store_spec(spec: str | os.PathLike) -> tuple[str, int | None]:
    """'DIR' -> (DIR, None); 'DIR@7' -> (DIR, 7): read exactly table version 7."""
    text = str(spec)
    head, sep, tail = text.rpartition("@")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return text, None


# -- small helpers -------------------------------------------------------------------------------------------------
def _warn(message: str) -> None:
    # Said on stderr like the importers' warnings: the store is used from command lines and from the app's log.
    print(f"warning: {message}", file=sys.stderr, flush=True)


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


def _from_json_line(line: bytes | str) -> dict:
    rec = json.loads(line)
    rec["created_at"] = datetime.fromisoformat(rec["created_at"])
    return rec


def write_parquet_atomic(root: Path, table: pa.Table, name: str) -> Path:
    """Write `table` as root/name so that the file appears whole or not at all (tmp, fsync, rename)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / name)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(root)
    return root / name


@contextmanager
def _store_lock(root: Path, exclusive: bool) -> Iterator[None]:
    (root / META).mkdir(parents=True, exist_ok=True)
    fd = os.open(root / META / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- segments ------------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    """A write-ahead segment as parsed: its complete records, its corrupt complete lines, its torn tail."""

    records: list[dict]
    corrupt: list[tuple[int, str]]  # (physical line number, why)
    torn: int  # bytes after the last newline: a record whose write never finished, never acknowledged


def parse_segment(data: bytes) -> Segment:
    """The one parser of segment bytes, shared by readers, sealing and fsck so they agree on every line."""
    end = data.rfind(b"\n") + 1
    records, corrupt = [], []
    for n, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            records.append(_from_json_line(line))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            corrupt.append((n, str(e)))
    return Segment(records, corrupt, len(data) - end)


def read_segment(path: str | os.PathLike, *, strict: bool = False) -> tuple[list[dict], int]:
    """The complete records of a segment and the size of its torn tail in bytes (0 when it ends cleanly).

    Only the tail can be torn: a writer cuts every failed append back, so a record after a torn one never exists.
    A corrupt complete line (damage on disk) is skipped with a warning, so one bad line never makes the store
    unreadable; `strict` raises StoreError naming it instead. `fsck --repair` sets such a segment aside.
    """
    seg = parse_segment(Path(path).read_bytes())
    for n, why in seg.corrupt:
        message = f"{path}: line {n}: corrupt record ({why})"
        if strict:
            raise StoreError(message)
        _warn(f"{message}; skipped. Run `python -m annotate fsck --store STORE --repair`")
    return seg.records, seg.torn


def _seg_app_id(name: str) -> str:
    return SEG_APP_PREFIX + name


# -- the Delta table -----------------------------------------------------------------------------------------------
def _delta():
    import deltalake

    return deltalake


def _load(root: Path | str, version: int | None = None):
    dl = _delta()
    try:
        dt = dl.DeltaTable(str(root), version=version)
    except dl.exceptions.TableNotFoundError:
        raise StoreError(f"{root}: not a comparison store (no Delta table)") from None
    except Exception as e:  # deltalake raises plain errors for a version that does not exist
        if version is not None:
            latest = dl.DeltaTable(str(root)).version()
            raise StoreError(f"{root}: cannot read version {version} (versions 0-{latest} exist; {e})") from None
        raise
    return dt


def _check_table(root: Path, dt) -> None:
    proto = dt.protocol()
    # The data files the log lists are the rows only without deletion vectors or column mapping; prefkit writes
    # neither, and a table another engine upgraded to them is refused rather than misread.
    if proto.reader_features:
        raise StoreError(f"{root}: the table uses Delta reader features {proto.reader_features}, not supported")
    got = pa.schema(dt.schema())
    try:
        check_table_schema(got, COMPARISON_SCHEMA, str(root))
    except SchemaError as e:
        raise StoreError(f"{e} (not a comparison store)") from None


def _sealed(dt) -> pa.Table:
    """The rows of one table version. The data files are read with plain pyarrow: deltalake's own scanner, run
    through a Python file-system handler, can abort the interpreter at exit (delta-rs #2184)."""
    files = dt.file_uris()
    if not files:
        return COMPARISON_SCHEMA.empty_table()
    try:
        table = pads.dataset(files, format="parquet", schema=COMPARISON_SCHEMA).to_table()
    except FileNotFoundError as e:
        raise StoreError(f"{dt.table_uri}: version {dt.version()} refers to a file that is gone ({e})") from None
    return table.replace_schema_metadata(COMPARISON_SCHEMA.metadata)


def _commit(root: Path, table: pa.Table, app_ids: Iterable[str] = ()) -> None:
    dl = _delta()
    txns = [dl.Transaction(app_id=a, version=1) for a in app_ids]
    dl.write_deltalake(
        str(root),
        table,
        mode="append",
        commit_properties=dl.CommitProperties(app_transactions=txns) if txns else None,
        writer_properties=dl.WriterProperties(compression="ZSTD"),
    )


def _log_entry(root: Path, version: int) -> Path:
    """The Delta log's commit file of `version` (the protocol's zero-padded name)."""
    return root / "_delta_log" / f"{version:020d}.json"


def version_time(root: str | os.PathLike, version: int) -> datetime:
    """When table `version` was committed (UTC): its commit's commitInfo timestamp (the log keeps every commit for
    3,650 days, the table's logRetentionDuration). A store without that commit file is a StoreError."""
    from datetime import UTC

    path = _log_entry(Path(root), version)
    try:
        lines = path.read_bytes().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(f"{root}: version {version} has no commit file ({path.name})") from None
    for line in lines:
        info = json.loads(line).get("commitInfo") if line.strip() else None
        if isinstance(info, dict) and isinstance(info.get("timestamp"), int):
            return datetime.fromtimestamp(info["timestamp"] / 1000, UTC)
    raise StoreError(f"{root}: the commit of version {version} has no timestamp")


def _committed(dt, app_id: str) -> bool:
    return dt.transaction_version(app_id) is not None


def _table_exists(root: Path) -> bool:
    log = root / "_delta_log"
    return log.is_dir() and any(p.suffix == ".json" or p.name == "_last_checkpoint" for p in log.iterdir())


def _refuse_foreign(root: Path) -> None:
    foreign = sorted(p.name for p in root.iterdir() if p.name not in (META, "_delta_log"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise StoreError(f"{root}: not empty and not a store ({shown}); choose a new or empty folder")


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (then nothing can be created at `path`), else None.
    Export and import ask before they read anything, so the mistake is reported first and costs nothing."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def prepare(root: str | os.PathLike, *, create: bool) -> Path:
    """Check that `root` is a store (migrating one of the old format), or create it. Raises StoreError."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: is a file, not a store folder")
    if not root.exists():
        if not create:
            raise FileNotFoundError(f"{root}: no such store")
        root.mkdir(parents=True, exist_ok=True)  # several processes may create one store at once
    if _is_legacy(root):
        _migrate(root)
    if not _table_exists(root):
        if not create:
            raise StoreError(f"{root}: not a store (no Delta table of comparisons: no _delta_log/)")
        _refuse_foreign(root)  # before the lock, whose file would be the first thing written into the folder
        # Under the lock: a table another process is creating right now is complete once we hold it.
        with _store_lock(root, exclusive=True):
            if not _table_exists(root):
                _refuse_foreign(root)
                _delta().DeltaTable.create(str(root), schema=COMPARISON_SCHEMA, configuration=TABLE_CONFIG)
    _check_table(root, _load(root))
    wal_dir(root).mkdir(parents=True, exist_ok=True)
    return root


# -- writing -------------------------------------------------------------------------------------------------------
class ComparisonStore:
    """Append comparisons durably and read them back. Safe for many threads and many processes."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        seal_every: int = 1000,
        seal_idle_s: float | None = None,
        seal_max_age_s: float | None = None,
        compact_over: int = 64,
    ):
        """`seal_every`: records per segment before it is sealed into the table. `seal_idle_s`: a background
        thread also seals once no append came for that long, or (`seal_max_age_s`) once the oldest unsealed record
        is that old (a long-running app: other engines see votes within seconds), folds dead writers' segments at
        start, and compacts when the table has more than `compact_over` data files."""
        self.root = prepare(root, create=True)
        self.seal_every = seal_every
        self._lock = threading.Lock()  # appends and the open segment
        self._seal_lock = threading.Lock()  # one seal at a time, outside the append lock
        self._seg_fd: int | None = None
        self._seg_name: str | None = None
        self._seg_size = 0
        self._seg_records: list[dict] = []
        self._seg_opened = 0.0
        self._last_append = 0.0
        self._stop = threading.Event()
        self.last_seal_error: str | None = None
        if seal_idle_s is not None:
            args = (seal_idle_s, seal_max_age_s, compact_over)
            threading.Thread(target=self._sealer, args=args, daemon=True, name="store-sealer").start()

    def _sealer(self, idle_s: float, max_age_s: float | None, compact_over: int) -> None:
        try:
            self.seal_orphans()
        except Exception as e:  # noqa: BLE001 - a background helper: report, never take the app down
            self.last_seal_error = f"{type(e).__name__}: {e}"
        while not self._stop.wait(min(1.0, idle_s)):
            now = time.monotonic()
            with self._lock:
                due = bool(self._seg_records) and (
                    now - self._last_append >= idle_s
                    or (max_age_s is not None and now - self._seg_opened >= max_age_s)
                )
            if not due:
                continue
            self._rotate_and_seal()
            try:
                if len(_load(self.root).file_uris()) > compact_over:
                    self.compact()
            except Exception as e:  # noqa: BLE001
                self.last_seal_error = f"{type(e).__name__}: {e}"

    def _open_segment(self) -> None:
        name = f"seg-{uuid.uuid4().hex}.jsonl"
        wal = wal_dir(self.root)
        # Created under a name nobody lists, locked, and only then renamed into place: a segment is never visible
        # unlocked while its writer lives, so nobody can take a new segment for a dead writer's and fold it away.
        pending = wal / f".{name}.new"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(pending, wal / name)  # the lock belongs to the open file, so it survives the rename
            _fsync_dir(wal)
        except OSError as e:
            os.close(fd)
            pending.unlink(missing_ok=True)
            raise StoreWriteError(e.errno, f"not saved: cannot create a segment in {wal} ({e.strerror})") from None
        self._seg_fd, self._seg_name, self._seg_size, self._seg_records = fd, name, 0, []
        self._seg_opened = time.monotonic()

    @property
    def segment_name(self) -> str | None:
        """The write-ahead segment this writer appends to now (None before the first append)."""
        return self._seg_name

    def append(self, record: dict) -> str:
        """Validate and append one comparison; returns its id once it is on disk (fsync'd)."""
        return self.append_many([record])[0]

    def append_many(self, records: list[dict]) -> list[str]:
        """Append records with a single fsync: all are durable when this returns. On any failure none is kept and
        StoreWriteError is raised (the segment is cut back to its last complete record)."""
        for rec in records:
            check_comparison(rec)
        data = b"".join(_to_json_line(r) for r in records)
        rotate = False
        with self._lock:
            if self._seg_fd is None:
                self._open_segment()
            self._write_whole(data)
            self._seg_records.extend(records)
            self._last_append = time.monotonic()
            rotate = len(self._seg_records) >= self.seal_every
        if rotate:
            self._rotate_and_seal()
        return [r["comparison_id"] for r in records]

    def _write_whole(self, data: bytes) -> None:
        fd, start = self._seg_fd, self._seg_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)  # a short count means the rest did not fit (RLIMIT_FSIZE, a full disk)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "no space left (short write)")
                view = view[n:]
            os.fsync(fd)
        except OSError as e:
            self._cut_back(start)
            raise StoreWriteError(e.errno, f"not saved: the vote could not be written ({e.strerror})") from None
        self._seg_size = start + len(data)

    def _cut_back(self, size: int) -> None:
        """Remove a failed append's bytes; if even that fails, leave the segment to be folded as an orphan (its
        torn tail is dropped there) and start a new one next time."""
        try:
            os.ftruncate(self._seg_fd, size)
            os.fsync(self._seg_fd)
        except OSError:
            os.close(self._seg_fd)  # releases the lock: the segment is now an orphan, with every acknowledged record
            self._seg_fd, self._seg_name, self._seg_size, self._seg_records = None, None, 0, []

    def _rotate_and_seal(self) -> None:
        """Take the open segment out of the append path (new appends open a new one), then seal it."""
        with self._seal_lock:
            with self._lock:
                fd, name, records = self._seg_fd, self._seg_name, self._seg_records
                if fd is None:
                    return
                self._seg_fd, self._seg_name, self._seg_size, self._seg_records = None, None, 0, []
            self._seal(fd, name, records)

    def _seal(self, fd: int, name: str, records: list[dict]) -> None:
        try:
            if records:
                with _store_lock(self.root, exclusive=False):
                    _commit(self.root, comparisons_table(records), [_seg_app_id(name)])
            (wal_dir(self.root) / name).unlink(missing_ok=True)
            self.last_seal_error = None
        except Exception as e:  # noqa: BLE001 - the records are durable in the segment; it is sealed later
            self.last_seal_error = f"{type(e).__name__}: {e}"
            _warn(f"{self.root}: could not seal {name} yet ({e}); its votes are safe in the segment")
        finally:
            os.close(fd)  # unlocked: if the seal failed, the segment is an orphan that the next fold seals

    def write_batch(self, records: list[dict]) -> int:
        """Write many records as one commit, all or nothing (used by import). Returns the new table version."""
        if not records:
            return _load(self.root).version()
        for i, rec in enumerate(records):
            try:
                check_comparison(rec)
            except SchemaError as e:
                raise SchemaError(f"record {i}: {e}") from None
        with _store_lock(self.root, exclusive=False):
            _commit(self.root, comparisons_table(records))
        return _load(self.root).version()

    def add_new(self, records: list[dict]) -> tuple[list[str], int]:
        """Write the records whose comparison_id the store does not hold yet, as one commit, under the store-wide
        lock (so concurrent imports of one file never both write a record). Returns (ids written, count there)."""
        with _store_lock(self.root, exclusive=True):
            dt = _load(self.root)
            files = dt.file_uris()
            have: set[str] = set()
            if files:
                ids = pads.dataset(files, format="parquet").to_table(columns=["comparison_id"]).column(0)
                have = set(ids.to_pylist())
            new, seen = [], set()
            for r in records:
                cid = r["comparison_id"]
                if cid not in have and cid not in seen:
                    seen.add(cid)
                    new.append(r)
            if new:
                for i, rec in enumerate(new):
                    try:
                        check_comparison(rec)
                    except SchemaError as e:
                        raise SchemaError(f"record {i}: {e}") from None
                _commit(self.root, comparisons_table(new))
        return [r["comparison_id"] for r in new], len(records) - len(new)

    def close(self) -> None:
        """Seal the open segment. Not needed for durability, only so other engines see the votes sooner."""
        self._stop.set()
        self._rotate_and_seal()

    def __enter__(self) -> ComparisonStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------------------
    def read(self) -> pa.Table:
        return read_table(str(self.root))

    # -- maintenance -----------------------------------------------------------------------------------------------
    def seal_orphans(self) -> int:
        """Seal the segments of dead writers (one commit); returns how many records were sealed."""
        return seal_orphans(self.root)

    def compact(self, *, vacuum: bool = True) -> dict:
        """Seal orphans, merge the table's small files (Delta OPTIMIZE), then delete files replaced more than the
        retention period ago (VACUUM). Live writers keep appending meanwhile."""
        sealed = seal_orphans(self.root)
        before = _load(self.root)
        n_before = len(before.file_uris())
        if n_before > 1:
            try:
                before.optimize.compact()
            except Exception as e:  # noqa: BLE001 - a concurrent compaction won; nothing is lost
                if "conflict" not in str(e).lower():
                    raise
        removed = _load(self.root).vacuum(dry_run=False) if vacuum else []
        after = _load(self.root)
        return {
            "sealed_orphans": sealed,
            "files_before": n_before,
            "files_after": len(after.file_uris()),
            "vacuumed": len(removed),
            "version": after.version(),
        }


def _orphans(root: Path, fds: list[int]) -> list[Path]:
    """Lock every segment no live writer holds (their writers are dead); the fds go into `fds`."""
    locked = []
    for seg in sorted(wal_dir(root).glob("seg-*.jsonl")):
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


def seal_orphans(root: str | os.PathLike) -> int:
    """Seal dead writers' segments into the table in one commit, then delete them. Returns the records sealed.

    A segment whose transaction is already in the table (its writer died between commit and delete) is only
    deleted. A segment with a corrupt line is left for `fsck` and reported.
    """
    root = Path(root)
    fds: list[int] = []
    try:
        with _store_lock(root, exclusive=True):
            segs = _orphans(root, fds)
            if not segs:
                return 0
            dt = _load(root)
            tables, app_ids, done = [], [], []
            for seg in segs:
                if _committed(dt, _seg_app_id(seg.name)):
                    done.append(seg)
                    continue
                try:
                    records, _torn = read_segment(seg, strict=True)
                except StoreError as e:
                    _warn(f"{e}; left in place, run `python -m annotate fsck --store {root} --repair`")
                    continue
                done.append(seg)
                if records:
                    tables.append(comparisons_table(records))
                    app_ids.append(_seg_app_id(seg.name))
            if tables:
                _commit(root, pa.concat_tables(tables), app_ids)
            for seg in done:
                seg.unlink(missing_ok=True)
            _fsync_dir(wal_dir(root))
            return sum(t.num_rows for t in tables)
    finally:
        for fd in fds:
            os.close(fd)


# -- reading -------------------------------------------------------------------------------------------------------
def _unsealed(segments: list[Path], dt) -> pa.Table:
    """Records in the segments whose transaction is not in `dt` (listed before `dt` was loaded: see snapshot)."""
    tables = []
    for seg in segments:
        if _committed(dt, _seg_app_id(seg.name)):
            continue  # sealed; its writer has not deleted it yet
        records, _ = read_segment(seg)
        tables.append(comparisons_table(records))
    return pa.concat_tables(tables) if tables else COMPARISON_SCHEMA.empty_table()


def snapshot(spec: str | os.PathLike, *, live: bool = False) -> tuple[pa.Table, dict]:
    """The comparisons of a store ('DIR' or 'DIR@VERSION') and a record of what was read.

    Sealed only (the default): the latest table version (dead writers' segments sealed first, when the folder is
    writable), or exactly the version asked for. `live`: also what live writers have not sealed yet (a running
    app's last seconds); such a read is not reproducible from a version. info = {store, version, rows, unsealed}:
    `unsealed` counts the records in live segments (included only when `live`).
    """
    root_s, version = parse_store_spec(spec)
    if "://" in root_s and not root_s.startswith("file://"):
        if live:
            raise StoreError(f"{root_s}: a remote store is read as sealed versions only")
        dt = _load(root_s, version)
        _check_table(Path(root_s), dt)
        table = _sealed(dt)
        return table, {"store": root_s, "version": dt.version(), "rows": table.num_rows, "unsealed": 0}
    root = prepare(root_s.removeprefix("file://"), create=False)
    if version is not None:
        dt = _load(root, version)
        table = _sealed(dt)
        return table, {"store": str(root), "version": version, "rows": table.num_rows, "unsealed": 0}
    if not live and os.access(root / META, os.W_OK):
        seal_orphans(root)
    for attempt in range(50):
        try:
            # Segments are listed before the table is loaded: a segment deleted before the listing was committed
            # before it, so it is in the loaded version. A listed segment committed after the load is read from its
            # file, or, if its writer deleted it meanwhile, the read fails and starts again; one committed before
            # the load is skipped by its transaction. No record is missed or read twice.
            segments = sorted(wal_dir(root).glob("seg-*.jsonl"))
            dt = _load(root)
            sealed = _sealed(dt)
            unsealed = _unsealed(segments, dt)
            break
        except (FileNotFoundError, StoreError) as e:
            if attempt == 49 or (isinstance(e, StoreError) and "gone" not in str(e)):
                raise
            time.sleep(0.02)
    table = pa.concat_tables([sealed, unsealed]) if live else sealed
    info = {"store": str(root), "version": dt.version(), "rows": table.num_rows, "unsealed": unsealed.num_rows}
    return table, info


def pin_version(spec: str | os.PathLike) -> str:
    """A local store named without a version -> 'DIR@V', its latest sealed version (dead writers' segments sealed
    first); anything else comes back unchanged. A training run records this, so "which votes was this model
    trained on?" has an answer that reads the same rows again."""
    root, version = parse_store_spec(spec)
    if version is not None or "://" in root or not is_store(root):
        return str(spec)
    _, info = snapshot(root)
    if info["unsealed"]:
        _warn(f"{root}: {info['unsealed']} votes of a running app are not sealed yet and not in version "
              f"{info['version']}; they are sealed within seconds of a lull")  # fmt: skip
    return f"{root}@{info['version']}"


def read_table(spec: str | os.PathLike) -> pa.Table:
    """Every current comparison of a store: sealed ones and those still in live writers' segments. 'DIR@VERSION'
    reads exactly that sealed version."""
    return snapshot(spec, live=parse_store_spec(spec)[1] is None)[0]


def standing_mask(table: pa.Table) -> pa.ChunkedArray:
    """True for the votes that stand: not a retraction record, and not retracted by one."""
    import pyarrow.compute as pc

    retracts = table.column("retracts")
    retracted = pc.unique(pc.drop_null(retracts))
    return pc.and_(pc.is_null(retracts), pc.invert(pc.is_in(table.column("comparison_id"), value_set=retracted)))


def effective_table(table: pa.Table) -> pa.Table:
    """Votes that stand, as Arrow (vectorised): retraction records and the votes they retract are both removed."""
    return table.filter(standing_mask(table))


def effective_votes(table: pa.Table) -> pd.DataFrame:
    """Votes that stand: retraction records and the votes they retract are both removed."""
    return effective_table(table).to_pandas()


# -- the previous format: read once, to migrate ---------------------------------------------------------------------
def _legacy_read(old: Path) -> pa.Table:
    """All current records of an old-format store folder (Parquet parts naming the files they replace, plus
    write-ahead segments in wal/). Replaced files are skipped and torn segment tails dropped, as its reader did."""
    parts = sorted(old.glob("part-*.parquet"))
    segments = sorted((old / "wal").glob("seg-*.jsonl"))
    replaced: set[str] = set()
    for p in parts:
        meta = pq.read_schema(p).metadata or {}
        replaced.update(json.loads(meta.get(LEGACY_REPLACES_KEY, b"[]")))
    parts = [p for p in parts if p.name not in replaced]
    segments = [s for s in segments if f"wal/{s.name}" not in replaced]
    tables = [pq.read_table(p, schema=COMPARISON_SCHEMA) for p in parts]
    tables += [comparisons_table(read_segment(s)[0]) for s in segments]
    if not tables:
        return COMPARISON_SCHEMA.empty_table()
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    return _reid_imports(table).replace_schema_metadata(COMPARISON_SCHEMA.metadata)


def _reid_imports(table: pa.Table) -> pa.Table:
    """Imported records of the old format have ids built from their line number; give them the content-derived id
    an import gives them now, so re-importing the same file after the migration adds nothing. Nothing refers to an
    imported record's id (imports are never retracted), and the old files stay in the backup."""
    from annotate.schema import comparison_id_for

    sessions = table.column("session").to_pylist()
    if not any(s and s.startswith("import:") for s in sessions):
        return table
    ids = table.column("comparison_id").to_pylist()
    for i, row in enumerate(table.select(["prompt", "response_a", "response_b", "annotator", "choice"]).to_pylist()):
        session = sessions[i] or ""
        if session.startswith("import:") and row["choice"] == "a":  # imports store chosen as a, choice "a"
            fmt = session.split(":")[1]
            ids[i] = comparison_id_for(fmt, row["annotator"], row["prompt"], row["response_a"], row["response_b"])
    table = table.set_column(0, "comparison_id", pa.array(ids, pa.string()))
    # The same file imported twice with lines shifted held one vote under two ids: now one id, kept once.
    first: dict[str, int] = {}
    for i, cid in enumerate(ids):
        first.setdefault(cid, i)
    if len(first) < len(ids):
        _warn(f"migration: {len(ids) - len(first)} repeated imported records kept once")
        table = table.take(sorted(first.values()))
    return table


def _migrate(root: Path) -> None:
    """Turn an old-format store into a Delta table, losing nothing; safe to interrupt at any point and re-run.

    1. Move the old files into _prefkit/legacy/ (renames in one folder tree; a re-run moves what is left).
    2. Create the table and commit every record read from there, with the app transaction MIGRATE_APP_ID
       (a re-run after that commit sees it and does not commit again).
    3. Mark _prefkit/legacy/MIGRATED. The old files stay there as a backup; delete them when satisfied.
    """
    legacy = root / META / "legacy"
    with _store_lock(root, exclusive=True):
        if not _is_legacy(root):
            return
        old_wal = root / "wal"
        for seg in sorted(old_wal.glob("seg-*.jsonl")) if old_wal.is_dir() else []:
            fd = os.open(seg, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"{root}: an older prefkit process is still writing to this store ({seg.name}); stop it, "
                    "then open the store again to migrate it"
                ) from None
            finally:
                os.close(fd)
        legacy.mkdir(parents=True, exist_ok=True)
        for p in root.glob("part-*.parquet"):
            if (pq.read_schema(p).metadata or {}).get(LEGACY_REPLACES_KEY) is not None:
                os.rename(p, legacy / p.name)
        for name in ("wal", ".tmp", ".compact.lock"):
            if (root / name).exists():
                os.rename(root / name, legacy / name)
        if (root / "pool").is_dir() and not pool_dir(root).exists():
            os.rename(root / "pool", pool_dir(root))
        if (root / ".serves").is_dir() and not serves_dir(root).exists():
            os.rename(root / ".serves", serves_dir(root))
        _fsync_dir(root)
        table = _legacy_read(legacy)
        dl = _delta()
        if not (root / "_delta_log").is_dir():
            dl.DeltaTable.create(str(root), schema=COMPARISON_SCHEMA, configuration=TABLE_CONFIG)
        if not _committed(_load(root), MIGRATE_APP_ID):
            _commit(root, table, [MIGRATE_APP_ID])
        (legacy / "MIGRATED").write_text(
            f"{table.num_rows} records migrated into the Delta table at version {_load(root).version()}; "
            "these old files are a backup and can be deleted.\n"
        )
        _fsync_dir(legacy)
    _warn(f"{root}: migrated {table.num_rows} records from the old store format (backup in {legacy})")


# -- following a store ---------------------------------------------------------------------------------------------
class StoreTail:
    """The records that appear in a local store since the last `poll()`, read incrementally (several app processes
    on one store use it to see each other's votes).

    Per WAL segment it remembers the byte offset after the last complete line and reads only the bytes past it (a
    torn trailing line waits until its newline arrives). A table data file is read once: first only its
    `comparison_id` column, then only the row groups holding ids not returned before (a sealed segment or a
    compaction output holds records already returned). No comparison_id is returned twice.
    Records come as dicts like a segment line: `created_at` a datetime, `criteria` a dict.

    A record is returned once it is in its segment file, which can be just before its writer's fsync returns.
    """

    def __init__(self, root: str | os.PathLike, *, from_now: bool = False):
        """`from_now`: what the store holds already counts as returned (for a caller that replayed the store)."""
        self.root = Path(root)
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}  # segment name -> bytes consumed (complete lines)
        self._parts: set[str] = set()  # data files already read
        self._ids: set[str] = set()  # comparison_ids returned (or skipped by from_now)
        self._dt = None
        if from_now:
            self.poll()

    def poll(self, skip: Iterable[str] = ()) -> list[dict]:
        """Records that appeared since the previous poll (all current ones on the first, unless from_now). `skip`:
        segment names not to read now (a caller's own live segment, whose records it has already)."""
        skip = set(skip)
        with self._lock:
            out: list[dict] = []
            # Segments before the table: a segment sealed after it was listed is found in the table.
            segments = sorted(wal_dir(self.root).glob("seg-*.jsonl"))
            self._offsets = {s.name: self._offsets.get(s.name, 0) for s in segments}
            for seg in segments:
                if seg.name not in skip:
                    out += self._read_segment(seg)
            if self._dt is None:
                self._dt = _load(self.root)
            elif _log_entry(self.root, self._dt.version() + 1).exists():
                # Every serve polls, under the serve lock: update_incremental lists and reads the log (0.3-1 ms
                # with nothing new), while any new version must first create this one file (a stat, ~2 us).
                self._dt.update_incremental()
            files = self._dt.file_uris()
            self._parts &= set(files)  # names are unique: a removed file never comes back
            for part in files:
                if part not in self._parts:
                    out += self._read_part(Path(part))
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
        for k, line in enumerate(data[:end].split(b"\n")[:-1]):
            try:
                records.append(_from_json_line(line))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
                _warn(f"{path}: record {k + 1} after byte {start}: corrupt ({e}); skipped")
        self._offsets[path.name] = start + end
        return [r for r in records if self._new(r)]

    def _read_part(self, path: Path) -> list[dict]:
        try:
            f = open(path, "rb")  # once open, the file stays readable even if a vacuum deletes it
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
        self._parts.add(str(path))
        out = []
        for rec in rows:
            rec["criteria"] = dict(rec.get("criteria") or [])
            if self._new(rec):
                out.append(rec)
        return out
