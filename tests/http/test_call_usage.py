"""The per-call usage record (issue 19): what each hook call used (the FHIR token, resource
types prefetched / fetched / refused, prefetch keys missing, the time of each step), in the
audit row and as metrics, with no identifier."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from support.chart import Chart

from cds_service.storage.tables import service_calls

from ..fhir.test_prefetch import base, serve_everything

PATIENT_VIEW = "/cds-services/hfs-outcomes-patient-view"
TOKEN = "usage-token-7f3e"
SECRET = "metrics-secret-1"
STAGES = {"prefetch", "record", "evaluate", "render"}


@pytest.fixture
def app_settings() -> dict:
    return {"as_of": "2026-01-15", "metrics_token": SECRET}


def usage_rows(app) -> list[dict]:
    store = app.extensions["cds_service"].store
    assert store.flush_audit(5.0)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(service_calls.c.usage).order_by(service_calls.c.id)).all()
    return [json.loads(row[0]) if row[0] else None for row in rows]


def chart(patient_id: str = "pt-usage-1") -> Chart:
    return Chart(patient_id=patient_id).hfs().mvd("2025-06-10T08:00:00Z")


def test_a_fully_prefetched_call_without_a_token_records_what_it_was_given(app, client):
    assert client.post(PATIENT_VIEW, json=chart().hook_request("patient-view")).status_code == 200
    [usage] = usage_rows(app)
    assert usage["token"] == "none"
    assert usage["resource_types"]["fetched"] == [] and usage["resource_types"]["refused"] == []
    assert {"Condition", "Procedure"} <= set(usage["resource_types"]["prefetched"])
    assert usage["prefetch_keys_missing"] == []
    assert set(usage["timings_ms"]) == STAGES and all(ms >= 0 for ms in usage["timings_ms"].values())


def test_fetched_refused_and_missing_are_recorded_and_counted(app, client, fhir_stub):
    serve_everything(fhir_stub)
    patient_id = "hfs-pat-8812"  # the patient the stub serves
    body = chart(patient_id).hook_request("patient-view", fhir_server=base(fhir_stub), token=TOKEN, prefetch=False)
    body["fhirAuthorization"]["scope"] = "patient/Patient.read patient/Condition.rs patient/Procedure.rs"
    assert client.post(PATIENT_VIEW, json=body).status_code == 200
    [usage] = usage_rows(app)
    assert usage["token"] == "used"
    assert usage["resource_types"] == {
        "prefetched": [],
        "fetched": ["Condition", "Patient", "Procedure"],
        "refused": ["MedicationRequest", "MedicationStatement", "Observation"],
    }
    assert set(usage["prefetch_keys_missing"]) == {
        "patient",
        "conditions",
        "procedures",
        "observations",
        "medicationRequests",
        "medicationStatements",
    }
    text = json.dumps(usage)
    assert TOKEN not in text and patient_id not in text
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"}).get_data(as_text=True)
    assert 'cds_call_fhir_token_total{service="hfs-outcomes-patient-view",token="used"}' in scraped
    assert 'cds_call_resource_types_total{how="refused",resource_type="Observation"}' in scraped
    assert 'cds_prefetch_keys_missing_total{key="observations"}' in scraped
    assert 'cds_hook_call_stage_seconds_count{stage="prefetch"}' in scraped


def test_a_token_the_fhir_server_refuses_is_recorded_as_refused_even_on_a_412(app, client, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/hfs-pat-8812").respond_with_data("no", status=401)
    for kind in ("Condition", "Procedure", "Observation", "MedicationRequest", "MedicationStatement"):
        fhir_stub.expect_request(f"/fhir/{kind}").respond_with_data("no", status=401)
    body = chart("hfs-pat-8812").hook_request("patient-view", fhir_server=base(fhir_stub), token=TOKEN, prefetch=False)
    assert client.post(PATIENT_VIEW, json=body).status_code == 412
    [usage] = usage_rows(app)
    assert usage["token"] == "refused" and "Condition" in usage["resource_types"]["refused"]
    assert "prefetch" in usage["timings_ms"]
