"""One patient record per hook call, built from prefetched or fetched FHIR resources.

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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from cds_service import formatting
from cds_service.clinical.dates import (
    DAYS_PER_YEAR,
    day_of,
    instant_of,
    is_future,
    parse_fhir_date,
    parse_fhir_datetime,
    placed_after,
)
from cds_service.terminology import units
from cds_service.terminology.concept_index import ConceptIndex, Match, ValueSpec

__all__ = [
    "ConditionFact",
    "Match",
    "MedicationFact",
    "ObservationFact",
    "ObservationReading",
    "OrderFact",
    "PatientRecord",
    "ProcedureFact",
    "UnreadableInput",
    "build_record",
    "iter_facts",
]

log = logging.getLogger(__name__)

ACTIVE_CLINICAL_STATUSES = ("active", "recurrence", "relapse")
RECURRENCE_STATUSES = ("recurrence", "relapse")
# Kinds of UnreadableInput.
UNREADABLE = "unreadable"  # an element the record reads is not valid, or the value cannot be read
FUTURE = "future"  # dated after the time of the call: never used
NOT_CURRENT_USE = frozenset({"entered-in-error", "cancelled", "draft", "not-taken", "unknown"})


@dataclass(frozen=True)
class ConditionFact:
    match: Match
    clinical_status: str | None  # active | recurrence | relapse | inactive | remission | resolved
    onset: date | None  # onsetDateTime / onsetPeriod.start (onsetAge / onsetString: None)
    recorded: date | None  # recordedDate
    abatement: date | None  # abatementDateTime / abatementPeriod (start, else end)
    abated: bool = False  # any abatement[x] recorded, even one without a date
    status_from_abatement: bool = False  # clinical_status "inactive" read from the abatement (con-4)

    @property
    def is_active(self) -> bool:
        """Active, recurrence or relapse; or no clinical status and nothing says it abated."""
        if self.clinical_status is None:
            return not self.abated
        return self.clinical_status in ACTIVE_CLINICAL_STATUSES


@dataclass(frozen=True)
class ProcedureFact:
    match: Match
    status: str  # FHIR Procedure.status (only 'completed' kept by default)
    start: datetime | None  # performedDateTime or performedPeriod.start (timezone-aware)
    end: datetime | None  # performedPeriod.end

    @property
    def duration_minutes(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        minutes = (self.end - self.start).total_seconds() / 60.0
        return minutes if minutes >= 0 else None

    @property
    def performed(self) -> datetime | None:
        """When it was done: the start, else the end."""
        return self.start if self.start is not None else self.end


@dataclass(frozen=True)
class ObservationFact:
    match: Match
    effective: datetime | None  # effectiveDateTime / effectivePeriod.start / effectiveInstant / issued
    value: float | int | str | bool | None  # float (quantity, canonical unit), int (ordinal, count),
    # str (coded answer, e.g. "persisted"), bool (boolean)
    unit: str | None  # canonical UCUM unit when value is a quantity
    raw: str  # the value as recorded, for display ("25 min", "Grade III")


@dataclass(frozen=True)
class MedicationFact:
    match: Match
    resource_type: str  # MedicationRequest | MedicationStatement
    status: str
    date: date | None  # authoredOn / effective[x] / dateAsserted


@dataclass(frozen=True)
class OrderFact:
    """A draft order (context.draftOrders) that matched a concept."""

    match: Match
    resource_type: str
    resource_ref: str  # "ServiceRequest/abc" as given in the draft bundle
    selected: bool  # order-select: listed in context.selections
    display: str = ""  # the coding's display, else how the concepts file names the code (never a bare code)


@dataclass(frozen=True)
class UnreadableInput:
    """A resource the service needed but could not use. Carries no identifiers and no values."""

    resource_type: str
    concept: str | None
    reason: str
    # What the problem is, is said by the three fields above (they compare); where and when
    # it was met is said by these (they do not compare, so the same problem met twice is one).
    element: str | None = field(default=None, compare=False)  # the FHIR element ("onsetDateTime")
    when: date | datetime | None = field(default=None, compare=False)  # the value's date, when readable
    kind: str = field(default=UNREADABLE, compare=False)  # unreadable | future


@dataclass(frozen=True)
class ObservationReading:
    """The answer to "which value of this input is used?", with what was not used and why.

    fact:             the value used (the newest that qualifies), or None.
    newer_unreadable: values of the input dated after the one used (or, with none used, in
                      the same window) that could not be read: the card says a newer value
                      exists and could not be read, and which older value it used.
    unplaced:         values on the procedure's own day that cannot be placed before or
                      after it (one of the two has no time of day): not used as post-procedure.
    future:           values dated after the time of the call: never used.
    """

    fact: ObservationFact | None
    newer_unreadable: tuple[UnreadableInput, ...] = ()
    unplaced: tuple[ObservationFact, ...] = ()
    future: tuple[UnreadableInput, ...] = ()


@dataclass
class PatientRecord:
    """The facts of one patient, and the queries that say which of them answer a question.

    The queries are the one place for each rule the cards rely on: which procedure is the
    latest, which observations fall in a window or after a procedure, which conditions are
    active or came after a procedure, which medications are current use, and which inputs
    of a concept could not be read. They take facts as they are, also from records built
    by hand (unsorted, or with statuses the build would not keep).
    """

    today: date
    sex: str | None = None  # Patient.gender
    birth_date: date | None = None
    conditions: dict[str, list[ConditionFact]] = field(default_factory=dict)
    procedures: dict[str, list[ProcedureFact]] = field(default_factory=dict)  # latest first
    observations: dict[str, list[ObservationFact]] = field(default_factory=dict)  # latest first
    medications: dict[str, list[MedicationFact]] = field(default_factory=dict)  # latest first
    orders: dict[str, list[OrderFact]] = field(default_factory=dict)
    unreadable: list[UnreadableInput] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # prefetch key -> reason
    now: datetime | None = None  # the instant of the call, when known (else only `today`)
    # Observation concepts taken during a procedure (concepts.toml `intraoperative`): on the
    # procedure's own day a value belongs to it even when it cannot be placed by the clock.
    intraoperative: frozenset[str] = frozenset()

    # -- conditions ------------------------------------------------------------------------
    def active_conditions(self, concept: str) -> list[ConditionFact]:
        return [c for c in self.conditions.get(concept, ()) if c.is_active]

    def has_active_condition(self, concept: str) -> bool:
        return any(c.is_active for c in self.conditions.get(concept, ()))

    def conditions_after(self, concept: str, procedure: ProcedureFact | None) -> list[ConditionFact]:
        """Conditions of the concept still present after the procedure: active, recurrent or
        relapsed, with an onset or recorded date after the procedure day (none when the
        procedure has no date)."""
        if procedure is None or procedure.performed is None:
            return []
        day = day_of(procedure.performed)
        return [
            c for c in self.active_conditions(concept) if any(d is not None and d > day for d in (c.onset, c.recorded))
        ]

    def earliest_onset(self, concept: str) -> date | None:
        """The first recorded onset of the disease: the earliest onset of its Conditions, not
        counting an entry recorded as a recurrence or relapse (its onset is the recurrence's,
        not the disease's). None when no other entry has an onset."""
        onsets = [
            c.onset
            for c in self.conditions.get(concept, ())
            if c.onset is not None and c.clinical_status not in RECURRENCE_STATUSES
        ]
        return min(onsets) if onsets else None

    def conditions_unplaced(self, concept: str, procedure: ProcedureFact | None) -> list[ConditionFact]:
        """Active (or recurrent, relapsed) Conditions that cannot be placed before or after the
        procedure: no onset and no recorded date, or dated only on the procedure's own day.
        A card cannot say the patient is free of the condition since the procedure."""
        if procedure is None or procedure.performed is None:
            return []
        day = day_of(procedure.performed)
        out = []
        for c in self.active_conditions(concept):
            dates = [d for d in (c.onset, c.recorded) if d is not None]
            if not dates or max(dates) == day:
                out.append(c)
        return out

    # -- procedures ------------------------------------------------------------------------
    def latest_procedure(self, concept: str) -> ProcedureFact | None:
        """The latest completed procedure of the concept that is not dated after today; an
        undated one only when none has a date."""
        done = [
            p
            for p in self.procedures.get(concept, ())
            if p.status == "completed" and (p.performed is None or day_of(p.performed) <= self.today)
        ]
        if not done:
            return None
        dated = [p for p in done if p.performed is not None]
        if dated:
            return max(dated, key=lambda p: instant_of(p.performed))
        return done[0]

    # -- observations ----------------------------------------------------------------------
    def observations_for(
        self, concept: str, lookback_days: int | None = None, after: ProcedureFact | None = None
    ) -> list[ObservationFact]:
        """Observations of the concept, latest first, undated last.

        `lookback_days`: only those dated in the window of that many days ending today.
        `after`: only those on or after the procedure (`dates.on_or_after`: both with a time
        of day, by instant; else a later calendar day; a value on the procedure's own day
        without both times cannot be placed and is left out); none when the procedure has
        no date. Either excludes undated observations.
        """
        facts = list(self.observations.get(concept, ()))
        if lookback_days is not None:
            since = self.today - timedelta(days=lookback_days)
            facts = [f for f in facts if f.effective is not None and since <= day_of(f.effective) <= self.today]
        if after is not None:
            facts = [f for f in facts if self._after(concept, f.effective, after.performed)]
        dated = sorted(
            (f for f in facts if f.effective is not None), key=lambda f: instant_of(f.effective), reverse=True
        )
        return dated + [f for f in facts if f.effective is None]

    def _after(self, concept: str, when: datetime | None, start: datetime | None) -> bool:
        placed = placed_after(when, start)
        if placed is None and when is not None and start is not None and concept in self.intraoperative:
            return True  # on the procedure's day: taken during it
        return placed is True

    def latest_observation(
        self, concept: str, lookback_days: int | None = None, after: ProcedureFact | None = None
    ) -> ObservationFact | None:
        """The first of `observations_for` (same arguments), or None."""
        facts = self.observations_for(concept, lookback_days, after)
        return facts[0] if facts else None

    def reading(
        self, concept: str, lookback_days: int | None = None, after: ProcedureFact | None = None
    ) -> ObservationReading:
        """The value of the input used (as `latest_observation`), and the values not used:
        newer ones that could not be read, ones on the procedure's day that cannot be placed,
        and ones dated after the time of the call."""
        fact = self.latest_observation(concept, lookback_days, after)

        def in_scope(when: datetime | None) -> bool:
            if when is None:
                return False
            if lookback_days is not None:
                since = self.today - timedelta(days=lookback_days)
                if not since <= day_of(when) <= self.today:
                    return False
            return after is None or self._after(concept, when, after.performed)

        problems = [u for u in self.unreadable if u.concept == concept]
        newer = tuple(
            u
            for u in problems
            if u.kind == UNREADABLE
            and in_scope(u.when)
            and (fact is None or fact.effective is None or instant_of(u.when) > instant_of(fact.effective))
        )
        unplaced: tuple[ObservationFact, ...] = ()
        if after is not None and after.performed is not None and concept not in self.intraoperative:
            unplaced = tuple(
                f
                for f in self.observations.get(concept, ())
                if f.effective is not None and placed_after(f.effective, after.performed) is None
            )
        future = tuple(u for u in problems if u.kind == FUTURE)
        return ObservationReading(fact=fact, newer_unreadable=newer, unplaced=unplaced, future=future)

    # -- medications and orders --------------------------------------------------------------
    def current_medications(self, concept: str) -> list[MedicationFact]:
        """Current use: the build keeps active requests and active/intended statements only;
        a fact with a status that never means use (draft, not-taken, ...) is not counted."""
        return [m for m in self.medications.get(concept, ()) if m.status not in NOT_CURRENT_USE]

    def orders_for(self, concept: str, selected_only: bool = False) -> list[OrderFact]:
        return [o for o in self.orders.get(concept, ()) if o.selected or not selected_only]

    # -- inputs that could not be read ---------------------------------------------------------
    def unreadable_for(self, *concepts: str | None) -> list[UnreadableInput]:
        """The unreadable inputs of any of these concepts, in the order met (also those not
        used because they are dated after the call: kind "future"). An input of no concept
        (a Patient element) belongs to none, and no concept (None) has any."""
        return [u for u in self.unreadable if u.concept is not None and u.concept in concepts]

    def newer_unreadable(self, concept: str, than: ObservationFact | None) -> list[UnreadableInput]:
        """Values of the concept dated after `than` (any dated one when `than` is None or
        undated) that could not be read."""
        return [
            u
            for u in self.unreadable
            if u.concept == concept
            and u.kind == UNREADABLE
            and u.when is not None
            and (than is None or than.effective is None or instant_of(u.when) > instant_of(than.effective))
        ]

    # -- time ----------------------------------------------------------------------------------
    def years_since(self, when: date | None) -> float | None:
        """Years (of 365.25 days) from a date to today; None for no date or a date after today."""
        if when is None:
            return None
        days = (self.today - when).days
        return days / DAYS_PER_YEAR if days >= 0 else None


# =========================================================================== building
CONDITION_KINDS = frozenset({"condition"})
PROCEDURE_KINDS = frozenset({"procedure"})
OBSERVATION_KINDS = frozenset({"observation"})
MEDICATION_KINDS = frozenset({"medication"})
SERVICE_REQUEST_KINDS = frozenset({"procedure", "medication"})

_OBSERVATION_STATUSES = ("final", "amended", "corrected")


# -- the elements the record reads, and their FHIR R4 datatypes ------------------------------
# Only these elements of a selected resource are checked (each against its datatype: the
# parts of it that the record reads). Anything else in the resource is never looked at.
# Observation values (value[x]) are checked where they are read (`_read_value`), against
# the concept's value kind.
def _is_string(value: object) -> bool:
    return type(value) is str


def _is_code(value: object) -> bool:
    """FHIR code: a non-empty string without leading or trailing blanks."""
    return type(value) is str and value != "" and value == value.strip()


def _is_datetime(value: object) -> bool:
    """FHIR date / dateTime / instant (a real calendar date and time)."""
    return parse_fhir_datetime(value) is not None


def _is_coding(value: object) -> bool:
    if type(value) is not dict:
        return False
    system, code, display = value.get("system"), value.get("code"), value.get("display")
    return (
        (system is None or (type(system) is str and system != ""))
        and (code is None or _is_code(code))
        and (display is None or type(display) is str)
    )


def _is_codeable(value: object) -> bool:
    """CodeableConcept: coding (a list of Codings) and text, as far as they are present."""
    if type(value) is not dict:
        return False
    coding, text = value.get("coding"), value.get("text")
    if coding is not None and (type(coding) is not list or not all(_is_coding(c) for c in coding)):
        return False
    return text is None or type(text) is str


def _is_period(value: object) -> bool:
    if type(value) is not dict:
        return False
    start, end = value.get("start"), value.get("end")
    return (start is None or _is_datetime(start)) and (end is None or _is_datetime(end))


def _is_reference(value: object) -> bool:
    return type(value) is dict and (value.get("reference") is None or type(value.get("reference")) is str)


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _is_quantity(value: object) -> bool:
    if type(value) is not dict:
        return False
    number = value.get("value")
    return (
        (number is None or _is_number(number))
        and all(value.get(k) is None or type(value.get(k)) is str for k in ("unit", "system", "code"))
        and (value.get("comparator") is None or _is_code(value.get("comparator")))
    )


# The value[x] elements the record reads, by their datatype.
_VALUES_READ: tuple[tuple[str, _Check], ...] = (
    ("valueQuantity", _is_quantity),
    ("valueInteger", lambda v: type(v) is int),
    ("valueString", lambda v: type(v) is str),
    ("valueBoolean", lambda v: type(v) is bool),
    ("valueCodeableConcept", _is_codeable),
)


def _is_components(value: object) -> bool:
    return type(value) is list and all(type(c) is dict and _is_codeable(c.get("code")) for c in value)


_Check = Callable[[object], bool]
_ELEMENTS_READ: dict[str, tuple[tuple[str, _Check], ...]] = {
    "Condition": (
        ("code", _is_codeable),
        ("clinicalStatus", _is_codeable),
        ("verificationStatus", _is_codeable),
        ("onsetDateTime", _is_datetime),
        ("onsetPeriod", _is_period),
        ("abatementDateTime", _is_datetime),
        ("abatementPeriod", _is_period),
        ("recordedDate", _is_datetime),
    ),
    "Procedure": (
        ("code", _is_codeable),
        ("status", _is_code),
        ("performedDateTime", _is_datetime),
        ("performedPeriod", _is_period),
    ),
    "Observation": (
        ("code", _is_codeable),
        ("status", _is_code),
        ("component", _is_components),
        ("effectiveDateTime", _is_datetime),
        ("effectivePeriod", _is_period),
        ("effectiveInstant", _is_datetime),
        ("issued", _is_datetime),
    ),
    "MedicationRequest": (
        ("status", _is_code),
        ("medicationCodeableConcept", _is_codeable),
        ("medicationReference", _is_reference),
        ("authoredOn", _is_datetime),
    ),
    "MedicationStatement": (
        ("status", _is_code),
        ("medicationCodeableConcept", _is_codeable),
        ("medicationReference", _is_reference),
        ("effectiveDateTime", _is_datetime),
        ("effectivePeriod", _is_period),
        ("dateAsserted", _is_datetime),
    ),
    "ServiceRequest": (("code", _is_codeable), ("status", _is_code)),
    "Medication": (("code", _is_codeable),),
}

_STATEMENT_STATUSES = ("active", "intended")
_IGNORED_DRAFT_STATUSES = ("entered-in-error", "cancelled", "revoked")
_GENDERS = ("male", "female", "other", "unknown")
_RAW_LIMIT = 60


class _Unreadable(Exception):
    """A selected resource's value cannot be used; the message is a safe reason."""

    def __init__(self, reason: str, element: str = "value[x]") -> None:
        super().__init__(reason)
        self.element = element


def build_record(
    resources: dict[str, dict | None] | None,
    draft_orders: dict | None = None,
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
    )
    sources = list(resources.values()) if isinstance(resources, dict) else []
    collected = _collect(sources)
    drafts = _collect([draft_orders])
    medications = _medication_index(collected + drafts)

    patient = next((r for r, _ in collected if r.get("resourceType") == "Patient"), None)
    if patient is not None:
        _read_patient(patient, record)

    readers = {
        "Condition": _read_condition,
        "Procedure": _read_procedure,
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
            _read_draft_order(resource, concepts, record, medications, full_url, selected)
        except Exception:
            _could_not_read(resource, record)

    _sort(record)
    record.unreadable = list({(u, u.element, u.when, u.kind): u for u in record.unreadable}.values())
    return record


def _could_not_read(resource: dict, record: PatientRecord) -> None:
    """Last line of defence: the reason is ours, never the exception's text."""
    kind = resource.get("resourceType")
    record.unreadable.append(
        UnreadableInput(
            resource_type=kind if kind in _READ_TYPES else "Resource",
            concept=None,
            reason="the resource could not be read",
        )
    )


# -- collecting ---------------------------------------------------------------------------
_READ_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Procedure",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "Medication",
        "ServiceRequest",
    }
)


