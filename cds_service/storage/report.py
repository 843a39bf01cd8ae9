"""The usage report printed by `cds-service report`: how often each card was shown and
what clinicians did with it (accepted / overridden, and why)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from cds_service.formatting import percent_number
from cds_service.storage.store import Report, Store, StoreOptions, feedback_links
from cds_service.storage.tables import feedback, returned_cards, service_calls
from cds_service.storage.usage import UsageAlarm, UsageRow, clinician_usage

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


def accepted_suggestions(
    store: Store, since: datetime | None = None, site: str | None = None
) -> dict[str, dict[str, int]]:
    """Card file id -> suggestion id -> times accepted (the ids the feedback endpoint stored);
    `site`: the cards returned at that site and its clients' feedback only."""
    card_of_uuid = (
        sa.select(
            returned_cards.c.card_uuid, service_calls.c.site, sa.func.min(returned_cards.c.card_id).label("card_id")
        )
        .select_from(returned_cards.join(service_calls, service_calls.c.id == returned_cards.c.call_id))
        .group_by(returned_cards.c.card_uuid, service_calls.c.site)
    )
    if site is not None:
        card_of_uuid = card_of_uuid.where(service_calls.c.site == site)
    card_of_uuid = card_of_uuid.subquery("card_of_uuid")
    query = (
        sa.select(card_of_uuid.c.card_id, feedback.c.accepted_suggestions)
        .select_from(feedback.join(card_of_uuid, feedback_links(card_of_uuid)))
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


_MONTHLY = (
    "month",
    "card",
    "situation",
    "client",
    "calls",
    "fired",
    "/100 calls",
    "accept %",
    "override %",
    "evidence %",
)


def format_monthly(
    rows: list[UsageRow], alarms: list[UsageAlarm], reason_texts: Mapping[tuple[str, str], str] | None = None
) -> str:
    """Per card x situation x client x month (storage/usage.py): firing rate, acceptance,
    override (by reason) and evidence-page open rates, then the alarms."""
    lines = ["What clinicians do with the cards, by month (rates per card fired; firing per 100 hook calls)"]
    if not rows:
        return "\n".join([*lines, "No cards have been shown yet."]) + "\n"
    table = [
        (
            r.month,
            r.card_id,
            r.situation,
            r.client,
            str(r.calls),
            str(r.fired),
            "-" if r.firing_per_100_calls is None else f"{r.firing_per_100_calls:.1f}",
            _percent(r.share(r.accepted)),
            _percent(r.share(r.overridden)),
            _percent(r.share(r.opened)),
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(_MONTHLY)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(_MONTHLY, widths)).rstrip())
    for row, cells in zip(rows, table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        for (code, system, display), n in sorted(row.reasons.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            lines.append(
                f"    overridden {n}x ({_percent(n / row.fired)} %): {_reason_label(code, system, display, reason_texts)}"
            )
    lines.append("")
    lines += [a.text() for a in alarms] or ["No alarm: no card's firing or override rate jumped in its latest month."]
    return "\n".join(lines) + "\n"


def run_report(
    database_url: str,
    since: datetime | None = None,
    options: StoreOptions | None = None,
    reason_texts: Mapping[tuple[str, str], str] | None = None,
    site: str | None = None,
    monthly: bool = False,
) -> str:
    """Open the store, build the usage report, and return it as text. `reason_texts` maps
    (system, code) to the card files' words. `site`: that site's calls (the site stored in
    each audit row, whichever client or tenant made them) and its clients' feedback only;
    None: the whole deployment. `monthly`: also the report per card x situation x client x
    month, with its alarms (storage/usage.py)."""
    store = Store(database_url, options)
    try:
        text = format_report(
            store.usage_report(since=since, site=site), accepted_suggestions(store, since, site), reason_texts
        )
        if monthly:
            text += "\n" + format_monthly(*clinician_usage(store, since, site), reason_texts)
        return f"Site: {site}\n{text}" if site is not None else text
    finally:
        store.close()
