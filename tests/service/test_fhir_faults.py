"""FHIR server faults seen through the real HTTP path.

The CDS client prefetches nothing; a scripted FHIR server (pytest-httpserver) holds an HFS
patient on carbamazepine with a Cohen grade recorded, and a clinician signs an MVD order.
One prefetch key at a time, the server misbehaves: refuses, stalls, fails, answers
nonsense, pages forever or points elsewhere. Whatever it does:

- a required key (conditions, procedures) that cannot be had is a 412
  an OperationOutcome (prefetch_unavailable) naming the key and the reason;
- an optional key that cannot be had still gives the cards the rest supports, and the
  card says which data could not be retrieved and why;
- the call ends within the FHIR time budget plus a small slack;
- the token goes, exactly as `Bearer <token>`, to the FHIR server and nowhere else, and
  neither the token nor the patient id appears in any answer.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from support import error_body
from support.fhir import hook_request, searchset
from werkzeug import Request, Response

BUDGET_S = 1.0  # short enough for a fault test, long enough for a loaded 2-core CI machine
SLACK_S = 0.75
TOKEN = "fhir-at-7Hq2-vZ9k-secret"
PATIENT_ID = "hfs-pt-40417"
ORDER_SIGN = "/cds-services/hfs-outcomes-order-sign"
PATIENT_VIEW = "/cds-services/hfs-outcomes-patient-view"
FHIR_JSON = "application/fhir+json"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

KINDS = {
    "patient": "Patient",
    "conditions": "Condition",
    "procedures": "Procedure",
    "observations": "Observation",
    "medicationRequests": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
}
REQUIRED = ("conditions", "procedures")
OPTIONAL = ("patient", "observations", "medicationRequests", "medicationStatements")
# How a card names a prefetch key under "Data that could not be retrieved".
CARD_LABELS = {
    "patient": "patient demographics",
    "conditions": "conditions",
    "procedures": "procedures",
    "observations": "observations",
    "medicationRequests": "medication orders",
    "medicationStatements": "medication statements",
}


def today() -> date:
    return datetime.now(UTC).date()


# ------------------------------------------------------------------------- the chart on the server

SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}
CHART = {
    "Patient": {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1964-05-09"},
    "Condition": [
        {
            "resourceType": "Condition",
            "id": "hfs-1",
            "subject": SUBJECT,
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
            "code": {"coding": [{"system": ICD10CM, "code": "G51.31"}]},
            "onsetDateTime": "2019-02-01",
        }
    ],
    "Procedure": [],
    "Observation": [
        {
            "resourceType": "Observation",
            "id": "cohen-1",
            "status": "final",
            "subject": SUBJECT,
            "code": {"coding": [{"system": LOCAL, "code": "cohen-spasm-grade"}]},
            "effectiveDateTime": (today() - timedelta(days=9)).isoformat(),
            "valueInteger": 3,
        }
    ],
    "MedicationRequest": [
        {
            "resourceType": "MedicationRequest",
            "id": "cbz-1",
            "status": "active",
            "intent": "order",
            "subject": SUBJECT,
            "authoredOn": "2020-04-01",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2002"}]},
        }
    ],
    "MedicationStatement": [],
}


def fhir(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type=FHIR_JSON)


def normal_answer(kind: str) -> Response:
    return fhir(CHART["Patient"] if kind == "Patient" else searchset(*CHART[kind], server=True))


# ------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """What the server does instead of answering one resource type.

    `reason`: what the service must say about a key it cannot have (None: the key is had
    all the same); `partial`: what the card says about a key it has only in part.
    `answer(request, kind, stage)` returns the server's Response.
    """

    name: str
    answer: Callable[[Request, str, Stage], Response]
    reason: str | None
    read_reason: str | None = "same"  # reason for the Patient read, when it differs
    search_only: bool = False
    partial: str | None = None  # had only in part: what the card says about it

    def reason_for(self, key: str) -> str | None:
        if key == "patient" and self.read_reason != "same":
            return self.read_reason
        return self.reason


@dataclass
class Stage:
    """What a fault handler may use: the event that releases a stalled handler, and the
    other server's address."""

    hold: threading.Event
    elsewhere: str


def status(code: int) -> Callable:
    return lambda request, kind, stage: Response(
        json.dumps(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "security" if code in (401, 403) else "exception"}],
            }
        ),
        status=code,
        content_type=FHIR_JSON,
    )


