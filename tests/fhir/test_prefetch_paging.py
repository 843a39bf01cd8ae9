"""Prefetched searchsets with a `next` link (issue 8): EHRs page large searches and send
only the first page. The rest is read from the request's fhirServer with its token, within
the same time budget and page cap as fetched searches; when it cannot be read, the key is
marked partial (the card says which search) and the first page is still used."""

from __future__ import annotations

import json
import threading
import time

import pytest
from support.fhir import validated_request
from werkzeug import Response

from cds_service.config import DEFAULT_CARDS_DIR, Settings
from cds_service.content.services import load_services
from cds_service.fhir.client import FhirAccess
from cds_service.fhir.prefetch import resolve
from cds_service.hooks import HookRequest

TOKEN = "at-paging-7c1d-secret"
PATIENT_ID = "hfs-pat-paged"
FHIR = "application/fhir+json"
PATIENT_VIEW = load_services(DEFAULT_CARDS_DIR / "services.toml")["hfs-outcomes-patient-view"]


def observation(n: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{n}", "status": "final"}


def page(ids: range, next_url: str | None) -> dict:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": observation(n)} for n in ids]}
    if next_url:
        bundle["link"] = [{"relation": "self", "url": "x"}, {"relation": "next", "url": next_url}]
    return bundle


def prefetch_with(observations: dict) -> dict:
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    return {
        "patient": {"resourceType": "Patient", "id": PATIENT_ID},
        "conditions": empty,
        "procedures": empty,
        "observations": observations,
        "medicationRequests": empty,
        "medicationStatements": empty,
    }


@pytest.fixture
def access(fhir_stub):
    made = []
    # The stub on the allowlist: the reasons of its faults are then told to the client.
    allowed = (fhir_stub.url_for("/").rstrip("/"),)

    def make(**overrides) -> FhirAccess:
        fhir = FhirAccess(Settings(**{"fhir_time_budget_s": 2.0, "fhir_server_allowlist": allowed, **overrides}))
        made.append(fhir)
        return fhir

    yield make
    for fhir in made:
        fhir.close()


def base(server) -> str:
    return server.url_for("/fhir").rstrip("/")


def request_for(server, observations: dict, *, with_server: bool = True) -> HookRequest:
    return validated_request(
        context={"patientId": PATIENT_ID, "userId": "Practitioner/1"},
        fhir_server=base(server) if with_server else None,
        access_token=TOKEN,
        prefetch=prefetch_with(observations),
    )


def serve_pages(server, pages: int, delay: float = 0.0) -> None:
    """Pages 2..pages of the Observation search, 20 entries each, under /fhir/page/N."""
    for n in range(2, pages + 1):
        later = f"{base(server)}/page/{n + 1}" if n < pages else None
        body = page(range((n - 1) * 20, n * 20), later)

        def answer(_request, body=body):
            if delay:
                time.sleep(delay)
            return Response(json.dumps(body), content_type=FHIR)

        server.expect_request(f"/fhir/page/{n}").respond_with_handler(answer)


def test_a_prefetched_first_page_is_completed_from_the_fhir_server_with_the_token(fhir_stub, access):
    serve_pages(fhir_stub, pages=3)
    first = page(range(0, 20), f"{base(fhir_stub)}/page/2")
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, first), access())
    entries = result.data["observations"]["entry"]
    assert [e["resource"]["id"] for e in entries] == [f"obs-{n}" for n in range(60)]
    assert result.incomplete == {} and result.unavailable == {}
    assert [r.path for r, _ in fhir_stub.log] == ["/fhir/page/2", "/fhir/page/3"]
    assert {r.headers["Authorization"] for r, _ in fhir_stub.log} == {f"Bearer {TOKEN}"}
    assert "link" not in result.data["observations"]


def test_a_relative_next_link_is_read_under_the_fhir_server(fhir_stub, access):
    serve_pages(fhir_stub, pages=2)
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, page(range(0, 20), "page/2")), access())
    assert len(result.data["observations"]["entry"]) == 40
    assert result.incomplete == {}


def test_without_a_fhir_server_the_first_page_is_used_and_the_search_is_marked_partial(fhir_stub, access):
    first = page(range(0, 20), f"{base(fhir_stub)}/page/2")
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, first, with_server=False), access())
    assert len(result.data["observations"]["entry"]) == 20
    assert set(result.incomplete) == {"observations"}
    assert "no fhirServer" in result.incomplete["observations"]
    assert result.gaps["observations"].startswith("only partly retrieved")
    assert fhir_stub.log == []


def test_a_next_link_outside_the_fhir_server_gets_no_token_and_the_search_is_partial(fhir_stub, elsewhere_stub, access):
    elsewhere_stub.expect_request("/fhir/page/2").respond_with_json(page(range(20, 40), None))
    first = page(range(0, 20), f"{base(elsewhere_stub)}/page/2")
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, first), access())
    assert elsewhere_stub.log == []
    assert len(result.data["observations"]["entry"]) == 20
    assert "outside the FHIR server" in result.incomplete["observations"]


def test_the_page_cap_counts_the_prefetched_page(fhir_stub, access):
    serve_pages(fhir_stub, pages=5)
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, page(range(0, 20), "page/2")), access(fhir_max_pages=3))
    assert len(result.data["observations"]["entry"]) == 60
    assert "more than 3 pages" in result.incomplete["observations"]
    assert len(fhir_stub.log) == 2


def test_a_failing_next_page_keeps_the_first_page_and_says_why(fhir_stub, access):
    fhir_stub.expect_request("/fhir/page/2").respond_with_data("down", status=503)
    result = resolve(PATIENT_VIEW, request_for(fhir_stub, page(range(0, 20), "page/2")), access())
    assert len(result.data["observations"]["entry"]) == 20
    assert result.incomplete["observations"].startswith("the client sent the first page only")
    assert "503" in result.incomplete["observations"]


def test_following_pages_stays_within_the_time_budget(fhir_stub, access):
    release = threading.Event()

    def stall(_request):
        release.wait(5)
        return Response(json.dumps(page(range(20, 40), None)), content_type=FHIR)

    fhir_stub.expect_request("/fhir/page/2").respond_with_handler(stall)
    started = time.monotonic()
    try:
        result = resolve(
            PATIENT_VIEW, request_for(fhir_stub, page(range(0, 20), "page/2")), access(fhir_time_budget_s=0.5)
        )
    finally:
        release.set()
    assert time.monotonic() - started < 0.5 + 0.3
    assert len(result.data["observations"]["entry"]) == 20
    assert "time budget" in result.incomplete["observations"]


def test_the_card_names_the_search_a_client_sent_only_the_first_page_of(make_app):
    from support.scenario_requests import hfs_after_mvd_patient_view

    body = hfs_after_mvd_patient_view(PATIENT_ID)
    body["prefetch"]["observations"] = page(range(0, 20), "https://ehr.example.org/fhir/page/2")
    app = make_app()
    answer = app.test_client().post("/cds-services/hfs-outcomes-patient-view", json=body)
    assert answer.status_code == 200, answer.get_json()
    cards = answer.get_json()["cards"]
    assert cards
    detail = cards[0]["detail"]
    assert "- observations: only partly retrieved (the client sent the first page only and no fhirServer" in detail
