"""The FHIR fallback against a real FHIR R4 server (sekmet): a client that prefetches nothing."""

from __future__ import annotations

import copy
import json
from uuid import uuid4

import pytest
from support.fhir import validated_request
from support.fhir_server_fixture import created_ids
from support.paths import DATA_DIR

from cds_service.config import DEFAULT_CARDS_DIR, Settings
from cds_service.content.services import PrefetchTemplate, ServiceDefinition, load_services, narrow_prefetch
from cds_service.errors import ApiError
from cds_service.fhir.client import FhirAccess
from cds_service.fhir.prefetch import resolve
from cds_service.terminology.concepts_file import load_concepts

pytestmark = pytest.mark.fhir_server

HFS_PATIENT = DATA_DIR / "fhir" / "hfs_patient_transaction.json"
PATIENT_VIEW = load_services(DEFAULT_CARDS_DIR / "services.toml")["hfs-outcomes-patient-view"]


@pytest.fixture
def access(fhir_server):
    # The server on the allowlist: the reasons of its refusals are then told to the client.
    fhir = FhirAccess(Settings(fhir_time_budget_s=10.0, fhir_server_allowlist=(fhir_server.base_url,)))
    yield fhir
    fhir.close()


def hfs_bundle() -> dict:
    return json.loads(HFS_PATIENT.read_text(encoding="utf-8"))


@pytest.fixture
def hfs_patient_id(fhir_server) -> str:
    """A new HFS patient (Patient, Condition G51.3, MVD Procedure, pain Observation,
    carbamazepine MedicationRequest) loaded by transaction; its server-assigned id."""
    (patient_id,) = created_ids(fhir_server.load(hfs_bundle()), "Patient")
    return patient_id


def entries(bundle: dict, resource_type: str) -> list[dict]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def test_with_no_prefetch_every_key_is_fetched_from_the_fhir_server(fhir_server, hfs_patient_id, access):
    request = validated_request(
        context={"patientId": hfs_patient_id, "userId": "Practitioner/example"},
        fhir_server=fhir_server.base_url,
        access_token=fhir_server.token,
    )
    result = resolve(PATIENT_VIEW, request, access)

    assert result.fetched == tuple(t.key for t in PATIENT_VIEW.prefetch)
    assert result.unavailable == {} and result.incomplete == {}
    assert result.data["patient"]["id"] == hfs_patient_id
    assert result.data["patient"]["birthDate"] == "1968-04-12"

    (hfs,) = entries(result.data["conditions"], "Condition")
    assert hfs["code"]["coding"][0]["code"] == "G51.3"
    assert hfs["onsetDateTime"] == "2018-03-01"
    assert hfs["subject"]["reference"] == f"Patient/{hfs_patient_id}"
    (mvd,) = entries(result.data["procedures"], "Procedure")
    assert mvd["status"] == "completed" and mvd["code"]["coding"][0]["code"] == "00NM0ZZ"
    (pain,) = entries(result.data["observations"], "Observation")
    assert pain["code"]["coding"][0]["code"] == "72514-3"
    (cbz,) = entries(result.data["medicationRequests"], "MedicationRequest")
    assert cbz["medicationCodeableConcept"]["coding"][0]["code"] == "2002"
    assert entries(result.data["medicationStatements"], "MedicationStatement") == []


def test_only_this_patients_resources_are_fetched(fhir_server, hfs_patient_id, access):
    (other_id,) = created_ids(fhir_server.load(hfs_bundle()), "Patient")
    request = validated_request(
        context={"patientId": hfs_patient_id}, fhir_server=fhir_server.base_url, access_token=fhir_server.token
    )
    result = resolve(PATIENT_VIEW, request, access)
    subjects = {
        r["subject"]["reference"]
        for key in ("conditions", "procedures", "observations", "medicationRequests")
        for r in entries(result.data[key], result.data[key]["entry"][0]["resource"]["resourceType"])
    }
    assert subjects == {f"Patient/{hfs_patient_id}"}
    assert other_id != hfs_patient_id


def test_what_was_prefetched_is_kept_and_an_operation_outcome_is_refetched(fhir_server, hfs_patient_id, access):
    sent_procedures = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    request = validated_request(
        context={"patientId": hfs_patient_id},
        fhir_server=fhir_server.base_url,
        access_token=fhir_server.token,
        prefetch={
            "procedures": sent_procedures,
            "observations": None,
            "conditions": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "too-costly"}]},
        },
    )
    result = resolve(PATIENT_VIEW, request, access)
    assert result.data["procedures"] is sent_procedures
    assert result.data["observations"] is None
    assert entries(result.data["conditions"], "Condition")[0]["code"]["coding"][0]["code"] == "G51.3"
    assert result.fetched == ("patient", "conditions", "medicationRequests", "medicationStatements")


