"""Dates and times as the record and the cards read them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.clinical.dates import (
    _DATETIME,
    _build,
    day_of,
    duration_text,
    has_time,
    instant_of,
    is_future,
    months_between,
    on_or_after,
    parse_fhir_date,
    parse_fhir_datetime,
    placed_after,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-05", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-14", datetime(2024, 5, 14, tzinfo=UTC)),
        ("2024-05-14T08:30:00Z", datetime(2024, 5, 14, 8, 30, tzinfo=UTC)),
        ("2024-05-14T08:30:00.123456789+02:00", datetime(2024, 5, 14, 6, 30, 0, 123456, tzinfo=UTC)),
        ("2024-02-30", None),
        ("24-05-14", None),
        ("2024-05-14 08:30", None),
        ("", None),
        (20240514, None),
    ],
)
def test_fhir_dates(text, expected):
    assert parse_fhir_datetime(text) == expected
    if expected is not None:
        assert parse_fhir_datetime(text).tzinfo is not None


def test_a_datetime_gives_its_own_calendar_date():
    assert parse_fhir_date("2024-05-14T23:30:00-05:00") == date(2024, 5, 14)
    assert day_of(parse_fhir_datetime("2024-05-14T23:30:00-05:00")) == date(2024, 5, 14)


def test_midnight_is_a_date_without_a_time():
    assert not has_time(parse_fhir_datetime("2024-05-14"))
    assert not has_time(parse_fhir_datetime("2024-05-14T00:00:00Z")) and not has_time(date(2024, 5, 14))
    assert has_time(parse_fhir_datetime("2024-05-14T00:00:01Z"))


def test_instants_compare_across_time_zones_and_with_dates():
    tokyo = parse_fhir_datetime("2024-05-14T08:00:00+09:00")
    assert instant_of(tokyo) == datetime(2024, 5, 13, 23, 0)
    assert instant_of(tokyo) < instant_of(date(2024, 5, 14)) < instant_of(parse_fhir_datetime("2024-05-14T00:30:00Z"))


@pytest.mark.parametrize(
    ("when", "start", "expected"),
    [
        ("2024-05-04", "2024-05-03T08:30:00Z", True),
        ("2024-05-02T23:59:00Z", "2024-05-03", False),
        ("2024-05-03T08:00:00Z", "2024-05-03T08:30:00Z", False),
        ("2024-05-03T08:30:00Z", "2024-05-03T08:30:00Z", True),
        # EVIDENCE.md "Reading the record": a date-only value on the procedure's own day
        # cannot be placed before or after it, so it is not "on or after" (it was True).
        ("2024-05-03", "2024-05-03T08:30:00Z", False),
        ("2024-05-03T06:00:00Z", "2024-05-03", False),
    ],
)
def test_on_or_after_counts_a_later_instant_or_a_later_day_never_an_unplaceable_same_day(when, start, expected):
    assert on_or_after(parse_fhir_datetime(when), parse_fhir_datetime(start)) is expected
    assert not on_or_after(None, parse_fhir_datetime(start)) and not on_or_after(parse_fhir_datetime(when), None)


def test_a_grade_30_minutes_before_an_rfa_written_in_another_time_zone_is_before_it():
    # RFA at 22:00 in UTC-4 on the 19th is 02:00 UTC on the 20th; the grade at 01:30 UTC on
    # the 20th is a calendar day later as written, but 30 minutes earlier.
    rfa, grade = parse_fhir_datetime("2026-06-19T22:00:00-04:00"), parse_fhir_datetime("2026-06-20T01:30:00Z")
    assert placed_after(grade, rfa) is False and not on_or_after(grade, rfa)
    assert placed_after(parse_fhir_datetime("2026-06-20T02:30:00Z"), rfa) is True


@pytest.mark.parametrize(
    ("when", "start"),
    [("2026-06-19", "2026-06-19T22:00:00-04:00"), ("2026-06-19T23:00:00Z", "2026-06-19"), ("2026-06-19", "2026-06-19")],
)
def test_a_date_only_value_on_the_procedure_day_cannot_be_placed(when, start):
    assert placed_after(parse_fhir_datetime(when), parse_fhir_datetime(start)) is None


def test_a_date_only_value_is_placed_by_the_procedure_day_as_written_in_its_own_zone():
    rfa = parse_fhir_datetime("2026-06-19T22:00:00-04:00")  # the 19th where it was done
    assert placed_after(parse_fhir_datetime("2026-06-20"), rfa) is True
    assert placed_after(parse_fhir_datetime("2026-06-18"), rfa) is False
    assert placed_after(None, rfa) is None and placed_after(rfa, None) is None


@pytest.mark.parametrize(
    ("when", "now", "future"),
    [
        ("2025-01-16", None, True),  # a later day
        ("2025-01-15", None, False),  # today
        ("2025-01-15T23:59:00Z", None, False),  # today, no instant of the call known
        ("2025-01-16T01:00:00+10:00", None, False),  # the 15th at 15:00 UTC
        ("2025-01-15T12:00:00Z", "2025-01-15T11:00:00Z", True),  # an hour after the call
        ("2025-01-15T10:00:00Z", "2025-01-15T11:00:00Z", False),
        ("2025-01-15", "2025-01-15T11:00:00Z", False),  # a date-only value of the call's day
        (None, None, False),
    ],
)
def test_a_value_dated_after_the_time_of_the_call_is_in_the_future(when, now, future):
    assert is_future(parse_fhir_datetime(when), date(2025, 1, 15), parse_fhir_datetime(now)) is future


@pytest.mark.parametrize(
    ("start", "end", "months"),
    [
        (date(2024, 1, 15), date(2024, 3, 15), 2.0),
        (date(2024, 1, 31), date(2024, 2, 29), 0.95),  # 29 days, not yet a month
        (date(2024, 1, 31), date(2024, 3, 1), 1.03),  # a month to 29 February (no 31st), then a day
        (date(2024, 1, 31), date(2024, 3, 31), 2.0),
        (date(2023, 6, 1), date(2025, 6, 1), 24.0),
    ],
)
def test_calendar_months(start, end, months):
    assert months_between(start, end) == pytest.approx(months, abs=0.01)


@pytest.mark.parametrize(
    ("days", "text"),
    [
        (1, "1 day"),
        (12, "12 days"),
        (59, "59 days"),
        (61, "2 months"),
        (400, "13 months"),
        (1540, "4.2 years"),
    ],
)
def test_time_since_as_a_clinician_says_it(days, text):
    start = date(2021, 3, 15)
    assert duration_text(start, start + timedelta(days=days)) == text


# The fast path (the regex validates, datetime.fromisoformat builds) must read every value
# exactly as the field-by-field reading does, and refuse the same ones.
_digits = lambda n: st.text("0123456789", min_size=n, max_size=n)  # noqa: E731
_zone = st.one_of(
    st.just(""),
    st.just("Z"),
    st.tuples(st.sampled_from("+-"), _digits(2), _digits(2)).map(lambda t: f"{t[0]}{t[1]}:{t[2]}"),
)
_fhir_like = st.one_of(
    _digits(4),
    st.tuples(_digits(4), _digits(2)).map("-".join),
    st.tuples(_digits(4), _digits(2), _digits(2)).map("-".join),
    st.tuples(
        _digits(4),
        _digits(2),
        _digits(2),
        _digits(2),
        _digits(2),
        st.one_of(st.just(""), _digits(2).map(":{}".format)),
        st.one_of(st.just(""), st.integers(1, 9).flatmap(_digits).map(".{}".format)),
        _zone,
    ).map(lambda t: f"{t[0]}-{t[1]}-{t[2]}T{t[3]}:{t[4]}{t[5]}{t[6] if t[5] else ''}{t[7]}"),
)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_fhir_like, st.text(max_size=30)))
def test_the_fast_reading_of_a_date_time_is_the_field_by_field_reading(value):
    match = _DATETIME.fullmatch(value) if len(value) <= 40 else None
    expected = _build(match) if match else None
    got = parse_fhir_datetime(value)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == expected.utcoffset()
