"""EVIDENCE.md "The patient's story" through the real HTTP path: every story chart
(tests/support/story_charts.py) with the full prefetch, and through the FHIR fallback from
the real FHIR server (a client that prefetches nothing). The expectations are those of the
in-process test (tests/cards/test_patient_story.py)."""

from __future__ import annotations

import pytest
from support.story_charts import CHARTS, TODAY, check
from support.story_http import call_through_fallback, call_with_prefetch

IDS = [c.name for c in CHARTS]


@pytest.fixture
def app_settings() -> dict:
    """The service judges the fixed charts as of their date (the development setting)."""
    return {"as_of_date": TODAY.isoformat()}


@pytest.mark.parametrize("story", CHARTS, ids=IDS)
def test_each_rule_of_the_story_with_the_prefetch(story, client):
    check(story, call_with_prefetch(client, story.build(), story.hook))


VALID = [c for c in CHARTS if c.valid_fhir]


@pytest.mark.fhir_server
@pytest.mark.parametrize("story", VALID, ids=[c.name for c in VALID])
def test_each_rule_of_the_story_through_the_fhir_fallback(story, client, fhir_server):
    check(story, call_through_fallback(client, fhir_server, story.build(), story.hook))
