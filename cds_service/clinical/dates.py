"""Dates and times as the record and the cards read them (the rules, in one place).

- A FHIR date / dateTime / instant is read as a timezone-aware datetime; a partial date
  takes the first day ("2018" -> 2018-01-01), a date without a time is midnight UTC, a
  time without a zone is UTC (`parse_fhir_datetime`).
- The day of a value is its calendar date as written, in its own time zone (`day_of`).
- A value at exactly midnight is taken as a date without a time (`has_time`): FHIR dates
  are read as midnight, so midnight says nothing about the time of day.
- "After" a procedure (`placed_after`, `on_or_after`): when both values have a time of day,
  their instants are compared (time zones respected: 22:00-04:00 on the 19th is 02:00 UTC
  on the 20th). Otherwise their calendar days are compared; a value on the procedure's own
  day of which one side has no time cannot be placed before or after it (None).
- A value dated after the time of the call is in the future (`is_future`): after the
  instant of the call when both have a time, else a day after the call's day.
- Months are calendar months, years are 365.25 days.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone

from cds_service.formatting import years

__all__ = [
    "DAYS_PER_MONTH",
    "DAYS_PER_YEAR",
    "day_of",
    "duration_text",
    "has_time",
    "instant_of",
    "is_future",
    "months_between",
    "on_or_after",
    "parse_fhir_date",
    "parse_fhir_datetime",
    "placed_after",
]

DAYS_PER_YEAR = 365.25
DAYS_PER_MONTH = DAYS_PER_YEAR / 12

_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)


# ----------------------------------------------------------------------------- FHIR values
def parse_fhir_datetime(value: object) -> datetime | None:
    """A FHIR date / dateTime / instant as a timezone-aware datetime (None if not one).

    Partial dates take the first day ("2018" -> 2018-01-01); a date without a time is
    midnight UTC; a time without a zone is read as UTC.
    """
    if not isinstance(value, str) or len(value) > 40:
        return None
    m = _DATETIME.fullmatch(value)
    if m is None:
        return None
    # The regex has said it is a FHIR value; the C parser builds it (a fifth of the time).
    # What it refuses or reads otherwise (a leap second, a partial date) is built below.
    if m.end("mi") != -1:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    elif m.end("d") != -1:
        try:
            return datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]), tzinfo=UTC)
        except ValueError:
            return None
    return _build(m)


def _build(m: re.Match[str]) -> datetime | None:
    try:
        zone = UTC
        tz = m.group("tz")
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        fraction = (m.group("f") or "0")[:6].ljust(6, "0")
        return datetime(
            int(m.group("y")),
            int(m.group("mo") or 1),
            int(m.group("d") or 1),
            int(m.group("h") or 0),
            int(m.group("mi") or 0),
            min(int(m.group("s") or 0), 59),
            int(fraction),
            tzinfo=zone,
        )
    except (ValueError, OverflowError):
        return None


def parse_fhir_date(value: object) -> date | None:
    """The calendar date of a FHIR date / dateTime, as written (its own time zone)."""
    parsed = parse_fhir_datetime(value)
    return parsed.date() if parsed is not None else None


# ----------------------------------------------------------------------------- comparing
def day_of(value: date | datetime) -> date:
    """The calendar date of a date or datetime, as written (its own time zone)."""
    return value.date() if isinstance(value, datetime) else value


def has_time(value: date | datetime | None) -> bool:
    """False for a date without a time (the record reads those as midnight)."""
    if not isinstance(value, datetime):
        return False
    return (value.hour, value.minute, value.second, value.microsecond) != (0, 0, 0, 0)


def instant_of(value: date | datetime) -> datetime:
    """Comparable instant: aware values in UTC, naive values (local or date-only) as given."""
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def placed_after(when: date | datetime | None, start: date | datetime | None) -> bool | None:
    """Whether `when` is on or after `start`: True / False, or None when it cannot be placed.

    Both with a time of day: their instants (time zones respected). Otherwise their calendar
    days: a later day is after, an earlier day before, and the same day cannot be placed
    (one of them says only the day). A missing value cannot be placed either.
    """
    if when is None or start is None:
        return None
    if has_time(when) and has_time(start):
        return instant_of(when) >= instant_of(start)
    day, start_day = day_of(when), day_of(start)
    if day == start_day:
        return None
    return day > start_day


def on_or_after(when: date | datetime | None, start: date | datetime | None) -> bool:
    """On or after `start`, as `placed_after` decides; a value that cannot be placed is not."""
    return placed_after(when, start) is True


def is_future(when: date | datetime | None, today: date, now: datetime | None = None) -> bool:
    """Dated after the time of the call: after `now` when both have a time of day; else on a
    day after `today` (the call's day, UTC): a value with a time of day by its UTC day, a
    date-only value by its calendar day."""
    if when is None:
        return False
    if has_time(when):
        if now is not None:
            return instant_of(when) > instant_of(now)
        return instant_of(when).date() > today
    return day_of(when) > today


# ----------------------------------------------------------------------------- durations
def months_between(start: date, end: date) -> float:
    """Calendar months from start to end (whole months plus the fraction of the current one)."""
    whole = (end.year - start.year) * 12 + (end.month - start.month)
    if end.day < start.day:
        whole -= 1
    anchor_year, anchor_month = divmod(start.month - 1 + whole, 12)
    anchor = _safe_date(start.year + anchor_year, anchor_month + 1, start.day)
    return whole + (end - anchor).days / DAYS_PER_MONTH


def _safe_date(year: int, month: int, day: int) -> date:
    while True:
        try:
            return date(year, month, day)
        except ValueError:
            day -= 1


def duration_text(start: date, end: date) -> str:
    """'12 days', '14 months', '3.2 years': the time since a procedure as a clinician says it."""
    days = (end - start).days
    months = months_between(start, end)
    if months < 2:
        return f"{days} day" + ("" if days == 1 else "s")
    if months < 24:
        return f"{int(months)} months"
    return years(days, DAYS_PER_YEAR)
