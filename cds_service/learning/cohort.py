"""One analysis row per patient: the index event, the predictors at the decision time and
the outcome, as the learning definition says.

Every fact is read by the hook path's record code (`clinical.record_build.build_record` with the
site's ConceptIndex): the same codes, value kinds, units, ranges and status rules as at the
point of care, so training and serving do not differ in how a value is read. The patient's
story (`clinical.story`) is read with the same code as at the bedside too: the index is an
operation (the records of one day merged; not one done for another condition), the
operation time is the story's (an Observation of the day wins; a period over 12 hours is a
stay), and a further treatment is an operation after the index (EVIDENCE.md "The patient's
story"). Each `read` stands for the bedside derivation kind that declares it
(content/derivations.py `learn_reads`). What is decided here is only what the definition
adds: which operation is the index, what the decision time is, and which facts count as
the outcome.

A row carries no identifier: predictor values, the event flag and (Cox) the follow-up time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from cds_service.clinical.dates import DAYS_PER_YEAR, day_of, instant_of, on_or_after, parse_fhir_date
from cds_service.clinical.record import NOT_CURRENT_USE, PatientRecord, ProcedureFact
from cds_service.clinical.record_build import build_record
from cds_service.clinical.story import operation_time, story_of
from cds_service.learning.definition import LearningDefinition, PredictorRead
from cds_service.terminology.concept_index import ConceptIndex

DAYS_PER_MONTH = DAYS_PER_YEAR / 12.0

# Dates that show the patient was in contact with the site (for censoring at last contact).
# Their top-level elements are declared (clinical/fhir_elements.py; LEARN_READS for those
# the record does not read): a staged resource holds only declared elements.
_CONTACT_DATES = {
    "Encounter": (("period", "end"), ("period", "start")),
    "Observation": (("effectiveDateTime",), ("effectivePeriod", "end"), ("effectivePeriod", "start"), ("issued",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "end"), ("performedPeriod", "start")),
    "Condition": (("recordedDate",), ("onsetDateTime",), ("abatementDateTime",)),
    "MedicationRequest": (("authoredOn",),),
    "MedicationStatement": (("effectiveDateTime",), ("dateAsserted",)),
}


@dataclass(frozen=True)
class Row:
    values: dict[str, float]  # predictor id -> value (canonical unit; yes/no as 1.0 / 0.0)
    event: bool
    time: float | None = None  # Cox: follow-up from the index, in the outcome's time unit
    # For the report's subgroups and date range, and the monitor's time windows (no identifier):
    index_day: date | None = None
    sex: str | None = None  # Patient.gender
    age: float | None = None  # years at the index


@dataclass
class CohortCounts:
    patients: int = 0
    with_index: int = 0
    included: int = 0
    excluded: Counter = field(default_factory=Counter)  # reason -> patients
    follow_up: list[float] = field(default_factory=list)  # Cox only; summarised in the report

    def as_dict(self) -> dict:
        return {
            "patients_scanned": self.patients,
            "with_index_event": self.with_index,
            "included": self.included,
            "excluded": dict(sorted(self.excluded.items())),
        }


def derive_rows(
    patients: Iterable[list[Mapping[str, Any]]], definition: LearningDefinition, concepts: ConceptIndex, today: date
) -> tuple[list[Row], CohortCounts]:
    counts = CohortCounts()
    rows: list[Row] = []
    for resources in patients:
        counts.patients += 1
        result = patient_row(resources, definition, concepts, today)
        if result is None:
            continue
        counts.with_index += 1
        if isinstance(result, str):
            counts.excluded[result] += 1
            continue
        counts.included += 1
        rows.append(result)
        if result.time is not None:
            counts.follow_up.append(result.time)
    return rows, counts


def patient_row(
    resources: list[Mapping[str, Any]], definition: LearningDefinition, concepts: ConceptIndex, today: date
) -> Row | str | None:
    """The patient's row; a reason (str) when the patient has an index event but cannot be
    used; None when the patient has no index event."""
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    record = build_record({"patient": bundle}, concepts=concepts, today=today)
    candidates = _index_candidates(record, definition, today)
    if not candidates:
        return None
    index = candidates[0]
    logistic_event: bool | None = None
    if definition.kind == "logistic":
        for candidate in candidates:
            logistic_event = _observed_answer(record, definition, candidate)
            if logistic_event is not None:
                index = candidate
                break
            if definition.index.which == "first":
                break
        if logistic_event is None:
            return "no outcome recorded in the window"
    index_day = day_of(index.performed)
    required = definition.index.requires_condition
    if required and not _condition_by(record, required, index_day):
        return f"no {required} recorded by the index"
    decision_day = index_day + timedelta(days=definition.index.decision_days)
    values: dict[str, float] = {}
    for predictor in definition.predictors:
        value = _read(predictor, record, index, decision_day)
        if value is None:
            return f"{predictor.id} not recorded"
        values[predictor.id] = value
    if definition.kind == "logistic":
        return _with_context(Row(values=values, event=bool(logistic_event)), record, index_day)
    return _with_context(_survival_row(values, record, resources, definition, index, today), record, index_day)


def _with_context(row: Row | str, record: PatientRecord, index_day: date) -> Row | str:
    if isinstance(row, str):
        return row
    birth = record.birth_date
    age = (index_day - birth).days / DAYS_PER_YEAR if birth is not None and birth <= index_day else None
    return replace(row, index_day=index_day, sex=record.sex, age=age)


# ---------------------------------------------------------------------------- index
def _index_candidates(record: PatientRecord, definition: LearningDefinition, today: date) -> list[ProcedureFact]:
    """The dated operations of the index procedure (the story's episodes: records of one
    day are one operation), done for the required condition, oldest first."""
    episodes = story_of(record).operations(definition.index.procedure, definition.index.requires_condition)
    done = [e.fact for e in episodes if e.fact.performed is not None and day_of(e.fact.performed) <= today]
    return sorted(done, key=lambda p: instant_of(p.performed))


def _condition_by(record: PatientRecord, concept: str, day: date) -> bool:
    """A Condition of the concept recorded on or before the day (an undated one counts)."""
    for fact in record.conditions.get(concept, ()):
        dates = [d for d in (fact.onset, fact.recorded) if d is not None]
        if not dates or min(dates) <= day:
            return True
    return False


# ---------------------------------------------------------------------------- predictors
def _read(p: PredictorRead, record: PatientRecord, index: ProcedureFact, decision_day: date) -> float | None:
    index_day = day_of(index.performed)
    if p.read == "index_duration":  # the bedside's `operation_time` kind, by the same function
        return operation_time(record, index, p.concept).minutes
    if p.read == "observation_after_index":
        for fact in record.observations_for(p.concept, after=index):
            if day_of(fact.effective) <= decision_day:
                return _number(fact.value)
        return None
    if p.read == "observation_before_index":
        for fact in record.observations_for(p.concept):
            if fact.effective is not None and day_of(fact.effective) <= decision_day and not _after(fact, index):
                return _number(fact.value)
        return None
    if p.read == "disease_duration_at_index":
        onset = record.earliest_onset(p.concept)
        if onset is None or onset > index_day:
            return None
        return (index_day - onset).days / DAYS_PER_YEAR
    if p.read == "condition_at_index":
        for fact in record.conditions.get(p.concept, ()):
            dates = [d for d in (fact.onset, fact.recorded) if d is not None]
            if dates and min(dates) > index_day:
                continue  # first recorded after the decision
            if fact.is_active or (fact.abatement is not None and fact.abatement > index_day):
                return 1.0
        return 0.0
    if p.read == "medication_at_index":
        for fact in record.medications.get(p.concept, ()):
            if fact.status not in NOT_CURRENT_USE and (fact.date is None or fact.date <= index_day):
                return 1.0
        return 0.0
    if p.read == "sex_male":
        return {"male": 1.0, "female": 0.0}.get(record.sex or "")
    raise AssertionError(p.read)


def _after(fact, index: ProcedureFact) -> bool:
    """Recorded after the index procedure began (a later day, or later the same day)."""
    if fact.effective is None or day_of(fact.effective) < day_of(index.performed):
        return False
    return on_or_after(fact.effective, index.performed) and instant_of(fact.effective) > instant_of(index.performed)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# ---------------------------------------------------------------------------- outcomes
def _observed_answer(record: PatientRecord, definition: LearningDefinition, index: ProcedureFact) -> bool | None:
    """True / False: the first answer recorded in the window is / is not an event; None: none."""
    o = definition.outcome
    start = day_of(index.performed) + timedelta(days=o.window_days[0])
    end = day_of(index.performed) + timedelta(days=o.window_days[1])
    facts = [
        f
        for f in record.observations_for(o.observation)
        if f.effective is not None and start <= day_of(f.effective) <= end and isinstance(f.value, str)
    ]
    if not facts:
        return None
    first = min(facts, key=lambda f: instant_of(f.effective))
    return first.value in o.event_answers


def _survival_row(
    values: dict[str, float],
    record: PatientRecord,
    resources: list[Mapping[str, Any]],
    definition: LearningDefinition,
    index: ProcedureFact,
    today: date,
) -> Row | str:
    o = definition.outcome
    index_day = day_of(index.performed)
    events: list[date] = []
    if o.condition:  # spasm recorded after the operation: the bedside's query (record.conditions_after)
        for fact in record.conditions_after(o.condition, index):
            if fact.clinical_status in o.condition_statuses:
                events.append(min(d for d in (fact.onset, fact.recorded) if d is not None and d > index_day))
    # A further treatment: an operation of the story after the index one (on a later day).
    for episode in story_of(record).treatments_after(index, tuple(o.procedures), definition.index.requires_condition):
        if index_day < episode.day <= today:
            events.append(episode.day)
    events = [d for d in events if d <= today]
    if events:
        end, event = min(events), True
    else:
        end, event = _last_contact(resources, today), False
        if end is None:
            return "no follow-up recorded"
    days = (end - index_day).days
    if days <= definition.index.decision_days:
        return "outcome or end of follow-up before the decision time"
    return Row(values=values, event=event, time=days / DAYS_PER_MONTH)


def _last_contact(resources: list[Mapping[str, Any]], today: date) -> date | None:
    """The latest date of contact; the resources are JSON objects or staged `Resource`s."""
    latest: date | None = None
    for resource in resources:
        for path in _CONTACT_DATES.get(resource.get("resourceType"), ()):
            value: object = resource
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            day = parse_fhir_date(value)
            if day is not None and day <= today and (latest is None or day > latest):
                latest = day
    return latest
