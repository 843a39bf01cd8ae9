"""Card B: persistent abnormal muscle response (AMR) during microvascular decompression.

Figures are those of EVIDENCE.md section B: Zhou 2025 (Dalian, n = 157): AMR disappeared
in 78.3 %, persisted in 21.7 %; AUC 0.931 with about 5 events per predictor. Thirumala
2020 meta-analysis (26 studies, 7479 patients): spasm persists when the AMR persisted in
47.8 % (33-63) at discharge, 40.8 % (23-61) at 3 months, 24.4 % (13-41) at 1 year; when it
resolved in 7.3 %, 4.2 %, 4.0 %.
"""

from support import evidence
from support.chart import CARBAMAZEPINE, LOCAL, MVD, RFA, Chart

CARD = "amr-persistence"
TODAY = "2025-06-01"


def section(detail: str, heading: str) -> str:
    start = detail.index(heading)
    end = detail.find("\n### ", start + 1)
    return detail[start : end if end > 0 else None]


# -- before MVD ----------------------------------------------------------------------------------
def test_an_mvd_order_for_a_patient_with_six_years_of_hfs_on_carbamazepine_lists_both_factors():
    chart = Chart().hfs(onset="2019-05-01").medication(CARBAMAZEPINE, authored="2019-06-01").order(MVD)
    card = chart.show(CARD, "order-select", TODAY)
    assert card["summary"] == (
        "Before MVD: AMR persisted in 21.7 % of a cohort (n=157); 2 of the 5 preoperative factors are recorded"
    )
    detail = card["detail"]
    used = section(detail, "### Patient data used")
    assert "- **Order being selected**: ServiceRequest, code 00NM0ZZ" in used
    assert "- **Disease duration (from hemifacial spasm onset)**: 6.1 years, onset 2019-05-01" in used
    assert "- **Carbamazepine use**: yes, dated 2019-06-01" in used
    missing = section(detail, "### Patient data missing")
    for label in (
        "Preoperative symptom severity (Cohen spasm grade 0-4)",
        "Number of responsible vessels",
        "Preoperative AMR amplitude",
    ):
        assert f"- **{label}**: not recorded" in missing
    for label in ("Cerebellar retraction depth", "Degree of responsible-vessel displacement"):
        assert f"- **{label}**: not known before surgery" in missing


def test_before_mvd_the_card_gives_the_cohort_rate_auc_and_its_overfitting_caveat():
    detail = Chart().hfs().order(MVD).show(CARD, "order-sign", TODAY)["detail"]
    # EVIDENCE.md B: "AMR disappeared during MVD in 78.3 % (so persisted in 21.7 %, about 34 patients)"
    for figure in ("78.3", "21.7", "34", "157", "0.931"):
        assert evidence.published("B", figure) and figure in detail
    assert "high risk of overfitting" in detail and "about 5 events per predictor" in detail
    assert "coefficients, units and cut-offs were **not published**" in detail
    assert "No patient-specific probability of a persistent AMR is shown" in detail
    assert "explore further or transpose" in detail
    assert "Dalian" in detail and "Aug 2019 - Aug 2024" in detail


def test_a_full_preoperative_profile_lists_every_value_with_unit_and_date():
    card = Chart.from_bundle("hfs_before_mvd.json").order(MVD).show(CARD, "order-sign", TODAY)
    assert "5 of the 5 preoperative factors are recorded" in card["summary"]
    used = section(card["detail"], "### Patient data used")
    assert "- **Preoperative symptom severity (Cohen spasm grade 0-4)**: 3, recorded 2025-04-02" in used
    assert "- **Number of responsible vessels**: 2, recorded 2025-04-20" in used
    # 0.35 mV converted to the concept's unit, both shown
    assert "- **Preoperative AMR amplitude**: 0.35 mV (= 350 uV), recorded 2025-05-06" in used
    assert "- **Disease duration (from hemifacial spasm onset)**: 6.3 years, onset 2019-03-01" in used
    assert "- **Carbamazepine use**: yes, dated 2020-06-01" in used


