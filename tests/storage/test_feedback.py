"""What the store keeps of one feedback entry: immutable values that come back from the
store as they went in (timestamps in UTC)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cds_service.storage.feedback import FeedbackEntry, OverrideReason
from cds_service.storage.store import Store

CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"


def overridden(**changes) -> FeedbackEntry:
    entry = FeedbackEntry(
        card_uuid=CARD,
        outcome="overridden",
        accepted_suggestions=(),
        override_reason=OverrideReason(code="not-relevant", system="https://ehr.example.org/reasons"),
        user_comment="seen before",
        outcome_timestamp=datetime(2026, 1, 15, 10, 5, 31, tzinfo=timezone(timedelta(hours=2))),
    )
    return dataclasses.replace(entry, **changes)


def test_an_entry_and_its_reason_are_values_that_cannot_be_changed():
    assert overridden() == overridden() and hash(overridden()) == hash(overridden())
    assert overridden().override_reason.display is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        overridden().outcome = "accepted"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        overridden().override_reason.code = "x"  # type: ignore[misc, union-attr]


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'feedback.sqlite3'}")
    yield store
    store.close()


def test_an_overridden_entry_comes_back_from_the_store_as_it_went_in(store):
    reason = OverrideReason(code="not-relevant", system="https://ehr.example.org/reasons", display="Not relevant")
    assert store.record_feedback("hfs-outcomes-order-sign", [overridden(override_reason=reason)]) == 1
    [stored] = store.feedback_for(CARD)
    assert (stored.service_id, stored.outcome, stored.override_reason) == (
        "hfs-outcomes-order-sign",
        "overridden",
        reason,
    )
    assert stored.user_comment == "seen before" and stored.accepted_suggestions == ()
    assert stored.outcome_timestamp == datetime(2026, 1, 15, 8, 5, 31, tzinfo=UTC)


def test_an_accepted_entry_keeps_its_suggestion_ids_and_no_reason(store):
    entry = overridden(outcome="accepted", accepted_suggestions=("s-1", "s-2"), override_reason=None, user_comment=None)
    store.record_feedback("hfs-outcomes-order-sign", [entry])
    [stored] = store.feedback_for(CARD)
    assert (stored.outcome, stored.accepted_suggestions, stored.override_reason) == ("accepted", ("s-1", "s-2"), None)
