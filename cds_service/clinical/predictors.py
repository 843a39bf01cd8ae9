"""Reading one predictor of a card from the patient record: one function per derivation kind
of content/derivations.py (KINDS), registered in DERIVE under the same name, and the value
they give (InputValue: used, missing, unreadable or only known during surgery, with its
date and where it came from).

Split from clinical/evaluate.py (which decides whether a card fires and computes a site
model's figure): nothing here knows about situations, models or text for the clinician.
Which facts answer a question is asked of the record's queries (clinical/record.py) and of
the patient's story (clinical/story.py), not decided here.

Adding a kind = one entry in content/derivations.py + one function here (DERIVE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

from cds_service.clinical.dates import day_of, duration_text, has_time, months_between
from cds_service.clinical.input_values import (  # noqa: F401 (statuses, InputValue, Reading: re-exported)
    INTRAOPERATIVE,
    MEDICATION_WORDS,
    MISSING,
    UNREADABLE,
    USED,
    InputValue,
    Reading,
    condition_dates,
    condition_status,
    earliest,
    future_dates,
    is_number,
    missing,
    not_used_future,
    observation_display,
    ratio,
    text_match,
    unreadable,
    unreadable_input,
)
from cds_service.clinical.record import (
    FUTURE,
    ConditionFact,
    MedicationFact,
    OrderFact,
    PatientRecord,
)
from cds_service.clinical.story import condition_order, operation_time, story_of
from cds_service.content.cards import Predictor
from cds_service.content.derivations import KINDS
from cds_service.formatting import number, percent, rounded  # noqa: F401 (percent: re-exported)
from cds_service.formatting import one_decimal as _one_decimal
from cds_service.hooks import SELECTING_HOOKS


def derive(p: Predictor, reading: Reading) -> InputValue:
    item = DERIVE[p.derive](p, reading)
    if item.future:
        return item
    days, what = future_dates(p, reading.record)
    return replace(item, future=days, future_what=what) if days else item


def _used_condition(p: Predictor, fact: ConditionFact, value: bool | str, display: str) -> InputValue:
    """The predictor's value read from a Condition: its dates and how it was matched shown."""
    return InputValue(
        p.id, p.label, USED, value=value, display=display, **condition_dates(fact), **text_match(fact.match)
    )


def _condition(p: Predictor, r: Reading) -> InputValue:
    record = r.record
    facts = record.conditions.get(p.single_concept, ())
    active = record.active_conditions(p.single_concept)
    if active:
        fact = earliest(active)
        return _used_condition(p, fact, True, f"yes ({condition_status(fact)})")
    if facts:
        fact = min(facts, key=condition_order)  # not the order the resources came in
        return _used_condition(
            p,
            fact,
            False,
            # not active: a status that says so, or none and an abatement (record.py reads that
            # as inactive; a record built otherwise must not show "None")
            f"recorded as {fact.clinical_status}" if fact.clinical_status else "recorded as abated",
        )
    return unreadable(p, record) or missing(p)


def _condition_after(p: Predictor, r: Reading) -> InputValue:
    procedure = r.procedure
    # an undated procedure has no Conditions after it (record.conditions_after)
    performed = procedure.performed if procedure is not None else None
    found = r.record.conditions_after(p.single_concept, procedure)
    if not found or performed is None:
        return unreadable(p, r.record) or missing(p)
    fact = min(found, key=condition_order)
    dates = condition_dates(fact)
    dates["note"] = ", ".join(
        x for x in (dates["note"], f"after the procedure of {day_of(performed).isoformat()}") if x
    )
    return InputValue(
        p.id, p.label, USED, value=True, display=f"yes ({condition_status(fact)})", **dates, **text_match(fact.match)
    )