def stall(seconds: float) -> Callable:
    def answer(request, kind, stage):
        stage.hold.wait(seconds)
        return normal_answer(kind)

    return answer


def trickle(request, kind, stage):
    def body():
        yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
        for _ in range(50):
            if stage.hold.wait(0.1):
                return
            yield b" "
        yield b"]}"

    return Response(body(), content_type=FHIR_JSON)


def malformed(request, kind, stage):
    return Response('{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": ', content_type=FHIR_JSON)


def html(request, kind, stage):
    return Response("<html><body>Service Unavailable</body></html>", content_type="text/html")


def wrong_resource(request, kind, stage):
    # A search answered by a bare resource; a read answered by a Bundle.
    return fhir(searchset(*CHART["Condition"], server=True) if kind == "Patient" else CHART["Patient"])


def json_array(request, kind, stage):
    return fhir([CHART["Patient"]])  # type: ignore[arg-type]


def operation_outcome(request, kind, stage):
    return fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "too-costly", "diagnostics": "query too costly"}],
        }
    )


def next_to_itself(request, kind, stage):
    return fhir(searchset(*CHART[kind], next_url=request.url, self_url="ignored", server=True))


def growing_pages(request, kind, stage):
    page = int(request.args.get("page", "1"))
    next_url = f"{request.base_url}?patient={PATIENT_ID}&page={page + 1}"
    return fhir(searchset(*CHART[kind], next_url=next_url, self_url="ignored", server=True))


def next_elsewhere(request, kind, stage):
    return fhir(
        searchset(
            *CHART[kind],
            next_url=f"{stage.elsewhere}/{kind}?patient={PATIENT_ID}&page=2",
            self_url="ignored",
            server=True,
        )
    )


FAILURES = [
    Fault("stalls beyond the budget", stall(5.0), "time budget"),
    Fault("trickles its body beyond the budget", trickle, "time budget"),
    Fault("401", status(401), "answered 401"),
    Fault("403", status(403), "answered 403"),
    Fault("404", status(404), "answered 404", read_reason=None),  # a read's 404 is "no such resource"
    Fault("500", status(500), "answered 500"),
    Fault("503", status(503), "answered 503"),
    Fault("malformed JSON", malformed, "malformed JSON"),
    Fault("an HTML page", html, "not JSON"),
    Fault("a JSON array", json_array, "not a FHIR resource"),
    Fault(
        "the wrong resource type",
        wrong_resource,
        "instead of a searchset Bundle",
        read_reason="answered a Bundle for a Patient read",
    ),
    Fault("an OperationOutcome with status 200", operation_outcome, "OperationOutcome"),
]
HAD_ANYWAY = [
    Fault("answers slowly but within the budget", stall(0.2), None),  # 0.8 s of the budget left for the rest
    Fault(
        "pages forever to the same page",
        next_to_itself,
        None,
        search_only=True,
        partial="only partly retrieved (more than 10 pages; the rest was not read)",
    ),
    Fault(
        "pages forever with growing page numbers",
        growing_pages,
        None,
        search_only=True,
        partial="only partly retrieved (more than 10 pages; the rest was not read)",
    ),
    Fault(
        "links its next page to another server",
        next_elsewhere,
        None,
        search_only=True,
        partial="only partly retrieved (next page link points outside the FHIR server; not followed)",
    ),
]


def cases(keys: tuple[str, ...], faults: list[Fault]):
    return [
        pytest.param(key, fault, id=f"{key}-{fault.name.replace(' ', '_')}")
        for key in keys
        for fault in faults
        if not (fault.search_only and key == "patient")
    ]


# ------------------------------------------------------------------------- fixtures and calls


@pytest.fixture
def app_settings(fhir_stub, elsewhere_stub):
    """The app of `client` (tests/conftest.py) with this module's FHIR time budget, and the
    stubs on the allowlist: the reasons of their faults are then told to the client (with
    any fhirServer allowed they are not: see the closed-port tests)."""
    allowed = tuple(stub.url_for("/").rstrip("/") for stub in (fhir_stub, elsewhere_stub))
    return {"fhir_time_budget_s": BUDGET_S, "fhir_server_allowlist": allowed}


