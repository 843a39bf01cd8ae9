"""What clinicians do with the cards, per card x situation x client x month, for the people
who decide whether a card stays on (`cds-service report --monthly`):

- firing rate: cards fired per 100 hook calls of that client that month (answered 200);
- acceptance and override rates: feedback `accepted` / `overridden` per card fired (the
  card's month is the month it fired), overrides by reason;
- evidence-page open rate: cards whose evidence page was opened at least once, per card
  fired (the service owns the page, so it alone knows).

An alarm is raised when, in the latest month, a card's firing rate or override rate for a
client differs from its earlier months pooled by more than chance allows: an exact
conditional test (the month's count against the earlier months', binomial given the total,
two-sided for firing, upper for override) at p < ALARM_P, and a change of at least
ALARM_RATIO-fold (so a tiny but real change on a busy card does not alarm).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from cds_service.storage.store import Store
from cds_service.storage.tables import feedback, returned_cards, service_calls

ALARM_P = 0.001
ALARM_RATIO = 1.5


@dataclass
class UsageRow:
    month: str  # YYYY-MM (UTC) of the hook calls
    card_id: str
    situation: str  # "(before 0.3.0)" for cards audited without one
    client: str  # the client's issuer, "(unauthenticated)" without one
    calls: int  # the client's hook calls that month (answered 200)
    fired: int
    accepted: int = 0
    overridden: int = 0
    opened: int = 0
    reasons: dict[tuple[str | None, str | None, str | None], int] = field(default_factory=dict)

    @property
    def firing_per_100_calls(self) -> float | None:
        return 100.0 * self.fired / self.calls if self.calls else None

    def share(self, count: int) -> float | None:
        return count / self.fired if self.fired else None


@dataclass(frozen=True)
class UsageAlarm:
    card_id: str
    situation: str
    client: str
    month: str
    what: str  # "firing rate" | "override rate"
    before: float
    now: float
    p_value: float

    def text(self) -> str:
        unit = " per 100 hook calls" if self.what == "firing rate" else " % of cards fired"
        scale = 1.0 if self.what == "firing rate" else 100.0
        return (
            f"ALARM {self.card_id} / {self.situation} for {self.client}: {self.what} in {self.month} "
            f"{self.now * scale:.1f}{unit}, before {self.before * scale:.1f} (p = {self.p_value:.2g})"
        )


def _month(column, dialect: str):
    if dialect == "sqlite":
        return sa.func.strftime("%Y-%m", column)
    return sa.func.to_char(column, "YYYY-MM")


def clinician_usage(store: Store, since: datetime | None = None, site: str | None = None):
    """The rows, sorted by month, card, situation and client, and the alarms. `site`: the
    calls evaluated with that site's overlay (stored in each audit row) and its clients'
    feedback only; None: the whole deployment."""
    month = _month(service_calls.c.called_at, store.engine.dialect.name)
    client = sa.func.coalesce(service_calls.c.client_iss, "(unauthenticated)")
    situation = sa.func.coalesce(returned_cards.c.situation, "(before 0.3.0)")
    calls_q = (
        sa.select(month.label("month"), client.label("client"), sa.func.count())
        .where(service_calls.c.outcome_status == 200)
        .group_by("month", "client")
    )
    joined = returned_cards.join(service_calls, service_calls.c.id == returned_cards.c.call_id)
    fired_q = (
        sa.select(
            month.label("month"),
            returned_cards.c.card_id,
            situation.label("situation"),
            client.label("client"),
            sa.func.count(),
            sa.func.count(returned_cards.c.evidence_opened_at),
        )
        .select_from(joined)
        .group_by("month", returned_cards.c.card_id, "situation", "client")
    )
    feedback_q = (
        sa.select(
            month.label("month"),
            returned_cards.c.card_id,
            situation.label("situation"),
            client.label("client"),
            feedback.c.outcome,
            feedback.c.override_reason_code,
            feedback.c.override_reason_system,
            sa.func.max(feedback.c.override_reason_display),
            sa.func.count(),
        )
        .select_from(
            joined.join(
                feedback,
                sa.and_(  # feedback from the card's own site only (store.feedback_links)
                    feedback.c.card_uuid == returned_cards.c.card_uuid,
                    feedback.c.site.is_not_distinct_from(service_calls.c.site),
                ),
            )
        )
        .group_by(
            "month",
            returned_cards.c.card_id,
            "situation",
            "client",
            feedback.c.outcome,
            feedback.c.override_reason_code,
            feedback.c.override_reason_system,
        )
    )

    def limit(query):
        if since is not None:
            query = query.where(service_calls.c.called_at >= since)
        if site is not None:
            query = query.where(service_calls.c.site == site)
        return query

    calls_q, fired_q, feedback_q = limit(calls_q), limit(fired_q), limit(feedback_q)
    with store.engine.connect() as conn:
        calls = {(m, c): n for m, c, n in conn.execute(calls_q)}
        rows: dict[tuple, UsageRow] = {}
        for m, card_id, sit, c, n, opened in conn.execute(fired_q):
            rows[(m, card_id, sit, c)] = UsageRow(m, card_id, sit, c, calls.get((m, c), 0), n, opened=opened)
        for m, card_id, sit, c, outcome, code, system, display, n in conn.execute(feedback_q):
            row = rows.get((m, card_id, sit, c))
            if row is None:
                continue
            if outcome == "accepted":
                row.accepted += n
            elif outcome == "overridden":
                row.overridden += n
                row.reasons[(code, system, display)] = row.reasons.get((code, system, display), 0) + n
    ordered = [rows[k] for k in sorted(rows)]
    return ordered, usage_alarms(ordered)


def usage_alarms(rows: list[UsageRow]) -> list[UsageAlarm]:
    by_series: dict[tuple[str, str, str], list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_series[(row.card_id, row.situation, row.client)].append(row)
    alarms = []
    for (card_id, sit, client), series in sorted(by_series.items()):
        series.sort(key=lambda r: r.month)
        if len(series) < 2:
            continue
        last, earlier = series[-1], series[:-1]
        calls_before, fired_before = sum(r.calls for r in earlier), sum(r.fired for r in earlier)
        if last.calls and calls_before:
            p = _two_sided(last.fired, last.fired + fired_before, last.calls / (last.calls + calls_before))
            before, now = fired_before / calls_before, last.fired / last.calls
            if p < ALARM_P and _fold(before, now) >= ALARM_RATIO:
                alarms.append(UsageAlarm(card_id, sit, client, last.month, "firing rate", 100 * before, 100 * now, p))
        over_before = sum(r.overridden for r in earlier)
        if last.fired and fired_before:
            before, now = over_before / fired_before, last.overridden / last.fired
            p = _upper(last.overridden, last.fired, max(before, 1.0 / (fired_before + 1)))
            if p < ALARM_P and _fold(before, now) >= ALARM_RATIO and now > before:
                alarms.append(UsageAlarm(card_id, sit, client, last.month, "override rate", before, now, p))
    return alarms


def _fold(a: float, b: float) -> float:
    if a == 0 or b == 0:
        return math.inf if a != b else 1.0
    return max(a / b, b / a)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1:
        return 0.0 if k == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def _upper(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p)."""
    return min(1.0, sum(math.exp(_log_pmf(i, n, p)) for i in range(k, n + 1)))


def _two_sided(k: int, n: int, p: float) -> float:
    """Exact two-sided binomial p-value (the outcomes no more likely than k)."""
    observed = _log_pmf(k, n, p)
    return min(1.0, sum(math.exp(lp) for lp in (_log_pmf(i, n, p) for i in range(n + 1)) if lp <= observed + 1e-9))
