"""Card A: recurrence after CT-guided radiofrequency ablation (RFA) for hemifacial spasm.

Figures are those of EVIDENCE.md section A (Pain Physician 2022, Jiaxing, n = 99):
cumulative recurrence 20.2 / 36.4 / 71.9 % at 3 / 6 / 12 months; HR 0.538 (X1, operation
time) and 0.075 (X2, facial paralysis grade) per unit of an unpublished coding.
"""

import math

import pytest
from support import evidence
from support.chart import MVD, RFA, Chart
from support.site_overlays import RFA_SITE as SITE

CARD = "rfa-recurrence"
TODAY = "2025-06-01"


def cohort_figures_shown(text: str) -> None:
    # EVIDENCE.md A: "20.2 % at 3 months, 36.4 % at 6 months, 71.9 % at 12 months (Kaplan-Meier)"
    for figure in ("20.2", "36.4", "71.9"):
        assert evidence.published("A", figure)
        assert f"{figure} %" in text


def lead(detail: str) -> str:
    """The detail before its first heading: the patient's situation and the figure that matters."""
    return detail.split("\n### ", 1)[0]


def no_patient_specific_figure(detail: str) -> None:
    assert "No patient-specific risk" in detail
    assert "Relative hazard of" not in detail and "Estimated recurrence" not in detail
    assert "site-configured" not in detail


# -- ordering RFA ----------------------------------------------------------------------------------
def test_an_rfa_order_for_a_patient_with_hfs_shows_the_cohort_curve_and_what_drives_durability():
    card = Chart().hfs(onset="2021-05-01").order(RFA).show(CARD, "order-select", TODAY)
    assert card is not None
    # issue 9: the point in plain words, the one figure that matters at ordering
    assert card["summary"] == "RFA for hemifacial spasm: spasm had returned in 71.9 % of the study cohort by 12 months"
    detail = card["detail"]
    assert lead(detail).startswith("Radiofrequency ablation (RFA) of the facial nerve is being ordered")
    assert "**71.9 % by 12 months**" in lead(detail)
    assert "cohort average" in lead(detail) and "99 patients" in lead(detail) and "Jiaxing" in lead(detail)
    assert "known only after the procedure" in lead(detail)
    # issue 9: the curve, the hazard ratios and why there is no estimate are on the evidence page
    page = Chart().hfs(onset="2021-05-01").order(RFA).evidence(CARD, "order-select", TODAY)
    cohort_figures_shown(page)
    # EVIDENCE.md A: HR exp(-0.619) = 0.538 and exp(-2.589) = 0.075, direction: LOWER recurrence
    assert "hazard ratio 0.538 per unit of X1's coding" in page
    assert "hazard ratio 0.075 per unit of X2's coding" in page
    assert "Longer operation time went with LOWER recurrence risk" in page
    assert "higher facial paralysis grade after the procedure went with LOWER recurrence risk" in page
    assert "coding of X1 and X2 was **not published**" in page
    # issue 9 / EVIDENCE.md "At the point of care": the Cox formula and the model's test
    # statistic belong to the evidence page, not to an order card (the card kept them before).
    for model_text in ("h(t)", "h0(t)", "exp(", "chi-squared", "55.769", "hazard ratio"):
        assert model_text not in detail
    no_patient_specific_figure(page)
    assert "only known after the RFA" in page
    assert card["indicator"] == "info"
    assert {k: v for k, v in card["source"].items() if k != "topic"} == {  # topic: tests/clinical/test_card_topic.py
        "label": "Pain Physician 2022;25(8):E1249-E1255 (Jiaxing RFA cohort, PMID 36375197)",
        "url": "https://pubmed.ncbi.nlm.nih.gov/36375197/",
    }
    assert "- **Hemifacial spasm**: yes (active), onset 2021-05-01" in card["detail"]
    assert "Relative hazard of" not in card["detail"] and "site-configured" not in card["detail"]


def test_an_rfa_order_is_shown_at_signing_too():
    card = Chart().hfs().order(RFA, selected=False).show(CARD, "order-sign", TODAY)
    assert card is not None and "71.9 %" in card["summary"]


