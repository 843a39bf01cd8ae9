"""Database fixtures (pytest plugin, listed in tests/conftest.py `pytest_plugins`).

- `store_url`: parametrized over SQLite and PostgreSQL; each test gets an empty database
  (a fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards).
- `database_url`: one empty database for integration tests. SQLite unless the environment
  says `CDS_TEST_DATABASE=postgresql`.
- `postgres_url`: an empty PostgreSQL schema, for tests that need PostgreSQL itself.
- `postgres_proxy`: a TcpProxy in front of that PostgreSQL (support/tcp_proxy.py), for
  fault tests: `database_url` through the proxy, `direct_url` around it. `FAST_STORE` are
  the short store bounds those tests run with.

PostgreSQL is the server on 127.0.0.1:5432, database `test` (override the base URL with
`CDS_TEST_POSTGRES_URL`). A schema is made private to a test by the connection's
`search_path`, given in the URL (`options=-csearch_path=<schema>`), so every Store, engine
or child process opened on that URL sees only that schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.tcp_proxy import TcpProxy

POSTGRES_BASE_URL = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_postgres_error: list[str] = []


def _admin_engine() -> sa.Engine:
    return sa.create_engine(POSTGRES_BASE_URL, connect_args={"connect_timeout": 3})


def _postgres_available() -> str | None:
    """None when the server answers, else why not (checked once per session)."""
    if not _postgres_error:
        engine = _admin_engine()
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            _postgres_error.append("")
        except sa.exc.OperationalError as exc:
            _postgres_error.append(f"PostgreSQL at {POSTGRES_BASE_URL} unavailable: {exc.orig}")
        finally:
            engine.dispose()
    return _postgres_error[0] or None


def fresh_postgres_schema() -> Iterator[str]:
    """Create an empty schema, yield a URL confined to it, drop it afterwards."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"cds_test_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine()
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_BASE_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def fresh_sqlite_url(folder: Path) -> str:
    # A nested folder that does not exist yet: the Store must create it.
    return f"sqlite:///{(folder / 'instance' / 'cds-service.sqlite3').resolve()}"


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def store_url(request, tmp_path) -> Iterator[str]:
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        yield fresh_sqlite_url(tmp_path)
    else:
        yield from fresh_postgres_schema()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL schema (skips when the server is not running)."""
    yield from fresh_postgres_schema()


# Store bounds short enough for a fault test (the connect timeout: libpq's minimum, 2 s).
FAST_STORE = {
    "db_statement_timeout_s": 0.5,
    "db_connect_timeout_s": 2,
    "db_pool_timeout_s": 0.5,
    "db_retry_after_s": 1.0,
}


@pytest.fixture
def postgres_proxy(postgres_url) -> Iterator[TcpProxy]:
    """A proxy in front of the test's PostgreSQL schema, whose faults the test sets."""
    url = make_url(postgres_url)
    proxy = TcpProxy(url.port or 5432)
    proxy.database_url = proxy.url_for(url)
    proxy.direct_url = postgres_url
    yield proxy
    proxy.close()


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    """An empty database for integration tests (SQLite unless CDS_TEST_DATABASE=postgresql)."""
    if os.environ.get("CDS_TEST_DATABASE", "sqlite").lower().startswith("postgres"):
        yield from fresh_postgres_schema()
    else:
        yield fresh_sqlite_url(tmp_path)
