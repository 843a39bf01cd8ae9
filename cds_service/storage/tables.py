"""The service's database schema (SQLAlchemy Core): the tables, their column limits, and
the UTC datetime type every timestamp is stored with. Migrated by Alembic (storage/migrate.py,
storage/migrations/); tests/storage/test_migrations.py checks that the migrated schema is
this one.

- `service_calls`: one row per hook call (the audit trail). The patient appears only as a
  keyed hash (see audit.py); the client only as its JWT issuer.
- `returned_cards`: the cards a call returned (uuid, which card file, summary).
- `feedback`: what the clinician did with a card; linked to `returned_cards` by card uuid.
- `used_jti`: JWT ids already seen per issuer, for replay protection.
- `evidence_pages`: the evidence page behind each card's link (see evidence_pages.py),
  written in the same transaction as the call's audit row (Store.keep_call).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Bounds for values stored in VARCHAR columns (client-controlled text is cut, not refused:
# the audit trail must never turn a call into an error).
LEN_SERVICE_ID = 200
LEN_HOOK = 100
LEN_HOOK_INSTANCE = 200
LEN_HASH = 128
LEN_ISSUER = 1024
LEN_CARD_UUID = 64
LEN_CARD_ID = 200
LEN_SUMMARY = 1000
LEN_CODE = 256
LEN_SYSTEM = 1024
LEN_DISPLAY = 1024
LEN_INSTANCE = 200
LEN_RECORD_ID = 64
LEN_SITE = 200
LEN_PAGE_HASH = 64
# used_jti key parts, in UTF-8 bytes (PostgreSQL btree rows must stay well under 2.7 kB).
JTI_ISSUER_BYTES = 1000
JTI_BYTES = 255


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC on every backend (SQLite has no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; give a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
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
    sa.Column("service_id", sa.String(LEN_SERVICE_ID), nullable=False),
    sa.Column("hook", sa.String(LEN_HOOK), nullable=False),
    sa.Column("hook_instance", sa.String(LEN_HOOK_INSTANCE), nullable=False),
    sa.Column("patient_hash", sa.String(LEN_HASH), nullable=True),
    sa.Column("outcome_status", sa.Integer(), nullable=False),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.Column("content_version", sa.Text(), nullable=False),
    sa.Column("client_iss", sa.String(LEN_ISSUER), nullable=True),
    # Added in 0.2.0 (migration 0002): which instance answered; the row's unique id.
    sa.Column("instance_id", sa.String(LEN_INSTANCE), nullable=True),
    sa.Column("record_id", sa.String(LEN_RECORD_ID), nullable=True, unique=True, index=True),
    # Added by migration 0004 (issue 19): what the call used, as JSON (audit.CallRecord.usage).
    sa.Column("usage", sa.Text(), nullable=True),
    # Added by migration 0006 (issue 20): the site whose overlay the call used; NULL: shared content.
    sa.Column("site", sa.String(LEN_SITE), nullable=True),
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
    sa.Column("card_uuid", sa.String(LEN_CARD_UUID), nullable=False, index=True),
    sa.Column("card_id", sa.String(LEN_CARD_ID), nullable=False, index=True),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("situation", sa.String(LEN_CARD_ID), nullable=True),  # migration 0005
    sa.Column("evidence_opened_at", UtcDateTime(), nullable=True),  # first open of its evidence page (0005)
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("service_id", sa.String(LEN_SERVICE_ID), nullable=False),
    sa.Column("card_uuid", sa.String(LEN_CARD_UUID), nullable=False, index=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("accepted_suggestions", sa.Text(), nullable=False),  # JSON array of ids
    sa.Column("override_reason_code", sa.String(LEN_CODE), nullable=True),
    sa.Column("override_reason_system", sa.String(LEN_SYSTEM), nullable=True),
    sa.Column("override_reason_display", sa.String(LEN_DISPLAY), nullable=True),
    sa.Column("user_comment", sa.Text(), nullable=True),
    sa.Column("outcome_timestamp", UtcDateTime(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Column("site", sa.String(LEN_SITE), nullable=True),  # the sender's site (migration 0006)
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
)

used_jti = sa.Table(
    "used_jti",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("issuer", sa.String(LEN_ISSUER), nullable=False),
    sa.Column("jti", sa.String(JTI_BYTES + 16), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
    sa.UniqueConstraint("issuer", "jti"),
)

evidence_pages = sa.Table(
    "evidence_pages",
    metadata,
    sa.Column("token_sha256", sa.String(LEN_PAGE_HASH), primary_key=True),
    sa.Column("card_id", sa.String(LEN_CARD_ID), nullable=False),
    sa.Column("data", sa.Text(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
)