def test_an_rfa_order_for_a_patient_without_hfs_shows_no_card():
    chart = Chart().hypertension().order(RFA)
    assert chart.show(CARD, "order-select", TODAY) is None
    assert chart.show(CARD, "order-sign", TODAY) is None


def test_order_select_concerns_the_selected_order_only():
    # RFA is among the draft orders but the clinician selected something else.
    chart = Chart().hfs().order(RFA, selected=False).order(MVD, selected=True)
    assert chart.show(CARD, "order-select", TODAY) is None


def test_a_refuted_hfs_diagnosis_does_not_make_the_patient_an_hfs_patient():
    chart = Chart().hfs(verification="refuted").order(RFA)
    assert chart.show(CARD, "order-select", TODAY) is None


# -- after a completed RFA --------------------------------------------------------------------------
def test_after_rfa_the_card_lists_operation_time_post_procedure_grade_and_time_since():
    card = Chart.from_bundle("hfs_after_rfa.json").show(CARD, "patient-view", TODAY)
    # EVIDENCE.md A follow-up wording: never "most recurrences come within a year" (the old
    # summary said "most within a year"); issue 9: no "20.2/36.4/71.9 % at 3/6/12 months".
    assert (
        card["summary"]
        == "RFA 4 months ago: spasm had returned in 36.4 % of the study cohort by 6 months, 71.9 % by 12"
    )
    detail = card["detail"]
    assert lead(detail).startswith(
        "This patient had radiofrequency ablation (RFA) of the facial nerve for hemifacial spasm 4 months ago."
    )
    assert "operation time 45 min; facial paralysis (House-Brackmann) grade after the RFA: Grade III (= 3)" in lead(
        detail
    )
    cohort_figures_shown(lead(detail))
    used = detail[detail.index("### Patient data used") : detail.index("**Strength of evidence:**")]
    assert "- **Time since the RFA**: 4 months, performed 2025-01-10" in used
    assert (
        "- **Operation time of the RFA (X1)**: 45 min, performed 2025-01-10; from the RFA's recorded start and end times"
        in used
    )
    # the grade recorded the day AFTER the RFA (III) is used, not the one before it (I)
    assert (
        "- **Facial paralysis (House-Brackmann) grade after the RFA (X2)**: Grade III (= 3), recorded 2025-01-11"
        in used
    )
    assert "Grade I " not in used and "Grade I," not in used
    assert "### Patient data missing" not in detail
    assert "recurrences were still increasing when follow-up ended at 12 months" in lead(detail)
    page = Chart.from_bundle("hfs_after_rfa.json").evidence(CARD, "patient-view", TODAY)
    no_patient_specific_figure(page)
    assert "Relative hazard of" not in detail and "Estimated recurrence" not in detail
    assert "cannot be turned into a risk" in page
    assert "most recurrences" not in (detail + page).lower()
    assert "Beyond the study's follow-up" not in detail + page


def test_after_rfa_with_missing_operation_time_and_grade_both_are_listed_as_missing():
    chart = Chart().hfs().rfa("2025-02-03")  # performed date only, no period
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    missing = detail[detail.index("### Patient data missing") :]
    assert "**Operation time of the RFA (X1)**: not recorded" in missing
    assert "**Facial paralysis (House-Brackmann) grade after the RFA (X2)**: not recorded" in missing
    assert "not assumed" in missing
    assert "- **Time since the RFA**: 3 months, performed 2025-02-03" in detail


def test_an_operation_time_observation_stands_in_for_a_missing_performed_period():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z")
    chart.quantity(
        ("https://hfs-cds.example.org/fhir/CodeSystem/hfs-local", "operation-time"), "2025-02-03T10:00:00Z", 0.5, "h"
    )
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert (
        "**Operation time of the RFA (X1)**: 0.5 h (= 30 min), recorded 2025-02-03; from an operation time "
        "recorded on the day of the RFA" in detail
    )


