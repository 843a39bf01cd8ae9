"""Evaluate one card for one hook call: does it concern this patient, which of its inputs
does the record hold, and (only with a complete site-supplied model) what patient-specific
estimate follows.

Data moves forward: PatientRecord + CardContent in, CardResult out. Nothing here knows
about FHIR JSON or HTTP, and nothing here writes text for the clinician (render.py does).
Which facts answer a question (latest procedure, observations in a window or after the
procedure, conditions after it, ...) is asked of the record's queries, not decided here.

Each predictor is read by the function registered in DERIVE under its derivation kind
(one per kind of content/derivations.py); `holds` is the one test of a predicate, used for
a situation's `requires` here and for text variants by render.py.

Rules kept here, for every card:
- a card fires only in one of its situations (hook + every predicate of `requires`); the
  first situation that matches wins, so a card file lists the most specific one first;
- every input is either used (value, unit, date, where it came from), missing (never
  silently defaulted), unreadable (recorded but could not be used), or only known during
  surgery;
- a patient-specific figure is computed only from a complete site model, and only when
  every numeric input is present. A yes/no condition that is not recorded is taken as
  absent for the site model, and the card says so;
- a learned model's figure is withheld when an input lies outside the values the model
  was fitted on (its report's predictor ranges): a numeric value below the training
  minimum or above the maximum, or a yes/no value no training patient had. The model's
  validation (C-statistic, calibration) says nothing about such a patient, so no figure
  is shown next to it; the card says which input and the training range (`outside_range`).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from cds_service.clinical.dates import day_of, duration_text, has_time, months_between, placed_after
from cds_service.clinical.record import (
    FUTURE,
    ConditionFact,
    ObservationFact,
    OrderFact,
    PatientRecord,
    ProcedureFact,
    UnreadableInput,
)
from cds_service.clinical.risk_models import ModelIncomplete, cox_model, logistic_model
from cds_service.content.cards import CardContent, Predictor, Situation, When
from cds_service.content.derivations import KINDS
from cds_service.content.site_models import LearnedFrom, SiteModel
from cds_service.formatting import fixed, number, percent, rounded, significant
from cds_service.formatting import one_decimal as _one_decimal
from cds_service.hooks import SELECTING_HOOKS

# Input status values.
USED = "used"
MISSING = "missing"
UNREADABLE = "unreadable"
INTRAOPERATIVE = "intraoperative"


@dataclass(frozen=True)
class InputValue:
    """One predictor as found (or not) in the record."""

    predictor: str
    label: str
    status: str  # used | missing | unreadable | intraoperative
    value: Any = None  # bool (yes/no), float (canonical unit), str (coded answer)
    display: str = ""  # the value as shown: "45 min", "yes", "Grade III (= 3)"
    date: date | None = None
    date_label: str = "recorded"  # what the date is: "onset", "performed", "recorded", ...
    note: str = ""  # where it came from, or why it is missing / unreadable
    by_text: bool = False  # matched by free text only
    matched_text: str | None = None
    fact: Any = None  # the record's fact behind the value (a procedure or order a situation acts on)
    # Values of the input the record holds but did not use (record.reading / unreadable_for):
    newer_unreadable: tuple[date | None, ...] = ()  # dates of newer values that could not be read
    future: tuple[date | None, ...] = ()  # dates of values dated after the call (never used)
    # What those dates are, when they are a date of a fact that is itself used (a Condition's
    # onset or recorded date) rather than values: "onset", "recorded date"; "" for values.
    future_what: str = ""

    @property
    def recorded(self) -> bool:
        return self.status == USED


@dataclass(frozen=True)
class Estimate:
    """A patient-specific figure from a site-supplied model (never from a published one)."""

    kind: str  # cox | logistic
    model_label: str
    model_version: str
    outcome: str
    relative_hazard: float | None = None  # Cox: vs the site's reference profile
    reference_label: str | None = None
    event_probabilities: tuple[tuple[float, float], ...] = ()  # Cox: (horizon, 1 - S(t|x))
    time_unit: str | None = None
    probability: float | None = None  # logistic
    coded_inputs: tuple[tuple[str, float, str], ...] = ()  # (label, coded value, coding text)
    assumptions: tuple[str, ...] = ()  # labels of yes/no inputs taken as absent
    alternatives: tuple[tuple[str, float], ...] = ()  # (label, probability if that input were present)
    learned: LearnedFrom | None = None  # the model's report summary; None: a hand-typed site model

    @property
    def headline(self) -> str:
        if self.kind == "logistic" and self.probability is not None:
            return percent(self.probability)
        if self.event_probabilities:
            horizon, p = self.event_probabilities[-1]
            return f"{percent(p)} by {number(horizon)} {self.time_unit}"
        return f"relative hazard {ratio(self.relative_hazard)} vs the site reference"


@dataclass(frozen=True)
class OutsideRange:
    """An input whose value lies outside the values a learned model was fitted on."""

    predictor: str
    label: str
    value: str  # as shown on the card
    low: float | None = None  # numeric: the training minimum and maximum, in `unit`
    high: float | None = None
    unit: str | None = None

    @property
    def training(self) -> str:
        """The training values in words: "20 to 60 min", or "no" / "yes" (all patients)."""
        if self.low is None or self.high is None:
            return "none" if self.value == "yes" else "all"
        u = f" {self.unit}" if self.unit else ""
        return f"{rounded(self.low, 2)} to {rounded(self.high, 2)}{u}"


@dataclass(frozen=True)
class CardResult:
    card: CardContent
    situation: Situation
    hook: str
    today: date
    inputs: tuple[InputValue, ...]
    unreadable: tuple[UnreadableInput, ...] = ()  # the record's unreadable inputs this card concerns
    unavailable: dict[str, str] = field(default_factory=dict)
    site_model: SiteModel | None = None
    estimate: Estimate | None = None
    estimate_problem: str | None = None  # why the site model gave no estimate
    procedure: ProcedureFact | None = None  # the situation's procedure, when it has one
    order: OrderFact | None = None  # the draft order that triggered the card
    order_note: str = ""  # why that order counts (an order predictor with an `indication`)
    outside_range: tuple[OutsideRange, ...] = ()  # inputs beyond a learned model's training data

    @property
    def card_id(self) -> str:
        return self.card.id

    def input(self, predictor_id: str) -> InputValue:
        for item in self.inputs:
            if item.predictor == predictor_id:
                return item
        raise KeyError(predictor_id)

    def estimate_values(self, values: dict[str, str]) -> dict[str, str]:
        """The estimate's placeholders (content/templates.py ESTIMATE_NAMES) for the card's texts."""
        return estimate_values(self, values)


# ---------------------------------------------------------------------------- entry point
def evaluate(
    card: CardContent, record: PatientRecord, hook: str, site_model: SiteModel | None = None
) -> CardResult | None:
    """The card's result for this hook call, or None when the card does not concern it.

    `site_model`: the deployment's complete model for this card; None uses the one loaded
    with the card (card.site_model), if any."""
    site_model = site_model if site_model is not None else card.site_model
    for situation in card.situations:
        if hook not in situation.hooks:
            continue
        values = _SituationValues(card, card.trigger_predictor(situation, "is_procedure"), record, hook)
        value = values.get
        if not all(holds(w, value(w.predictor), False, record.today) for w in situation.requires):
            continue
        order_id = card.trigger_predictor(situation, "is_order")
        inputs = tuple(value(pid) for pid in card.situation_predictors(situation))
        estimate, problem, outside = _estimate(card, situation, site_model, {i.predictor: i for i in inputs})
        return CardResult(
            card=card,
            situation=situation,
            hook=hook,
            today=record.today,
            inputs=inputs,
            unreadable=tuple(record.unreadable_for(*card.situation_concepts(situation))),
            unavailable=dict(record.unavailable),
            site_model=site_model if situation.use_model else None,
            estimate=estimate,
            estimate_problem=problem,
            procedure=values.procedure,
            order=value(order_id).fact if order_id is not None else None,
            order_note=value(order_id).note if order_id is not None else "",
            outside_range=outside,
        )
    return None


def holds(when: When, item: InputValue | None, has_estimate: bool, today: date) -> bool:
    """Whether a predicate of the card language holds for a predictor's value (or the estimate)."""
    if when.estimate is not None:
        return has_estimate == when.estimate
    if when.present is not None:
        return (item.status in (USED, UNREADABLE)) == when.present
    if when.newer_unreadable is not None:
        return (item.status == USED and bool(item.newer_unreadable)) == when.newer_unreadable
    if when.recorded is not None:
        return item.recorded == when.recorded
    if not item.recorded:
        return False
    if when.within_months is not None:
        return item.date is None or months_between(item.date, today) <= when.within_months
    if when.below is not None or when.at_least is not None:
        if not _is_number(item.value):
            return False
        if when.below is not None:
            return item.value < when.below
        return item.value >= when.at_least
    if isinstance(when.equals, bool) or isinstance(item.value, bool):
        return isinstance(when.equals, bool) and isinstance(item.value, bool) and item.value == when.equals
    return item.value == when.equals


