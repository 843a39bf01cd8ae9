"""The usage report printed by `cds-service report`: how often each card was shown and
what clinicians did with it (accepted / overridden, and why)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from cds_service.formatting import percent_number
from cds_service.storage.store import Report, Store, StoreOptions, feedback, returned_cards

_COLUMNS = ("card", "shown", "feedback", "accepted", "overridden", "accept %", "override %")


def _percent(rate: float | None) -> str:
    return percent_number(rate)


def _reason_label(
    code: str | None, system: str | None, display: str | None, texts: Mapping[tuple[str, str], str] | None = None
) -> str:
    """A reason as a clinician reads it: the card file's text for that coded reason, else the
    display the EHR sent, else the bare code (a reason no card file offers)."""
    if code is None:
        return "(no reason given)"
    text = (texts or {}).get((system or "", code)) or display
    return text if text else f"code {code} (no text)"


def accepted_suggestions(store: Store, since: datetime | None = None) -> dict[str, dict[str, int]]:
    """Card file id -> suggestion id -> times accepted (the ids the feedback endpoint stored)."""
    card_of_uuid = (
        sa.select(returned_cards.c.card_uuid, sa.func.min(returned_cards.c.card_id).label("card_id"))
        .group_by(returned_cards.c.card_uuid)
        .subquery("card_of_uuid")
    )
    query = (
        sa.select(card_of_uuid.c.card_id, feedback.c.accepted_suggestions)
        .select_from(feedback.join(card_of_uuid, card_of_uuid.c.card_uuid == feedback.c.card_uuid))
        .where(feedback.c.outcome == "accepted")
    )
    if since is not None:
        query = query.where(feedback.c.received_at >= since)
    counts: dict[str, dict[str, int]] = {}
    with store.engine.connect() as conn:
        for card_id, ids in conn.execute(query):
            for suggestion in json.loads(ids or "[]"):
                per_card = counts.setdefault(card_id, {})
                per_card[suggestion] = per_card.get(suggestion, 0) + 1
    return counts


def format_report(
    report: Report,
    accepted: dict[str, dict[str, int]] | None = None,
    reason_texts: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """A plain-text table, one row per card file, override reasons (by their text:
    `reason_texts` maps (system, code) to the card files' words) and accepted suggestions
    listed under each."""
    lines = [f"CDS service usage report, generated {report.generated_at.isoformat(timespec='seconds')}"]
    if report.since is not None:
        lines.append(f"Since {report.since.isoformat(timespec='seconds')}")
    statuses = ", ".join(f"{status}: {n}" for status, n in report.calls_by_status.items())
    lines.append(f"Hook calls: {report.calls}" + (f" ({statuses})" if statuses else ""))
    lines.append("")

    rows = [
        (
            card.card_id,
            str(card.shown),
            str(card.feedback),
            str(card.accepted),
            str(card.overridden),
            _percent(card.acceptance_rate),
            _percent(card.override_rate),
        )
        for card in report.cards
    ]
    if not rows:
        lines.append("No cards have been shown yet.")
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]

        def line(cells) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
            return "  ".join((first, *rest)).rstrip()

        lines.append(line(_COLUMNS))
        lines.append("  ".join("-" * w for w in widths))
        for card, row in zip(report.cards, rows):
            lines.append(line(row))
            for reason in card.override_reasons:
                label = _reason_label(reason.code, reason.system, reason.display, reason_texts)
                lines.append(f"    overridden {reason.count}x: {label}")
            for suggestion, n in sorted((accepted or {}).get(card.card_id, {}).items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    accepted {n}x: suggestion {suggestion}")
        lines.append("")
        lines.append("accept % and override % are shares of the feedback received for the card.")
    if report.unlinked_feedback:
        lines.append(f"Feedback about cards this service has no record of returning: {report.unlinked_feedback}")
    return "\n".join(lines) + "\n"


def run_report(
    database_url: str,
    since: datetime | None = None,
    options: StoreOptions | None = None,
    reason_texts: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """Open the store, build the usage report, and return it as text."""
    store = Store(database_url, options)
    try:
        return format_report(store.usage_report(since=since), accepted_suggestions(store, since), reason_texts)
    finally:
        store.close()
