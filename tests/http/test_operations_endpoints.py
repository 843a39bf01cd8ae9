"""/healthz, /readyz and /metrics through the Flask app: no JWT, no patient data, JSON."""

from __future__ import annotations

import time

import pytest
from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.errors import error_code
from cds_service.http import admission, lifecycle

PATIENT_ID = "ops-pt-5521"
SECRET = "scrape-7f3e-secret"


@pytest.fixture
def app(make_app):
    # Signed mode (no allow_unsigned): the operations endpoints must not need a JWT.
    return make_app(allow_unsigned=False, metrics_token=SECRET)


def test_healthz_answers_alive_without_a_jwt(app):
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "alive"}


def test_readyz_is_ready_when_content_is_loaded_and_the_store_answers(app):
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ready", "checks": {"content": "ok", "store": "ok", "draining": "no"}}


def test_readyz_is_503_within_its_timeout_when_the_store_does_not_answer(make_app, monkeypatch):
    app = make_app(allow_unsigned=False, readiness_store_timeout_s=0.3)
    store = app.extensions["cds_service"].store
    monkeypatch.setattr(store, "ping", lambda timeout_s: time.sleep(3) or True)
    started = time.monotonic()
    answer = app.test_client().get("/readyz")
    assert time.monotonic() - started < 1.0
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.get_json()["checks"]["store"] == "unreachable"


def test_readyz_is_503_while_draining(app):
    lifecycle.set_draining(True)
    try:
        answer = app.test_client().get("/readyz")
    finally:
        lifecycle.set_draining(False)
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["draining"] == "yes"


def test_metrics_are_off_unless_a_token_is_set(make_app):
    assert make_app(allow_unsigned=False).test_client().get("/metrics").status_code == 404


def test_metrics_need_the_scrape_token(app):
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200


def test_metrics_count_calls_and_cards_and_carry_no_patient_data(make_app):
    app = make_app(metrics_token=SECRET)
    client = app.test_client()
    answer = client.post("/cds-services/hfs-outcomes-patient-view", json=hfs_after_mvd_patient_view(PATIENT_ID))
    assert answer.status_code == 200 and answer.get_json()["cards"]
    text = client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"}).get_data(as_text=True)
    assert 'cds_hook_calls_total{hook="patient-view",service="hfs-outcomes-patient-view",status="200"}' in text
    assert 'cds_hook_call_duration_seconds_bucket{hook="patient-view"' in text
    assert "cds_cards_fired_total{card=" in text
    assert PATIENT_ID not in text and SECRET not in text


def test_a_call_that_waited_too_long_for_a_thread_is_503_with_retry_after(make_app):
    app = make_app(admission_max_wait_s=0.5)
    admission.stamp(time.monotonic() - 0.8)
    try:
        answer = app.test_client().post(
            "/cds-services/hfs-outcomes-patient-view", json=hfs_after_mvd_patient_view(PATIENT_ID)
        )
    finally:
        admission.clear()
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert error_code(answer.get_json()) == "service_unavailable"


def test_a_call_on_the_shedding_lane_is_503_but_health_is_answered(make_app):
    app = make_app()
    admission.stamp(time.monotonic(), shed=True)
    try:
        client = app.test_client()
        call = client.post("/cds-services/hfs-outcomes-patient-view", json=hfs_after_mvd_patient_view(PATIENT_ID))
        health = client.get("/healthz")
    finally:
        admission.clear()
    assert call.status_code == 503 and call.headers["Retry-After"] == "1"
    assert health.status_code == 200
