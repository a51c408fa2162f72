"""Several app processes on one store (replicas, failover): each follows what the others write.

Every process keeps its own in-memory sampler. A `ReplicaFollower` applies the other processes' votes and
retractions (annotate.store.StoreTail reads only what is new) and their serves (small append-only notes in
`STORE/_prefkit/serves/`, one file per process; Delta and Parquet readers skip `_` folders) to the local sampler:
in the background twice a second, so progress and History stay current, and, under an flock on
`STORE/_prefkit/serves/lock`, right before every serve. Serving is thus one process at a time and always on the latest
state: an annotator who fails over is never shown a pair they were shown or judged elsewhere, and `--overlap`
counts every process's votes and serves in flight. The lock is held for a read of what is new plus one write.

Serve notes are written without fsync on purpose: losing one to a power cut only means that a pair that was
shown but never judged may be shown again, and an fsync per serve would halve the serving rate.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from pathlib import Path

from annotate.sampler import Pair, PairSampler
from annotate.store import ComparisonStore, StoreTail, serves_dir


class ReplicaFollower:
    def __init__(self, store: ComparisonStore, sampler: PairSampler, interval: float = 0.5):
        self.store, self.root, self.sampler, self.interval = store, Path(store.root), sampler, interval
        # From the start, not from now: records written between the sampler's start-up read and this line must
        # not be missed, and apply() skips the ones the sampler already holds.
        self.tail = StoreTail(self.root)
        self.serves = serves_dir(self.root)
        self.serves.mkdir(parents=True, exist_ok=True)
        # Serve notes older than this process describe serves whose votes are already in the store.
        self._offsets = {p.name: p.stat().st_size for p in self.serves.glob("*.jsonl")}
        self.own = self.serves / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._fd = os.open(self.own, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock_fd = os.open(self.serves / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._poll_lock = threading.Lock()  # the tail and the offsets are read by one thread at a time
        self._serve_lock = threading.Lock()  # flock is per open file: threads of this process queue here first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def announce(self, annotator: str, pair: Pair) -> None:
        """Tell the other processes that `annotator` was shown `pair` (one O_APPEND write: lines never mix)."""
        if pair.index < 0 or pair.kind in ("repeat", "honeypot"):
            return
        note = {"annotator": annotator, "prompt_id": pair.prompt_id, "a": pair.a.response_id, "b": pair.b.response_id}
        os.write(self._fd, (json.dumps(note, ensure_ascii=False) + "\n").encode())

    def next_pair(self, annotator: str, gold_only: bool = False) -> Pair | None:
        """Serve `annotator` on the latest state of every process, one process at a time."""
        with self._serve_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self.poll_once()
                pair = self.sampler.next_pair(annotator, gold_only)
                if pair is not None:
                    self.announce(annotator, pair)
                return pair
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def poll_once(self) -> int:
        """Apply what the other processes wrote since the last poll; returns how many records were new here."""
        with self._poll_lock:
            # Serve notes first: a serve is written before its vote, so a vote never arrives ahead of its serve.
            self._read_serves()
            # This process's own live segment holds only records its sampler has already: not read (or parsed).
            own = [self.store.segment_name] if self.store.segment_name else []
            return sum(1 for rec in self.tail.poll(skip=own) if self.sampler.apply(rec))

    def _read_serves(self) -> None:
        for path in sorted(self.serves.glob("*.jsonl")):
            if path == self.own:
                continue
            start = self._offsets.get(path.name, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # a note still being written is read next time
            for line in data[:end].splitlines():
                try:
                    note = json.loads(line)
                    i = self.sampler.pair_index(note["prompt_id"], note["a"], note["b"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a damaged note costs at most one re-serve
                if i is not None:
                    self.sampler.remote_serve(note["annotator"], i)
            self._offsets[path.name] = start + end

    def start(self) -> ReplicaFollower:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.poll_once()
                except Exception as e:  # noqa: BLE001 - keep following; the next poll retries
                    print(f"replica follower: {e}", flush=True)

        self._thread = threading.Thread(target=loop, daemon=True, name="replica-follower")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._fd)
        os.close(self._lock_fd)
