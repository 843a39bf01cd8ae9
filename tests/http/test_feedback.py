"""Feedback validation: the CDS Hooks 2.0 feedback body, its examples, and what is refused."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from support.paths import SPEC_EXAMPLES_DIR

from cds_service.errors import ApiError
from cds_service.http.feedback import (
    MAX_COMMENT_LENGTH,
    MAX_ENTRIES,
    FeedbackEntry,
    OverrideReason,
    parse_feedback,
)

SPEC = SPEC_EXAMPLES_DIR
CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"


def spec_example(name: str) -> dict:
    return json.loads((SPEC / name).read_text(encoding="utf-8"))


def accepted(**changes) -> dict:
    entry = {
        "card": CARD,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    entry.update(changes)
    return entry


def overridden(**changes) -> dict:
    entry = {
        "card": CARD,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "12354",
                "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                "display": "Contraindicated",
            },
            "userComment": "Discussed with the patient.\nShe prefers botulinum toxin.",
        },
        "outcomeTimestamp": "2021-12-11T10:05:31+01:00",
    }
    entry.update(changes)
    return entry


def without(entry: dict, *keys: str) -> dict:
    entry = copy.deepcopy(entry)
    for key in keys:
        entry.pop(key)
    return entry


def refused(body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_feedback(body)
    error = caught.value
    assert error.status == 400
    assert error.error == "invalid_feedback"
    return error


# --------------------------------------------------------------------------- spec examples


def test_the_spec_accepted_example_names_the_accepted_suggestion():
    [entry] = parse_feedback(spec_example("feedback-accepted.json"))
    assert entry == FeedbackEntry(
        card_uuid="4e0a3a1e-3283-4575-ab82-028d55fe2719",
        outcome="accepted",
        accepted_suggestions=("e56e1945-20b3-4393-8503-a1a20fd73152",),
        override_reason=None,
        user_comment=None,
        outcome_timestamp=datetime(2021, 12, 11, 10, 5, 31, tzinfo=UTC),
    )


def test_the_spec_overridden_example_needs_no_reason():
    [entry] = parse_feedback(spec_example("feedback-overridden.json"))
    assert entry.outcome == "overridden"
    assert entry.card_uuid == "f6b95768-b1c8-40dc-8385-bf3504b82ffb"
    assert entry.override_reason is None and entry.user_comment is None
    assert entry.accepted_suggestions == ()


def test_the_spec_override_reason_example_keeps_coding_and_comment():
    [entry] = parse_feedback(spec_example("feedback-multiple.json"))
    assert entry.override_reason == OverrideReason(
        code="d7ecf885", system="https://example.com/cds-hooks/override-reason-system", display=None
    )
    assert entry.user_comment == "A comment entered by the clinician."
    assert entry.outcome_timestamp == datetime(2020, 12, 11, tzinfo=UTC)


def test_every_spec_feedback_example_parses():
    examples = sorted(SPEC.glob("feedback-*.json"))
    assert len(examples) >= 3
    for path in examples:
        assert parse_feedback(json.loads(path.read_text(encoding="utf-8")))


def test_several_entries_are_kept_in_order():
    second = "9368d37b-283f-44a0-93ea-547cebab93ed"
    entries = parse_feedback({"feedback": [accepted(), overridden(card=second)]})
    assert [(e.card_uuid, e.outcome) for e in entries] == [(CARD, "accepted"), (second, "overridden")]


# --------------------------------------------------------------------------- accepted values


def test_an_override_with_offset_keeps_the_instant_and_the_multiline_comment():
    [entry] = parse_feedback({"feedback": [overridden()]})
    assert entry.outcome_timestamp.utcoffset() == timedelta(hours=1)
    assert entry.outcome_timestamp == datetime(2021, 12, 11, 9, 5, 31, tzinfo=UTC)
    assert entry.override_reason.display == "Contraindicated"
    assert "\n" in entry.user_comment


def test_a_comment_without_a_coded_reason_is_kept():
    [entry] = parse_feedback({"feedback": [overridden(overrideReason={"userComment": "not now"})]})
    assert entry.override_reason is None
    assert entry.user_comment == "not now"


def test_upper_case_card_uuids_are_stored_in_canonical_form():
    [entry] = parse_feedback({"feedback": [accepted(card=CARD.upper())]})
    assert entry.card_uuid == CARD


@pytest.mark.parametrize(
    "stamp",
    ["2021-12-11T10:05:31.123Z", "2021-12-11T10:05:31.123456-05:00", "2021-12-11T10:05Z", "2021-12-11T10:05:31+0530"],
)
def test_iso_8601_timestamps_with_fractions_and_offsets_are_accepted(stamp):
    [entry] = parse_feedback({"feedback": [accepted(outcomeTimestamp=stamp)]})
    assert entry.outcome_timestamp.tzinfo is not None


def test_extensions_are_tolerated():
    entry = accepted(extension={"com.example.site": {"x": 1}})
    assert parse_feedback({"feedback": [entry]})


# --------------------------------------------------------------------------- the body


@pytest.mark.parametrize("body", [None, [], "feedback", 3, {"feedbacks": []}])
def test_a_body_that_is_not_a_feedback_object_is_refused(body):
    refused(body)


def test_feedback_must_be_a_non_empty_array():
    assert "at least one" in refused({"feedback": []}).detail
    assert "array" in refused({"feedback": accepted()}).detail


def test_too_many_entries_are_refused():
    error = refused({"feedback": [accepted()] * (MAX_ENTRIES + 1)})
    assert str(MAX_ENTRIES) in error.detail
    assert len(parse_feedback({"feedback": [accepted()] * MAX_ENTRIES})) == MAX_ENTRIES


def test_an_entry_that_is_not_an_object_is_refused_by_index():
    assert "feedback[1]" in refused({"feedback": [accepted(), "accepted"]}).detail


# --------------------------------------------------------------------------- each field


@pytest.mark.parametrize("field", ["card", "outcome", "outcomeTimestamp"])
def test_required_fields_are_named_when_missing(field):
    error = refused({"feedback": [accepted(), without(accepted(), field)]})
    assert f"feedback[1].{field}" in error.detail
    assert "required" in error.detail


@pytest.mark.parametrize(
    "card",
    [
        "not-a-uuid",
        "",
        42,
        None,
        "4e0a3a1e32834575ab82028d55fe2719",
        "{4e0a3a1e-3283-4575-ab82-028d55fe2719}",
        "urn:uuid:4e0a3a1e-3283-4575-ab82-028d55fe2719",
    ],
)
def test_the_card_must_be_a_uuid(card):
    assert "feedback[0].card" in refused({"feedback": [accepted(card=card)]}).detail


@pytest.mark.parametrize("outcome", ["ignored", "Accepted", "", None, 1, ["accepted"]])
def test_the_outcome_is_accepted_or_overridden(outcome):
    assert "feedback[0].outcome" in refused({"feedback": [accepted(outcome=outcome)]}).detail


@pytest.mark.parametrize(
    "stamp",
    [
        "2021-12-11T10:05:31",
        "2021-12-11",
        "yesterday",
        "2021-02-30T10:00:00Z",
        "2021-12-11 10:05:31Z",
        1639217131,
        None,
        "2021-12-11T10:05:31Z" + " " * 80,
    ],
)
def test_the_outcome_timestamp_must_be_an_iso_datetime_with_a_zone(stamp):
    error = refused({"feedback": [accepted(outcomeTimestamp=stamp)]})
    assert "feedback[0].outcomeTimestamp" in error.detail


def test_an_accepted_outcome_must_name_its_suggestions():
    error = refused({"feedback": [without(accepted(), "acceptedSuggestions")]})
    assert "feedback[0].acceptedSuggestions" in error.detail
    assert "feedback[0].acceptedSuggestions" in refused({"feedback": [accepted(acceptedSuggestions=[])]}).detail


@pytest.mark.parametrize(
    "suggestions, where",
    [
        ({"id": "x"}, "acceptedSuggestions"),
        (["x"], "acceptedSuggestions[0]"),
        ([{"uuid": "x"}], "acceptedSuggestions[0]"),
        ([{"id": "x"}, {"id": 7}], "acceptedSuggestions[1].id"),
        ([{"id": ""}], "acceptedSuggestions[0].id"),
        ([{"id": "x" * 300}], "acceptedSuggestions[0].id"),
    ],
)
def test_each_accepted_suggestion_is_an_object_with_a_string_id(suggestions, where):
    error = refused({"feedback": [accepted(acceptedSuggestions=suggestions)]})
    assert f"feedback[0].{where}" in error.detail


def test_an_override_cannot_claim_accepted_suggestions():
    entry = overridden(acceptedSuggestions=[{"id": "a"}])
    assert "feedback[0].acceptedSuggestions" in refused({"feedback": [entry]}).detail


def test_an_acceptance_cannot_carry_an_override_reason():
    entry = accepted(overrideReason={"userComment": "why?"})
    assert "feedback[0].overrideReason" in refused({"feedback": [entry]}).detail


@pytest.mark.parametrize(
    "reason, where",
    [
        ("Contraindicated", "overrideReason"),
        ({"reason": "12354"}, "overrideReason.reason"),
        ({"reason": {"system": "http://x"}}, "overrideReason.reason.code"),
        ({"reason": {"code": "12354"}}, "overrideReason.reason.system"),
        ({"reason": {"code": 12354, "system": "http://x"}}, "overrideReason.reason.code"),
        ({"reason": {"code": "1", "system": "http://x", "display": 5}}, "overrideReason.reason.display"),
        ({"userComment": 5}, "overrideReason.userComment"),
        ({"userComment": "x" * (MAX_COMMENT_LENGTH + 1)}, "overrideReason.userComment"),
        ({"comment": "typo"}, "overrideReason"),
    ],
)
def test_the_override_reason_is_a_coding_and_a_comment(reason, where):
    error = refused({"feedback": [overridden(overrideReason=reason)]})
    assert f"feedback[0].{where}" in error.detail


def test_unknown_members_of_an_entry_are_refused_without_echoing_them():
    error = refused({"feedback": [accepted(overideReason={"userComment": "x"})]})
    assert "feedback[0]" in error.detail
    assert "overideReason" not in error.detail


@pytest.mark.parametrize("bad", ["nul\x00byte", "bell\x07", "lone \ud800 surrogate"])
def test_text_the_database_could_not_hold_is_refused(bad):
    entry = overridden(overrideReason={"userComment": bad})
    assert "feedback[0].overrideReason.userComment" in refused({"feedback": [entry]}).detail
    coded = overridden(overrideReason={"reason": {"code": bad, "system": "http://x"}})
    assert "feedback[0].overrideReason.reason.code" in refused({"feedback": [coded]}).detail


def test_a_line_break_is_allowed_in_a_comment_but_not_in_a_code():
    entry = overridden(overrideReason={"reason": {"code": "a\nb", "system": "http://x"}})
    refused({"feedback": [entry]})


def test_the_detail_never_repeats_client_text():
    secret = "Patient John Smith MRN 12345"
    for entry in (accepted(card=secret), accepted(outcome=secret), accepted(outcomeTimestamp=secret)):
        assert secret not in refused({"feedback": [entry]}).detail
