"""Charts of the patient's story (EVIDENCE.md "The patient's story"), coded as real EHRs
code them: Epic / Cerner style operating-room records (CPT with a period) beside billing
records (ICD-10-PCS, date only), SNOMED problem-list entries, stated reasons by code and by
reference, periods that span an admission.

Each `StoryChart` is one patient at a fixed date (`TODAY`), the hook it is opened in, and
what a clinician expects of each card: `None` (the card must not fire) or an `Expect`.
tests/cards/test_patient_story.py runs every chart in process, through the HTTP path with
the prefetch, and through the FHIR fallback (dates shifted to the real today);
tests/scenarios/story/summarise.py prints the summaries of two trees side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from support.chart import CHEMODENERVATION, CPT, ICD10CM, LOCAL, MVD, SNOMED, Chart

TODAY = date(2025, 6, 1)
MVD_CPT = (CPT, "61458")
HFS_SNOMED = (SNOMED, "13753008")
TRIGEMINAL_NEURALGIA = (ICD10CM, "G50.0")
E, B, A = "mvd-recurrence", "amr-persistence", "rfa-recurrence"


@dataclass(frozen=True)
class Expect:
    summary_has: tuple[str, ...] = ()
    summary_not: tuple[str, ...] = ()
    detail_has: tuple[str, ...] = ()  # on the card itself (detail), not only the evidence page
    detail_not: tuple[str, ...] = ()
    suggestion: bool | None = None  # an MRI (or other) suggestion offered / not offered
    source_url: str | None = None


@dataclass(frozen=True)
class StoryChart:
    name: str
    rule: str  # the defect class of issue 15 it tries
    hook: str
    build: Callable[[], Chart]
    expect: dict[str, Expect | None] = field(default_factory=dict)
    valid_fhir: bool = True  # False: an element of the wrong shape (a FHIR server would refuse it)


# -- coding as EHRs do ------------------------------------------------------------------------
def reason(code: tuple[str, str], display: str) -> dict:
    return {"reasonCode": [{"coding": [{"system": code[0], "code": code[1], "display": display}], "text": display}]}


def mvd_or_and_billing(chart: Chart, day: str, start: str = "08:10", end: str = "10:40", **extra) -> Chart:
    """One MVD as an EHR records it: the operating-room record (CPT 61458, a period) and the
    billing record (ICD-10-PCS 00NM0ZZ, date only)."""
    chart.procedure(
        MVD_CPT,
        f"{day}T{start}:00Z",
        f"{day}T{end}:00Z",
        display="Craniectomy, suboccipital; for exploration or decompression of cranial nerves",
        **extra,
    )
    return chart.procedure(MVD, day, display="Release Facial Nerve, Open Approach")


def hfs_resolved_at(chart: Chart, day: str) -> Chart:
    """The problem-list entry closed on the day of the operation (Epic: resolved on surgery)."""
    return chart.hfs(onset="2018-05-01", recorded="2018-06-01", status="resolved", abatement=day)


def local(chart: Chart, code: str, effective: str, **value) -> Chart:
    return chart.observation((LOCAL, code), effective, **value)


def amr(chart: Chart, effective: str, answer: str) -> Chart:
    return local(chart, "amr-intraop-result", effective, valueCodeableConcept={"text": answer})


# -- the charts ----------------------------------------------------------------------------------
def one_mvd_two_records() -> Chart:
    chart = hfs_resolved_at(Chart(), "2024-09-02").hypertension()
    return mvd_or_and_billing(chart, "2024-09-02")


def two_mvds_two_days() -> Chart:
    chart = hfs_resolved_at(Chart(), "2024-09-02")
    chart.procedure(MVD, "2022-03-01")
    return mvd_or_and_billing(chart, "2024-09-02")


def mvd_plus_entered_in_error() -> Chart:
    chart = hfs_resolved_at(Chart(), "2024-09-02")
    chart.procedure(MVD, "2024-08-28", status="entered-in-error")
    chart.procedure(MVD_CPT, "2024-07-01", status="not-done")
    return mvd_or_and_billing(chart, "2024-09-02")


def revision_order_after_one_mvd_recorded_twice() -> Chart:
    chart = Chart().hfs(onset="2018-05-01", recorded="2018-06-01")
    mvd_or_and_billing(chart, "2024-02-01")
    chart.hfs(onset="2024-09-01", recorded="2024-09-03", status="recurrence")
    return chart.order(MVD_CPT, display="Craniectomy, suboccipital; for decompression of cranial nerves")


def third_mvd_order() -> Chart:
    chart = Chart().hfs(onset="2016-05-01")
    chart.procedure(MVD, "2019-04-02")
    mvd_or_and_billing(chart, "2023-02-01")
    chart.hfs(onset="2024-06-01", status="recurrence")
    return chart.order(MVD)


def first_mvd_order() -> Chart:
    return Chart().hfs(onset="2021-05-01").order(MVD)


def preop_mri_contact() -> Chart:
    chart = Chart().hfs(onset="2019-03-01")
    local(chart, "mri-neurovascular-contact", "2024-01-10", valueBoolean=True)
    mvd_or_and_billing(chart, "2024-02-01")
    return chart.hfs(onset="2024-09-01", status="recurrence")


def postop_mri_contact() -> Chart:
    chart = preop_mri_contact()
    return local(chart, "mri-neurovascular-contact", "2024-11-01", valueBoolean=True)


def mvd_for_trigeminal_neuralgia() -> Chart:
    chart = Chart().hfs(onset="2019-03-01")
    return chart.procedure(
        MVD_CPT, "2024-02-01T08:00:00Z", "2024-02-01T10:30:00Z", **reason(TRIGEMINAL_NEURALGIA, "Trigeminal neuralgia")
    )


def mvd_for_trigeminal_neuralgia_by_reference() -> Chart:
    chart = Chart().hfs(onset="2019-03-01")
    chart.condition(TRIGEMINAL_NEURALGIA, onset="2022-01-01")
    tn = chart.last_id()
    chart.procedure(
        MVD_CPT, "2024-02-01T08:00:00Z", "2024-02-01T10:30:00Z", reasonReference=[{"reference": f"Condition/{tn}"}]
    )
    return chart.procedure(MVD, "2024-02-01", reasonReference=[{"reference": f"Condition/{tn}"}])


def mvd_for_hfs_by_reference() -> Chart:
    chart = Chart().hfs(onset="2019-03-01", status="resolved", abatement="2024-02-01")
    hfs = chart.last_id()
    return chart.procedure(
        MVD_CPT, "2024-02-01T08:00:00Z", "2024-02-01T10:30:00Z", reasonReference=[{"reference": f"Condition/{hfs}"}]
    )


def mvd_order_for_trigeminal_neuralgia() -> Chart:
    return Chart().hfs(onset="2019-03-01").order(MVD_CPT, **reason(TRIGEMINAL_NEURALGIA, "Trigeminal neuralgia"))


def mvd_with_unreadable_reason() -> Chart:
    chart = Chart().hfs(onset="2019-03-01", status="resolved", abatement="2024-02-01")
    return chart.procedure(MVD_CPT, "2024-02-01T08:00:00Z", "2024-02-01T10:30:00Z", reasonCode="hemifacial spasm")


def rfa_admission_period_and_observation() -> Chart:
    chart = Chart().hfs(onset="2020-01-01")
    chart.rfa("2025-01-10T07:00:00Z", "2025-01-11T09:00:00Z")
    return local(
        chart,
        "operation-time",
        "2025-01-10T09:20:00Z",
        valueQuantity={"value": 35, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
    )


def rfa_admission_period_only() -> Chart:
    return Chart().hfs(onset="2020-01-01").rfa("2025-01-10T07:00:00Z", "2025-01-11T09:00:00Z")


def rfa_period_and_text_operation_time() -> Chart:
    chart = Chart().hfs(onset="2020-01-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    return local(chart, "operation-time", "2025-01-10", valueString="about half an hour")


def spasm_back_after_rfa() -> Chart:
    chart = Chart().hfs(onset="2019-03-01").rfa("2024-10-01T08:00:00Z", "2024-10-01T08:40:00Z")
    return chart.condition(HFS_SNOMED, onset="2025-03-01", status="recurrence")


def botox_after_rfa() -> Chart:
    chart = Chart().hfs(onset="2019-03-01").rfa("2024-10-01T08:00:00Z", "2024-10-01T08:40:00Z")
    return chart.procedure(CHEMODENERVATION, "2025-02-15")


def rfa_no_spasm_since() -> Chart:
    return Chart().hfs(onset="2019-03-01").rfa("2024-10-01T08:00:00Z", "2024-10-01T08:40:00Z")


def rfa_after_mvd() -> Chart:
    chart = Chart().hfs(onset="2017-03-01")
    mvd_or_and_billing(chart, "2022-01-10")
    chart.hfs(onset="2023-01-01", status="recurrence")
    return chart.rfa("2024-02-01T08:00:00Z", "2024-02-01T08:40:00Z")


def spasm_after_rfa_after_mvd() -> Chart:
    return rfa_after_mvd().hfs(onset="2025-01-15", recorded="2025-01-20", status="relapse")


def delayed_resolution_amr_persisted() -> Chart:
    chart = Chart().hfs(onset="2019-03-01", recorded="2019-04-01", status="resolved", abatement="2025-04-01")
    mvd_or_and_billing(chart, "2025-01-15")
    return amr(chart, "2025-01-15T10:20:00Z", "persisted")


def residual_spasm_amr_persisted() -> Chart:
    chart = Chart().hfs(onset="2019-03-01")
    mvd_or_and_billing(chart, "2025-01-15")
    amr(chart, "2025-01-15T10:20:00Z", "persisted")
    return chart.hfs(onset="2025-02-01", status="recurrence")


def marked_weakness_after_rfa() -> Chart:
    chart = Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:40:00Z")
    return local(chart, "house-brackmann-grade", "2025-01-12", valueInteger=5)


def mild_weakness_after_rfa() -> Chart:
    chart = Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:40:00Z")
    return local(chart, "house-brackmann-grade", "2025-01-12", valueInteger=3)


def epic_cpt_only_snomed_hfs() -> Chart:
    chart = Chart().condition(HFS_SNOMED, onset="2018-01-01", status="resolved", abatement="2023-10-05")
    return chart.procedure(
        MVD_CPT, "2023-10-05T13:00:00Z", "2023-10-05T16:10:00Z", bodySite=[{"text": "Left facial nerve root exit zone"}]
    )


def mvd_with_pre_operative_and_post_operative_spasm_free() -> Chart:
    chart = hfs_resolved_at(Chart(), "2024-12-02")
    mvd_or_and_billing(chart, "2024-12-02")
    return local(chart, "mri-neurovascular-contact", "2024-11-01", valueBoolean=True)


def cerner_mvd_over_the_admission() -> Chart:
    """Cerner style: the MVD's period is the whole admission (3 days), billing record beside it."""
    chart = hfs_resolved_at(Chart(), "2024-11-04")
    chart.procedure(MVD, "2024-11-04T06:30:00-06:00", "2024-11-07T11:00:00-06:00")
    return chart.procedure(MVD_CPT, "2024-11-04")


