"""What the store keeps of one CDS Hooks feedback entry (validated by http/feedback.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class OverrideReason:
    """The Coding the clinician picked from the card's `overrideReasons`."""

    code: str
    system: str
    display: str | None = None


@dataclass(frozen=True)
class FeedbackEntry:
    card_uuid: str  # canonical lower-case UUID
    outcome: str  # "accepted" | "overridden"
    accepted_suggestions: tuple[str, ...]  # suggestion ids; empty when overridden
    override_reason: OverrideReason | None
    user_comment: str | None
    outcome_timestamp: datetime  # timezone-aware