def test_real_next_links_are_followed_and_pages_merged(fhir_server, access):
    bundle = hfs_bundle()
    hfs = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    for n, code in enumerate(("I10", "E11.9"), start=1):
        extra = copy.deepcopy(hfs)
        extra["fullUrl"] = extra["fullUrl"][:-2] + f"9{n}"
        extra["resource"]["code"] = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]}
        bundle["entry"].append(extra)
    (patient_id,) = created_ids(fhir_server.load(bundle), "Patient")
    svc = ServiceDefinition(
        id="paged",
        hook="patient-view",
        title="t",
        description="d",
        prefetch=(PrefetchTemplate("conditions", "Condition?patient={{context.patientId}}&_count=1", True),),
    )
    request = validated_request(
        context={"patientId": patient_id}, fhir_server=fhir_server.base_url, access_token=fhir_server.token
    )
    result = resolve(svc, request, access)
    codes = sorted(c["code"]["coding"][0]["code"] for c in entries(result.data["conditions"], "Condition"))
    assert codes == ["E11.9", "G51.3", "I10"]
    assert result.incomplete == {}

    capped = FhirAccess(Settings(fhir_time_budget_s=10.0, fhir_max_pages=2))
    try:
        partial = resolve(svc, request, capped)
    finally:
        capped.close()
    assert len(partial.data["conditions"]["entry"]) == 2
    assert partial.incomplete == {"conditions": "more than 2 pages; the rest was not read"}


def test_an_unknown_patient_has_no_data_rather_than_an_error(fhir_server, access):
    request = validated_request(
        context={"patientId": "no-such-patient"}, fhir_server=fhir_server.base_url, access_token=fhir_server.token
    )
    result = resolve(PATIENT_VIEW, request, access)
    assert result.data["patient"] is None
    assert all(result.data[key]["entry"] == [] for key in ("conditions", "procedures", "observations"))
    assert result.unavailable == {}


def test_a_wrong_token_fails_the_required_keys_with_412(fhir_server, hfs_patient_id, access):
    request = validated_request(
        context={"patientId": hfs_patient_id}, fhir_server=fhir_server.base_url, access_token="not-" + fhir_server.token
    )
    with pytest.raises(ApiError) as caught:
        resolve(PATIENT_VIEW, request, access)
    error = caught.value
    assert (error.status, error.error) == (412, "prefetch_unavailable")
    assert "conditions (Condition search): FHIR server answered 401" in error.detail
    assert "procedures (Procedure search): FHIR server answered 401" in error.detail
    assert fhir_server.token not in error.detail and hfs_patient_id not in error.detail


def test_no_token_at_all_is_refused_by_the_server_and_reported(fhir_server, hfs_patient_id, access):
    request = validated_request(
        context={"patientId": hfs_patient_id}, fhir_server=fhir_server.base_url, access_token=None
    )
    with pytest.raises(ApiError, match="answered 401"):
        resolve(PATIENT_VIEW, request, access)


def test_the_narrowed_searches_find_by_code_and_by_component_code_and_nothing_else(fhir_server, access):
    """The code filters of the prefetch templates (content/services.py narrow_prefetch) work
    through the FHIR fallback: several system|code tokens, comma-separated; an Observation
    found by a component's code (combo-code); one of no concept's code not sent at all."""
    service = narrow_prefetch({"s": PATIENT_VIEW}, load_concepts(DEFAULT_CARDS_DIR))["s"]
    bundle = hfs_bundle()
    patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    loinc = "http://loinc.org"

    def observation(code: dict, **extra) -> dict:
        resource = {"resourceType": "Observation", "status": "final", "code": {"coding": [code]}}
        resource["subject"] = {"reference": patient_url}
        resource.update(extra)
        return {
            "fullUrl": f"urn:uuid:{uuid4()}",
            "resource": resource,
            "request": {"method": "POST", "url": "Observation"},
        }

    bundle["entry"] += [
        observation({"system": loinc, "code": "8302-2"}, valueQuantity={"value": 170, "unit": "cm"}),
        observation(
            {"system": loinc, "code": "99999-9"},
            component=[{"code": {"coding": [{"system": loinc, "code": "38208-5"}]}, "valueInteger": 4}],
        ),
    ]
    (patient_id,) = created_ids(fhir_server.load(bundle), "Patient")
    request = validated_request(
        context={"patientId": patient_id, "userId": "Practitioner/example"},
        fhir_server=fhir_server.base_url,
        access_token=fhir_server.token,
    )
    result = resolve(service, request, access)
    assert result.unavailable == {} and result.incomplete == {}
    codes = {c["code"] for o in entries(result.data["observations"], "Observation") for c in o["code"]["coding"]}
    assert "8302-2" not in codes  # body height: no concept reads it, not sent
    assert "99999-9" in codes  # found by its component's code
    assert "72514-3" in codes or "38208-5" in codes  # the chart's own pain score
    assert entries(result.data["procedures"], "Procedure")  # the MVD, by its code
    broad = resolve(PATIENT_VIEW, request, access)
    assert len(broad.data["observations"]["entry"]) > len(result.data["observations"]["entry"])
