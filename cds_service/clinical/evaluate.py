"""Evaluate one card for one hook call: does it concern this patient, which of its inputs
does the record hold, and (only with a complete site-supplied model) what patient-specific
estimate follows.

Data moves forward: PatientRecord + CardContent in, CardResult out. Nothing here knows
about FHIR JSON or HTTP, and nothing here writes text for the clinician (render.py does).
Which facts answer a question (latest procedure, observations in a window or after the
procedure, conditions after it, ...) is asked of the record's queries, not decided here.

Rules kept here, for every card:
- a card fires only in one of its situations (hook + triggering facts); the first
  situation that matches wins, so a card file lists the most specific situation first;
- every input is either used (value, unit, date, where it came from), missing (never
  silently defaulted), unreadable (recorded but could not be used), or only known during
  surgery;
- a patient-specific figure is computed only from a complete site model, and only when
  every numeric input is present. A yes/no condition that is not recorded is taken as
  absent for the site model, and the card says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from cds_service.clinical.dates import day_of, duration_text, has_time, months_between
from cds_service.clinical.record import (
    ConditionFact,
    ObservationFact,
    OrderFact,
    PatientRecord,
    ProcedureFact,
    UnreadableInput,
)
from cds_service.clinical.risk_models import ModelIncomplete, cox_model, logistic_model
from cds_service.content.cards import CardContent, Predictor, SiteModel, Situation

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

    @property
    def headline(self) -> str:
        if self.kind == "logistic" and self.probability is not None:
            return percent(self.probability)
        if self.event_probabilities:
            horizon, p = self.event_probabilities[-1]
            return f"{percent(p)} by {number(horizon)} {self.time_unit}"
        return f"relative hazard {ratio(self.relative_hazard)} vs the site reference"


@dataclass(frozen=True)
class CardResult:
    card: CardContent
    situation: Situation
    hook: str
    inputs: tuple[InputValue, ...]
    unreadable: tuple[UnreadableInput, ...] = ()  # the record's unreadable inputs this card concerns
    unavailable: dict[str, str] = field(default_factory=dict)
    site_model: SiteModel | None = None
    estimate: Estimate | None = None
    estimate_problem: str | None = None  # why the site model gave no estimate
    procedure: ProcedureFact | None = None  # the situation's procedure, when it has one
    order: OrderFact | None = None  # the draft order that triggered the card

    @property
    def card_id(self) -> str:
        return self.card.id

    def input(self, predictor_id: str) -> InputValue:
        for item in self.inputs:
            if item.predictor == predictor_id:
                return item
        raise KeyError(predictor_id)


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
        fired = _fires(situation, record, hook)
        if fired is None:
            continue
        procedure, order = fired
        inputs = tuple(_derive(card.predictors[pid], record, procedure, situation) for pid in situation.predictors)
        estimate, problem = _estimate(card, situation, site_model, {i.predictor: i for i in inputs})
        concepts = _situation_concepts(card, situation)
        unreadable = tuple(record.unreadable_for(*concepts))
        return CardResult(
            card=card,
            situation=situation,
            hook=hook,
            inputs=inputs,
            unreadable=unreadable,
            unavailable=dict(record.unavailable),
            site_model=site_model if situation.use_model else None,
            estimate=estimate,
            estimate_problem=problem,
            procedure=procedure,
            order=order,
        )
    return None


# ---------------------------------------------------------------------------- triggers
def _fires(s: Situation, record: PatientRecord, hook: str) -> tuple[ProcedureFact | None, OrderFact | None] | None:
    order = None
    if s.orders:
        order = _triggering_order(record, s.orders, hook)
        if order is None:
            return None
    for concept in s.requires_conditions:
        if not record.conditions.get(concept):
            return None
    for concept in s.requires_active_conditions:
        if not record.has_active_condition(concept):
            return None
    procedure = None
    if s.procedure:
        procedure = record.latest_procedure(s.procedure)
        if procedure is None:
            return None
        if s.within_months is not None and procedure.performed is not None:
            if months_between(day_of(procedure.performed), record.today) > s.within_months:
                return None
    if s.condition_after_procedure and not record.conditions_after(s.condition_after_procedure, procedure):
        return None
    req = s.requires_observation
    if req is not None:
        fact = record.latest_observation(
            req.concept, lookback_days=req.lookback_days, after=procedure if req.after_procedure else None
        )
        if fact is None:
            # An unreadable result still concerns the patient: the card says it could not be read.
            if req.at_least is not None or not record.unreadable_for(req.concept):
                return None
        elif req.at_least is not None and (not _is_number(fact.value) or fact.value < req.at_least):
            return None
    return procedure, order


def _triggering_order(record: PatientRecord, concepts: tuple[str, ...], hook: str) -> OrderFact | None:
    # order-select concerns the orders just selected; order-sign every order being signed.
    for concept in concepts:
        orders = record.orders_for(concept, selected_only=hook == "order-select")
        if orders:
            return orders[0]
    return None


# ---------------------------------------------------------------------------- predictors
def _derive(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None, s: Situation) -> InputValue:
    derive = {
        "condition": _condition,
        "condition_after_procedure": _condition_after,
        "medication": _medication,
        "observation": _observation,
        "sex": _sex,
        "disease_duration": _disease_duration,
        "operation_time": _operation_time,
        "time_since_procedure": _time_since,
        "intraoperative": _intraoperative,
    }[p.derive]
    return derive(p, record, procedure)


def _missing(p: Predictor, note: str | None = None) -> InputValue:
    return InputValue(
        p.id, p.label, MISSING, display="not recorded", note=note or f"looked for {p.how}; none in the data received"
    )


def _unreadable(p: Predictor, record: PatientRecord) -> InputValue | None:
    """The predictor as unreadable, when the record has an unreadable input of its concept."""
    for u in record.unreadable_for(p.concept):
        return InputValue(
            p.id, p.label, UNREADABLE, display="recorded but unreadable", note=f"{u.resource_type}: {u.reason}"
        )
    return None


def _condition(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
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
            display=f"recorded as {fact.clinical_status}",
            **_condition_dates(fact),
            **_text_match(fact.match),
        )
    return _unreadable(p, record) or _missing(p)


def _condition_after(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    found = record.conditions_after(p.concept, procedure)
    if not found:
        return _unreadable(p, record) or _missing(p)
    fact = found[0]
    dates = _condition_dates(fact)
    dates["note"] = ", ".join(
        x for x in (dates["note"], f"after the procedure of {day_of(procedure.performed).isoformat()}") if x
    )
    return InputValue(
        p.id, p.label, USED, value=True, display=f"yes ({_status(fact)})", **dates, **_text_match(fact.match)
    )


def _medication(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    facts = record.current_medications(p.concept)
    if not facts:
        return _unreadable(p, record) or _missing(p)
    fact = max(facts, key=lambda m: m.date or date.min)
    note = f"{fact.resource_type}, status {fact.status}"
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


def _observation(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    after = procedure if p.after_procedure else None
    facts = record.observations_for(p.concept, p.lookback_days, after)
    if not facts:
        unread = _unreadable(p, record)
        if unread:
            return unread
        return _missing(p)
    fact = facts[0]
    day = day_of(fact.effective) if fact.effective is not None else None
    if fact.value is None:
        return InputValue(
            p.id,
            p.label,
            UNREADABLE,
            display="recorded but unreadable",
            date=day,
            note="the Observation has no usable value",
        )
    if p.values and fact.value not in p.values:
        return InputValue(
            p.id,
            p.label,
            UNREADABLE,
            display="recorded but unreadable",
            date=day,
            note=f"the value is not one of {', '.join(p.values)}",
        )
    notes = []
    if day is None:
        notes.append("date not recorded")
    if procedure is not None and procedure.performed is not None and day is not None:
        pday = day_of(procedure.performed)
        if p.after_procedure and day == pday and not (has_time(fact.effective) and has_time(procedure.performed)):
            notes.append("recorded on the day of the procedure, time not recorded")
        if p.annotate_procedure and day < pday:
            notes.append(f"recorded before the procedure of {pday.isoformat()}")
    return InputValue(
        p.id,
        p.label,
        USED,
        value=fact.value,
        display=_observation_display(fact, p),
        date=day,
        note="; ".join(notes),
        **_text_match(fact.match),
    )


def _sex(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    if record.sex in ("male", "female"):
        return InputValue(
            p.id,
            p.label,
            USED,
            value=record.sex == "male",
            display="yes" if record.sex == "male" else "no",
            note=f"Patient.gender {record.sex}",
        )
    if record.sex:
        return _missing(p, f"Patient.gender is {record.sex!r}")
    return _missing(p, "Patient.gender not recorded")


def _disease_duration(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    onset = record.earliest_onset(p.concept)
    years = record.years_since(onset)
    if years is None:
        if record.conditions.get(p.concept):
            return _missing(
                p,
                "the hemifacial spasm Condition has no usable onset date (its recorded date is not taken as the onset)",
            )
        return _missing(p)
    return InputValue(
        p.id,
        p.label,
        USED,
        value=years,
        display=f"{years:.1f} years",
        date=onset,
        date_label="onset",
        note="from the hemifacial spasm Condition's onset",
    )


def _operation_time(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    minutes = procedure.duration_minutes if procedure is not None else None
    if minutes is not None:
        return InputValue(
            p.id,
            p.label,
            USED,
            value=minutes,
            display=f"{number(round(minutes, 1))} min",
            date=day_of(procedure.start),
            date_label="performed",
            note="from the procedure's performedPeriod",
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
                    note="from an operation-time Observation of the procedure day",
                )
    unread = _unreadable(p, record)
    if unread:
        return unread
    if procedure is not None and procedure.performed is None:
        return _missing(p, "the procedure has no performed date or period")
    return _missing(p)


def _time_since(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    if procedure is None or procedure.performed is None:
        return _missing(p, "the procedure has no performed date")
    day = day_of(procedure.performed)
    months = months_between(day, record.today)
    return InputValue(
        p.id,
        p.label,
        USED,
        value=months,
        display=duration_text(day, record.today),
        date=day,
        date_label="performed",
        note=f"as of {record.today.isoformat()}",
    )


def _intraoperative(p: Predictor, record: PatientRecord, procedure: ProcedureFact | None) -> InputValue:
    return InputValue(p.id, p.label, INTRAOPERATIVE, display="not known before surgery", note=p.how)


# ---------------------------------------------------------------------------- site model
def _estimate(
    card: CardContent, s: Situation, site: SiteModel | None, inputs: dict[str, InputValue]
) -> tuple[Estimate | None, str | None]:
    if not s.use_model or site is None:
        return None, None
    x: list[float] = []
    coded: list[tuple[str, float, str]] = []
    assumed: list[str] = []
    missing: list[str] = []
    for name in site.names:
        p = card.predictors[name]
        item = inputs[name]
        if p.binary:
            if item.status == USED:
                x.append(1.0 if item.value else 0.0)
            elif p.derive in ("condition", "medication") and item.status == MISSING:
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


# ---------------------------------------------------------------------------- small facts
def _situation_concepts(card: CardContent, s: Situation) -> set[str]:
    found = {card.predictors[pid].concept for pid in s.predictors if card.predictors[pid].concept}
    found.update(s.orders, s.requires_conditions, s.requires_active_conditions)
    found.update(x for x in (s.procedure, s.condition_after_procedure) if x)
    if s.requires_observation:
        found.add(s.requires_observation.concept)
    return found


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
        parts.append("no onset or recorded date")
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
    shown = number(round(float(value), 2))
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


def percent(p: float) -> str:
    return f"{p * 100:.1f} %"


def ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
