"""One patient record per hook call, built from prefetched or fetched FHIR resources.

The record holds only facts that some card concept asks for: resources are selected from
the raw JSON by code first (cheap), and only the selected ones are validated with
fhir.resources.R4B (expensive). Nothing here knows about HTTP or about card models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class Match:
    """How a resource was matched to a concept: the coding (or text) that matched."""
    concept: str                     # concept id from cards/concepts.toml
    system: str | None               # code system URI, None when matched by text
    code: str | None
    display: str | None              # display of the matching coding, or the matched text
    by_text: bool = False            # True when only the free text matched


@dataclass(frozen=True)
class ConditionFact:
    match: Match
    clinical_status: str | None      # active | recurrence | relapse | inactive | remission | resolved
    onset: date | None               # onsetDateTime / onsetPeriod.start / onsetAge not used
    recorded: date | None            # recordedDate
    abatement: date | None


@dataclass(frozen=True)
class ProcedureFact:
    match: Match
    status: str                      # FHIR Procedure.status (only 'completed' kept by default)
    start: datetime | None           # performedDateTime or performedPeriod.start
    end: datetime | None             # performedPeriod.end

    @property
    def duration_minutes(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        minutes = (self.end - self.start).total_seconds() / 60.0
        return minutes if minutes >= 0 else None


@dataclass(frozen=True)
class ObservationFact:
    match: Match
    effective: datetime | None       # effectiveDateTime / effectivePeriod.start / issued
    value: float | str | bool | None # converted to the concept's canonical unit; str for coded answers
    unit: str | None                 # canonical UCUM unit when value is a number
    raw: str                         # the value as recorded, for display ("25 min", "Grade III")


@dataclass(frozen=True)
class MedicationFact:
    match: Match
    resource_type: str               # MedicationRequest | MedicationStatement
    status: str
    date: date | None                # authoredOn / effective


@dataclass(frozen=True)
class OrderFact:
    """A draft order (context.draftOrders) that matched a concept."""
    match: Match
    resource_type: str
    resource_ref: str                # "ServiceRequest/abc" as given in the draft bundle
    selected: bool                   # order-select: listed in context.selections


@dataclass(frozen=True)
class UnreadableInput:
    """A resource the service needed but could not use. Carries no identifiers."""
    resource_type: str
    concept: str | None
    reason: str


@dataclass
class PatientRecord:
    today: date
    sex: str | None = None           # Patient.gender
    birth_date: date | None = None
    conditions: dict[str, list[ConditionFact]] = field(default_factory=dict)
    procedures: dict[str, list[ProcedureFact]] = field(default_factory=dict)
    observations: dict[str, list[ObservationFact]] = field(default_factory=dict)  # latest first
    medications: dict[str, list[MedicationFact]] = field(default_factory=dict)
    orders: dict[str, list[OrderFact]] = field(default_factory=dict)
    unreadable: list[UnreadableInput] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # prefetch key -> reason