class _SituationValues:
    """The predictors of one situation, each read once, when first asked for; the
    situation's procedure is looked up only when a predictor needs it."""

    def __init__(self, card: CardContent, procedure_id: str | None, record: PatientRecord, hook: str) -> None:
        self.card, self.procedure_id, self.record, self.hook = card, procedure_id, record, hook
        self.values: dict[str, InputValue] = {}

    def get(self, pid: str) -> InputValue:
        if pid not in self.values:
            p = self.card.predictor(pid)
            procedure = self.procedure if p.needs_procedure else None
            self.values[pid] = derive(p, Reading(self.record, self.hook, procedure))
        return self.values[pid]

    @property
    def procedure(self) -> ProcedureFact | None:
        return self.get(self.procedure_id).fact if self.procedure_id is not None else None


# ---------------------------------------------------------------------------- predictors
@dataclass(frozen=True)
class Reading:
    """What a derivation reads: the record, the hook, and the situation's procedure (if any)."""

    record: PatientRecord
    hook: str
    procedure: ProcedureFact | None = None


def derive(p: Predictor, reading: Reading) -> InputValue:
    item = DERIVE[p.derive](p, reading)
    if item.future:
        return item
    days, what = _future(p, reading.record)
    return replace(item, future=days, future_what=what) if days else item


