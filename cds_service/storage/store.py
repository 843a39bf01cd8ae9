"""The service's persistent state: feedback, the audit trail, used JWT ids, evidence pages.

`Store` is the operations on the tables (tables.py), each one bounded in time through the
guarded engine (engine.py: SQLite or PostgreSQL, StoreUnavailable, 503 with Retry-After,
when the database refuses or does not answer). The schema is migrated with Alembic when a
Store opens (storage/migrate.py), or checked only when the setting `db_migrations = "manual"`.

Audit rows and evidence pages are written by one batching writer (audit_writer.py): a
hook call that returns cards is answered only once its audit row and its cards' evidence
pages are committed (or spooled): `keep_call`, a group commit. Other audit rows (refused
calls) are written off the request path (`submit_call`), a page on its own with
`keep_pages`; all of them in transactions of `keep_calls`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from cds_service.storage import migrate
from cds_service.storage.audit import CallRecord, PageRow, ReturnedCard
from cds_service.storage.audit_spool import AuditSpool
from cds_service.storage.audit_writer import AuditWriter
from cds_service.storage.engine import GuardedEngine, StoreError, StoreUnavailable
from cds_service.storage.feedback import FeedbackEntry, OverrideReason
from cds_service.storage.tables import (
    JTI_BYTES,
    JTI_ISSUER_BYTES,
    LEN_CARD_ID,
    LEN_CARD_UUID,
    LEN_CODE,
    LEN_DISPLAY,
    LEN_HASH,
    LEN_HOOK,
    LEN_HOOK_INSTANCE,
    LEN_INSTANCE,
    LEN_ISSUER,
    LEN_RECORD_ID,
    LEN_SERVICE_ID,
    LEN_SITE,
    LEN_SUMMARY,
    LEN_SYSTEM,
    evidence_pages,
    feedback,
    returned_cards,
    service_calls,
    used_jti,
)

log = logging.getLogger(__name__)

JTI_PRUNE_INTERVAL_S = 300.0

T = TypeVar("T")


@dataclass(frozen=True)
class StoreOptions:
    """Time bounds and behaviour of a Store (from the settings `db_*`, `audit_*`)."""

    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 5.0
    pool_timeout_s: float = 2.0
    pool_size: int = 5
    max_overflow: int = 10
    keepalives_idle_s: int = 10
    keepalives_interval_s: int = 5
    keepalives_count: int = 3
    retry_after_s: float = 2.0
    migrations: str = "auto"  # "auto": upgrade on open; "manual": refuse an old schema; "none": leave it
    instance_id: str = ""  # which instance answered, in each audit row; "" = host:pid
    spool_dir: Path | None = None  # local audit spool; None: rows the store refuses are lost
    audit_queue_size: int = 1000
    audit_spool_max_bytes: int = 64 * 1024 * 1024
    audit_commit_wait_s: float = 0.5  # a call waits this long for its commit, then spools its row
    sqlite_synchronous: str = "full"  # "full": a commit is on disk when it returns; "normal": not

    @property
    def deadline_s(self) -> float:
        """Client-side bound on one operation once it holds a connection."""
        return self.statement_timeout_s + 0.5


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- values


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredFeedback:
    id: int
    service_id: str
    card_uuid: str
    outcome: str
    accepted_suggestions: tuple[str, ...]
    override_reason: OverrideReason | None
    user_comment: str | None
    outcome_timestamp: datetime  # UTC
    received_at: datetime  # UTC
    site: str | None = None  # the sender's site (None: shared content, or before 0.3.0)


@dataclass(frozen=True)
class IssuedCard:
    """A card this service returned, found by its uuid."""

    call_id: int
    service_id: str
    card_id: str
    called_at: datetime
    site: str | None = None  # the site it was returned at (None: shared content, or before 0.3.0)


@dataclass(frozen=True)
class OverrideReasonCount:
    code: str | None  # None: overridden without a reason
    system: str | None
    display: str | None
    count: int


@dataclass(frozen=True)
class CardUsage:
    card_id: str
    shown: int  # times the card was returned
    feedback: int  # feedback entries received about it
    accepted: int
    overridden: int
    override_reasons: tuple[OverrideReasonCount, ...]

    @property
    def acceptance_rate(self) -> float | None:
        """Share of the feedback received that was `accepted` (None without feedback)."""
        return self.accepted / self.feedback if self.feedback else None

    @property
    def override_rate(self) -> float | None:
        """Share of the feedback received that was `overridden` (None without feedback)."""
        return self.overridden / self.feedback if self.feedback else None


@dataclass(frozen=True)
class Report:
    cards: tuple[CardUsage, ...]  # sorted by card_id
    calls: int  # hook calls audited
    calls_by_status: dict[int, int]
    unlinked_feedback: int  # feedback about card uuids never returned here
    generated_at: datetime
    since: datetime | None = None


def _clean(value: str | None, limit: int | None = None) -> str | None:
    """Text the database will take: no NUL, no unpaired surrogate, at most `limit` chars."""
    if value is None:
        return None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    value = value.replace("\x00", "")
    return value[:limit] if limit is not None else value


def _jti_key_part(value: str, max_bytes: int) -> str:
    """The value itself, or a digest of it when it is too long or not storable as text."""
    try:
        raw = value.encode("utf-8")
        if len(raw) <= max_bytes and "\x00" not in value:
            return value
    except UnicodeEncodeError:
        pass
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def feedback_links(cards: sa.FromClause) -> sa.ColumnElement[bool]:
    """Feedback is about a card returned by a call (`cards`: a selectable with the card's
    `card_uuid` and its call's `site`) when it names the card and came from the card's own
    site: feedback a client of another site (or of the shared content) sent about the uuid
    never counts for that site."""
    return sa.and_(cards.c.card_uuid == feedback.c.card_uuid, feedback.c.site.is_not_distinct_from(cards.c.site))


def _insert_rows(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """One INSERT for all `rows`. A single row goes as a plain INSERT, whose compiled form
    SQLAlchemy caches (a multi-row VALUES is compiled again for every call: 0.6 ms of a
    hook call's CPU when each call committed its own card and page)."""
    if len(rows) == 1:
        conn.execute(table.insert(), rows[0])
    elif rows:
        conn.execute(table.insert().values(rows))


def _rows(conn: Connection, query: sa.Select[Any]) -> list[Any]:
    """The rows of a report query, as untyped tuples (their columns are known here)."""
    return list(conn.execute(query))


# --------------------------------------------------------------------------- store


class Store:
    """The database behind the service. One per process; thread-safe (pooled engine)."""

    def __init__(self, database_url: str, options: StoreOptions | None = None) -> None:
        self.options = options = options or StoreOptions()
        self.db = GuardedEngine(database_url, options)
        self.engine: Engine = self.db.engine
        self.backend = self.db.backend
        self.instance_id = (options.instance_id or default_instance_id())[:LEN_INSTANCE]
        self._next_prune = 0.0
        self.db.open(self._open_schema)

        spool = AuditSpool(options.spool_dir, options.audit_spool_max_bytes) if options.spool_dir else None
        self.audit_writer = AuditWriter(
            self.keep_calls,
            spool,
            wait_s=options.audit_commit_wait_s,
            retry_s=options.retry_after_s,
            queue_size=options.audit_queue_size,
            store_down=self.db.is_down,
        )

    # -- lifecycle

    def _open_schema(self, engine: Engine) -> None:
        """Migrate to the current schema (or, with manual migrations, check it is current)."""
        if self.options.migrations == "none":
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        elif self.options.migrations == "manual":
            current, head = migrate.pending(engine)
            if current != head:
                raise StoreError(
                    f"the {self.backend} database schema is at revision {current or 'none (empty)'} "
                    f"and this version needs {head}; db_migrations is 'manual': "
                    "run `cds-service db upgrade` first"
                )
        else:
            before, after = migrate.upgrade(engine)
            if before != after:
                log.info("store schema migrated: %s -> %s", before or "empty", after)

    def upgrade_schema(self) -> tuple[str | None, str]:
        return migrate.upgrade(self.engine)

    def close(self) -> None:
        self.audit_writer.close()
        self.db.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def is_down(self) -> bool:
        """True for `retry_after_s` after a failure: requests get a 503 without waiting."""
        return self.db.is_down()

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True if the database answers `SELECT 1` within `timeout_s` (for /readyz); never
        raises, never waits longer."""
        return self.db.ping(timeout_s)

    def read(self, what: str, operation: Callable[[Connection], T]) -> T:
        """`operation(conn)` reading the store, bounded in time: StoreUnavailable (503 with
        Retry-After) when the database refuses or does not answer within the deadline."""
        return self.db.run(what, operation, write=False)

    def keep_call(self, call: CallRecord) -> bool:
        """Commit one audit row (and the evidence pages it carries) before the call is
        answered, batched with the rows of concurrent calls; spooled locally when the store
        cannot take it in time. False only when neither could keep it: answer 503 then."""
        return self.audit_writer.keep(self._identified(call))

    def submit_call(self, call: CallRecord) -> bool:
        """Queue one audit row for the background writer; never waits for the database.

        False only when the row could be neither queued nor spooled (logged at ERROR)."""
        return self.audit_writer.submit(self._identified(call))

    def _identified(self, call: CallRecord) -> CallRecord:
        if call.record_id is None or call.instance_id is None:
            call = dataclasses.replace(
                call,
                record_id=call.record_id or uuid.uuid4().hex,
                instance_id=call.instance_id or self.instance_id,
            )
        return call

    def flush_audit(self, timeout_s: float = 5.0) -> bool:
        return self.audit_writer.flush(timeout_s)

    def audit_spool_depth(self) -> int:
        """Audit rows waiting in the local spool (every process of this instance folder)."""
        return self.audit_writer.spool_depth()

    def audit_queue_depth(self) -> int:
        """Audit rows queued in this process, not yet written."""
        return self.audit_writer.queue_depth()

    # -- feedback

    def record_feedback(self, service_id: str, entries: Iterable[FeedbackEntry], site: str | None = None) -> int:
        """Store validated feedback entries (feedback.parse_feedback); returns how many.
        `site`: the sending client's site (None: the shared content)."""
        received_at = _utcnow()
        rows = []
        for entry in entries:
            reason = entry.override_reason
            rows.append(
                {
                    "service_id": _clean(service_id, LEN_SERVICE_ID),
                    "card_uuid": _clean(entry.card_uuid.lower(), LEN_CARD_UUID),
                    "outcome": entry.outcome,
                    "accepted_suggestions": json.dumps(list(entry.accepted_suggestions)),
                    "override_reason_code": _clean(reason.code, LEN_CODE) if reason else None,
                    "override_reason_system": _clean(reason.system, LEN_SYSTEM) if reason else None,
                    "override_reason_display": _clean(reason.display, LEN_DISPLAY) if reason else None,
                    "user_comment": _clean(entry.user_comment),
                    "outcome_timestamp": entry.outcome_timestamp,
                    "received_at": received_at,
                    "site": _clean(site, LEN_SITE),
                }
            )
        if rows:
            self.db.run("record_feedback", lambda conn: conn.execute(feedback.insert(), rows))
        return len(rows)

    def mark_evidence_opened(self, card_uuid: str) -> None:
        """The card's evidence page was opened (the first time counts)."""
        statement = (
            returned_cards.update()
            .where(returned_cards.c.card_uuid == card_uuid.lower())
            .where(returned_cards.c.evidence_opened_at.is_(None))
            .values(evidence_opened_at=_utcnow())
        )
        self.db.run("mark_evidence_opened", lambda conn: conn.execute(statement))

    def feedback_for(self, card_uuid: str) -> list[StoredFeedback]:
        """Feedback received about one card, oldest first."""
        query = sa.select(feedback).where(feedback.c.card_uuid == card_uuid.lower()).order_by(feedback.c.id)
        rows = self.db.run("feedback_for", lambda conn: conn.execute(query).mappings().all(), write=False)
        return [
            StoredFeedback(
                id=row["id"],
                service_id=row["service_id"],
                card_uuid=row["card_uuid"],
                outcome=row["outcome"],
                accepted_suggestions=tuple(json.loads(row["accepted_suggestions"])),
                override_reason=OverrideReason(
                    code=row["override_reason_code"],
                    system=row["override_reason_system"],
                    display=row["override_reason_display"],
                )
                if row["override_reason_code"] is not None
                else None,
                user_comment=row["user_comment"],
                outcome_timestamp=row["outcome_timestamp"],
                received_at=row["received_at"],
                site=row["site"],
            )
            for row in rows
        ]

    # -- audit trail

    def record_call(self, call: CallRecord) -> int:
        """Write one hook call and the cards it returned, atomically; returns the call id.

        Synchronous (tests, tools). Hook calls use `keep_call` and `submit_call`."""
        return self.db.run("record_call", lambda conn: self._insert_call(conn, call), fail_fast=False)

    def record_calls(self, calls: list[CallRecord]) -> int:
        """Write audit rows at once (tools, tests, and the audit writer's keep_calls when a
        row is already stored); returns rows written.

        Idempotent: a row whose `record_id` is already stored is skipped, so a spooled row
        replayed twice is kept once. StoreUnavailable when the store cannot be written."""

        def write_all(conn: Connection) -> int:
            self._insert_calls(conn, calls)
            return len(calls)

        try:
            return self.db.run("record_calls", write_all, fail_fast=False)
        except IntegrityError:
            pass
        written = 0
        for call in calls:
            try:
                self.db.run("record_calls", functools.partial(self._insert_call, call=call), fail_fast=False)
                written += 1
            except IntegrityError:
                continue  # already stored (same record_id)
        return written

    def keep_calls(self, calls: list[CallRecord], pages: list[PageRow] | None = None) -> None:
        """Commit one batch of the audit writer (audit_writer.py): audit rows with their
        cards and evidence pages, and `pages` written on their own, in one transaction within
        `audit_commit_wait_s`: StoreUnavailable when it cannot (the rows are then spooled).

        Idempotent: when a row's `record_id` is already stored (a spooled row committed
        late, or replayed twice) the rows are written one by one and that one skipped.

        A commit that runs out of that short bound does not mark the store down (other
        operations keep their own bounds); a store that refuses does. On SQLite the wait for
        another process's write lock is cut to the same bound for this transaction."""
        within_s = self.options.audit_commit_wait_s
        try:
            self.db.run(
                "keep_calls", lambda conn: self._insert_calls(conn, calls, pages), fail_fast=False, within_s=within_s
            )
        except IntegrityError:
            self.record_calls(calls)  # one of them already stored (a replayed spool): row by row
            if pages:
                self.db.run("keep_pages", lambda conn: self._insert_calls(conn, [], pages), fail_fast=False)

    def keep_pages(self, pages: list[PageRow]) -> bool:
        """Commit evidence pages written on their own (EvidencePages.save), through the
        audit writer's batches; False when the store cannot take them now."""
        return self.audit_writer.keep_pages(pages)

    @staticmethod
    def _insert_call(conn: Connection, call: CallRecord) -> int:
        return Store._insert_calls(conn, [call])[0]

    @staticmethod
    def _insert_calls(conn: Connection, calls: list[CallRecord], pages: list[PageRow] | None = None) -> list[int]:
        """The rows of `calls`, of the cards they returned and of their evidence pages (and
        `pages`), in three statements whatever the number of calls (executemany with
        RETURNING, in the calls' order). The one insert of audit rows and evidence pages.

        One statement per row kept the transaction, and on SQLite the database's only write
        lock, open for as long as it took the writer thread to get the GIL back after each
        statement: with request threads busy that was up to 0.8 s per batch, and the
        evidence-page writer (and a jti claim) waiting behind it ran into the busy timeout."""
        ids = Store._insert_call_rows(conn, calls) if calls else []
        rows = [page._asdict() for call in calls for page in call.pages] + [page._asdict() for page in pages or ()]
        _insert_rows(conn, evidence_pages, rows)
        return ids

    @staticmethod
    def _insert_call_rows(conn: Connection, calls: list[CallRecord]) -> list[int]:
        result = conn.execute(
            service_calls.insert().returning(service_calls.c.id, sort_by_parameter_order=True),
            [
                {
                    "called_at": call.called_at,
                    "service_id": _clean(call.service_id, LEN_SERVICE_ID),
                    "hook": _clean(call.hook, LEN_HOOK),
                    "hook_instance": _clean(call.hook_instance, LEN_HOOK_INSTANCE),
                    "patient_hash": _clean(call.patient_hash, LEN_HASH),
                    "outcome_status": int(call.outcome_status),
                    "duration_ms": float(call.duration_ms),
                    "content_version": _clean(call.content_version or ""),
                    "client_iss": _clean(call.client_iss, LEN_ISSUER),
                    "instance_id": _clean(call.instance_id, LEN_INSTANCE),
                    "record_id": _clean(call.record_id, LEN_RECORD_ID),
                    "usage": call.usage,
                    "site": _clean(call.site, LEN_SITE),
                }
                for call in calls
            ],
        )
        ids = [int(row[0]) for row in result]
        cards = [
            {
                "call_id": call_id,
                "card_uuid": _clean(card.card_uuid.lower(), LEN_CARD_UUID),
                "card_id": _clean(card.card_id, LEN_CARD_ID),
                "summary": _clean(card.summary, LEN_SUMMARY),
                "situation": _clean(card.situation, LEN_CARD_ID),
            }
            for call_id, call in zip(ids, calls, strict=True)
            for card in (ReturnedCard(*c) for c in call.cards)
        ]
        _insert_rows(conn, returned_cards, cards)
        return ids

    def prune_audit(self, older_than: datetime) -> int:
        """Delete audit rows (calls and the cards they returned) from before `older_than`.

        Feedback rows are kept (they are the clinicians' answers, not the audit trail).
        Returns how many calls went."""

        def prune(conn: Connection) -> int:
            old_calls = sa.select(service_calls.c.id).where(service_calls.c.called_at < older_than)
            conn.execute(returned_cards.delete().where(returned_cards.c.call_id.in_(old_calls)))
            result = conn.execute(service_calls.delete().where(service_calls.c.called_at < older_than))
            return result.rowcount or 0

        return self.db.run("prune_audit", prune, fail_fast=False)

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The call that returned this card uuid, or None if this service never did."""
        query = (
            sa.select(
                returned_cards.c.call_id,
                service_calls.c.service_id,
                returned_cards.c.card_id,
                service_calls.c.called_at,
                service_calls.c.site,
            )
            .join(service_calls, service_calls.c.id == returned_cards.c.call_id)
            .where(returned_cards.c.card_uuid == card_uuid.lower())
            .order_by(returned_cards.c.id)
            .limit(1)
        )
        row = self.db.run("issued_card", lambda conn: conn.execute(query).first(), write=False)
        return IssuedCard(*cast("tuple[Any, ...]", row)) if row else None  # a Row is a tuple

    # -- JWT replay protection

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (issuer, jti) is seen, False on every later claim.

        Atomic across processes: the unique constraint decides, not a prior read. Keep the
        row at least until the token can no longer pass the expiry check (exp + leeway).
        StoreUnavailable (503) when the store cannot answer: the check fails closed.
        """
        now = _utcnow()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + JTI_PRUNE_INTERVAL_S
            with contextlib.suppress(StoreUnavailable):
                self.prune_expired_jti(now)
        row = {
            "issuer": _jti_key_part(issuer, JTI_ISSUER_BYTES),
            "jti": _jti_key_part(jti, JTI_BYTES),
            "expires_at": expires_at,
        }
        try:
            self.db.run("claim_jti", lambda conn: conn.execute(used_jti.insert(), row))
        except IntegrityError:
            return False
        return True

    def prune_expired_jti(self, now: datetime | None = None) -> int:
        """Forget JWT ids whose tokens have expired; returns how many rows went."""
        now = now or _utcnow()
        result = self.db.run(
            "prune_jti", lambda conn: conn.execute(used_jti.delete().where(used_jti.c.expires_at < now))
        )
        return result.rowcount or 0

    # -- usage report

    def usage_report(self, since: datetime | None = None, site: str | None = None) -> Report:
        """Per card file: times shown, feedback received, outcomes, rates, override reasons.

        `since` limits the report to calls made and feedback received from that moment;
        `site` to the calls evaluated with that site's overlay (the site stored in each audit
        row) and the feedback its clients sent about them (one site of a multi-site
        deployment). Feedback counts for a card only when it came from the card's own site.
        """
        calls_joined = returned_cards.join(service_calls, service_calls.c.id == returned_cards.c.call_id)
        card_of_uuid_q = (
            sa.select(
                returned_cards.c.card_uuid,
                service_calls.c.site,
                sa.func.min(returned_cards.c.card_id).label("card_id"),
            )
            .select_from(calls_joined)
            .group_by(returned_cards.c.card_uuid, service_calls.c.site)
        )
        if site is not None:
            card_of_uuid_q = card_of_uuid_q.where(service_calls.c.site == site)
        card_of_uuid = card_of_uuid_q.subquery("card_of_uuid")
        linked = feedback.join(card_of_uuid, feedback_links(card_of_uuid))
        shown_q = (
            sa.select(returned_cards.c.card_id, sa.func.count().label("n"))
            .select_from(calls_joined)
            .group_by(returned_cards.c.card_id)
        )
        outcomes_q = (
            sa.select(card_of_uuid.c.card_id, feedback.c.outcome, sa.func.count().label("n"))
            .select_from(linked)
            .group_by(card_of_uuid.c.card_id, feedback.c.outcome)
        )
        reasons_q = (
            sa.select(
                card_of_uuid.c.card_id,
                feedback.c.override_reason_code,
                feedback.c.override_reason_system,
                sa.func.max(feedback.c.override_reason_display).label("display"),
                sa.func.count().label("n"),
            )
            .select_from(linked)
            .where(feedback.c.outcome == "overridden")
            .group_by(
                card_of_uuid.c.card_id,
                feedback.c.override_reason_code,
                feedback.c.override_reason_system,
            )
        )
        unlinked_q = (
            sa.select(sa.func.count())
            .select_from(feedback)
            .where(
                ~sa.exists()
                .select_from(calls_joined)
                .where(returned_cards.c.card_uuid == feedback.c.card_uuid)
                .where(feedback.c.site.is_not_distinct_from(service_calls.c.site))
            )
        )
        status_q = sa.select(service_calls.c.outcome_status, sa.func.count()).group_by(service_calls.c.outcome_status)
        if site is not None:
            shown_q = shown_q.where(service_calls.c.site == site)
            status_q = status_q.where(service_calls.c.site == site)
            unlinked_q = unlinked_q.where(feedback.c.site == site)
        if since is not None:
            shown_q = shown_q.where(service_calls.c.called_at >= since)
            outcomes_q = outcomes_q.where(feedback.c.received_at >= since)
            reasons_q = reasons_q.where(feedback.c.received_at >= since)
            unlinked_q = unlinked_q.where(feedback.c.received_at >= since)
            status_q = status_q.where(service_calls.c.called_at >= since)

        with self.db.bounded("usage_report", deadline_s=10 * self.options.deadline_s), self.engine.connect() as conn:
            shown: dict[str, int] = {card_id: n for card_id, n in _rows(conn, shown_q)}
            outcomes: dict[str, dict[str, int]] = {}
            for card_id, outcome, n in _rows(conn, outcomes_q):
                outcomes.setdefault(card_id, {})[outcome] = n
            reasons: dict[str, list[OverrideReasonCount]] = {}
            for card_id, code, system, display, n in _rows(conn, reasons_q):
                reasons.setdefault(card_id, []).append(
                    OverrideReasonCount(code=code, system=system, display=display, count=n)
                )
            unlinked = conn.execute(unlinked_q).scalar_one()
            calls_by_status: dict[int, int] = {int(status): n for status, n in _rows(conn, status_q)}

        cards = []
        for card_id in sorted(set(shown) | set(outcomes)):
            counts = outcomes.get(card_id, {})
            accepted = counts.get("accepted", 0)
            overridden = counts.get("overridden", 0)
            cards.append(
                CardUsage(
                    card_id=card_id,
                    shown=shown.get(card_id, 0),
                    feedback=accepted + overridden,
                    accepted=accepted,
                    overridden=overridden,
                    override_reasons=tuple(
                        sorted(
                            reasons.get(card_id, []),
                            key=lambda r: (-r.count, r.code is None, r.system or "", r.code or ""),
                        )
                    ),
                )
            )
        return Report(
            cards=tuple(cards),
            calls=sum(calls_by_status.values()),
            calls_by_status=dict(sorted(calls_by_status.items())),
            unlinked_feedback=int(unlinked),
            generated_at=_utcnow(),
            since=since,
        )