def _condition_since(p: Predictor, r: Reading) -> InputValue:
    """Where the concept's Conditions stand relative to the situation's procedure (the
    story's `course`), as a coded answer: "after" (dated after it), "resolved" (ended on a
    date after it: delayed resolution; the display gives the date), "unclear" (no date that
    places it, or active since before it with no end date: the note says which), or "none"."""
    record, procedure = r.record, r.procedure
    if not record.conditions.get(p.single_concept):
        return unreadable(p, record) or missing(p)
    course = story_of(record).course(p.single_concept, procedure)
    fact = course.fact
    if course.answer == "none" or fact is None:  # every other answer names its Condition
        return InputValue(p.id, p.label, USED, value="none", display=p.note("none"))
    if course.answer == "resolved":
        # a resolved course is of a dated procedure, with the date it ended (story.resolved_after)
        performed = procedure.performed if procedure is not None else None
        on = course.resolved_on
        if performed is None or on is None:
            return unreadable(p, record) or missing(p)
        pday = day_of(performed)
        how = "abatement date" if course.resolved_how == "abatement" else "recorded date of a resolved entry"
        return InputValue(
            p.id,
            p.label,
            USED,
            value="resolved",
            display=f"{p.note('resolved')} {on.isoformat()} ({duration_text(pday, on)} {p.note('resolved_after')})",
            date=on,
            date_label="resolved",
            note=", ".join(x for x in (condition_dates(fact)["note"], f"from its {how}") if x),
            **text_match(fact.match),
        )
    answer, note = {
        "after": ("after", "after"),
        "undated": ("unclear", "procedure_undated"),
        "unplaced": ("unclear", "unplaced"),
        "ongoing": ("unclear", "ongoing"),
    }[course.answer]
    return _used_condition(p, fact, answer, f"{p.note(note)} ({condition_status(fact)})")


def _procedure_count(p: Predictor, r: Reading) -> InputValue:
    # Operations of the story: the records of one day are one operation (EVIDENCE.md "The
    # patient's story"); those done for another condition do not count.
    episodes = story_of(r.record).operations(p.single_concept, p.for_condition)
    if not episodes:
        return unreadable(p, r.record) or missing(p)
    days = ", ".join(e.day.isoformat() if e.day else "date not recorded" for e in episodes)
    return InputValue(p.id, p.label, USED, value=len(episodes), display=str(len(episodes)), note=f"on {days}")


def _medication(p: Predictor, r: Reading) -> InputValue:
    facts = r.record.current_medications(p.single_concept)
    if not facts:
        return unreadable(p, r.record) or missing(p)
    fact = max(facts, key=lambda m: m.date or date.min)
    note = f"{MEDICATION_WORDS.get(fact.resource_type, 'recorded')}, {fact.status}"
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
        **text_match(fact.match),
    )


def _observation(p: Predictor, r: Reading) -> InputValue:
    record, procedure = r.record, r.procedure
    reading = record.reading(p.single_concept, p.lookback_days, procedure if p.after_procedure else None)
    fact = reading.fact
    if fact is None:
        # Only what concerns this reading: values in its window (or after its procedure) that
        # could not be read, values that cannot be placed, values dated after the call, and
        # unreadable ones without a date (they may be in the window); else it is missing.
        undated = [u for u in record.unreadable_for(p.single_concept) if u.kind != FUTURE and u.when is None]
        for u in (*reading.newer_unreadable, *undated):
            return unreadable_input(p, u, record)
        if reading.unplaced:  # on the procedure's own day, before or after it: not used
            return missing(p, p.note("unplaced"))
        for u in reading.future:
            return unreadable_input(p, u, record)
        return missing(p)
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
        display=observation_display(fact, p),
        date=day,
        note="; ".join(notes),
        newer_unreadable=newer,
        **text_match(fact.match),
    )


def _sex(p: Predictor, r: Reading) -> InputValue:
    sex = r.record.sex
    # the note is `how`, a colon and what it found: "recorded sex: female"
    if sex in ("male", "female"):
        return InputValue(
            p.id, p.label, USED, value=sex == "male", display="yes" if sex == "male" else "no", note=f"{p.how}: {sex}"
        )
    if sex:
        return missing(p, f"{p.how}: {sex!r}")
    return missing(p, f"{p.how}: not recorded")


