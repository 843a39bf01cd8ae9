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
