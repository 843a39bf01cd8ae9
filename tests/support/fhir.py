"""The one way tests build FHIR resources, searchsets and CDS Hooks requests.

Plain functions returning raw JSON (dicts), as a CDS client or a FHIR server would send
them. `support.chart.Chart` builds whole scenario patients from these; a test that needs a
single resource or a hand-made request uses them directly:

    searchset(condition("G51.31", onset="2019-03-01"), next_url=f"{base}/Condition?page=2")
    hook_request("order-sign", prefetch=chart.prefetch(), draft_orders=[service_request(MVD)])
    patient_view("p-1", conditions=[condition(HFS, patient="p-1")])

Codes are (system, code) pairs; a bare string is an ICD-10-CM code for conditions.
"""

from __future__ import annotations

import uuid

from cds_service.hooks import HookRequest

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

Code = tuple[str, str]

# -- small parts ----------------------------------------------------------------------------


def coding(code: Code, display: str | None = None) -> dict:
    system, value = code
    return {"system": system, "code": value, **({"display": display} if display else {})}


def concept(code: Code | None = None, text: str | None = None, display: str | None = None) -> dict:
    """A CodeableConcept: one coding (with its display) and/or a text."""
    result: dict = {}
    if code is not None:
        result["coding"] = [coding(code, display)]
    if text:
        result["text"] = text
    return result


def status(code: str, system: str = CLINICAL) -> dict:
    """A Condition clinicalStatus (or, with `system=VERIFICATION`, verificationStatus)."""
    return {"coding": [{"system": system, "code": code}]}


def subject(patient: str) -> dict:
    return {"reference": f"Patient/{patient}"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- resources ------------------------------------------------------------------------------


def patient(patient_id: str = "p-1", *, gender: str | None = "female", birth_date: str | None = "1962-04-12", **extra):
    resource: dict = {"resourceType": "Patient", "id": patient_id}
    if birth_date is not None:
        resource["birthDate"] = birth_date
    if gender is not None:
        resource["gender"] = gender
    resource.update(extra)
    return resource


def condition(
    code: Code | str | None = None,
    *,
    id: str | None = None,
    patient: str | None = "p1",
    status: str | None = None,
    verification: str | None = None,
    onset: str | None = None,
    recorded: str | None = None,
    abatement: str | None = None,
    text: str | None = None,
    display: str | None = None,
    **extra,
) -> dict:
    """A Condition. Only what is given is written (a chart's Condition says more than a
    minimal search result): `status`/`verification` are clinicalStatus/verificationStatus
    codes, `onset`/`recorded`/`abatement` the onsetDateTime/recordedDate/abatementDateTime."""
    resource: dict = {"resourceType": "Condition"}
    if id is not None:
        resource["id"] = id
    if status is not None:
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
    if verification is not None:
        resource["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
    if code is not None or text:
        resource["code"] = concept((ICD10CM, code) if isinstance(code, str) else code, text, display)
    if patient is not None:
        resource["subject"] = subject(patient)
    if onset:
        resource["onsetDateTime"] = onset
    if recorded:
        resource["recordedDate"] = recorded
    if abatement:
        resource["abatementDateTime"] = abatement
    resource.update(extra)
    return resource


def procedure(
    code: Code,
    start: str | None = None,
    end: str | None = None,
    *,
    id: str | None = None,
    patient: str | None = "p1",
    status: str = "completed",
    display: str | None = None,
    **extra,
) -> dict:
    """A Procedure: performedPeriod when `start` and `end` are given, else performedDateTime."""
    resource: dict = {"resourceType": "Procedure"}
    if id is not None:
        resource["id"] = id
    resource["status"] = status
    resource["code"] = concept(code, display=display)
    if patient is not None:
        resource["subject"] = subject(patient)
    if start and end:
        resource["performedPeriod"] = {"start": start, "end": end}
    elif start:
        resource["performedDateTime"] = start
    resource.update(extra)
    return resource


def observation(
    code: Code,
    effective: str | None = None,
    *,
    id: str | None = None,
    patient: str | None = "p1",
    status: str = "final",
    **value,
) -> dict:
    """An Observation; `value` is its value[x] (valueQuantity={...}, valueInteger=3...) or
    any other element to add (issued=..., component=[...])."""
    resource: dict = {"resourceType": "Observation"}
    if id is not None:
        resource["id"] = id
    resource["status"] = status
    resource["code"] = concept(code)
    if patient is not None:
        resource["subject"] = subject(patient)
    if effective:
        resource["effectiveDateTime"] = effective
    resource.update(value)
    return resource


def quantity(value: float, unit: str) -> dict:
    """A UCUM valueQuantity."""
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def medication_request(
    code: Code | None = None,
    *,
    text: str | None = None,
    id: str | None = None,
    patient: str | None = "p1",
    status: str = "active",
    authored: str | None = None,
    display: str | None = None,
    **extra,
) -> dict:
    resource: dict = {"resourceType": "MedicationRequest"}
    if id is not None:
        resource["id"] = id
    resource["status"] = status
    resource["intent"] = "order"
    resource["medicationCodeableConcept"] = concept(code, text, display)
    if patient is not None:
        resource["subject"] = subject(patient)
    if authored:
        resource["authoredOn"] = authored
    resource.update(extra)
    return resource


def medication_statement(
    code: Code | None = None,
    *,
    text: str | None = None,
    id: str | None = None,
    patient: str | None = "p1",
    status: str = "active",
    effective: str | None = None,
    **extra,
) -> dict:
    resource: dict = {"resourceType": "MedicationStatement"}
    if id is not None:
        resource["id"] = id
    resource["status"] = status
    resource["medicationCodeableConcept"] = concept(code, text)
    if patient is not None:
        resource["subject"] = subject(patient)
    if effective:
        resource["effectiveDateTime"] = effective
    resource.update(extra)
    return resource


def service_request(
    code: Code, *, id: str | None = None, patient: str | None = "p1", display: str | None = None, **extra
) -> dict:
    """A draft order for a procedure (order-select / order-sign)."""
    resource: dict = {"resourceType": "ServiceRequest"}
    if id is not None:
        resource["id"] = id
    resource["status"] = "draft"
    resource["intent"] = "order"
    resource["code"] = concept(code, display=display)
    if patient is not None:
        resource["subject"] = subject(patient)
    resource.update(extra)
    return resource


# -- bundles --------------------------------------------------------------------------------


def searchset(*resources: dict, next_url: str | None = None, self_url: str | None = None, server: bool = False) -> dict:
    """A search result Bundle. `next_url` adds a next link (after a self link when
    `self_url` is given); `server=True` writes it as a FHIR server does: total, a fullUrl
    and search mode per entry."""
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if server:
        bundle["total"] = len(resources)
        bundle["entry"] = [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r, "search": {"mode": "match"}} for r in resources
        ]
    else:
        bundle["entry"] = [{"resource": r} for r in resources]
    links = ([{"relation": "self", "url": self_url}] if self_url else []) + (
        [{"relation": "next", "url": next_url}] if next_url else []
    )
    if links:
        bundle["link"] = links
    return bundle


def collection(*resources: dict) -> dict:
    """A collection Bundle (the draftOrders of an order hook)."""
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


PREFETCH_SEARCHES = ("conditions", "procedures", "observations", "medicationRequests", "medicationStatements")


def full_prefetch(
    the_patient: dict,
    *,
    conditions=(),
    procedures=(),
    observations=(),
    medication_requests=(),
    medication_statements=(),
) -> dict:
    """The full prefetch of the HFS services (cards/services.toml): the Patient and one
    searchset per key."""
    return {
        "patient": the_patient,
        "conditions": searchset(*conditions),
        "procedures": searchset(*procedures),
        "observations": searchset(*observations),
        "medicationRequests": searchset(*medication_requests),
        "medicationStatements": searchset(*medication_statements),
    }


# -- hook requests --------------------------------------------------------------------------


def fhir_authorization(token: str) -> dict:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }


