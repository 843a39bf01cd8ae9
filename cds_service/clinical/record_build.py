"""Building the patient record of one hook call from prefetched or fetched FHIR resources.


The record holds only facts that some card concept asks for: resources are selected from
the raw JSON by code first (cheap), and of a selected resource only the elements the record
reads are checked against their FHIR R4 datatype (`_ELEMENTS_READ`). An element the record
does not read is never looked at: a client that sends `MedicationRequest.category` as an
object instead of a list still gets its card. An element it reads that is not valid makes
that input unreadable (never the whole record), and the log names the resource type and
the element (never an identifier or a value). Nothing here knows about HTTP or card models.

Which resources count (the rules, in one place):
- Condition: any, unless verificationStatus is refuted / entered-in-error. The clinical
  status is kept on the fact; `PatientRecord.active_conditions` says what "active" means.
  A Condition with an abatement and no clinicalStatus is read as "inactive": FHIR R4
  invariant con-4 allows an abated Condition only inactive, resolved or remission, and
  "inactive" is the code that covers all three.
- Procedure: status completed only.
- Observation: status final / amended / corrected only; the value read as the concept's
  value kind (cards/concepts.toml) and converted to its canonical unit; a value that
  cannot be read or is out of range is not used and is reported as unreadable.
- MedicationRequest: status active only (completed, stopped, on-hold... are not current
  use). MedicationStatement: status active or intended.
- Draft orders (context.draftOrders): ServiceRequest, Procedure and MedicationRequest
  entries that name a concept (any status but entered-in-error / cancelled / revoked).
- A value dated after the time of the call (an Observation, a completed Procedure, a
  Condition's onset or recorded date) is never used: it becomes an UnreadableInput of kind
  "future" with the reason, so a card can list it.
Build never raises on bad input: whatever cannot be read becomes an UnreadableInput that
names the resource type, the concept, the element and a reason, never an identifier or a
value; it keeps the value's date when that could be read, so a card can tell that a newer
value exists and could not be read (`PatientRecord.reading`).

Which facts answer a card's question (the latest procedure, observations in a window or
after a procedure, conditions after a procedure, current medications, unreadable inputs)
is said by the `PatientRecord` queries, and only there; how dates and times are read and
compared is in clinical/dates.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, cast

from cds_service.clinical.dates import is_future, parse_fhir_date, parse_fhir_datetime
from cds_service.clinical.dosage import read_daily_dose
from cds_service.clinical.fhir_collect import READ_TYPES as _READ_TYPES
from cds_service.clinical.fhir_collect import collect as _collect
from cds_service.clinical.fhir_collect import medication_index as _medication_index
from cds_service.clinical.fhir_elements import (
    ABATEMENT_X,
    ELEMENTS_READ,
    VALUE_X,
    as_list,
    get_sub,
    has_choice,
    is_codeable,
    short_text,
    status_code,
    type_and_id,
)
from cds_service.clinical.observation_values import Unreadable, read_value
from cds_service.clinical.procedure_context import ConditionIndex, read_body_site, read_reason
from cds_service.clinical.record import (
    FUTURE,
    ConditionFact,
    MedicationFact,
    ObservationFact,
    OrderFact,
    PatientRecord,
    ProcedureFact,
    SetAsideProcedure,
    UnreadableInput,
)
from cds_service.terminology.concept_index import ConceptIndex, Match

__all__ = ["build_record"]

log = logging.getLogger(__name__)

# =========================================================================== building
CONDITION_KINDS = frozenset({"condition"})
PROCEDURE_KINDS = frozenset({"procedure"})
OBSERVATION_KINDS = frozenset({"observation"})
MEDICATION_KINDS = frozenset({"medication"})
SERVICE_REQUEST_KINDS = frozenset({"procedure", "medication"})
BODY_SITE_KINDS = frozenset({"body_site"})

_OBSERVATION_STATUSES = ("final", "amended", "corrected")


_STATEMENT_STATUSES = ("active", "intended")
_IGNORED_DRAFT_STATUSES = ("entered-in-error", "cancelled", "revoked")
_GENDERS = ("male", "female", "other", "unknown")
RAW_LIMIT = 60


def build_record(
    resources: dict[str, Mapping[str, Any] | None] | None,
    draft_orders: Mapping[str, Any] | None = None,
    selections: Iterable[str] | None = None,
    *,
    concepts: ConceptIndex,
    today: date,
    unavailable: dict[str, str] | None = None,
    now: datetime | None = None,
) -> PatientRecord:
    """The patient record for one hook call.

    resources:    prefetch data by key: a Resource, a Bundle (entry[].resource), or None.
    draft_orders: context.draftOrders (a Bundle), or None.
    selections:   context.selections ("Type/id"); None means every draft order is selected
                  (order-sign).
    concepts:     the ConceptIndex from concepts.load_concepts.
    today:        the date the record is judged at (never taken from the clock here).
    unavailable:  prefetch key -> safe reason, kept on the record for the cards.
    now:          the instant of the call (timezone-aware), when known: a value with a time
                  of day after it is in the future; without it, a day after `today` is.
    """
    record = PatientRecord(
        today=today,
        unavailable=dict(unavailable or {}),
        now=now,
        intraoperative=concepts.intraoperative,
        ranges=concepts.ranges,
        labels=concepts.labels,
    )
    sources = list(resources.values()) if isinstance(resources, dict) else []
    collected = _collect(sources)
    drafts = _collect([draft_orders])
    medications = _medication_index(collected + drafts)
    conditions = ConditionIndex(collected + drafts)

    patient = next((r for r, _ in collected if r.get("resourceType") == "Patient"), None)
    if patient is not None:
        _read_patient(patient, record)

    readers = {
        "Condition": _read_condition,
        "Procedure": lambda r, c, rec, _m: _read_procedure(r, c, rec, conditions),
        "Observation": _read_observation,
        "MedicationRequest": _read_medication_use,
        "MedicationStatement": _read_medication_use,
    }
    for resource, _ in collected:
        reader = readers.get(resource["resourceType"])
        if reader is not None:
            try:
                reader(resource, concepts, record, medications)
            except Exception:
                _could_not_read(resource, record)

    selected = _selection_set(selections)
    for resource, full_url in drafts:
        try:
            _read_draft_order(resource, concepts, record, medications, full_url, selected, conditions)
        except Exception:
            _could_not_read(resource, record)

    _sort(record)
    record.unreadable = list({(u, u.element, u.when, u.kind): u for u in record.unreadable}.values())
    return record


def _could_not_read(resource: Mapping[str, Any], record: PatientRecord) -> None:
    """Last line of defence: the reason is ours, never the exception's text."""
    kind = resource.get("resourceType")
    record.unreadable.append(
        UnreadableInput(
            resource_type=kind if kind in _READ_TYPES else "Resource",
            concept=None,
            reason="the resource could not be read",
        )
    )