def _age(p: Predictor, r: Reading) -> InputValue:
    born, today = r.record.birth_date, r.record.today
    if born is None:
        return missing(p)
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if years < 0:
        return missing(p, "the date of birth is after the date of the call")
    return InputValue(p.id, p.label, USED, value=years, display=f"{years} years", note=f"as of {today.isoformat()}")


def _disease_duration(p: Predictor, r: Reading) -> InputValue:
    record = r.record
    onset = record.earliest_onset(p.single_concept)
    years = record.years_since(onset)
    if years is None:
        if record.conditions.get(p.single_concept):
            return missing(p, p.note("no_onset"))
        return missing(p)
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
    # Read by the story (the same function `learn` uses): an Observation of the procedure's
    # day wins over its period; a period longer than 12 hours is a stay, not used (said so).
    record, procedure = r.record, r.procedure
    found = operation_time(record, procedure, p.single_concept)
    fact = found.observation
    if found.source == "observation" and fact is not None:
        return InputValue(
            p.id,
            p.label,
            USED,
            value=found.minutes,
            display=observation_display(fact, p),
            date=day_of(fact.effective) if fact.effective is not None else None,
            note=p.note("from_observation"),
        )
    if found.source == "period" and found.minutes is not None and procedure is not None:
        return InputValue(
            p.id,
            p.label,
            USED,
            value=found.minutes,
            display=f"{rounded(found.minutes, 1)} min",
            date=day_of(procedure.start) if procedure.start is not None else None,
            date_label="performed",
            note=p.note("from_period"),
        )
    unread = unreadable(p, record)
    if unread:
        return unread
    if found.period_not_used:
        return missing(p, p.note(found.period_not_used))
    if procedure is not None and procedure.performed is None:
        return missing(p, "the procedure has no performed date or period")
    return missing(p)


def _time_since(p: Predictor, r: Reading) -> InputValue:
    procedure, today = r.procedure, r.record.today
    if procedure is None or procedure.performed is None:
        return missing(p, "the procedure has no performed date")
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
    # The latest operation of the story (the records of one day merged into one).
    episode = story_of(r.record).latest(p.single_concept, p.for_condition)
    if episode is None:
        return unreadable(p, r.record) or missing(p)
    fact = episode.fact
    day = day_of(fact.performed) if fact.performed is not None else None
    return InputValue(p.id, p.label, USED, value=True, display="yes", date=day, date_label="performed", fact=fact)


def _later_procedure(p: Predictor, r: Reading) -> InputValue:
    later = story_of(r.record).treatments_after(r.procedure, p.concepts, p.for_condition)
    if not later:
        return missing(p)
    fact = later[-1].fact
    day = day_of(fact.performed) if fact.performed is not None else None  # always dated: placed after
    return InputValue(p.id, p.label, USED, value=True, display="yes", date=day, date_label="performed", fact=fact)


def _treated_after(p: Predictor, r: Reading) -> InputValue:
    """The first later operation of the treatments, named with its date; whether the
    condition is recorded after the latest later one (then the recurrence is not treated)."""
    story = story_of(r.record)
    later = story.treatments_after(r.procedure, p.concepts, p.for_condition)
    if not later:
        return missing(p)
    last = later[-1]
    labels = r.record.labels
    names = "; ".join(
        f"{_lower_first(labels.get(e.concept, e.concept))} on {e.day.isoformat() if e.day else 'date not recorded'}"
        for e in later
    )
    answer = "treated"
    if p.for_condition and story.course(p.for_condition, last.fact).answer == "after":
        answer = "spasm_after"
    return InputValue(
        p.id,
        p.label,
        USED,
        value=answer,
        display=f"{names} ({p.note(answer)})",
        date=last.day,
        date_label="performed",
        fact=last.fact,
    )


def _lower_first(label: str) -> str:
    return label[:1].lower() + label[1:]