@pytest.fixture
def stage(fhir_stub, elsewhere_stub):
    hold = threading.Event()
    elsewhere_stub.expect_request(re.compile("^/fhir/")).respond_with_json(
        searchset(
            {
                "resourceType": "Condition",
                "id": "not-this-patient",
                "subject": SUBJECT,
                "code": {"coding": [{"system": ICD10CM, "code": "G51.31"}]},
            },
            server=True,
        ),
        content_type=FHIR_JSON,
    )
    yield Stage(hold=hold, elsewhere=elsewhere_stub.url_for("/fhir").rstrip("/"))
    hold.set()  # release stalled handlers so the stub can be reset


def serve(server, stage: Stage, faulty: dict[str, Fault]) -> None:
    """The chart on `server`; the resource types in `faulty` misbehave as told."""

    def answer(request: Request) -> Response:
        kind = request.path.split("/")[2]
        if kind != "Patient" and request.args.get("patient") != PATIENT_ID:
            return fhir(
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}, status=400
            )
        fault = faulty.get(kind)
        return fault.answer(request, kind, stage) if fault else normal_answer(kind)

    server.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_handler(answer)
    for kind in KINDS.values():
        if kind != "Patient":
            server.expect_request(f"/fhir/{kind}").respond_with_handler(answer)


def order_sign(fhir_base: str, token: str = TOKEN) -> dict:
    order = {
        "resourceType": "ServiceRequest",
        "id": "draft-mvd",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ"}]},
        "subject": SUBJECT,
    }
    return hook_request(
        "order-sign",
        patient_id=PATIENT_ID,
        user="Practitioner/dr-lind",
        fhir_server=fhir_base,
        token=token,
        draft_orders=[order],
    )


def timed_post(client, path: str, body: dict):
    started = time.monotonic()
    response = client.post(path, json=body)
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_S + SLACK_S, f"the call took {elapsed:.2f} s"
    return response


def assert_nothing_secret(response) -> None:
    text = response.get_data(as_text=True)
    assert TOKEN not in text
    assert PATIENT_ID not in text
    assert "Traceback" not in text


def assert_token_sent_only_as_bearer(server) -> None:
    assert server.log, "the FHIR server was never asked"
    assert {request.headers.get("Authorization") for request, _ in server.log} == {f"Bearer {TOKEN}"}


def amr_card(response) -> dict:
    assert response.status_code == 200, response.get_json()
    cards = [c for c in response.get_json()["cards"] if c["summary"].startswith("Before MVD: AMR persisted")]
    assert len(cards) == 1, response.get_json()
    return cards[0]


def factors_recorded(card: dict) -> int:
    return int(re.search(r"(\d+) of the \d+ preoperative factors (?:is|are) recorded", card["summary"]).group(1))


def could_not_be_retrieved(card: dict) -> str:
    assert "### Data that could not be retrieved" in card["detail"], card["detail"]
    section = card["detail"].split("### Data that could not be retrieved", 1)[1]
    return section.split("\n### ", 1)[0].split("\n**Strength of evidence:**", 1)[0]


def assert_partly_retrieved_as_said(card: dict, key: str, fault: Fault) -> None:
    """A key had in full is not mentioned; a key had in part is, with the reason."""
    if fault.partial is None:
        assert "Data that could not be retrieved" not in card["detail"]
    else:
        (line,) = could_not_be_retrieved(card).strip().splitlines()
        assert line == f"- {CARD_LABELS[key]}: {fault.partial}"


# ------------------------------------------------------------------------- the healthy server


def test_with_a_healthy_server_the_card_uses_every_fetched_key(client, fhir_stub, stage):
    serve(fhir_stub, stage, {})
    response = timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/")))

    card = amr_card(response)
    # Disease duration (conditions), Cohen grade (observations), carbamazepine (medication orders).
    assert factors_recorded(card) == 3
    assert "Data that could not be retrieved" not in card["detail"]
    assert len(fhir_stub.log) == len(KINDS)
    assert_token_sent_only_as_bearer(fhir_stub)
    assert_nothing_secret(response)


# ------------------------------------------------------------------------- required keys


