"""Reading an Observation's (or component's) value as its concept's value kind.

A quantity is converted to the concept's canonical unit; an ordinal or count is read from
an integer, a dimensionless quantity, or a grade written as text ("Grade III", "3"); a coded
or yes/no answer is matched against the concept's answers. A value that cannot be read or
is outside the concept's valid range raises `Unreadable` with a safe reason (never the
value itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from cds_service import formatting
from cds_service.clinical.fhir_elements import VALUES_READ, as_list, short_text
from cds_service.terminology import units
from cds_service.terminology.concept_index import ConceptIndex, ValueSpec


class Unreadable(Exception):
    """A selected resource's value cannot be used; the message is a safe reason."""

    def __init__(self, reason: str, element: str = "value[x]") -> None:
        super().__init__(reason)
        self.element = element


def read_value(
    holder: Mapping[str, Any], spec: ValueSpec, concept_id: str, concepts: ConceptIndex
) -> tuple[float | int | str | bool, str | None, str]:
    """(value, unit, raw) of an Observation or component for the concept's value kind."""
    for element, check in VALUES_READ:
        value = holder.get(element)
        if value is not None and not check(value):
            raise Unreadable(f"the Observation's {element} is not valid FHIR R4", element)
    kind = spec.kind
    if kind == "quantity":
        unit = cast(str, spec.unit)  # the concepts file gives every quantity its unit
        if "valueQuantity" in holder:
            quantity = holder["valueQuantity"]
            try:
                number = units.convert_quantity(quantity, unit)
            except units.UnitError as exc:
                raise Unreadable(str(exc)) from None
            return _in_range(number, spec), spec.unit, _raw_quantity(quantity)
        if "valueInteger" in holder and units.is_dimensionless(unit):
            number = _integer(holder["valueInteger"])
            return _in_range(float(number), spec), spec.unit, str(number)
        raise Unreadable(f"the value is not a quantity ({spec.unit} expected)")
    if kind in ("ordinal", "count"):
        number, raw = _whole_number(holder, ordinal=kind == "ordinal")
        return int(_in_range(number, spec)), None, raw
    if kind == "coded":
        source = holder.get("valueCodeableConcept", holder.get("valueString"))
        answer = concepts.match_answer(concept_id, source)
        if answer is None:
            raise Unreadable("the value is not one of the concept's answers")
        return answer.value, None, _raw_answer(source, answer.label)
    if kind == "boolean":
        if "valueBoolean" in holder:
            flag = holder["valueBoolean"]
            if not isinstance(flag, bool):
                raise Unreadable("valueBoolean is not true or false")
            return flag, None, "yes" if flag else "no"
        source = holder.get("valueCodeableConcept", holder.get("valueString"))
        answer = concepts.match_answer(concept_id, source)
        if answer is None or not isinstance(answer.value, bool):
            raise Unreadable("the value is not a yes/no answer")
        return answer.value, None, _raw_answer(source, answer.label)
    raise Unreadable("the concept's value kind is not supported")


def _whole_number(holder: Mapping[str, Any], ordinal: bool) -> tuple[float, str]:
    if "valueInteger" in holder:
        number = _integer(holder["valueInteger"])
        return float(number), str(number)
    if "valueQuantity" in holder:
        quantity = holder["valueQuantity"]
        try:
            converted = units.convert_quantity(quantity, "1")
        except units.UnitError as exc:
            raise Unreadable(str(exc).replace("converted to 1", "read as a number without unit")) from None
        if not converted.is_integer():
            raise Unreadable("the value is not a whole number")
        return converted, _raw_quantity(quantity)
    text = holder.get("valueString")
    if text is None and isinstance(holder.get("valueCodeableConcept"), dict):
        cc = holder["valueCodeableConcept"]
        candidates = (
            [cc.get("text")]
            + [c.get("display") for c in as_list(cc.get("coding")) if isinstance(c, dict)]
            + [c.get("code") for c in as_list(cc.get("coding")) if isinstance(c, dict)]
        )
        for candidate in candidates:
            if isinstance(candidate, str) and _parse_grade(candidate, ordinal) is not None:
                text = candidate
                break
    if isinstance(text, str):
        grade = _parse_grade(text, ordinal)
        if grade is not None:
            return float(grade), short_text(text)
        raise Unreadable("the value is not a recognised grade" if ordinal else "the value is not a whole number")
    raise Unreadable("the value is not a grade" if ordinal else "the value is not a count")


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
        raise Unreadable("valueInteger is not an integer")
    return value


def _in_range(number: float, spec: ValueSpec) -> float:
    if not spec.in_range(number):
        raise Unreadable(f"the value is outside the valid range {spec.range_text()}")
    return number


def _raw_quantity(quantity: dict[str, Any]) -> str:
    value = quantity.get("value")
    unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
    number = formatting.number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"
    if isinstance(unit, str) and unit and not unit.startswith("{") and unit != "1":
        return short_text(f"{number} {unit}")
    return number


def _raw_answer(source: object, label: str) -> str:
    if isinstance(source, str):
        return short_text(source)
    if isinstance(source, dict):
        if isinstance(source.get("text"), str):
            return short_text(source["text"])
        for coding in as_list(source.get("coding")):
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                return short_text(coding["display"])
    return label
