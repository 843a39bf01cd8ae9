"""The audit trail keeps who-was-it as a keyed hash, with one key per deployment."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import stat
from datetime import UTC, datetime

import pytest

from cds_service.config import ConfigError, Settings
from cds_service.storage.audit import (
    AUDIT_KEY_FILE,
    AuditNotes,
    CallRecord,
    ReturnedCard,
    audit_key,
    build_call_record,
    patient_hash,
)
from cds_service.storage.store import Store

CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"


def test_the_patient_hash_is_hmac_sha256_of_the_id():
    key = b"k" * 32
    expected = hmac.new(key, b"Patient-123", hashlib.sha256).hexdigest()
    assert patient_hash("Patient-123", key) == expected
    assert len(expected) == 64


def test_the_same_patient_hashes_alike_and_others_do_not():
    key = b"deployment-key-0123456789abcdef"
    assert patient_hash("pat-1", key) == patient_hash("pat-1", key)
    assert patient_hash("pat-1", key) != patient_hash("pat-2", key)


def test_without_the_key_the_hash_cannot_be_recomputed():
    assert patient_hash("pat-1", b"key-one-0123456789") != patient_hash("pat-1", b"key-two-0123456789")
    assert patient_hash("pat-1", b"key-one-0123456789") != hashlib.sha256(b"pat-1").hexdigest()


def test_an_empty_key_is_refused():
    with pytest.raises(ValueError):
        patient_hash("pat-1", b"")


def test_a_configured_key_is_used_as_given(tmp_path):
    settings = Settings(instance_path=tmp_path, audit_hash_key="from-the-environment-0123")
    assert audit_key(settings) == b"from-the-environment-0123"
    assert not (tmp_path / AUDIT_KEY_FILE).exists()


def test_without_a_configured_key_one_is_generated_privately_and_kept(tmp_path):
    instance = tmp_path / "instance"
    first = audit_key(Settings(instance_path=instance))
    path = instance / AUDIT_KEY_FILE
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A restart (new settings object, same folder) finds the same key.
    assert audit_key(Settings(instance_path=instance)) == first
    # Another deployment gets its own.
    assert audit_key(Settings(instance_path=tmp_path / "other")) != first
    assert [p.name for p in instance.iterdir()] == [AUDIT_KEY_FILE]


def test_a_damaged_key_file_stops_the_start(tmp_path):
    (tmp_path / AUDIT_KEY_FILE).write_text("not hex at all\n")
    with pytest.raises(ConfigError):
        audit_key(Settings(instance_path=tmp_path))
    (tmp_path / AUDIT_KEY_FILE).write_text("abcd\n")
    with pytest.raises(ConfigError):
        audit_key(Settings(instance_path=tmp_path))


def _worker_key(instance: str, barrier, results) -> None:
    barrier.wait(timeout=30)
    results.put(audit_key(Settings(instance_path=instance)).hex())


def test_workers_starting_together_share_one_generated_key(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers = 5
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    processes = [
        ctx.Process(target=_worker_key, args=(str(tmp_path / "inst"), barrier, results)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    keys = {results.get(timeout=60) for _ in processes}
    for process in processes:
        process.join(timeout=30)
    assert len(keys) == 1
    assert keys == {(tmp_path / "inst" / AUDIT_KEY_FILE).read_text().strip()}
    assert [p.name for p in (tmp_path / "inst").iterdir()] == [AUDIT_KEY_FILE]


def test_a_call_record_holds_the_hash_never_the_patient_id():
    key = b"k" * 32
    record = build_call_record(
        service_id="hfs-outcomes-patient-view",
        hook="patient-view",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        outcome_status=200,
        duration_ms=7.123456,
        patient_hash=patient_hash("Patient-123", key),
        content_version="mvd-outcome@1.0",
        client_iss="https://sandbox.cds-hooks.org",
        cards=[(CARD, "mvd-outcome", "MVD outcome")],
    )
    assert record.patient_hash == patient_hash("Patient-123", key)
    assert "Patient-123" not in repr(record)
    assert record.cards == (ReturnedCard(CARD, "mvd-outcome", "MVD outcome"),)
    assert record.content_version == "mvd-outcome@1.0"
    assert record.duration_ms == pytest.approx(7.123, abs=1e-9)
    assert record.called_at.tzinfo is not None


class _Usage:
    def as_dict(self) -> dict:
        return {"token": False, "timings_ms": {"record": 1.5}}


def test_the_notes_of_a_call_become_its_row_field_for_field():
    notes = AuditNotes(service_id="svc", hook="order-sign", started=0.0)
    notes.hook_instance, notes.status, notes.client_iss, notes.site = "i", 200, "https://ehr.example", "hospital-a"
    notes.patient_hash = patient_hash("Patient-123", b"k" * 32)
    notes.cards.append((CARD, "mvd-outcome", "MVD outcome", "after-mvd"))
    notes.usage = _Usage()
    record = notes.record("mvd-outcome@1.0")
    assert (record.service_id, record.hook, record.hook_instance, record.outcome_status) == (
        "svc",
        "order-sign",
        "i",
        200,
    )
    assert (record.client_iss, record.site, record.content_version) == (
        "https://ehr.example",
        "hospital-a",
        "mvd-outcome@1.0",
    )
    assert record.patient_hash == notes.patient_hash and record.duration_ms > 0
    assert record.cards == (ReturnedCard(CARD, "mvd-outcome", "MVD outcome", "after-mvd"),)
    assert record.usage == '{"timings_ms":{"record":1.5},"token":false}'
    assert CallRecord.from_json(record.to_json()) == record  # every field survives the spool


def test_notes_of_a_refused_call_make_a_row_without_cards_or_usage():
    record = AuditNotes(service_id="svc", hook="patient-view", started=0.0).record("")
    assert (record.hook_instance, record.outcome_status, record.usage, record.cards) == ("", 0, None, ())


def test_a_call_without_a_patient_has_no_hash():
    record = build_call_record(
        service_id="s",
        hook="order-sign",
        hook_instance="i",
        outcome_status=400,
        duration_ms=1,
    )
    assert record.patient_hash is None and record.cards == () and record.client_iss is None


def test_the_audit_row_in_the_database_carries_only_the_hash(store_url):
    key = b"k" * 32
    called_at = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    with Store(store_url) as store:
        call_id = store.record_call(
            build_call_record(
                service_id="svc",
                hook="patient-view",
                hook_instance="i",
                outcome_status=200,
                duration_ms=3.5,
                patient_hash=patient_hash("Patient-123", key),
                cards=[(CARD, "mvd-outcome", "summary")],
                called_at=called_at,
            )
        )
        with store.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT called_at, patient_hash FROM service_calls WHERE id = %d" % call_id
            ).one()
            dump = " ".join(
                str(value)
                for table in ("service_calls", "returned_cards")
                for r in conn.exec_driver_sql(f"SELECT * FROM {table}")
                for value in r
            )
        issued = store.issued_card(CARD)
    assert row.patient_hash == patient_hash("Patient-123", key)
    assert "Patient-123" not in dump
    assert issued.called_at == called_at


def test_calls_to_a_known_service_are_audited_whatever_their_outcome_and_unknown_ids_are_not(make_app):
    from support.scenario_requests import hfs_after_mvd_patient_view

    app = make_app(allow_unsigned=False)  # signed JWTs required
    client = app.test_client()
    body = hfs_after_mvd_patient_view("audit-rule-patient")
    assert client.post("/cds-services/no-such-service", json=body).status_code == 404
    assert client.post("/cds-services/hfs-outcomes-patient-view", json=body).status_code == 401
    store = app.extensions["cds_service"].store
    assert store.flush_audit(5.0)  # audit rows are written off the request path
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT service_id, hook, outcome_status FROM service_calls").all()
    store.close()
    assert [tuple(r) for r in rows] == [("hfs-outcomes-patient-view", "patient-view", 401)]