def not_used_future(days: tuple[date | None, ...], what: str = "") -> str:
    """The one wording of values dated after the call (never used), as the card, its lead
    and its evidence page show them: "not used: dated after today (2026-03-01)"; for the
    date of a fact that is used ("onset"): "not used: onset dated after today (...)"."""
    dated = ", ".join(d.isoformat() for d in days if d is not None)
    return f"not used: {what + ' ' if what else ''}dated after today{f' ({dated})' if dated else ''}"


# The elements whose future date leaves the fact itself in use (record.py: a Condition with an
# onset or recorded date after the call is still on the problem list; only the date is not used).
_DATE_NOT_FACT = {("Condition", "onset[x]"): "onset", ("Condition", "recordedDate"): "recorded date"}


def _future(p: Predictor, record: PatientRecord) -> tuple[tuple[date | None, ...], str]:
    """The predictor's values dated after the call: their days (once each), and what they
    are when every one is such a date of a fact in use ("onset", "recorded date"), else ""."""
    future = [u for u in record.unreadable_for(*p.concepts) if u.kind == FUTURE]
    days = tuple(dict.fromkeys(day_of(u.when) if u.when is not None else None for u in future))
    words = [_DATE_NOT_FACT.get((u.resource_type, u.element)) for u in future]
    what = "" if not words or None in words else " or ".join(dict.fromkeys(words))
    return days, what


def _missing(p: Predictor, note: str | None = None) -> InputValue:
    return InputValue(
        p.id, p.label, MISSING, display="not recorded", note=note or f"looked for {p.how}; none in the data received"
    )


def _unreadable(p: Predictor, record: PatientRecord) -> InputValue | None:
    """The predictor as unreadable, when the record has an unreadable input of its concept
    (one that could not be read first; else values dated after the call, never used)."""
    problems = sorted(record.unreadable_for(*p.concepts), key=lambda u: u.kind == FUTURE)
    for u in problems:
        return _unreadable_input(p, u, record)
    return None


def _unreadable_input(p: Predictor, u: UnreadableInput, record: PatientRecord) -> InputValue:
    if u.kind == FUTURE:
        # Could be read but is never used (EVIDENCE.md "Reading the record"): the reason is
        # the dates, said once, in the words of `not_used_future` (render lists it so too).
        days, what = _future(p, record)
        return InputValue(p.id, p.label, UNREADABLE, display=not_used_future(days, what), future=days, future_what=what)
    return InputValue(
        p.id, p.label, UNREADABLE, display="recorded but unreadable", note=f"{u.resource_type}: {u.reason}"
    )


def _condition(p: Predictor, r: Reading) -> InputValue:
    record = r.record
    facts = record.conditions.get(p.concept, ())
    active = record.active_conditions(p.concept)
    if active:
        fact = _earliest(active)
        return InputValue(
            p.id,
            p.label,
            USED,
            value=True,
            display=f"yes ({_status(fact)})",
            **_condition_dates(fact),
            **_text_match(fact.match),
        )
    if facts:
        fact = facts[0]
        return InputValue(
            p.id,
            p.label,
            USED,
            value=False,
            # not active: a status that says so, or none and an abatement (record.py reads that
            # as inactive; a record built otherwise must not show "None")
            display=f"recorded as {fact.clinical_status}" if fact.clinical_status else "recorded as abated",
            **_condition_dates(fact),
            **_text_match(fact.match),
        )
    return _unreadable(p, record) or _missing(p)


def _condition_after(p: Predictor, r: Reading) -> InputValue:
    found = r.record.conditions_after(p.concept, r.procedure)
    if not found:
        return _unreadable(p, r.record) or _missing(p)
    fact = found[0]
    dates = _condition_dates(fact)
    dates["note"] = ", ".join(
        x for x in (dates["note"], f"after the procedure of {day_of(r.procedure.performed).isoformat()}") if x
    )
    return InputValue(
        p.id, p.label, USED, value=True, display=f"yes ({_status(fact)})", **dates, **_text_match(fact.match)
    )


