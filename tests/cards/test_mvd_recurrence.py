"""Card E: recurrence after microvascular decompression (MVD) and revision MVD.

Figures are those of EVIDENCE.md section E: up to 10 % recurrence, 86 % of recurrences
within 2 years, about 1 % after 2 recurrence-free years (Payner & Tew 1996); delayed
recurrence 1.0 / 1.7 / 2.9 % at 1 / 2 / 5 years, hypertension p = 0.036 (Chang 2012, 587
patients); revision MVD (Park 2019): 23 revisions among > 2500, causes 8 / 12 / 3,
19 excellent immediately, 20 spasm-free at 1 year, 3 persistent.
"""

import re

from support import evidence
from support.chart import MVD, Chart

from cds_service.clinical.render import render

CARD = "mvd-recurrence"
TODAY = "2025-06-01"


# EVIDENCE.md E (time points): under 1 year the Chang 1-year figure leads; Payner's "about 1 %
# after 2 recurrence-free years" only when the record shows no HFS since the MVD. (This test
# used an HFS entry still active from before the MVD, which E now reads as "status unclear":
# the spasm-free scenario records the HFS as resolved.)
def test_seven_months_after_mvd_without_spasm_since_the_one_year_figure_leads():
    chart = (
        Chart()
        .hfs(onset="2020-01-01", status="resolved")
        .hypertension(onset="2011-03-01")
        .mvd("2024-10-02T08:00:00Z", "2024-10-02T11:00:00Z")
    )
    card = chart.show(CARD, "patient-view", TODAY)
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert (
        card["summary"]
        == "MVD 7 months ago, no spasm recorded since: recurrence by 1 year in 1.0 % of a cohort after successful MVD"
    )
    detail = card["detail"]
    lead = detail.split("\n\n")[0]
    assert "**1.0 %** had a delayed recurrence by 1 year" in lead and "a cohort of 587 patients" in lead
    assert "Once 2 years have passed without recurrence, the risk is about 1 %" in lead
    assert "up to 10 % of patients, and 86 % of recurrences happen within 2 years" in page
    assert "after 2 recurrence-free years the risk is about 1 %" in page
    # EVIDENCE.md E (Chang 2012): 1.0 % at 1 year, 1.7 % at 2 years, 2.9 % at 5 years
    for row in ("| 1 year | 1.0 % |", "| 2 years | 1.7 % |", "| 5 years | 2.9 % |"):
        assert row in page
    for figure in ("1.0", "1.7", "2.9", "587", "0.036", "86"):
        assert evidence.published("E", figure)
    assert "associated with late recurrence (p = 0.036" in page
    assert "This patient: hypertension yes (active)." in page
    assert "- **Hypertension**: yes (active), onset 2011-03-01" in detail
    assert "- **Time since the MVD**: 7 months, performed 2024-10-02" in detail
    assert "- **Hemifacial spasm since the MVD**: not active since the MVD" in detail
    assert card["indicator"] == "info"


def test_eighteen_months_after_mvd_without_spasm_since_the_two_year_figure_leads():
    card = Chart().hfs(status="resolved").mvd("2023-12-01").show(CARD, "patient-view", TODAY)
    assert (
        card["summary"]
        == "MVD 18 months ago, no spasm recorded since: recurrence by 2 years in 1.7 % of a cohort after successful MVD"
    )
    assert "**1.7 %** had a delayed recurrence by 2 years" in card["detail"].split("\n\n")[0]


# EVIDENCE.md E: 2-5 years the Chang 5-year figure leads (it used to be Payner's 1 %, which
# now follows it, and only for a record with no HFS since the MVD).
def test_more_than_two_years_after_mvd_the_five_year_figure_leads_and_the_remaining_risk_is_about_one_percent():
    chart = Chart().hfs(status="resolved").mvd("2021-03-15")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "MVD 4.2 years ago, no spasm recorded since: recurrence by 5 years in 2.9 % of a cohort after successful MVD"
    )
    lead = card["detail"].split("\n\n")[0]
    assert "**2.9 %** had a delayed recurrence by 5 years" in lead
    assert "After 2 recurrence-free years the risk of recurrence is about 1 %" in lead
    assert "The published figures stop at 5 years" in lead
    assert "This patient: hypertension not recorded." in chart.evidence(CARD, "patient-view", TODAY)
    assert "- **Hypertension**: not recorded" in card["detail"]


def test_exactly_two_years_after_mvd_counts_as_after_two_years():
    card = Chart().hfs(status="resolved").mvd("2023-06-01").show(CARD, "patient-view", TODAY)
    assert "by 5 years in 2.9 %" in card["summary"]  # EVIDENCE.md E: 2-5 years, the 5-year figure
    assert "After 2 recurrence-free years" in card["detail"]


