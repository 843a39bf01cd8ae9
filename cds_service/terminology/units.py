"""UCUM units: convert an Observation's quantity to its concept's canonical unit.

A small, real UCUM reader for the dimensions the cards use (mass, time, electric
potential and dimensionless scores): metric prefixes, products ('.'), quotients ('/'),
integer exponents, integer factors such as `(24.h)`, and `{annotations}` (which UCUM
defines as dimensionless, so `{score}` and `1` are the same unit). A unit outside this
subset, or of another dimension, cannot be converted: the value is then treated as
missing, never guessed.

Which field is read (decision, see also README of the concepts file):
- `Quantity.code` is authoritative when present and its `system` is UCUM or absent; it must
  be UCUM. The micro sign is unambiguous, so `µ` (U+00B5) and `μ` (U+03BC) are read as
  UCUM `u` there too ("µV" = "uV").
- Only when there is no usable code is the human-readable `Quantity.unit` read, and only
  there are a few common non-UCUM spellings accepted ("mcg", "mg/day", "minutes", ...).
- No unit at all is accepted only for dimensionless concepts (scores, grades, counts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"


class UnitError(ValueError):
    """A unit that cannot be converted to the requested one; the message is safe to show."""


@dataclass(frozen=True)
class Unit:
    factor: float  # size in base units (g, s, V)
    dims: tuple[int, int, int]  # exponents of (mass, time, electric potential)

    def __mul__(self, other: Unit) -> Unit:
        d, e = self.dims, other.dims
        return Unit(self.factor * other.factor, (d[0] + e[0], d[1] + e[1], d[2] + e[2]))

    def power(self, n: int) -> Unit:
        d = self.dims
        return Unit(self.factor**n, (d[0] * n, d[1] * n, d[2] * n))


DIMENSIONLESS = Unit(1.0, (0, 0, 0))

# Atoms: (size in base units, dimension, takes metric prefixes)
_ATOMS: dict[str, tuple[float, tuple[int, int, int], bool]] = {
    "1": (1.0, (0, 0, 0), False),
    "g": (1.0, (1, 0, 0), True),
    "s": (1.0, (0, 1, 0), True),
    "min": (60.0, (0, 1, 0), False),
    "h": (3600.0, (0, 1, 0), False),
    "d": (86400.0, (0, 1, 0), False),
    "wk": (604800.0, (0, 1, 0), False),
    "mo": (2629800.0, (0, 1, 0), False),  # mean Julian month, 30.4375 d
    "a": (31557600.0, (0, 1, 0), False),  # mean Julian year, 365.25 d
    "V": (1.0, (0, 0, 1), True),
}
_PREFIXES: dict[str, float] = {
    "k": 1e3,
    "h": 1e2,
    "da": 1e1,
    "d": 1e-1,
    "c": 1e-2,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
    "p": 1e-12,
}
_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})

# Common human spellings accepted in Quantity.unit only (after the micro sign is read as u
# and blanks are removed).
_DISPLAY_ALIASES: dict[str, str] = {
    "mcg": "ug",
    "minute": "min",
    "minutes": "min",
    "mins": "min",
    "min.": "min",
    "hour": "h",
    "hours": "h",
    "hr": "h",
    "hrs": "h",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "day": "d",
    "days": "d",
    "microvolt": "uV",
    "microvolts": "uV",
    "millivolt": "mV",
    "millivolts": "mV",
    "volt": "V",
    "volts": "V",
    "mg/day": "mg/d",
    "mg/24h": "mg/(24.h)",
    "mg/24hr": "mg/(24.h)",
    "mg/24hrs": "mg/(24.h)",
    "mgperday": "mg/d",
    "mcg/day": "ug/d",
    "ug/day": "ug/d",
    "g/day": "g/d",
    "mcg/d": "ug/d",
    "mcg/h": "ug/h",
    "mcg/hr": "ug/h",
    "mg/hr": "mg/h",
    "score": "{score}",
    "points": "{score}",
    "point": "{score}",
}

_MAX_UNIT_LENGTH = 64
_TOKEN = re.compile(r"\{[^{}]*\}|\(|\)|\.|/|[0-9]+|[A-Za-z]+[+-]?[0-9]*")


@lru_cache(maxsize=512)
def parse(code: str) -> Unit:
    """A UCUM unit expression (the subset described above) -> its size and dimension."""
    if not isinstance(code, str) or not code or len(code) > _MAX_UNIT_LENGTH:
        raise UnitError("not a unit")
    text = code.translate(_MICRO)
    tokens = _tokenise(text)
    unit, pos = _term(tokens, 0, text)
    if pos != len(tokens):
        raise UnitError("not a unit")
    return unit


def _tokenise(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise UnitError("not a unit")
        tokens.append(m.group(0))
        pos = m.end()
    return tokens


def _term(tokens: list[str], pos: int, text: str, depth: int = 0) -> tuple[Unit, int]:
    if depth > 4:
        raise UnitError("not a unit")
    result = DIMENSIONLESS
    operator = "."
    if pos < len(tokens) and tokens[pos] == "/":  # leading '/': "/min"
        operator = "/"
        pos += 1
    while True:
        component, pos = _component(tokens, pos, text, depth)
        result = result * (component if operator == "." else component.power(-1))
        if pos < len(tokens) and tokens[pos] in (".", "/"):
            operator = tokens[pos]
            pos += 1
            continue
        return result, pos


def _component(tokens: list[str], pos: int, text: str, depth: int) -> tuple[Unit, int]:
    if pos >= len(tokens):
        raise UnitError("not a unit")
    token = tokens[pos]
    if token == "(":
        inner, pos = _term(tokens, pos + 1, text, depth + 1)
        if pos >= len(tokens) or tokens[pos] != ")":
            raise UnitError("not a unit")
        return inner, pos + 1
    if token.startswith("{"):
        return DIMENSIONLESS, pos + 1
    if token.isdigit():
        unit = Unit(float(int(token)), (0, 0, 0)) if len(token) <= 6 else None
        if unit is None or unit.factor == 0:
            raise UnitError("not a unit")
        pos += 1
    elif token[0].isalpha():
        unit = _simple_unit(token)
        pos += 1
    else:
        raise UnitError("not a unit")
    if pos < len(tokens) and tokens[pos].startswith("{"):  # "mg{morphine}/d"
        pos += 1
    return unit, pos


def _simple_unit(token: str) -> Unit:
    m = re.fullmatch(r"([A-Za-z]+)([+-]?[0-9]{1,2})?", token)
    if m is None:
        raise UnitError("not a unit")
    symbol, exponent = m.group(1), int(m.group(2) or 1)
    base = _atom(symbol)
    return base.power(exponent) if exponent != 1 else base


def _atom(symbol: str) -> Unit:
    if symbol in _ATOMS:
        factor, dims, _ = _ATOMS[symbol]
        return Unit(factor, dims)
    for prefix, scale in _PREFIXES.items():
        if symbol.startswith(prefix) and len(symbol) > len(prefix):
            atom = _ATOMS.get(symbol[len(prefix) :])
            if atom is not None and atom[2]:
                return Unit(scale * atom[0], atom[1])
    raise UnitError("not a unit")


def is_dimensionless(code: str) -> bool:
    try:
        return parse(code).dims == (0, 0, 0)
    except UnitError:
        return False


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """`value` in `from_unit` expressed in `to_unit` (both UCUM); UnitError if impossible."""
    target = parse(to_unit)
    try:
        source = parse(from_unit)
    except UnitError:
        raise UnitError(f"unit {describe(from_unit)} cannot be converted to {to_unit}") from None
    if source.dims != target.dims:
        raise UnitError(f"unit {describe(from_unit)} cannot be converted to {to_unit}")
    if target.dims == (0, 0, 0) and source.factor != target.factor:
        # "7 /10" or "70 %" for a 0-10 score: rescaling a score is a guess about what was meant.
        raise UnitError(f"unit {describe(from_unit)} cannot be converted to {to_unit}")
    return float(f"{value * source.factor / target.factor:.12g}")  # drop float noise (2 mV = 2000 uV)


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The UCUM expression a FHIR Quantity is in (None: the quantity names no unit).

    Raises UnitError when the quantity names a unit that cannot be read as UCUM.
    """
    system = quantity.get("system")
    code = quantity.get("code")
    if isinstance(code, str) and code.strip() and (system is None or system == UCUM_SYSTEM):
        return code.strip()
    display = quantity.get("unit")
    if isinstance(display, str) and display.strip():
        compact = "".join(display.translate(_MICRO).split())
        return _DISPLAY_ALIASES.get(compact, _DISPLAY_ALIASES.get(compact.lower(), compact))
    if isinstance(code, str) and code.strip():
        # A code from another unit system and no readable display.
        raise UnitError(f"unit {describe(code)} is not a UCUM unit")
    return None


def convert_quantity(quantity: object, to_unit: str) -> float:
    """A FHIR Quantity (raw JSON) as a number in `to_unit`. UnitError (safe reason) otherwise."""
    if not isinstance(quantity, dict):
        raise UnitError("the quantity is not readable")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnitError("the quantity has no numeric value")
    value = float(value)
    if not math.isfinite(value):
        raise UnitError("the quantity has no numeric value")
    comparator = quantity.get("comparator")
    if comparator is not None:
        raise UnitError("the quantity is a bound (comparator), not a measured value")
    unit = quantity_unit(quantity)
    if unit is None:
        if is_dimensionless(to_unit):
            return value
        raise UnitError(f"the quantity has no unit; {to_unit} expected")
    return convert(value, unit, to_unit)


def describe(unit: object) -> str:
    """A unit as it may appear in a reason text: quoted, short, printable only."""
    if isinstance(unit, str) and 0 < len(unit) <= 24 and re.fullmatch(r"[\w{}()\[\]./*%' \-\u00b5\u03bc]+", unit):
        return f"'{unit}'"
    return "(unreadable)"