def _collect(sources: Iterable[object]) -> list[tuple[dict, str | None]]:
    """The resources of the types the record reads, from the sources (Bundles unpacked one
    level), de-duplicated by type+id (the first one wins)."""
    out: list[tuple[dict, str | None]] = []
    seen: set[tuple[str, str]] = set()
    read_types = _READ_TYPES
    for source in sources:
        if type(source) is not dict:
            continue
        if source.get("resourceType") == "Bundle":
            entries = source.get("entry")
            if type(entries) is not list:
                continue
        else:
            entries = ({"resource": source},)
        # One flat loop: this runs for every resource of the call (hundreds in a real chart).
        for entry in entries:
            if type(entry) is not dict:
                continue
            resource = entry.get("resource")
            if type(resource) is not dict:
                continue
            kind = resource.get("resourceType")
            if type(kind) is not str or kind not in read_types:
                continue
            rid = resource.get("id")
            if type(rid) is str:
                key = (kind, rid)
                if key in seen:
                    continue
                seen.add(key)
            full_url = entry.get("fullUrl")
            out.append((resource, full_url if type(full_url) is str else None))
    return out


def _medication_index(resources: list[tuple[dict, str | None]]) -> dict[str, dict]:
    index: dict[str, dict] = {}
    for resource, full_url in resources:
        if resource.get("resourceType") != "Medication":
            continue
        rid = resource.get("id")
        if isinstance(rid, str):
            index.setdefault(f"Medication/{rid}", resource)
        if full_url:
            index.setdefault(full_url, resource)
    return index


