"""Card E: recurrence after microvascular decompression (MVD) and revision MVD.

Figures are those of EVIDENCE.md section E: up to 10 % recurrence, 86 % of recurrences
within 2 years, about 1 % after 2 recurrence-free years (Payner & Tew 1996); delayed
recurrence 1.0 / 1.7 / 2.9 % at 1 / 2 / 5 years, hypertension p = 0.036 (Chang 2012, 587
patients); revision MVD (Park 2019): 23 revisions among > 2500, causes 8 / 12 / 3,
19 excellent immediately, 20 spasm-free at 1 year, 3 persistent.
"""

from support import evidence
from support.chart import Chart

from cds_service.clinical.render import render

CARD = "mvd-recurrence"
TODAY = "2025-06-01"


def test_in_the_first_two_years_after_mvd_the_card_gives_the_time_conditional_figures():
    chart = (
        Chart()
        .hfs(onset="2020-01-01")
        .hypertension(onset="2011-03-01")
        .mvd("2024-10-02T08:00:00Z", "2024-10-02T11:00:00Z")
    )
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == "MVD 7 months ago: recurrence in up to 10 %, 86 % of them within 2 years"
    detail = card["detail"]
    assert "### Within the first 2 years" in detail and "### More than 2 years after surgery" not in detail
    assert "up to 10 % of patients, and 86 % of recurrences happen within 2 years" in detail
    assert "After 2 recurrence-free years the risk is about 1 %" in detail
    # EVIDENCE.md E (Chang 2012): 1.0 % at 1 year, 1.7 % at 2 years, 2.9 % at 5 years
    for row in ("| 1 year | 1.0 % |", "| 2 years | 1.7 % |", "| 5 years | 2.9 % |"):
        assert row in detail
    for figure in ("1.0", "1.7", "2.9", "587", "0.036", "86"):
        assert evidence.published("E", figure)
    assert "associated with late recurrence (p = 0.036" in detail
    assert "This patient: hypertension yes (active)." in detail
    assert "- **Hypertension**: yes (active), onset 2011-03-01" in detail
    assert "- **Time since the MVD**: 7 months, performed 2024-10-02" in detail
    assert card["indicator"] == "info"


def test_more_than_two_years_after_mvd_the_remaining_risk_is_about_one_percent():
    card = Chart().hfs().mvd("2021-03-15").show(CARD, "patient-view", TODAY)
    assert card["summary"] == "MVD 4.2 years ago: after 2 recurrence-free years the recurrence risk is about 1 %"
    detail = card["detail"]
    assert "### More than 2 years after surgery" in detail and "### Within the first 2 years" not in detail
    assert "This patient: hypertension not recorded." in detail
    assert "- **Hypertension**: not recorded" in detail


def test_exactly_two_years_after_mvd_counts_as_after_two_years():
    card = Chart().hfs().mvd("2023-06-01").show(CARD, "patient-view", TODAY)
    assert "after 2 recurrence-free years" in card["summary"]


def test_an_undated_mvd_gives_the_figures_without_matching_them_to_time():
    card = Chart().hfs().mvd(None).show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "After MVD: recurrence in up to 10 %, 86 % of them within 2 years; date of MVD not recorded"
    )
    assert "### Time since surgery unknown" in card["detail"]
    assert "- **Time since the MVD**: not recorded (the procedure has no performed date); not assumed" in card["detail"]


def test_recurrent_hfs_after_mvd_gives_revision_guidance_and_the_mri_finding():
    card = Chart.from_bundle("hfs_recurrent_after_mvd.json").show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "HFS after MVD with neurovascular contact on MRI: revision MVD, 20 of 23 spasm-free at 1 year"
    )
    detail = card["detail"]
    assert (
        "Among more than 2500 MVDs for hemifacial spasm at Kyung Hee University Hospital, Korea, 23 patients "
        "had a revision MVD"
    ) in detail
    assert (
        "incomplete decompression in 8, Teflon away from the root exit zone in 12, severe Teflon adhesion in 3"
        in detail
    )
    assert "19 excellent immediately after surgery, 20 spasm-free at 1 year, 3 with persistent spasm" in detail
    assert "Neurovascular contact on MRI for this patient: yes." in detail
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: yes, recorded 2024-10-02" in detail
    assert "- **Hemifacial spasm after the MVD**: yes (recurrence), onset 2024-09-01" in detail
    assert card["source"] == {
        "label": "Park CK et al., World Neurosurg 2019: revision MVD for persistent or recurrent hemifacial spasm",
        "url": "https://doi.org/10.1016/j.wneu.2019.07.191",
    }
    # the other publications are cited in the detail
    assert "Payner TD, Tew JM" in detail and "Chang WS et al. Acta Neurochir 2012;154:1613-1619" in detail


def test_persistent_hfs_without_an_mri_result_asks_whether_contact_was_seen():
    chart = Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset=None, recorded="2024-08-10")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"] == (
        "HFS after MVD: was neurovascular contact seen on MRI? Revision MVD: 20 of 23 spasm-free at 1 year"
    )
    detail = card["detail"]
    assert "**Was neurovascular contact at the facial nerve root exit zone seen on MRI (3D TOF MRA)?**" in detail
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
    assert "### Within the first 2 years" in card["detail"]


def test_a_resolved_hfs_after_mvd_is_not_persistent_spasm():
    chart = Chart().hfs(onset="2019-01-01", status="resolved", abatement="2024-03-01").mvd("2024-02-01")
    result = chart.result(CARD, "patient-view", TODAY)
    assert result.situation.id == "after-mvd"
    assert "### Revision MVD" not in render(result)["detail"]


def test_no_mvd_card_without_an_mvd_or_without_hfs():
    assert Chart().hfs().show(CARD, "patient-view", TODAY) is None
    assert Chart().hypertension().mvd("2024-01-01").show(CARD, "patient-view", TODAY) is None


def test_an_mvd_dated_in_the_future_is_not_a_completed_mvd():
    assert Chart().hfs().mvd("2026-01-01").show(CARD, "patient-view", TODAY) is None


def test_the_latest_of_two_mvds_is_the_one_the_figures_refer_to():
    chart = Chart().hfs().mvd("2018-04-01").mvd("2025-01-15")
    card = chart.show(CARD, "patient-view", TODAY)
    assert card["summary"].startswith("MVD 4 months ago")


def test_an_unreadable_mri_result_is_reported():
    chart = Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset="2024-07-01", status="recurrence")
    chart.local_observation("mri-neurovascular-contact", "2024-09-01", valueString="maybe")
    detail = chart.show(CARD, "patient-view", TODAY)["detail"]
    assert "- **Neurovascular contact seen on MRI (3D TOF MRA)**: recorded but unreadable" in detail
    assert "**Was neurovascular contact" in detail