def hook_request(
    hook: str,
    *,
    patient_id: str = "hfs-1",
    user: str = "Practitioner/example",
    prefetch: dict | None = None,
    draft_orders: list[dict] | dict | None = None,
    selections: list[str] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
    instance: str | None = None,
    **context,
) -> dict:
    """A CDS Hooks request body. `draft_orders` is a list of resources (put in a collection
    Bundle) or a ready Bundle; `fhir_server`/`token` give fhirServer and fhirAuthorization;
    any other keyword is a context field (encounterId=...)."""
    ctx: dict = {"userId": user, "patientId": patient_id}
    if draft_orders is not None:
        ctx["draftOrders"] = collection(*draft_orders) if isinstance(draft_orders, list) else draft_orders
    if selections is not None:
        ctx["selections"] = list(selections)
    ctx.update(context)
    body: dict = {"hook": hook, "hookInstance": instance or str(uuid.uuid4())}
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = fhir_authorization(token)
    body["context"] = ctx
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def validated_request(
    context: dict,
    fhir_server: str | None = None,
    access_token: str | None = None,
    prefetch: dict | None = None,
    hook: str = "patient-view",
) -> HookRequest:
    """A hook request as the validation step hands it on (http/hook_request.HookRequest),
    for tests of the prefetch step that start after validation."""
    return HookRequest(
        hook=hook,
        hook_instance=str(uuid.uuid4()),
        context=context,
        fhir_server=fhir_server,
        access_token=access_token,
        prefetch=prefetch if prefetch is not None else {},
    )


def patient_view(
    patient_id: str = "hfs-1",
    *,
    conditions=(),
    procedures=(),
    observations=(),
    medications=(),
    the_patient: dict | None = None,
    prefetch: dict | None = None,
    **request,
) -> dict:
    """A patient-view request. Its prefetch is `prefetch` when given, else the full prefetch
    built from these resources (`medications` are MedicationRequests). Other keywords go to
    `hook_request` (fhir_server=..., encounterId=...)."""
    if prefetch is None:
        prefetch = full_prefetch(
            the_patient or patient(patient_id, birth_date="1968-04-02"),
            conditions=conditions,
            procedures=procedures,
            observations=observations,
            medication_requests=medications,
        )
    return hook_request("patient-view", patient_id=patient_id, prefetch=prefetch, **request)