def _condition_since(p: Predictor, r: Reading) -> InputValue:
    """Where the concept's active Conditions stand relative to the situation's procedure, as
    a coded answer: "after" (dated after it), "unclear" (no date that places it, or active
    since before it with no end date: the note says which), or "none" (none active)."""
    record, procedure = r.record, r.procedure
    if not record.conditions.get(p.concept):
        return _unreadable(p, record) or _missing(p)
    after = record.conditions_after(p.concept, procedure)
    unplaced = record.conditions_unplaced(p.concept, procedure)
    active = record.active_conditions(p.concept)
    undated = procedure is None or procedure.performed is None
    if after:
        answer, note, fact = "after", "after", after[0]
    elif active and undated:  # nothing can be placed relative to an undated procedure
        answer, note, fact = "unclear", "procedure_undated", _earliest(active)
    elif unplaced:
        answer, note, fact = "unclear", "unplaced", unplaced[0]
    elif active:
        answer, note, fact = "unclear", "ongoing", _earliest(active)
    else:
        return InputValue(p.id, p.label, USED, value="none", display=p.note("none"))
    dates = _condition_dates(fact)
    return InputValue(
        p.id,
        p.label,
        USED,
        value=answer,
        display=f"{p.note(note)} ({_status(fact)})",
        **dates,
        **_text_match(fact.match),
    )


def _procedure_count(p: Predictor, r: Reading) -> InputValue:
    record = r.record
    done = [
        f
        for f in record.procedures.get(p.concept, ())
        if f.status == "completed" and (f.performed is None or day_of(f.performed) <= record.today)
    ]
    if not done:
        return _unreadable(p, record) or _missing(p)
    return InputValue(p.id, p.label, USED, value=len(done), display=str(len(done)))


def _medication(p: Predictor, r: Reading) -> InputValue:
    facts = r.record.current_medications(p.concept)
    if not facts:
        return _unreadable(p, r.record) or _missing(p)
    fact = max(facts, key=lambda m: m.date or date.min)
    note = f"{_MEDICATION_WORDS.get(fact.resource_type, 'recorded')}, {fact.status}"
    if fact.match.display and not fact.match.by_text:
        note = f"{fact.match.display}; {note}"
    return InputValue(
        p.id,
        p.label,
        USED,
        value=True,
        display="yes",
        date=fact.date,
        date_label="dated",
        note=note,
        **_text_match(fact.match),
    )


def _observation(p: Predictor, r: Reading) -> InputValue:
    record, procedure = r.record, r.procedure
    reading = record.reading(p.concept, p.lookback_days, procedure if p.after_procedure else None)
    fact = reading.fact
    if fact is None:
        # Only what concerns this reading: values in its window (or after its procedure) that
        # could not be read, values that cannot be placed, values dated after the call, and
        # unreadable ones without a date (they may be in the window); else it is missing.
        undated = [u for u in record.unreadable_for(p.concept) if u.kind != FUTURE and u.when is None]
        for u in (*reading.newer_unreadable, *undated):
            return _unreadable_input(p, u, record)
        if reading.unplaced:  # on the procedure's own day, before or after it: not used
            return _missing(p, p.note("unplaced"))
        for u in reading.future:
            return _unreadable_input(p, u, record)
        return _missing(p)
    day = day_of(fact.effective) if fact.effective is not None else None
    why_unreadable = None
    if fact.value is None:
        why_unreadable = "the Observation has no usable value"
    elif p.values and fact.value not in p.values:
        why_unreadable = f"the value is not one of {', '.join(p.values)}"
    if why_unreadable is not None:
        return InputValue(p.id, p.label, UNREADABLE, display="recorded but unreadable", date=day, note=why_unreadable)
    notes = []
    if day is None:
        notes.append("date not recorded")
    if procedure is not None and procedure.performed is not None and day is not None:
        pday = day_of(procedure.performed)
        if p.after_procedure and day == pday and not (has_time(fact.effective) and has_time(procedure.performed)):
            notes.append("recorded on the day of the procedure, time not recorded")
        if p.annotate_procedure and day < pday:
            notes.append(f"recorded before the procedure of {pday.isoformat()}")
    # reading.newer_unreadable holds only dated values (a newer one is one with a later date);
    # render says so once, with the value used ("a newer value from ... could not be read").
    newer = tuple(sorted({day_of(u.when) for u in reading.newer_unreadable if u.when is not None}))
    return InputValue(
        p.id,
        p.label,
        USED,
        value=fact.value,
        display=_observation_display(fact, p),
        date=day,
        note="; ".join(notes),
        newer_unreadable=newer,
        **_text_match(fact.match),
    )


