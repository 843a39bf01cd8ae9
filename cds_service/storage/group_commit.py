"""A hook call is answered only once its audit row, and its cards' evidence pages, are kept.

"Kept" means committed to the store (on SQLite with `synchronous = FULL`: the commit is on
disk) or appended, fsync'd, to the local audit spool, which is replayed into the store
later. When neither can take the row (the instance folder is full or read-only and the
store refuses), `keep` says so and the call is answered 503 with Retry-After instead of
an answer without its audit row (issue 16), and without a page behind its link (issue 17:
a link opens the moment the card is handed out, from any worker and any instance, because
the page is committed before the card is returned).

Group commit without a thread of its own: the first call that finds no commit running
leads; it takes every row waiting (its own first) and commits them in one transaction
(three statements however many rows), while the calls that arrive meanwhile wait; when it
is done the next waiting call leads with all of theirs. One call alone commits on its own
thread, with no hand-over to another thread (which, on a busy machine, costs a scheduling
delay each way). The commit is bounded by `wait_s` (Store.keep_calls: the watchdog aborts
it, and on SQLite the wait for another process's write lock is cut to the same bound);
when it does not succeed the rows are spooled and the calls answered; a row both committed
late and spooled is stored once (the replay skips a `record_id` already stored, and its
pages with it). A call still waiting for a leader after `wait_s` spools its own row.
After a commit failed, the calls of the next `retry_s` spool their rows at once instead of
each waiting for the store again (a database behind a partition: a new connection waits
for the connect timeout); the audit writer's replay finds out when the store is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cds_service.storage.audit import CallRecord
from cds_service.storage.audit_spool import BATCH_ROWS, AuditSpool, SpoolFull

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("done", "kept", "record", "taken")

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.done = False
        self.kept = False
        self.taken = False  # in a batch that a leader is committing


class GroupCommit:
    """`keep(record)`: True once the row is committed or spooled, False when it cannot be."""

    def __init__(
        self,
        write: Callable[[list[CallRecord]], object],
        spool: AuditSpool | None,
        *,
        wait_s: float = 0.5,
        retry_s: float = 2.0,
        store_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self.retry_s = retry_s
        self._avoid_until = 0.0  # after a failed commit: spool at once until then
        self._write = write
        self.spool = spool
        self.wait_s = wait_s
        self._store_down = store_down
        self._cond = threading.Condition()
        self._waiting: list[_Entry] = []
        self._leading = False
        self.commits = 0  # transactions written (a batch of rows each)

    def keep(self, record: CallRecord) -> bool:
        if self._store_down() or time.monotonic() < self._avoid_until:
            return self._spool([record], "the store is unavailable")
        entry = _Entry(record)
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._waiting.append(entry)
        while True:
            with self._cond:
                while self._leading and not entry.done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 and not entry.taken:
                        self._waiting.remove(entry)  # no leader took it in time
                        break
                    self._cond.wait(max(remaining, 0.05))
                if entry.done:
                    return entry.kept
                if self._leading:
                    return self._spool([record], f"the store did not commit within {self.wait_s:g} s")
                # No commit running: lead, with every row waiting (ours among the first).
                self._leading = True
                batch, self._waiting = self._waiting[:BATCH_ROWS], self._waiting[BATCH_ROWS:]
                for taken in batch:
                    taken.taken = True
            kept = False
            try:
                kept = self._commit([taken.record for taken in batch])
            finally:
                with self._cond:
                    for taken in batch:
                        taken.kept, taken.done = kept, True
                    self._leading = False
                    self._cond.notify_all()

    def _commit(self, records: list[CallRecord]) -> bool:
        try:
            if self._store_down():
                raise ConnectionError("the store is unavailable")
            self._write(records)
            self.commits += 1
            return True
        except Exception as exc:  # the rows must be spooled whatever the failure
            self._avoid_until = time.monotonic() + self.retry_s
            return self._spool(records, f"the store cannot be written ({type(exc).__name__})")

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
