"""Card D: microwave ablation (MWA) + vertebral augmentation for painful spinal metastases.

Figures are those of EVIDENCE.md section D (AJNR 2022, 91 patients / 140 vertebrae):
median VAS 6 / 5 / 4 / 3 / 3 / 3; mean daily morphine 77.8 / 34.5 / 28.7 / 24.6 / 21.7 /
21.0 mg; local control 94.8 %; cement leakage 30 % (42/140); grade 3 neural injury 1.1 %.
"""

import pytest
from support import evidence
from support.card_d_charts import T12
from support.chart import AUGMENTATION_CPT, BONE_METASTASIS, LOCAL, MWA_THORACIC, PAIN, RFA, Chart

CARD = "spinal-metastasis-mwa"
TODAY = "2025-06-01"


def lead(detail: str) -> str:
    """The detail before its first heading: the patient's situation and the figure that matters."""
    return detail.split("\n### ", 1)[0]


def cohort_outcomes_shown(detail: str) -> None:
    rows = [
        "| Before | 6 | 77.8 mg |",
        "| 3 days | 5 | 34.5 mg |",
        "| 1 week | 4 | 28.7 mg |",
        "| 1 month | 3 | 24.6 mg |",
        "| 3 months | 3 | 21.7 mg |",
        "| 6 months | 3 | 21.0 mg |",
    ]
    for row in rows:
        assert row in detail
    for figure in ("77.8", "34.5", "28.7", "24.6", "21.7", "21.0", "94.8", "42", "140", "1.1", "91"):
        assert evidence.published("D", figure)
    assert "Local tumour control: 94.8 % of treated vertebrae at 6 months" in detail
    assert "Asymptomatic cement leakage in 30 % of treated vertebrae (42/140)" in detail
    assert "Grade 3 neural injury in 1.1 % (1 patient), who recovered" in detail
    assert "Cohort outcomes of 91 patients / 140 vertebrae, not a prediction for this patient" in detail


def test_mwa_ordered_shows_cohort_outcomes_next_to_the_patients_pain_and_morphine():
    chart = Chart.from_bundle("vertebral_metastasis_pain.json").order(MWA_THORACIC)
    card = chart.show(CARD, "order-select", TODAY)
    # issue 9: the cohort figure that matters next to this patient's own pain, in plain words
    assert card["summary"] == (
        "MWA + augmentation: cohort median pain fell from 6 to 3/10 by 1 month; this patient's latest pain 7/10"
    )
    detail = card["detail"]
    # issue 15: the bundle's metastasis has no body site: "site not recorded", never "vertebral"
    assert lead(detail).startswith(
        "Microwave ablation (MWA) of a vertebra is being ordered for a bone metastasis; on record: **site not "
        "recorded, active**. This patient's latest pain score: **7/10**; daily morphine: **60 mg/d**."
    )
    assert "vertebral metastasis" not in detail
    assert "**cohort outcomes**, not a prediction for this patient" in lead(detail)
    assert "Local tumour control was 94.8 % of treated vertebrae at 6 months" in lead(detail)
    # issue 9: the outcome table, complications and the patient's values beside them are on the evidence page
    page = Chart.from_bundle("vertebral_metastasis_pain.json").order(MWA_THORACIC).evidence(CARD, "order-select", TODAY)
    cohort_outcomes_shown(page)
    assert "This patient: latest pain score 7/10; daily morphine dose 60 mg/d" in page
    assert "- **Latest pain score (0-10)**: 7/10, recorded 2025-05-25" in detail
    assert "- **Daily morphine dose**: 60 mg/d, recorded 2025-05-25" in detail
    assert "- **Bone metastasis, site**: site not recorded, active, onset 2024-12-01" in detail
    assert card["source"]["url"] == "https://doi.org/10.3174/ajnr.A7415"
    assert "not a prediction model" in detail  # the card's one line of evidence strength


def test_a_painful_vertebral_metastasis_raises_the_card_on_opening_the_chart():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01", bodySite=[T12]).pain("2025-05-25", 7)
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "Painful vertebral metastasis (pain 7/10): after MWA + augmentation, cohort median pain fell from 6 to 3/10"
    )
    cohort_outcomes_shown(chart.evidence(CARD, "patient-view", TODAY))


def test_a_painful_bone_metastasis_without_a_site_is_not_called_vertebral():
    card = Chart.from_bundle("vertebral_metastasis_pain.json").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "Painful bone metastasis, site not recorded (pain 7/10): if spinal, cohort pain fell 6 to 3/10 after ablation"
    )
    assert "vertebral metastasis" not in card["detail"]
    cohort_outcomes_shown(Chart.from_bundle("vertebral_metastasis_pain.json").evidence(CARD, "patient-view", TODAY))