def test_a_grade_recorded_only_before_the_rfa_is_not_taken_as_the_post_procedure_grade():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2025-01-20", valueInteger=2)
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert "**Facial paralysis (House-Brackmann) grade after the RFA (X2)**: not recorded" in detail


def test_a_grade_on_the_day_of_the_rfa_without_a_time_is_not_taken_as_the_post_procedure_grade():
    # It was used and flagged; EVIDENCE.md "Reading the record": a date-only value on the
    # procedure's own day cannot be placed before or after it and is not used as post-procedure.
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2025-02-03", valueString="IV")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert "IV (= 4)" not in detail
    assert (
        "- **Facial paralysis (House-Brackmann) grade after the RFA (X2)**: not recorded (a grade recorded on the "
        "RFA's day without a time of day cannot be placed before or after it: not used); not assumed" in detail
    )


def test_an_unreadable_grade_is_reported_as_recorded_but_unreadable():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2025-02-04", valueString="quite weak")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert (
        "**Facial paralysis (House-Brackmann) grade after the RFA (X2)**: recorded but unreadable "
        "(the value is not a recognised grade" in detail
    )


def test_past_the_studys_follow_up_the_card_says_there_are_no_figures_beyond_12_months():
    card = Chart().hfs().rfa("2024-03-01").show(CARD, "patient-view", TODAY)
    # EVIDENCE.md A: past 12 months say the study did not follow patients that long
    assert (
        card["summary"] == "RFA 15 months ago: the study followed patients only to 12 months, when 71.9 % had recurred"
    )
    page = Chart().hfs().rfa("2024-03-01").evidence(CARD, "patient-view", TODAY)
    assert "longer than the cohort's follow-up (3-12 months)" in page
    assert "the study did not follow patients that long" in page
    assert "still increasing when follow-up ended at 12 months" in lead(card["detail"])


def test_an_rfa_more_than_two_years_ago_no_longer_raises_a_card():
    assert Chart().hfs().rfa("2023-01-15").show(CARD, "patient-view", TODAY) is None


def test_an_rfa_without_hfs_in_the_chart_raises_no_card():
    assert Chart().rfa("2025-01-10").show(CARD, "patient-view", TODAY) is None


def test_a_planned_not_completed_rfa_raises_no_follow_up_card():
    assert Chart().hfs().rfa("2025-01-10", status="in-progress").show(CARD, "patient-view", TODAY) is None


# -- with a site-configured model -----------------------------------------------------------------


def test_with_a_site_model_the_card_shows_a_patient_specific_estimate_labelled_as_the_sites():
    card = Chart.from_bundle("hfs_after_rfa.json").show(CARD, "patient-view", TODAY, overlay=SITE)
    # 45 min >= 40 -> X1 = 1; grade III >= 3 -> X2 = 1; reference (0, 0):
    rh = math.exp(-0.619 - 2.589)  # 0.0404
    risk_12 = 1 - 0.25**rh  # 1 - S0(12) ** HR = 0.0545
    assert card["summary"] == (
        f"After RFA: site model estimates {risk_12 * 100:.1f} % by 12 months; cohort average 71.9 % by 12 months"
    )
    detail = Chart.from_bundle("hfs_after_rfa.json").evidence(CARD, "patient-view", TODAY, overlay=SITE)
    assert 'site-configured model "Example Hospital RFA model" (version 2025.1)' in detail
    assert "not from the published study" in detail
    assert f"Relative hazard of recurrence of hemifacial spasm: **{rh:.3g}**" in detail
    assert "operation time under 40 min, House-Brackmann grade I-II" in detail
    for horizon, s0 in ((3, 0.7), (6, 0.5), (12, 0.25)):
        assert f"by {horizon} months: **{(1 - s0**rh) * 100:.1f} %**" in detail
    assert "Operation time of the RFA (X1) = 1 (category: number of cut-offs reached (40 min))" in detail
    assert "No patient-specific risk" not in detail
    cohort_figures_shown(detail)  # the cohort average stays, labelled as such


