"""The composition root: what is built once per process (content, store, trust, HTTP pool),
and what a Runtime answers for every call (which cards a hook runs, the audit row)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest
from support.chart import MVD, Chart

from cds_service import hook_call
from cds_service.config import ConfigError, load_settings
from cds_service.content.cards import content_versions
from cds_service.errors import ApiError
from cds_service.startup import Runtime, build_runtime, load_overlay
from cds_service.storage.audit import AuditNotes, build_call_record

SERVICES = {"hfs-outcomes-patient-view", "hfs-outcomes-order-select", "hfs-outcomes-order-sign"}


@pytest.fixture
def runtime(tmp_path):
    rt = build_runtime(load_settings({"instance_path": tmp_path / "instance"}, environ={}))
    yield rt
    rt.close()


def test_start_up_creates_the_instance_folder_and_loads_services_cards_and_concepts(tmp_path, runtime):
    assert (tmp_path / "instance").is_dir()
    assert set(runtime.services) == SERVICES
    assert {card.id for card in runtime.cards} == {
        "rfa-recurrence",
        "amr-persistence",
        "btxa-response",
        "spinal-metastasis-mwa",
        "mvd-recurrence",
    }
    assert runtime.content_version == content_versions(list(runtime.cards))
    assert runtime.concepts is not None and runtime.trust.issuers == {}


def test_closing_a_runtime_writes_what_is_pending_and_stops_its_threads(tmp_path):
    """A process that builds many apps (the test suite) must not keep their threads: they
    pile up with everything they hold, and every full garbage collection, which stops all
    threads, then takes longer."""
    before = set(threading.enumerate())
    rt = build_runtime(load_settings({"instance_path": tmp_path / "instance"}, environ={}))
    token, page = rt.evidence.new_page({"card_id": "mvd-recurrence"})
    record = build_call_record(
        service_id="s", hook="patient-view", hook_instance="h", outcome_status=200, duration_ms=1.0, pages=[page]
    )
    assert rt.store.keep_call(record)
    rt.store.submit_call(dataclasses.replace(record, outcome_status=400, pages=(), record_id=None))
    ours = [t for t in set(threading.enumerate()) - before if t.name == "audit-writer"]
    assert [t.name for t in ours] == ["audit-writer"]  # the commit of a 200 needs no thread

    rt.close()

    assert not [t.name for t in ours if t.is_alive()]
    assert rt.evidence.pages.get(token).data == {"card_id": "mvd-recurrence"}
    assert rt.store.usage_report().calls_by_status == {200: 1, 400: 1}
    rt.close()  # closing again is harmless


def test_a_hook_runs_exactly_the_cards_written_for_it(runtime):
    for hook in ("patient-view", "order-select", "order-sign"):
        assert {c.id for c in runtime.cards_for(hook)} == {c.id for c in runtime.cards if hook in c.hooks}
    assert {c.id for c in runtime.cards_for("order-sign")} >= {"btxa-response", "amr-persistence"}
    assert runtime.cards_for("encounter-start") == ()


def test_an_unknown_service_id_is_a_404_that_says_where_the_services_are_listed(runtime):
    assert runtime.service("hfs-outcomes-order-sign").hook == "order-sign"
    with pytest.raises(ApiError) as refused:
        runtime.service("no-such-service")
    assert refused.value.status == 404 and refused.value.error == "unknown_service"
    assert "GET /cds-services" in refused.value.detail


def test_a_patient_id_is_kept_only_as_a_keyed_hash(runtime, tmp_path):
    digest = runtime.hash_patient("pt-startup-7731")
    assert digest == runtime.hash_patient("pt-startup-7731") != runtime.hash_patient("pt-startup-7732")
    assert "pt-startup-7731" not in digest
    other = build_runtime(load_settings({"instance_path": tmp_path / "other"}, environ={}))
    try:
        assert other.hash_patient("pt-startup-7731") != digest  # a key of its own per instance
    finally:
        other.fhir.close()
        other.store.close()


def _notes(**kw) -> AuditNotes:
    notes = AuditNotes(service_id="hfs-outcomes-patient-view", hook="patient-view", started=time.perf_counter())
    notes.hook_instance = "4e5b8a5e-4d0a-4f0e-9e0f-2c0d1f9b7a11"
    notes.status = 200
    for key, value in kw.items():
        setattr(notes, key, value)
    return notes


def test_audit_keeps_one_row_per_call_with_the_cards_it_returned(runtime):
    card_uuid = "0b8f3a8e-6f55-4c4f-9d1e-5a1f6c7d8e9f"
    runtime.audit(_notes(cards=[(card_uuid, "mvd-recurrence", "MVD 8 months ago")]))
    assert runtime.store.flush_audit(5.0)  # audit rows are written off the request path
    issued = runtime.store.issued_card(card_uuid)
    assert issued is not None
    assert (issued.service_id, issued.card_id) == ("hfs-outcomes-patient-view", "mvd-recurrence")


def test_a_store_failure_while_auditing_is_logged_by_type_and_does_not_fail_the_call(runtime, monkeypatch, caplog):
    # The row goes to the store's audit writer; a failed write is logged by type
    # (never the exception's text, which could name hosts or users) and the row is kept
    # in the local spool or counted as lost, never raised into the call.
    def broken(records, pages):
        raise RuntimeError("database at 10.0.0.5 refused user cds")

    monkeypatch.setattr(runtime.store.audit_writer, "_write", broken)
    with caplog.at_level(logging.WARNING, logger="cds_service.storage"):
        assert runtime.audit(_notes())  # spooled: the call may be answered
        runtime.store.flush_audit(5.0)
    assert runtime.audit_spool_depth() == 1
    assert "RuntimeError" in caplog.text
    assert "10.0.0.5" not in caplog.text


def test_a_runtime_answers_a_call_for_a_chart(runtime):
    from cds_service.http.hook_request import parse_hook_request

    service = runtime.service("hfs-outcomes-order-sign")
    body = Chart(patient_id="pt-startup-1").hfs().order(MVD).hook_request("order-sign")
    notes = AuditNotes(service_id=service.id, hook=service.hook, started=time.perf_counter())
    cards = hook_call.answer(runtime.hook_parts, service, parse_hook_request(body, service), notes)
    assert "amr-persistence" in {card_id for _, card_id, _, _ in notes.cards}
    assert isinstance(runtime, Runtime) and len(cards) == len(notes.cards)


def test_no_site_overlay_is_none_and_a_broken_one_stops_start_up_naming_the_file(tmp_path):
    assert load_overlay(None) is None
    site = tmp_path / "site.toml"
    site.write_text('[code_systems.local]\nuri = "https://site.example/cs"\n', encoding="utf-8")
    assert load_overlay(site) == {"code_systems": {"local": {"uri": "https://site.example/cs"}}}
    site.write_text("[code_systems\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"site overlay .*site\.toml"):
        load_overlay(site)
    with pytest.raises(ConfigError, match=r"site overlay .*missing\.toml"):
        load_overlay(tmp_path / "missing.toml")
