"""/readyz says "not ready" when the store answers reads but takes no write: a SQLite file
locked by another process (or full, or read-only) fails every signed call, whose first step
is a jti claim. Before, /readyz pinged with SELECT 1 and said ready throughout. Its answer
still comes within readiness_store_timeout_s."""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy.engine import make_url

TIMEOUT_S = 0.5


def test_readyz_is_not_ready_within_its_timeout_while_the_sqlite_store_is_locked(make_app):
    app = make_app(readiness_store_timeout_s=TIMEOUT_S)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    path = make_url(app.extensions["cds_service"].settings.resolved_database_url).database
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        answer = client.get("/readyz")
        elapsed = time.monotonic() - started
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["checks"]["store"] == "not writable"
        assert answer.headers["Retry-After"] == "1"
        assert elapsed < TIMEOUT_S + 0.3, elapsed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the lock was released"
        time.sleep(0.2)


def test_with_the_jti_memory_fallback_a_locked_store_does_not_stop_readiness(make_app):
    app = make_app(readiness_store_timeout_s=TIMEOUT_S, jti_memory_fallback=True)
    path = make_url(app.extensions["cds_service"].settings.resolved_database_url).database
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