def test_a_linear_site_coding_is_applied_per_its_unit():
    overlay = {
        "models": {
            "rfa-recurrence": {
                **SITE["models"]["rfa-recurrence"],
                "coding": {"operation_time": {"scale": 10}, "paralysis_grade_after": {"scale": 1, "offset": 1}},
                "reference": {"operation_time": 3, "paralysis_grade_after": 0},
            }
        }
    }
    result = Chart.from_bundle("hfs_after_rfa.json").result(CARD, "patient-view", TODAY, overlay=overlay)
    # X1 = 45 / 10 = 4.5 (ref 3), X2 = 3 - 1 = 2 (ref 0)
    assert result.estimate.relative_hazard == pytest.approx(math.exp(-0.619 * 1.5 - 2.589 * 2))


def test_with_a_site_model_but_a_missing_input_there_is_no_estimate_and_the_card_says_why():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    card = chart.show(CARD, "patient-view", TODAY, overlay=SITE)
    detail = chart.evidence(CARD, "patient-view", TODAY, overlay=SITE)
    assert (
        'The site-configured model "Example Hospital RFA model" (version 2025.1) gives no estimate for this '
        "patient: it needs Facial paralysis (House-Brackmann) grade after the RFA (X2), which is not available."
    ) in detail
    assert "Estimated recurrence" not in detail
    assert "site model estimates" not in card["summary"]


def test_a_site_model_without_baseline_survival_gives_a_relative_hazard_only():
    overlay = {
        "models": {
            "rfa-recurrence": {k: v for k, v in SITE["models"]["rfa-recurrence"].items() if k != "baseline_survival"}
        }
    }
    card = Chart.from_bundle("hfs_after_rfa.json").show(CARD, "patient-view", TODAY, overlay=overlay)
    assert "relative hazard 0.0404 vs the site reference" in card["summary"]
    page = Chart.from_bundle("hfs_after_rfa.json").evidence(CARD, "patient-view", TODAY, overlay=overlay)
    assert "No absolute risk: the site model gives no baseline survival." in page
    assert "Estimated recurrence" not in page and "Estimated recurrence" not in card["detail"]


def test_before_the_rfa_a_site_model_cannot_be_applied_and_no_estimate_is_shown():
    card = Chart().hfs().order(RFA).show(CARD, "order-select", TODAY, overlay=SITE)
    page = Chart().hfs().order(RFA).evidence(CARD, "order-select", TODAY, overlay=SITE)
    assert "No patient-specific risk is shown" in page
    assert "Relative hazard of" not in card["detail"] and "Relative hazard of" not in page
    assert "site model estimates" not in card["summary"]


