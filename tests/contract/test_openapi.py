"""The running service answers as openapi.yaml says: every operation, every documented
status, each body checked against the schema of that operation and status.

Each scenario below is one thing a CDS client does (open a chart, select an order, send
feedback, get something wrong); the app is the real one in development mode
(`allow_unsigned`), with its store in a temporary instance folder.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import pytest
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31
from support.fhir import hook_request, patient_view, searchset
from support.openapi_support import (
    assert_documented,
    documented_operations,
    documented_response,
    load_contract,
    response_errors,
    schema_errors,
    validator_at,
)
from support.paths import SPEC_EXAMPLES_DIR

from cds_service.errors import ERROR_CODE_SYSTEM, error_code

SPEC_EXAMPLES = SPEC_EXAMPLES_DIR

PATIENT_VIEW = "hfs-outcomes-patient-view"
ORDER_SELECT = "hfs-outcomes-order-select"
ORDER_SIGN = "hfs-outcomes-order-sign"
CALL = "/cds-services/{service_id}"
FEEDBACK = "/cds-services/{service_id}/feedback"
DISCOVERY = "/cds-services"
EVIDENCE = "/evidence/{token}"
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
EHR_ORIGIN = "https://ehr.example.org"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


# ------------------------------------------------------------------ patients


def coded(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def hfs_patient_prefetch(patient_id: str = "hfs-1") -> dict:
    """A 58-year-old woman with left hemifacial spasm since 2017, hypertension, on
    carbamazepine, who had a microvascular decompression two years ago."""
    subject = {"reference": f"Patient/{patient_id}"}
    return {
        "patient": {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1967-04-02"},
        "conditions": searchset(
            {
                "resourceType": "Condition",
                "id": "hfs",
                "subject": subject,
                "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                "code": coded(ICD10CM, "G51.3", "Clonic hemifacial spasm"),
                "onsetDateTime": "2017-06-15",
            },
            {
                "resourceType": "Condition",
                "id": "htn",
                "subject": subject,
                "clinicalStatus": coded("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                "code": coded(ICD10CM, "I10", "Essential (primary) hypertension"),
                "onsetDateTime": "2015-01-10",
            },
            server=True,
        ),
        "procedures": searchset(
            {
                "resourceType": "Procedure",
                "id": "mvd",
                "subject": subject,
                "status": "completed",
                "code": coded(ICD10PCS, "00NM0ZZ", "Release Facial Nerve, Open Approach"),
                "performedPeriod": {"start": "2023-05-10T08:00:00Z", "end": "2023-05-10T11:30:00Z"},
            },
            server=True,
        ),
        "observations": searchset(
            {
                "resourceType": "Observation",
                "id": "pain",
                "subject": subject,
                "status": "final",
                "code": coded(LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"),
                "effectiveDateTime": "2024-11-02T10:00:00Z",
                "valueQuantity": {
                    "value": 2,
                    "unit": "{score}",
                    "system": "http://unitsofmeasure.org",
                    "code": "{score}",
                },
            },
            server=True,
        ),
        "medicationRequests": searchset(
            {
                "resourceType": "MedicationRequest",
                "id": "cbz",
                "subject": subject,
                "status": "active",
                "intent": "order",
                "authoredOn": "2017-07-01",
                "medicationCodeableConcept": coded(RXNORM, "2002", "carbamazepine"),
            },
            server=True,
        ),
        "medicationStatements": None,
    }


def synthea_like_prefetch(patient_id: str = "5c2f6a7e-1b0d-4c1e-9a63-0a2d2f1c9e11") -> dict:
    """An ordinary primary-care record of the kind Synthea writes: no hemifacial spasm."""
    subject = {"reference": f"urn:uuid:{patient_id}"}
    return {
        "patient": {
            "resourceType": "Patient",
            "id": patient_id,
            "gender": "male",
            "birthDate": "1980-09-12",
            "name": [{"use": "official", "family": "Koepp", "given": ["Abdul"]}],
        },
        "conditions": searchset(
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": subject,
                "code": coded(SNOMED, "444814009", "Viral sinusitis (disorder)"),
                "onsetDateTime": "2012-02-03T10:11:12+01:00",
                "abatementDateTime": "2012-02-17T10:11:12+01:00",
            },
            {
                "resourceType": "Condition",
                "id": "c2",
                "subject": subject,
                "code": coded(SNOMED, "162864005", "Body mass index 30+ - obesity (finding)"),
                "onsetDateTime": "2015-06-01T09:00:00+01:00",
            },
            server=True,
        ),
        "procedures": searchset(
            {
                "resourceType": "Procedure",
                "id": "p1",
                "subject": subject,
                "status": "completed",
                "code": coded(SNOMED, "430193006", "Medication Reconciliation (procedure)"),
                "performedPeriod": {"start": "2019-03-01T09:00:00+01:00", "end": "2019-03-01T09:15:00+01:00"},
            },
            server=True,
        ),
        "observations": searchset(
            {
                "resourceType": "Observation",
                "id": "o1",
                "subject": subject,
                "status": "final",
                "code": coded(LOINC, "8302-2", "Body Height"),
                "effectiveDateTime": "2019-03-01T09:00:00+01:00",
                "valueQuantity": {"value": 178.2, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"},
            },
            server=True,
        ),
        "medicationRequests": searchset(server=True),
        "medicationStatements": searchset(server=True),
    }


def mvd_draft_orders(patient_id: str = "hfs-1") -> dict:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "id": "mvd-order",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "code": coded(CPT, "61458", "Craniectomy for exploration or decompression of cranial nerves"),
                }
            }
        ],
    }


def order_select(prefetch: dict | None) -> dict:
    return hook_request(
        "order-select", prefetch=prefetch, selections=["ServiceRequest/mvd-order"], draftOrders=mvd_draft_orders()
    )


def feedback_body(card_uuid: str, outcome: str = "overridden") -> dict:
    entry = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": "2025-01-15T10:05:31Z"}
    if outcome == "overridden":
        entry["overrideReason"] = {"userComment": "Discussed with the patient."}
    else:
        entry["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    return {"feedback": [entry]}


# ------------------------------------------------------------------ app


def url(template: str, service_id: str = PATIENT_VIEW) -> str:
    return template.replace("{service_id}", service_id)


# ------------------------------------------------------------------ scenarios
# (documented path, METHOD, expected status) -> what the client does.

Scenario = Callable[[Callable], object]


def _discovery(make):
    return make().get(DISCOVERY)


def _bad_token(template: str, method: str, body: dict | None = None):
    def run(make):
        headers = {"Authorization": "Bearer eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"}
        return make().open(url(template), method=method, json=body, headers=headers)

    return run


def _hfs_patient_view(make):
    return make().post(url(CALL), json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1"))


def _order_select_without_prefetch(make):
    return make().post(url(CALL, ORDER_SELECT), json=order_select(None))


def _invalid_hook_request(make):
    body = patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1")
    del body["context"]["patientId"]
    return make().post(url(CALL), json=body)


def _unknown_service(template: str):
    def run(make):
        return make().post(url(template, "no-such-service"), json=feedback_body(str(uuid.uuid4())))

    return run


def _evidence_page(expired: bool = False):
    def run(make):
        client = make()
        pages = client.application.extensions["evidence_pages"].pages
        page = {
            "card_id": "rfa-recurrence",
            "title": "Evidence",
            "charts": [],
            "inputs": [],
            "caveats": [],
            "sources": [],
        }
        token = pages.save(page, ttl_s=-60 if expired else None)
        return client.get(EVIDENCE.replace("{token}", token))

    return run


def _unknown_evidence_page(make):
    return make().get(EVIDENCE.replace("{token}", "Q" * 43))


def _too_large(template: str):
    def run(make):
        body = json.dumps({"padding": "x" * 8192})
        return make(max_body_bytes=2048).post(url(template), data=body, content_type="application/json")

    return run


def _not_json(template: str):
    def run(make):
        return make().post(url(template), data="hook=patient-view", content_type="application/x-www-form-urlencoded")

    return run


def _feedback(make):
    return make().post(url(FEEDBACK), json=feedback_body(str(uuid.uuid4())))


def _invalid_feedback(make):
    body = feedback_body(str(uuid.uuid4()))
    body["feedback"][0]["outcome"] = "ignored"
    return make().post(url(FEEDBACK), json=body)


def _preflight(template: str):
    def run(make):
        headers = {
            "Origin": EHR_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        return make(cors_origins=(EHR_ORIGIN,)).options(url(template), headers=headers)

    return run


def _plain_options(template: str):
    def run(make):
        return make().options(url(template))

    return run


def _saturated(make):
    from cds_service.http import admission

    client = make()
    admission.stamp(0.0, shed=True)  # as the gunicorn worker marks a call beyond capacity
    try:
        return client.post(url(CALL), json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1"))
    finally:
        admission.clear()


def _get(path: str, **overrides):
    def run(make):
        return make(**overrides).get(path)

    return run


def _not_ready(make):
    from cds_service.http import lifecycle

    client = make()
    lifecycle.set_draining(True)
    try:
        return client.get(READYZ)
    finally:
        lifecycle.set_draining(False)


SCENARIOS: dict[tuple[str, str, int], Scenario] = {
    (CALL, "POST", 503): _saturated,
    (HEALTHZ, "GET", 200): _get(HEALTHZ),
    (READYZ, "GET", 200): _get(READYZ),
    (READYZ, "GET", 503): _not_ready,
    (METRICS, "GET", 401): _get(METRICS, metrics_token="scrape-secret"),
    (METRICS, "GET", 404): _get(METRICS),
    (DISCOVERY, "GET", 200): _discovery,
    (DISCOVERY, "GET", 401): _bad_token(DISCOVERY, "GET"),
    (DISCOVERY, "OPTIONS", 204): _preflight(DISCOVERY),
    (DISCOVERY, "OPTIONS", 200): _plain_options(DISCOVERY),
    (CALL, "POST", 200): _hfs_patient_view,
    (CALL, "POST", 400): _invalid_hook_request,
    (CALL, "POST", 401): _bad_token(
        CALL, "POST", patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1")
    ),
    (CALL, "POST", 404): _unknown_service(CALL),
    (CALL, "POST", 412): _order_select_without_prefetch,
    (CALL, "POST", 413): _too_large(CALL),
    (CALL, "POST", 415): _not_json(CALL),
    (CALL, "OPTIONS", 204): _preflight(CALL),
    (CALL, "OPTIONS", 200): _plain_options(CALL),
    (FEEDBACK, "POST", 200): _feedback,
    (FEEDBACK, "POST", 400): _invalid_feedback,
    (FEEDBACK, "POST", 401): _bad_token(FEEDBACK, "POST", feedback_body(str(uuid.uuid4()))),
    (FEEDBACK, "POST", 404): _unknown_service(FEEDBACK),
    (FEEDBACK, "POST", 413): _too_large(FEEDBACK),
    (FEEDBACK, "POST", 415): _not_json(FEEDBACK),
    (FEEDBACK, "OPTIONS", 204): _preflight(FEEDBACK),
    (FEEDBACK, "OPTIONS", 200): _plain_options(FEEDBACK),
    (EVIDENCE, "GET", 200): _evidence_page(),
    (EVIDENCE, "GET", 404): _unknown_evidence_page,
    (EVIDENCE, "GET", 410): _evidence_page(expired=True),
}

# A 500 is documented (its body shape is part of the contract) but no scenario may cause one.
NOT_PROVOKED = {500}
# Answers that are not JSON, checked by their own test below.
TEXT_ANSWERS = {(METRICS, "GET", 200)}


@pytest.mark.parametrize("path, method, status", sorted(SCENARIOS), ids=lambda v: str(v))
def test_each_documented_answer_is_given_and_matches_its_schema(make_client, path, method, status):
    response = SCENARIOS[(path, method, status)](make_client)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert_documented(path, method, response)


def test_the_scenarios_cover_every_documented_status():
    contract = load_contract()
    documented = {
        (path, method.upper(), int(status))
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
        for status in operation["responses"]
        if int(status) not in NOT_PROVOKED
    }
    assert documented == set(SCENARIOS) | TEXT_ANSWERS


def test_a_metrics_scrape_with_the_token_is_the_documented_text_exposition(make_client):
    response = make_client(metrics_token="scrape-secret").get(
        METRICS, headers={"Authorization": "Bearer scrape-secret"}
    )
    assert response.status_code == 200
    documented = load_contract()["paths"][METRICS]["get"]["responses"]["200"]["content"]
    assert response.mimetype in documented
    assert "# TYPE cds_hook_calls_total counter" in response.get_data(as_text=True)


# ------------------------------------------------------------------ the clinical calls


def test_discovery_lists_every_service_with_its_hook_and_prefetch_templates(client):
    response = client.get(DISCOVERY)
    assert_documented(DISCOVERY, "GET", response)
    services = {s["id"]: s for s in response.get_json()["services"]}
    assert {services[i]["hook"] for i in (PATIENT_VIEW, ORDER_SELECT, ORDER_SIGN)} == {
        "patient-view",
        "order-select",
        "order-sign",
    }
    for service in services.values():
        assert service["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}"
        assert all("{{context.patientId}}" in query for query in service["prefetch"].values())


def test_a_chart_with_hemifacial_spasm_after_mvd_gets_cards_that_match_the_contract(client):
    response = client.post(url(CALL), json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(CALL, "POST", response)
    cards = response.get_json()["cards"]
    assert cards, "an HFS patient two years after MVD should get at least the recurrence card"
    assert len({card["uuid"] for card in cards}) == len(cards)


def test_a_synthea_like_chart_without_hemifacial_spasm_answers_within_the_contract(client):
    patient_id = "5c2f6a7e-1b0d-4c1e-9a63-0a2d2f1c9e11"
    response = client.post(
        url(CALL), json=patient_view(patient_id, prefetch=synthea_like_prefetch(patient_id), encounterId="enc-1")
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(CALL, "POST", response)
    summaries = " ".join(card["summary"] for card in response.get_json()["cards"]).lower()
    assert "hemifacial" not in summaries and "mvd" not in summaries


def test_selecting_an_mvd_order_with_prefetch_gets_cards_that_match_the_contract(client):
    response = client.post(url(CALL, ORDER_SELECT), json=order_select(hfs_patient_prefetch()))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(CALL, "POST", response)
    assert response.get_json()["cards"], "an MVD order for an HFS patient should get a card"


def test_signing_an_mvd_order_answers_within_the_contract(client):
    body = hook_request("order-sign", prefetch=hfs_patient_prefetch(), draftOrders=mvd_draft_orders())
    response = client.post(url(CALL, ORDER_SIGN), json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(CALL, "POST", response)


def test_selecting_an_order_without_prefetch_or_fhir_server_is_a_412_naming_the_missing_data(client):
    response = client.post(url(CALL, ORDER_SELECT), json=order_select(None))
    assert response.status_code == 412
    assert_documented(CALL, "POST", response)
    body = response.get_json()
    assert error_code(body) == "prefetch_unavailable"
    assert body["issue"][0]["expression"] == ["prefetch.conditions", "prefetch.procedures"]
    assert "'conditions'" in body["issue"][0]["diagnostics"]
    assert "hfs-1" not in response.get_data(as_text=True)


def test_a_request_body_that_is_not_json_is_a_400_invalid_json(client):
    response = client.post(url(CALL), data='{"hook": "patient-view",', content_type="application/json")
    assert response.status_code == 400
    assert_documented(CALL, "POST", response)
    assert error_code(response.get_json()) == "invalid_json"


def test_a_hook_request_for_another_hook_is_a_400_invalid_request(client):
    response = client.post(
        url(CALL, ORDER_SIGN), json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1")
    )
    assert response.status_code == 400
    assert_documented(CALL, "POST", response)
    assert error_code(response.get_json()) == "invalid_request"


def test_feedback_on_a_card_just_issued_is_stored(client):
    cards = client.post(
        url(CALL), json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1")
    ).get_json()["cards"]
    card_uuid = cards[0]["uuid"] if cards else str(uuid.uuid4())
    assert client.application.extensions["cds_service"].store.flush_audit(
        5.0
    )  # issued cards are audited off the request path
    # an acceptance names a suggestion issued with its card; a card this service has no record
    # of returning is kept as unlinked feedback
    not_issued_card = str(uuid.uuid4())
    body = {
        "feedback": [feedback_body(card_uuid)["feedback"][0], feedback_body(not_issued_card, "accepted")["feedback"][0]]
    }
    response = client.post(url(FEEDBACK), json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(FEEDBACK, "POST", response)
    assert response.get_json() == {"accepted": 2}
    refused = client.post(url(FEEDBACK), json=feedback_body(card_uuid, "accepted"))
    assert refused.status_code == 400 and error_code(refused.get_json()) == "invalid_feedback"
    assert_documented(FEEDBACK, "POST", refused)


def test_feedback_that_is_not_json_is_a_400_invalid_json(client):
    response = client.post(url(FEEDBACK), data="feedback", content_type="application/json")
    assert response.status_code == 400
    assert_documented(FEEDBACK, "POST", response)
    assert error_code(response.get_json()) == "invalid_json"


def test_a_refused_token_gets_a_bare_401_with_a_bearer_challenge(client):
    response = client.post(
        url(CALL),
        json=patient_view("hfs-1", prefetch=hfs_patient_prefetch(), encounterId="enc-1"),
        headers={"Authorization": "Bearer not-a-jwt"},
    )
    assert response.status_code == 401
    assert_documented(CALL, "POST", response)
    assert response.get_json() == {"error": "unauthorized"}
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_a_preflight_from_an_allowed_origin_carries_the_cors_headers(make_client):
    response = _preflight(CALL)(make_client)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


# ------------------------------------------------------------------ the contract itself


def flask_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operations |= {(path, method) for method in rule.methods if method != "HEAD"}
    return operations


def test_every_route_of_the_app_is_in_the_contract_and_every_operation_is_served(app):
    assert flask_operations(app) == documented_operations()


def test_the_contract_is_a_valid_openapi_3_1_document():
    errors = [e.message[:300] for e in Draft202012Validator(OPENAPI_31).iter_errors(load_contract())]
    assert errors == []
    for _name, schema in load_contract()["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)


def test_every_operation_documents_json_errors_with_the_error_schema():
    for path, item in load_contract()["paths"].items():
        for method, operation in item.items():
            if method in ("parameters", "options"):
                continue
            if "text/html" in operation["responses"]["200"].get("content", {}):
                continue  # a page for people (the evidence page): HTML answers, no client JWT
            statuses = {int(s) for s in operation["responses"]}
            # Operations without authentication (security: [], e.g. /healthz) have no 401.
            authenticated = operation.get("security") != []
            assert ({200, 401, 500} if authenticated else {200, 500}) <= statuses, (path, method)
            for status in statuses - {200, 401}:
                if path == READYZ and status == 503:
                    continue  # the Readiness body, not an error: checked by its scenario
                assert response_errors(path, method, status, outcome("x", "y")) != [], (
                    f"{method} {path} {status} should restrict the error code"
                )


def _media_examples(media: dict):
    if "example" in media:
        yield "example", media["example"]
    for name, example in media.get("examples", {}).items():
        yield name, example["value"]


def test_every_example_in_the_contract_fits_its_schema():
    checked = 0
    for path, item in load_contract()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                validator = validator_at("paths", path, method, "requestBody", "content", "application/json", "schema")
                for name, example in _media_examples(body):
                    assert [e.message for e in validator.iter_errors(example)] == [], (path, method, name)
                    checked += 1
            for status in operation["responses"]:
                node, parts = documented_response(path, method, int(status))
                for media_type, media in node.get("content", {}).items():
                    validator = validator_at(*parts, "content", media_type, "schema")
                    for name, example in _media_examples(media):
                        assert [e.message for e in validator.iter_errors(example)] == [], (path, method, status, name)
                        checked += 1
    assert checked >= 15


def outcome(code: str, text: object, **more) -> dict:
    details = {"coding": [{"system": ERROR_CODE_SYSTEM, "code": code}], "text": text}
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "details": details, **more}],
    }


def test_the_error_schemas_refuse_nulls_extra_members_and_stack_traces():
    assert response_errors(CALL, "POST", 412, outcome("prefetch_unavailable", "conditions")) == []
    assert response_errors(CALL, "POST", 412, outcome("prefetch_unavailable", None))
    assert response_errors(CALL, "POST", 400, outcome("invalid_request", "x", trace="..."))
    assert response_errors(CALL, "POST", 400, {"error": "invalid_request", "detail": "x"})  # the 2.0-era shape
    assert response_errors(CALL, "POST", 401, {"error": "unauthorized", "detail": "bad signature"})


# ------------------------------------------------------------------ the specification's examples


def spec_example(name: str) -> dict:
    return json.loads((SPEC_EXAMPLES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["discovery-response.json", "discovery-response-2.json"])
def test_the_specifications_discovery_examples_fit_the_discovery_schema(name):
    assert schema_errors("DiscoveryResponse", spec_example(name)) == []


@pytest.mark.parametrize("name", ["response-cards.json", "response-system-actions.json", "response-empty.json"])
def test_the_specifications_response_examples_fit_the_cards_schema(name):
    assert schema_errors("CardsResponse", spec_example(name)) == []


def test_the_specifications_autolaunch_example_lacks_only_the_required_indicator():
    # CDS Hooks 2.0 makes `indicator` REQUIRED, but its `autolaunchable` example omits it.
    errors = schema_errors("CardsResponse", spec_example("response-cards-2.json"))
    assert errors == ["at cards/0: 'indicator' is a required property"]
    fixed = spec_example("response-cards-2.json")
    fixed["cards"][0]["indicator"] = "info"
    assert schema_errors("CardsResponse", fixed) == []


def test_this_service_insists_on_card_uuids_where_the_specification_makes_them_optional():
    example = spec_example("response-cards.json")
    assert schema_errors("ServiceCardsResponse", {"cards": example["cards"][:1]}) == []
    assert schema_errors("ServiceCardsResponse", example) == ["at cards/1: 'uuid' is a required property"]


@pytest.mark.parametrize("name", ["feedback-accepted.json", "feedback-multiple.json", "feedback-overridden.json"])
def test_the_specifications_feedback_examples_fit_the_feedback_schema(name):
    assert schema_errors("FeedbackRequest", spec_example(name)) == []


def test_the_specifications_patient_view_request_fits_the_hook_request_schema():
    assert schema_errors("HookRequest", spec_example("request-patient-view.json")) == []


def test_the_abridged_extension_example_misses_only_the_patient_id():
    example = spec_example("request-with-authorization.json")
    assert schema_errors("HookRequest", example) != []
    example["context"]["patientId"] = "1288992"
    assert schema_errors("HookRequest", example) == []


@pytest.mark.parametrize(
    "name, hook",
    [
        ("example-order-select-1.json", "order-select"),
        ("example-order-select-2.json", "order-select"),
        ("example-order-select-3.json", "order-select"),
        ("example-order-sign-1.json", "order-sign"),
        ("example-order-sign-2.json", "order-sign"),
    ],
)
def test_the_hook_librarys_order_contexts_fit_the_hook_request_schema(name, hook):
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": spec_example(name)["context"]}
    assert schema_errors("HookRequest", body) == []


def test_the_hook_request_schema_refuses_what_the_service_refuses():
    good = hook_request("patient-view", prefetch={"conditions": None})
    assert schema_errors("HookRequest", good) == []
    wrong_user = json.loads(json.dumps(good))
    wrong_user["context"]["userId"] = "Device/1"
    assert schema_errors("HookRequest", wrong_user)
    token_without_server = dict(
        good,
        fhirAuthorization={
            "access_token": "t",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/*.read",
            "subject": "cds",
        },
    )
    assert schema_errors("HookRequest", token_without_server)
    bad_prefetch = dict(good, prefetch={"conditions": "Condition?patient=1"})
    assert schema_errors("HookRequest", bad_prefetch)
    select_without_selections = hook_request("order-select", draftOrders=mvd_draft_orders())
    assert schema_errors("HookRequest", select_without_selections)


def test_the_card_schema_closes_cards_and_refuses_nulls_and_long_summaries():
    card = {"uuid": str(uuid.uuid4()), "summary": "s", "indicator": "info", "source": {"label": "Zhou 2025"}}
    assert schema_errors("ServiceCard", card) == []
    assert schema_errors("ServiceCard", dict(card, detail=None))
    assert schema_errors("ServiceCard", dict(card, score=0.3))
    assert schema_errors("ServiceCard", dict(card, summary="x" * 140))
    assert schema_errors("ServiceCard", dict(card, indicator="hint"))
    assert schema_errors("ServiceCard", dict(card, suggestions=[{"label": "Order MRI"}]))
    assert schema_errors("ServiceCard", dict(card, overrideReasons=[{"code": "a", "system": "b"}]))
    assert schema_errors("ServiceCard", dict(card, links=[]))
    assert schema_errors("ServiceCard", dict(card, uuid="card-1"))


def test_the_discovery_example_is_what_this_service_publishes(client):
    """The contract's example of discovery shows the prefetch templates the service really
    publishes (narrowed by code at start-up), not an older broad form."""
    example = load_contract()["paths"][DISCOVERY]["get"]["responses"]["200"]["content"]["application/json"]
    shown = example["examples"]["thisService"]["value"]["services"][0]
    published = {s["id"]: s for s in client.get(DISCOVERY).get_json()["services"]}[shown["id"]]
    assert shown["prefetch"] == published["prefetch"]
    assert {k: shown[k] for k in ("hook", "title", "version", "hookVersion")} == {
        k: published[k] for k in ("hook", "title", "version", "hookVersion")
    }
