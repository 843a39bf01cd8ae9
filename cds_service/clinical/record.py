"""The facts of one patient record and the queries that say which of them answer a question.

A fact holds only what some card concept asks for, read from FHIR by `record_build`
(the reading rules are stated there). Which facts answer a card's question (the latest
procedure, observations in a window or after a procedure, conditions after a procedure,
current medications, unreadable inputs) is said by the `PatientRecord` queries, and only
there; how dates and times are read and compared is in clinical/dates.py. Nothing here
knows about FHIR JSON, HTTP or card models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import cast

from cds_service.clinical.dates import (
    DAYS_PER_YEAR,
    day_of,
    instant_of,
    placed_after,
)
from cds_service.clinical.dosage import DailyDose
from cds_service.terminology.concept_index import Match

__all__ = [
    "ConditionFact",
    "Match",
    "MedicationFact",
    "ObservationFact",
    "ObservationReading",
    "OrderFact",
    "PatientRecord",
    "ProcedureFact",
    "SetAsideProcedure",
    "UnreadableInput",
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
    # bodySite: the body-site concepts it names (concepts.toml kind "body_site"), and the site as
    # recorded, for display; sited = False: no bodySite; site_unreadable: one that is not valid.
    sites: tuple[str, ...] = ()
    site_text: str | None = None
    sited: bool = False
    site_unreadable: bool = False

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
    # The stated reason (reasonCode / reasonReference): the condition concepts it names, and
    # whether a reason was stated at all (one naming no known concept is "another condition").
    reason_stated: bool = False
    reason_concepts: frozenset[str] = frozenset()
    reason_text: str | None = None  # the stated reason as written (for the evidence page)
    reason_unreadable: bool = False  # reasonCode / reasonReference present but not readable
    body_site: str | None = None  # bodySite as text (display or text of the first readable one)
    laterality: str | None = None  # left | right | bilateral, when the body site says so

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

    def treats(self, condition: str | None) -> bool:
        """Done for the condition: no stated reason (the existing rule stands), or a stated
        reason that names it. A reason naming only other conditions: not a treatment of it."""
        return condition is None or not self.reason_stated or condition in self.reason_concepts


@dataclass(frozen=True)
class SetAsideProcedure:
    """A record of a procedure that is not an operation of the story: entered in error, not
    done, not yet completed. Kept (without identifiers) so the evidence page can say so."""

    match: Match
    status: str
    day: date | None


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
    dose: DailyDose | None = None  # the daily dose from dosageInstruction / dosage; None: no dosage


@dataclass(frozen=True)
class OrderFact:
    """A draft order (context.draftOrders) that matched a concept."""

    match: Match
    resource_type: str
    resource_ref: str  # "ServiceRequest/abc" as given in the draft bundle
    selected: bool  # order-select: listed in context.selections
    reason_stated: bool = False  # reasonCode / reasonReference stated (clinical/procedure_context.py)
    reason_concepts: frozenset[str] = frozenset()  # the condition concepts the stated reason names
    display: str = ""  # the coding's display, else how the concepts file names the code (never a bare code)

    def treats(self, condition: str | None) -> bool:
        """Ordered for the condition: no stated reason, or one that names it."""
        return condition is None or not self.reason_stated or condition in self.reason_concepts


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
    # Procedures of a concept that are not operations (status not completed), and the valid
    # range of numeric concepts (cards/concepts.toml `range`), for the story (clinical/story.py).
    set_aside: list[SetAsideProcedure] = field(default_factory=list)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # concept id -> label (naming a later treatment)
    # The patient's story, built once per call from these facts (clinical/story.py story_of).
    story_cache: object = field(default=None, repr=False, compare=False)

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
            return max(dated, key=lambda p: instant_of(cast(datetime, p.performed)))  # dated: not None
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
            (f for f in facts if f.effective is not None),
            key=lambda f: instant_of(cast(datetime, f.effective)),
            reverse=True,
        )
        return dated + [f for f in facts if f.effective is None]

    def _after(self, concept: str, when: date | datetime | None, start: datetime | None) -> bool:
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

        def in_scope(when: date | datetime | None) -> bool:
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
            and u.when is not None  # (in_scope says False for None too)
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


def iter_facts(record: PatientRecord) -> Iterator[tuple[str, object]]:
    """(concept id, fact) for every fact in the record (used by tests and the audit)."""
    for table in (record.conditions, record.procedures, record.observations, record.medications, record.orders):
        for concept, facts in table.items():
            for fact in facts:
                yield concept, fact