# -- EVIDENCE.md A: when the card speaks, and how it words follow-up ----------------------------------
def test_after_a_later_mvd_the_after_rfa_card_no_longer_fires():
    chart = Chart().hfs().rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z").mvd("2025-04-02")
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_an_mvd_timed_later_on_the_day_of_the_rfa_also_stops_the_card():
    chart = Chart().hfs().rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    chart.mvd("2025-01-10T15:00:00Z", "2025-01-10T17:30:00Z")
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_an_mvd_before_the_rfa_does_not_stop_the_card():
    chart = Chart().hfs().mvd("2022-05-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    assert chart.show(CARD, "patient-view", TODAY) is not None


def test_a_planned_mvd_after_the_rfa_does_not_stop_the_card():
    chart = Chart().hfs().rfa("2025-01-10T08:00:00Z").mvd("2025-05-20", status="preparation")
    assert chart.show(CARD, "patient-view", TODAY) is not None


def test_an_rfa_ordered_after_an_earlier_mvd_still_gets_the_order_card():
    chart = Chart().hfs().mvd("2022-05-01").order(RFA)
    assert chart.show(CARD, "order-select", TODAY) is not None


@pytest.mark.parametrize(
    ("rfa_day", "months"),
    [
        ("2025-04-20", "42 days"),
        ("2025-01-10", "4 months"),
        ("2024-09-20", "8 months"),
        ("2024-03-01", "15 months"),
        ("2023-07-01", "23 months"),
    ],
)
def test_no_time_point_says_most_recurrences_come_within_a_year(rfa_day, months):
    # EVIDENCE.md A: follow-up ended at 12 months while the curve was still rising
    card = Chart().hfs().rfa(rfa_day).show(CARD, "patient-view", TODAY)
    assert card["summary"].startswith(f"RFA {months} ago")
    text = (card["summary"] + card["detail"]).lower()
    assert "most recurrences" not in text and "most within" not in text and "within a year" not in text


def test_between_6_and_12_months_the_summary_gives_the_12_month_figure():
    card = Chart().hfs().rfa("2024-09-20").show(CARD, "patient-view", TODAY)
    assert card["summary"] == "RFA 8 months ago: spasm had returned in 71.9 % of the study cohort by 12 months"
    assert "Beyond the study's follow-up" not in card["detail"]


def test_the_order_card_never_says_most_recurrences_come_within_a_year():
    card = Chart().hfs().order(RFA).show(CARD, "order-sign", TODAY)
    assert "most recurrences" not in (card["summary"] + card["detail"]).lower()
    assert "recurrences were still increasing when follow-up ended" in card["detail"]


# -- EVIDENCE.md "Reading the record" -----------------------------------------------------------------
def test_a_future_dated_grade_is_not_used_and_is_listed_with_the_reason():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2026-01-15", valueInteger=4)
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    used = detail[detail.index("### Patient data used") : detail.index("### Recorded but unreadable")]
    assert "House-Brackmann" not in used  # never used
    assert "grade after the RFA: not used: dated after today (2026-01-15)." in lead(detail)
    unusable = detail[detail.index("### Recorded but unreadable") :]
    assert (
        "- **Facial paralysis (House-Brackmann) grade after the RFA (X2)**: not used: dated after today (2026-01-15)"
        in unusable
    )
    assert detail.count("dated after today") == 2  # the lead's value and its input line, nothing else


def test_a_newer_unreadable_grade_is_named_and_the_older_readable_one_is_used():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2025-02-04", valueString="III")
    chart.local_observation("house-brackmann-grade", "2025-03-10", valueString="quite weak")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert (
        "- **Facial paralysis (House-Brackmann) grade after the RFA (X2)**: III (= 3), recorded 2025-02-04; "
        "a newer value from 2025-03-10 could not be read; the value from 2025-02-04 was used" in detail
    )
    assert detail.count("could not be read") == 1  # said once


def test_a_grade_timed_after_the_rfa_on_the_same_day_is_the_post_rfa_grade():
    chart = Chart().hfs().rfa("2025-02-03T09:00:00Z", "2025-02-03T09:40:00Z")
    chart.local_observation("house-brackmann-grade", "2025-02-03T16:00:00+02:00", valueString="IV")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert "grade after the RFA (X2)**: IV (= 4), recorded 2025-02-03" in detail


# -- issue 9: a card read at the point of care --------------------------------------------------------
POINT_OF_CARE = {
    "ordered": (lambda: Chart().hfs().order(RFA), "order-select"),
    "after-4-months": (lambda: Chart.from_bundle("hfs_after_rfa.json"), "patient-view"),
    "after-15-months": (lambda: Chart().hfs().rfa("2024-03-01"), "patient-view"),
    "with-site-model": (lambda: Chart.from_bundle("hfs_after_rfa.json"), "patient-view"),
}


@pytest.mark.parametrize("scenario", sorted(POINT_OF_CARE))
def test_summary_and_lead_are_short_and_plain_and_name_no_fhir_element(scenario):
    make, hook = POINT_OF_CARE[scenario]
    card = make().show(CARD, hook, TODAY, overlay=SITE if scenario == "with-site-model" else None)
    assert len(card["summary"]) < 140
    assert "/" not in card["summary"].replace("n/a", "")  # no "20.2/36.4/71.9 % at 3/6/12 months"
    assert len(lead(card["detail"]).split()) <= 120
    for fhir_word in ("performedPeriod", "Patient.gender", "Observation of", "Procedure's", "HFS"):
        assert fhir_word not in card["summary"] + card["detail"]
