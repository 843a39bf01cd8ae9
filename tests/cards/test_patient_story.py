"""EVIDENCE.md "The patient's story": every rule on charts coded as EHRs code them
(tests/support/story_charts.py), each in the hook a clinician would meet it in, in process,
through the HTTP path with the prefetch, and through the FHIR fallback (the real FHIR
server; the chart's dates shifted so that its "today" is the real one).
"""

from __future__ import annotations

import pytest
from support.chart import all_cards
from support.story_charts import CHARTS, TODAY, check

from cds_service.clinical.evaluate import evaluate
from cds_service.clinical.render import render

HFS_CARDS = ("rfa-recurrence", "amr-persistence", "mvd-recurrence")


def cards_in_process(chart, hook: str, today=TODAY) -> dict[str, dict]:
    record = chart.record(hook, today)
    out = {}
    for card in all_cards():
        result = evaluate(card, record, hook)
        if result is not None:
            out[card.id] = render(result)
    return out


@pytest.mark.parametrize("story", CHARTS, ids=[c.name for c in CHARTS])
def test_each_rule_of_the_story_in_process(story):
    check(story, cards_in_process(story.build(), story.hook))


# ---------------------------------------------------------------- the evidence page says how
def test_the_evidence_page_says_which_records_were_merged_set_aside_or_for_another_condition():
    from support.story_charts import MVD_CPT, TRIGEMINAL_NEURALGIA, mvd_plus_entered_in_error, reason

    from cds_service.clinical.evidence import page_data
    from cds_service.http.evidence_page import render_page

    chart = mvd_plus_entered_in_error()
    chart.procedure(MVD_CPT, "2021-05-03", **reason(TRIGEMINAL_NEURALGIA, "Trigeminal neuralgia"))
    result = chart.result("mvd-recurrence", "patient-view", TODAY)
    story = {n["fact"]: n["how"] for n in page_data(result)["story"]}
    merged = story["Microvascular decompression of the facial nerve on 2024-09-02"]
    assert merged.startswith("2 records of the same day merged into one operation (code 61458")
    assert "00NM0ZZ" in merged and "times are those of the record with a start and an end" in merged
    other = story["Microvascular decompression of the facial nerve on 2021-05-03"]
    assert "stated reason (Trigeminal neuralgia) is another condition" in other
    assert "not counted as a treatment of hemifacial spasm" in other
    assert story["Microvascular decompression of the facial nerve on 2024-08-28"] == (
        "set aside: its status is entered-in-error (not a completed operation)"
    )
    assert "set aside: its status is not-done" in story["Microvascular decompression of the facial nerve on 2024-07-01"]
    # the page shows it (escaped), and the card itself counts one MVD
    html = render_page(page_data(result))
    assert "How the record was read" in html and "entered-in-error" in html
    assert result.input("mvd_count").value == 1


def test_a_chart_without_operations_has_no_story_notes():
    from support.chart import Chart

    from cds_service.clinical.evidence import page_data

    result = (
        Chart()
        .hfs(onset="2021-05-01")
        .order(("http://www.cms.gov/Medicare/Coding/ICD10", "00NM0ZZ"))
        .result("amr-persistence", "order-select", TODAY)
    )
    assert page_data(result)["story"] == []