def _sex(p: Predictor, r: Reading) -> InputValue:
    sex = r.record.sex
    # the note is `how`, a colon and what it found: "recorded sex: female"
    if sex in ("male", "female"):
        return InputValue(
            p.id, p.label, USED, value=sex == "male", display="yes" if sex == "male" else "no", note=f"{p.how}: {sex}"
        )
    if sex:
        return _missing(p, f"{p.how}: {sex!r}")
    return _missing(p, f"{p.how}: not recorded")


def _age(p: Predictor, r: Reading) -> InputValue:
    born, today = r.record.birth_date, r.record.today
    if born is None:
        return _missing(p)
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if years < 0:
        return _missing(p, "the date of birth is after the date of the call")
    return InputValue(p.id, p.label, USED, value=years, display=f"{years} years", note=f"as of {today.isoformat()}")


def _disease_duration(p: Predictor, r: Reading) -> InputValue:
    record = r.record
    onset = record.earliest_onset(p.concept)
    years = record.years_since(onset)
    if years is None:
        if record.conditions.get(p.concept):
            return _missing(p, p.note("no_onset"))
        return _missing(p)
    return InputValue(
        p.id,
        p.label,
        USED,
        value=years,
        display=f"{_one_decimal(years)} years",
        date=onset,
        date_label="onset",
        note=p.note("used"),
    )


def _operation_time(p: Predictor, r: Reading) -> InputValue:
    record, procedure = r.record, r.procedure
    minutes = procedure.duration_minutes if procedure is not None else None
    if minutes is not None:
        return InputValue(
            p.id,
            p.label,
            USED,
            value=minutes,
            display=f"{rounded(minutes, 1)} min",
            date=day_of(procedure.start),
            date_label="performed",
            note=p.note("from_period"),
        )
    if procedure is not None and procedure.performed is not None:
        pday = day_of(procedure.performed)
        for fact in record.observations_for(p.concept):
            if (
                fact.effective is not None
                and pday <= day_of(fact.effective) <= pday + timedelta(days=1)
                and _is_number(fact.value)
            ):
                return InputValue(
                    p.id,
                    p.label,
                    USED,
                    value=float(fact.value),
                    display=_observation_display(fact, p),
                    date=day_of(fact.effective),
                    note=p.note("from_observation"),
                )
    unread = _unreadable(p, record)
    if unread:
        return unread
    if procedure is not None and procedure.performed is None:
        return _missing(p, "the procedure has no performed date or period")
    return _missing(p)


def _time_since(p: Predictor, r: Reading) -> InputValue:
    procedure, today = r.procedure, r.record.today
    if procedure is None or procedure.performed is None:
        return _missing(p, "the procedure has no performed date")
    day = day_of(procedure.performed)
    return InputValue(
        p.id,
        p.label,
        USED,
        value=months_between(day, today),
        display=duration_text(day, today),
        date=day,
        date_label="performed",
        note=f"as of {today.isoformat()}",
    )


def _intraoperative(p: Predictor, r: Reading) -> InputValue:
    return InputValue(p.id, p.label, INTRAOPERATIVE, display=p.note("not_yet_known"), note=p.how)


def _procedure(p: Predictor, r: Reading) -> InputValue:
    fact = r.record.latest_procedure(p.concept)
    if fact is None:
        return _unreadable(p, r.record) or _missing(p)
    day = day_of(fact.performed) if fact.performed is not None else None
    return InputValue(p.id, p.label, USED, value=True, display="yes", date=day, date_label="performed", fact=fact)


def _later_procedure(p: Predictor, r: Reading) -> InputValue:
    # The latest completed procedure of each concept: if it is not placed after the
    # situation's procedure (same day without times: cannot be placed), no earlier one is.
    start = r.procedure.performed if r.procedure is not None else None
    for concept in p.concepts:
        fact = r.record.latest_procedure(concept)
        if fact is not None and fact is not r.procedure and placed_after(fact.performed, start) is True:
            day = day_of(fact.performed)
            return InputValue(
                p.id, p.label, USED, value=True, display="yes", date=day, date_label="performed", fact=fact
            )
    return _missing(p)


def _order(p: Predictor, r: Reading) -> InputValue:
    # order-select concerns the orders just selected; order-sign every order being signed.
    refused = None
    for concept in p.concepts:
        for order in r.record.orders_for(concept, selected_only=r.hook in SELECTING_HOOKS):
            if p.indication is None:
                return InputValue(p.id, p.label, USED, value=True, display="yes", fact=order)
            note, counts = _order_indication(p, order, r.record)
            if counts:
                return InputValue(p.id, p.label, USED, value=True, display="yes", note=note, fact=order)
            refused = refused or note
    return _missing(p, refused)


