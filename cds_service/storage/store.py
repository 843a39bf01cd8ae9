"""The service's persistent state (SQLAlchemy Core): feedback, the audit trail, used JWT ids.

SQLite by default (a file in the instance folder, WAL journal, busy timeout, so several
gunicorn workers can share it); PostgreSQL when the URL says `postgresql://...` (driven by
psycopg 3). The schema is migrated with Alembic when a Store opens (storage/migrate.py),
or checked only when the setting `db_migrations = "manual"`.

Every database operation is bounded in time (StoreOptions): the connection (connect
timeout, TCP keepalives), the pool wait, the statement (PostgreSQL `statement_timeout`;
SQLite busy timeout), and, on top, a client-side deadline: a watchdog thread closes the
socket of (PostgreSQL) or interrupts (SQLite) an operation that has not finished in time,
because a database that stops answering (a partition: sockets open, no replies) never
sends the server-side timeout. A store that failed answers StoreUnavailable (503 with
Retry-After) at once for `retry_after_s`, instead of making every request wait again.

A hook call that returns cards is answered only once its audit row and its cards'
evidence pages are committed (or spooled): `keep_call`, a group commit (group_commit.py).
On SQLite the commit is on disk when it returns (`synchronous = FULL` in WAL mode; setting
`db_sqlite_synchronous`). Other audit rows (refused calls) are written off the request path
(`submit_call`; see audit_spool.py).

The tables are declared in tables.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

from cds_service.errors import ApiError
from cds_service.storage import migrate
from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.audit_spool import AuditSpool, AuditWriter
from cds_service.storage.feedback import FeedbackEntry, OverrideReason
from cds_service.storage.group_commit import GroupCommit
from cds_service.storage.tables import (
    JTI_BYTES,
    JTI_ISSUER_BYTES,
    LEN_CARD_ID,
    LEN_CARD_UUID,
    LEN_CODE,
    LEN_DISPLAY,
    LEN_HASH,
    LEN_HOOK,
    LEN_HOOK_INSTANCE,
    LEN_INSTANCE,
    LEN_ISSUER,
    LEN_RECORD_ID,
    LEN_SERVICE_ID,
    LEN_SITE,
    LEN_SUMMARY,
    LEN_SYSTEM,
    evidence_pages,
    feedback,
    returned_cards,
    service_calls,
    used_jti,
)
from cds_service.storage.write_gate import write_gate

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
JTI_PRUNE_INTERVAL_S = 300.0


class StoreError(RuntimeError):
    """The database cannot be opened or used; raised at start-up."""


class StoreUnavailable(ApiError, StoreError):
    """The database did not answer in time or refused: 503 with Retry-After, never a 500."""

    def __init__(self, detail: str = "the service's database is unavailable; retry later", retry_after_s=2.0):
        ApiError.__init__(self, 503, "store_unavailable", detail)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


@dataclass(frozen=True)
class StoreOptions:
    """Time bounds and behaviour of a Store (from the settings `db_*`, `audit_*`)."""

    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 5.0
    pool_timeout_s: float = 2.0
    pool_size: int = 5
    max_overflow: int = 10
    keepalives_idle_s: int = 10
    keepalives_interval_s: int = 5
    keepalives_count: int = 3
    retry_after_s: float = 2.0
    migrations: str = "auto"  # "auto": upgrade on open; "manual": refuse an old schema; "none": leave it
    instance_id: str = ""  # which instance answered, in each audit row; "" = host:pid
    spool_dir: Path | None = None  # local audit spool; None: rows the store refuses are lost
    audit_queue_size: int = 1000
    audit_spool_max_bytes: int = 64 * 1024 * 1024
    audit_commit_wait_s: float = 0.5  # a call waits this long for its commit, then spools its row
    sqlite_synchronous: str = "full"  # "full": a commit is on disk when it returns; "normal": not

    @property
    def deadline_s(self) -> float:
        """Client-side bound on one operation once it holds a connection."""
        return self.statement_timeout_s + 0.5


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- values


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredFeedback:
    id: int
    service_id: str
    card_uuid: str
    outcome: str
    accepted_suggestions: tuple[str, ...]
    override_reason: OverrideReason | None
    user_comment: str | None
    outcome_timestamp: datetime  # UTC
    received_at: datetime  # UTC
    site: str | None = None  # the sender's site (None: shared content, or before 0.3.0)


@dataclass(frozen=True)
class IssuedCard:
    """A card this service returned, found by its uuid."""

    call_id: int
    service_id: str
    card_id: str
    called_at: datetime
    site: str | None = None  # the site it was returned at (None: shared content, or before 0.3.0)


@dataclass(frozen=True)
class OverrideReasonCount:
    code: str | None  # None: overridden without a reason
    system: str | None
    display: str | None
    count: int


@dataclass(frozen=True)
class CardUsage:
    card_id: str
    shown: int  # times the card was returned
    feedback: int  # feedback entries received about it
    accepted: int
    overridden: int
    override_reasons: tuple[OverrideReasonCount, ...]

    @property
    def acceptance_rate(self) -> float | None:
        """Share of the feedback received that was `accepted` (None without feedback)."""
        return self.accepted / self.feedback if self.feedback else None

    @property
    def override_rate(self) -> float | None:
        """Share of the feedback received that was `overridden` (None without feedback)."""
        return self.overridden / self.feedback if self.feedback else None


@dataclass(frozen=True)
class Report:
    cards: tuple[CardUsage, ...]  # sorted by card_id
    calls: int  # hook calls audited
    calls_by_status: dict[int, int]
    unlinked_feedback: int  # feedback about card uuids never returned here
    generated_at: datetime
    since: datetime | None = None


# --------------------------------------------------------------------------- engine


def _clean(value: str | None, limit: int | None = None) -> str | None:
    """Text the database will take: no NUL, no unpaired surrogate, at most `limit` chars."""
    if value is None:
        return None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    value = value.replace("\x00", "")
    return value[:limit] if limit is not None else value


def _jti_key_part(value: str, max_bytes: int) -> str:
    """The value itself, or a digest of it when it is too long or not storable as text."""
    try:
        raw = value.encode("utf-8")
        if len(raw) <= max_bytes and "\x00" not in value:
            return value
    except UnicodeEncodeError:
        pass
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


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


def _sqlite_engine(url: URL, options: StoreOptions) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    busy_ms = int(options.statement_timeout_s * 1000)
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
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout_s,
            connect_args={"timeout": busy_ms / 1000, "check_same_thread": False},
        )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: WAL commits are fsync'd before they return, so a call answered after
            # its audit row was committed cannot lose that row to a crash or power cut.
            synchronous = "NORMAL" if options.sqlite_synchronous == "normal" else "FULL"
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine


def _postgresql_engine(url: URL, options: StoreOptions) -> Engine:
    connect_args: dict = {}
    query = dict(url.query)
    if "connect_timeout" not in query:
        # libpq counts whole seconds; psycopg treats less than 2 as 2.
        connect_args["connect_timeout"] = max(2, math.ceil(options.connect_timeout_s))
    if "application_name" not in query:
        connect_args["application_name"] = "cds-service"
    # TCP keepalives: a peer that vanished is noticed on an idle pooled connection.
    for key, value in (
        ("keepalives", 1),
        ("keepalives_idle", options.keepalives_idle_s),
        ("keepalives_interval", options.keepalives_interval_s),
        ("keepalives_count", options.keepalives_count),
        ("tcp_user_timeout", int(options.deadline_s * 1000)),
    ):
        if key not in query:
            connect_args[key] = value
    # Server-side bounds on every statement and lock wait, added to any options in the URL
    # (the tests confine a store to a schema with `options=-csearch_path=...`).
    timeout_ms = int(options.statement_timeout_s * 1000)
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
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout_s,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _dispose_in_child(engine_ref: weakref.ref) -> None:
    engine = engine_ref()
    if engine is not None:
        # The parent's pooled connections must not be shared with a forked worker.
        engine.dispose(close=False)


def _abort_connection(dbapi_connection) -> None:
    """Make an operation blocked on this DBAPI connection fail now (from another thread)."""
    if hasattr(dbapi_connection, "interrupt"):  # sqlite3
        dbapi_connection.interrupt()
        return
    try:
        fd = os.dup(dbapi_connection.fileno())
    except (OSError, AttributeError, ValueError, Exception):
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


def _open_failure(backend: str, url, exc: BaseException) -> str:
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
        self.dbapi = None
        self.aborted = False


class _Watchdog:
    """One thread per process that aborts database operations past their deadline."""

    def __init__(self) -> None:
        self._ops: dict[int, _Op] = {}
        self._lock = threading.Lock()
        self._pid = 0
        self._wake = threading.Event()

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


def feedback_links(cards) -> sa.ColumnElement[bool]:
    """Feedback is about a card returned by a call (`cards`: a selectable with the card's
    `card_uuid` and its call's `site`) when it names the card and came from the card's own
    site: feedback a client of another site (or of the shared content) sent about the uuid
    never counts for that site."""
    return sa.and_(cards.c.card_uuid == feedback.c.card_uuid, feedback.c.site.is_not_distinct_from(cards.c.site))


def _insert_rows(conn, table: sa.Table, rows: list[dict]) -> None:
    """One INSERT for all `rows`. A single row goes as a plain INSERT, whose compiled form
    SQLAlchemy caches (a multi-row VALUES is compiled again for every call: 0.6 ms of a
    hook call's CPU when each call committed its own card and page)."""
    if len(rows) == 1:
        conn.execute(table.insert(), rows[0])
    elif rows:
        conn.execute(table.insert().values(rows))


# --------------------------------------------------------------------------- store


class Store:
    """The database behind the service. One per process; thread-safe (pooled engine)."""

    def __init__(self, database_url: str, options: StoreOptions | None = None) -> None:
        self.options = options = options or StoreOptions()
        url = _database_url(database_url)
        self.backend = url.get_backend_name()
        self.instance_id = (options.instance_id or default_instance_id())[:LEN_INSTANCE]
        self.engine: Engine = (
            _sqlite_engine(url, options) if self.backend == "sqlite" else _postgresql_engine(url, options)
        )
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda ref=weakref.ref(self.engine): _dispose_in_child(ref))
        self._local = threading.local()
        self._down_until = 0.0
        self._ping_lock = threading.Lock()
        self._ping_probe: _Probe | None = None
        event.listen(self.engine, "checkout", self._on_checkout)
        self._next_prune = 0.0
        self._open_schema()
        spool = AuditSpool(options.spool_dir, options.audit_spool_max_bytes) if options.spool_dir else None
        self.group_commit = GroupCommit(
            self.keep_calls,
            spool,
            wait_s=options.audit_commit_wait_s,
            retry_s=options.retry_after_s,
            store_down=self.is_down,
        )
        self.audit_writer = AuditWriter(
            self.record_calls,
            spool,
            queue_size=options.audit_queue_size,
            retry_s=options.retry_after_s,
            store_down=self.is_down,
        )

    # -- lifecycle

    def _open_schema(self) -> None:
        """Migrate to the current schema (or, with manual migrations, check it is current)."""
        attempts = 6
        for attempt in range(attempts):
            try:
                if self.options.migrations == "none":
                    with self.engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                elif self.options.migrations == "manual":
                    current, head = migrate.pending(self.engine)
                    if current != head:
                        raise StoreError(
                            f"the {self.backend} database schema is at revision {current or 'none (empty)'} "
                            f"and this version needs {head}; db_migrations is 'manual': "
                            "run `cds-service db upgrade` first"
                        )
                else:
                    before, after = migrate.upgrade(self.engine)
                    if before != after:
                        log.info("store schema migrated: %s -> %s", before or "empty", after)
                return
            except (DBAPIError, PoolTimeout) as exc:
                if attempt == attempts - 1 or not isinstance(exc, DBAPIError) or _is_final(exc):
                    raise StoreError(_open_failure(self.backend, self.engine.url, exc)) from None
                time.sleep(0.05 * (attempt + 1))

    def upgrade_schema(self) -> tuple[str | None, str]:
        return migrate.upgrade(self.engine)

    def close(self) -> None:
        self.audit_writer.close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- time bounds and failures

    def _on_checkout(self, dbapi_connection, _record, _proxy) -> None:
        op = getattr(self._local, "op", None)
        if op is not None:
            op.dbapi = dbapi_connection

    @contextlib.contextmanager
    def _bounded(self, what: str, deadline_s: float | None = None, *, within_s: float | None = None, mark_down=True):
        """Run one database operation within the deadline; StoreUnavailable otherwise.

        `within_s`: the whole operation, pool wait included, is aborted after this long
        (by default: the pool timeout plus the deadline). `mark_down`: a failure makes the
        requests that need the store answer 503 at once for `retry_after_s`; not for an
        operation whose own short bound ran out (a slow commit is not a store that is down)."""
        bound = (
            within_s if within_s is not None else (deadline_s or self.options.deadline_s) + self.options.pool_timeout_s
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
                self._mark_down()
            log.warning("store unavailable: operation=%s reason=%s", what, kind)
            # Imported here, not at the top: the CLI imports this module before `serve` sets
            # PROMETHEUS_MULTIPROC_DIR, and prometheus-client fixes its mode when first imported.
            from cds_service import metrics

            metrics.store_error(what)
            raise StoreUnavailable(retry_after_s=self.options.retry_after_s) from None
        else:
            self._down_until = 0.0
        finally:
            _watchdog.remove(op)
            self._local.op = None

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self.options.retry_after_s

    def is_down(self) -> bool:
        """True for `retry_after_s` after a failure: requests get a 503 without waiting."""
        return time.monotonic() < self._down_until

    def _fail_fast(self) -> None:
        if self.is_down():
            raise StoreUnavailable(retry_after_s=max(1.0, self._down_until - time.monotonic()))

    def _busy_until(self, conn, budget_end: float) -> None:
        """SQLite: wait for another process's lock only until `budget_end` (no I/O)."""
        if self.backend == "sqlite":
            left_ms = max(1, int((budget_end - time.monotonic()) * 1000))
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {left_ms}")

    def _run(self, what: str, operation, *, write: bool = True, fail_fast: bool = True, within_s: float | None = None):
        """`operation(conn)` in one bounded transaction (StoreUnavailable when it cannot).

        Tried once more when the pooled connection was dead (the server restarted), never
        after the deadline. `fail_fast`: answer at once while the store is known down.
        `within_s`: a shorter bound for the whole operation, whose running out does not
        mark the store down (see _bounded)."""
        if fail_fast:
            self._fail_fast()
        for attempt in (1, 2):
            stale = False
            try:
                with self._bounded(what, within_s=within_s, mark_down=within_s is None):
                    # SQLite: the wait for this process's write turn and SQLite's own busy
                    # wait share one budget (each had all of it: 4 s for 2): statement_timeout_s,
                    # or `within_s` for an operation that sets its own short busy wait.
                    budget_end = time.monotonic() + (self.options.statement_timeout_s if within_s is None else within_s)
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
                    except DBAPIError as exc:
                        op = self._local.op
                        stale = bool(exc.connection_invalidated) and not (op and op.aborted) and attempt == 1
                        raise
            except StoreUnavailable:
                if not stale:
                    raise
                self._down_until = 0.0
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
            with self._bounded("ping", deadline_s=self.options.deadline_s), self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            probe.ok = True
        except (StoreUnavailable, SQLAlchemyError, OSError):
            probe.ok = False
        finally:
            probe.done.set()

    # -- audit writer (for /metrics and shutdown)

    def keep_call(self, call: CallRecord) -> bool:
        """Commit one audit row (and the evidence pages it carries) before the call is
        answered, batched with the rows of concurrent calls; spooled locally when the store
        cannot take it in time. False only when neither could keep it: answer 503 then."""
        return self.group_commit.keep(self._identified(call))

    def submit_call(self, call: CallRecord) -> bool:
        """Queue one audit row for the background writer; never waits for the database.

        False only when the row could be neither queued nor spooled (logged at ERROR)."""
        return self.audit_writer.submit(self._identified(call))

    def _identified(self, call: CallRecord) -> CallRecord:
        if call.record_id is None or call.instance_id is None:
            call = dataclasses.replace(
                call,
                record_id=call.record_id or uuid.uuid4().hex,
                instance_id=call.instance_id or self.instance_id,
            )
        return call

    def flush_audit(self, timeout_s: float = 5.0) -> bool:
        return self.audit_writer.flush(timeout_s)

    def audit_spool_depth(self) -> int:
        """Audit rows waiting in the local spool (every process of this instance folder)."""
        return self.audit_writer.spool_depth()

    def audit_queue_depth(self) -> int:
        """Audit rows queued in this process, not yet written."""
        return self.audit_writer.queue_depth()

    def read(self, what: str, operation):
        """`operation(conn)` reading the store, bounded in time: StoreUnavailable (503 with
        Retry-After) when the database refuses or does not answer within the deadline."""
        return self._run(what, operation, write=False)

    # -- feedback

    def record_feedback(self, service_id: str, entries: Iterable[FeedbackEntry], site: str | None = None) -> int:
        """Store validated feedback entries (feedback.parse_feedback); returns how many.
        `site`: the sending client's site (None: the shared content)."""
        received_at = _utcnow()
        rows = []
        for entry in entries:
            reason = entry.override_reason
            rows.append(
                {
                    "service_id": _clean(service_id, LEN_SERVICE_ID),
                    "card_uuid": _clean(entry.card_uuid.lower(), LEN_CARD_UUID),
                    "outcome": entry.outcome,
                    "accepted_suggestions": json.dumps(list(entry.accepted_suggestions)),
                    "override_reason_code": _clean(reason.code, LEN_CODE) if reason else None,
                    "override_reason_system": _clean(reason.system, LEN_SYSTEM) if reason else None,
                    "override_reason_display": _clean(reason.display, LEN_DISPLAY) if reason else None,
                    "user_comment": _clean(entry.user_comment),
                    "outcome_timestamp": entry.outcome_timestamp,
                    "received_at": received_at,
                    "site": _clean(site, LEN_SITE),
                }
            )
        if rows:
            self._run("record_feedback", lambda conn: conn.execute(feedback.insert(), rows))
        return len(rows)

    def mark_evidence_opened(self, card_uuid: str) -> None:
        """The card's evidence page was opened (the first time counts)."""
        statement = (
            returned_cards.update()
            .where(returned_cards.c.card_uuid == card_uuid.lower())
            .where(returned_cards.c.evidence_opened_at.is_(None))
            .values(evidence_opened_at=_utcnow())
        )
        self._run("mark_evidence_opened", lambda conn: conn.execute(statement))

    def feedback_for(self, card_uuid: str) -> list[StoredFeedback]:
        """Feedback received about one card, oldest first."""
        query = sa.select(feedback).where(feedback.c.card_uuid == card_uuid.lower()).order_by(feedback.c.id)
        rows = self._run("feedback_for", lambda conn: conn.execute(query).mappings().all(), write=False)
        return [
            StoredFeedback(
                id=row["id"],
                service_id=row["service_id"],
                card_uuid=row["card_uuid"],
                outcome=row["outcome"],
                accepted_suggestions=tuple(json.loads(row["accepted_suggestions"])),
                override_reason=OverrideReason(
                    code=row["override_reason_code"],
                    system=row["override_reason_system"],
                    display=row["override_reason_display"],
                )
                if row["override_reason_code"] is not None
                else None,
                user_comment=row["user_comment"],
                outcome_timestamp=row["outcome_timestamp"],
                received_at=row["received_at"],
                site=row["site"],
            )
            for row in rows
        ]

    # -- audit trail

    def record_call(self, call: CallRecord) -> int:
        """Write one hook call and the cards it returned, atomically; returns the call id.

        Synchronous (tests, tools). Hook calls use `submit_call`, off the request path."""
        return self._run("record_call", lambda conn: self._insert_call(conn, call), fail_fast=False)

    def record_calls(self, calls: list[CallRecord]) -> int:
        """Write audit rows (the background writer, the spool replay); returns rows written.

        Idempotent: a row whose `record_id` is already stored is skipped, so a spooled row
        replayed twice is kept once. StoreUnavailable when the store cannot be written."""

        def write_all(conn) -> int:
            self._insert_calls(conn, calls)
            return len(calls)

        try:
            return self._run("record_calls", write_all, fail_fast=False)
        except IntegrityError:
            pass
        written = 0
        for call in calls:
            try:
                self._run("record_calls", lambda conn, call=call: self._insert_call(conn, call), fail_fast=False)
                written += 1
            except IntegrityError:
                continue  # already stored (same record_id)
        return written

    def keep_calls(self, calls: list[CallRecord]) -> None:
        """Commit the rows of calls waiting for their answer (group_commit.py), within
        `audit_commit_wait_s`: StoreUnavailable when it cannot (the rows are then spooled).

        A commit that runs out of that short bound does not mark the store down (other
        operations keep their own bounds); a store that refuses does. On SQLite the wait for
        another process's write lock is cut to the same bound for this transaction."""
        within_s = self.options.audit_commit_wait_s
        sqlite = self.backend == "sqlite"

        short = f"PRAGMA busy_timeout = {max(1, int(within_s * 1000))}"
        usual = f"PRAGMA busy_timeout = {int(self.options.statement_timeout_s * 1000)}"

        def write(conn) -> None:
            # On the sqlite3 connection itself: through SQLAlchemy the two PRAGMAs cost
            # 0.3 ms, a third of the commit's CPU.
            raw = conn.connection.driver_connection if sqlite else None
            if raw is not None:
                raw.execute(short)
            try:
                self._insert_calls(conn, calls)
            finally:
                if raw is not None:
                    with contextlib.suppress(Exception):
                        raw.execute(usual)

        try:
            self._run("keep_calls", write, fail_fast=False, within_s=within_s)
        except IntegrityError:
            self.record_calls(calls)  # one of them already stored (a replayed spool): row by row

    @staticmethod
    def _insert_call(conn, call: CallRecord) -> int:
        return Store._insert_calls(conn, [call])[0]

    @staticmethod
    def _insert_calls(conn, calls: list[CallRecord]) -> list[int]:
        """The rows of `calls` and of the cards they returned, in two statements whatever the
        number of calls (executemany with RETURNING, in the calls' order).

        One statement per row kept the transaction, and on SQLite the database's only write
        lock, open for as long as it took the writer thread to get the GIL back after each
        statement: with request threads busy that was up to 0.8 s per batch, and the
        evidence-page writer (and a jti claim) waiting behind it ran into the busy timeout."""
        if not calls:
            return []
        result = conn.execute(
            service_calls.insert().returning(service_calls.c.id, sort_by_parameter_order=True),
            [
                {
                    "called_at": call.called_at,
                    "service_id": _clean(call.service_id, LEN_SERVICE_ID),
                    "hook": _clean(call.hook, LEN_HOOK),
                    "hook_instance": _clean(call.hook_instance, LEN_HOOK_INSTANCE),
                    "patient_hash": _clean(call.patient_hash, LEN_HASH),
                    "outcome_status": int(call.outcome_status),
                    "duration_ms": float(call.duration_ms),
                    "content_version": _clean(call.content_version or ""),
                    "client_iss": _clean(call.client_iss, LEN_ISSUER),
                    "instance_id": _clean(call.instance_id, LEN_INSTANCE),
                    "record_id": _clean(call.record_id, LEN_RECORD_ID),
                    "usage": call.usage,
                    "site": _clean(call.site, LEN_SITE),
                }
                for call in calls
            ],
        )
        ids = [int(row[0]) for row in result]
        cards = [
            {
                "call_id": call_id,
                "card_uuid": _clean(card.card_uuid.lower(), LEN_CARD_UUID),
                "card_id": _clean(card.card_id, LEN_CARD_ID),
                "summary": _clean(card.summary, LEN_SUMMARY),
                "situation": _clean(card.situation, LEN_CARD_ID),
            }
            for call_id, call in zip(ids, calls, strict=True)
            for card in (ReturnedCard(*c) for c in call.cards)
        ]
        _insert_rows(conn, returned_cards, cards)
        _insert_rows(conn, evidence_pages, [page._asdict() for call in calls for page in call.pages])
        return ids

    def prune_audit(self, older_than: datetime) -> int:
        """Delete audit rows (calls and the cards they returned) from before `older_than`.

        Feedback rows are kept (they are the clinicians' answers, not the audit trail).
        Returns how many calls went."""

        def prune(conn) -> int:
            old_calls = sa.select(service_calls.c.id).where(service_calls.c.called_at < older_than)
            conn.execute(returned_cards.delete().where(returned_cards.c.call_id.in_(old_calls)))
            result = conn.execute(service_calls.delete().where(service_calls.c.called_at < older_than))
            return result.rowcount or 0

        return self._run("prune_audit", prune, fail_fast=False)

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The call that returned this card uuid, or None if this service never did."""
        query = (
            sa.select(
                returned_cards.c.call_id,
                service_calls.c.service_id,
                returned_cards.c.card_id,
                service_calls.c.called_at,
                service_calls.c.site,
            )
            .join(service_calls, service_calls.c.id == returned_cards.c.call_id)
            .where(returned_cards.c.card_uuid == card_uuid.lower())
            .order_by(returned_cards.c.id)
            .limit(1)
        )
        row = self._run("issued_card", lambda conn: conn.execute(query).first(), write=False)
        return IssuedCard(*row) if row else None

    # -- JWT replay protection

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (issuer, jti) is seen, False on every later claim.

        Atomic across processes: the unique constraint decides, not a prior read. Keep the
        row at least until the token can no longer pass the expiry check (exp + leeway).
        StoreUnavailable (503) when the store cannot answer: the check fails closed.
        """
        now = _utcnow()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + JTI_PRUNE_INTERVAL_S
            with contextlib.suppress(StoreUnavailable):
                self.prune_expired_jti(now)
        row = {
            "issuer": _jti_key_part(issuer, JTI_ISSUER_BYTES),
            "jti": _jti_key_part(jti, JTI_BYTES),
            "expires_at": expires_at,
        }
        try:
            self._run("claim_jti", lambda conn: conn.execute(used_jti.insert(), row))
        except IntegrityError:
            return False
        return True

    def prune_expired_jti(self, now: datetime | None = None) -> int:
        """Forget JWT ids whose tokens have expired; returns how many rows went."""
        now = now or _utcnow()
        result = self._run("prune_jti", lambda conn: conn.execute(used_jti.delete().where(used_jti.c.expires_at < now)))
        return result.rowcount or 0

    # -- usage report

    def usage_report(self, since: datetime | None = None, site: str | None = None) -> Report:
        """Per card file: times shown, feedback received, outcomes, rates, override reasons.

        `since` limits the report to calls made and feedback received from that moment;
        `site` to the calls evaluated with that site's overlay (the site stored in each audit
        row) and the feedback its clients sent about them (one site of a multi-site
        deployment). Feedback counts for a card only when it came from the card's own site.
        """
        calls_joined = returned_cards.join(service_calls, service_calls.c.id == returned_cards.c.call_id)
        card_of_uuid = (
            sa.select(
                returned_cards.c.card_uuid,
                service_calls.c.site,
                sa.func.min(returned_cards.c.card_id).label("card_id"),
            )
            .select_from(calls_joined)
            .group_by(returned_cards.c.card_uuid, service_calls.c.site)
        )
        if site is not None:
            card_of_uuid = card_of_uuid.where(service_calls.c.site == site)
        card_of_uuid = card_of_uuid.subquery("card_of_uuid")
        linked = feedback.join(card_of_uuid, feedback_links(card_of_uuid))
        shown_q = (
            sa.select(returned_cards.c.card_id, sa.func.count().label("n"))
            .select_from(calls_joined)
            .group_by(returned_cards.c.card_id)
        )
        outcomes_q = (
            sa.select(card_of_uuid.c.card_id, feedback.c.outcome, sa.func.count().label("n"))
            .select_from(linked)
            .group_by(card_of_uuid.c.card_id, feedback.c.outcome)
        )
        reasons_q = (
            sa.select(
                card_of_uuid.c.card_id,
                feedback.c.override_reason_code,
                feedback.c.override_reason_system,
                sa.func.max(feedback.c.override_reason_display).label("display"),
                sa.func.count().label("n"),
            )
            .select_from(linked)
            .where(feedback.c.outcome == "overridden")
            .group_by(
                card_of_uuid.c.card_id,
                feedback.c.override_reason_code,
                feedback.c.override_reason_system,
            )
        )
        unlinked_q = (
            sa.select(sa.func.count())
            .select_from(feedback)
            .where(
                ~sa.exists()
                .select_from(calls_joined)
                .where(returned_cards.c.card_uuid == feedback.c.card_uuid)
                .where(feedback.c.site.is_not_distinct_from(service_calls.c.site))
            )
        )
        status_q = sa.select(service_calls.c.outcome_status, sa.func.count()).group_by(service_calls.c.outcome_status)
        if site is not None:
            shown_q = shown_q.where(service_calls.c.site == site)
            status_q = status_q.where(service_calls.c.site == site)
            unlinked_q = unlinked_q.where(feedback.c.site == site)
        if since is not None:
            shown_q = shown_q.where(service_calls.c.called_at >= since)
            outcomes_q = outcomes_q.where(feedback.c.received_at >= since)
            reasons_q = reasons_q.where(feedback.c.received_at >= since)
            unlinked_q = unlinked_q.where(feedback.c.received_at >= since)
            status_q = status_q.where(service_calls.c.called_at >= since)

        with self._bounded("usage_report", deadline_s=10 * self.options.deadline_s), self.engine.connect() as conn:
            shown = {card_id: n for card_id, n in conn.execute(shown_q)}
            outcomes: dict[str, dict[str, int]] = {}
            for card_id, outcome, n in conn.execute(outcomes_q):
                outcomes.setdefault(card_id, {})[outcome] = n
            reasons: dict[str, list[OverrideReasonCount]] = {}
            for card_id, code, system, display, n in conn.execute(reasons_q):
                reasons.setdefault(card_id, []).append(
                    OverrideReasonCount(code=code, system=system, display=display, count=n)
                )
            unlinked = conn.execute(unlinked_q).scalar_one()
            calls_by_status = {int(status): n for status, n in conn.execute(status_q)}

        cards = []
        for card_id in sorted(set(shown) | set(outcomes)):
            counts = outcomes.get(card_id, {})
            accepted = counts.get("accepted", 0)
            overridden = counts.get("overridden", 0)
            cards.append(
                CardUsage(
                    card_id=card_id,
                    shown=shown.get(card_id, 0),
                    feedback=accepted + overridden,
                    accepted=accepted,
                    overridden=overridden,
                    override_reasons=tuple(
                        sorted(
                            reasons.get(card_id, []),
                            key=lambda r: (-r.count, r.code is None, r.system or "", r.code or ""),
                        )
                    ),
                )
            )
        return Report(
            cards=tuple(cards),
            calls=sum(calls_by_status.values()),
            calls_by_status=dict(sorted(calls_by_status.items())),
            unlinked_feedback=int(unlinked),
            generated_at=_utcnow(),
            since=since,
        )
