"""Making and guarding the database engine: every operation bounded in time.

SQLite by default (a file in the instance folder, WAL journal, busy timeout, so several
gunicorn workers can share it); PostgreSQL when the URL says `postgresql://...` (driven by
psycopg 3).

Every database operation is bounded in time (EngineBounds, from StoreOptions): the
connection (connect timeout, TCP keepalives), the pool wait, the statement (PostgreSQL
`statement_timeout`; SQLite busy timeout), and, on top, a client-side deadline: a watchdog
thread closes the socket of (PostgreSQL) or interrupts (SQLite) an operation that has not
finished in time, because a database that stops answering (a partition: sockets open, no
replies) never sends the server-side timeout. An engine that failed answers
StoreUnavailable (503 with Retry-After) at once for `retry_after_s`, instead of making
every request wait again. On SQLite the threads of a process take turns for the write lock
(write_gate.py) and the commit is on disk when it returns (`synchronous = FULL` in WAL
mode; setting `db_sqlite_synchronous`).

Failures are logged by kind (`_failure_kind`), never with the driver's message (it can
carry a password or a value).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

from cds_service.errors import ApiError
from cds_service.storage.write_gate import write_gate

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(RuntimeError):
    """The database cannot be opened or used; raised at start-up."""


class StoreUnavailable(ApiError, StoreError):
    """The database did not answer in time or refused: 503 with Retry-After, never a 500."""

    def __init__(
        self, detail: str = "the service's database is unavailable; retry later", retry_after_s: float = 2.0
    ) -> None:
        ApiError.__init__(self, 503, "store_unavailable", detail)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class EngineBounds(Protocol):
    """The time bounds and pool sizes an engine is made with (store.StoreOptions has them)."""

    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def statement_timeout_s(self) -> float: ...
    @property
    def pool_timeout_s(self) -> float: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def max_overflow(self) -> int: ...
    @property
    def keepalives_idle_s(self) -> int: ...
    @property
    def keepalives_interval_s(self) -> int: ...
    @property
    def keepalives_count(self) -> int: ...
    @property
    def retry_after_s(self) -> float: ...
    @property
    def sqlite_synchronous(self) -> str: ...
    @property
    def deadline_s(self) -> float: ...


# --------------------------------------------------------------------------- making engines


def _database_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        raise StoreError("the database URL cannot be read") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        return url
    if backend == "sqlite":
        return url
    raise StoreError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _sqlite_engine(url: URL, bounds: EngineBounds) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    busy_ms = int(bounds.statement_timeout_s * 1000)
    if in_memory:
        engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"the SQLite database folder {folder} cannot be created ({exc.strerror})") from None
        engine = sa.create_engine(
            url,
            pool_size=bounds.pool_size,
            max_overflow=bounds.max_overflow,
            pool_timeout=bounds.pool_timeout_s,
            connect_args={"timeout": busy_ms / 1000, "check_same_thread": False},
        )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: WAL commits are fsync'd before they return, so a call answered after
            # its audit row was committed cannot lose that row to a crash or power cut.
            synchronous = "NORMAL" if bounds.sqlite_synchronous == "normal" else "FULL"
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine


def _postgresql_engine(url: URL, bounds: EngineBounds) -> Engine:
    connect_args: dict[str, object] = {}
    query = dict(url.query)
    if "connect_timeout" not in query:
        # libpq counts whole seconds; psycopg treats less than 2 as 2.
        connect_args["connect_timeout"] = max(2, math.ceil(bounds.connect_timeout_s))
    if "application_name" not in query:
        connect_args["application_name"] = "cds-service"
    # TCP keepalives: a peer that vanished is noticed on an idle pooled connection.
    for key, value in (
        ("keepalives", 1),
        ("keepalives_idle", bounds.keepalives_idle_s),
        ("keepalives_interval", bounds.keepalives_interval_s),
        ("keepalives_count", bounds.keepalives_count),
        ("tcp_user_timeout", int(bounds.deadline_s * 1000)),
    ):
        if key not in query:
            connect_args[key] = value
    # Server-side bounds on every statement and lock wait, added to any options in the URL
    # (the tests confine a store to a schema with `options=-csearch_path=...`).
    timeout_ms = int(bounds.statement_timeout_s * 1000)
    server_options = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
    given = query.get("options")
    if isinstance(given, tuple):
        given = " ".join(given)
    if given:
        server_options = f"{given} {server_options}"
    url = url.difference_update_query(["options"])
    connect_args["options"] = server_options
    return sa.create_engine(
        url,
        pool_pre_ping=False,  # a ping could hang on a silent server; the watchdog bounds it
        pool_size=bounds.pool_size,
        max_overflow=bounds.max_overflow,
        pool_timeout=bounds.pool_timeout_s,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _dispose_in_child(engine_ref: weakref.ref[Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        # The parent's pooled connections must not be shared with a forked worker.
        engine.dispose(close=False)


# --------------------------------------------------------------------------- failures


def _abort_connection(dbapi_connection: Any) -> None:
    """Make an operation blocked on this DBAPI connection fail now (from another thread)."""
    if hasattr(dbapi_connection, "interrupt"):  # sqlite3
        dbapi_connection.interrupt()
        return
    try:
        fd = os.dup(dbapi_connection.fileno())
    except Exception:  # no socket (closed, or not a network connection)
        return
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _failure_kind(exc: BaseException) -> str:
    """A short, log-safe name for why the database failed (never the driver's message)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).lower()
    if isinstance(exc, PoolTimeout):
        return "no free database connection in time"
    if "does not exist" in text and "database" in text:
        return "database does not exist"
    if "connection refused" in text:
        return "connection refused"
    if "password authentication failed" in text or "authentication" in text:
        return "authentication failed"
    if "role" in text and "does not exist" in text:
        return "no such database user"
    if "database is locked" in text:
        return "the database is locked by another process"
    if "disk is full" in text:
        return "the disk is full"
    if "file is not a database" in text:
        return "the SQLite file is not a database (corrupt?)"
    if "could not translate host name" in text or "name or service not known" in text:
        return "host name not found"
    if "timeout" in text or "timed out" in text or "canceling statement" in text:
        return "timed out"
    if "unable to open database file" in text:
        return "the database file cannot be opened"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only"
    return type(orig).__name__


def _open_failure(backend: str, url: URL, exc: BaseException) -> str:
    """The start-up line for a database that cannot be opened (never the password)."""
    kind = _failure_kind(exc)
    if kind in ("authentication failed", "no such database user") and url.username:
        return f"database user {url.username!r} was refused by the server ({kind})"
    return f"cannot open the {backend} database ({kind})"


def _is_lock_wait(exc: BaseException) -> bool:
    """SQLite's busy timeout ran out: another process held the write lock."""
    return "database is locked" in str(getattr(exc, "orig", None) or exc).lower()


def _is_final(exc: BaseException) -> bool:
    """A failure that retrying at start-up cannot cure (unlike a race between workers)."""
    return _failure_kind(exc) in (
        "connection refused",
        "database does not exist",
        "authentication failed",
        "host name not found",
        "the database file cannot be opened",
        "timed out",
        "no such database user",
        "the SQLite file is not a database (corrupt?)",
    )


# --------------------------------------------------------------------------- the watchdog


class _Probe:
    __slots__ = ("done", "ok", "pid")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.pid = os.getpid()


class _Op:
    __slots__ = ("aborted", "dbapi", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.dbapi: Any = None
        self.aborted = False


class _Watchdog:
    """One thread per process that aborts database operations past their deadline."""

    def __init__(self) -> None:
        self._ops: dict[int, _Op] = {}
        self._lock = threading.Lock()
        self._pid = 0

    def add(self, op: _Op) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._ops = {}
                    self._pid = os.getpid()
                    threading.Thread(target=self._run, name="db-watchdog", daemon=True).start()
        with self._lock:
            self._ops[id(op)] = op

    def remove(self, op: _Op) -> None:
        with self._lock:
            self._ops.pop(id(op), None)

    def _run(self) -> None:
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            with self._lock:
                late = [op for op in self._ops.values() if op.deadline <= now and not op.aborted]
            for op in late:
                if op.dbapi is not None:
                    op.aborted = True
                    _abort_connection(op.dbapi)


_watchdog = _Watchdog()


# --------------------------------------------------------------------------- the guarded engine


class GuardedEngine:
    """An Engine whose every operation is bounded in time and fails as StoreUnavailable.

    One per process; thread-safe (pooled engine)."""

    def __init__(self, database_url: str, bounds: EngineBounds) -> None:
        self.bounds = bounds
        url = _database_url(database_url)
        self.backend = url.get_backend_name()
        self.engine: Engine = (
            _sqlite_engine(url, bounds) if self.backend == "sqlite" else _postgresql_engine(url, bounds)
        )
        if hasattr(os, "register_at_fork"):
            engine_ref = weakref.ref(self.engine)
            os.register_at_fork(after_in_child=lambda: _dispose_in_child(engine_ref))
        self._local = threading.local()
        self._down_until = 0.0
        self._ping_lock = threading.Lock()
        self._ping_probe: _Probe | None = None
        event.listen(self.engine, "checkout", self._on_checkout)

    def open(self, prepare: Callable[[Engine], None], attempts: int = 6) -> None:
        """`prepare(engine)` at start-up (the schema), tried again after a failure that
        a retry can cure (workers starting together); StoreError otherwise."""
        for attempt in range(attempts):
            try:
                prepare(self.engine)
                return
            except (DBAPIError, PoolTimeout) as exc:
                if attempt == attempts - 1 or not isinstance(exc, DBAPIError) or _is_final(exc):
                    raise StoreError(_open_failure(self.backend, self.engine.url, exc)) from None
                time.sleep(0.05 * (attempt + 1))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- time bounds and failures

    def _on_checkout(self, dbapi_connection: Any, _record: object, _proxy: object) -> None:
        op = getattr(self._local, "op", None)
        if op is not None:
            op.dbapi = dbapi_connection

    @contextlib.contextmanager
    def bounded(
        self, what: str, deadline_s: float | None = None, *, within_s: float | None = None, mark_down: bool = True
    ) -> Iterator[None]:
        """Run one database operation within the deadline; StoreUnavailable otherwise.

        `within_s`: the whole operation, pool wait included, is aborted after this long
        (by default: the pool timeout plus the deadline). `mark_down`: a failure makes the
        requests that need the store answer 503 at once for `retry_after_s`; not for an
        operation whose own short bound ran out (a slow commit is not a store that is down)."""
        bound = (
            within_s if within_s is not None else (deadline_s or self.bounds.deadline_s) + self.bounds.pool_timeout_s
        )
        op = _Op(time.monotonic() + bound)
        self._local.op = op
        _watchdog.add(op)
        try:
            yield
        except IntegrityError:
            raise
        except (DBAPIError, PoolTimeout, OSError) as exc:
            kind = "timed out" if op.aborted or _is_lock_wait(exc) else _failure_kind(exc)
            if mark_down or kind != "timed out":
                self.mark_down()
            log.warning("store unavailable: operation=%s reason=%s", what, kind)
            # Imported here, not at the top: the CLI imports this module before `serve` sets
            # PROMETHEUS_MULTIPROC_DIR, and prometheus-client fixes its mode when first imported.
            from cds_service import metrics

            metrics.store_error(what)
            raise StoreUnavailable(retry_after_s=self.bounds.retry_after_s) from None
        else:
            self.mark_up()
        finally:
            _watchdog.remove(op)
            self._local.op = None

    def mark_down(self) -> None:
        """Answer StoreUnavailable at once for `retry_after_s`."""
        self._down_until = time.monotonic() + self.bounds.retry_after_s

    def mark_up(self) -> None:
        self._down_until = 0.0

    def is_down(self) -> bool:
        """True for `retry_after_s` after a failure: requests get a 503 without waiting."""
        return time.monotonic() < self._down_until

    def _fail_fast(self) -> None:
        if self.is_down():
            raise StoreUnavailable(retry_after_s=max(1.0, self._down_until - time.monotonic()))

    def _busy_until(self, conn: Connection, budget_end: float) -> None:
        """SQLite: wait for another process's lock only until `budget_end` (no I/O)."""
        if self.backend == "sqlite":
            left_ms = max(1, int((budget_end - time.monotonic()) * 1000))
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {left_ms}")

    @contextlib.contextmanager
    def _short_busy_wait(self, conn: Connection, within_s: float) -> Iterator[None]:
        """SQLite: wait for another process's write lock at most `within_s`, for this
        transaction only. On the sqlite3 connection itself: through SQLAlchemy the two
        PRAGMAs cost 0.3 ms, a third of a group commit's CPU."""
        raw: Any = conn.connection.driver_connection if self.backend == "sqlite" else None
        if raw is None:
            yield
            return
        raw.execute(f"PRAGMA busy_timeout = {max(1, int(within_s * 1000))}")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                raw.execute(f"PRAGMA busy_timeout = {int(self.bounds.statement_timeout_s * 1000)}")

    def run(
        self,
        what: str,
        operation: Callable[[Connection], T],
        *,
        write: bool = True,
        fail_fast: bool = True,
        within_s: float | None = None,
    ) -> T:
        """`operation(conn)` in one bounded transaction (StoreUnavailable when it cannot).

        Tried once more when the pooled connection was dead (the server restarted), never
        after the deadline. `fail_fast`: answer at once while the store is known down.
        `within_s`: a shorter bound for the whole write, SQLite's wait for another
        process's lock included, whose running out does not mark the store down (see
        `bounded`)."""
        if fail_fast:
            self._fail_fast()
        for attempt in (1, 2):
            stale = False
            try:
                with self.bounded(what, within_s=within_s, mark_down=within_s is None):
                    # SQLite: the wait for this process's write turn and SQLite's own busy
                    # wait share one budget (each had all of it: 4 s for 2): statement_timeout_s,
                    # or `within_s` for an operation with its own short bound.
                    budget_end = time.monotonic() + (self.bounds.statement_timeout_s if within_s is None else within_s)
                    try:
                        if not write:
                            with self.engine.connect() as conn:
                                self._busy_until(conn, budget_end)
                                return operation(conn)
                        with (
                            write_gate(self.engine, budget_end - time.monotonic()),
                            self.engine.begin() as conn,
                        ):
                            if within_s is None:
                                self._busy_until(conn, budget_end)
                                return operation(conn)
                            with self._short_busy_wait(conn, within_s):
                                return operation(conn)
                    except DBAPIError as exc:
                        op = self._local.op
                        stale = bool(exc.connection_invalidated) and not (op and op.aborted) and attempt == 1
                        raise
            except StoreUnavailable:
                if not stale:
                    raise
                self.mark_up()
        raise AssertionError("unreachable")  # pragma: no cover

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True if the database answers `SELECT 1` within `timeout_s` (for /readyz).

        Never raises and never waits longer than `timeout_s`: the probe runs on its own
        thread (one at a time; a probe still running is waited for, not duplicated), itself
        bounded by the connect timeout and the statement deadline."""
        with self._ping_lock:
            probe = self._ping_probe
            if probe is not None and probe.pid != os.getpid():
                probe = None  # started before a fork: its thread is not in this process
            if probe is None or probe.done.is_set():
                probe = _Probe()
                self._ping_probe = probe
                threading.Thread(target=self._probe, args=(probe,), name="db-ping", daemon=True).start()
        return probe.done.wait(timeout_s) and probe.ok

    def _probe(self, probe: _Probe) -> None:
        try:
            with self.bounded("ping", deadline_s=self.bounds.deadline_s), self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            probe.ok = True
        except (StoreUnavailable, SQLAlchemyError, OSError):
            probe.ok = False
        finally:
            probe.done.set()
