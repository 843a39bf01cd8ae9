"""fhirAuthorization.scope (issue 19): SMART v1 and v2 scopes decide what the service reads
from the client's FHIR server; a search the scope does not allow is not sent, and the card
says which data could not be read."""

from __future__ import annotations

import dataclasses

import pytest
from support.chart import Chart
from support.fhir import validated_request

from cds_service.fhir.prefetch import resolve
from cds_service.fhir.scopes import parse_scope

from .test_prefetch import PATIENT_ID, PATIENT_VIEW, TOKEN, access, base, serve_everything  # noqa: F401


@pytest.mark.parametrize(
    ("scope", "resource_type", "interaction", "allowed"),
    [
        ("patient/Observation.read", "Observation", "s", True),
        ("patient/Observation.read", "Observation", "r", True),
        ("user/Observation.rs", "Observation", "s", True),
        ("user/Observation.r", "Observation", "s", False),
        ("user/Observation.s", "Observation", "r", False),
        ("system/*.read", "Procedure", "s", True),
        ("patient/*.cruds", "Condition", "s", True),
        ("patient/*.cud", "Condition", "r", False),
        ("patient/Observation.write", "Observation", "s", False),
        ("patient/Observation.rs?category=laboratory", "Observation", "s", False),
        ("patient/Condition.read", "Observation", "s", False),
        ("openid fhirUser launch", "Patient", "r", False),
        ("patient/Patient.* patient/Condition.rs", "Patient", "r", True),
        ("", "Patient", "r", False),
    ],
)
def test_v1_and_v2_scopes_grant_read_and_search(scope, resource_type, interaction, allowed):
    assert parse_scope(scope).allows(resource_type, interaction) is allowed


def test_no_scope_at_all_limits_nothing():
    assert parse_scope(None).allows("Observation", "s")


def scoped(request, scope: str):
    return dataclasses.replace(request, scope=scope)


def test_only_what_the_scope_allows_is_fetched_and_the_rest_is_named(fhir_stub, access):  # noqa: F811
    serve_everything(fhir_stub)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    scope = "launch patient/Patient.rs patient/Condition.rs patient/Procedure.read patient/Observation.rs?category=vital-signs"
    result = resolve(PATIENT_VIEW, scoped(request, scope), access())
    asked = {entry[0].path.split("/")[2] for entry in fhir_stub.log}
    assert asked == {"Patient", "Condition", "Procedure"}
    assert set(result.fetched) == {"patient", "conditions", "procedures"}
    assert set(result.unavailable) == {"observations", "medicationRequests", "medicationStatements"}
    assert all("scope does not allow this search" in reason for reason in result.unavailable.values())


def test_a_required_search_the_scope_forbids_is_a_412_saying_so(fhir_stub, access):  # noqa: F811
    serve_everything(fhir_stub)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    with pytest.raises(Exception) as refused:
        resolve(PATIENT_VIEW, scoped(request, "user/Observation.rs"), access())
    assert refused.value.status == 412 and "scope does not allow" in refused.value.detail
    assert {entry[0].path.split("/")[2] for entry in fhir_stub.log} == {"Observation"}  # the one allowed


def test_the_card_says_which_data_the_scope_did_not_let_the_service_read(client, fhir_stub):
    serve_everything(fhir_stub)
    chart = Chart(patient_id=PATIENT_ID).hfs().mvd("2025-06-10T08:00:00Z")
    body = chart.hook_request("patient-view", fhir_server=base(fhir_stub), token=TOKEN)
    prefetch = body["prefetch"]
    body["prefetch"] = {k: prefetch[k] for k in ("patient", "conditions", "procedures") if k in prefetch}
    body["fhirAuthorization"]["scope"] = "patient/Patient.read patient/Condition.read patient/Procedure.read"
    response = client.post("/cds-services/hfs-outcomes-patient-view", json=body)
    assert response.status_code == 200, response.get_json()
    detail = response.get_json()["cards"][0]["detail"]
    section = detail.split("### Data that could not be retrieved", 1)[1]
    assert "scope does not allow this search" in section
    assert fhir_stub.log == []  # nothing was searched that the token does not allow
