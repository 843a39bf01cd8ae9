"""Hand-built FHIR R4 charts for card scenarios.

A Chart is one scenario patient: a Patient and the Conditions, Procedures, Observations
and medications a clinician would find in the chart, plus the draft orders of an
order-select / order-sign call. It goes through the real mapping layer (build_record with
cards/concepts.toml) and the real card pipeline (evaluate + render), so a scenario tests
what a CDS client would see.

    card = Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z") \
        .show("rfa-recurrence", "patient-view", today="2025-06-01")
"""

from __future__ import annotations

import itertools
import json
from datetime import date

from cds_service.clinical.evaluate import CardResult, evaluate
from cds_service.clinical.record import PatientRecord, build_record
from cds_service.clinical.render import render
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import CardContent, load_cards
from cds_service.terminology.concepts_file import load_concepts
from support.paths import SCENARIOS_DIR

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

# Codes from EVIDENCE.md "Codes the default mappings must recognise".
HFS = (ICD10CM, "G51.31")
HYPERTENSION = (ICD10CM, "I10")
DIABETES = (ICD10CM, "E11.9")
ALCOHOL = (ICD10CM, "F10.20")
BONE_METASTASIS = (ICD10CM, "C79.51")
RFA = (ICD10PCS, "005M3ZZ")
MVD = (ICD10PCS, "00NM0ZZ")
MWA_THORACIC = (ICD10PCS, "0P543ZZ")
AUGMENTATION_CPT = (CPT, "22513")
CHEMODENERVATION = (CPT, "64612")
CARBAMAZEPINE = (RXNORM, "2002")
PAIN = (LOINC, "72514-3")


