"""Card D through the FHIR fallback (issue 15): the review charts of support/card_d_charts.py
are loaded into the real FHIR server (sekmet), the client prefetches nothing, and the card
comes back through the real HTTP path exactly as with a full prefetch: the body site of the
metastasis, the stated reason of the order (a reasonReference to the server's Condition), the
morphine prescription's dosage, the newer unreadable pain score and the harms.

The charts' dates are moved so that their day of call (support TODAY) is today."""

from __future__ import annotations

import copy
import re
import uuid
from datetime import UTC, date, datetime

import pytest
from support.card_d_charts import REVIEW_CHARTS, TODAY, review_chart
from support.fhir import hook_request

pytestmark = pytest.mark.fhir_server

SERVICE = {
    "patient-view": "/cds-services/hfs-outcomes-patient-view",
    "order-select": "/cds-services/hfs-outcomes-order-select",
    "order-sign": "/cds-services/hfs-outcomes-order-sign",
}
USER = "Practitioner/dr-okafor"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture
def app_settings():
    """The app of `client` (tests/conftest.py): time enough for a real FHIR server."""
    return {"fhir_time_budget_s": 10.0}


def _moved(value, days: int):
    """Every date (YYYY-MM-DD) in a resource moved by `days`."""
    if isinstance(value, dict):
        return {k: _moved(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, days) for v in value]
    if isinstance(value, str) and _DAY.match(value):
        return date.fromordinal(date.fromisoformat(value).toordinal() + days).isoformat()
    return value


def load_chart(fhir_server, name: str) -> tuple[str, list[dict]]:
    """Load the chart into sekmet (one transaction); its Patient's id and its draft orders,
    whose reasonReference now names the server's Condition."""
    days = (datetime.now(UTC).date() - date.fromisoformat(TODAY)).days
    resources, drafts = review_chart(name)
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {
            "fullUrl": patient_url,
            "resource": {"resourceType": "Patient", "gender": "female", "birthDate": "1958-03-09"},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    local_ids = [None]
    for r in resources:
        body = {k: v for k, v in _moved(r, days).items() if k != "id"}
        body["subject"] = {"reference": patient_url}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": body,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
        )
        local_ids.append(f"{r['resourceType']}/{r['id']}")
    answer = fhir_server.load({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    server_ids = {}
    for local, entry in zip(local_ids, answer["entry"], strict=True):
        location = entry["response"]["location"]
        kind_and_id = "/".join(location.split("/_history")[0].split("/")[-2:])
        server_ids[local or "Patient"] = kind_and_id
    patient_id = server_ids["Patient"].split("/")[1]
    orders = []
    for d in drafts:
        order = copy.deepcopy(d)
        order["subject"] = {"reference": f"Patient/{patient_id}"}
        for ref in order.get("reasonReference", []):
            ref["reference"] = server_ids[ref["reference"]]
        orders.append(order)
    return patient_id, orders


def call_card_d(client, fhir_server, name: str) -> dict | None:
    spec = REVIEW_CHARTS[name]
    hook = spec["hook"]
    patient_id, orders = load_chart(fhir_server, name)
    extra = {}
    if hook != "patient-view":
        extra["draft_orders"] = orders
    if hook == "order-select":
        extra["selections"] = [f"{o['resourceType']}/{o['id']}" for o in orders]
    body = hook_request(
        hook, patient_id=patient_id, fhir_server=fhir_server.base_url, token=fhir_server.token, user=USER, **extra
    )
    response = client.post(SERVICE[hook], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = [c for c in response.get_json()["cards"] if "MWA" in c["summary"] or "metastasis" in c["summary"]]
    assert len(cards) <= 1, [c["summary"] for c in cards]
    return cards[0] if cards else None


def _shown_dates_moved(text: str, days: int) -> str:
    return re.sub(
        r"\d{4}-\d{2}-\d{2}",
        lambda m: date.fromordinal(date.fromisoformat(m.group()).toordinal() + days).isoformat(),
        text,
    )


@pytest.mark.parametrize("name", sorted(REVIEW_CHARTS))
def test_each_review_chart_gets_the_same_card_d_through_the_fhir_fallback(fhir_server, client, name):
    spec = REVIEW_CHARTS[name]
    card = call_card_d(client, fhir_server, name)
    assert (card is not None) == spec["fires"], card and card["summary"]
    if card is None:
        return
    days = (datetime.now(UTC).date() - date.fromisoformat(TODAY)).days
    text = card["summary"] + "\n" + card["detail"]
    for fragment in spec.get("expect", ()):
        assert _shown_dates_moved(fragment, days) in text, fragment
    for fragment in spec.get("never", ()):
        assert fragment not in text, fragment
    assert "cement leakage in 30 % of treated vertebrae (42/140)" in card["detail"]
