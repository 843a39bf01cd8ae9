"""source.topic (issue 19): every card says what it is about as a Coding, the same for
every situation of the card and distinct between cards, so an EHR can filter and count."""

from __future__ import annotations

from support.chart import Chart

from cds_service.clinical.evaluate import evaluate
from cds_service.clinical.render import render
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import load_cards

LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
CARDS = load_cards(DEFAULT_CARDS_DIR)


def test_every_card_file_has_a_topic_of_its_own_in_the_local_code_system():
    topics = [(c.topic.system, c.topic.code) for c in CARDS]
    assert all(system == LOCAL for system, _ in topics)
    assert len(set(topics)) == len(CARDS) == 5
    assert all(c.topic.display.strip() for c in CARDS)


def test_a_rendered_card_sends_its_topic_in_source():
    chart = Chart(patient_id="pt-topic-1").hfs().mvd("2025-06-10T08:00:00Z")
    card = next(c for c in CARDS if c.id == "mvd-recurrence")
    result = evaluate(card, chart.record("patient-view", "2026-01-15"), "patient-view")
    source = render(result)["source"]
    assert source["topic"] == {
        "system": LOCAL,
        "code": "hfs-mvd-recurrence",
        "display": "Hemifacial spasm: recurrence after microvascular decompression",
    }
