"""Audit rows off the request path: a bounded in-memory queue, and a local spool file.

A hook call hands its audit row to `AuditWriter.submit`, which never waits for the
database: the row goes on a bounded queue that a background thread writes to the store.
When the queue is full, or the store cannot be written, rows go to the spool instead: an
append-only JSON-lines file in the instance folder (`audit-spool/`), fsync'd before
`submit` returns, bounded in size (setting `audit_spool_max_bytes`), and shared by the
processes of one instance folder (an exclusive `flock` around each append). The spool
survives a restart; the background thread replays it into the store whenever the store
answers again, and every row carries a unique `record_id`, so a row replayed twice (a
crash between the write and the spool's removal) is stored once.

What can still be lost: rows in the in-memory queue when the process is killed with
SIGKILL or the machine loses power (a normal exit, SIGTERM included, drains the queue into
the store or the spool).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cds_service.storage.audit import CallRecord

log = logging.getLogger(__name__)

SPOOL_FILE = "audit-spool.jsonl"
_REPLAY_PREFIX = "replaying-"
_LOCK_WAIT_S = 2.0
_REPLAY_BATCH = 200
BATCH_ROWS = 100  # audit rows per transaction at most
BATCH_LINGER_S = 0.1  # how long the writer waits for more rows before it writes a batch


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

    # -- reading (the writer thread)

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
                        depth += sum(chunk.count(b"\n") for chunk in iter(lambda h=handle: h.read(1 << 16), b""))
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

    def replay(self, write: Callable[[list[CallRecord]], None]) -> int:
        """Write spooled rows with `write`; remove each file once all of it is written.

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
                for batch in _batches(path):
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


def _batches(path: Path) -> Iterator[list[CallRecord]]:
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
            if len(batch) >= _REPLAY_BATCH:
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


class AuditWriter:
    """The background thread between hook calls and the store's audit tables."""

    def __init__(
        self,
        write: Callable[[list[CallRecord]], None],
        spool: AuditSpool | None,
        *,
        queue_size: int = 1000,
        retry_s: float = 2.0,
        store_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self._write = write
        self.spool = spool
        # None on the queue only wakes the thread (close): it is not a row.
        self._queue: queue.Queue[CallRecord | None] = queue.Queue(maxsize=queue_size)
        self._retry_s = retry_s
        self._store_down = store_down
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0  # rows submitted and not yet written or spooled
        self._next_replay = 0.0
        self.lost = 0  # rows that could be neither written nor spooled (logged at ERROR)
        # Called on the writer's thread at every turn (at most every 0.5 s), never on a
        # request's path: the evidence pages' purge of expired pages (rate-limited there).
        self.housekeeping: Callable[[], None] | None = None

    # -- request side

    def submit(self, record: CallRecord) -> bool:
        """Hand over one row without waiting for the database; False if it was lost."""
        self.start()
        with self._idle:
            try:
                self._queue.put_nowait(record)
                self._pending += 1
                return True
            except queue.Full:
                pass
        return self._spool([record], "the audit queue is full")

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def spool_depth(self) -> int:
        return self.spool.depth() if self.spool is not None else 0

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (at most `timeout_s`) until every submitted row is written or spooled."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain the queue (store, else spool) and stop the thread."""
        if self._thread is not None and self._thread.is_alive() and self._thread_pid == os.getpid():
            self.flush(timeout_s)
            self._stop.set()
            with contextlib.suppress(queue.Full):  # full: the thread is not waiting for rows
                self._queue.put_nowait(None)  # wake it now rather than at its next poll
            self._thread.join(timeout_s)
        # Closed: exit has nothing left to do here (and no longer keeps this writer alive).
        atexit.unregister(self.close)
        leftover = []
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is not None:
                leftover.append(record)
        if leftover:
            with self._idle:
                self._pending -= len(leftover)
            self._spool(leftover, "the service is stopping")

    # -- background side

    def start(self) -> None:
        """Start the background thread of this process (once; again after a fork)."""
        if self._thread_pid == os.getpid() and self._thread is not None:
            return
        with self._start_lock:
            if self._thread_pid == os.getpid() and self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread_pid = os.getpid()
            self._thread.start()
            # A normal exit (SIGTERM included) writes or spools what is still queued.
            atexit.register(self.close, 3.0)

    def _run(self) -> None:
        self._replay()
        while not self._stop.is_set():
            batch = self._take()
            if batch:
                self._deliver(batch)
            if time.monotonic() >= self._next_replay:
                self._replay()
            if self.housekeeping is not None:
                try:
                    self.housekeeping()
                except Exception as exc:  # the writer must outlive it
                    log.warning("audit writer housekeeping failed: %s", type(exc).__name__)

    def _take(self) -> list[CallRecord]:
        try:
            first = self._queue.get(timeout=min(0.5, self._retry_s))
        except queue.Empty:
            return []
        if first is None:  # close() woke the thread: nothing to write
            return []
        # Then what arrives within a short linger: one transaction per batch rather than per
        # call (the per-transaction cost is most of a row's, and it is paid on a thread that
        # shares the GIL with the requests); the rows are not visible for that long.
        batch = [first]
        linger_until = time.monotonic() + BATCH_LINGER_S
        while len(batch) < BATCH_ROWS and not self._stop.is_set():
            try:
                record = self._queue.get(timeout=max(0.0, linger_until - time.monotonic()))
            except queue.Empty:
                break
            if record is not None:
                batch.append(record)
        return batch

    def _deliver(self, batch: list[CallRecord]) -> None:
        try:
            if self._store_down():
                raise ConnectionError("the store is unavailable")
            self._write(batch)
        except Exception as exc:
            self._spool(batch, f"the store cannot be written ({type(exc).__name__})")
            self._next_replay = min(self._next_replay, time.monotonic() + self._retry_s)
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _spool(self, records: list[CallRecord], why: str) -> bool:
        if self.spool is not None:
            try:
                self.spool.append(records)
                log.warning("audit rows spooled locally: rows=%d reason=%s", len(records), why)
                return True
            except (SpoolFull, OSError) as exc:
                why = f"{why}; {exc}"
        self.lost += len(records)
        log.error("AUDIT ROWS LOST: rows=%d reason=%s", len(records), why)
        return False

    def _replay(self) -> None:
        self._next_replay = time.monotonic() + self._retry_s
        if self.spool is None or not self.spool.depth(max_age_s=0.0):
            return
        try:
            written = self.spool.replay(self._write)
        except Exception as exc:
            log.warning("audit spool replay deferred: store unavailable (%s)", type(exc).__name__)
            return
        if written:
            log.info("audit spool replayed into the store: rows=%d", written)
