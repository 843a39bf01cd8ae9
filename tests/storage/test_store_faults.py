"""A database that refuses, or stops answering, while the service runs (issue 10).

PostgreSQL (the real server on 127.0.0.1:5432) is reached through a loopback TCP proxy
that the test cuts (connection refused) or black-holes (sockets open, no replies). What
must hold: no hook call waits much longer than the statement timeout; every store failure
answers 503 with Retry-After (never 500); the jti replay check fails closed unless the
memory fallback is on; and every call answered while the database was away is audited
once it is back, across a restart too.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
import sqlalchemy as sa
from support.db_fixture import FAST_STORE
from support.scenario_requests import hfs_after_mvd_patient_view
from support.served import ClientSigner

from cds_service.errors import error_code
from cds_service.http.app import create_app

pytestmark = pytest.mark.postgres

SERVICE = "/cds-services/hfs-outcomes-patient-view"
BASE = "http://localhost"
FAST = FAST_STORE
# Longest a request may take while the database is away: connect timeout (2 s, libpq's
# minimum) + the statement deadline + slack for a loaded machine; far below the 35 s the
# issue saw.
BOUND_S = 4.0


@pytest.fixture
def proxy(postgres_proxy):
    return postgres_proxy


def signed_app(tmp_path, proxy, signer, **settings):
    (tmp_path / "jwks.json").write_text(json.dumps(signer.jwks()))
    trust = tmp_path / "trust.toml"
    trust.write_text('[[issuers]]\niss = "https://ehr.test.example/"\njwks_file = "jwks.json"\n')
    return create_app(
        instance_path=tmp_path / "instance",
        database_url=proxy.database_url,
        trust_file=str(trust),
        public_base_url=BASE,
        **{**FAST, **settings},
    )


def unsigned_app(folder, proxy, **settings):
    return create_app(
        instance_path=folder, database_url=proxy.database_url, allow_unsigned=True, **{**FAST, **settings}
    )


def auth(signer, path):
    return {"Authorization": "Bearer " + signer.token(BASE + path)}


def audit_rows(direct_url) -> list[tuple]:
    engine = sa.create_engine(direct_url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT hook_instance, outcome_status, instance_id FROM service_calls").all()
    finally:
        engine.dispose()


def feedback_body() -> dict:
    return {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-22T10:00:00Z",
            }
        ]
    }


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_signed_calls_discovery_and_feedback_answer_503_with_retry_after_while_the_database_is_away(
    tmp_path, proxy, fault
):
    signer = ClientSigner()
    app = signed_app(tmp_path, proxy, signer)
    client = app.test_client()
    assert client.get("/cds-services", headers=auth(signer, "/cds-services")).status_code == 200

    getattr(proxy, fault)()
    answers = []
    for n in range(4):
        answers.append(timed(lambda: client.get("/cds-services", headers=auth(signer, "/cds-services"))))
        answers.append(
            timed(
                lambda n=n: client.post(
                    SERVICE, json=hfs_after_mvd_patient_view(f"away-{n}"), headers=auth(signer, SERVICE)
                )
            )
        )
        answers.append(
            timed(lambda: client.post(SERVICE + "/feedback", json=feedback_body(), headers=auth(signer, SERVICE)))
        )
    for response, seconds in answers:
        assert response.status_code == 503, response.get_data(as_text=True)
        assert int(response.headers["Retry-After"]) >= 1
        assert error_code(response.get_json()) == "store_unavailable"
        assert seconds < BOUND_S
    # The first failure opens the breaker: the others answer at once.
    assert sorted(seconds for _, seconds in answers)[len(answers) // 2] < 0.5

    proxy.restore()
    time.sleep(FAST["db_retry_after_s"] + 0.1)
    listed = client.get("/cds-services", headers=auth(signer, "/cds-services"))
    assert listed.status_code == 200
    app.extensions["cds_service"].store.close()


def test_unsigned_hook_calls_do_not_wait_for_a_black_holed_database(tmp_path, proxy):
    app = unsigned_app(tmp_path / "instance", proxy)
    client = app.test_client()
    assert client.post(SERVICE, json=hfs_after_mvd_patient_view("warm")).status_code == 200
    store = app.extensions["cds_service"].store
    assert store.flush_audit(5)

    proxy.blackhole()
    durations = []
    for n in range(10):
        response, seconds = timed(lambda n=n: client.post(SERVICE, json=hfs_after_mvd_patient_view(f"bh-{n}")))
        assert response.status_code == 200
        durations.append(seconds)
    assert max(durations) < 1.0, durations  # the audit row is never written on the request path
    assert not store.ping(0.5)

    proxy.restore()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(audit_rows(proxy.direct_url)) < 11:
        time.sleep(0.2)
    assert store.ping(2.0)
    store.close()
    rows = audit_rows(proxy.direct_url)
    assert sorted(r[0] for r in rows).count("") == 0
    assert len(rows) == 11


def test_every_call_answered_while_the_database_was_refused_is_audited_after_it_is_back_and_a_restart(
    tmp_path, proxy, caplog
):
    folder = tmp_path / "instance"
    proxy_calls = 12
    app = unsigned_app(folder, proxy, instance_id="node-a")
    client = app.test_client()
    proxy.cut()
    for n in range(proxy_calls):
        body = hfs_after_mvd_patient_view(f"down-{n}")
        body["hookInstance"] = str(uuid.uuid4())
        assert client.post(SERVICE, json=body).status_code == 200
    store = app.extensions["cds_service"].store
    assert store.flush_audit(10)
    assert app.extensions["cds_service"].audit_spool_depth() == proxy_calls
    store.close()  # the process stops while the database is still away

    proxy.restore()
    with caplog.at_level(logging.INFO, logger="cds_service.storage.audit_writer"):
        restarted = unsigned_app(folder, proxy, instance_id="node-a")
        runtime = restarted.extensions["cds_service"]
        # the replay runs on the writer's thread: wait for the spool to empty and the rows
        # to be readable (on a loaded machine the first replay can be deferred once)
        deadline = time.monotonic() + 20
        rows = []
        while time.monotonic() < deadline and (runtime.audit_spool_depth() or len(rows) < proxy_calls):
            time.sleep(0.2)
            rows = audit_rows(proxy.direct_url)
    assert runtime.audit_spool_depth() == 0
    rows = audit_rows(proxy.direct_url)
    assert len(rows) == proxy_calls
    assert {r[1] for r in rows} == {200} and {r[2] for r in rows} == {"node-a"}
    assert len({r[0] for r in rows}) == proxy_calls
    runtime.store.close()


def test_the_jti_check_may_fall_back_to_memory_when_allowed_and_says_so(tmp_path, proxy, caplog):
    signer = ClientSigner()
    app = signed_app(tmp_path, proxy, signer, jti_memory_fallback=True)
    client = app.test_client()
    proxy.cut()
    headers = auth(signer, "/cds-services")
    with caplog.at_level(logging.WARNING):
        assert client.get("/cds-services", headers=headers).status_code == 200
        assert client.get("/cds-services", headers=headers).status_code == 401  # replay, from memory
        assert client.get("/cds-services", headers=auth(signer, "/cds-services")).status_code == 200
    warnings = [r for r in caplog.records if "jti_memory_fallback" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)

    proxy.restore()
    time.sleep(FAST["db_retry_after_s"] + 0.1)
    # Claimed in memory during the outage: still refused once the store is back.
    assert client.get("/cds-services", headers=headers).status_code == 401
    assert client.get("/cds-services", headers=auth(signer, "/cds-services")).status_code == 200
    app.extensions["cds_service"].store.close()


def test_ping_answers_within_its_timeout_whatever_the_database_does(proxy):
    from cds_service.storage.store import Store, StoreOptions

    store = Store(proxy.database_url, StoreOptions(statement_timeout_s=0.5, connect_timeout_s=2, retry_after_s=1.0))
    try:
        assert store.ping(2.0)
        for fault in ("blackhole", "cut"):
            getattr(proxy, fault)()
            for _ in range(3):
                started = time.monotonic()
                assert store.ping(0.3) is False
                assert time.monotonic() - started < 0.6
            proxy.restore()
            deadline = time.monotonic() + 10
            while not store.ping(0.5) and time.monotonic() < deadline:
                pass
            assert store.ping(0.5)
    finally:
        store.close()


def test_postgresql_connections_carry_the_statement_timeout_and_keepalives(postgres_url):
    from cds_service.storage.store import Store, StoreOptions

    with Store(postgres_url, StoreOptions(statement_timeout_s=0.75, keepalives_idle_s=7)) as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "750ms"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "750ms"
            # The schema confinement given in the URL's own options is kept.
            assert conn.exec_driver_sql("SHOW search_path").scalar_one().startswith("cds_test_")
            info = conn.connection.dbapi_connection.info
            params = info.get_parameters()
            assert params["keepalives"] == "1" and params["keepalives_idle"] == "7"
        # A statement that runs longer than the timeout is stopped: 503, not a hang.
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            store.db.run("sleep", lambda conn: conn.exec_driver_sql("SELECT pg_sleep(5)"), fail_fast=False)
        assert getattr(caught.value, "status", None) == 503
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_feedback_answers_503_with_retry_after_when_the_database_is_away(tmp_path, proxy, fault):
    app = unsigned_app(tmp_path / "instance", proxy)
    client = app.test_client()
    assert client.post(SERVICE + "/feedback", json=feedback_body()).status_code == 200
    getattr(proxy, fault)()
    for _ in range(3):
        response, seconds = timed(lambda: client.post(SERVICE + "/feedback", json=feedback_body()))
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert seconds < BOUND_S
    proxy.restore()
    time.sleep(FAST["db_retry_after_s"] + 0.1)
    assert client.post(SERVICE + "/feedback", json=feedback_body()).status_code == 200
    app.extensions["cds_service"].store.close()