def _order_indication(p: Predictor, order: OrderFact, record: PatientRecord) -> tuple[str, bool]:
    """Whether an order is for the predictor's indication (EVIDENCE.md "The patient's story",
    Site): its stated reason names it; or it states no reason of a known condition and the
    patient has the indication active. A stated reason of another known condition (a benign
    lesion, an osteoporotic fracture) does not count, whatever else the patient has."""
    if p.indication in order.reasons:
        return p.note("for_indication"), True
    if order.reasons:
        return p.note("other_reason"), False
    if record.has_active_condition(p.indication):
        return p.note("patient_has_indication"), True
    return p.note("no_indication"), False


def _condition_site(p: Predictor, r: Reading) -> InputValue:
    """Where the concept's active Conditions are sited: at the predictor's site (by code or
    text), site not recorded, or elsewhere; a site that could not be read is unreadable."""
    record = r.record
    active = record.active_conditions(p.concept)
    if not active:
        item = _condition(p, r)
        return replace(item, value="inactive") if item.status == USED else item
    at_site = [c for c in active if p.site in c.sites]
    unsited = [c for c in active if not c.sited]
    unreadable = [c for c in active if c.site_unreadable]
    if at_site:
        answer, fact = "at_site", _earliest(at_site)
    elif unsited:
        answer, fact = "site_not_recorded", _earliest(unsited)
    elif unreadable:
        return InputValue(p.id, p.label, UNREADABLE, display="recorded but unreadable", note=p.note("site_unreadable"))
    else:
        answer, fact = "elsewhere", _earliest(active)
    words = p.note(answer)
    where = f" ({fact.site_text})" if answer != "site_not_recorded" and fact.site_text else ""
    return InputValue(
        p.id,
        p.label,
        USED,
        value=answer,
        display=f"{words}{where}, {_status(fact)}",
        **_condition_dates(fact),
        **_text_match(fact.match),
    )


def _daily_morphine(p: Predictor, r: Reading) -> InputValue:
    """The daily dose: the newest of a recorded daily-dose Observation (concept [0]) and the
    structured dosage of the current prescriptions of the drug (concept [1], summed); other
    drugs of the class (further concepts) are named, never converted."""
    record = r.record
    observed_concept, drug, *others = p.concepts
    observed = _observation(p.model_copy(update={"concept": observed_concept}), r)
    # a prescription authored after the time of the call is not yet current use (never used)
    current = [m for m in record.current_medications(drug) if m.date is None or m.date <= record.today]
    readable = [m for m in current if m.dose is not None and m.dose.mg_per_day is not None]
    unread = [m for m in current if m.dose is None or m.dose.mg_per_day is None]
    named = sorted(
        {
            m.match.display or m.match.concept
            for c in others
            for m in record.current_medications(c)
            if m.date is None or m.date <= record.today
        }
    )
    also = f"{', '.join(named)} also prescribed, {p.note('others')}" if named else ""
    problems = "; ".join(f"{p.note('not_read')}: {m.dose.problem if m.dose else p.note('no_dosage')}" for m in unread)
    if readable:
        newest = max((m.date for m in readable if m.date is not None), default=None)
        if observed.status == USED and observed.date is not None and (newest is None or observed.date > newest):
            return _with_note(observed, problems, also)
        total = sum(m.dose.mg_per_day for m in readable)
        said = "; ".join(f"{_drug_name(m)}: {m.dose.said}" for m in readable)
        older = p.note("older_observation") if observed.status == USED else ""
        return InputValue(
            p.id,
            p.label,
            USED,
            value=total,
            display=f"{number(round(total, 1))} {p.unit}",
            date=newest,
            date_label=p.note("prescribed"),
            note="; ".join(x for x in (said, problems, older, also) if x),
        )
    if observed.status in (USED, UNREADABLE) or not (unread or named):
        return _with_note(observed, problems, also)
    if unread:
        return InputValue(
            p.id,
            p.label,
            UNREADABLE,
            display=p.note("prescribed_unread"),
            note="; ".join(x for x in (problems, also) if x),
        )
    return replace(_missing(p, f"{p.note('none')}; {also}"), display=p.note("others_only"))


def _with_note(item: InputValue, *notes: str) -> InputValue:
    joined = "; ".join(x for x in (item.note, *notes) if x)
    return replace(item, note=joined)


def _drug_name(m) -> str:
    return m.match.display if m.match.display else "prescription"


