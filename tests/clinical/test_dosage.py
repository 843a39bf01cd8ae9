"""The daily dose of a prescription from its structured dosage (clinical/dosage.py, issue 15)."""

import pytest
from support.card_d_charts import epic_dosage

from cds_service.clinical.dosage import read_daily_dose


def test_fifteen_mg_every_twelve_hours_is_thirty_mg_a_day():
    dose = read_daily_dose([epic_dosage(15, frequency=1, period=12, period_unit="h")])
    assert dose.mg_per_day == 30
    assert dose.said == "15 mg every 12 hours"
    assert dose.problem is None


@pytest.mark.parametrize(
    ("code", "per_day"), [("BID", 2), ("TID", 3), ("QID", 4), ("QD", 1), ("Q4H", 6), ("Q6H", 4), ("QOD", 0.5)]
)
def test_a_timing_code_with_a_fixed_number_of_doses_a_day_is_read(code, per_day):
    dose = read_daily_dose([epic_dosage(10, frequency=None, period=None, code=code)])
    assert dose.mg_per_day == 10 * per_day


def test_the_repeat_wins_over_the_timing_code():
    assert read_daily_dose([epic_dosage(10, frequency=3, period=1, period_unit="d", code="BID")]).mg_per_day == 30


def test_a_timing_code_without_a_fixed_count_is_not_guessed():
    dose = read_daily_dose([epic_dosage(10, frequency=None, period=None, code="Q12H-ish")])
    assert dose.mg_per_day is None
    assert "timing code" in dose.problem


@pytest.mark.parametrize(
    ("dosage", "why"),
    [
        (epic_dosage(10, as_needed=True), "taken as needed"),
        (epic_dosage(None, dose_range=(5, 10)), "a dose range (5 to 10 mg)"),
        (epic_dosage(None, tablets=2), "the dose is given as 2 tablet, not in mg"),
        (epic_dosage(10, route="Intravenous"), "another route than by mouth (Intravenous)"),
        (epic_dosage(10, frequency=None, period=None), "no timing"),
        (
            {**epic_dosage(10), "timing": {"repeat": {"frequency": 1, "period": 4, "periodMax": 6, "periodUnit": "h"}}},
            "a range",
        ),
        ({"timing": "BID", "doseAndRate": "15 mg"}, "the dose cannot be read"),
    ],
)
def test_an_ambiguous_or_unreadable_dosage_gives_no_number_and_says_why(dosage, why):
    dose = read_daily_dose([dosage])
    assert dose.mg_per_day is None
    assert why in dose.problem


def test_a_mass_dose_in_grams_or_micrograms_is_converted():
    dosage = epic_dosage(None, tablets=None)
    dosage["doseAndRate"] = [{"doseQuantity": {"value": 0.03, "unit": "g", "code": "g"}}]
    assert read_daily_dose([dosage]).mg_per_day == pytest.approx(60)


def test_two_concurrent_instructions_are_summed_and_a_taper_is_not():
    morning = {**epic_dosage(30, frequency=1, period=1, period_unit="d"), "sequence": 1}
    evening = {**epic_dosage(15, frequency=1, period=1, period_unit="d"), "sequence": 1}
    assert read_daily_dose([morning, evening]).mg_per_day == 45
    taper = [{**morning, "sequence": 1}, {**evening, "sequence": 2}]
    assert "in sequence" in read_daily_dose(taper).problem


def test_no_dosage_is_no_dose_and_junk_is_a_reason_not_an_error():
    assert read_daily_dose(None) is None
    assert read_daily_dose([]) is None
    assert read_daily_dose("15 mg BID").problem
    assert read_daily_dose([{"doseAndRate": [{"doseQuantity": {"value": True, "unit": "mg"}}]}]).problem