def test_carbamazepine_matched_only_by_its_name_is_marked_as_a_text_match():
    chart = Chart().hfs().medication(text="Carbamazepine 200 mg tablet").order(MVD)
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert "- **Carbamazepine use**: yes" in detail
    assert 'matched by text only ("Carbamazepine' in detail


def test_without_an_onset_date_disease_duration_is_missing_and_the_recorded_date_is_not_used():
    chart = Chart().hfs(onset=None, recorded="2020-01-01").order(MVD)
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert (
        "- **Disease duration (from hemifacial spasm onset)**: not recorded (the hemifacial spasm Condition "
        "has no usable onset date (its recorded date is not taken as the onset)); not assumed" in detail
    )


def test_an_mvd_order_without_hfs_raises_no_card():
    assert Chart().hypertension().order(MVD).show(CARD, "order-select", TODAY) is None


def test_an_rfa_order_is_not_an_mvd_order():
    assert Chart().hfs().order(RFA).show(CARD, "order-select", TODAY) is None


# -- after MVD with an intraoperative AMR result ---------------------------------------------------
def test_after_mvd_with_a_persistent_amr_the_meta_analysis_figures_and_follow_up_advice_are_given():
    card = Chart.from_bundle("hfs_after_mvd_amr.json").show(CARD, "patient-view", "2025-03-01")
    assert card["summary"] == (
        "AMR persisted at MVD: HFS persisted in 40.8 % at 3 months, 24.4 % at 1 year (meta-analysis)"
    )
    detail = card["detail"]
    # EVIDENCE.md B: "47.8 % (95 % CI 33-63) at discharge, 40.8 % (23-61) at 3 months, 24.4 % (13-41) at 1 year"
    assert "| Discharge | 47.8 % (33-63) |" in detail
    assert "| 3 months | 40.8 % (23-61) |" in detail
    assert "| 1 year | 24.4 % (13-41) |" in detail
    assert "26 studies, 7479 patients" in detail
    assert "can take about 3 months" in detail
    assert "no improvement after 6-12 months, consider a second operation" in detail
    assert "- **Intraoperative AMR result at the end of MVD**: persisted, recorded 2024-11-05" in detail
    assert "Thirumala" in detail and "https://doi.org/10.1093/neuros/nyaa069" in detail
    assert card["source"]["url"] == "https://doi.org/10.3171/2025.6.FOCUS25327"


def test_after_mvd_with_a_resolved_amr_the_resolved_figures_lead():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-01-20", valueString="resolved")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "AMR resolved at MVD: HFS persisted in 4.2 % at 3 months, 4.0 % at 1 year (meta-analysis)"
    )
    assert "persisted in 7.3 % at discharge, 4.2 % at 3 months and 4.0 % at 1 year" in card["detail"]
    assert "AMR persisted: chance" not in card["detail"]


def test_an_amr_result_that_cannot_be_read_shows_both_rows_and_says_so():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-01-20", valueString="equivocal")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card is not None
    assert "recorded but unreadable" in card["summary"]
    detail = card["detail"]
    assert "AMR persisted 47.8 % / 40.8 % / 24.4 %; AMR resolved 7.3 % / 4.2 % / 4.0 %" in detail
    assert "- **Intraoperative AMR result at the end of MVD**: recorded but unreadable" in detail


def test_an_amr_result_from_before_the_latest_mvd_is_not_taken_for_it():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2023-06-01", valueString="persisted")
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_after_mvd_without_an_amr_result_this_card_stays_silent():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_the_amr_follow_up_card_ends_two_years_after_the_mvd():
    chart = Chart().hfs().mvd("2022-01-20")
    chart.local_observation(
        "amr-intraop-result",
        "2022-01-20",
        valueCodeableConcept={"coding": [{"system": LOCAL, "code": "amr-persisted"}]},
    )
    assert chart.show(CARD, "patient-view", TODAY) is None
    assert chart.show(CARD, "patient-view", "2023-06-01") is not None
