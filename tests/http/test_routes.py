"""The HTTP surface: discovery, hook calls and feedback. Routes are thin (read the body,
authenticate, hand over, audit, answer); a body that is not JSON is refused with the reason."""

from __future__ import annotations

import json
import uuid

import pytest
from support.chart import MVD, Chart

from cds_service.errors import ApiError, error_code
from cds_service.http.routes import parse_json_body

ORDER_SIGN = "/cds-services/hfs-outcomes-order-sign"
PATIENT_VIEW = "/cds-services/hfs-outcomes-patient-view"


def store(app):
    return app.extensions["cds_service"].store


def test_discovery_lists_each_service_as_its_definition_says(app, client):
    services = client.get("/cds-services").get_json()["services"]
    rt = app.extensions["cds_service"]
    expected = [s.discovery_entry() for s in rt.services.values()]
    assert [{k: v for k, v in s.items() if k != "extension"} for s in services] == expected and len(services) == 3
    assert [s["extension"] for s in services] == [rt.discovery_entry(s)["extension"] for s in rt.services.values()]


def test_a_hook_call_answers_the_cards_and_is_audited_with_them(app, client):
    body = Chart(patient_id="pt-routes-1").hfs().order(MVD).hook_request("order-sign")
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200
    [card] = response.get_json()["cards"]
    assert store(app).flush_audit(5.0)  # audit rows are written off the request path
    issued = store(app).issued_card(card["uuid"])
    assert (issued.service_id, issued.card_id) == ("hfs-outcomes-order-sign", "amr-persistence")
    assert store(app).usage_report().calls_by_status == {200: 1}


def test_a_refused_call_to_a_known_service_is_audited_with_its_status(app, client):
    assert client.post(PATIENT_VIEW, json={"hook": "patient-view"}).status_code == 400
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404
    assert store(app).flush_audit(5.0)  # audit rows are written off the request path
    assert store(app).usage_report().calls_by_status == {400: 1}


def test_feedback_on_a_card_answers_how_many_entries_were_stored(client):
    card = client.post(
        PATIENT_VIEW,
        json=Chart(patient_id="pt-routes-2").hfs().mvd("2025-06-10T08:00:00Z").hook_request("patient-view"),
    ).get_json()["cards"][0]
    entry = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-01-15T10:05:31Z",
    }
    response = client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [entry]})
    assert response.status_code == 200 and response.get_json() == {"accepted": 1}
    # The card is in the audit trail the moment it is returned: a suggestion it never
    # carried is refused at once (before, a race with the background writer let it pass).
    entry.update(outcome="accepted", acceptedSuggestions=[{"id": str(uuid.uuid4())}])
    assert client.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [entry]}).status_code == 400


def test_feedback_for_an_unknown_service_is_a_404(client):
    assert client.post("/cds-services/no-such-service/feedback", json={"feedback": []}).status_code == 404


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_sent_as_json_is_a_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(PATIENT_VIEW, data=b"{}", headers=headers)
    assert response.status_code == 415 and error_code(response.get_json()) == "unsupported_media_type"


def test_a_json_media_type_with_a_suffix_is_read_as_json(client):
    body = Chart(patient_id="pt-routes-3").hook_request("patient-view")
    response = client.post(PATIENT_VIEW, data=json.dumps(body), content_type="application/fhir+json")
    assert response.status_code == 200


def test_a_json_body_is_read_strictly_and_a_byte_order_mark_is_ignored():
    assert parse_json_body(b'\xef\xbb\xbf{"hook": "patient-view"}') == {"hook": "patient-view"}
    assert parse_json_body(b"[1, 2.5]") == [1, 2.5]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the request body is empty; send a JSON object"),
        (b"  \n", "the request body is empty; send a JSON object"),
        (b'{"a": NaN}', "the request body is not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, "the request body is nested too deeply"),
        (b'{"a": "\xff"}', "the request body is not UTF-8 encoded JSON"),
        (b'{"a": 1,}', "the request body is not valid JSON"),
    ],
)
def test_a_body_that_is_not_json_is_a_400_that_says_why(data, reason):
    with pytest.raises(ApiError) as refused:
        parse_json_body(data)
    assert (refused.value.status, refused.value.error, refused.value.detail) == (400, "invalid_json", reason)