# -- Patient -------------------------------------------------------------------------------
def _read_patient(patient: dict, record: PatientRecord) -> None:
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
def _read_condition(resource: dict, concepts: ConceptIndex, record: PatientRecord, _meds) -> None:
    matches = concepts.match_codeable(resource.get("code"), CONDITION_KINDS)
    if not matches:
        return
    if _status_code(resource.get("verificationStatus"), "condition-ver-status") in ("refuted", "entered-in-error"):
        return
    if not _readable(resource, matches, record):
        return
    clinical = _status_code(resource.get("clinicalStatus"), "condition-clinical")
    onset = parse_fhir_date(resource.get("onsetDateTime")) or parse_fhir_date(_get(resource, "onsetPeriod", "start"))
    abatement = (
        parse_fhir_date(resource.get("abatementDateTime"))
        or parse_fhir_date(_get(resource, "abatementPeriod", "start"))
        or parse_fhir_date(_get(resource, "abatementPeriod", "end"))
    )
    abated = any(isinstance(key, str) and key.startswith("abatement") for key in resource)
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
            )
        )


# -- Procedure ---------------------------------------------------------------------------------
def _read_procedure(resource: dict, concepts: ConceptIndex, record: PatientRecord, _meds) -> None:
    matches = concepts.match_codeable(resource.get("code"), PROCEDURE_KINDS)
    if not matches or resource.get("status") != "completed":
        return
    if not _readable(resource, matches, record):
        return
    start = parse_fhir_datetime(resource.get("performedDateTime"))
    end = None
    if start is None:
        start = parse_fhir_datetime(_get(resource, "performedPeriod", "start"))
        end = parse_fhir_datetime(_get(resource, "performedPeriod", "end"))
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
    for match in matches:
        record.procedures.setdefault(match.concept, []).append(
            ProcedureFact(match=match, status="completed", start=start, end=end)
        )


