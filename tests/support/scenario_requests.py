"""Builders of complete hook requests for scenario patients (full prefetch, or none)."""

from __future__ import annotations

import uuid

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def searchset(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def condition(patient_id: str, code: str, onset: str, status: str = "active", system: str = ICD10CM) -> dict:
    return {
        "resourceType": "Condition",
        "id": f"cond-{uuid.uuid4().hex[:8]}",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": onset,
    }


def procedure(patient_id: str, code: str, start: str, end: str, system: str = ICD10PCS) -> dict:
    return {
        "resourceType": "Procedure",
        "id": f"proc-{uuid.uuid4().hex[:8]}",
        "status": "completed",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "performedPeriod": {"start": start, "end": end},
    }


def patient_view(patient_id: str, *, conditions=(), procedures=(), observations=(), medications=()) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1968-04-02"},
            "conditions": searchset(*conditions),
            "procedures": searchset(*procedures),
            "observations": searchset(*observations),
            "medicationRequests": searchset(*medications),
            "medicationStatements": searchset(),
        },
    }


def hfs_after_mvd_patient_view(patient_id: str) -> dict:
    """An HFS patient whose spasm resolved after an MVD about 17 months ago."""
    return patient_view(
        patient_id,
        conditions=[condition(patient_id, "G51.31", "2019-05-01", status="resolved")],
        procedures=[procedure(patient_id, "00NM0ZZ", "2025-06-10T08:00:00Z", "2025-06-10T10:10:00Z")],
    )