def test_pain_below_four_does_not_raise_the_card_even_if_it_was_higher_before():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01").pain("2025-05-01", 8).pain("2025-05-28", 3)
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_pain_of_exactly_four_raises_the_card():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01").pain("2025-05-28", 4)
    assert chart.show(CARD, "patient-view", TODAY) is not None


def test_pain_scores_older_than_the_look_back_window_do_not_count():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01").pain("2025-04-01", 9)
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_pain_without_a_vertebral_metastasis_raises_no_card():
    assert Chart().pain("2025-05-28", 9).show(CARD, "patient-view", TODAY) is None


def test_a_resolved_metastasis_record_does_not_count_as_a_painful_metastasis():
    chart = Chart().condition(BONE_METASTASIS, onset="2020-01-01", status="resolved").pain("2025-05-28", 8)
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_missing_morphine_and_pain_are_listed_when_the_procedure_is_ordered():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01").order(MWA_THORACIC)
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert "- **Daily morphine dose**: not recorded" in detail
    assert "- **Latest pain score (0-10)**: not recorded" in detail
    page = chart.evidence(CARD, "order-sign", TODAY)
    assert "This patient: latest pain score not recorded; daily morphine dose not recorded" in page


def test_an_unreadable_pain_score_is_reported_not_used():
    chart = Chart().condition(BONE_METASTASIS).order(MWA_THORACIC)
    chart.quantity(("http://loinc.org", "72514-3"), "2025-05-28", 14, "{score}")  # outside 0-10
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert (
        "- **Latest pain score (0-10)**: recorded but unreadable (the value is outside the valid range 0-10)" in detail
    )


def test_vertebral_augmentation_for_a_metastasis_raises_the_card():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-12-01").order(AUGMENTATION_CPT)
    card = chart.show(CARD, "order-select", TODAY)
    assert card["summary"].startswith("Vertebral augmentation for metastasis")


def test_vertebral_augmentation_without_a_metastasis_is_not_this_cohort():
    assert Chart().order(AUGMENTATION_CPT).show(CARD, "order-select", TODAY) is None


def test_an_unrelated_order_for_a_patient_with_metastasis_raises_no_card():
    chart = Chart().condition(BONE_METASTASIS).order(RFA)
    assert chart.show(CARD, "order-select", TODAY) is None


def test_the_card_says_when_the_observations_could_not_be_retrieved():
    chart = Chart().condition(BONE_METASTASIS).order(MWA_THORACIC)
    detail = chart.show(CARD, "order-sign", TODAY, unavailable={"observations": "the FHIR server did not answer"})[
        "detail"
    ]
    assert "### Data that could not be retrieved\n\n- observations: the FHIR server did not answer" in detail


def test_morphine_in_another_unit_is_converted_and_both_are_shown():
    chart = Chart().condition(BONE_METASTASIS).order(MWA_THORACIC)
    chart.quantity((LOCAL, "daily-morphine-dose"), "2025-05-28", 0.09, "g/d")
    assert (
        "- **Daily morphine dose**: 0.09 g/d (= 90 mg/d), recorded 2025-05-28"
        in chart.show(CARD, "order-sign", TODAY)["detail"]
    )


# -- EVIDENCE.md "Reading the record": the newest pain score cannot be read ----------------------------
def metastasis_with_pain(older: float, newer: dict) -> Chart:
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01", bodySite=[T12]).pain("2025-05-10", older)
    return chart.observation(PAIN, "2025-05-28", **newer)


def test_on_opening_the_chart_a_newer_unreadable_pain_score_keeps_the_card_from_firing_on_an_older_one():
    # EVIDENCE.md "Reading the record": firing depends on the score (>= 4/10), and the newest
    # one could not be read: the card does not fire on the older 6/10 (issue 15)
    assert metastasis_with_pain(6, {"valueString": "severe"}).show(CARD, "patient-view", TODAY) is None
    no_site = Chart().condition(BONE_METASTASIS, onset="2024-01-01").pain("2025-05-10", 8)
    assert no_site.show(CARD, "patient-view", TODAY) is not None
    no_site.observation(PAIN, "2025-05-28", valueString="severe")
    assert no_site.show(CARD, "patient-view", TODAY) is None


def test_at_ordering_the_card_says_a_newer_pain_score_could_not_be_read():
    chart = metastasis_with_pain(6, {"valueQuantity": {"value": 14, "unit": "{score}"}}).order(MWA_THORACIC)
    card = chart.show(CARD, "order-select", TODAY)
    assert card["summary"] == (
        "MWA + augmentation: cohort median pain fell from 6 to 3/10 by 1 month; this patient's newest pain score "
        "unreadable"
    )
    assert (
        "recorded 2025-05-10; a newer value from 2025-05-28 could not be read; the value from 2025-05-10 was used"
        in card["detail"]
    )