def resolved_entry_recorded_after_mvd() -> Chart:
    """The spasm went on after the MVD; a new problem-list entry records it resolved later
    (no abatement date: the recorded date of the resolved entry dates the resolution)."""
    chart = Chart().hfs(onset="2019-03-01", recorded="2019-03-10", status="inactive", abatement="2024-12-01")
    mvd_or_and_billing(chart, "2024-12-01")
    chart.hfs(onset="2024-12-05", recorded="2024-12-05", status="recurrence", verification="refuted")
    return chart.hfs(onset=None, recorded="2025-03-10", status="resolved")


def mvd_in_progress() -> Chart:
    chart = Chart().hfs(onset="2019-03-01")
    return chart.procedure(MVD_CPT, "2025-06-01T07:30:00Z", status="in-progress")


def revision_order_after_rfa_after_mvd() -> Chart:
    return spasm_after_rfa_after_mvd().order(MVD_CPT)


CHANG = "https://doi.org/10.1007/s00701-012-1424-z"
PARK = "https://doi.org/10.1016/j.wneu.2019.07.191"

CHARTS: tuple[StoryChart, ...] = (
    StoryChart(
        "one-mvd-two-records",
        "one operation, one episode",
        "patient-view",
        one_mvd_two_records,
        {
            E: Expect(
                summary_has=("MVD 8 months ago, no spasm recorded since",),
                summary_not=("Revision",),
                detail_has=("**MVDs recorded**: 1",),
                detail_not=("This was a revision",),
                source_url=CHANG,
            )
        },
    ),
    StoryChart(
        "two-mvds-two-days",
        "one operation, one episode (a real revision)",
        "patient-view",
        two_mvds_two_days,
        {E: Expect(summary_has=("Revision MVD 8 months ago",), detail_has=("**MVDs recorded**: 2",))},
    ),
    StoryChart(
        "mvd-and-records-set-aside",
        "records entered in error / not done are not operations",
        "patient-view",
        mvd_plus_entered_in_error,
        {E: Expect(summary_not=("Revision",), detail_has=("**MVDs recorded**: 1",))},
    ),
    StoryChart(
        "revision-order-after-one-mvd",
        "one operation, one episode; revision orders",
        "order-sign",
        revision_order_after_one_mvd_recorded_twice,
        {
            E: Expect(summary_has=("Revision MVD ordered",), summary_not=("Third",)),
            B: Expect(detail_has=("does not say whether revision operations were included",)),
        },
    ),
    StoryChart(
        "third-mvd-order",
        "revision orders",
        "order-select",
        third_mvd_order,
        {
            E: Expect(summary_has=("Third or later MVD ordered",), detail_has=("are for first revisions",)),
            B: Expect(detail_has=("already has an MVD recorded before this order (MVDs recorded: 2)",)),
        },
    ),
    StoryChart(
        "first-mvd-order",
        "revision orders (not a revision)",
        "order-select",
        first_mvd_order,
        {E: None, B: Expect(detail_not=("revision",))},
    ),
    StoryChart(
        "preop-mri-contact",
        "imaging in time",
        "patient-view",
        preop_mri_contact,
        {
            E: Expect(
                summary_has=("was neurovascular contact seen on MRI?",),
                summary_not=("with neurovascular contact",),
                detail_has=("is from before the MVD",),
                suggestion=True,
                source_url=PARK,
            )
        },
    ),
    StoryChart(
        "postop-mri-contact",
        "imaging in time (after the MVD)",
        "patient-view",
        postop_mri_contact,
        {
            E: Expect(
                summary_has=("with neurovascular contact on MRI",),
                detail_not=("is from before the MVD",),
                suggestion=False,
            )
        },
    ),
    StoryChart(
        "mvd-for-trigeminal-neuralgia",
        "indication",
        "patient-view",
        mvd_for_trigeminal_neuralgia,
        {E: None, B: None},
    ),
    StoryChart(
        "mvd-for-tn-by-reference",
        "indication (reasonReference, OR + billing)",
        "patient-view",
        mvd_for_trigeminal_neuralgia_by_reference,
        {E: None, B: None},
    ),
    StoryChart(
        "mvd-for-hfs-by-reference",
        "indication (for HFS: still counts)",
        "patient-view",
        mvd_for_hfs_by_reference,
        {E: Expect(summary_has=("no spasm recorded since",))},
    ),
    StoryChart(
        "mvd-order-for-tn",
        "indication (an order for another condition)",
        "order-select",
        mvd_order_for_trigeminal_neuralgia,
        {B: None, E: None},
    ),
    StoryChart(
        "mvd-reason-wrong-shape",
        "indication (an unreadable reason keeps the existing rule)",
        "patient-view",
        mvd_with_unreadable_reason,
        {E: Expect(summary_has=("no spasm recorded since",))},
        valid_fhir=False,
    ),
    StoryChart(
        "rfa-admission-and-observation",
        "operation time",
        "patient-view",
        rfa_admission_period_and_observation,
        {A: Expect(detail_has=("operation time 35 min",), detail_not=("1560",))},
    ),
    StoryChart(
        "rfa-admission-only",
        "operation time (a stay is not used)",
        "patient-view",
        rfa_admission_period_only,
        {A: Expect(detail_has=("longer than 12 hours",), detail_not=("1560",))},
    ),
    StoryChart(
        "rfa-text-operation-time",
        "operation time (a value without a number is skipped)",
        "patient-view",
        rfa_period_and_text_operation_time,
        {A: Expect(detail_has=("operation time 45 min",))},
    ),
    StoryChart(
        "spasm-back-after-rfa",
        "later events: spasm after RFA",
        "patient-view",
        spasm_back_after_rfa,
        {A: Expect(summary_has=("spasm has returned", "2025-03-01"), detail_has=("the spasm has returned",))},
    ),
    StoryChart(
        "botox-after-rfa",
        "later events: a further treatment after RFA",
        "patient-view",
        botox_after_rfa,
        {A: Expect(summary_has=("spasm has returned: treated again with botulinum toxin on 2025-02-15",))},
    ),
    StoryChart(
        "rfa-no-spasm-since",
        "later events (none)",
        "patient-view",
        rfa_no_spasm_since,
        {
            A: Expect(
                summary_has=("spasm had returned in 71.9 % of the study cohort by 12 months",),
                summary_not=("has returned",),
            )
        },
    ),
    StoryChart(
        "rfa-after-mvd",
        "later events: RFA after MVD",
        "patient-view",
        rfa_after_mvd,
        {
            E: Expect(
                summary_has=("treated by RFA on 2024-02-01",),
                summary_not=("Revision MVD:",),
                detail_not=("revision MVD, 20 of 23",),
                suggestion=False,
            ),
            A: Expect(summary_has=("RFA 16 months ago",)),
        },
    ),
    StoryChart(
        "spasm-after-rfa-after-mvd",
        "later events: spasm after the later treatment",
        "patient-view",
        spasm_after_rfa_after_mvd,
        {
            E: Expect(
                summary_has=("Revision MVD: 20 of 23",),
                detail_has=("Treated again for hemifacial spasm after the MVD",),
                suggestion=True,
            )
        },
    ),
    StoryChart(
        "delayed-resolution-amr-persisted",
        "later events: delayed resolution",
        "patient-view",
        delayed_resolution_amr_persisted,
        {
            E: Expect(summary_has=("resolved on 2025-04-01",), summary_not=("no spasm recorded since",)),
            B: Expect(summary_has=("recorded as resolved on 2025-04-01",), summary_not=("relief can take months",)),
        },
    ),
    StoryChart(
        "residual-spasm-amr-persisted",
        "later events (spasm still there)",
        "patient-view",
        residual_spasm_amr_persisted,
        {E: Expect(summary_has=("residual spasm often resolves",)), B: Expect(summary_has=("relief can take months",))},
    ),
    StoryChart(
        "marked-weakness-after-rfa",
        "facial weakness after RFA",
        "patient-view",
        marked_weakness_after_rfa,
        {
            A: Expect(
                summary_has=("marked facial weakness",),
                detail_has=("Marked facial weakness is recorded after the RFA",),
            )
        },
    ),
    StoryChart(
        "mild-weakness-after-rfa",
        "facial weakness after RFA (grade III)",
        "patient-view",
        mild_weakness_after_rfa,
        {A: Expect(summary_not=("marked facial weakness",), detail_not=("Marked facial weakness",))},
    ),
    StoryChart(
        "epic-cpt-only-snomed-hfs",
        "Epic coding (CPT only, SNOMED problem)",
        "patient-view",
        epic_cpt_only_snomed_hfs,
        {E: Expect(summary_has=("MVD 19 months ago, no spasm recorded since",), source_url=CHANG)},
    ),
    StoryChart(
        "preop-mri-spasm-free",
        "imaging in time (spasm-free: no revision talk)",
        "patient-view",
        mvd_with_pre_operative_and_post_operative_spasm_free,
        {E: Expect(summary_has=("no spasm recorded since",), summary_not=("contact",))},
    ),
    StoryChart(
        "cerner-mvd-over-the-admission",
        "one operation, one episode (a period over the stay)",
        "patient-view",
        cerner_mvd_over_the_admission,
        {E: Expect(summary_has=("MVD 6 months ago, no spasm recorded since",), detail_has=("**MVDs recorded**: 1",))},
    ),
    StoryChart(
        "resolved-entry-recorded-after-mvd",
        "later events: delayed resolution (resolved status dated after)",
        "patient-view",
        resolved_entry_recorded_after_mvd,
        {E: Expect(summary_has=("recorded as resolved on 2025-03-10",), summary_not=("no spasm recorded since",))},
    ),
    StoryChart(
        "mvd-in-progress",
        "records not yet completed are not operations",
        "patient-view",
        mvd_in_progress,
        {E: None, B: None},
    ),
    StoryChart(
        "revision-order-after-rfa-after-mvd",
        "later events at order time",
        "order-sign",
        revision_order_after_rfa_after_mvd,
        {
            E: Expect(
                summary_has=("Revision MVD ordered",), detail_has=("Treated again for hemifacial spasm after the MVD",)
            ),
            B: Expect(detail_has=("already has an MVD recorded before this order (MVDs recorded: 1)",)),
        },
    ),
)


