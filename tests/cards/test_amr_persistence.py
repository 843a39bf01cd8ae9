"""Card B: persistent abnormal muscle response (AMR) during microvascular decompression.

Figures are those of EVIDENCE.md section B: Zhou 2025 (Dalian, n = 157): AMR disappeared
in 78.3 %, persisted in 21.7 %; AUC 0.931 with about 5 events per predictor. Thirumala
2020 meta-analysis (26 studies, 7479 patients): spasm persists when the AMR persisted in
47.8 % (33-63) at discharge, 40.8 % (23-61) at 3 months, 24.4 % (13-41) at 1 year; when it
resolved in 7.3 %, 4.2 %, 4.0 %.
"""

import re

from support import evidence
from support.chart import CARBAMAZEPINE, LOCAL, MVD, RFA, Chart

CARD = "amr-persistence"
TODAY = "2025-06-01"


def lead(detail: str) -> str:
    """The detail before its first heading: the patient's situation and the figure that matters."""
    return detail.split("\n### ")[0]


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
    # issue 17: an order sent without text is named by the concepts file, never by a bare code
    assert '- **Order being selected**: "Release Facial Nerve, Open Approach", code 00NM0ZZ' in used
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
    detail = Chart().hfs().order(MVD).evidence(CARD, "order-sign", TODAY)  # the evidence page
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
    assert 'recorded as free text ("Carbamazepine' in detail
    assert "matched by text" not in detail


def test_without_an_onset_date_disease_duration_is_missing_and_the_recorded_date_is_not_used():
    chart = Chart().hfs(onset=None, recorded="2020-01-01").order(MVD)
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert (
        # issue 9: no FHIR names on the card ("the hemifacial spasm Condition has no usable onset date")
        "- **Disease duration (from hemifacial spasm onset)**: not recorded (no onset date of hemifacial spasm "
        "is recorded (the date it was entered in the record is not taken as the onset)); not assumed" in detail
    )


def test_before_mvd_the_card_never_says_a_factor_makes_persistence_more_likely():
    # EVIDENCE.md B: the source names the factors as "associated with" persistence, without
    # direction or size ("A persistent AMR at the end of MVD is more likely with the factors below")
    chart = Chart().hfs(onset="2019-05-01").medication(CARBAMAZEPINE, authored="2019-06-01").order(MVD)
    detail = chart.show(CARD, "order-select", TODAY)["detail"]
    page = chart.evidence(CARD, "order-select", TODAY)  # the factors section is on the evidence page
    for text in (detail, page):
        assert "more likely with" not in text and "increases" not in text
    assert "associated with persistence, without their direction or size" in lead(detail)
    assert "does not tell whether persistence is more or less likely for this patient" in page


def test_before_mvd_the_lead_gives_the_cohort_rate_and_this_patients_factors_known_and_unknown():
    chart = Chart().hfs(onset="2019-05-01").medication(CARBAMAZEPINE, authored="2019-06-01").order(MVD)
    first = lead(chart.show(CARD, "order-select", TODAY)["detail"])
    assert "persisted at the end of MVD in **21.7 %**" in first and "a cohort of 157 patients" in first
    assert "disease duration 6.1 years" in first and "carbamazepine yes" in first
    assert "spasm severity (Cohen grade) not recorded" in first and "responsible vessels not recorded" in first
    assert "(2 of 5 recorded; two more are only known during surgery)" in first
    assert len(first.split()) <= 130


def test_before_mvd_the_card_says_the_intended_use_needs_a_probability_the_publication_does_not_give():
    detail = Chart().hfs().order(MVD).show(CARD, "order-sign", TODAY)["detail"]
    assert "needs a predicted probability that the publication does not give" in lead(detail)
    assert "a model learned at this site could supply it" in lead(detail)


def test_an_mvd_order_without_hfs_raises_no_card():
    assert Chart().hypertension().order(MVD).show(CARD, "order-select", TODAY) is None


def test_an_rfa_order_is_not_an_mvd_order():
    assert Chart().hfs().order(RFA).show(CARD, "order-select", TODAY) is None


