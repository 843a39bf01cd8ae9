"""The local audit spool: where audit rows (and their evidence pages) wait when the store
cannot take them.

An append-only JSON-lines file in the instance folder (`audit-spool/`), fsync'd before
`append` returns, bounded in size (setting `audit_spool_max_bytes`), and shared by the
processes of one instance folder (an exclusive `flock` around each append). The spool
survives a restart; the audit writer (audit_writer.py) replays it into the store, through
its one commit, whenever the store answers again, and every row carries a unique
`record_id`, so a row replayed twice (a crash between the write and the spool's removal)
is stored once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cds_service.storage.audit import CallRecord

log = logging.getLogger(__name__)

SPOOL_FILE = "audit-spool.jsonl"
_REPLAY_PREFIX = "replaying-"
_LOCK_WAIT_S = 2.0


class SpoolFull(Exception):
    """The spool holds `max_bytes` already: the row cannot be kept."""


def _flock(fd: int, timeout_s: float) -> bool:
    """An exclusive lock on `fd`, waiting at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


class AuditSpool:
    """Append-only, fsync'd, bounded JSON-lines files in one folder, shared by processes."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path = self.folder / SPOOL_FILE
        self._lock = threading.Lock()
        self._depth_cache: tuple[float, int] = (0.0, 0)
        self._changes = 0  # appends and replays in this process: a count made meanwhile is not cached

    # -- writing (request threads and the writer thread)

    def append(self, records: list[CallRecord]) -> None:
        """Keep `records` durably; SpoolFull or OSError when they cannot be kept."""
        data = b"".join(json.dumps(r.to_json(), separators=(",", ":")).encode() + b"\n" for r in records)
        with self._lock:
            if self.size_bytes() + len(data) > self.max_bytes:
                raise SpoolFull(f"the audit spool holds {self.max_bytes} bytes already")
            for _attempt in range(5):
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    if not _flock(fd, _LOCK_WAIT_S):
                        raise OSError("the audit spool is locked by another process")
                    # A replayer may have renamed the file between open and lock: write to
                    # the file that is at the path now.
                    if os.fstat(fd).st_ino != os.stat(self._path).st_ino:
                        continue
                    _write_all(fd, data)
                    os.fsync(fd)
                    self._changes += 1
                    self._depth_cache = (0.0, 0)
                    return
                except FileNotFoundError:
                    continue
                finally:
                    os.close(fd)
            raise OSError("the audit spool file keeps moving")

    # -- reading (the audit writer's thread)

    def size_bytes(self) -> int:
        total = 0
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def depth(self, max_age_s: float = 1.0) -> int:
        """Rows waiting in the spool (all processes of this instance folder); cached briefly."""
        checked_at, depth = self._depth_cache
        now = time.monotonic()
        if checked_at and now - checked_at < max_age_s:
            return depth
        changes = self._changes
        # A file renamed for replay (here or by another process) between the listing and the
        # open would be counted as empty: list again then, so the depth never reads 0 for
        # rows that are only being moved.
        for _attempt in range(5):
            depth, moved = 0, False
            for path in self._files():
                try:
                    with open(path, "rb") as handle:
                        depth += sum(chunk.count(b"\n") for chunk in iter(functools.partial(handle.read, 1 << 16), b""))
                except FileNotFoundError:
                    moved = True
                    break
            if not moved:
                break
        if changes == self._changes:
            self._depth_cache = (now, depth)
        return depth

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.endswith(".jsonl"))
        except FileNotFoundError:
            return []

    def _rotate(self) -> None:
        """Move the current file aside so appends go to a new one while it is replayed."""
        if not self._path.exists():
            return
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if _flock(fd, _LOCK_WAIT_S) and os.fstat(fd).st_ino == os.stat(self._path).st_ino:
                if os.fstat(fd).st_size:
                    target = self.folder / f"{_REPLAY_PREFIX}{os.getpid()}-{time.time_ns()}.jsonl"
                    os.rename(self._path, target)
                    _fsync_dir(self.folder)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def replay(self, write: Callable[[list[CallRecord]], None], batch_rows: int) -> int:
        """Write spooled rows with `write`, `batch_rows` at a time; remove each file once
        all of it is written.

        Returns the rows written. Stops at the first failure of `write` (it raises).
        A file another process is replaying is skipped.
        """
        self._rotate()
        written = 0
        for path in self._files():
            if not path.name.startswith(_REPLAY_PREFIX):
                continue
            with self._locked(path) as fd:
                if fd is None:
                    continue
                for batch in _batches(path, batch_rows):
                    write(batch)
                    written += len(batch)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                _fsync_dir(self.folder)
                self._changes += 1
                self._depth_cache = (0.0, 0)
        return written

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[int | None]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not path.exists():  # replayed and removed by another process meanwhile
                yield None
                return
            yield fd
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Append all of `data` or nothing: a full disk (or a file-size limit) can take part of
    a write; the part is cut off again, or the next row appended would extend a broken line
    and both rows would be unreadable."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError("the audit spool took no more bytes")
            view = view[written:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _batches(path: Path, batch_rows: int) -> Iterator[list[CallRecord]]:
    batch: list[CallRecord] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                log.error("audit spool %s: line %d was cut short (a crash while writing); skipped", path.name, number)
                continue
            try:
                batch.append(CallRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError):
                log.error("audit spool %s: line %d cannot be read; skipped", path.name, number)
                continue
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