# -- checking what a clinician expects -------------------------------------------------------
def check(story: StoryChart, cards: dict[str, dict]) -> None:
    """Each card as the chart expects: not fired (None), or fired showing what it must."""
    for card_id, expect in story.expect.items():
        shown = cards.get(card_id)
        if expect is None:
            assert shown is None, f"{story.name}: {card_id} fired: {shown and shown['summary']}"
            continue
        assert shown is not None, f"{story.name}: {card_id} did not fire ({sorted(cards)})"
        check_card(story.name, expect, shown)


def check_card(name: str, expect: Expect, card: dict) -> None:
    summary, detail = card["summary"], card["detail"]
    for text in expect.summary_has:
        assert text in summary, f"{name}: {text!r} not in summary {summary!r}"
    for text in expect.summary_not:
        assert text not in summary, f"{name}: {text!r} in summary {summary!r}"
    for text in expect.detail_has:
        assert text in detail, f"{name}: {text!r} not in the card's detail:\n{detail}"
    for text in expect.detail_not:
        assert text not in detail, f"{name}: {text!r} in the card's detail:\n{detail}"
    if expect.suggestion is not None:
        assert bool(card.get("suggestions")) == expect.suggestion, f"{name}: suggestions {card.get('suggestions')}"
    if expect.source_url is not None:
        assert card["source"]["url"] == expect.source_url, f"{name}: source {card['source']}"
