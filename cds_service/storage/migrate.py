"""Schema migrations of the store (Alembic), run on start-up or by `cds-service db upgrade`.

The scripts live in `cds_service/storage/migrations/` (shipped in the wheel). Revision
0001 is the schema of release 0.1.0 exactly; a store created by 0.1.0 has its tables but
no `alembic_version` table, so it is stamped 0001 first and then upgraded. Every upgrade
runs in one transaction under a lock (PostgreSQL: an advisory lock; SQLite: a lock file
next to the database), so workers starting together migrate once and the others wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# Alembic is imported only when a migration or a check needs it (it costs most of a
# second of start-up, in every worker, for a schema that is nearly always current).

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BASELINE_REVISION = "0001"
# pg_advisory_xact_lock key serialising schema changes between workers ("cdsstore").
SCHEMA_LOCK_KEY = 0x6364_7373_746F_7265 & 0x7FFF_FFFF_FFFF_FFFF
MIGRATION_LOCK_WAIT_S = 60.0
_LEGACY_TABLES = {"service_calls", "returned_cards", "feedback", "used_jti"}


def _config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current_revision(connection: Connection) -> str | None:
    """The store's revision; BASELINE for a 0.1.0 store never migrated; None when empty."""
    from alembic.runtime.migration import MigrationContext

    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and set(sa.inspect(connection).get_table_names()) >= _LEGACY_TABLES:
        return BASELINE_REVISION
    return revision


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + MIGRATION_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another process holds {lock_path.name} (a migration?)") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Bring the store to `target`; returns (revision before, revision after)."""
    if target == "head":
        # The common case (every worker start): already current; no lock, no Alembic run.
        current = _recorded_revision(engine)
        if current is not None and current == head_revision():
            return current, current
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        before = current_revision(conn)
        config = _config(conn)
        if before == BASELINE_REVISION and MigrationContext.configure(conn).get_current_revision() is None:
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, target)
        after = MigrationContext.configure(conn).get_current_revision() or ""
    return before, after


def _recorded_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def pending(engine: Engine) -> tuple[str | None, str]:
    """(the store's revision, the revision this code needs)."""
    with engine.connect() as conn:
        return current_revision(conn), head_revision()
