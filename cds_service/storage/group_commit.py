"""A hook call is answered only once its audit row, and its cards' evidence pages, are kept.

"Kept" means committed to the store (on SQLite with `synchronous = FULL`: the commit is on
disk) or appended, fsync'd, to the local audit spool, which is replayed into the store
later. When neither can take the row (the instance folder is full or read-only and the
store refuses), `keep` says so and the call is answered 503 with Retry-After instead of
an answer without its audit row (issue 16), and without a page behind its link (issue 17:
a link opens the moment the card is handed out, from any worker and any instance, because
the page is committed before the card is returned).

Group commit: one writer thread per process takes every row waiting when it starts a
write and commits them in one transaction (two or three statements however many rows),
so concurrent calls share one commit and its fsync rather than queueing for one each. A
call waits for its row at most `wait_s`; when the store has not committed by then (a
database that stopped answering), the call spools its own row and is answered: a row
both committed late and spooled is stored once (the replay skips a `record_id` already
stored, and its pages with it, in the same transaction).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

from cds_service.storage.audit import CallRecord
from cds_service.storage.audit_spool import BATCH_ROWS, AuditSpool, SpoolFull

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("abandoned", "done", "kept", "record")

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.done = threading.Event()
        self.kept = False
        self.abandoned = False  # the caller stopped waiting and spooled the row itself


class GroupCommit:
    """`keep(record)`: True once the row is committed or spooled, False when it cannot be."""

    def __init__(
        self,
        write: Callable[[list[CallRecord]], object],
        spool: AuditSpool | None,
        *,
        wait_s: float = 0.5,
        store_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self._write = write
        self.spool = spool
        self.wait_s = wait_s
        self._store_down = store_down
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Entry | None] | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.commits = 0  # transactions written (a batch of rows each)
        self.after_commit: Callable[[], None] | None = None  # housekeeping on this thread

    def keep(self, record: CallRecord) -> bool:
        if self._store_down():
            return self._spool([record], "the store is unavailable")
        entry = _Entry(record)
        self._queue_for_this_process().put(entry)
        if entry.done.wait(self.wait_s):
            return entry.kept
        with self._lock:
            if entry.done.is_set():
                return entry.kept
            entry.abandoned = True
        return self._spool([record], f"the store did not commit within {self.wait_s:g} s")

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._pid != os.getpid() or self._queue is None:
                return
            q, thread = self._queue, self._thread
            self._queue, self._thread, self._pid = None, None, 0
        q.put(None)  # after the rows already queued: they are written first
        if thread is not None:
            thread.join(timeout_s)

    def _queue_for_this_process(self) -> queue.SimpleQueue:
        with self._lock:
            if self._pid != os.getpid() or self._queue is None:  # first use, or a forked worker
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name="audit-commit", daemon=True)
                self._thread.start()
            return self._queue

    def _run(self, q: queue.SimpleQueue) -> None:
        while True:
            first = q.get()
            if first is None:
                return
            batch = [first]  # and every row that arrived meanwhile: one commit for all
            stopping = False
            while len(batch) < BATCH_ROWS:
                try:
                    entry = q.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stopping = True
                    break
                batch.append(entry)
            self._commit(batch)
            if stopping:
                return
            if self.after_commit is not None:
                try:
                    self.after_commit()
                except Exception as exc:
                    log.warning("housekeeping after an audit commit failed: %s", type(exc).__name__)

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            if self._store_down():
                raise ConnectionError("the store is unavailable")
            self._write([entry.record for entry in batch])
            self.commits += 1
            kept = True
        except Exception as exc:  # the writer must outlive any failure
            with self._lock:
                waiting = [entry for entry in batch if not entry.abandoned]
            kept = self._spool(
                [entry.record for entry in waiting], f"the store cannot be written ({type(exc).__name__})"
            )
        with self._lock:
            for entry in batch:
                entry.kept = kept
                entry.done.set()

    def _spool(self, records: list[CallRecord], why: str) -> bool:
        if not records:
            return True
        if self.spool is not None:
            try:
                self.spool.append(records)
                log.warning("audit rows spooled locally: rows=%d reason=%s", len(records), why)
                return True
            except (SpoolFull, OSError) as exc:
                why = f"{why}; the spool cannot take them ({type(exc).__name__})"
        log.error("audit rows cannot be kept: rows=%d reason=%s; the calls are answered 503", len(records), why)
        return False
