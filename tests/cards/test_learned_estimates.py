"""Issue 11 on the card: a learned model's estimate is labelled with its provenance (N,
C-statistic, calibration slope, where and when it was learned) next to the cohort figure;
outside the values the model was fitted on, the figure is withheld and the card says why."""

from __future__ import annotations

import math

from support.chart import Chart
from support.learned_reports import RFA_LEARNED, learned_overlay, rfa_report

CARD = "rfa-recurrence"
TODAY = "2025-06-01"


def _expected_risk_12() -> float:
    # hfs_after_rfa.json: 45 min -> X1 = 4.5 (ref 4), grade III -> X2 = 2 (ref 1)
    rh = math.exp(-0.55 * 0.5 - 0.9 * 1)
    return 1 - 0.35**rh


def test_a_learned_estimate_is_labelled_with_n_c_statistic_and_calibration_slope_next_to_the_cohort(tmp_path):
    overlay = learned_overlay(tmp_path, rfa_report())
    card = Chart.from_bundle("hfs_after_rfa.json").show(CARD, "patient-view", TODAY, overlay=overlay)
    risk = _expected_risk_12() * 100
    assert card["summary"] == (
        f"After RFA: site model (412 patients, C-statistic 0.74, slope 0.96) estimates {risk:.1f} % by 12 months; "
        "cohort average 71.9 % by 12 months"
    )
    assert len(card["summary"]) < 140
    # the estimate's provenance is on the evidence page (issue 9: the card keeps the labelled summary)
    detail = Chart.from_bundle("hfs_after_rfa.json").evidence(CARD, "patient-view", TODAY, overlay=overlay)
    assert "Example Hospital learned RFA model (version 2026-11-26)" in detail
    assert "learned from this hospital's records (fhir.example-hospital.org, 2026-11-26)" in detail
    assert "fitted on 412 patients (187 recurrences or repeat treatments), C-statistic 0.74" in detail
    assert "calibration slope 0.96" in detail
    assert "secret" not in detail and "8443" not in detail
    assert "site-configured" not in detail.split("### Patient data used")[0].split("gives no estimate")[0]


def test_an_unvalidated_learned_model_allowed_by_the_setting_is_labelled_as_unvalidated(tmp_path):
    overlay = learned_overlay(tmp_path, rfa_report("failed"))
    card = Chart.from_bundle("hfs_after_rfa.json").show(CARD, "patient-view", TODAY, overlay=overlay)
    assert card["summary"].startswith("After RFA: UNVALIDATED site model estimates ")
    page = Chart.from_bundle("hfs_after_rfa.json").evidence(CARD, "patient-view", TODAY, overlay=overlay)
    assert "did NOT meet its validation minimums" in page


def test_an_input_outside_the_training_range_withholds_the_estimate_and_names_the_range(tmp_path):
    report = rfa_report()
    report["predictor_ranges"]["operation_time"].update(min=10.0, max=40.0)  # the patient's 45 min is beyond
    overlay = learned_overlay(tmp_path, report)
    chart = Chart.from_bundle("hfs_after_rfa.json")
    result = chart.result(CARD, "patient-view", TODAY, overlay=overlay)
    assert result.estimate is None
    assert [(o.predictor, o.training) for o in result.outside_range] == [("operation_time", "10 to 40 min")]
    card = chart.show(CARD, "patient-view", TODAY, overlay=overlay)
    assert "site model" not in card["summary"]
    lead = card["detail"].split("\n### ", 1)[0]
    assert (
        "**No patient-specific risk is shown:** Operation time of the RFA (X1) 45 min (10 to 40 min): outside the "
        "values (in brackets) the site's model was fitted on" in lead
    )
    assert "Estimated recurrence" not in card["detail"]


def test_a_value_on_the_edge_of_the_training_range_is_inside_it(tmp_path):
    report = rfa_report()
    report["predictor_ranges"]["operation_time"].update(min=45.0, max=45.0)
    result = Chart.from_bundle("hfs_after_rfa.json").result(
        CARD, "patient-view", TODAY, overlay=learned_overlay(tmp_path, report)
    )
    assert result.estimate is not None and result.outside_range == ()


def test_a_hand_typed_model_ignores_ranges_it_does_not_have(tmp_path):
    overlay = {"models": {CARD: {k: v for k, v in RFA_LEARNED.items()}}}
    result = Chart.from_bundle("hfs_after_rfa.json").result(CARD, "patient-view", TODAY, overlay=overlay)
    assert result.estimate is not None and result.estimate.learned is None
    assert result.outside_range == ()