# One function per derivation kind of content/derivations.py (KINDS), under the same name.
DERIVE: dict[str, Callable[[Predictor, Reading], InputValue]] = {
    "condition": _condition,
    "condition_after_procedure": _condition_after,
    "medication": _medication,
    "observation": _observation,
    "sex": _sex,
    "age": _age,
    "disease_duration": _disease_duration,
    "operation_time": _operation_time,
    "condition_since_procedure": _condition_since,
    "procedure_count": _procedure_count,
    "time_since_procedure": _time_since,
    "intraoperative": _intraoperative,
    "procedure": _procedure,
    "later_procedure": _later_procedure,
    "order": _order,
    "condition_site": _condition_site,
    "daily_morphine": _daily_morphine,
}


# ---------------------------------------------------------------------------- site model
def _estimate(
    card: CardContent, s: Situation, site: SiteModel | None, inputs: dict[str, InputValue]
) -> tuple[Estimate | None, str | None, tuple[OutsideRange, ...]]:
    if not s.use_model or site is None:
        return None, None, ()
    estimate, problem = _site_estimate(card, site, inputs)
    outside = _outside_range(card, site, inputs) if estimate is not None else ()
    if outside:
        words = "; ".join(f"{o.label} {o.value} (fitted on: {o.training})" for o in outside)
        return None, f"the inputs lie outside the values the model was fitted on: {words}", outside
    return estimate, problem, ()


def _outside_range(card: CardContent, site: SiteModel, inputs: dict[str, InputValue]) -> tuple[OutsideRange, ...]:
    """The inputs of a learned model beyond its training data (report predictor_ranges)."""
    if site.learned is None:
        return ()
    out = []
    for name in site.names:
        seen = site.learned.ranges.get(name)
        item = inputs[name]
        if seen is None or item.status != USED:
            continue  # only recorded values are compared (a yes/no not recorded is taken as absent)
        if card.predictor(name).binary:
            never = (seen.prevalence == 0.0 and item.value) or (seen.prevalence == 1.0 and not item.value)
            if seen.prevalence is not None and never:
                out.append(OutsideRange(name, card.predictor(name).label, "yes" if item.value else "no"))
        elif _is_number(item.value) and seen.min is not None and seen.max is not None:
            if not seen.min <= float(item.value) <= seen.max:
                out.append(OutsideRange(name, card.predictor(name).label, item.display, seen.min, seen.max, seen.unit))
    return tuple(out)


def _site_estimate(
    card: CardContent, site: SiteModel, inputs: dict[str, InputValue]
) -> tuple[Estimate | None, str | None]:
    x: list[float] = []
    coded: list[tuple[str, float, str]] = []
    assumed: list[str] = []
    missing: list[str] = []
    for name in site.names:
        p = card.predictor(name)
        item = inputs[name]
        if p.binary:
            if item.status == USED:
                x.append(1.0 if item.value else 0.0)
            elif p.kind.absent_when_missing and item.status == MISSING:
                x.append(0.0)
                assumed.append(p.label)
            else:
                missing.append(p.label)
                continue
            coded.append((p.label, x[-1], "yes = 1, no = 0"))
        else:
            if item.status == USED and _is_number(item.value):
                coding = site.coding[name]
                x.append(coding.code(float(item.value)))
                coded.append((p.label, x[-1], coding.describe(p.unit)))
            else:
                missing.append(p.label)
    if missing:
        return None, f"it needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not available"
    common = dict(
        model_label=site.label,
        model_version=site.version,
        outcome=card.model.outcome,
        coded_inputs=tuple(coded),
        assumptions=tuple(assumed),
        learned=site.learned,
    )
    try:
        if site.kind == "cox":
            model = cox_model(site)
            difference = model.linear_predictor(x) - model.linear_predictor(model.reference)
            if not (math.isfinite(difference) and abs(difference) < 700):  # exp() would overflow
                return None, "the inputs lie outside what the site model can compute"
            return Estimate(
                kind="cox",
                relative_hazard=model.relative_hazard(x),
                reference_label=site.reference_label,
                event_probabilities=tuple((h, model.event_probability(x, h)) for h in sorted(site.baseline_survival)),
                time_unit=card.model.time_unit,
                **common,
            ), None
        model = logistic_model(site)
        if site.intercept is None:
            return None, "the site model gives no intercept, so no probability can be computed"
        alternatives = []
        for label in assumed:
            i = [c[0] for c in coded].index(label)
            flipped = list(x)
            flipped[i] = 1.0
            alternatives.append((label, model.probability(flipped)))
        return Estimate(
            kind="logistic", probability=model.probability(x), alternatives=tuple(alternatives), **common
        ), None
    except (ModelIncomplete, ValueError, OverflowError) as exc:
        return None, f"the site model could not be applied ({exc})"


# ---------------------------------------------------------------------------- estimate placeholders
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
NOT_AVAILABLE = "not available"