# -- after MVD with an intraoperative AMR result ---------------------------------------------------
def test_after_mvd_with_a_persistent_amr_the_meta_analysis_figures_and_follow_up_advice_are_given():
    chart = Chart.from_bundle("hfs_after_mvd_amr.json")
    card = chart.show(CARD, "patient-view", "2025-03-01")
    page = chart.evidence(CARD, "patient-view", "2025-03-01")  # the table, advice and sources
    # EVIDENCE.md B: 3-12 months after the MVD (here about 4) the 1-year figure leads
    assert card["summary"] == (
        "AMR persisted at MVD: spasm still present at 1 year in 24.4 % (meta-analysis); relief can take months"
    )
    detail = card["detail"]
    assert "hemifacial spasm persisted at 1 year in 24.4 % of patients whose AMR persisted" in lead(detail)
    assert "26 studies, 7479 patients" in lead(detail)
    # EVIDENCE.md B: "47.8 % (95 % CI 33-63) at discharge, 40.8 % (23-61) at 3 months, 24.4 % (13-41) at 1 year"
    assert "| Discharge | 47.8 % (33-63) |" in page
    assert "| 3 months | 40.8 % (23-61) |" in page
    assert "| 1 year | 24.4 % (13-41) |" in page
    assert "26 studies, 7479 patients" in page
    assert "can take about 3 months" in page
    assert "no improvement after 6-12 months, consider a second operation" in page
    assert "Thirumala" in page and "https://doi.org/10.1093/neuros/nyaa069" in page
    # EVIDENCE.md B: after MVD the figures are Thirumala's, so is the card's source (was Zhou 2025)
    assert card["source"]["url"] == "https://doi.org/10.1093/neuros/nyaa069"
    assert any(link["url"] == "https://doi.org/10.1093/neuros/nyaa069" for link in card["links"])
    assert "https://doi.org/10.3171/2025.6.FOCUS25327" in page


def test_after_mvd_with_a_resolved_amr_the_resolved_figures_lead():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-01-20", valueString="resolved")
    card = chart.show(CARD, "patient-view", TODAY)
    page = chart.evidence(CARD, "patient-view", TODAY)
    # EVIDENCE.md B: 3-12 months after the MVD (here 4) the 1-year figure leads
    assert card["summary"] == "AMR resolved at MVD: spasm still present at 1 year in 4.0 % (meta-analysis)"
    assert "persisted in 7.3 % at discharge, 4.2 % at 3 months and 4.0 % at 1 year" in page
    # EVIDENCE.md B: the follow-up advice is for a persisted AMR only (neither on the card nor its page)
    for text in (card["detail"], page):
        assert "AMR persisted: chance" not in text
        assert "### Follow-up" not in text and "second operation" not in text


def amr_chart(mvd_day: str, result: str) -> Chart:
    chart = Chart().hfs().mvd(f"{mvd_day}T08:00:00Z", f"{mvd_day}T11:00:00Z")
    return chart.local_observation("amr-intraop-result", f"{mvd_day}T10:30:00Z", valueString=result)


def test_six_weeks_after_mvd_with_a_persisted_amr_the_discharge_and_three_month_figures_lead():
    card = amr_chart("2025-04-20", "persisted").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "AMR persisted at MVD: spasm persisted in 47.8 % at discharge, 40.8 % at 3 months (meta-analysis)"
    )
    first = lead(card["detail"])
    assert "at discharge in 47.8 % and at 3 months in 40.8 % of patients whose AMR persisted" in first
    assert "against 7.3 % and 4.2 % when it resolved" in first
    page = amr_chart("2025-04-20", "persisted").evidence(CARD, "patient-view", TODAY)
    assert "### Follow-up" in page and "can take about 3 months" in page


def test_six_weeks_after_mvd_with_a_resolved_amr_the_discharge_and_three_month_figures_lead():
    card = amr_chart("2025-04-20", "resolved").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "AMR resolved at MVD: spasm persisted in 7.3 % at discharge, 4.2 % at 3 months (meta-analysis)"
    )
    page = amr_chart("2025-04-20", "resolved").evidence(CARD, "patient-view", TODAY)
    for text in (card["detail"], page):  # EVIDENCE.md B: the follow-up advice is for a persisted AMR only
        assert "### Follow-up" not in text and "second operation" not in text


def test_fifteen_months_after_mvd_the_one_year_figure_is_the_last_published_point():
    card = amr_chart("2024-03-01", "persisted").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "AMR persisted at MVD: spasm still present at 1 year (last published point) in 24.4 % (meta-analysis)"
    )
    first = lead(card["detail"])
    assert "at 1 year, the last time point published, in 24.4 %" in first
    assert "Nothing is published for later times." in first


def test_after_mvd_every_time_point_cites_thirumala_2020_as_the_source():
    for mvd_day in ("2025-04-20", "2025-01-20", "2024-03-01"):
        card = amr_chart(mvd_day, "resolved").show(CARD, "patient-view", TODAY)
        assert card["source"]["url"] == "https://doi.org/10.1093/neuros/nyaa069", mvd_day
        assert card["source"]["label"].startswith("Thirumala PD et al., Neurosurgery 2020")