def _order(p: Predictor, r: Reading) -> InputValue:
    # order-select concerns the orders just selected; order-sign every order being signed.
    # An order whose stated reason names only another condition does not count (`for_condition`);
    # with an `indication`, an order counts only for it (_order_indication).
    refused = None
    for concept in p.concepts:
        for order in r.record.orders_for(concept, selected_only=r.hook in SELECTING_HOOKS):
            if not order.treats(p.for_condition):
                continue
            if p.indication is None:
                return InputValue(p.id, p.label, USED, value=True, display="yes", fact=order)
            note, counts = _order_indication(p, p.indication, order, r.record)
            if counts:
                return InputValue(p.id, p.label, USED, value=True, display="yes", note=note, fact=order)
            refused = refused or note
    return missing(p, refused)


def _order_indication(p: Predictor, indication: str, order: OrderFact, record: PatientRecord) -> tuple[str, bool]:
    """Whether an order is for the predictor's indication (EVIDENCE.md "The patient's story",
    Site): its stated reason names it; or it states no reason of a known condition and the
    patient has the indication active. A stated reason of another known condition (a benign
    lesion, an osteoporotic fracture) does not count, whatever else the patient has."""
    if indication in order.reason_concepts:
        return p.note("for_indication"), True
    if order.reason_concepts:
        return p.note("other_reason"), False
    if record.has_active_condition(indication):
        return p.note("patient_has_indication"), True
    return p.note("no_indication"), False


def _condition_site(p: Predictor, r: Reading) -> InputValue:
    """Where the concept's active Conditions are sited: at the predictor's site (by code or
    text), site not recorded, or elsewhere; a site that could not be read is unreadable."""
    record = r.record
    active = record.active_conditions(p.single_concept)
    if not active:
        item = _condition(p, r)
        return replace(item, value="inactive") if item.status == USED else item
    at_site = [c for c in active if p.site in c.sites]
    unsited = [c for c in active if not c.sited]
    unreadable = [c for c in active if c.site_unreadable]
    if at_site:
        answer, fact = "at_site", earliest(at_site)
    elif unsited:
        answer, fact = "site_not_recorded", earliest(unsited)
    elif unreadable:
        return InputValue(p.id, p.label, UNREADABLE, display="recorded but unreadable", note=p.note("site_unreadable"))
    else:
        answer, fact = "elsewhere", earliest(active)
    words = p.note(answer)
    where = f" ({fact.site_text})" if answer != "site_not_recorded" and fact.site_text else ""
    return _used_condition(p, fact, answer, f"{words}{where}, {condition_status(fact)}")


def _daily_morphine(p: Predictor, r: Reading) -> InputValue:
    """The daily dose: the newest of a recorded daily-dose Observation (concept [0]) and the
    structured dosage of the current prescriptions of the drug (concept [1], summed); other
    drugs of the class (further concepts) are named, never converted."""
    record = r.record
    observed_concept, drug, *others = p.concepts
    observed = _observation(p.model_copy(update={"concept": observed_concept}), r)
    # a prescription authored after the time of the call is not yet current use (never used)
    current = [m for m in record.current_medications(drug) if m.date is None or m.date <= record.today]
    # (prescription, mg per day, the dosage as read) of those whose daily dose could be read
    readable = [
        (m, m.dose.mg_per_day, m.dose.said) for m in current if m.dose is not None and m.dose.mg_per_day is not None
    ]
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
        newest = max((m.date for m, _, _ in readable if m.date is not None), default=None)
        if observed.status == USED and observed.date is not None and (newest is None or observed.date > newest):
            return _with_note(observed, problems, also)
        total = sum(mg for _, mg, _ in readable)
        said = "; ".join(f"{_drug_name(m)}: {dosage}" for m, _, dosage in readable)
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
    return replace(missing(p, f"{p.note('none')}; {also}"), display=p.note("others_only"))


def _with_note(item: InputValue, *notes: str) -> InputValue:
    joined = "; ".join(x for x in (item.note, *notes) if x)
    return replace(item, note=joined)


def _drug_name(m: MedicationFact) -> str:
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
    "treated_after": _treated_after,
    "order": _order,
    "condition_site": _condition_site,
    "daily_morphine": _daily_morphine,
}


if set(DERIVE) != set(KINDS):  # the registry and its functions name the same kinds
    raise RuntimeError(f"derivation kinds without a function or entry: {sorted(set(DERIVE) ^ set(KINDS))}")