def estimate_values(result: CardResult, values: dict[str, str]) -> dict[str, str]:
    """Values of the estimate placeholders. The numbers come from the learned model's report;
    the wording from the card file's [texts], chosen by where the model comes from:
    `learned` (learned, its report passed), `unvalidated` (learned, its report did not pass;
    deployed by the setting allow_unvalidated_site_models) or `configured` (typed by hand):
    [texts] estimate_by_<origin> fills {estimate_by} (short, for a summary) and
    estimate_<origin> fills {estimate_provenance}; estimate_outside_range fills
    {estimate_withheld} when a learned model's figure is withheld because an input lies
    outside its training data. A missing text, or no estimate: empty."""
    site = result.site_model
    learned = site.learned if site is not None else None
    out = model_values(result)
    filled = {**values, **out}
    texts = result.card.texts
    origin = None
    if result.estimate is not None:
        origin = "configured" if learned is None else ("learned" if learned.passed else "unvalidated")
    out["estimate_by"] = _fill_text(texts.get(f"estimate_by_{origin}", ""), filled) if origin else ""
    out["estimate_provenance"] = _fill_text(texts.get(f"estimate_{origin}", ""), filled) if origin else ""
    out["estimate_withheld"] = (
        _fill_text(texts.get("estimate_outside_range", ""), filled) if result.outside_range else ""
    )
    return out


def model_values(result: CardResult) -> dict[str, str]:
    """The learned model's report figures and the inputs outside its training data, as text."""
    site = result.site_model
    learned = site.learned if site is not None else None
    return {
        "model_patients": str(learned.patients) if learned else NOT_AVAILABLE,
        "model_events": str(learned.events) if learned else NOT_AVAILABLE,
        "model_c_statistic": _two(learned.c_statistic) if learned else NOT_AVAILABLE,
        "model_calibration_slope": _two(learned.calibration_slope) if learned else NOT_AVAILABLE,
        "model_fitted_on": learned.generated_at[:10] if learned else NOT_AVAILABLE,
        "model_server": _inert(learned.fhir_host) if learned else NOT_AVAILABLE,
        "outside_range": "; ".join(f"{o.label} {_inert(o.value)} ({o.training})" for o in result.outside_range)
        or "none",
    }


def _inert(text: str) -> str:
    """Text from a record or a report as inert Markdown (as render.escape does)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _fill_text(text: str, values: dict[str, str]) -> str:
    return " ".join(string.Formatter().vformat(text, (), values).split())


def _two(x: float | None) -> str:
    return NOT_AVAILABLE if x is None or not math.isfinite(x) else fixed(x, 2)


# ---------------------------------------------------------------------------- small facts
_MEDICATION_WORDS = {"MedicationRequest": "prescribed", "MedicationStatement": "reported as taken"}


def _earliest(facts: list[ConditionFact]) -> ConditionFact:
    return min(facts, key=lambda c: c.onset or c.recorded or date.max)


def _status(fact: ConditionFact) -> str:
    return fact.clinical_status or "clinical status not recorded"


def _condition_dates(fact: ConditionFact) -> dict:
    """The Condition's main date (onset, else recorded) and a note with the others."""
    if fact.onset:
        day, label = fact.onset, "onset"
    elif fact.recorded:
        day, label = fact.recorded, "recorded"
    else:
        day, label = None, "recorded"
    parts = []
    if fact.match.display and not fact.match.by_text:
        parts.append(fact.match.display)
    if fact.recorded and label != "recorded":
        parts.append(f"recorded {fact.recorded.isoformat()}")
    if fact.abatement:
        parts.append(f"abated {fact.abatement.isoformat()}")
    if day is None:
        parts.append("no usable onset or recorded date")
    return {"date": day, "date_label": label, "note": ", ".join(parts)}


def _text_match(match) -> dict:
    if getattr(match, "by_text", False):
        return {"by_text": True, "matched_text": match.display}
    return {}


def _observation_display(fact: ObservationFact, p: Predictor) -> str:
    value = fact.value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    unit = p.unit or (fact.unit if fact.unit and not fact.unit.startswith("{") else None)
    shown = rounded(float(value), 2)
    shown = f"{shown}{unit}" if unit and unit.startswith("/") else (f"{shown} {unit}" if unit else shown)
    raw = (fact.raw or "").strip()
    if not raw or raw.replace(" ", "") == shown.replace(" ", "") or _same_number(raw, float(value)):
        return shown
    return f"{raw} (= {shown})"


def _same_number(text: str, value: float) -> bool:
    try:
        return float(text) == value
    except ValueError:
        return False


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ratio(x: float | None) -> str:
    return significant(x)


if set(DERIVE) != set(KINDS):  # the registry and its functions name the same kinds
    raise RuntimeError(f"derivation kinds without a function or entry: {sorted(set(DERIVE) ^ set(KINDS))}")
