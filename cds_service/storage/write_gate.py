"""One SQLite write transaction at a time per process, waited for in Python.

SQLite has one write lock per database. Threads of one process that wait for it in SQLite's
busy handler poll it with sleeps and are not served in turn: the audit writer, committing
batch after batch, could keep the evidence-page writer (or a jti claim) out until its busy
timeout ran out ("database is locked"). Taking this lock first makes the threads of a
process queue for the database in Python, woken as soon as the writer before them commits;
SQLite's busy timeout is then only met between processes (gunicorn workers). PostgreSQL
locks rows, not the database: no gate.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator

from sqlalchemy.engine import Engine

# engine -> (the process that made the lock, the lock). A forked worker makes its own: a lock
# copied while a thread of the parent held it would stay held in the child for ever.
_locks: weakref.WeakKeyDictionary[Engine, tuple[int, threading.Lock]] = weakref.WeakKeyDictionary()
_guard = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: globals().update(_guard=threading.Lock()))


class WriteGateTimeout(TimeoutError):
    """The other writers of this process held the database past the wait allowed."""


def _lock_for(engine: Engine) -> threading.Lock:
    pid = os.getpid()
    with _guard:
        entry = _locks.get(engine)
        if entry is None or entry[0] != pid:
            entry = _locks[engine] = (pid, threading.Lock())
        return entry[1]


@contextlib.contextmanager
def write_gate(engine: Engine, timeout_s: float) -> Iterator[None]:
    """Hold this process's write turn on a SQLite `engine` (no-op for other databases);
    WriteGateTimeout after `timeout_s`."""
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = _lock_for(engine)
    if not lock.acquire(timeout=max(0.0, timeout_s)):
        raise WriteGateTimeout("another write of this process held the database")
    try:
        yield
    finally:
        lock.release()
