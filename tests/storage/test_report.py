"""The usage report: how often each card was shown and what clinicians did with it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.http.feedback import parse_feedback
from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.report import format_report, run_report
from cds_service.storage.store import OverrideReasonCount, Store

REASONS = "http://example.org/cds-services/fhir/CodeSystem/override-reasons"


def show(store: Store, *card_ids: str, status: int = 200, at: datetime | None = None) -> list[str]:
    """One hook call returning one card per card id; returns the card uuids."""
    uuids = [str(uuid.uuid4()) for _ in card_ids]
    store.record_call(
        CallRecord(
            service_id="hfs-outcomes-order-select",
            hook="order-select",
            hook_instance=str(uuid.uuid4()),
            outcome_status=status,
            duration_ms=4.0,
            cards=[ReturnedCard(u, c, f"{c} summary") for u, c in zip(uuids, card_ids)],
            **({"called_at": at} if at else {}),
        )
    )
    return uuids


def accept(store: Store, card_uuid: str) -> None:
    store.record_feedback(
        "svc",
        parse_feedback(
            {
                "feedback": [
                    {
                        "card": card_uuid,
                        "outcome": "accepted",
                        "acceptedSuggestions": [{"id": "s1"}],
                        "outcomeTimestamp": "2024-05-01T09:00:00Z",
                    }
                ]
            }
        ),
    )


def override(store: Store, card_uuid: str, code: str | None = None, display: str | None = None) -> None:
    entry = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2024-05-01T09:00:00Z"}
    if code:
        entry["overrideReason"] = {
            "reason": {"code": code, "system": REASONS, **({"display": display} if display else {})}
        }
    store.record_feedback("svc", parse_feedback({"feedback": [entry]}))


@pytest.fixture
def store(store_url):
    with Store(store_url) as store:
        yield store


def test_an_empty_database_reports_nothing_shown(store):
    report = store.usage_report()
    assert report.cards == () and report.calls == 0 and report.unlinked_feedback == 0
    assert "No cards have been shown yet." in format_report(report)


def test_each_card_counts_showings_outcomes_rates_and_reasons(store):
    mvd_1, rfa_1 = show(store, "mvd-outcome", "rfa-recurrence")
    (mvd_2,) = show(store, "mvd-outcome")
    (mvd_3,) = show(store, "mvd-outcome")
    show(store, status=412)
    accept(store, mvd_1)
    override(store, mvd_2, "12354", "Contraindicated")
    override(store, mvd_3, "12354", "Contraindicated")
    override(store, mvd_3.upper())  # same card, second word, no reason
    accept(store, rfa_1)
    accept(store, str(uuid.uuid4()))  # a card this service never returned

    report = store.usage_report()
    mvd, rfa = report.cards
    assert (mvd.card_id, mvd.shown, mvd.feedback, mvd.accepted, mvd.overridden) == ("mvd-outcome", 3, 4, 1, 3)
    assert mvd.acceptance_rate == pytest.approx(0.25)
    assert mvd.override_rate == pytest.approx(0.75)
    assert mvd.override_reasons == (
        OverrideReasonCount(code="12354", system=REASONS, display="Contraindicated", count=2),
        OverrideReasonCount(code=None, system=None, display=None, count=1),
    )
    assert (rfa.card_id, rfa.shown, rfa.feedback, rfa.acceptance_rate, rfa.override_rate) == (
        "rfa-recurrence",
        1,
        1,
        1.0,
        0.0,
    )
    assert rfa.override_reasons == ()
    assert report.calls == 4
    assert report.calls_by_status == {200: 3, 412: 1}
    assert report.unlinked_feedback == 1


def test_a_card_never_given_feedback_has_no_rates(store):
    show(store, "bta-response", "bta-response")
    [card] = store.usage_report().cards
    assert (card.shown, card.feedback, card.acceptance_rate, card.override_rate) == (2, 0, None, None)


def test_since_limits_the_report_to_recent_calls(store):
    long_ago = datetime.now(UTC) - timedelta(days=400)
    show(store, "mvd-outcome", at=long_ago)
    show(store, "mvd-outcome")
    report = store.usage_report(since=datetime.now(UTC) - timedelta(days=30))
    assert [(c.card_id, c.shown) for c in report.cards] == [("mvd-outcome", 1)]
    assert report.calls == 1


def test_the_printed_report_is_a_table_with_reasons_under_each_card(store):
    mvd_1, mvd_2 = show(store, "mvd-outcome", "mvd-outcome")
    accept(store, mvd_1)
    override(store, mvd_2, "12354", "Contraindicated")
    text = format_report(store.usage_report())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("card"))
    assert header.split() == ["card", "shown", "feedback", "accepted", "overridden", "accept", "%", "override", "%"]
    row = next(line for line in lines if line.startswith("mvd-outcome"))
    assert row.split() == ["mvd-outcome", "2", "2", "1", "1", "50.0", "50.0"]
    assert "overridden 1x: Contraindicated" in text and "|" not in text
    assert "Hook calls: 1 (200: 1)" in text


def test_run_report_reads_the_database_named_by_its_url(database_url):
    with Store(database_url) as store:
        [card_uuid] = show(store, "rfa-recurrence")
        override(store, card_uuid)
    text = run_report(database_url)
    assert "rfa-recurrence" in text
    assert "overridden 1x: (no reason given)" in text


def test_reasons_are_listed_by_the_card_files_text_even_when_the_ehr_sent_only_the_code(store):
    mvd_1, mvd_2 = show(store, "mvd-outcome", "mvd-outcome")
    override(store, mvd_1, "already-addressed")
    override(store, mvd_2, "unknown-reason")
    text = format_report(store.usage_report(), reason_texts={(REASONS, "already-addressed"): "Already addressed"})
    assert "overridden 1x: Already addressed" in text
    assert "overridden 1x: code unknown-reason (no text)" in text
    assert REASONS not in text


def test_the_report_command_reads_the_reason_texts_of_the_shipped_card_files():
    from cds_service.cli import _reason_texts
    from cds_service.config import load_settings

    texts = _reason_texts(load_settings(environ={}))
    assert texts and all(system.startswith("http") and text for (system, _code), text in texts.items())
