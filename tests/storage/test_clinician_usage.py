"""Issue 20: what clinicians do with the cards, per card x situation x client x month
(storage/usage.py, `cds-service report --monthly`), and the alarm when a card's firing or
override rate jumps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.feedback import FeedbackEntry, OverrideReason
from cds_service.storage.report import run_report
from cds_service.storage.store import Store
from cds_service.storage.usage import clinician_usage

A, B = "https://ehr-a.example/", "https://ehr-b.example/"
LOCAL = "https://hfs-cds.example/CodeSystem/override-reason"


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    yield s
    s.close()


def _calls(store, client, month: int, calls: int, fired: int, overridden: int = 0, accepted: int = 0, opened: int = 0):
    """`calls` hook calls of one client in 2026-<month>; `fired` of them return card C
    (situation order-select), with that many overridden (reason too-mild), accepted and
    evidence pages opened."""
    records, uuids = [], []
    for i in range(calls):
        cards = ()
        if i < fired:
            uuids.append(str(uuid.uuid4()))
            cards = (ReturnedCard(uuids[-1], "btxa-response", "Botulinum toxin A ...", "order-select"),)
        records.append(
            CallRecord(
                service_id="hfs-outcomes-order-select",
                hook="order-select",
                hook_instance=str(uuid.uuid4()),
                outcome_status=200,
                duration_ms=12.0,
                client_iss=client,
                cards=cards,
                called_at=datetime(2026, month, 10, 9, 0, tzinfo=UTC),
                record_id=str(uuid.uuid4()),
            )
        )
    store.record_calls(records)
    entries = [
        FeedbackEntry(
            u, "overridden", (), OverrideReason("too-mild", LOCAL, "Symptoms too mild"), None, datetime.now(UTC)
        )
        for u in uuids[:overridden]
    ] + [
        FeedbackEntry(u, "accepted", (), None, None, datetime.now(UTC))
        for u in uuids[overridden : overridden + accepted]
    ]
    store.record_feedback("hfs-outcomes-order-select", entries)
    for u in uuids[:opened]:
        store.mark_evidence_opened(u)
        store.mark_evidence_opened(u)  # a second open of the same page counts once


def test_rates_per_card_situation_client_and_month(store):
    _calls(store, A, 10, calls=200, fired=20, overridden=5, accepted=10, opened=8)
    _calls(store, B, 10, calls=50, fired=10)
    rows, alarms = clinician_usage(store)
    (a,) = [r for r in rows if r.client == A]
    assert (a.month, a.card_id, a.situation, a.calls, a.fired) == ("2026-10", "btxa-response", "order-select", 200, 20)
    assert a.firing_per_100_calls == 10.0
    assert (a.share(a.accepted), a.share(a.overridden), a.share(a.opened)) == (0.5, 0.25, 0.4)
    assert a.reasons == {("too-mild", LOCAL, "Symptoms too mild"): 5}
    (b,) = [r for r in rows if r.client == B]
    assert b.firing_per_100_calls == 20.0 and b.overridden == 0
    assert alarms == []


def test_a_jump_in_firing_or_override_rate_alarms_and_a_steady_card_does_not(store):
    for month in (9, 10, 11):
        _calls(store, A, month, calls=300, fired=30, overridden=3)  # 10 per 100 calls, 10 % overridden
        _calls(store, B, month, calls=300, fired=30, overridden=3)
    _calls(store, A, 12, calls=300, fired=90, overridden=45)  # firing x3, overrides 50 %
    _calls(store, B, 12, calls=300, fired=33, overridden=4)  # the same as before, within chance
    _rows, alarms = clinician_usage(store)
    assert {(a.client, a.what, a.month) for a in alarms} == {
        (A, "firing rate", "2026-12"),
        (A, "override rate", "2026-12"),
    }
    firing = next(a for a in alarms if a.what == "firing rate")
    assert firing.text().startswith(f"ALARM btxa-response / order-select for {A}: firing rate in 2026-12 30.0 per 100")
    text = run_report(str(store.engine.url), monthly=True)
    assert "ALARM btxa-response / order-select" in text and "evidence %" in text
    assert "overridden 45x (50.0 %)" in text


def test_a_card_fired_by_the_service_records_its_situation_and_its_evidence_page_opened_once(make_app):
    from urllib.parse import urlsplit

    from support.chart import CHEMODENERVATION, Chart

    app = make_app()
    rt = app.extensions["cds_service"]
    client = app.test_client()
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    for _ in range(2):
        response = client.post("/cds-services/hfs-outcomes-order-select", json=chart.hook_request("order-select"))
        assert response.status_code == 200
    card = next(c for c in response.get_json()["cards"] if c["summary"].startswith("Botulinum"))
    assert rt.store.flush_audit()
    link = next(x for x in card["links"] if "/evidence/" in x["url"])
    for _ in range(2):
        assert client.get(urlsplit(link["url"]).path).status_code == 200
    rows, _alarms = clinician_usage(rt.store)
    (row,) = [r for r in rows if r.card_id == "btxa-response"]
    assert (row.situation, row.calls, row.fired, row.opened) == ("btxa-ordered", 2, 2, 1)
