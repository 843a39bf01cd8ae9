"""Feedback validation: the body a CDS client POSTs to `/cds-services/{id}/feedback`.

CDS Hooks 2.0 §Feedback: `{"feedback": [ {card, outcome, acceptedSuggestions?,
overrideReason?, outcomeTimestamp}, ... ]}`. Every problem becomes
`ApiError(400, "invalid_feedback", ...)` naming the entry and the field; client values are
never echoed back (they may hold anything).

Rules beyond the letter of the spec, chosen to keep the store honest:
- `acceptedSuggestions` (one or more `{"id": ...}`) is required when the outcome is
  `accepted` and refused when it is `overridden`; `overrideReason` is refused with
  `accepted`.
- `outcomeTimestamp` must be an ISO 8601 date-time with a time-zone offset.
- Entries, suggestions and strings are bounded; strings may not hold control characters
  (other than tab and line breaks in the free-text comment) or unpaired surrogates.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from cds_service.errors import ApiError
from cds_service.storage.feedback import FeedbackEntry, OverrideReason

MAX_ENTRIES = 100
MAX_SUGGESTIONS = 50
MAX_ID_LENGTH = 256
MAX_CODE_LENGTH = 256
MAX_SYSTEM_LENGTH = 1024
MAX_DISPLAY_LENGTH = 1024
MAX_COMMENT_LENGTH = 4000
MAX_TIMESTAMP_LENGTH = 64

OUTCOMES = ("accepted", "overridden")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Extended ISO 8601 date-time: date, 'T', time with optional fraction, then Z or +hh:mm.
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_OR_BREAK = re.compile(r"[\x00-\x1f\x7f]")

_ENTRY_FIELDS = frozenset({"card", "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp", "extension"})
_REASON_FIELDS = frozenset({"reason", "userComment", "extension"})
_CODING_FIELDS = frozenset({"code", "system", "display", "extension"})


def _invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_feedback", detail)


def _text(value: Any, where: str, max_length: int, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{where} must be a string")
    if not value.strip():
        raise _invalid(f"{where} must not be empty")
    if len(value) > max_length:
        raise _invalid(f"{where} is longer than {max_length} characters")
    forbidden = _CONTROL if multiline else _CONTROL_OR_BREAK
    if forbidden.search(value):
        raise _invalid(f"{where} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{where} is not valid Unicode text") from None
    return value


def _object(value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be an object")
    unknown = sorted(k for k in value if k not in allowed)
    if unknown:
        # Only our own field names are ever echoed.
        raise _invalid(f"{where} has unknown members; allowed: {', '.join(sorted(allowed))}")
    if "extension" in value and not isinstance(value["extension"], dict):
        raise _invalid(f"{where}.extension must be an object")
    return value


def _card_uuid(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise _invalid(f"{where} must be the card's uuid (8-4-4-4-12 hexadecimal)")
    return value.lower()


def _timestamp(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_LENGTH:
        raise _invalid(f"{where} must be an ISO 8601 date-time string with a time zone")
    if not _TIMESTAMP.match(value):
        raise _invalid(f"{where} must be an ISO 8601 date-time with a time zone, e.g. 2021-12-11T10:05:31Z")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise _invalid(f"{where} is not a valid date-time") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _invalid(f"{where} must carry a time zone")
    return parsed


def _suggestions(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _invalid(f"{where} must be an array")
    if not value:
        raise _invalid(f"{where} must name at least one accepted suggestion")
    if len(value) > MAX_SUGGESTIONS:
        raise _invalid(f"{where} has more than {MAX_SUGGESTIONS} suggestions")
    ids = []
    for i, item in enumerate(value):
        item = _object(item, f"{where}[{i}]", frozenset({"id", "extension"}))
        if "id" not in item:
            raise _invalid(f"{where}[{i}].id is required")
        ids.append(_text(item["id"], f"{where}[{i}].id", MAX_ID_LENGTH))
    return tuple(ids)


def _override_reason(value: Any, where: str) -> tuple[OverrideReason | None, str | None]:
    value = _object(value, where, _REASON_FIELDS)
    reason = None
    if value.get("reason") is not None:
        coding = _object(value["reason"], f"{where}.reason", _CODING_FIELDS)
        for required in ("code", "system"):
            if required not in coding:
                raise _invalid(f"{where}.reason.{required} is required")
        display = coding.get("display")
        reason = OverrideReason(
            code=_text(coding["code"], f"{where}.reason.code", MAX_CODE_LENGTH),
            system=_text(coding["system"], f"{where}.reason.system", MAX_SYSTEM_LENGTH),
            display=None if display is None else _text(display, f"{where}.reason.display", MAX_DISPLAY_LENGTH),
        )
    comment = value.get("userComment")
    if comment is not None:
        comment = _text(comment, f"{where}.userComment", MAX_COMMENT_LENGTH, multiline=True)
    return reason, comment


def _entry(value: Any, where: str) -> FeedbackEntry:
    value = _object(value, where, _ENTRY_FIELDS)
    for required in ("card", "outcome", "outcomeTimestamp"):
        if required not in value:
            raise _invalid(f"{where}.{required} is required")
    card_uuid = _card_uuid(value["card"], f"{where}.card")
    outcome = value["outcome"]
    if outcome not in OUTCOMES:
        raise _invalid(f"{where}.outcome must be 'accepted' or 'overridden'")
    timestamp = _timestamp(value["outcomeTimestamp"], f"{where}.outcomeTimestamp")

    suggestions: tuple[str, ...] = ()
    reason: OverrideReason | None = None
    comment: str | None = None
    if outcome == "accepted":
        if value.get("acceptedSuggestions") is None:
            raise _invalid(f"{where}.acceptedSuggestions is required when the outcome is accepted")
        suggestions = _suggestions(value["acceptedSuggestions"], f"{where}.acceptedSuggestions")
        if value.get("overrideReason") is not None:
            raise _invalid(f"{where}.overrideReason is only allowed when the outcome is overridden")
    else:
        if value.get("acceptedSuggestions") is not None:
            raise _invalid(f"{where}.acceptedSuggestions is only allowed when the outcome is accepted")
        if value.get("overrideReason") is not None:
            reason, comment = _override_reason(value["overrideReason"], f"{where}.overrideReason")
    return FeedbackEntry(
        card_uuid=card_uuid,
        outcome=outcome,
        accepted_suggestions=suggestions,
        override_reason=reason,
        user_comment=comment,
        outcome_timestamp=timestamp,
    )


def check_returned_to_site(entries: list[FeedbackEntry], returned_here: Callable[[str], bool]) -> list[FeedbackEntry]:
    """A client bound to a site (multi-site deployments, issue 20) may send feedback only
    about cards returned at its own site: `returned_here(card_uuid)`. Any other card, one
    never returned or one returned at another site, gets the same 400, which never says
    that the card exists elsewhere; nothing of the request is stored."""
    for i, entry in enumerate(entries):
        if not returned_here(entry.card_uuid):
            raise _invalid(f"feedback[{i}].card is not a card this service returned to your site")
    return entries


def check_accepted_suggestions(
    entries: list[FeedbackEntry], issued: Callable[[str], dict[str, str] | None]
) -> list[FeedbackEntry]:
    """Accepted suggestions must be ones issued with that card.

    `issued(card_uuid)` gives the suggestions the service issued with a card it returned
    (suggestion uuid -> the card file's suggestion id), or None for a card this service has
    no record of returning (its feedback is kept as it is, as unlinked feedback). The entries
    come back with the card file's suggestion ids, which the report counts."""
    out = []
    for i, entry in enumerate(entries):
        if entry.outcome != "accepted":
            out.append(entry)
            continue
        known = issued(entry.card_uuid)
        if known is None:
            out.append(entry)
            continue
        ids = []
        for j, suggestion in enumerate(entry.accepted_suggestions):
            declared = known.get(suggestion.lower())
            if declared is None:
                raise _invalid(f"feedback[{i}].acceptedSuggestions[{j}].id is not a suggestion issued with this card")
            ids.append(declared)
        out.append(replace(entry, accepted_suggestions=tuple(ids)))
    return out


def check_override_reasons(
    entries: list[FeedbackEntry], offered: Callable[[str], frozenset[tuple[str, str]]]
) -> list[FeedbackEntry]:
    """An override reason must be one offered with that card (its own coding or its HL7
    category); `offered(card_uuid)` gives them. Another reason is refused, not stored."""
    for i, entry in enumerate(entries):
        reason = entry.override_reason
        if reason is not None and (reason.system, reason.code) not in offered(entry.card_uuid):
            raise _invalid(
                f"feedback[{i}].overrideReason.reason is not one of the overrideReasons offered with this card"
            )
    return entries


def parse_feedback(body: Any) -> list[FeedbackEntry]:
    """Validate a CDS Hooks 2.0 feedback body; ApiError(400, "invalid_feedback") otherwise."""
    if not isinstance(body, dict):
        raise _invalid("the feedback body must be a JSON object with a 'feedback' array")
    if "feedback" not in body:
        raise _invalid("feedback is required: an array of feedback entries")
    entries = body["feedback"]
    if not isinstance(entries, list):
        raise _invalid("feedback must be an array")
    if not entries:
        raise _invalid("feedback must hold at least one entry")
    if len(entries) > MAX_ENTRIES:
        raise _invalid(f"feedback holds more than {MAX_ENTRIES} entries")
    return [_entry(entry, f"feedback[{i}]") for i, entry in enumerate(entries)]