def test_past_five_years_without_spasm_since_the_card_stays_silent_but_fires_within_five():
    chart = Chart().hfs(status="resolved").mvd("2020-06-02")
    assert chart.show(CARD, "patient-view", TODAY) is not None  # 4.99 years
    assert chart.show(CARD, "patient-view", "2025-06-02") is None  # 5 years


def test_past_five_years_with_spasm_after_the_mvd_the_card_says_the_figures_stop_at_five_years():
    chart = Chart().hfs(onset="2012-01-01", status="resolved").mvd("2018-04-01")
    card = chart.hfs(onset="2024-01-01", status="recurrence").show(CARD, "patient-view", TODAY)
    assert "20 of 23" in card["summary"]
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert "### More than 5 years after surgery" in page
    assert "The published recurrence figures stop at 5 years after MVD" in page


# EVIDENCE.md E: an active HFS entry that cannot be placed after the MVD leaves the status unclear.
def test_an_hfs_entry_dated_only_on_the_mvd_day_leaves_the_status_after_the_mvd_unclear():
    chart = Chart().hfs(onset="2015-01-01", status="resolved").mvd("2024-01-10").hfs(onset="2024-01-10")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "MVD 16 months ago: spasm status since surgery unclear in the record; cohort recurrence by 2 years 1.7 %"
    )
    assert "**Whether hemifacial spasm is present since the MVD is unclear**" in card["detail"]
    for text in (card["detail"], chart.evidence(CARD, "patient-view", TODAY)):  # never "recurrence-free"
        assert "about 1 %" not in text and "recurrence-free years the risk" not in text


def test_an_undated_hfs_entry_past_five_years_after_the_mvd_does_not_fire():
    # EVIDENCE.md E: past 5 years the card fires only when HFS is recorded after the MVD
    chart = Chart().hfs(onset="2012-01-01", status="resolved").mvd("2019-03-01").hfs(onset=None, status="recurrence")
    assert chart.show(CARD, "patient-view", TODAY) is None


def test_after_two_mvds_without_spasm_since_the_summary_says_the_figures_are_for_first_mvds():
    chart = Chart().hfs(status="resolved").mvd("2018-04-01").mvd("2025-01-15")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "Revision MVD 4 months ago, no spasm recorded since: recurrence figures are for first MVDs and may not apply"
    )
    assert "- **MVDs recorded**: 2" in card["detail"]
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert "### This was a revision" in page
    assert "2 MVDs recorded: this was a revision" in page


def test_a_first_mvd_ordered_gets_no_revision_card():
    assert Chart().hfs().order(MVD).show(CARD, "order-select", TODAY) is None


def test_an_mvd_ordered_after_an_mvd_with_no_spasm_since_gets_no_revision_card():
    chart = Chart().hfs(status="resolved").mvd("2019-03-01").order(MVD)
    assert chart.show(CARD, "order-sign", TODAY) is None


def test_an_undated_mvd_gives_the_figures_without_matching_them_to_time():
    chart = Chart().hfs().mvd(None)
    card = chart.show(CARD, "patient-view", TODAY)
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "After MVD: recurrence in up to 10 %, 86 % of them within 2 years; date of MVD not recorded"
    )
    assert "its date is not recorded, so the published figures cannot be matched" in card["detail"]
    assert "### Time since surgery unknown" in page
    for text in (card["detail"], page):  # an active HFS cannot be placed after an undated MVD
        assert "about 1 %" not in text
    assert (
        "- **Hemifacial spasm since the MVD**: present; the MVD has no date to place it against (active)"
        in card["detail"]
    )
    assert "- **Time since the MVD**: not recorded (the procedure has no performed date); not assumed" in card["detail"]


