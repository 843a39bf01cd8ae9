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

from support.fhir import CLINICAL, CPT, ICD10CM, ICD10PCS, LOINC, RXNORM, SNOMED, UCUM, VERIFICATION

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


# ----------------------------------------------------------------------------- the review charts
# Charts of the clinician-style review of issue 15 (card D), each as a pain physician would
# meet it: resources of the chart, draft orders, the hook, and what a careful clinician expects
# ("fires": whether card D should fire; "expect": fragments the card must show; "never":
# fragments it must not show). TODAY is the day of the call.
TODAY = "2025-06-01"
LOCAL_SYSTEM = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
MS_CONTIN_BID = epic_dosage(
    15, frequency=1, period=12, period_unit="h", text="Take 1 tablet (15 mg total) by mouth every 12 (twelve) hours."
)


def _with_ids(resources: list[dict], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", **r} if "id" not in r else r for i, r in enumerate(resources, 1)]


REVIEW_CHARTS: dict[str, dict] = {
    "t12-coded-pain7-ms-contin": {
        "story": "Breast cancer, T12 metastasis (SNOMED body site), pain 7/10 last week, MS Contin 15 mg every 12 hours",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-27", 7),
            morphine_request("2025-05-02", MS_CONTIN_BID),
        ],
        "hook": "patient-view",
        "fires": True,
        "expect": [
            "Painful vertebral metastasis (pain 7/10)",
            "daily morphine: **30 mg/d**",
            "in the spine (T12 vertebra)",
            "15 mg every 12 hours",
            "cement leakage in 30 %",
            "grade 3 neural injury in 1.1 %",
        ],
    },
    "femur-coded-pain8": {
        "story": "Prostate cancer, metastasis to the left femur (body site coded), pain 8/10",
        "resources": [bone_metastasis("2025-01-10", FEMUR), pain("2025-05-30", 8)],
        "hook": "patient-view",
        "fires": False,
    },
    "humerus-coded-pain6-oxycodone": {
        "story": "Myeloma-like picture coded C79.51 at the humerus, pain 6/10, oxycodone",
        "resources": [
            bone_metastasis("2025-02-01", HUMERUS),
            pain("2025-05-29", 6),
            opioid_request("2025-05-01", "oxyCODONE Hydrochloride 5 MG Oral Tablet"),
        ],
        "hook": "patient-view",
        "fires": False,
    },
    "rib-text-pain5": {
        "story": "Lung cancer, rib metastasis written as text only, pain 5/10",
        "resources": [bone_metastasis("2025-03-01", RIB_TEXT), pain("2025-05-30", 5)],
        "hook": "patient-view",
        "fires": False,
    },
    "l3-text-pain6-bid-code": {
        "story": "Renal cell cancer, 'L3 vertebral body' written as text, pain 6/10, morphine 10 mg timing code BID only",
        "resources": [
            bone_metastasis("2025-01-15", L3_TEXT),
            pain("2025-05-28", 6),
            morphine_request(
                "2025-05-20",
                epic_dosage(10, frequency=None, period=None, code="BID"),
                display="morphine sulfate 10 MG Oral Tablet",
            ),
        ],
        "hook": "patient-view",
        "fires": True,
        "expect": [
            "Painful vertebral metastasis (pain 6/10)",
            "in the spine (L3 vertebral body)",
            "daily morphine: **20 mg/d**",
        ],
    },
    "no-site-pain5": {
        "story": "Bone metastasis on the problem list without a body site, pain 5/10",
        "resources": [bone_metastasis("2024-12-01"), pain("2025-05-31", 5)],
        "hook": "patient-view",
        "fires": True,
        "expect": ["Painful bone metastasis, site not recorded (pain 5/10)", "bone metastasis, site not recorded"],
        "never": ["vertebral metastasis (", "This patient has a vertebral metastasis"],
    },
    "t12-newest-pain-unreadable": {
        "story": "T12 metastasis, pain 7/10 two weeks ago, today's score recorded as the word 'severe'",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-15", 7),
            pain("2025-05-31", valueString="severe"),
        ],
        "hook": "patient-view",
        "fires": False,
    },
    "t12-newest-pain-unreadable-at-ordering": {
        "story": "The same patient: kyphoplasty is ordered (no stated reason)",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-15", 7),
            pain("2025-05-31", valueString="severe"),
        ],
        "drafts": [vertebral_order(KYPHOPLASTY_LUMBAR)],
        "hook": "order-sign",
        "fires": True,
        "expect": ["newest pain score unreadable", "a newer value from 2025-05-31 could not be read"],
    },
    "mwa-ordered-for-osteoporotic-fracture": {
        "story": "Femoral metastasis on file; MWA of T11 ordered with the stated reason osteoporotic vertebral fracture",
        "resources": [bone_metastasis("2025-01-10", FEMUR), condition(*OSTEOPOROTIC_FRACTURE, "2025-05-01")],
        "drafts": [vertebral_order(MWA_THORACIC, reason=OSTEOPOROTIC_FRACTURE)],
        "hook": "order-select",
        "fires": False,
    },
    "mwa-no-reason-osteoporosis-only": {
        "story": "Osteoporotic T12 fracture, no cancer; vertebral ablation ordered without a stated reason",
        "resources": [condition(*OSTEOPOROTIC_FRACTURE, "2025-05-01"), pain("2025-05-30", 8)],
        "drafts": [vertebral_order(MWA_THORACIC)],
        "hook": "order-sign",
        "fires": False,
    },
    "mwa-for-benign-lesion-with-metastasis-elsewhere": {
        "story": "T12 metastasis on file, but this MWA order states a benign vertebral lesion (D16.6) as its reason",
        "resources": [bone_metastasis("2024-11-20", T12), pain("2025-05-30", 6)],
        "drafts": [vertebral_order(MWA_THORACIC, reason=HEMANGIOMA_BENIGN)],
        "hook": "order-sign",
        "fires": False,
    },
    "mwa-for-primary-bone-tumour": {
        "story": "Primary malignant tumour of the vertebral column (C41.2) stated as the reason of an MWA order",
        "resources": [condition(*PRIMARY_BONE_TUMOUR, "2025-04-01", rid="cond-primary")],
        "drafts": [vertebral_order(MWA_THORACIC, reason_ref="Condition/cond-primary")],
        "hook": "order-select",
        "fires": False,
    },
    "kyphoplasty-reason-metastasis-not-on-problem-list": {
        "story": "Kyphoplasty ordered with the stated reason C79.51; the metastasis is not on the problem list yet",
        "resources": [pain("2025-05-30", 7)],
        "drafts": [vertebral_order(KYPHOPLASTY_LUMBAR, reason=BONE_METASTASIS_CODE)],
        "hook": "order-select",
        "fires": True,
        "expect": [
            "Vertebral augmentation for metastasis",
            "ordered for a bone metastasis (its stated reason)",
            "cement leakage in 30 %",
        ],
    },
    "kyphoplasty-reason-reference-lumbar-metastasis": {
        "story": "Kyphoplasty ordered with reasonReference to the lumbar-spine metastasis on the problem list; morphine PRN only",
        "resources": [
            {**bone_metastasis("2025-02-01", LUMBAR_SPINE), "id": "cond-met"},
            pain("2025-05-30", 8),
            morphine_request(
                "2025-05-10",
                epic_dosage(5, frequency=1, period=4, period_unit="h", as_needed=True),
                display="morphine sulfate 5 MG Oral Tablet",
            ),
        ],
        "drafts": [vertebral_order(KYPHOPLASTY_LUMBAR, reason_ref="Condition/cond-met")],
        "hook": "order-sign",
        "fires": True,
        "expect": [
            "in the spine (Lumbar spine)",
            "taken as needed: no fixed daily dose",
            "daily morphine: **morphine prescribed, daily dose not readable**",
        ],
    },
    "mwa-reason-back-pain-metastasis-on-file": {
        "story": "MWA ordered with the stated reason 'pain in thoracic spine' (not a known condition); T12 metastasis on file; fentanyl patch",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-30", 7),
            opioid_request("2025-05-01", "fentanyl 25 MCG/HR Transdermal System"),
        ],
        "drafts": [vertebral_order(MWA_THORACIC, reason=BACK_PAIN)],
        "hook": "order-select",
        "fires": True,
        "expect": ["fentanyl 25 MCG/HR Transdermal System also prescribed, not converted to morphine"],
    },
    "recorded-daily-dose-newer-than-prescription": {
        "story": "T12 metastasis, pain 6/10; MS Contin 15 mg every 12 hours from April, a recorded daily dose of 60 mg/d last week",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-30", 6),
            morphine_request("2025-04-01", MS_CONTIN_BID),
            daily_morphine_observation("2025-05-26", 60, LOCAL_SYSTEM),
        ],
        "hook": "patient-view",
        "fires": True,
        "expect": ["daily morphine: **60 mg/d**"],
    },
    "iv-morphine-pca-inpatient": {
        "story": "Inpatient with a T12 metastasis, pain 8/10, morphine 2 mg IV every 2 hours",
        "resources": [
            bone_metastasis("2024-11-20", T12),
            pain("2025-05-31", 8),
            morphine_request(
                "2025-05-30",
                epic_dosage(2, frequency=1, period=2, period_unit="h", route="Intravenous", tablets=None),
                display="morphine sulfate 2 MG/ML Injectable Solution",
            ),
        ],
        "hook": "patient-view",
        "fires": True,
        "expect": ["another route than by mouth (Intravenous)"],
    },
}


def review_chart(name: str) -> tuple[list[dict], list[dict]]:
    """The chart's resources and draft orders, with ids."""
    chart = REVIEW_CHARTS[name]
    return _with_ids(chart["resources"], "r"), _with_ids(chart.get("drafts", []), "draft")
