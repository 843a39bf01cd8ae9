"""The real service under gunicorn on loopback: two workers, signed client JWTs, a store
that outlives a restart (SQLite and PostgreSQL), and logs free of tokens and patient ids."""

from __future__ import annotations

import uuid

import pytest
import requests
from support.scenario_requests import hfs_after_mvd_patient_view
from support.served import ClientSigner, ServedService

from cds_service.storage.store import Store

SERVICE = "/cds-services/hfs-outcomes-patient-view"


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request, tmp_path):
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    service = ServedService(tmp_path / "served", ClientSigner(), workers=2, database_url=database_url).start()
    yield service
    service.stop()


def post(service: ServedService, path: str, body: dict, headers: dict | None = None) -> requests.Response:
    # A new connection each time, so that successive requests can land on either worker.
    with requests.Session() as session:
        return session.post(service.base_url + path, json=body, headers=headers or {}, timeout=10)


def test_discovery_needs_a_signed_jwt_and_lists_the_three_hooks(served):
    assert requests.get(served.base_url + "/cds-services", timeout=5).status_code == 401
    answer = requests.get(served.base_url + "/cds-services", headers=served.auth("/cds-services"), timeout=5)
    assert answer.status_code == 200
    assert sorted(s["hook"] for s in answer.json()["services"]) == ["order-select", "order-sign", "patient-view"]


def test_a_jwt_is_single_use_across_both_workers(served):
    headers = served.auth("/cds-services")
    first = requests.get(served.base_url + "/cds-services", headers=headers, timeout=5)
    assert first.status_code == 200
    replays = [requests.get(served.base_url + "/cds-services", headers=headers, timeout=5) for _ in range(12)]
    assert {r.status_code for r in replays} == {401}
    assert all(r.json() == {"error": "unauthorized"} for r in replays)


def test_a_jwt_for_another_service_url_is_refused(served):
    headers = served.auth("/cds-services/hfs-outcomes-order-sign")
    assert post(served, SERVICE, hfs_after_mvd_patient_view("p-aud"), headers).status_code == 401


def test_cards_are_answered_audited_and_feedback_survives_a_restart(served, tmp_path):
    patient_id = f"served-{uuid.uuid4().hex[:8]}"
    answer = post(served, SERVICE, hfs_after_mvd_patient_view(patient_id), served.auth(SERVICE))
    assert answer.status_code == 200, answer.text
    cards = answer.json()["cards"]
    assert cards, "an HFS patient after MVD gets the recurrence card"
    card_uuid = cards[0]["uuid"]
    feedback = {
        "feedback": [
            {
                "card": card_uuid,
                "outcome": "overridden",
                # a reason the card offers (another is refused, issue 19)
                "overrideReason": {
                    "reason": next(r for r in cards[0]["overrideReasons"] if r["code"] == "not-applicable")
                },
                "outcomeTimestamp": "2026-11-22T10:00:00Z",
            }
        ]
    }
    stored = post(served, SERVICE + "/feedback", feedback, served.auth(SERVICE + "/feedback"))
    assert stored.status_code == 200, stored.text

    served.stop()
    served.start()
    listed = requests.get(served.base_url + "/cds-services", headers=served.auth("/cds-services"), timeout=5)
    assert listed.status_code == 200
    url = served.database_url or f"sqlite:///{served.folder / 'instance' / 'cds-service.sqlite3'}"
    store = Store(url)
    try:
        assert [f.outcome for f in store.feedback_for(card_uuid)] == ["overridden"]
        assert store.issued_card(card_uuid) is not None
    finally:
        store.close()

    log = served.log_path.read_text(errors="replace")
    assert patient_id not in log
    assert served.auth(SERVICE)["Authorization"].split()[1][:40] not in log