# -- Patient -------------------------------------------------------------------------------
def _read_patient(patient: Mapping[str, Any], record: PatientRecord) -> None:
    # Only two primitives are read; each is checked against its FHIR definition here
    # (gender: required value set; birthDate: FHIR date) instead of validating the whole
    # Patient, which is the largest resource of a record.
    gender = patient.get("gender")
    if gender is not None:
        if isinstance(gender, str) and gender in _GENDERS:
            record.sex = gender
        else:
            record.unreadable.append(UnreadableInput("Patient", None, "gender is not a FHIR gender code"))
    birth = patient.get("birthDate")
    if birth is not None:
        parsed = parse_fhir_date(birth)
        if parsed is None:
            record.unreadable.append(UnreadableInput("Patient", None, "birthDate is not a FHIR date"))
        else:
            record.birth_date = parsed


# -- Condition ---------------------------------------------------------------------------------
def _read_condition(
    resource: Mapping[str, Any], concepts: ConceptIndex, record: PatientRecord, _meds: Mapping[str, Mapping[str, Any]]
) -> None:
    matches = concepts.match_codeable(resource.get("code"), CONDITION_KINDS)
    if not matches:
        return
    if status_code(resource.get("verificationStatus"), "condition-ver-status") in ("refuted", "entered-in-error"):
        return
    if not _readable(resource, matches, record):
        return
    clinical = status_code(resource.get("clinicalStatus"), "condition-clinical")
    onset = parse_fhir_date(resource.get("onsetDateTime")) or parse_fhir_date(get_sub(resource, "onsetPeriod", "start"))
    abatement = (
        parse_fhir_date(resource.get("abatementDateTime"))
        or parse_fhir_date(get_sub(resource, "abatementPeriod", "start"))
        or parse_fhir_date(get_sub(resource, "abatementPeriod", "end"))
    )
    abated = has_choice(resource, "abatement", ABATEMENT_X)
    from_abatement = clinical is None and abated
    if from_abatement:
        clinical = "inactive"  # con-4: an abated Condition is inactive, resolved or remission
    recorded = parse_fhir_date(resource.get("recordedDate"))
    if onset is not None and is_future(onset, record.today, record.now):
        _not_used_future(
            record, "Condition", matches, "onset[x]", "the onset is dated after the time of this call", onset
        )
        onset = None
    if recorded is not None and is_future(recorded, record.today, record.now):
        _not_used_future(
            record, "Condition", matches, "recordedDate", "the recorded date is after the time of this call", recorded
        )
        recorded = None
    site = _body_site(resource.get("bodySite"), concepts)
    for match in matches:
        record.conditions.setdefault(match.concept, []).append(
            ConditionFact(
                match=match,
                clinical_status=clinical,
                onset=onset,
                recorded=recorded,
                abatement=abatement,
                abated=abated,
                status_from_abatement=from_abatement,
                **site,
            )
        )