def test_a_newer_unreadable_score_after_an_older_one_below_four_raises_no_card_on_opening_the_chart():
    # firing depends on the score: the newest readable one is below 4, so the card does not fire
    assert metastasis_with_pain(3, {"valueString": "severe"}).show(CARD, "patient-view", TODAY) is None


def test_only_an_unreadable_pain_score_raises_no_card_on_opening_the_chart():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01").observation(PAIN, "2025-05-28", valueString="bad")
    assert chart.show(CARD, "patient-view", TODAY) is None
    card = chart.order(MWA_THORACIC).show(CARD, "order-sign", TODAY)
    assert card["summary"].endswith("this patient's pain score not usable")
    assert "- **Latest pain score (0-10)**: recorded but unreadable" in card["detail"]


def test_an_unreadable_pain_score_older_than_30_days_is_not_this_months_pain():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01").observation(PAIN, "2025-03-01", valueString="bad")
    card = chart.order(MWA_THORACIC).show(CARD, "order-sign", TODAY)
    assert card["summary"].endswith("no pain score in the last 30 days")
    assert "- **Latest pain score (0-10)**: not recorded" in card["detail"]


def test_a_newer_unreadable_morphine_dose_is_named_too():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01").pain("2025-05-28", 7).order(MWA_THORACIC)
    chart.quantity((LOCAL, "daily-morphine-dose"), "2025-05-10", 60, "mg/d")
    chart.quantity((LOCAL, "daily-morphine-dose"), "2025-05-20", 60, "mL")
    detail = chart.show(CARD, "order-sign", TODAY)["detail"]
    assert (
        "- **Daily morphine dose**: 60 mg/d, recorded 2025-05-10; a newer value from 2025-05-20 could not be read; "
        "the value from 2025-05-10 was used" in detail
    )


# -- EVIDENCE.md "Reading the record": a value dated in the future is never used -----------------------
def test_a_pain_score_dated_in_the_future_does_not_raise_the_card_and_is_listed_as_not_used():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01").pain("2025-06-20", 8)
    assert chart.show(CARD, "patient-view", TODAY) is None
    detail = chart.order(MWA_THORACIC).show(CARD, "order-sign", TODAY)["detail"]
    assert "This patient's latest pain score: **not used: dated after today (2025-06-20)**" in lead(detail)
    assert "- **Latest pain score (0-10)**: not used: dated after today (2025-06-20)" in detail
    assert detail.count("dated after today") == 2  # the lead's value and its input line, nothing else
    assert "8/10" not in detail


def test_a_future_pain_score_does_not_hide_the_latest_real_one():
    chart = Chart().condition(BONE_METASTASIS, onset="2024-01-01", bodySite=[T12]).pain("2025-05-28", 7)
    chart.pain("2025-07-01", 2)
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"].startswith("Painful vertebral metastasis (pain 7/10)")
    assert (
        "- **Latest pain score (0-10)**: 7/10, recorded 2025-05-28; not used: dated after today (2025-07-01)"
        in card["detail"]
    )
    assert "2/10" not in card["detail"]


# -- issue 9: a card read at the point of care --------------------------------------------------------
POINT_OF_CARE = {
    "mwa-ordered": (lambda: Chart.from_bundle("vertebral_metastasis_pain.json").order(MWA_THORACIC), "order-select"),
    "augmentation-ordered": (
        lambda: Chart().condition(BONE_METASTASIS, onset="2024-12-01").order(AUGMENTATION_CPT),
        "order-sign",
    ),
    "painful-metastasis": (lambda: Chart.from_bundle("vertebral_metastasis_pain.json"), "patient-view"),
    "newer-unreadable": (lambda: metastasis_with_pain(6, {"valueString": "severe"}).order(MWA_THORACIC), "order-sign"),
}


@pytest.mark.parametrize("scenario", sorted(POINT_OF_CARE))
def test_summary_and_lead_are_short_and_plain_and_name_no_fhir_element(scenario):
    make, hook = POINT_OF_CARE[scenario]
    card = make().show(CARD, hook, TODAY)
    assert len(card["summary"]) < 140
    assert " -> " not in card["summary"]
    assert len(lead(card["detail"]).split()) <= 120
    assert "cohort" in card["summary"]  # labelled as cohort outcomes
    before_inputs = card["detail"][: card["detail"].index("### Patient data used")]
    for fhir_word in ("Condition", "Observation", "ICD-10", "C79.51", "LOINC"):
        assert fhir_word not in card["summary"] + before_inputs
    assert "ICD-10" not in card["detail"]