class Chart:
    """One scenario patient as FHIR R4 resources (raw JSON, as a client would send them)."""

    def __init__(self, gender: str | None = "female", birth_date: str = "1962-04-12", patient_id: str = "p-1"):
        self.patient_id = patient_id
        self._ids = itertools.count(1)
        patient = {"resourceType": "Patient", "id": patient_id, "birthDate": birth_date}
        if gender is not None:
            patient["gender"] = gender
        self.resources: list[dict] = [patient]
        self.drafts: list[dict] = []
        self.selections: list[str] = []

    @classmethod
    def from_bundle(cls, name: str) -> Chart:
        """A chart from a JSON bundle in tests/scenarios/ (its Patient first)."""
        bundle = json.loads((SCENARIOS_DIR / name).read_text(encoding="utf-8"))
        chart = cls.__new__(cls)
        chart._ids = itertools.count(1000)
        chart.resources = [e["resource"] for e in bundle["entry"]]
        chart.patient_id = next(r["id"] for r in chart.resources if r["resourceType"] == "Patient")
        chart.drafts, chart.selections = [], []
        return chart

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _subject(self) -> dict:
        return {"reference": f"Patient/{self.patient_id}"}

    # -- conditions -----------------------------------------------------------------------
    def condition(
        self,
        code: tuple[str, str],
        onset: str | None = None,
        recorded: str | None = None,
        status: str | None = "active",
        verification: str = "confirmed",
        text: str | None = None,
        abatement: str | None = None,
    ) -> Chart:
        resource = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "verificationStatus": {"coding": [{"system": VERIFICATION, "code": verification}]},
            "code": {"coding": [{"system": code[0], "code": code[1]}]},
            "subject": self._subject(),
        }
        if status is not None:
            resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
        if text:
            resource["code"]["text"] = text
        if onset:
            resource["onsetDateTime"] = onset
        if recorded:
            resource["recordedDate"] = recorded
        if abatement:
            resource["abatementDateTime"] = abatement
        self.resources.append(resource)
        return self

    def hfs(self, onset: str | None = "2019-03-01", **kw) -> Chart:
        return self.condition(HFS, onset=onset, **kw)

    def hypertension(self, onset: str | None = "2015-06-01", **kw) -> Chart:
        return self.condition(HYPERTENSION, onset=onset, **kw)

    # -- procedures -------------------------------------------------------------------------
    def procedure(
        self, code: tuple[str, str], start: str | None = None, end: str | None = None, status: str = "completed"
    ) -> Chart:
        resource = {
            "resourceType": "Procedure",
            "id": self._id("proc"),
            "status": status,
            "code": {"coding": [{"system": code[0], "code": code[1]}]},
            "subject": self._subject(),
        }
        if start and end:
            resource["performedPeriod"] = {"start": start, "end": end}
        elif start:
            resource["performedDateTime"] = start
        self.resources.append(resource)
        return self

    def rfa(self, start: str | None, end: str | None = None, **kw) -> Chart:
        return self.procedure(RFA, start, end, **kw)

    def mvd(self, start: str | None, end: str | None = None, **kw) -> Chart:
        return self.procedure(MVD, start, end, **kw)

    # -- observations ------------------------------------------------------------------------
    def observation(self, code: tuple[str, str], effective: str | None, status: str = "final", **value) -> Chart:
        """value: one FHIR value[x] element, e.g. valueQuantity={...}, valueInteger=3."""
        resource = {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": status,
            "code": {"coding": [{"system": code[0], "code": code[1]}]},
            "subject": self._subject(),
        }
        if effective:
            resource["effectiveDateTime"] = effective
        resource.update(value)
        self.resources.append(resource)
        return self

    def local_observation(self, code: str, effective: str | None, **value) -> Chart:
        return self.observation((LOCAL, code), effective, **value)

    def quantity(self, code: tuple[str, str], effective: str | None, value: float, unit: str) -> Chart:
        return self.observation(
            code, effective, valueQuantity={"value": value, "unit": unit, "system": UCUM, "code": unit}
        )

    def pain(self, effective: str, score: float) -> Chart:
        return self.quantity(PAIN, effective, score, "{score}")

    # -- medications -------------------------------------------------------------------------
    def medication(
        self,
        code: tuple[str, str] | None = None,
        text: str | None = None,
        authored: str = "2020-01-01",
        status: str = "active",
        statement: bool = False,
    ) -> Chart:
        medication = {}
        if code:
            medication["coding"] = [{"system": code[0], "code": code[1]}]
        if text:
            medication["text"] = text
        if statement:
            resource = {
                "resourceType": "MedicationStatement",
                "id": self._id("ms"),
                "status": status,
                "medicationCodeableConcept": medication,
                "subject": self._subject(),
                "effectiveDateTime": authored,
            }
        else:
            resource = {
                "resourceType": "MedicationRequest",
                "id": self._id("mr"),
                "status": status,
                "intent": "order",
                "medicationCodeableConcept": medication,
                "subject": self._subject(),
                "authoredOn": authored,
            }
        self.resources.append(resource)
        return self

    # -- draft orders ------------------------------------------------------------------------
    def order(self, code: tuple[str, str], selected: bool = True) -> Chart:
        """A draft ServiceRequest (order-select: listed in selections when `selected`)."""
        rid = self._id("sr")
        self.drafts.append(
            {
                "resourceType": "ServiceRequest",
                "id": rid,
                "status": "draft",
                "intent": "order",
                "code": {"coding": [{"system": code[0], "code": code[1]}]},
                "subject": self._subject(),
            }
        )
        if selected:
            self.selections.append(f"ServiceRequest/{rid}")
        return self

    def order_medication(
        self, code: tuple[str, str] | None = None, text: str | None = None, selected: bool = True
    ) -> Chart:
        rid = self._id("mr-draft")
        medication = {}
        if code:
            medication["coding"] = [{"system": code[0], "code": code[1]}]
        if text:
            medication["text"] = text
        self.drafts.append(
            {
                "resourceType": "MedicationRequest",
                "id": rid,
                "status": "draft",
                "intent": "order",
                "medicationCodeableConcept": medication,
                "subject": self._subject(),
            }
        )
        if selected:
            self.selections.append(f"MedicationRequest/{rid}")
        return self

    # -- running the cards -------------------------------------------------------------------
    def prefetch(self) -> dict:
        def bundle(*types: str) -> dict:
            return {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in self.resources if r["resourceType"] in types],
            }

        patient = next(r for r in self.resources if r["resourceType"] == "Patient")
        return {
            "patient": patient,
            "conditions": bundle("Condition"),
            "procedures": bundle("Procedure"),
            "observations": bundle("Observation"),
            "medicationRequests": bundle("MedicationRequest"),
            "medicationStatements": bundle("MedicationStatement"),
        }

    def bundle(self) -> dict:
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in self.resources]}

    def record(
        self, hook: str, today: str | date, unavailable: dict | None = None, overlay: dict | None = None
    ) -> PatientRecord:
        drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in self.drafts]}
        return build_record(
            self.prefetch(),
            draft_orders=drafts if hook != "patient-view" else None,
            selections=list(self.selections) if hook == "order-select" else None,
            concepts=concepts(overlay),
            today=date.fromisoformat(today) if isinstance(today, str) else today,
            unavailable=unavailable,
        )

    def result(
        self, card_id: str, hook: str, today: str | date, overlay: dict | None = None, unavailable: dict | None = None
    ) -> CardResult | None:
        return evaluate(card(card_id, overlay), self.record(hook, today, unavailable, overlay), hook)

    def show(
        self, card_id: str, hook: str, today: str | date, overlay: dict | None = None, unavailable: dict | None = None
    ) -> dict | None:
        """The rendered CDS Hooks card, or None when the card does not fire."""
        result = self.result(card_id, hook, today, overlay, unavailable)
        return render(result) if result is not None else None


_CONCEPTS: dict[str, object] = {}
_CARDS: dict[str, dict[str, CardContent]] = {}


def concepts(overlay: dict | None = None):
    """The ConceptIndex of cards/concepts.toml (plus the overlay's local codes)."""
    key = json.dumps(overlay, sort_keys=True, default=str)
    if key not in _CONCEPTS:
        _CONCEPTS[key] = load_concepts(DEFAULT_CARDS_DIR, overlay)
    return _CONCEPTS[key]


def card(card_id: str, overlay: dict | None = None) -> CardContent:
    key = json.dumps(overlay, sort_keys=True, default=str)
    if key not in _CARDS:
        _CARDS[key] = {c.id: c for c in load_cards(DEFAULT_CARDS_DIR, overlay, concepts(overlay))}
    return _CARDS[key][card_id]


def all_cards(overlay: dict | None = None) -> list[CardContent]:
    card("rfa-recurrence", overlay)
    return list(_CARDS[json.dumps(overlay, sort_keys=True, default=str)].values())
