"""Running a story chart (tests/support/story_charts.py) through the real HTTP path: with the
full prefetch, or through the FHIR fallback (the chart loaded into the real FHIR server by a
transaction, the service fetching it). The app judges the charts as of their date
(setting `as_of_date`)."""

from __future__ import annotations

import uuid

from support.chart import Chart, all_cards
from support.fhir import collection, hook_request
from support.fhir_server_fixture import created_ids

SERVICE = {
    "patient-view": "/cds-services/hfs-outcomes-patient-view",
    "order-select": "/cds-services/hfs-outcomes-order-select",
    "order-sign": "/cds-services/hfs-outcomes-order-sign",
}


def cards_by_id(response_cards: list[dict]) -> dict[str, dict]:
    """The cards of a response by card id (told by their source URL, which is the card's own
    or one of its situations')."""
    urls: dict[str, str] = {}
    for card in all_cards():
        for source in (card.source, *(s.source for s in card.situations if s.source)):
            urls.setdefault(source.url or source.label, card.id)
    out = {}
    for c in response_cards:
        out[urls[c["source"]["url"] or c["source"]["label"]]] = c
    return out


def call_with_prefetch(client, chart: Chart, hook: str) -> dict[str, dict]:
    response = client.post(SERVICE[hook], json=chart.hook_request(hook))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return cards_by_id(response.get_json()["cards"])


def load_into(fhir_server, chart: Chart) -> str:
    """POST the chart as a transaction (references rewritten to urn:uuid); the Patient's id."""
    urns = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in chart.resources if "id" in r}

    def relink(value):
        if isinstance(value, dict):
            return {k: (urns.get(v, v) if k == "reference" else relink(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [relink(v) for v in value]
        return value

    entries = []
    for r in chart.resources:
        body = relink({k: v for k, v in r.items() if k != "id"})
        entries.append(
            {
                "fullUrl": urns[f"{r['resourceType']}/{r['id']}"],
                "resource": body,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
        )
    (patient_id,) = created_ids(
        fhir_server.load({"resourceType": "Bundle", "type": "transaction", "entry": entries}), "Patient"
    )
    return patient_id


def call_through_fallback(client, fhir_server, chart: Chart, hook: str) -> dict[str, dict]:
    patient_id = load_into(fhir_server, chart)
    drafts = [{**d, "subject": {"reference": f"Patient/{patient_id}"}} for d in chart.drafts]
    body = hook_request(
        hook,
        patient_id=patient_id,
        fhir_server=fhir_server.base_url,
        token=fhir_server.token,
        draft_orders=collection(*drafts) if hook != "patient-view" else None,
        selections=list(chart.selections) if hook == "order-select" else None,
    )
    response = client.post(SERVICE[hook], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return cards_by_id(response.get_json()["cards"])
