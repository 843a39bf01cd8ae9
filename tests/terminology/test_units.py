"""UCUM conversion to a concept's canonical unit: convert what is certain, refuse the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.terminology import units
from cds_service.terminology.units import UnitError, convert, convert_quantity

UCUM = "http://unitsofmeasure.org"


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (0.5, "h", "min", 30.0),
        (90, "s", "min", 1.5),
        (25, "min", "min", 25.0),
        (1, "d", "min", 1440.0),
        (0.45, "mV", "uV", 450.0),
        (2, "V", "uV", 2_000_000.0),
        (300, "uV", "mV", 0.3),
        (1, "g", "mg", 1000.0),
        (250, "ug", "mg", 0.25),
        (60, "mg/(24.h)", "mg/d", 60.0),
        (2.5, "mg/h", "mg/d", 60.0),
        (0.06, "g/d", "mg/d", 60.0),
        (60, "mg{morphine}/d", "mg/d", 60.0),
        (7, "{score}", "{score}", 7.0),
        (7, "1", "{score}", 7.0),
        (3, "{vessels}", "1", 3.0),
        (1, "/min", "/h", 60.0),
    ],
)
def test_converts_between_units_of_the_same_dimension(value, source, target, expected):
    assert convert(value, source, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("mg", "min"),  # mass is not time
        ("mg", "mg/d"),  # a dose is not a daily dose
        ("%", "{score}"),  # a percentage is not a 0-10 score: never rescaled silently
        ("/10", "{score}"),  # "7 /10" is not 0.7 points
        ("10", "1"),
        ("mm[Hg]", "uV"),  # a unit outside the supported set
        ("10*3", "1"),
        ("mg/24.h", "mg/d"),  # UCUM reads this as (mg/24).h: not a daily dose
        ("", "min"),
        ("m in", "min"),
    ],
)
def test_refuses_what_cannot_be_converted(source, target):
    with pytest.raises(UnitError):
        convert(1.0, source, target)


def test_a_refusal_names_the_unit_and_the_target():
    with pytest.raises(UnitError) as info:
        convert_quantity({"value": 3, "system": UCUM, "code": "cm", "unit": "cm"}, "min")
    assert str(info.value) == "unit 'cm' cannot be converted to min"


def test_a_unit_that_looks_like_an_identifier_is_not_echoed():
    with pytest.raises(UnitError) as info:
        convert_quantity({"value": 3, "system": UCUM, "code": "patient 123-45-6789 smith, john"}, "min")
    assert "6789" not in str(info.value)
    assert "cannot be converted to min" in str(info.value)


class TestWhichFieldIsRead:
    def test_the_ucum_code_wins_over_the_display(self):
        assert convert_quantity({"value": 2, "unit": "minutes", "system": UCUM, "code": "h"}, "min") == 120.0

    def test_the_micro_sign_is_read_as_ucum_u_in_code_and_display(self):
        assert convert_quantity({"value": 30, "system": UCUM, "code": "\u00b5V"}, "uV") == 30.0
        assert convert_quantity({"value": 30, "unit": "\u03bcV"}, "uV") == 30.0

    def test_human_spellings_are_accepted_from_the_display_when_there_is_no_code(self):
        assert convert_quantity({"value": 60, "unit": "mg/day"}, "mg/d") == 60.0
        assert convert_quantity({"value": 45, "unit": "minutes"}, "min") == 45.0
        assert convert_quantity({"value": 500, "unit": "mcg/day"}, "mg/d") == 0.5

    def test_human_spellings_are_not_accepted_as_a_ucum_code(self):
        with pytest.raises(UnitError):
            convert_quantity({"value": 60, "system": UCUM, "code": "mg/day"}, "mg/d")

    def test_a_code_from_another_unit_system_falls_back_to_the_display(self):
        quantity = {"value": 20, "unit": "min", "system": "http://snomed.info/sct", "code": "258701004"}
        assert convert_quantity(quantity, "min") == 20.0

    def test_a_code_from_another_unit_system_without_display_is_refused(self):
        with pytest.raises(UnitError):
            convert_quantity({"value": 20, "system": "http://snomed.info/sct", "code": "258701004"}, "min")

    def test_no_unit_is_fine_for_a_score_but_not_for_a_time(self):
        assert convert_quantity({"value": 4}, "{score}") == 4.0
        with pytest.raises(UnitError, match="no unit"):
            convert_quantity({"value": 4}, "min")


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": "25", "code": "min"},
        {"value": True, "code": "min"},
        {"value": float("nan"), "code": "min"},
        {"value": float("inf"), "code": "min"},
        {"code": "min"},
        {"value": 25, "comparator": "<", "code": "min"},
        ["not", "a", "quantity"],
        None,
    ],
)
def test_a_quantity_without_a_usable_number_is_refused(quantity):
    with pytest.raises(UnitError):
        convert_quantity(quantity, "min")


@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.sampled_from(["s", "min", "h", "d", "ms"]),
    st.sampled_from(["s", "min", "h", "d"]),
)
def test_time_conversions_round_trip(value, a, b):
    assert convert(convert(value, a, b), b, a) == pytest.approx(value, rel=1e-9, abs=1e-9)


@given(st.text(max_size=80))
def test_any_text_as_a_unit_either_converts_or_is_refused_with_a_unit_error(text):
    try:
        result = convert(1.0, text, "min")
    except UnitError:
        return
    assert units.parse(text).dims == units.parse("min").dims
    assert result > 0
