"""The FHIR R4 elements the record reads, their datatype checks, and small element readers.

Only the elements listed in `ELEMENTS_READ` of a selected resource are checked (each against
its datatype: the parts of it that the record reads); anything else in a resource is never
looked at. Observation values (value[x]) are checked where they are read
(`observation_values.read_value`), against the concept's value kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cds_service.clinical.dates import parse_fhir_datetime

RAW_LIMIT = 60  # characters of a recorded value kept for display


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


is_codeable = _is_codeable  # for the elements read outside ELEMENTS_READ (bodySite, reasonCode)


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
VALUES_READ: tuple[tuple[str, _Check], ...] = (
    ("valueQuantity", _is_quantity),
    ("valueInteger", lambda v: type(v) is int),
    ("valueString", lambda v: type(v) is str),
    ("valueBoolean", lambda v: type(v) is bool),
    ("valueCodeableConcept", _is_codeable),
)


def _is_components(value: object) -> bool:
    return type(value) is list and all(type(c) is dict and _is_codeable(c.get("code")) for c in value)


_Check = Callable[[object], bool]
ELEMENTS_READ: dict[str, tuple[tuple[str, _Check], ...]] = {
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


# Choice elements read by their prefix: any Observation.value[x] counts as a value (one the
# concept's kind cannot read is reported as unreadable, not as missing), any
# Condition.abatement[x] as an abatement (FHIR R4 choice types of each).
VALUE_X = tuple(
    f"value{t}"
    for t in (
        "Quantity",
        "CodeableConcept",
        "String",
        "Boolean",
        "Integer",
        "Range",
        "Ratio",
        "SampledData",
        "Time",
        "DateTime",
        "Period",
    )
)
ABATEMENT_X = tuple(f"abatement{t}" for t in ("DateTime", "Age", "Period", "Range", "String"))


def has_choice(resource: Mapping[str, Any], prefix: str, names: tuple[str, ...]) -> bool:
    """Whether a choice element (value[x], abatement[x]) is present: any element whose name
    starts with `prefix` in a JSON object; one of `names` (every type of the choice, all
    declared) in a decoded resource, which holds no other element to look through."""
    if type(resource) is dict:
        return any(type(key) is str and key.startswith(prefix) for key in resource)
    return any(name in resource for name in names)


# The elements the record reads without an ELEMENTS_READ check (checked where they are read).
ALSO_READ: dict[str, tuple[str, ...]] = {
    "Patient": ("gender", "birthDate"),
    "Condition": ("bodySite", *ABATEMENT_X),
    "Procedure": ("reasonCode", "reasonReference"),
    "Observation": ("dataAbsentReason", *VALUE_X),
    "MedicationRequest": ("contained", "dosageInstruction"),
    "MedicationStatement": ("contained", "dosage"),
    "ServiceRequest": ("reasonCode", "reasonReference"),
}


# The elements `learn` reads that the record does not (learning/cohort.py: the dates of
# contact that a Cox follow-up is censored at). Declared with the record's, so a resource
# that `learn` stages keeps them (tests/learning/test_staging.py checks that every element
# `learn` asks a staged resource for is declared).
LEARN_READS: dict[str, tuple[str, ...]] = {"Encounter": ("period",)}

# The elements that name the patient a resource belongs to (Patient is its own id): `learn`'s
# staging files each exported resource by them (learning/staging.py). Read from the exported
# line only, not stored with the resource: neither the record nor `learn` reads them again.
PATIENT_REFERENCES = ("subject", "patient")


def declared_elements() -> frozenset[str]:
    """Every top-level element of a resource that the record (or `learn`) reads: what the
    decoder of hook requests, FHIR answers and exported resources keeps (fhir/decode.py);
    anything else is skipped unread. An element read but missing here would be dropped
    silently: add it to ELEMENTS_READ, ALSO_READ or LEARN_READS (tests/fhir/test_decode.py
    and tests/learning/test_staging.py check that every element asked for is declared)."""
    names = {"resourceType", "id"}
    for table in (ELEMENTS_READ, ALSO_READ, LEARN_READS):
        for elements in table.values():
            names.update(e if isinstance(e, str) else e[0] for e in elements)
    names.update(element for element, _ in VALUES_READ)
    return frozenset(names)


# -- small readers -----------------------------------------------------------------------------
def get_sub(resource: Mapping[str, Any], key: str, sub: str) -> object:
    value = resource.get(key)
    return value.get(sub) if isinstance(value, dict) else None


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def status_code(codeable: object, system_tail: str) -> str | None:
    """The code of a status CodeableConcept (the HL7 system's coding first)."""
    if not isinstance(codeable, dict):
        return None
    first: str | None = None
    for coding in as_list(codeable.get("coding")):
        if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
            continue
        code: str = coding["code"]
        system = coding.get("system")
        if isinstance(system, str) and system.endswith(system_tail):
            return code
        first = first or code
    return first


def type_and_id(reference: str) -> str:
    """ "https://x/fhir/ServiceRequest/1/_history/2" -> "ServiceRequest/1"."""
    parts = [p for p in reference.split("?")[0].split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def short_text(text: str) -> str:
    text = " ".join(text[:1000].split())
    return text if len(text) <= RAW_LIMIT else text[: RAW_LIMIT - 1] + "\u2026"