def strength(detail: str) -> str:
    return detail.split("**Strength of evidence:**", 1)[1].split("\n", 1)[0]


def test_the_strength_line_names_the_source_of_the_figures_the_card_shows():
    """Before MVD the figures are Zhou's cohort; after MVD they are Thirumala's pooled ones."""
    before = Chart().hfs(onset="2019-05-01").order(MVD).show(CARD, "order-select", TODAY)
    assert "Zhou 2025" in strength(before["detail"]) and "Thirumala" not in strength(before["detail"])
    for mvd_day in ("2025-04-20", "2025-01-20", "2024-03-01"):
        line = strength(amr_chart(mvd_day, "persisted").show(CARD, "patient-view", TODAY)["detail"])
        assert line.strip().startswith("Thirumala 2020: meta-analysis of"), mvd_day
        assert "Zhou" not in line and "AUC" not in line, mvd_day


# EVIDENCE.md "Reading the record": the newest value unreadable -> say that a newer value
# exists and could not be read, and which older value was used (with its date).
def test_a_newer_unreadable_cohen_grade_is_named_with_the_older_grade_used():
    chart = Chart().hfs(onset="2019-05-01").order(MVD)
    chart.local_observation("cohen-spasm-grade", "2025-03-01", valueInteger=3)
    chart.local_observation("cohen-spasm-grade", "2025-05-01", valueString="severe-ish")
    used = section(chart.show(CARD, "order-select", TODAY)["detail"], "### Patient data used")
    line = next(x for x in used.splitlines() if x.startswith("- **Preoperative symptom severity"))
    assert "3, recorded 2025-03-01" in line and "newer" in line and "2025-05-01" in line


def test_an_amr_result_that_cannot_be_read_shows_both_rows_and_says_so():
    chart = Chart().hfs().mvd("2025-01-20T08:00:00Z", "2025-01-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-01-20", valueString="equivocal")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card is not None
    assert "recorded but unreadable" in card["summary"]
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert "AMR persisted 47.8 % / 40.8 % / 24.4 %; AMR resolved 7.3 % / 4.2 % / 4.0 %" in page
    assert "- **Intraoperative AMR result at the end of MVD**: recorded but unreadable" in card["detail"]


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


# issue 9: short plain summary, a lead of about 120 words, no FHIR or code-system names.
FHIR_WORDS = re.compile(
    r"\b(Condition|Observation|Procedure|MedicationRequest|MedicationStatement|ServiceRequest|Patient\.\w+"
    r"|performedPeriod|performedDateTime|clinicalStatus|onsetDateTime|effectiveDateTime|SNOMED|LOINC|RxNorm|ICD-10)\b"
)


def test_every_card_b_situation_after_mvd_has_a_short_summary_and_lead_and_no_fhir_words():
    for mvd_day in ("2025-04-20", "2025-01-20", "2024-03-01"):
        for result in ("persisted", "resolved", "equivocal"):
            card = amr_chart(mvd_day, result).show(CARD, "patient-view", TODAY)
            assert len(card["summary"]) < 120, (mvd_day, result)
            assert len(lead(card["detail"]).split()) <= 120, (mvd_day, result)
            shown = card["summary"] + card["detail"].split("### Sources")[0]
            assert FHIR_WORDS.findall(shown) == [], (mvd_day, result)


def test_the_mvd_order_card_names_no_fhir_resource_type():
    chart = Chart().hfs(onset="2019-05-01").medication(CARBAMAZEPINE, authored="2019-06-01").order(MVD)
    card = chart.show(CARD, "order-select", TODAY)
    assert len(card["summary"]) < 120 and len(lead(card["detail"]).split()) <= 130
    shown = card["summary"] + card["detail"].split("### Sources")[0]
    assert FHIR_WORDS.findall(shown) == []


def test_an_unreadable_amr_result_is_described_without_fhir_words():
    card = amr_chart("2025-04-20", "equivocal").show(CARD, "patient-view", TODAY)
    assert FHIR_WORDS.findall(card["detail"].split("### Sources")[0]) == []


def test_one_recorded_factor_is_said_in_the_singular():
    chart = Chart().hfs(onset="2019-05-01").order(MVD)
    card = chart.show(CARD, "order-select", TODAY)
    assert card["summary"].endswith("1 of the 5 preoperative factors is recorded"), card["summary"]
