"""Hook request validation: what each hook requires, and the spec's own examples."""

from __future__ import annotations

import copy
import json

import pytest
from support.fhir import hook_request
from support.paths import SPEC_EXAMPLES_DIR

from cds_service.content.services import PrefetchTemplate, ServiceDefinition
from cds_service.errors import ApiError
from cds_service.http.hook_request import parse_hook_request

SPEC = SPEC_EXAMPLES_DIR
INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def service(hook: str) -> ServiceDefinition:
    return ServiceDefinition(
        id=f"svc-{hook}",
        hook=hook,
        title="t",
        description="d",
        prefetch=(PrefetchTemplate("patient", "Patient/{{context.patientId}}", False),),
    )


def spec_json(name: str) -> dict:
    return json.loads((SPEC / name).read_text())


def order_request(example: str, hook: str) -> dict:
    return {"hook": hook, "hookInstance": INSTANCE, "context": spec_json(example)["context"]}


def spec_request(**top_level) -> dict:
    """The spec example patient's patient-view request, without prefetch (support.fhir);
    `top_level` members replace the built ones, to make it invalid."""
    return hook_request("patient-view", patient_id="1288992", instance=INSTANCE) | top_level


def refusal(body, hook="patient-view") -> str:
    with pytest.raises(ApiError) as caught:
        parse_hook_request(body, service(hook))
    assert caught.value.status == 400
    return caught.value.detail


def test_the_spec_patient_view_request_is_accepted():
    request = parse_hook_request(spec_json("request-patient-view.json"), service("patient-view"))
    assert request.patient_id == "1288992"
    assert request.fhir_server == "http://hooks.smarthealthit.org:9080"
    assert request.access_token == "some-opaque-fhir-access-token"
    assert "patientToGreet" in request.prefetch


@pytest.mark.parametrize(
    "example", ["example-order-select-1.json", "example-order-select-2.json", "example-order-select-3.json"]
)
def test_the_spec_order_select_examples_are_accepted(example):
    request = parse_hook_request(order_request(example, "order-select"), service("order-select"))
    assert request.selections and request.draft_orders["resourceType"] == "Bundle"


@pytest.mark.parametrize("example", ["example-order-sign-1.json", "example-order-sign-2.json"])
def test_the_spec_order_sign_examples_are_accepted(example):
    request = parse_hook_request(order_request(example, "order-sign"), service("order-sign"))
    assert request.selections is None
    assert len(request.draft_orders["entry"]) == 2


def test_a_hook_other_than_the_services_is_refused():
    assert "answers the 'patient-view' hook" in refusal(spec_request(hook="order-sign"))


@pytest.mark.parametrize("instance", [None, 42, "", "not-a-uuid", "d1577c69"])
def test_hook_instance_must_be_a_uuid(instance):
    body = spec_request(hookInstance=instance)
    assert "hookInstance" in refusal(body)


@pytest.mark.parametrize("field", ["userId", "patientId"])
def test_patient_view_requires_user_and_patient(field):
    body = spec_request()
    del body["context"][field]
    assert f"context.{field} is required" in refusal(body)


@pytest.mark.parametrize("patient_id", ["../Observation", "a b", "x" * 65, 12, "a&b=c"])
def test_patient_id_must_be_a_fhir_id(patient_id):
    body = spec_request()
    body["context"]["patientId"] = patient_id
    detail = refusal(body)
    assert "context.patientId must be a FHIR id" in detail
    assert str(patient_id) not in detail or len(str(patient_id)) < 3


def test_user_must_be_a_typed_reference_of_an_allowed_type():
    body = spec_request()
    body["context"]["userId"] = "Device/1"
    assert "must name one of" in refusal(body)
    body["context"]["userId"] = "example"
    assert "ResourceType/id" in refusal(body)


def test_order_hooks_do_not_accept_a_patient_as_user():
    body = order_request("example-order-sign-1.json", "order-sign")
    body["context"]["userId"] = "Patient/1"
    assert "must name one of Practitioner, PractitionerRole" in refusal(body, "order-sign")


def test_order_select_requires_selections_and_draft_orders():
    body = order_request("example-order-select-1.json", "order-select")
    del body["context"]["selections"]
    assert "context.selections is required" in refusal(body, "order-select")
    body = order_request("example-order-select-1.json", "order-select")
    del body["context"]["draftOrders"]
    assert "context.draftOrders is required" in refusal(body, "order-select")


def test_selections_must_point_into_draft_orders():
    body = order_request("example-order-select-1.json", "order-select")
    body["context"]["selections"] = ["MedicationRequest/not-in-the-bundle"]
    assert "does not name an order in context.draftOrders" in refusal(body, "order-select")


@pytest.mark.parametrize(
    "draft",
    [
        [],
        "Bundle",
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "entry": {}},
        {"resourceType": "Bundle", "entry": [{"resource": "x"}]},
    ],
)
def test_draft_orders_must_be_a_bundle_of_resources(draft):
    body = order_request("example-order-sign-1.json", "order-sign")
    body["context"]["draftOrders"] = draft
    assert "context.draftOrders" in refusal(body, "order-sign")


def test_fhir_authorization_needs_a_fhir_server():
    body = spec_request(fhirAuthorization=spec_json("fhir-authorization.json")["fhirAuthorization"])
    assert "'fhirServer' is required" in refusal(body)


@pytest.mark.parametrize(
    "auth",
    [
        {"token_type": "Bearer"},
        {"access_token": "t", "token_type": "MAC"},
        {"access_token": 5, "token_type": "Bearer"},
        "token",
    ],
)
def test_fhir_authorization_must_carry_a_bearer_token(auth):
    body = spec_request(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=auth)
    detail = refusal(body)
    assert "fhirAuthorization" in detail


@pytest.mark.parametrize("server", ["ftp://x", "not a url", "https://user:pw@ehr/fhir", 7, "https://ehr/fhir?x=1"])
def test_fhir_server_must_be_an_http_base_url(server):
    assert "fhirServer" in refusal(spec_request(fhirServer=server))


def test_fhir_server_trailing_slash_is_dropped():
    request = parse_hook_request(spec_request(fhirServer="https://ehr.example.org/fhir/"), service("patient-view"))
    assert request.fhir_server == "https://ehr.example.org/fhir"


@pytest.mark.parametrize("prefetch", [[], "x", {"patient": "Patient/1"}, {"patient": [1]}])
def test_prefetch_values_must_be_resources_or_null(prefetch):
    assert "prefetch" in refusal(spec_request(prefetch=prefetch))


def test_null_prefetch_values_are_kept_as_no_data():
    request = parse_hook_request(spec_request(prefetch={"patient": None}), service("patient-view"))
    assert request.prefetch == {"patient": None}


@pytest.mark.parametrize("body", [None, [], "patient-view", 3, {"hook": 5}])
def test_a_body_that_is_not_a_hook_request_is_refused(body):
    refusal(body)


def test_the_context_of_the_request_is_not_changed():
    body = order_request("example-order-select-2.json", "order-select")
    before = copy.deepcopy(body)
    parse_hook_request(body, service("order-select"))
    assert body == before
