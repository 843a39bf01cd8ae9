"""The value of one predictor as read from the patient record (InputValue: used, missing,
unreadable or only known during surgery, with its date and where it came from), what a
reader reads (Reading), and the small helpers every reader of clinical/predictors.py shares:
missing and unreadable values, values dated after the call, and how a Condition's dates
and an Observation's value are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, TypeGuard, cast

from cds_service.clinical.dates import day_of
from cds_service.clinical.record import (
    FUTURE,
    ConditionFact,
    ObservationFact,
    PatientRecord,
    ProcedureFact,
    UnreadableInput,
)
from cds_service.clinical.story import condition_order
from cds_service.content.cards import Predictor
from cds_service.formatting import rounded, significant
from cds_service.terminology.concept_index import Match

# Input status values.
USED = "used"
MISSING = "missing"
UNREADABLE = "unreadable"
INTRAOPERATIVE = "intraoperative"


_Day = date  # (InputValue has a field named date)


@dataclass(frozen=True)
class InputValue:
    """One predictor as found (or not) in the record."""

    predictor: str
    label: str
    status: str  # used | missing | unreadable | intraoperative
    value: bool | int | float | str | None = None  # bool (yes/no), float (canonical unit), str (coded answer)
    display: str = ""  # the value as shown: "45 min", "yes", "Grade III (= 3)"
    date: date | None = None
    date_label: str = "recorded"  # what the date is: "onset", "performed", "recorded", ...
    note: str = ""  # where it came from, or why it is missing / unreadable
    by_text: bool = False  # matched by free text only
    matched_text: str | None = None
    fact: Any = None  # the record's fact behind the value (a procedure or order a situation acts on)
    # Values of the input the record holds but did not use (record.reading / unreadable_for):
    newer_unreadable: tuple[_Day | None, ...] = ()  # dates of newer values that could not be read
    future: tuple[_Day | None, ...] = ()  # dates of values dated after the call (never used)
    # What those dates are, when they are a date of a fact that is itself used (a Condition's
    # onset or recorded date) rather than values: "onset", "recorded date"; "" for values.
    future_what: str = ""

    @property
    def recorded(self) -> bool:
        return self.status == USED


@dataclass(frozen=True)
class Reading:
    """What a derivation reads: the record, the hook, and the situation's procedure (if any)."""

    record: PatientRecord
    hook: str
    procedure: ProcedureFact | None = None


def not_used_future(days: tuple[date | None, ...], what: str = "") -> str:
    """The one wording of values dated after the call (never used), as the card, its lead
    and its evidence page show them: "not used: dated after today (2026-03-01)"; for the
    date of a fact that is used ("onset"): "not used: onset dated after today (...)"."""
    dated = ", ".join(d.isoformat() for d in days if d is not None)
    return f"not used: {what + ' ' if what else ''}dated after today{f' ({dated})' if dated else ''}"


# The elements whose future date leaves the fact itself in use (record.py: a Condition with an
# onset or recorded date after the call is still on the problem list; only the date is not used).
_DATE_NOT_FACT: dict[tuple[str, str | None], str] = {
    ("Condition", "onset[x]"): "onset",
    ("Condition", "recordedDate"): "recorded date",
}


def future_dates(p: Predictor, record: PatientRecord) -> tuple[tuple[date | None, ...], str]:
    """The predictor's values dated after the call: their days (once each), and what they
    are when every one is such a date of a fact in use ("onset", "recorded date"), else ""."""
    future = [u for u in record.unreadable_for(*p.concepts) if u.kind == FUTURE]
    days = tuple(dict.fromkeys(day_of(u.when) if u.when is not None else None for u in future))
    words = [_DATE_NOT_FACT.get((u.resource_type, u.element)) for u in future]
    what = "" if not words or None in words else " or ".join(dict.fromkeys(cast(list[str], words)))
    return days, what


def missing(p: Predictor, note: str | None = None) -> InputValue:
    return InputValue(
        p.id, p.label, MISSING, display="not recorded", note=note or f"looked for {p.how}; none in the data received"
    )


def unreadable(p: Predictor, record: PatientRecord) -> InputValue | None:
    """The predictor as unreadable, when the record has an unreadable input of its concept
    (one that could not be read first; else values dated after the call, never used)."""
    problems = sorted(record.unreadable_for(*p.concepts), key=lambda u: u.kind == FUTURE)
    for u in problems:
        return unreadable_input(p, u, record)
    return None


def unreadable_input(p: Predictor, u: UnreadableInput, record: PatientRecord) -> InputValue:
    if u.kind == FUTURE:
        # Could be read but is never used (EVIDENCE.md "Reading the record"): the reason is
        # the dates, said once, in the words of `not_used_future` (render lists it so too).
        days, what = future_dates(p, record)
        return InputValue(p.id, p.label, UNREADABLE, display=not_used_future(days, what), future=days, future_what=what)
    return InputValue(
        p.id, p.label, UNREADABLE, display="recorded but unreadable", note=f"{u.resource_type}: {u.reason}"
    )


# ---------------------------------------------------------------------------- small facts
MEDICATION_WORDS = {"MedicationRequest": "prescribed", "MedicationStatement": "reported as taken"}


def earliest(facts: list[ConditionFact]) -> ConditionFact:
    return min(facts, key=condition_order)


def condition_status(fact: ConditionFact) -> str:
    return fact.clinical_status or "clinical status not recorded"


def condition_dates(fact: ConditionFact) -> dict[str, Any]:
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


def text_match(match: Match) -> dict[str, Any]:
    if getattr(match, "by_text", False):
        return {"by_text": True, "matched_text": match.display}
    return {}


def observation_display(fact: ObservationFact, p: Predictor) -> str:
    value = fact.value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if value is None:  # callers show only a value that was read; said as the unreadable one is
        return "recorded but unreadable"
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


def is_number(value: object) -> TypeGuard[int | float]:
    """A number (int or float), not a yes/no (bool is an int in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ratio(x: float | None) -> str:
    return significant(x)