def _body_site(body_site: object, concepts: ConceptIndex) -> Mapping[str, Any]:
    """Condition.bodySite (0..* CodeableConcept): the body-site concepts it names (by code, or
    by its text or a display), the site as recorded (for display), and whether one is recorded.
    A bodySite that is not a list of CodeableConcepts is recorded but unreadable; the rest of
    the Condition is still read."""
    if body_site is None or body_site == []:
        return {}
    if type(body_site) is not list or not all(type(b) is dict and is_codeable(b) for b in body_site):
        return {"sited": True, "site_unreadable": True}
    sites: dict[str, None] = {}
    shown = None
    for codeable in body_site:
        for match in concepts.match_codeable(codeable, BODY_SITE_KINDS):
            sites.setdefault(match.concept)
        shown = shown or _codeable_text(codeable)
    return {"sites": tuple(sites), "site_text": shown, "sited": True}


def _codeable_text(codeable: Mapping[str, Any]) -> str | None:
    """A CodeableConcept as a person wrote it: its text, else its first display, else its code."""
    text = codeable.get("text")
    if isinstance(text, str) and text.strip():
        return short_text(text)
    codings = [c for c in as_list(codeable.get("coding")) if isinstance(c, dict)]
    for key in ("display", "code"):
        for coding in codings:
            if isinstance(coding.get(key), str) and coding[key].strip():
                return short_text(coding[key])
    return None


# -- Procedure ---------------------------------------------------------------------------------
def _read_procedure(
    resource: Mapping[str, Any], concepts: ConceptIndex, record: PatientRecord, conditions: ConditionIndex
) -> None:
    matches = concepts.match_codeable(resource.get("code"), PROCEDURE_KINDS)
    if not matches:
        return
    status = resource.get("status")
    if status != "completed":
        # Not an operation (entered in error, not done, not yet completed): set aside, and
        # kept without identifiers so the evidence page can say why (clinical/story.py).
        when = parse_fhir_date(resource.get("performedDateTime")) or parse_fhir_date(
            get_sub(resource, "performedPeriod", "start")
        )
        shown = status if isinstance(status, str) and status else "no status"
        for match in matches:
            record.set_aside.append(SetAsideProcedure(match=match, status=shown, day=when))
        return
    if not _readable(resource, matches, record):
        return
    start = parse_fhir_datetime(resource.get("performedDateTime"))
    end = None
    if start is None:
        start = parse_fhir_datetime(get_sub(resource, "performedPeriod", "start"))
        end = parse_fhir_datetime(get_sub(resource, "performedPeriod", "end"))
    performed = start if start is not None else end
    if is_future(performed, record.today, record.now):
        _not_used_future(
            record,
            "Procedure",
            matches,
            "performed[x]",
            "a completed procedure dated after the time of this call",
            performed,
        )
        return
    reason = read_reason(resource, concepts, conditions)
    site, side = read_body_site(resource)
    for match in matches:
        record.procedures.setdefault(match.concept, []).append(
            ProcedureFact(
                match=match,
                status="completed",
                start=start,
                end=end,
                reason_stated=reason.stated,
                reason_concepts=reason.concepts,
                reason_text=reason.text,
                reason_unreadable=reason.unreadable,
                body_site=site,
                laterality=side,
            )
        )