def test_recurrent_hfs_after_mvd_gives_revision_guidance_and_the_mri_finding():
    card = Chart.from_bundle("hfs_recurrent_after_mvd.json").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "HFS after MVD with neurovascular contact on MRI: revision MVD, 20 of 23 spasm-free at 1 year"
    )
    detail = card["detail"]
    page = Chart.from_bundle("hfs_recurrent_after_mvd.json").evidence(CARD, "patient-view", TODAY)
    assert (
        "Among more than 2500 MVDs for hemifacial spasm at Kyung Hee University Hospital, Korea, 23 patients "
        "had a revision MVD"
    ) in page
    assert (
        "incomplete decompression in 8, Teflon away from the root exit zone in 12, severe Teflon adhesion in 3" in page
    )
    assert "19 excellent immediately after surgery, 20 spasm-free at 1 year, 3 with persistent spasm" in page
    assert "Neurovascular contact on an MRI after the MVD for this patient: yes." in page
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: yes, recorded 2024-10-02" in detail
    assert "- **Hemifacial spasm since the MVD**: present after the MVD (recurrence), onset 2024-09-01" in detail
    assert {k: v for k, v in card["source"].items() if k != "topic"} == {  # topic: tests/clinical/test_card_topic.py
        "label": "Park CK et al., World Neurosurg 2019: revision MVD for persistent or recurrent hemifacial spasm",
        "url": "https://doi.org/10.1016/j.wneu.2019.07.191",
    }
    # the other publications are cited on the evidence page
    assert "Payner TD, Tew JM" in page and "Chang WS et al. Acta Neurochir 2012;154(9):1613-1619" in page


def test_persistent_hfs_without_an_mri_result_asks_whether_contact_was_seen():
    chart = Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset=None, recorded="2024-08-10")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "HFS after MVD: was neurovascular contact seen on MRI? Revision MVD: 20 of 23 spasm-free at 1 year"
    )
    detail = card["detail"]
    page = chart.evidence(CARD, "patient-view", TODAY)
    assert (
        "**Was neurovascular contact at the facial nerve root exit zone seen on MRI (3D TOF MRA) after the MVD?**"
        in page
    )
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: not recorded" in detail


def test_an_mri_from_before_the_mvd_is_shown_with_that_caveat():
    chart = Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset="2024-07-01", status="recurrence")
    chart.local_observation("mri-neurovascular-contact", "2023-11-01", valueString="no")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert (
        "- **Neurovascular contact seen on MRI (3D TOF MRA)**: no, recorded 2023-11-01; recorded before the "
        "procedure of 2024-02-01" in detail
    )


def test_an_hfs_diagnosis_from_before_the_mvd_still_marked_active_is_not_taken_as_recurrence():
    chart = Chart().hfs(onset="2019-01-01", recorded="2019-02-01").mvd("2024-02-01")
    card = chart.show(CARD, "patient-view", TODAY)
    assert "revision" not in card["summary"].lower()
    # EVIDENCE.md E: still active from before the MVD with no end date is "status unclear",
    # never recurrence-free (this asserted the spasm-free "Within the first 2 years" section)
    assert "unclear" in card["summary"] and "by 2 years 1.7 %" in card["summary"]
    assert (
        "- **Hemifacial spasm since the MVD**: active since before the MVD, with no end date (active)" in card["detail"]
    )


def test_a_resolved_hfs_after_mvd_is_not_persistent_spasm():
    # EVIDENCE.md "The patient's story": spasm that ended after the MVD is described as resolved
    # on that date (delayed resolution), never as "no spasm since the MVD"
    chart = Chart().hfs(onset="2019-01-01", status="resolved", abatement="2024-03-01").mvd("2024-02-01")
    result = chart.result(CARD, "patient-view", TODAY)
    assert result.situation.id == "resolved-after-mvd"
    summary = render(result)["summary"]
    assert "resolved on 2024-03-01 (29 days after the MVD): delayed resolution" in summary and "no spasm" not in summary
    assert "### Revision MVD" not in render(result)["detail"]
    assert "### Revision MVD" not in chart.evidence(CARD, "patient-view", TODAY)


def test_no_mvd_card_without_an_mvd_or_without_hfs():
    assert Chart().hfs().show(CARD, "patient-view", TODAY) is None
    assert Chart().hypertension().mvd("2024-01-01").show(CARD, "patient-view", TODAY) is None


def test_an_mvd_dated_in_the_future_is_not_a_completed_mvd():
    assert Chart().hfs().mvd("2026-01-01").show(CARD, "patient-view", TODAY) is None


def test_the_latest_of_two_mvds_is_the_one_the_figures_refer_to():
    chart = Chart().hfs().mvd("2018-04-01").mvd("2025-01-15")
    card = chart.show(CARD, "patient-view", TODAY)
    # EVIDENCE.md E: the card itself says this was a revision (its section is on the evidence page)
    assert card["summary"] == (
        "Revision MVD 4 months ago: spasm status since unclear in the record; recurrence figures are for first MVDs"
    )
    assert "- **Time since the MVD**: 4 months, performed 2025-01-15" in card["detail"]
    assert "### This was a revision" in chart.evidence(CARD, "patient-view", TODAY)


