"""The one writer of the audit trail and the evidence pages.

Every audit row and every evidence page reaches the database through `AuditWriter`, in
batches committed by one function (Store.keep_calls: one transaction, three statements
however many rows, bounded by `audit_commit_wait_s`). The ways in:

- `keep(record)`: a hook call that returns cards is answered only once its audit row, and
  its cards' evidence pages, are kept: committed (on SQLite with `synchronous = FULL`: on
  disk) or appended, fsync'd, to the local spool (audit_spool.py). When neither can take
  the row (the instance folder is full or read-only and the store refuses), `keep` says so
  and the call is answered 503 with Retry-After instead of an answer without its audit row
  (issue 16), and without a page behind its link (issue 17: a link opens the moment the
  card is handed out, from any worker and any instance, because the page is committed
  before the card is returned).
- `submit(record)`: the row of a refused call (4xx, 503) is queued (at most `queue_size`
  rows, then spooled) and never waits; the writer's thread commits what is queued, after
  a short linger so that one transaction takes many rows.
- `keep_pages(rows)`: evidence pages written on their own (EvidencePages.save: tools,
  tests, the demo), committed like a call's, never spooled: False when the store cannot.
- the spool: the writer's thread replays it into the store whenever the store answers
  again, batch by batch through the same commit; a row whose `record_id` is already stored
  is skipped (and its pages with it), so a row both committed late and spooled, or
  replayed twice, is stored once.

Group commit without a thread of its own: the first call that finds no commit running
leads; it takes its own entry, then those of the other calls waiting, then queued rows
(BATCH_ROWS at most), and commits them in one transaction while the calls that arrive
meanwhile wait; when it is done the next waiting call leads with all of theirs. One call
alone commits on its own thread, with no hand-over to another thread (which, on a busy
machine, costs a scheduling delay each way). The writer's thread takes its turn the same
way, for queued rows and for each spooled batch it replays. The commit is bounded by
`wait_s` (the watchdog aborts it, and on SQLite the wait for another process's write lock
is cut to the same bound); when it does not succeed the rows are spooled and the calls
answered. A call still waiting for a leader after `wait_s` spools its own row. After a
commit failed, the calls of the next `retry_s` spool their rows at once instead of each
waiting for the store again (a database behind a partition: a new connection waits for
the connect timeout); the replay finds out when the store is back.

What can still be lost: queued rows (refused calls) when the process is killed with
SIGKILL or the machine loses power (a normal exit, SIGTERM included, drains the queue into
the store or the spool); they are counted in `lost` and logged at ERROR when neither the
store nor the spool takes them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable

from cds_service.storage.audit import CallRecord, PageRow
from cds_service.storage.audit_spool import AuditSpool, SpoolFull

log = logging.getLogger(__name__)

BATCH_ROWS = 100  # audit rows per transaction at most
BATCH_LINGER_S = 0.1  # how long the thread waits for more queued rows before it commits them

# Commits audit rows and evidence pages in one transaction; raises when it cannot.
Write = Callable[[list[CallRecord], list[PageRow]], object]


class _Entry:
    __slots__ = ("done", "kept", "pages", "record", "taken", "waits")

    def __init__(self, record: CallRecord | None, pages: tuple[PageRow, ...] = (), *, waits: bool) -> None:
        self.record = record  # an audit row (with its pages), or None: `pages` alone
        self.pages = pages
        self.waits = waits  # a caller waits for it (keep, keep_pages); else queued (submit)
        self.done = False
        self.kept = False
        self.taken = False  # in a batch that a leader is committing


class AuditWriter:
    """Audit rows and evidence pages into the store, in batches; the spool when it cannot."""

    def __init__(
        self,
        write: Write,
        spool: AuditSpool | None,
        *,
        wait_s: float = 0.5,
        retry_s: float = 2.0,
        queue_size: int = 1000,
        store_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self._write = write
        self.spool = spool
        self.wait_s = wait_s
        self.retry_s = retry_s
        self._queue_size = queue_size
        self._store_down = store_down
        self._cond = threading.Condition()
        self._waiting: list[_Entry] = []  # not yet taken by a leader
        self._queued = 0  # submitted rows among them
        self._pending = 0  # submitted rows not yet committed or spooled
        self._leading = False
        self._avoid_until = 0.0  # after a failed commit: spool at once until then
        self._next_replay = 0.0
        self.commits = 0  # transactions written (a batch of rows each)
        self.lost = 0  # rows that could be neither written nor spooled (logged at ERROR)
        # Called on the writer's thread at every turn (at most every 0.5 s), never on a
        # request's path: the evidence pages' purge of expired pages (rate-limited there).
        self.housekeeping: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._start_lock = threading.Lock()
        self._stop = threading.Event()

    # -- the ways in

    def keep(self, record: CallRecord) -> bool:
        """True once the row (and its pages) is committed or spooled, False when neither."""
        if self._avoiding():
            return self._spool([record], "the store is unavailable", waiting=1)
        entry = _Entry(record, waits=True)
        if self._wait_for(entry):
            return entry.kept
        return self._spool([record], f"the store did not commit within {self.wait_s:g} s", waiting=1)

    def keep_pages(self, pages: list[PageRow]) -> bool:
        """True once the pages are committed; False when the store cannot take them now."""
        if not pages:
            return True
        if self._avoiding():
            return False
        entry = _Entry(None, tuple(pages), waits=True)
        return self._wait_for(entry) and entry.kept

    def submit(self, record: CallRecord) -> bool:
        """Queue one row without waiting for the database; False if it was lost."""
        self.start()
        with self._cond:
            if self._queued < self._queue_size:
                self._waiting.append(_Entry(record, waits=False))
                self._queued += 1
                self._pending += 1
                self._cond.notify_all()
                return True
        return self._spool([record], "the audit queue is full", waiting=0)

    def queue_depth(self) -> int:
        """Submitted rows waiting for a commit in this process."""
        return self._queued

    def spool_depth(self) -> int:
        return self.spool.depth() if self.spool is not None else 0

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (at most `timeout_s`) until every submitted row is written or spooled."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Drain the queue (store, else spool) and stop the thread."""
        if self._thread is not None and self._thread.is_alive() and self._thread_pid == os.getpid():
            self.flush(timeout_s)
            self._stop.set()
            with self._cond:
                self._cond.notify_all()  # wake it now rather than at its next poll
            self._thread.join(timeout_s)
        # Closed: exit has nothing left to do here (and no longer keeps this writer alive).
        atexit.unregister(self.close)
        with self._cond:
            leftover = [e.record for e in self._waiting if not e.waits and e.record is not None]
            self._waiting = [e for e in self._waiting if e.waits]
            self._queued -= len(leftover)
            self._pending -= len(leftover)
        if leftover:
            self._spool(leftover, "the service is stopping", waiting=0)

    # -- leading a commit

    def _avoiding(self) -> bool:
        return self._store_down() or time.monotonic() < self._avoid_until

    def _wait_for(self, entry: _Entry) -> bool:
        """Lead, or wait for a leader, until `entry` is committed or spooled: True then;
        False when no leader took it within `wait_s`, or the commit before it failed (it is
        no longer waiting then: the caller spools it)."""
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._waiting.append(entry)
        while True:
            with self._cond:
                while self._leading and not entry.done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 and not entry.taken:
                        self._waiting.remove(entry)  # no leader took it in time
                        return False
                    self._cond.wait(max(remaining, 0.05))
                if entry.done:
                    return True
                if time.monotonic() < self._avoid_until:  # the commit before failed: do not wait again
                    self._waiting.remove(entry)
                    return False
                # No commit running: lead, with what waits (ours first).
                batch = self._lead(entry)
            self._commit(batch)

    def _lead(self, first: _Entry | None) -> list[_Entry]:
        """(Holding the lock.) Lead the next commit with `first`, then the entries of the
        calls waiting, then queued rows: BATCH_ROWS at most."""
        self._leading = True
        others = [e for e in self._waiting if e is not first]
        ordered = [first] if first is not None else []
        ordered += [e for e in others if e.waits] + [e for e in others if not e.waits]
        batch = ordered[:BATCH_ROWS]
        taken = {id(e) for e in batch}
        self._waiting = [e for e in self._waiting if id(e) not in taken]
        for entry in batch:
            entry.taken = True
            if not entry.waits:
                self._queued -= 1
        return batch

    def _commit(self, batch: list[_Entry]) -> None:
        """Write one batch as its leader; spool its rows when the store cannot take them."""
        records = [e.record for e in batch if e.record is not None]
        pages = [page for e in batch for page in e.pages]
        rows_kept = pages_kept = False
        try:
            try:
                if self._store_down():
                    raise ConnectionError("the store is unavailable")
                self._write(records, pages)
                self.commits += 1
                rows_kept = pages_kept = True
            except Exception as exc:  # the rows must be spooled whatever the failure
                self._failed()
                waiting = sum(1 for e in batch if e.waits and e.record is not None)
                why = f"the store cannot be written ({type(exc).__name__})"
                rows_kept = self._spool(records, why, waiting=waiting)
        finally:
            with self._cond:
                for entry in batch:
                    entry.kept = rows_kept if entry.record is not None else pages_kept
                    entry.done = True
                    if not entry.waits:
                        self._pending -= 1
                self._leading = False
                self._cond.notify_all()

    def _failed(self) -> None:
        """A commit failed: the calls of the next `retry_s` spool at once, and the spool is
        replayed after that."""
        self._avoid_until = time.monotonic() + self.retry_s
        self._next_replay = min(self._next_replay, self._avoid_until)

    def _spool(self, records: list[CallRecord], why: str, *, waiting: int) -> bool:
        """Keep `records` in the spool; False when it cannot (`waiting` of them are calls
        that are answered 503 then; the others are lost)."""
        if not records:
            return True
        if self.spool is not None:
            try:
                self.spool.append(records)
                log.warning("audit rows spooled locally: rows=%d reason=%s", len(records), why)
                return True
            except (SpoolFull, OSError) as exc:
                why = f"{why}; the spool cannot take them ({type(exc).__name__})"
        if waiting:
            log.error("audit rows cannot be kept: rows=%d reason=%s; the calls are answered 503", waiting, why)
        lost = len(records) - waiting
        if lost:
            self.lost += lost
            log.error("AUDIT ROWS LOST: rows=%d reason=%s", lost, why)
        return False

    # -- the writer's thread: queued rows, the spool's replay, housekeeping

    def start(self) -> None:
        """Start the thread of this process (once; again after a fork)."""
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
            batch = self._take_queued()
            if batch:
                self._commit(batch)
            if time.monotonic() >= self._next_replay:
                self._replay()
            if self.housekeeping is not None:
                try:
                    self.housekeeping()
                except Exception as exc:  # the writer must outlive it
                    log.warning("audit writer housekeeping failed: %s", type(exc).__name__)

    def _take_queued(self) -> list[_Entry]:
        """Lead a commit of the queued rows, once they are there and have lingered
        BATCH_LINGER_S for more (one transaction per batch rather than per call: the
        per-transaction cost is most of a row's, and it is paid on a thread that shares the
        GIL with the requests); [] when none came within the poll."""
        with self._cond:
            # Woken by every commit's notify: wait on for the poll's end (at most 0.5 s
            # between turns of housekeeping and replay), not for any commit.
            poll_until = time.monotonic() + min(0.5, self.retry_s)
            while not self._queued and not self._stop.is_set():
                remaining = poll_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._queued:
                return []
            linger_until = time.monotonic() + BATCH_LINGER_S
            while self._queued < BATCH_ROWS and not self._stop.is_set():
                remaining = linger_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._wait_turn() or not self._queued:  # stopping, or a call's commit took them
                return []
            return self._lead(None)

    def _wait_turn(self) -> bool:
        """(Holding the lock.) Wait until no commit runs (each is bounded): False when the
        writer is stopping first."""
        while self._leading:
            if self._stop.is_set():
                return False
            self._cond.wait(0.05)
        return True

    def _replay(self) -> None:
        self._next_replay = time.monotonic() + self.retry_s
        if self.spool is None or not self.spool.depth(max_age_s=0.0):
            return
        try:
            written = self.spool.replay(self._write_in_turn, BATCH_ROWS)
        except Exception as exc:
            log.warning("audit spool replay deferred: store unavailable (%s)", type(exc).__name__)
            return
        if written:
            log.info("audit spool replayed into the store: rows=%d", written)

    def _write_in_turn(self, records: list[CallRecord]) -> None:
        """One spooled batch, committed as a leader (the calls' commits wait for it as for
        one another's); raises when the store refuses: the batch stays in the spool."""
        with self._cond:
            if not self._wait_turn():
                raise ConnectionError("the writer is stopping")
            self._leading = True
        try:
            if self._store_down():
                raise ConnectionError("the store is unavailable")
            self._write(records, [])
            self.commits += 1
        except Exception:
            self._failed()
            raise
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