# -- Observation -------------------------------------------------------------------------------
def _read_observation(
    resource: Mapping[str, Any], concepts: ConceptIndex, record: PatientRecord, _meds: Mapping[str, Mapping[str, Any]]
) -> None:
    found: list[tuple[Match, Mapping[str, Any]]] = []
    for m in concepts.match_codeable(resource.get("code"), OBSERVATION_KINDS):
        found.append((m, resource))
    components = resource.get("component")
    if type(components) is list:
        for component in components:
            if type(component) is dict:
                for m in concepts.match_codeable(component.get("code"), OBSERVATION_KINDS):
                    found.append((m, component))
    if not found:
        return
    status = resource.get("status")
    if not isinstance(status, str) or status not in _OBSERVATION_STATUSES:
        return
    if not _readable(resource, [m for m, _ in found], record):
        return
    effective = (
        parse_fhir_datetime(resource.get("effectiveDateTime"))
        or parse_fhir_datetime(get_sub(resource, "effectivePeriod", "start"))
        or parse_fhir_datetime(resource.get("effectiveInstant"))
        or parse_fhir_datetime(resource.get("issued"))
    )
    if is_future(effective, record.today, record.now):
        _not_used_future(
            record, "Observation", [m for m, _ in found], "effective[x]", "dated after the time of this call", effective
        )
        return
    for match, holder in found:
        spec = concepts.concept(match.concept).value
        if spec is None:
            continue
        if not has_choice(holder, "value", VALUE_X):
            if "dataAbsentReason" not in holder:
                record.unreadable.append(
                    UnreadableInput("Observation", match.concept, "the observation has no value", "value[x]", effective)
                )
            continue
        try:
            value, unit, raw = read_value(holder, spec, match.concept, concepts)
        except Unreadable as exc:
            _log_element("Observation", exc.element)
            record.unreadable.append(UnreadableInput("Observation", match.concept, str(exc), exc.element, effective))
            continue
        record.observations.setdefault(match.concept, []).append(
            ObservationFact(match=match, effective=effective, value=value, unit=unit, raw=raw)
        )


# -- medications -------------------------------------------------------------------------------
def _read_medication_use(
    resource: Mapping[str, Any], concepts: ConceptIndex, record: PatientRecord, medications: Mapping[str, Any]
) -> None:
    kind = resource["resourceType"]
    codeable, referenced = _medication_codeable(resource, medications)
    matches = concepts.match_codeable(codeable, MEDICATION_KINDS)
    if not matches:
        return
    status = resource.get("status")
    if kind == "MedicationRequest":
        if status != "active":
            return
    elif not isinstance(status, str) or status not in _STATEMENT_STATUSES:
        return
    if not _readable(resource, matches, record):
        return
    if referenced is not None and not _readable(referenced, matches, record):
        return
    when = (
        parse_fhir_date(resource.get("authoredOn"))
        or parse_fhir_date(resource.get("effectiveDateTime"))
        or parse_fhir_date(get_sub(resource, "effectivePeriod", "start"))
        or parse_fhir_date(resource.get("dateAsserted"))
    )
    dose = read_daily_dose(resource.get("dosageInstruction" if kind == "MedicationRequest" else "dosage"))
    for match in matches:
        record.medications.setdefault(match.concept, []).append(
            MedicationFact(match=match, resource_type=kind, status=status, date=when, dose=dose)
        )


def _medication_codeable(
    resource: Mapping[str, Any], medications: Mapping[str, Any]
) -> tuple[object, Mapping[str, Any] | None]:
    """The medication's CodeableConcept, and the separate Medication resource it came from."""
    codeable = resource.get("medicationCodeableConcept")
    if codeable is not None:
        return codeable, None
    reference = get_sub(resource, "medicationReference", "reference")
    if not isinstance(reference, str) or not reference:
        return None, None
    if reference.startswith("#"):
        for contained in as_list(resource.get("contained")):
            if (
                isinstance(contained, dict)
                and contained.get("resourceType") == "Medication"
                and contained.get("id") == reference[1:]
            ):
                return contained.get("code"), None  # validated with its container
        return None, None
    target = medications.get(reference) or medications.get(type_and_id(reference))
    if target is None:
        return None, None
    return target.get("code"), target