def test_an_unreadable_mri_result_is_reported():
    chart = Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset="2024-07-01", status="recurrence")
    chart.local_observation("mri-neurovascular-contact", "2024-09-01", valueString="maybe")
    card = chart.show(CARD, "patient-view", TODAY)
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: recorded but unreadable" in card["detail"]
    assert "was neurovascular contact seen on MRI?" in card["summary"]
    assert "**Was neurovascular contact" in chart.evidence(CARD, "patient-view", TODAY)


# EVIDENCE.md "Reading the record": a value dated after the call is never used, and is listed.
def test_an_mri_result_dated_next_year_is_not_used_and_is_listed_as_not_usable():
    chart = Chart().hfs(onset="2015-01-01", status="resolved").mvd("2024-02-01")
    chart.hfs(onset="2024-07-01", status="recurrence")
    chart.local_observation("mri-neurovascular-contact", "2026-01-01", valueString="yes")
    card = chart.show(CARD, "patient-view", TODAY)
    assert "contact on MRI" not in card["summary"] and "was neurovascular contact seen on MRI?" in card["summary"]
    unusable = card["detail"].split("### Recorded but unreadable")[1]
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**:" in unusable
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: not used: dated after today (2026-01-01)" in unusable


def test_an_hfs_recurrence_with_an_onset_next_year_is_not_placed_after_the_mvd():
    chart = Chart().hfs(onset="2015-01-01", status="resolved").mvd("2024-02-01")
    card = chart.hfs(onset="2026-01-01", status="recurrence").show(CARD, "patient-view", TODAY)
    assert "unclear" in card["summary"]
    for text in (card["detail"], chart.evidence(CARD, "patient-view", TODAY)):
        assert "about 1 %" not in text
    line = next(x for x in card["detail"].splitlines() if x.startswith("- **Hemifacial spasm since the MVD**"))
    assert "no date that places it before or after the MVD" in line
    # The Condition is used; only its onset is not, and the card says which date that is.
    assert "not used: onset dated after today (2026-01-01)" in line


# issue 9: the summary is the point in plain words, well under 140 characters; the lead
# (before any heading) about 120 words; no FHIR element or code-system names on the card.
FHIR_WORDS = re.compile(
    r"\b(Condition|Observation|Procedure|MedicationRequest|MedicationStatement|ServiceRequest|Patient\.\w+"
    r"|performedPeriod|performedDateTime|clinicalStatus|onsetDateTime|effectiveDateTime|SNOMED|LOINC|RxNorm|ICD-10)\b"
)


def e_scenarios() -> dict[str, tuple[Chart, str]]:
    resolved = {"onset": "2015-01-01", "status": "resolved"}
    return {
        "spasm-free 8 months": (Chart().hfs(**resolved).mvd("2024-10-01"), "patient-view"),
        "spasm-free 18 months": (Chart().hfs(**resolved).mvd("2023-12-01"), "patient-view"),
        "spasm-free 3 years": (Chart().hfs(**resolved).mvd("2022-03-01").hypertension(), "patient-view"),
        "unclear undated entry": (
            Chart().hfs(**resolved).mvd("2021-03-01").hfs(onset=None, status="recurrence"),
            "patient-view",
        ),
        "unclear active from before": (Chart().hfs(onset="2015-01-01").mvd("2024-10-01"), "patient-view"),
        "residual 10 days": (Chart().hfs(**resolved).mvd("2025-05-20").hfs(onset="2025-05-30"), "patient-view"),
        "spasm 16 months": (Chart().hfs(**resolved).mvd("2024-02-01").hfs(onset="2024-07-01"), "patient-view"),
        "spasm 7 years": (Chart().hfs(**resolved).mvd("2018-04-01").hfs(onset="2024-01-01"), "patient-view"),
        "two MVDs": (Chart().hfs(**resolved).mvd("2019-03-01").mvd("2023-03-01"), "patient-view"),
        "undated MVD": (Chart().hfs(**resolved).mvd(None), "patient-view"),
    }


def test_every_card_e_situation_has_a_short_plain_summary_a_short_lead_and_no_fhir_words():
    for name, (chart, hook) in e_scenarios().items():
        card = chart.show(CARD, hook, TODAY)
        assert card is not None, name
        assert len(card["summary"]) < 120, name
        assert len(card["detail"].split("\n### ")[0].split()) <= 120, name
        shown = card["summary"] + card["detail"].split("### Sources")[0]
        assert FHIR_WORDS.findall(shown) == [], name


def test_the_revision_order_card_names_no_fhir_resource_type():
    chart = Chart().hfs(onset="2015-01-01", status="resolved").mvd("2019-03-01")
    card = chart.hfs(onset="2023-01-01", status="recurrence").order(MVD).show(CARD, "order-select", TODAY)
    assert "ServiceRequest" not in card["detail"]
