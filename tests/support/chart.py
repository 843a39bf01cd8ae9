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
from cds_service.clinical.evidence import page_data
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.record_build import build_record
from cds_service.clinical.render import render
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import CardContent, load_cards
from cds_service.terminology.concepts_file import load_concepts
from support import fhir
from support.fhir import (  # noqa: F401  (re-exported: card tests import the code systems from here)
    CLINICAL,
    CPT,
    HCPCS,
    ICD10CM,
    ICD10PCS,
    LOCAL,
    LOINC,
    RXNORM,
    SNOMED,
    UCUM,
    VERIFICATION,
)
from support.paths import SCENARIOS_DIR

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
        self.resources: list[dict] = [fhir.patient(patient_id, gender=gender, birth_date=birth_date)]
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
        **extra,
    ) -> Chart:
        """extra: further elements as given (bodySite=[...])."""
        self.resources.append(
            fhir.condition(
                code,
                id=self._id("cond"),
                patient=self.patient_id,
                status=status,
                verification=verification,
                onset=onset,
                recorded=recorded,
                abatement=abatement,
                text=text,
                **extra,
            )
        )
        return self

    def hfs(self, onset: str | None = "2019-03-01", **kw) -> Chart:
        return self.condition(HFS, onset=onset, **kw)

    def hypertension(self, onset: str | None = "2015-06-01", **kw) -> Chart:
        return self.condition(HYPERTENSION, onset=onset, **kw)

    # -- procedures -------------------------------------------------------------------------
    def procedure(
        self,
        code: tuple[str, str] | None,
        start: str | None = None,
        end: str | None = None,
        status: str = "completed",
        **extra,
    ) -> Chart:
        """extra: other Procedure elements (reasonCode, reasonReference, bodySite, display=...)."""
        self.resources.append(
            fhir.procedure(code, start, end, id=self._id("proc"), patient=self.patient_id, status=status, **extra)
        )
        return self

    def last_id(self) -> str:
        """The id of the resource added last ("cond-3"), to reference it."""
        return self.resources[-1]["id"]

    def rfa(self, start: str | None, end: str | None = None, **kw) -> Chart:
        return self.procedure(RFA, start, end, **kw)

    def mvd(self, start: str | None, end: str | None = None, **kw) -> Chart:
        return self.procedure(MVD, start, end, **kw)

    # -- observations ------------------------------------------------------------------------
    def observation(self, code: tuple[str, str], effective: str | None, status: str = "final", **value) -> Chart:
        """value: one FHIR value[x] element, e.g. valueQuantity={...}, valueInteger=3."""
        self.resources.append(
            fhir.observation(code, effective, id=self._id("obs"), patient=self.patient_id, status=status, **value)
        )
        return self

    def local_observation(self, code: str, effective: str | None, **value) -> Chart:
        return self.observation((LOCAL, code), effective, **value)

    def quantity(self, code: tuple[str, str], effective: str | None, value: float, unit: str) -> Chart:
        return self.observation(code, effective, valueQuantity=fhir.quantity(value, unit))

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
        if statement:
            resource = fhir.medication_statement(
                code, text=text, id=self._id("ms"), patient=self.patient_id, status=status, effective=authored
            )
        else:
            resource = fhir.medication_request(
                code, text=text, id=self._id("mr"), patient=self.patient_id, status=status, authored=authored
            )
        self.resources.append(resource)
        return self

    # -- draft orders ------------------------------------------------------------------------
    def order(self, code: tuple[str, str], selected: bool = True, **extra) -> Chart:
        """A draft ServiceRequest (order-select: listed in selections when `selected`);
        extra: other elements (reasonCode...)."""
        rid = self._id("sr")
        self.drafts.append(fhir.service_request(code, id=rid, patient=self.patient_id, **extra))
        if selected:
            self.selections.append(f"ServiceRequest/{rid}")
        return self

    def order_medication(
        self, code: tuple[str, str] | None = None, text: str | None = None, selected: bool = True
    ) -> Chart:
        rid = self._id("mr-draft")
        self.drafts.append(fhir.medication_request(code, text=text, id=rid, patient=self.patient_id, status="draft"))
        if selected:
            self.selections.append(f"MedicationRequest/{rid}")
        return self

    # -- resources written by hand (issue 15: charts coded as EHRs send them) -------------------
    def raw(self, resource: dict) -> Chart:
        """A resource as given (an id and the subject are added when it has none)."""
        prefix = {"Condition": "cond", "MedicationRequest": "mr", "Observation": "obs"}.get(
            resource["resourceType"], "res"
        )
        self.resources.append(
            {"id": self._id(prefix), "subject": {"reference": f"Patient/{self.patient_id}"}, **resource}
        )
        return self

    def raw_order(self, resource: dict, selected: bool = True) -> Chart:
        """A draft order as given (an id and the subject are added when it has none)."""
        order = {"id": self._id("sr"), "subject": {"reference": f"Patient/{self.patient_id}"}, **resource}
        self.drafts.append(order)
        if selected:
            self.selections.append(f"{order['resourceType']}/{order['id']}")
        return self

    # -- running the cards -------------------------------------------------------------------
    def prefetch(self) -> dict:
        """The full prefetch of the HFS services: the Patient and one searchset per search."""

        def of(kind: str) -> list[dict]:
            return [r for r in self.resources if r["resourceType"] == kind]

        return fhir.full_prefetch(
            next(r for r in self.resources if r["resourceType"] == "Patient"),
            conditions=of("Condition"),
            procedures=of("Procedure"),
            observations=of("Observation"),
            medication_requests=of("MedicationRequest"),
            medication_statements=of("MedicationStatement"),
        )

    def draft_orders(self) -> dict:
        return fhir.collection(*self.drafts)

    def hook_request(self, hook: str, *, prefetch: bool = True, **request) -> dict:
        """The CDS Hooks request a client sends for this chart: the full prefetch (unless
        `prefetch=False`), the draft orders of an order hook, the selections of order-select.
        Other keywords go to `support.fhir.hook_request` (fhir_server, token, user...)."""
        if hook != "patient-view":
            request.setdefault("draft_orders", self.draft_orders())
        if hook == "order-select":
            request.setdefault("selections", list(self.selections))
        return fhir.hook_request(
            hook, patient_id=self.patient_id, prefetch=self.prefetch() if prefetch else None, **request
        )

    def bundle(self) -> dict:
        return fhir.collection(*self.resources)

    def record(
        self, hook: str, today: str | date, unavailable: dict | None = None, overlay: dict | None = None
    ) -> PatientRecord:
        drafts = self.draft_orders()
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

    def evidence(
        self, card_id: str, hook: str, today: str | date, overlay: dict | None = None, unavailable: dict | None = None
    ) -> str:
        """The card's evidence page data as Markdown text (what moved off the card: lead,
        sections, estimate, strength, caveats, sources, the inputs' notes)."""
        result = self.result(card_id, hook, today, overlay, unavailable)
        assert result is not None, f"{card_id} does not fire"
        return page_text(page_data(result))


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


def page_text(page: dict) -> str:
    """Evidence page data as Markdown: lead, sections (### heading + body), the strength
    line, caveats, sources and the inputs' notes."""
    parts = [page["lead"]]
    parts += [f"### {s['heading']}\n\n{s['body']}" for s in page["sections"]]
    parts.append(page["strength"])
    parts += [f"- {c}" for c in page["caveats"]]
    parts += [f"- {s['label']}: <{s['url']}>" for s in page["sources"]]
    parts += [f"- {i['label']}: {i['note']}" for i in page["inputs"]]
    parts += [f"- {n['fact']}: {n['how']}" for n in page.get("story", [])]
    return "\n\n".join(parts)