@pytest.mark.parametrize(("key", "fault"), cases(REQUIRED, FAILURES))
def test_a_required_key_the_server_fails_on_is_412_naming_the_key_and_the_reason(client, fhir_stub, stage, key, fault):
    serve(fhir_stub, stage, {KINDS[key]: fault})

    response = timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/")))

    assert response.status_code == 412
    outcome = response.get_json()
    assert error_body.code(outcome) == "prefetch_unavailable"
    assert outcome["issue"][0]["expression"] == [f"prefetch.{key}"] and repr(key) in outcome["issue"][0]["diagnostics"]
    body = {"detail": error_body.text(outcome)}
    assert f"{key} (" in body["detail"] and fault.reason in body["detail"]
    other = next(k for k in REQUIRED if k != key)
    assert f"{other} (" not in body["detail"]
    assert_nothing_secret(response)
    assert_token_sent_only_as_bearer(fhir_stub)


@pytest.mark.parametrize(("key", "fault"), cases(REQUIRED, HAD_ANYWAY))
def test_a_required_key_that_is_slow_or_pages_oddly_is_still_had(client, fhir_stub, elsewhere_stub, stage, key, fault):
    serve(fhir_stub, stage, {KINDS[key]: fault})

    response = timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/")))

    card = amr_card(response)
    assert factors_recorded(card) == 3
    assert_partly_retrieved_as_said(card, key, fault)
    assert elsewhere_stub.log == []
    assert_token_sent_only_as_bearer(fhir_stub)
    assert_nothing_secret(response)


def test_endless_paging_stops_at_the_page_limit(client, fhir_stub, stage):
    serve(fhir_stub, stage, {"Condition": FAULT_BY_NAME["pages forever with growing page numbers"]})

    amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    pages = [int(r.args.get("page", "1")) for r, _ in fhir_stub.log if r.path == "/fhir/Condition"]
    assert pages == list(range(1, 11))  # fhir_max_pages (10), then the search stops


def test_a_next_link_to_another_server_is_never_followed_so_the_token_stays_home(
    client, fhir_stub, elsewhere_stub, stage
):
    serve(
        fhir_stub,
        stage,
        {kind: FAULT_BY_NAME["links its next page to another server"] for kind in KINDS.values() if kind != "Patient"},
    )

    card = amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    assert elsewhere_stub.log == []
    assert factors_recorded(card) == 3


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: every connection is refused.
    return f"http://127.0.0.1:{port}/fhir"


def test_a_closed_port_is_412_for_the_required_keys_at_once(make_app):
    url = closed_port_url()
    client = make_app(fhir_time_budget_s=BUDGET_S, fhir_server_allowlist=(url,)).test_client()

    response = timed_post(client, ORDER_SIGN, order_sign(url))

    assert response.status_code == 412
    body = {"error": error_body.code(response.get_json()), "detail": error_body.text(response.get_json())}
    assert body["error"] == "prefetch_unavailable"
    for key in REQUIRED:
        assert f"{key} (" in body["detail"]
    assert body["detail"].count("could not be reached") == len(REQUIRED)
    assert_nothing_secret(response)


def test_with_any_fhir_server_allowed_a_412_does_not_tell_which_ports_answer_http(make_app, fhir_stub):
    # Default settings (empty allowlist): a client could probe internal hosts and ports
    # with fhirServer; a closed port and an HTTP server answering 404 read the same.
    client = make_app(fhir_time_budget_s=BUDGET_S).test_client()
    fhir_stub.expect_request(re.compile("^/fhir/")).respond_with_data("not here", status=404)
    details = []
    for url in (closed_port_url(), fhir_stub.url_for("/fhir").rstrip("/")):
        response = timed_post(client, ORDER_SIGN, order_sign(url))
        assert response.status_code == 412
        details.append(error_body.text(response.get_json()))
    assert details[0] == details[1]
    assert "could not be reached" not in details[0] and "404" not in details[1]
    assert "the service log says why" in details[0]


def test_a_server_that_stalls_on_everything_is_412_within_the_budget(client, fhir_stub, stage):
    serve(fhir_stub, stage, {kind: FAULT_BY_NAME["stalls beyond the budget"] for kind in KINDS.values()})

    response = timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/")))

    assert response.status_code == 412
    detail = error_body.text(response.get_json())
    assert "conditions (" in detail and "procedures (" in detail and "time budget" in detail
    assert_nothing_secret(response)


def test_every_key_slow_but_within_the_budget_is_fetched_concurrently(client, fhir_stub, stage):
    """Six keys of 0.2 s each fit in a 0.5 s budget only when fetched side by side."""
    serve(fhir_stub, stage, {kind: FAULT_BY_NAME["answers slowly but within the budget"] for kind in KINDS.values()})

    card = amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    assert factors_recorded(card) == 3
    assert "Data that could not be retrieved" not in card["detail"]