# -- Observation -------------------------------------------------------------------------------
def _read_observation(resource: dict, concepts: ConceptIndex, record: PatientRecord, _meds) -> None:
    found: list[tuple[Match, dict]] = []
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
        or parse_fhir_datetime(_get(resource, "effectivePeriod", "start"))
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
        if not any(isinstance(key, str) and key.startswith("value") for key in holder):
            if "dataAbsentReason" not in holder:
                record.unreadable.append(
                    UnreadableInput("Observation", match.concept, "the observation has no value", "value[x]", effective)
                )
            continue
        try:
            value, unit, raw = _read_value(holder, spec, match.concept, concepts)
        except _Unreadable as exc:
            _log_element("Observation", exc.element)
            record.unreadable.append(UnreadableInput("Observation", match.concept, str(exc), exc.element, effective))
            continue
        record.observations.setdefault(match.concept, []).append(
            ObservationFact(match=match, effective=effective, value=value, unit=unit, raw=raw)
        )


def _read_value(holder: dict, spec: ValueSpec, concept_id: str, concepts: ConceptIndex):
    """(value, unit, raw) of an Observation or component for the concept's value kind."""
    for element, check in _VALUES_READ:
        value = holder.get(element)
        if value is not None and not check(value):
            raise _Unreadable(f"the Observation's {element} is not valid FHIR R4", element)
    kind = spec.kind
    if kind == "quantity":
        if "valueQuantity" in holder:
            quantity = holder["valueQuantity"]
            try:
                number = units.convert_quantity(quantity, spec.unit)
            except units.UnitError as exc:
                raise _Unreadable(str(exc)) from None
            return _in_range(number, spec), spec.unit, _raw_quantity(quantity)
        if "valueInteger" in holder and units.is_dimensionless(spec.unit):
            number = _integer(holder["valueInteger"])
            return _in_range(float(number), spec), spec.unit, str(number)
        raise _Unreadable(f"the value is not a quantity ({spec.unit} expected)")
    if kind in ("ordinal", "count"):
        number, raw = _whole_number(holder, ordinal=kind == "ordinal")
        return int(_in_range(number, spec)), None, raw
    if kind == "coded":
        source = holder.get("valueCodeableConcept", holder.get("valueString"))
        answer = concepts.match_answer(concept_id, source)
        if answer is None:
            raise _Unreadable("the value is not one of the concept's answers")
        return answer.value, None, _raw_answer(source, answer.label)
    if kind == "boolean":
        if "valueBoolean" in holder:
            flag = holder["valueBoolean"]
            if not isinstance(flag, bool):
                raise _Unreadable("valueBoolean is not true or false")
            return flag, None, "yes" if flag else "no"
        source = holder.get("valueCodeableConcept", holder.get("valueString"))
        answer = concepts.match_answer(concept_id, source)
        if answer is None or not isinstance(answer.value, bool):
            raise _Unreadable("the value is not a yes/no answer")
        return answer.value, None, _raw_answer(source, answer.label)
    raise _Unreadable("the concept's value kind is not supported")


