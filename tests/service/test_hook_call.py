"""One validated hook call, top to bottom (prefetch -> record -> evaluate -> render), and
what it notes for the audit trail: never a raw patient id or a token."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pytest
from support.chart import MVD, Chart

from cds_service import hook_call
from cds_service.http.hook_request import parse_hook_request
from cds_service.storage.audit import AuditNotes

PATIENT_ID = "pt-hook-call-5521"


@pytest.fixture
def runtime(app):
    return app.extensions["cds_service"]


def call(runtime, hook: str, chart: Chart, service_id: str):
    service = runtime.service(service_id)
    request = parse_hook_request(chart.hook_request(hook), service)
    notes = AuditNotes(service_id=service.id, hook=service.hook, started=time.perf_counter())
    return hook_call.answer(runtime.hook_parts, service, request, notes), notes


def test_an_mvd_order_for_a_patient_with_hfs_gets_the_amr_card_and_the_notes_name_it(runtime):
    chart = Chart(patient_id=PATIENT_ID).hfs(onset="2019-03-01").order(MVD)
    cards, notes = call(runtime, "order-sign", chart, "hfs-outcomes-order-sign")
    assert [card_id for _, card_id, _, _ in notes.cards] == ["amr-persistence"]
    [card] = cards
    assert notes.cards == [(card["uuid"], "amr-persistence", card["summary"], "mvd-ordered")]
    assert card["summary"].startswith("Before MVD")


def test_the_notes_keep_the_hook_instance_and_a_hash_of_the_patient_never_the_id(runtime):
    chart = Chart(patient_id=PATIENT_ID).hfs()
    body = chart.hook_request("patient-view")
    service = runtime.service("hfs-outcomes-patient-view")
    notes = AuditNotes(service_id=service.id, hook=service.hook, started=time.perf_counter())
    hook_call.answer(runtime.hook_parts, service, parse_hook_request(body, service), notes)
    assert notes.hook_instance == body["hookInstance"]
    assert notes.patient_hash == runtime.hash_patient(PATIENT_ID)
    assert PATIENT_ID not in repr(notes)


def test_a_chart_no_card_is_about_gets_no_cards_and_notes_none(runtime):
    chart = Chart(patient_id=PATIENT_ID).hypertension()
    cards, notes = call(runtime, "patient-view", chart, "hfs-outcomes-patient-view")
    assert cards == [] and notes.cards == []


def test_the_duration_of_a_call_counts_from_its_start():
    notes = AuditNotes(service_id="s", hook="patient-view", started=time.perf_counter() - 0.25)
    assert 250.0 <= notes.duration_ms < 60_000.0


def test_today_is_the_utc_date():
    before = datetime.now(UTC).date()
    assert before <= hook_call.today() <= datetime.now(UTC).date()


def test_a_call_reads_only_its_parts_not_the_runtime(runtime):
    # HookParts made by hand, with no Runtime behind them: what answer needs is all here.
    seen = []
    parts = hook_call.HookParts(
        fhir=None,
        cards_for=lambda hook, site: seen.append((hook, site)) or runtime.cards_for(hook, site),
        concepts_for=runtime.concepts_for,
        configuration_options=lambda hook: (),
        hash_patient=lambda patient_id: "hash-of-" + patient_id[::-1],
        smart_launch_url=lambda iss: "https://ehr.example/launch" if iss == "https://ehr.example" else None,
    )
    service = runtime.service("hfs-outcomes-order-sign")
    chart = Chart(patient_id=PATIENT_ID).hfs(onset="2019-03-01").order(MVD)
    notes = AuditNotes(service_id=service.id, hook=service.hook, started=time.perf_counter())
    notes.client_iss = "https://ehr.example"
    cards = hook_call.answer(parts, service, parse_hook_request(chart.hook_request("order-sign"), service), notes)
    assert [card_id for _, card_id, _, _ in notes.cards] == ["amr-persistence"] and len(cards) == 1
    assert seen == [("order-sign", None)] and notes.patient_hash == "hash-of-" + PATIENT_ID[::-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.fhir = runtime.fhir  # built once at start-up, never changed by a call


def test_the_runtime_builds_the_parts_once_from_its_own(runtime):
    parts = runtime.hook_parts
    assert parts is runtime.hook_parts
    assert (parts.fhir, parts.evidence, parts.model_status) == (runtime.fhir, runtime.evidence, runtime.model_status)
    assert parts.as_of == runtime.settings.as_of
    assert parts.smart_launch_url("https://issuer.not-trusted.example") is None
