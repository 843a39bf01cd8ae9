"""The service's persistent state (SQLAlchemy Core): feedback, the audit trail, used JWT ids.

SQLite by default (a file in the instance folder, WAL journal, busy timeout, so several
gunicorn workers can share it); PostgreSQL when the URL says `postgresql://...` (driven by
psycopg 3). Tables are created when a Store opens; that is idempotent and safe when two
workers start at the same time.

Tables:
- `service_calls`: one row per hook call (the audit trail). The patient appears only as a
  keyed hash (see audit.py); the client only as its JWT issuer.
- `returned_cards`: the cards a call returned (uuid, which card file, summary).
- `feedback`: what the clinician did with a card; linked to `returned_cards` by card uuid.
- `used_jti`: JWT ids already seen per issuer, for replay protection.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.feedback import FeedbackEntry, OverrideReason

SQLITE_BUSY_TIMEOUT_MS = 5000
JTI_PRUNE_INTERVAL_S = 300.0
# pg_advisory_xact_lock key serialising table creation between workers ("cdsstore").
_SCHEMA_LOCK_KEY = 0x6364_7373_746F_7265 & 0x7FFF_FFFF_FFFF_FFFF

# Bounds for values stored in VARCHAR columns (client-controlled text is cut, not refused:
# the audit trail must never turn a call into an error).
_LEN_SERVICE_ID = 200
_LEN_HOOK = 100
_LEN_HOOK_INSTANCE = 200
_LEN_HASH = 128
_LEN_ISSUER = 1024
_LEN_CARD_UUID = 64
_LEN_CARD_ID = 200
_LEN_SUMMARY = 1000
_LEN_CODE = 256
_LEN_SYSTEM = 1024
_LEN_DISPLAY = 1024
# used_jti key parts, in UTF-8 bytes (PostgreSQL btree rows must stay well under 2.7 kB).
_JTI_ISSUER_BYTES = 1000
_JTI_BYTES = 255


class StoreError(RuntimeError):
    """The database cannot be opened or used; raised at start-up."""


class UtcDateTime(sa.types.TypeDecorator):
    """A timezone-aware datetime, stored in UTC on every backend (SQLite has no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; give a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

service_calls = sa.Table(
    "service_calls",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("called_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("service_id", sa.String(_LEN_SERVICE_ID), nullable=False),
    sa.Column("hook", sa.String(_LEN_HOOK), nullable=False),
    sa.Column("hook_instance", sa.String(_LEN_HOOK_INSTANCE), nullable=False),
    sa.Column("patient_hash", sa.String(_LEN_HASH), nullable=True),
    sa.Column("outcome_status", sa.Integer(), nullable=False),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.Column("content_version", sa.Text(), nullable=False),
    sa.Column("client_iss", sa.String(_LEN_ISSUER), nullable=True),
)

returned_cards = sa.Table(
    "returned_cards",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column(
        "call_id",
        _Id,
        sa.ForeignKey("service_calls.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("card_uuid", sa.String(_LEN_CARD_UUID), nullable=False, index=True),
    sa.Column("card_id", sa.String(_LEN_CARD_ID), nullable=False, index=True),
    sa.Column("summary", sa.Text(), nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("service_id", sa.String(_LEN_SERVICE_ID), nullable=False),
    sa.Column("card_uuid", sa.String(_LEN_CARD_UUID), nullable=False, index=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("accepted_suggestions", sa.Text(), nullable=False),  # JSON array of ids
    sa.Column("override_reason_code", sa.String(_LEN_CODE), nullable=True),
    sa.Column("override_reason_system", sa.String(_LEN_SYSTEM), nullable=True),
    sa.Column("override_reason_display", sa.String(_LEN_DISPLAY), nullable=True),
    sa.Column("user_comment", sa.Text(), nullable=True),
    sa.Column("outcome_timestamp", UtcDateTime(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
)

used_jti = sa.Table(
    "used_jti",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("issuer", sa.String(_LEN_ISSUER), nullable=False),
    sa.Column("jti", sa.String(_JTI_BYTES + 16), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("issuer", "jti"),
)


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


@dataclass(frozen=True)
class IssuedCard:
    """A card this service returned, found by its uuid."""

    call_id: int
    service_id: str
    card_id: str
    called_at: datetime


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


# --------------------------------------------------------------------------- engine


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


def _database_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        raise StoreError("the database URL cannot be read") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        if url.drivername in ("postgres", "postgresql"):
            url = url.set(drivername="postgresql+psycopg")
        return url
    if backend == "sqlite":
        return url
    raise StoreError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine


def _postgresql_engine(url: URL) -> Engine:
    connect_args: dict = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 5
    if "application_name" not in url.query:
        connect_args["application_name"] = "cds-service"
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _dispose_in_child(engine_ref: weakref.ref) -> None:
    engine = engine_ref()
    if engine is not None:
        # The parent's pooled connections must not be shared with a forked worker.
        engine.dispose(close=False)


# --------------------------------------------------------------------------- store


class Store:
    """The database behind the service. One per process; thread-safe (pooled engine)."""

    def __init__(self, database_url: str) -> None:
        url = _database_url(database_url)
        self.backend = url.get_backend_name()
        self.engine: Engine = _sqlite_engine(url) if self.backend == "sqlite" else _postgresql_engine(url)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda ref=weakref.ref(self.engine): _dispose_in_child(ref))
        self._next_prune = 0.0
        self._create_tables()

    # -- lifecycle

    def _create_tables(self) -> None:
        """create_all, serialised between processes; a lost race is retried (then a no-op)."""
        attempts = 6
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    if self.backend == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": _SCHEMA_LOCK_KEY},
                        )
                    metadata.create_all(conn, checkfirst=True)
                return
            except DBAPIError as exc:
                if attempt == attempts - 1:
                    raise StoreError(
                        f"cannot open the {self.backend} database "
                        f"({type(exc.orig).__name__ if exc.orig else type(exc).__name__})"
                    ) from exc
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- feedback

    def record_feedback(self, service_id: str, entries: Iterable[FeedbackEntry]) -> int:
        """Store validated feedback entries (feedback.parse_feedback); returns how many."""
        received_at = _utcnow()
        rows = []
        for entry in entries:
            reason = entry.override_reason
            rows.append(
                {
                    "service_id": _clean(service_id, _LEN_SERVICE_ID),
                    "card_uuid": _clean(entry.card_uuid.lower(), _LEN_CARD_UUID),
                    "outcome": entry.outcome,
                    "accepted_suggestions": json.dumps(list(entry.accepted_suggestions)),
                    "override_reason_code": _clean(reason.code, _LEN_CODE) if reason else None,
                    "override_reason_system": _clean(reason.system, _LEN_SYSTEM) if reason else None,
                    "override_reason_display": _clean(reason.display, _LEN_DISPLAY) if reason else None,
                    "user_comment": _clean(entry.user_comment),
                    "outcome_timestamp": entry.outcome_timestamp,
                    "received_at": received_at,
                }
            )
        if rows:
            with self.engine.begin() as conn:
                conn.execute(feedback.insert(), rows)
        return len(rows)

    def feedback_for(self, card_uuid: str) -> list[StoredFeedback]:
        """Feedback received about one card, oldest first."""
        query = sa.select(feedback).where(feedback.c.card_uuid == card_uuid.lower()).order_by(feedback.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
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
            )
            for row in rows
        ]

    # -- audit trail

    def record_call(self, call: CallRecord) -> int:
        """Write one hook call and the cards it returned, atomically; returns the call id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                service_calls.insert().values(
                    called_at=call.called_at,
                    service_id=_clean(call.service_id, _LEN_SERVICE_ID),
                    hook=_clean(call.hook, _LEN_HOOK),
                    hook_instance=_clean(call.hook_instance, _LEN_HOOK_INSTANCE),
                    patient_hash=_clean(call.patient_hash, _LEN_HASH),
                    outcome_status=int(call.outcome_status),
                    duration_ms=float(call.duration_ms),
                    content_version=_clean(call.content_version or ""),
                    client_iss=_clean(call.client_iss, _LEN_ISSUER),
                )
            )
            call_id = int(result.inserted_primary_key[0])
            if call.cards:
                conn.execute(
                    returned_cards.insert(),
                    [
                        {
                            "call_id": call_id,
                            "card_uuid": _clean(card.card_uuid.lower(), _LEN_CARD_UUID),
                            "card_id": _clean(card.card_id, _LEN_CARD_ID),
                            "summary": _clean(card.summary, _LEN_SUMMARY),
                        }
                        for card in (ReturnedCard(*c) for c in call.cards)
                    ],
                )
        return call_id

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The call that returned this card uuid, or None if this service never did."""
        query = (
            sa.select(
                returned_cards.c.call_id,
                service_calls.c.service_id,
                returned_cards.c.card_id,
                service_calls.c.called_at,
            )
            .join(service_calls, service_calls.c.id == returned_cards.c.call_id)
            .where(returned_cards.c.card_uuid == card_uuid.lower())
            .order_by(returned_cards.c.id)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return IssuedCard(*row) if row else None

    # -- JWT replay protection

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True the first time (issuer, jti) is seen, False on every later claim.

        Atomic across processes: the unique constraint decides, not a prior read. Keep the
        row at least until the token can no longer pass the expiry check (exp + leeway).
        """
        now = _utcnow()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + JTI_PRUNE_INTERVAL_S
            self.prune_expired_jti(now)
        row = {
            "issuer": _jti_key_part(issuer, _JTI_ISSUER_BYTES),
            "jti": _jti_key_part(jti, _JTI_BYTES),
            "expires_at": expires_at,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(used_jti.insert(), row)
        except IntegrityError:
            return False
        return True

    def prune_expired_jti(self, now: datetime | None = None) -> int:
        """Forget JWT ids whose tokens have expired; returns how many rows went."""
        now = now or _utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(used_jti.delete().where(used_jti.c.expires_at < now))
        return result.rowcount or 0

    # -- usage report

    def usage_report(self, since: datetime | None = None) -> Report:
        """Per card file: times shown, feedback received, outcomes, rates, override reasons.

        `since` limits the report to calls made and feedback received from that moment.
        """
        card_of_uuid = (
            sa.select(
                returned_cards.c.card_uuid,
                sa.func.min(returned_cards.c.card_id).label("card_id"),
            )
            .group_by(returned_cards.c.card_uuid)
            .subquery("card_of_uuid")
        )
        shown_q = (
            sa.select(returned_cards.c.card_id, sa.func.count().label("n"))
            .select_from(returned_cards.join(service_calls, service_calls.c.id == returned_cards.c.call_id))
            .group_by(returned_cards.c.card_id)
        )
        outcomes_q = (
            sa.select(card_of_uuid.c.card_id, feedback.c.outcome, sa.func.count().label("n"))
            .select_from(feedback.join(card_of_uuid, card_of_uuid.c.card_uuid == feedback.c.card_uuid))
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
            .select_from(feedback.join(card_of_uuid, card_of_uuid.c.card_uuid == feedback.c.card_uuid))
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
            .where(~sa.exists().where(returned_cards.c.card_uuid == feedback.c.card_uuid))
        )
        status_q = sa.select(service_calls.c.outcome_status, sa.func.count()).group_by(service_calls.c.outcome_status)
        if since is not None:
            shown_q = shown_q.where(service_calls.c.called_at >= since)
            outcomes_q = outcomes_q.where(feedback.c.received_at >= since)
            reasons_q = reasons_q.where(feedback.c.received_at >= since)
            unlinked_q = unlinked_q.where(feedback.c.received_at >= since)
            status_q = status_q.where(service_calls.c.called_at >= since)

        with self.engine.connect() as conn:
            shown = {card_id: n for card_id, n in conn.execute(shown_q)}
            outcomes: dict[str, dict[str, int]] = {}
            for card_id, outcome, n in conn.execute(outcomes_q):
                outcomes.setdefault(card_id, {})[outcome] = n
            reasons: dict[str, list[OverrideReasonCount]] = {}
            for card_id, code, system, display, n in conn.execute(reasons_q):
                reasons.setdefault(card_id, []).append(
                    OverrideReasonCount(code=code, system=system, display=display, count=n)
                )
            unlinked = conn.execute(unlinked_q).scalar_one()
            calls_by_status = {int(status): n for status, n in conn.execute(status_q)}

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


# -- placeholder until storeops' bounded Store.ping is merged (theirs wins) ------------
def _ping(self: Store, timeout_s: float) -> bool:
    """True when the store answers `SELECT 1` within `timeout_s` (checked in a thread)."""
    import concurrent.futures

    def probe() -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=timeout_s)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


if not hasattr(Store, "ping"):
    Store.ping = _ping
