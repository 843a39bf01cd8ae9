"""Card D reads the patient's story (EVIDENCE.md "The patient's story", issue 15): the site of
a bone metastasis, the stated reason of a vertebral ablation / augmentation order, the daily
morphine dose of a prescription, a newer unreadable pain score, and the harms beside the
benefits. Charts are coded as EHRs send them (support/card_d_charts.py); each is run with a
full prefetch, in every hook the rule affects."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.card_d_charts import (
    BONE_METASTASIS_CODE,
    FEMUR,
    HEMANGIOMA_BENIGN,
    KYPHOPLASTY_LUMBAR,
    LOCAL_SYSTEM,
    MS_CONTIN_BID,
    MWA_THORACIC,
    OSTEOPOROTIC_FRACTURE,
    PELVIS_TEXT,
    REVIEW_CHARTS,
    T12,
    TODAY,
    bone_metastasis,
    condition,
    daily_morphine_observation,
    epic_dosage,
    morphine_request,
    opioid_request,
    pain,
    review_chart,
    vertebral_order,
)
from support.chart import Chart

CARD = "spinal-metastasis-mwa"
ORDER_HOOKS = ("order-select", "order-sign")
HARMS = (
    "Harms in the series: asymptomatic cement leakage in 30 % of treated vertebrae (42/140) and grade 3 neural "
    "injury in 1.1 % (1 patient, who recovered)."
)


def chart_of(resources: list[dict], drafts: list[dict] = ()) -> Chart:
    chart = Chart()
    for r in resources:
        chart.raw(r)
    for d in drafts:
        chart.raw_order(d)
    return chart


def lead(detail: str) -> str:
    return detail.split("\n### ", 1)[0]


# ------------------------------------------------------------------ the review charts
@pytest.mark.parametrize("name", sorted(REVIEW_CHARTS))
def test_each_review_chart_gets_what_a_careful_clinician_expects(name):
    spec = REVIEW_CHARTS[name]
    resources, drafts = review_chart(name)
    card = chart_of(resources, drafts).show(CARD, spec["hook"], TODAY)
    assert (card is not None) == spec["fires"], card and card["summary"]
    if card is None:
        return
    text = card["summary"] + "\n" + card["detail"]
    for fragment in spec.get("expect", ()):
        assert fragment in text, fragment
    for fragment in spec.get("never", ()):
        assert fragment not in text, fragment
    assert HARMS in lead(card["detail"])


# ------------------------------------------------------------------ 1. site
@pytest.mark.parametrize(
    ("site", "fires", "words"),
    [
        (T12, True, "in the spine (T12 vertebra)"),
        ({"text": "metastasis at Th8"}, True, "in the spine (metastasis at Th8)"),
        (None, True, "site not recorded"),
        (FEMUR, False, None),
        (PELVIS_TEXT, False, None),
        ({"text": "left humerus"}, False, None),
    ],
)
def test_on_opening_the_chart_only_a_spinal_or_unsited_bone_metastasis_fires(site, fires, words):
    chart = chart_of([bone_metastasis("2025-01-01", site), pain("2025-05-30", 7)])
    card = chart.show(CARD, "patient-view", TODAY)
    assert (card is not None) == fires
    if fires:
        assert words in card["detail"]
        if site is None:
            assert "vertebral metastasis" not in card["detail"]
            assert card["summary"].startswith("Painful bone metastasis, site not recorded")
        else:
            assert card["summary"].startswith("Painful vertebral metastasis")


def test_a_spinal_site_on_any_of_several_metastasis_entries_counts():
    chart = chart_of([bone_metastasis("2025-01-01", FEMUR), bone_metastasis("2025-03-01", T12), pain("2025-05-30", 6)])
    assert chart.show(CARD, "patient-view", TODAY)["summary"].startswith("Painful vertebral metastasis")


def test_an_unreadable_body_site_is_said_and_does_not_fire_on_opening_the_chart():
    chart = chart_of([{**bone_metastasis("2025-01-01"), "bodySite": {"text": "T12"}}, pain("2025-05-30", 7)])
    assert chart.show(CARD, "patient-view", TODAY) is None
    chart.raw_order(vertebral_order(MWA_THORACIC))
    card = chart.show(CARD, "order-sign", TODAY)
    assert (
        "- **Bone metastasis, site**: recorded but unreadable (a bone metastasis is recorded, but its body site"
        in (card["detail"])
    )


@pytest.mark.parametrize("hook", ORDER_HOOKS)
def test_at_ordering_the_card_names_the_metastasis_site_and_never_calls_an_unsited_one_vertebral(hook):
    unsited = chart_of([bone_metastasis("2025-01-01")], [vertebral_order(MWA_THORACIC)]).show(CARD, hook, TODAY)
    assert "for a bone metastasis; on record: **site not recorded, active**" in unsited["detail"]
    assert "vertebral metastasis" not in unsited["detail"]
    femur = chart_of([bone_metastasis("2025-01-01", FEMUR)], [vertebral_order(KYPHOPLASTY_LUMBAR)]).show(
        CARD, hook, TODAY
    )
    assert (
        "for a bone metastasis; on record: **at a site other than the spine (Left femur), active**" in femur["detail"]
    )


# ------------------------------------------------------------------ 2. the order's indication
@pytest.mark.parametrize("hook", ORDER_HOOKS)
@pytest.mark.parametrize("procedure", [MWA_THORACIC, KYPHOPLASTY_LUMBAR])
@pytest.mark.parametrize(
    ("resources", "reason", "fires"),
    [
        ([bone_metastasis("2025-01-01", T12)], None, True),  # no stated reason; the patient has one
        ([], BONE_METASTASIS_CODE, True),  # the stated reason is a bone metastasis
        ([], None, False),  # no metastasis anywhere
        ([condition(*OSTEOPOROTIC_FRACTURE, "2025-05-01")], None, False),  # an osteoporotic fracture only
        ([bone_metastasis("2025-01-01", T12)], OSTEOPOROTIC_FRACTURE, False),  # stated for another condition
        ([bone_metastasis("2025-01-01", T12)], HEMANGIOMA_BENIGN, False),
    ],
)
def test_a_vertebral_order_fires_only_for_a_bone_metastasis(hook, procedure, resources, reason, fires):
    chart = chart_of(resources, [vertebral_order(procedure, reason=reason)])
    assert (chart.show(CARD, hook, TODAY) is not None) == fires


@pytest.mark.parametrize("hook", ORDER_HOOKS)
def test_a_reason_reference_is_read_from_the_condition_it_names(hook):
    primary = condition(
        "http://hl7.org/fhir/sid/icd-10-cm",
        "C41.2",
        "Malignant neoplasm of vertebral column",
        "2025-01-01",
        rid="c-primary",
    )
    metastasis = {**bone_metastasis("2025-01-01", T12), "id": "c-met"}
    for_primary = chart_of([primary, metastasis], [vertebral_order(MWA_THORACIC, reason_ref="Condition/c-primary")])
    assert for_primary.show(CARD, hook, TODAY) is None
    for_met = chart_of([primary, metastasis], [vertebral_order(MWA_THORACIC, reason_ref="Condition/c-met")])
    assert for_met.show(CARD, hook, TODAY) is not None


def test_a_draft_procedure_with_a_stated_reason_is_read_like_a_service_request():
    chart = chart_of([], [vertebral_order(MWA_THORACIC, reason=BONE_METASTASIS_CODE, resource_type="Procedure")])
    assert chart.show(CARD, "order-sign", TODAY) is not None


# ------------------------------------------------------------------ 3. daily morphine
def metastasis_in_pain(*more: dict) -> list[dict]:
    return [bone_metastasis("2024-11-20", T12), pain("2025-05-30", 7), *more]


@pytest.mark.parametrize("hook", ["patient-view", *ORDER_HOOKS])
def test_the_daily_morphine_dose_comes_from_the_active_prescription_in_every_hook(hook):
    chart = chart_of(metastasis_in_pain(morphine_request("2025-05-02", MS_CONTIN_BID)), [vertebral_order(MWA_THORACIC)])
    detail = chart.show(CARD, hook, TODAY)["detail"]
    assert "daily morphine: **30 mg/d**" in lead(detail)
    assert (
        "- **Daily morphine dose**: 30 mg/d, prescribed 2025-05-02; morphine sulfate 15 MG Extended Release Oral "
        "Tablet: 15 mg every 12 hours" in detail
    )


def test_a_stopped_or_future_prescription_is_not_current_use():
    stopped = morphine_request("2025-05-02", MS_CONTIN_BID, status="stopped")
    future = morphine_request("2025-06-05", MS_CONTIN_BID)
    detail = chart_of(metastasis_in_pain(stopped, future)).show(CARD, "patient-view", TODAY)["detail"]
    assert "daily morphine: **not recorded**" in lead(detail)


def test_two_morphine_prescriptions_are_summed_and_an_as_needed_one_is_named():
    long_acting = morphine_request("2025-05-02", MS_CONTIN_BID)
    prn = morphine_request(
        "2025-05-02", epic_dosage(5, frequency=1, period=4, as_needed=True), display="morphine sulfate 5 MG Oral Tablet"
    )
    twice = morphine_request(
        "2025-05-20",
        epic_dosage(10, frequency=2, period=1, period_unit="d"),
        display="morphine sulfate 10 MG Oral Tablet",
    )
    detail = chart_of(metastasis_in_pain(long_acting, prn, twice)).show(CARD, "patient-view", TODAY)["detail"]
    assert "daily morphine: **50 mg/d**" in lead(detail)
    assert "a prescription's daily dose could not be read: taken as needed: no fixed daily dose" in detail


def test_a_newer_recorded_daily_dose_wins_and_an_older_one_does_not():
    newer = daily_morphine_observation("2025-05-26", 60, LOCAL_SYSTEM)
    older = daily_morphine_observation("2025-05-10", 90, LOCAL_SYSTEM)
    rx = morphine_request("2025-05-20", MS_CONTIN_BID)
    assert (
        "daily morphine: **60 mg/d**"
        in chart_of(metastasis_in_pain(rx, newer)).show(CARD, "patient-view", TODAY)["detail"]
    )
    detail = chart_of(metastasis_in_pain(rx, older)).show(CARD, "patient-view", TODAY)["detail"]
    assert "daily morphine: **30 mg/d**" in lead(detail)
    assert "a recorded daily dose is older than the prescription" in detail


@pytest.mark.parametrize("hook", ["patient-view", *ORDER_HOOKS])
def test_other_opioids_are_named_and_never_converted(hook):
    oxy = opioid_request("2025-05-01", "oxyCODONE Hydrochloride 10 MG Oral Tablet")
    detail = chart_of(metastasis_in_pain(oxy), [vertebral_order(MWA_THORACIC)]).show(CARD, hook, TODAY)["detail"]
    assert "daily morphine: **no morphine recorded; another opioid prescribed (not converted)**" in lead(detail)
    assert "oxyCODONE Hydrochloride 10 MG Oral Tablet also prescribed, not converted to morphine" in detail
    assert "mg/d" not in lead(detail)


@pytest.mark.parametrize(
    ("dosage", "why"),
    [
        (epic_dosage(None, tablets=1), "the dose is given as 1 tablet, not in mg"),
        (epic_dosage(None, dose_range=(10, 20)), "a dose range (10 to 20 mg)"),
        (epic_dosage(15, frequency=None, period=None), "no timing"),
    ],
)
def test_an_unreadable_or_ambiguous_dosage_says_why(dosage, why):
    detail = chart_of(metastasis_in_pain(morphine_request("2025-05-02", dosage))).show(CARD, "patient-view", TODAY)[
        "detail"
    ]
    assert "daily morphine: **morphine prescribed, daily dose not readable**" in lead(detail)
    assert why in detail


# ------------------------------------------------------------------ 4. newest pain score unreadable
@pytest.mark.parametrize("site", [T12, None])
def test_a_newer_unreadable_pain_score_keeps_the_chart_view_card_from_firing_on_an_older_one(site):
    chart = chart_of(
        [bone_metastasis("2024-11-20", site), pain("2025-05-10", 8), pain("2025-05-28", valueString="8-9")]
    )
    assert chart.show(CARD, "patient-view", TODAY) is None
    chart.raw_order(vertebral_order(MWA_THORACIC))
    for hook in ORDER_HOOKS:
        card = chart.show(CARD, hook, TODAY)
        assert card["summary"].endswith("this patient's newest pain score unreadable")
        assert "a newer value from 2025-05-28 could not be read; the value from 2025-05-10 was used" in card["detail"]


# ------------------------------------------------------------------ 5. harms beside benefits
@pytest.mark.parametrize(
    ("resources", "drafts", "hook"),
    [
        (metastasis_in_pain(), [], "patient-view"),
        ([bone_metastasis("2024-11-20"), pain("2025-05-30", 7)], [], "patient-view"),
        (metastasis_in_pain(), [vertebral_order(MWA_THORACIC)], "order-select"),
        (metastasis_in_pain(), [vertebral_order(KYPHOPLASTY_LUMBAR)], "order-sign"),
    ],
)
def test_the_card_itself_shows_the_harms_next_to_the_benefits(resources, drafts, hook):
    detail = chart_of(resources, drafts).show(CARD, hook, TODAY)["detail"]
    assert "median pain fell from **6 to 3/10 by 1 month**" in lead(detail)
    assert HARMS in lead(detail)


# ------------------------------------------------------------------ property: the future
def _future(day: int, kind: str) -> dict:
    when = (date.fromisoformat(TODAY) + timedelta(days=day)).isoformat()
    return {
        "pain_low": pain(when, 0),
        "pain_high": pain(when, 10),
        "pain_bad": pain(when, valueString="worse"),
        "dose": daily_morphine_observation(when, 200, LOCAL_SYSTEM),
        "rx": morphine_request(when, MS_CONTIN_BID),
        "oxy": opioid_request(when, "oxyCODONE Hydrochloride 5 MG Oral Tablet"),
    }[kind]


def _used(card_result) -> list[tuple]:
    return [(i.predictor, i.value, i.date) for i in card_result.inputs if i.status == "used"]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(REVIEW_CHARTS)),
    later=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=60),
            st.sampled_from(["pain_low", "pain_high", "pain_bad", "dose", "rx", "oxy"]),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_a_value_dated_after_the_call_never_changes_card_d(name, later):
    spec = REVIEW_CHARTS[name]
    resources, drafts = review_chart(name)
    before = chart_of(resources, drafts).result(CARD, spec["hook"], TODAY)
    after = chart_of(resources + [_future(d, k) for d, k in later], drafts).result(CARD, spec["hook"], TODAY)
    assert (before is None) == (after is None)
    if before is not None:
        assert before.situation.id == after.situation.id
        assert _used(before) == _used(after)


def test_a_morphine_prescription_without_any_dosage_is_named_not_dropped():
    rx = morphine_request("2025-05-02")  # no dosageInstruction
    rx.pop("dosageInstruction")
    detail = chart_of(metastasis_in_pain(rx)).show(CARD, "patient-view", TODAY)["detail"]
    assert "daily morphine: **morphine prescribed, daily dose not readable**" in lead(detail)
    assert "- **Daily morphine dose**: recorded but unreadable (no dosage recorded)" in detail