# -- draft orders ------------------------------------------------------------------------------
def _read_draft_order(
    resource: Mapping[str, Any],
    concepts: ConceptIndex,
    record: PatientRecord,
    medications: Mapping[str, Any],
    full_url: str | None,
    selected: frozenset[str] | None,
    conditions: ConditionIndex | None = None,
) -> None:
    kind = resource.get("resourceType")
    if kind == "ServiceRequest":
        matches = concepts.match_codeable(resource.get("code"), SERVICE_REQUEST_KINDS)
        referenced = None
    elif kind == "Procedure":
        matches = concepts.match_codeable(resource.get("code"), PROCEDURE_KINDS)
        referenced = None
    elif kind == "MedicationRequest":
        codeable, referenced = _medication_codeable(resource, medications)
        matches = concepts.match_codeable(codeable, MEDICATION_KINDS)
    else:
        return
    if not matches:
        return
    status = resource.get("status")
    if isinstance(status, str) and status in _IGNORED_DRAFT_STATUSES:
        return
    if not _readable(resource, matches, record):
        return
    if referenced is not None and not _readable(referenced, matches, record):
        return
    rid = resource.get("id")
    ref = f"{kind}/{rid}" if isinstance(rid, str) and rid else (full_url or kind)
    is_selected = selected is None or ref in selected or (full_url is not None and full_url in selected)
    reason = read_reason(resource, concepts, conditions)
    for match in matches:
        record.orders.setdefault(match.concept, []).append(
            OrderFact(
                match=match,
                resource_type=kind,
                resource_ref=ref,
                selected=is_selected,
                reason_stated=reason.stated,
                reason_concepts=reason.concepts,
                display=match.display or concepts.code_display(match.concept, match.system, match.code),
            )
        )


def _selection_set(selections: Iterable[str] | None) -> frozenset[str] | None:
    if selections is None:
        return None
    if isinstance(selections, str) or not isinstance(selections, Iterable):
        return frozenset()
    out: set[str] = set()
    for item in selections:
        if isinstance(item, str) and item:
            out.add(item)
            out.add(type_and_id(item))
    return frozenset(out)


# -- checking the elements read ----------------------------------------------------------------
def _readable(resource: Mapping[str, Any], matches: list[Match], record: PatientRecord) -> bool:
    """Check the elements the record reads of a selected resource; when one is not valid,
    record each matched concept's input as unreadable (naming the element) and say no."""
    kind = cast(str, resource.get("resourceType"))  # one of READ_TYPES: collect() kept only those
    for element, check in ELEMENTS_READ.get(kind, ()):
        value = resource.get(element)
        if value is not None and not check(value):
            _log_element(kind, element)
            reason = f"the {kind}'s {element} is not valid FHIR R4"
            for concept in dict.fromkeys(m.concept for m in matches):
                record.unreadable.append(UnreadableInput(kind, concept, reason, element))
            return False
    return True


def _not_used_future(
    record: PatientRecord,
    kind: str,
    matches: list[Match],
    element: str,
    reason: str,
    when: date | datetime | None = None,
) -> None:
    """Values dated after the call are never used; the card names them with their date."""
    for concept in dict.fromkeys(m.concept for m in matches):
        record.unreadable.append(UnreadableInput(kind, concept, f"{reason}: not used", element, when, FUTURE))


def _log_element(kind: str, element: str) -> None:
    # The element name comes from ELEMENTS_READ (ours), never from the data.
    log.warning("unreadable FHIR element: %s.%s (that input is reported as unreadable)", kind, element)


def _sort(record: PatientRecord) -> None:
    earliest = datetime.min.replace(tzinfo=UTC)

    def newest_first(when: datetime | None) -> tuple[bool, datetime]:
        return (when is not None, when or earliest)

    for observed in record.observations.values():
        observed.sort(key=lambda f: newest_first(f.effective), reverse=True)
    for performed in record.procedures.values():
        performed.sort(key=lambda f: newest_first(f.performed), reverse=True)
    for taken in record.medications.values():
        taken.sort(key=lambda f: (f.date is not None, f.date or date.min), reverse=True)