# ------------------------------------------------------------------------- optional keys


@pytest.mark.parametrize(("key", "fault"), cases(OPTIONAL, FAILURES))
def test_an_optional_key_the_server_fails_on_leaves_the_card_saying_what_could_not_be_retrieved(
    client, fhir_stub, stage, key, fault
):
    serve(fhir_stub, stage, {KINDS[key]: fault})

    response = timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/")))

    card = amr_card(response)
    reason = fault.reason_for(key)
    if reason is None:
        # A Patient read answered 404: there is no such Patient resource, which is no data
        # rather than a failure.
        assert "Data that could not be retrieved" not in card["detail"]
    else:
        (line,) = could_not_be_retrieved(card).strip().splitlines()  # this key and no other
        assert line.startswith(f"- {CARD_LABELS[key]}: ") and reason in line
    # The card still uses what the other keys held; the data the failed key held is missing.
    expected = {"patient": 3, "observations": 2, "medicationRequests": 2, "medicationStatements": 3}[key]
    assert factors_recorded(card) == expected
    assert_nothing_secret(response)
    assert_token_sent_only_as_bearer(fhir_stub)


def test_when_the_medication_orders_cannot_be_had_carbamazepine_is_not_assumed_and_the_card_says_why(
    client, fhir_stub, stage
):
    serve(fhir_stub, stage, {"MedicationRequest": FAULT_BY_NAME["503"]})

    card = amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    missing = card["detail"].split("### Patient data missing or not yet known", 1)[1].split("\n### ", 1)[0]
    assert "**Carbamazepine use**: not recorded" in missing and "not assumed" in missing
    assert "- medication orders: FHIR server answered 503" in could_not_be_retrieved(card)


@pytest.mark.parametrize(("key", "fault"), cases(OPTIONAL, HAD_ANYWAY))
def test_an_optional_key_that_is_slow_or_pages_oddly_is_still_had(client, fhir_stub, elsewhere_stub, stage, key, fault):
    serve(fhir_stub, stage, {KINDS[key]: fault})

    card = amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    assert factors_recorded(card) == 3
    assert_partly_retrieved_as_said(card, key, fault)
    assert elsewhere_stub.log == []


def test_every_optional_key_failing_at_once_still_gives_the_card_from_the_required_data(client, fhir_stub, stage):
    serve(fhir_stub, stage, {KINDS[key]: FAULT_BY_NAME["500"] for key in OPTIONAL})

    card = amr_card(timed_post(client, ORDER_SIGN, order_sign(fhir_stub.url_for("/fhir").rstrip("/"))))

    assert factors_recorded(card) == 1  # the disease duration, from the conditions
    section = could_not_be_retrieved(card)
    for key in OPTIONAL:
        assert f"- {CARD_LABELS[key]}: FHIR server answered 500" in section


def test_a_chart_view_with_optional_data_missing_says_so_on_the_mvd_card(client, fhir_stub, stage):
    """The same on patient-view: an HFS patient after MVD, observations unavailable."""
    mvd = {
        "resourceType": "Procedure",
        "id": "mvd-1",
        "status": "completed",
        "subject": SUBJECT,
        "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ"}]},
        "performedDateTime": (today() - timedelta(days=200)).isoformat(),
    }
    chart = {**CHART, "Procedure": [mvd]}

    def answer(request):
        kind = request.path.split("/")[2]
        if kind == "Observation":
            return Response("down", status=502)
        return fhir(chart["Patient"] if kind == "Patient" else searchset(*chart[kind], server=True))

    fhir_stub.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_handler(answer)
    for kind in KINDS.values():
        fhir_stub.expect_request(f"/fhir/{kind}").respond_with_handler(answer)
    body = order_sign(fhir_stub.url_for("/fhir").rstrip("/"))
    body["hook"] = "patient-view"
    del body["context"]["draftOrders"]

    response = timed_post(client, PATIENT_VIEW, body)

    assert response.status_code == 200
    (card,) = [c for c in response.get_json()["cards"] if c["summary"].startswith("MVD ")]
    assert "- observations: FHIR server answered 502" in could_not_be_retrieved(card)
    assert_nothing_secret(response)


FAULT_BY_NAME = {fault.name: fault for fault in FAILURES + HAD_ANYWAY}
