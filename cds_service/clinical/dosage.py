"""The daily dose of a prescription, read from its structured dosage (FHIR R4 Dosage).

Only an unambiguous structured dose and timing give a daily dose (EVIDENCE.md "The patient's
story", Daily morphine: 15 mg every 12 hours = 30 mg/d). Everything else gives no number and
says why, in words a clinician reads on the card: taken as needed, a dose range, a dose in
tablets or millilitres (the strength is not read), a range of intervals, several dosage
instructions in sequence (a taper), a route other than by mouth, no timing. Nothing here
raises on bad input: an element that is not what FHIR R4 says is a reason, never an error.

Elements read (MedicationRequest.dosageInstruction / MedicationStatement.dosage, each a
Dosage): sequence, asNeededBoolean / asNeededCodeableConcept, route (text and displays),
doseAndRate[].doseQuantity / doseRange, timing.repeat (frequency, frequencyMax, period,
periodMax, periodUnit, timeOfDay, when) and timing.code (the HL7 timing abbreviations below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["DailyDose", "read_daily_dose"]

# Mass units of a dose, to milligrams (UCUM codes and the unit strings EHRs send).
_TO_MG = {
    "mg": 1.0,
    "milligram": 1.0,
    "milligrams": 1.0,
    "g": 1000.0,
    "gram": 1000.0,
    "grams": 1000.0,
    "ug": 0.001,
    "mcg": 0.001,
    "microgram": 0.001,
    "micrograms": 0.001,
}
# Timing.repeat.periodUnit (UCUM units of time) -> periods per day.
_PER_DAY = {"s": 86400.0, "min": 1440.0, "h": 24.0, "d": 1.0, "wk": 1 / 7}
# Timing.code: the HL7 timing abbreviations (code system v3-GTSAbbreviation, value set
# http://hl7.org/fhir/ValueSet/timing-abbreviation, FHIR R4 4.0.1) whose definition fixes a
# number of administrations a day ("BID: two times a day at institution specified time";
# "Q4H: every 4 hours"). Only the codes read in that published definition are listed.
TIMING_CODES_PER_DAY = {
    "QD": 1.0,
    "AM": 1.0,
    "PM": 1.0,
    "BID": 2.0,
    "TID": 3.0,
    "QID": 4.0,
    "QOD": 0.5,
    "Q1H": 24.0,
    "Q2H": 12.0,
    "Q3H": 8.0,
    "Q4H": 6.0,
    "Q6H": 4.0,
}
_ORAL = re.compile(r"\b(oral|orally|by mouth|per os|po|enteral)\b", re.IGNORECASE)
_UNITS_WORDS = {"h": "hours", "d": "days", "wk": "weeks", "min": "minutes", "s": "seconds"}


@dataclass(frozen=True)
class DailyDose:
    """A prescription's daily dose in mg, or why it cannot be read.

    mg_per_day: the daily dose, or None.
    said:       the dosage as read, in words ("15 mg every 12 hours"), when it could be read.
    problem:    why no daily dose can be given ("taken as needed: no fixed daily dose").
    """

    mg_per_day: float | None
    said: str = ""
    problem: str | None = None


class _NoDose(Exception):
    pass


def read_daily_dose(dosages: object) -> DailyDose | None:
    """The daily dose of a list of Dosage elements; None when there is none to read."""
    if dosages is None:
        return None
    try:
        if type(dosages) is not list or not all(type(d) is dict for d in dosages):
            raise _NoDose("the dosage is not structured as FHIR R4 says")
        if not dosages:
            return None
        if len(dosages) > 1:
            sequences = {d.get("sequence") for d in dosages}
            if len(sequences) != 1 or None in sequences:
                raise _NoDose("several dosage instructions in sequence (a changing dose): no single daily dose")
        parts = [_one(d) for d in dosages]
    except _NoDose as exc:
        return DailyDose(None, problem=str(exc))
    total = sum(mg for mg, _ in parts)
    return DailyDose(total, said=" and ".join(said for _, said in parts))


def _one(dosage: dict[str, Any]) -> tuple[float, str]:
    if dosage.get("asNeededBoolean") is True or dosage.get("asNeededCodeableConcept") is not None:
        raise _NoDose("taken as needed: no fixed daily dose")
    _check_route(dosage.get("route"))
    mg = _dose_mg(dosage.get("doseAndRate"))
    per_day, timing_said = _per_day(dosage.get("timing"))
    return mg * per_day, f"{_number(mg)} mg {timing_said}"


def _check_route(route: object) -> None:
    if route is None:
        return
    if type(route) is not dict:
        raise _NoDose("the route cannot be read")
    said = [route.get("text")] + [c.get("display") for c in route.get("coding") or () if type(c) is dict]
    words: list[str] = [w for w in said if type(w) is str and w.strip()]
    if words and not any(_ORAL.search(w) for w in words):
        raise _NoDose(f"given by another route than by mouth ({words[0][:40]}): not compared with oral doses")


def _dose_mg(dose_and_rate: object) -> float:
    if dose_and_rate is None:
        raise _NoDose("no structured dose")
    if type(dose_and_rate) is not list:
        raise _NoDose("the dose cannot be read")
    masses: set[float] = set()
    other: list[str] = []
    for entry in dose_and_rate:
        if type(entry) is not dict:
            continue
        quantity = entry.get("doseQuantity")
        dose_range = entry.get("doseRange")
        if type(dose_range) is dict:
            low, high = _mass(dose_range.get("low")), _mass(dose_range.get("high"))
            if low is not None and high is not None and low != high:
                raise _NoDose(f"a dose range ({_number(low)} to {_number(high)} mg): no single daily dose")
            quantity = dose_range.get("low") if low is not None else dose_range.get("high")
        mg = _mass(quantity)
        if mg is not None:
            masses.add(mg)
        elif type(quantity) is dict and isinstance(quantity.get("value"), (int, float)):
            other.append(f"{_number(quantity['value'])} {quantity.get('unit') or quantity.get('code') or ''}".strip())
    if len(masses) > 1:
        raise _NoDose("the dose is given twice with different amounts")
    if masses:
        return masses.pop()
    if other:
        raise _NoDose(f"the dose is given as {other[0][:40]}, not in mg (the product's strength is not read)")
    raise _NoDose("no structured dose")


def _mass(quantity: object) -> float | None:
    if type(quantity) is not dict:
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    for unit in (quantity.get("code"), quantity.get("unit")):
        if isinstance(unit, str) and unit.strip().lower() in _TO_MG:
            return float(value) * _TO_MG[unit.strip().lower()]
    return None


def _per_day(timing: object) -> tuple[float, str]:
    if type(timing) is not dict:
        raise _NoDose("no timing")
    repeat = timing.get("repeat")
    if type(repeat) is dict and (repeat.get("period") is not None or repeat.get("frequency") is not None):
        return _from_repeat(repeat)
    if type(repeat) is dict:
        times = [t for t in (repeat.get("timeOfDay") or repeat.get("when") or ()) if isinstance(t, str)]
        if times:
            return float(len(times)), f"{len(times)} times a day"
    code = timing.get("code")
    if type(code) is dict:
        for coding in code.get("coding") or ():
            if type(coding) is dict and isinstance(coding.get("code"), str):
                per_day = TIMING_CODES_PER_DAY.get(coding["code"].upper())
                if per_day is not None:
                    return per_day, _times_a_day(per_day)
        raise _NoDose("the timing code is not one with a fixed number of doses a day")
    raise _NoDose("no timing")


def _from_repeat(repeat: dict[str, Any]) -> tuple[float, str]:
    frequency = repeat.get("frequency", 1)
    period, unit = repeat.get("period"), repeat.get("periodUnit")
    if repeat.get("frequencyMax") not in (None, frequency) or repeat.get("periodMax") not in (None, period):
        raise _NoDose("a range of doses or intervals: no single daily dose")
    if (
        isinstance(frequency, bool)
        or type(frequency) is not int
        or frequency <= 0
        or isinstance(period, bool)
        or not isinstance(period, (int, float))
        or period <= 0
        or unit not in _PER_DAY
    ):
        raise _NoDose("the timing cannot be read as doses a day")
    per_day = frequency * _PER_DAY[unit] / period
    if frequency == 1:
        said = f"every {_number(period)} {_UNITS_WORDS[unit]}" if period != 1 else f"every {_UNITS_WORDS[unit][:-1]}"
    else:
        said = f"{frequency} times every {_number(period)} {_UNITS_WORDS[unit]}"
    return per_day, said


def _times_a_day(per_day: float) -> str:
    if per_day == 0.5:
        return "every other day"
    return "once a day" if per_day == 1 else f"{_number(per_day)} times a day"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