def _whole_number(holder: dict, ordinal: bool) -> tuple[float, str]:
    if "valueInteger" in holder:
        number = _integer(holder["valueInteger"])
        return float(number), str(number)
    if "valueQuantity" in holder:
        quantity = holder["valueQuantity"]
        try:
            number = units.convert_quantity(quantity, "1")
        except units.UnitError as exc:
            raise _Unreadable(str(exc).replace("converted to 1", "read as a number without unit")) from None
        if not number.is_integer():
            raise _Unreadable("the value is not a whole number")
        return number, _raw_quantity(quantity)
    text = holder.get("valueString")
    if text is None and isinstance(holder.get("valueCodeableConcept"), dict):
        cc = holder["valueCodeableConcept"]
        candidates = (
            [cc.get("text")]
            + [c.get("display") for c in _list(cc.get("coding")) if isinstance(c, dict)]
            + [c.get("code") for c in _list(cc.get("coding")) if isinstance(c, dict)]
        )
        for candidate in candidates:
            if isinstance(candidate, str) and _parse_grade(candidate, ordinal) is not None:
                text = candidate
                break
    if isinstance(text, str):
        number = _parse_grade(text, ordinal)
        if number is not None:
            return float(number), _short(text)
        raise _Unreadable("the value is not a recognised grade" if ordinal else "the value is not a whole number")
    raise _Unreadable("the value is not a grade" if ordinal else "the value is not a count")


