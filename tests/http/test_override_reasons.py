"""Override reasons (issue 19): every reason a card offers carries its category in the HL7
non-adherence reason CodeSystem (CDS Hooks 3.0.0-ballot), every card offers "disagrees
with the evidence", and feedback naming a reason the card did not offer is refused."""

from __future__ import annotations

import json
import uuid

import pytest
from support import error_body
from support.chart import Chart
from support.paths import REPO_ROOT

from cds_service.clinical.render import REASON_CATEGORY_EXTENSION
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import load_cards

PATIENT_VIEW = "/cds-services/hfs-outcomes-patient-view"
LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
HL7 = json.loads((REPO_ROOT / "tests" / "data" / "hl7" / "non-adherence-reason-categories.json").read_text())


@pytest.mark.parametrize("card", load_cards(DEFAULT_CARDS_DIR), ids=lambda c: c.id)
def test_every_reason_of_every_card_has_a_published_hl7_category(card):
    assert card.override_reason_categories.system == HL7["url"]
    assert card.override_reason_categories.version == "3.0.0-ballot"
    for reason in card.override_reasons:
        assert HL7["categories"][reason.category] == reason.category_display, reason.code
    disagrees = [r for r in card.override_reasons if r.category == "recipient-disagrees-evidence"]
    assert [(r.code, r.display) for r in disagrees] == [("disagrees-with-evidence", "Disagrees with the evidence")]


def issued_card(client) -> dict:
    chart = Chart(patient_id="pt-reasons-1").hfs().mvd("2025-06-10T08:00:00Z")
    card = client.post(PATIENT_VIEW, json=chart.hook_request("patient-view")).get_json()["cards"][0]
    assert client.application.extensions["cds_service"].store.flush_audit(5.0)  # issued cards are audited
    return card


def overridden(card_uuid: str, reason: dict | None) -> dict:
    entry = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-01-15T10:05:31Z"}
    if reason is not None:
        entry["overrideReason"] = {"reason": reason}
    return {"feedback": [entry]}


def test_the_card_sends_its_own_coding_with_the_hl7_category_as_an_extension(client):
    reasons = issued_card(client)["overrideReasons"]
    disagrees = next(r for r in reasons if r["code"] == "disagrees-with-evidence")
    assert disagrees == {
        "code": "disagrees-with-evidence",
        "system": LOCAL,
        "display": "Disagrees with the evidence",
        "extension": {
            REASON_CATEGORY_EXTENSION: {
                "system": HL7["url"],
                "version": "3.0.0-ballot",
                "code": "recipient-disagrees-evidence",
                "display": HL7["categories"]["recipient-disagrees-evidence"],
            }
        },
    }
    assert all(set(r) == {"code", "system", "display", "extension"} for r in reasons)


def test_feedback_may_name_an_offered_reason_by_its_own_coding_or_its_category(client):
    card = issued_card(client)
    offered = card["overrideReasons"][0]
    as_sent = client.post(f"{PATIENT_VIEW}/feedback", json=overridden(card["uuid"], offered))  # extension echoed
    assert as_sent.status_code == 200, as_sent.get_json()
    category = offered["extension"][REASON_CATEGORY_EXTENSION]
    by_category = {"system": category["system"], "code": category["code"]}
    assert client.post(f"{PATIENT_VIEW}/feedback", json=overridden(card["uuid"], by_category)).status_code == 200
    assert client.post(f"{PATIENT_VIEW}/feedback", json=overridden(card["uuid"], None)).status_code == 200


@pytest.mark.parametrize(
    "reason",
    [
        {"code": "12354", "system": "http://example.org/reasons", "display": "Contraindicated"},
        {"code": "disagrees-with-evidence", "system": "https://elsewhere.example.org/r"},
        {"code": "not-convenient-feasible", "system": HL7["url"]},  # a category no reason of the card has
    ],
)
def test_feedback_with_a_reason_the_card_did_not_offer_is_refused_and_not_stored(client, reason):
    card = issued_card(client)
    response = client.post(f"{PATIENT_VIEW}/feedback", json=overridden(card["uuid"], reason))
    assert response.status_code == 400
    assert error_body.code(response.get_json()) == "invalid_feedback"
    assert "not one of the overrideReasons offered" in error_body.text(response.get_json())
    assert client.application.extensions["cds_service"].store.feedback_for(card["uuid"]) == []


def test_feedback_on_a_card_without_a_record_needs_a_reason_some_card_of_the_hook_offers(client):
    unknown = str(uuid.uuid4())
    offered = {"code": "patient-preference", "system": LOCAL}
    assert client.post(f"{PATIENT_VIEW}/feedback", json=overridden(unknown, offered)).status_code == 200
    invented = {"code": "invented", "system": LOCAL}
    assert client.post(f"{PATIENT_VIEW}/feedback", json=overridden(unknown, invented)).status_code == 400
