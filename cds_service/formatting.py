"""Numbers as text: the one place that decides how a number is written for people (cards,
evidence pages, charts, reports, the terminal) and for the TOML the service writes.

Pure functions, no imports from the package. A figure published by a source is written
exactly as the card file gives it (`figure`); everything computed is rounded here.
"""

from __future__ import annotations

import math
from typing import Any

NOT_AVAILABLE = "n/a"


def figure(value: Any) -> str:
    """A figure exactly as written in the card file: 21.0 stays '21.0', 0.075 stays '0.075'."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def number(x: float | None, missing: str = "?") -> str:
    """A plain number without a trailing '.0': 3.0 -> '3', 2.5 -> '2.5', 0.0001 -> '0.0001'."""
    if x is None:
        return missing
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return missing
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def rounded(x: float, digits: int) -> str:
    """`number` after rounding to `digits` decimals: 52.123 (1) -> '52.1', 45.0 -> '45'."""
    return number(round(float(x), digits))


def fixed(x: float | None, digits: int = 2) -> str:
    """A fixed number of decimals (model statistics): 0.7 -> '0.70'; n/a when missing."""
    if x is None or not math.isfinite(x):
        return NOT_AVAILABLE
    return f"{x:.{digits}f}"


def percent(p: float, digits: int = 1) -> str:
    """A proportion as a percentage: 0.2345 -> '23.5 %'."""
    return f"{p * 100:.{digits}f} %"


def percent_number(rate: float | None, digits: int = 1) -> str:
    """A proportion as a bare percentage number for a % column: 0.5 -> '50.0'; '-' when none."""
    return "-" if rate is None else f"{rate * 100:.{digits}f}"


def significant(x: float | None, digits: int = 3) -> str:
    """Three significant digits (ratios, coefficients): 1.23456 -> '1.23'; large values whole."""
    if x is None:
        return NOT_AVAILABLE
    if isinstance(x, float):
        if not math.isfinite(x):
            return NOT_AVAILABLE
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def exact(x: float, digits: int = 6) -> str:
    """A number for a machine-read file (TOML): repr, rounded to `digits` decimals."""
    return repr(round(float(x), digits))


def toml_number(x: float) -> str:
    """A number as TOML: whole numbers without a decimal point, others as Python's repr."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def one_decimal(x: float) -> str:
    """Always one decimal (a duration in years, a percentage of a group): 6.0 -> '6.0'."""
    return f"{x:.1f}"


def years(days: float, days_per_year: float) -> str:
    """A duration in years with one decimal: '6.1 years'."""
    return f"{one_decimal(days / days_per_year)} years"


def seconds(s: float) -> str:
    """A bound in seconds as configured: 2.0 -> '2', 0.25 -> '0.25'."""
    return f"{s:g}"


def plural(n: int, one: str, many: str) -> str:
    """'1 card', '2 cards'."""
    return f"{n} {one if n == 1 else many}"