_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10}
_GRADE = re.compile(r"\s*(?:(?:grade|gr\.?)\s*)?([IVX]{1,4}|[0-9]{1,2})\s*\.?\s*", re.IGNORECASE)
_COUNT = re.compile(r"\s*([0-9]{1,3})\s*")


def _parse_grade(text: str, ordinal: bool) -> int | None:
    """ "III", "Grade III", "grade 3", "3" -> 3 (ordinal); "2" -> 2 (count)."""
    if len(text) > 40:
        return None
    m = (_GRADE if ordinal else _COUNT).fullmatch(text)
    if m is None:
        return None
    token = m.group(1)
    return int(token) if token.isdigit() else _ROMAN.get(token.upper())


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unreadable("valueInteger is not an integer")
    return value


def _in_range(number: float, spec: ValueSpec) -> float:
    if not spec.in_range(number):
        raise _Unreadable(f"the value is outside the valid range {spec.range_text()}")
    return number


def _raw_quantity(quantity: dict) -> str:
    value = quantity.get("value")
    unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
    number = formatting.number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"
    if isinstance(unit, str) and unit and not unit.startswith("{") and unit != "1":
        return _short(f"{number} {unit}")
    return number


def _raw_answer(source: object, label: str) -> str:
    if isinstance(source, str):
        return _short(source)
    if isinstance(source, dict):
        if isinstance(source.get("text"), str):
            return _short(source["text"])
        for coding in _list(source.get("coding")):
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                return _short(coding["display"])
    return label


