"""Card D charts coded as real EHRs send them (issue 15): a bone metastasis with ICD-10-CM and
SNOMED CT codings and a body site coded, written as text only, or absent; morphine prescribed
with an Epic-style dosageInstruction (a calculated dose in mg beside an administered amount in
tablets, timing.repeat and a timing code); vertebral ablation / augmentation orders with a
stated reason (reasonCode, reasonReference) or none.

The builders return FHIR R4 resources without id or subject (support.chart.Chart.raw and the
FHIR-server Transaction add them). Dates are ISO strings. The codes in the charts are test
data: the concepts the service maps are in cards/concepts.toml.
"""

from __future__ import annotations

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
EPIC_DOSE_TYPE = "http://epic.com/CodeSystem/dose-rate-type"  # as Epic's FHIR API labels doseAndRate

# Body sites (SNOMED CT codes of cards/concepts.toml spinal_structure; femur and humerus from
# the same DICOM context group CID 4031).
T12 = {"coding": [{"system": SNOMED, "code": "23215003", "display": "T12 vertebra"}], "text": "T12 vertebra"}
LUMBAR_SPINE = {"coding": [{"system": SNOMED, "code": "122496007", "display": "Lumbar spine"}]}
FEMUR = {"coding": [{"system": SNOMED, "code": "71341001", "display": "Femur"}], "text": "Left femur"}
HUMERUS = {"coding": [{"system": SNOMED, "code": "85050009", "display": "Humerus"}]}
RIB_TEXT = {"text": "right 7th rib"}
L3_TEXT = {"text": "L3 vertebral body"}
PELVIS_TEXT = {"text": "Pelvis (left ilium)"}


def bone_metastasis(onset: str, site: dict | None = None, status: str = "active", recorded: str | None = None) -> dict:
    """C79.51 as a problem-list entry: ICD-10-CM and a SNOMED coding (Secondary malignant
    neoplasm of bone), with the body site when given."""
    resource = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": ICD10CM, "code": "C79.51", "display": "Secondary malignant neoplasm of bone"},
                {"system": SNOMED, "code": "94222008", "display": "Secondary malignant neoplasm of bone"},
            ],
            "text": "Metastatic carcinoma to bone",
        },
        "onsetDateTime": onset,
    }
    if recorded:
        resource["recordedDate"] = recorded
    if site is not None:
        resource["bodySite"] = [site]
    return resource


def condition(system: str, code: str, display: str, onset: str, rid: str | None = None) -> dict:
    resource = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "onsetDateTime": onset,
    }
    if rid:
        resource["id"] = rid
    return resource


OSTEOPOROTIC_FRACTURE = (
    ICD10CM,
    "M80.08XA",
    "Age-related osteoporosis with current pathological fracture, vertebra(e), initial encounter for fracture",
)
HEMANGIOMA_BENIGN = (ICD10CM, "D16.6", "Benign neoplasm of vertebral column")
PRIMARY_BONE_TUMOUR = (ICD10CM, "C41.2", "Malignant neoplasm of vertebral column")
BONE_METASTASIS_CODE = (ICD10CM, "C79.51", "Secondary malignant neoplasm of bone")
BACK_PAIN = (ICD10CM, "M54.6", "Pain in thoracic spine")


def pain(effective: str, score: float | None = None, **value) -> dict:
    """A 0-10 numeric pain rating (LOINC 72514-3), or another value[x] given as keywords."""
    if score is not None:
        value = {"valueQuantity": {"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"}}
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}
        ],
        "code": {
            "coding": [
                {
                    "system": LOINC,
                    "code": "72514-3",
                    "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
                }
            ]
        },
        "effectiveDateTime": effective,
        **value,
    }


def daily_morphine_observation(effective: str, mg: float, local_system: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": local_system, "code": "daily-morphine-dose"}]},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": mg, "unit": "mg/d", "system": UCUM, "code": "mg/d"},
    }


def epic_dosage(
    dose_mg: float | None,
    *,
    frequency: int | None = 1,
    period: float | None = 12,
    period_unit: str | None = "h",
    code: str | None = None,
    as_needed: bool = False,
    tablets: float | None = 1,
    route: str = "Oral",
    dose_range: tuple[float, float] | None = None,
    text: str = "",
) -> dict:
    """One Epic-style Dosage: a calculated dose in mg beside the administered amount in tablets."""
    dose_and_rate = []
    if dose_range is not None:
        dose_and_rate.append(
            {
                "type": {"coding": [{"system": EPIC_DOSE_TYPE, "code": "calculated", "display": "calculated"}]},
                "doseRange": {
                    "low": {"value": dose_range[0], "unit": "mg", "system": UCUM, "code": "mg"},
                    "high": {"value": dose_range[1], "unit": "mg", "system": UCUM, "code": "mg"},
                },
            }
        )
    if dose_mg is not None:
        dose_and_rate.append(
            {
                "type": {"coding": [{"system": EPIC_DOSE_TYPE, "code": "calculated", "display": "calculated"}]},
                "doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"},
            }
        )
    if tablets is not None:
        dose_and_rate.append(
            {
                "type": {"coding": [{"system": EPIC_DOSE_TYPE, "code": "admin-amount", "display": "admin-amount"}]},
                "doseQuantity": {"value": tablets, "unit": "tablet", "system": UCUM, "code": "{tbl}"},
            }
        )
    timing: dict = {}
    repeat = {}
    if frequency is not None:
        repeat["frequency"] = frequency
    if period is not None:
        repeat["period"] = period
        repeat["periodUnit"] = period_unit
    if repeat:
        timing["repeat"] = repeat
    if code is not None:
        timing["code"] = {"coding": [{"system": GTS, "code": code}], "text": code}
    dosage = {
        "text": text or "Take by mouth.",
        "timing": timing,
        "asNeededBoolean": as_needed,
        "route": {"text": route},
        "doseAndRate": dose_and_rate,
    }
    return dosage


def morphine_request(
    authored: str,
    *dosages: dict,
    display: str = "morphine sulfate 15 MG Extended Release Oral Tablet",
    status: str = "active",
) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "outpatient"}
                ]
            }
        ],
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "891893", "display": display}],
            "text": display,
        },
        "authoredOn": authored,
        "dosageInstruction": list(dosages),
    }


def opioid_request(authored: str, display: str) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "1049621", "display": display}],
            "text": display,
        },
        "authoredOn": authored,
        "dosageInstruction": [epic_dosage(5, frequency=1, period=6, period_unit="h", tablets=1)],
    }


def vertebral_order(
    code: tuple[str, str, str],
    reason: tuple[str, str, str] | None = None,
    reason_ref: str | None = None,
    resource_type: str = "ServiceRequest",
) -> dict:
    """A draft order for vertebral ablation or augmentation, with its stated reason if any."""
    order = {
        "resourceType": resource_type,
        "status": "draft" if resource_type == "ServiceRequest" else "preparation",
        "code": {"coding": [{"system": code[0], "code": code[1], "display": code[2]}]},
    }
    if resource_type == "ServiceRequest":
        order["intent"] = "order"
    if reason is not None:
        order["reasonCode"] = [
            {"coding": [{"system": reason[0], "code": reason[1], "display": reason[2]}], "text": reason[2]}
        ]
    if reason_ref is not None:
        order["reasonReference"] = [{"reference": reason_ref}]
    return order


MWA_THORACIC = (ICD10PCS, "0P543ZZ", "Destruction of Thoracic Vertebra, Percutaneous Approach")
KYPHOPLASTY_LUMBAR = (CPT, "22514", "Percutaneous vertebral augmentation; lumbar")