# -- medications -------------------------------------------------------------------------------
def _read_medication_use(resource: dict, concepts: ConceptIndex, record: PatientRecord, medications: dict) -> None:
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
        or parse_fhir_date(_get(resource, "effectivePeriod", "start"))
        or parse_fhir_date(resource.get("dateAsserted"))
    )
    for match in matches:
        record.medications.setdefault(match.concept, []).append(
            MedicationFact(match=match, resource_type=kind, status=status, date=when)
        )


def _medication_codeable(resource: dict, medications: dict) -> tuple[object, dict | None]:
    """The medication's CodeableConcept, and the separate Medication resource it came from."""
    codeable = resource.get("medicationCodeableConcept")
    if codeable is not None:
        return codeable, None
    reference = _get(resource, "medicationReference", "reference")
    if not isinstance(reference, str) or not reference:
        return None, None
    if reference.startswith("#"):
        for contained in _list(resource.get("contained")):
            if (
                isinstance(contained, dict)
                and contained.get("resourceType") == "Medication"
                and contained.get("id") == reference[1:]
            ):
                return contained.get("code"), None  # validated with its container
        return None, None
    target = medications.get(reference) or medications.get(_type_and_id(reference))
    if target is None:
        return None, None
    return target.get("code"), target


# -- draft orders ------------------------------------------------------------------------------
def _read_draft_order(
    resource: dict,
    concepts: ConceptIndex,
    record: PatientRecord,
    medications: dict,
    full_url: str | None,
    selected: frozenset[str] | None,
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
    for match in matches:
        record.orders.setdefault(match.concept, []).append(
            OrderFact(
                match=match,
                resource_type=kind,
                resource_ref=ref,
                selected=is_selected,
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
            out.add(_type_and_id(item))
    return frozenset(out)


# -- checking the elements read ----------------------------------------------------------------
def _readable(resource: dict, matches: list[Match], record: PatientRecord) -> bool:
    """Check the elements the record reads of a selected resource; when one is not valid,
    record each matched concept's input as unreadable (naming the element) and say no."""
    kind = resource.get("resourceType")
    for element, check in _ELEMENTS_READ.get(kind, ()):
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
    # The element name comes from _ELEMENTS_READ (ours), never from the data.
    log.warning("unreadable FHIR element: %s.%s (that input is reported as unreadable)", kind, element)


# -- small readers -----------------------------------------------------------------------------
def _get(resource: dict, key: str, sub: str) -> object:
    value = resource.get(key)
    return value.get(sub) if isinstance(value, dict) else None


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _status_code(codeable: object, system_tail: str) -> str | None:
    """The code of a status CodeableConcept (the HL7 system's coding first)."""
    if not isinstance(codeable, dict):
        return None
    first = None
    for coding in _list(codeable.get("coding")):
        if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
            continue
        system = coding.get("system")
        if isinstance(system, str) and system.endswith(system_tail):
            return coding["code"]
        first = first or coding["code"]
    return first


def _type_and_id(reference: str) -> str:
    """ "https://x/fhir/ServiceRequest/1/_history/2" -> "ServiceRequest/1"."""
    parts = [p for p in reference.split("?")[0].split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _short(text: str) -> str:
    text = " ".join(text[:1000].split())
    return text if len(text) <= _RAW_LIMIT else text[: _RAW_LIMIT - 1] + "\u2026"


def _sort(record: PatientRecord) -> None:
    earliest = datetime.min.replace(tzinfo=UTC)

    def newest_first(when: datetime | None) -> tuple[bool, datetime]:
        return (when is not None, when or earliest)

    for facts in record.observations.values():
        facts.sort(key=lambda f: newest_first(f.effective), reverse=True)
    for facts in record.procedures.values():
        facts.sort(key=lambda f: newest_first(f.performed), reverse=True)
    for facts in record.medications.values():
        facts.sort(key=lambda f: (f.date is not None, f.date or date.min), reverse=True)


def iter_facts(record: PatientRecord) -> Iterator[tuple[str, object]]:
    """(concept id, fact) for every fact in the record (used by tests and the audit)."""
    for table in (record.conditions, record.procedures, record.observations, record.medications, record.orders):
        for concept, facts in table.items():
            for fact in facts:
                yield concept, fact
