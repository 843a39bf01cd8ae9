"""Baseline: the schema of release 0.1.0 exactly (as its `create_all` made it).

A store created by 0.1.0 has these tables and no `alembic_version`; storage/migrate.py
stamps it with this revision and then applies the later ones.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "service_calls",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("called_at", _When, nullable=False),
        sa.Column("service_id", sa.String(200), nullable=False),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("hook_instance", sa.String(200), nullable=False),
        sa.Column("patient_hash", sa.String(128), nullable=True),
        sa.Column("outcome_status", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("content_version", sa.Text(), nullable=False),
        sa.Column("client_iss", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_service_calls"),
    )
    op.create_index("ix_service_calls_called_at", "service_calls", ["called_at"])

    op.create_table(
        "returned_cards",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("call_id", _Id, nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("card_id", sa.String(200), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_returned_cards"),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["service_calls.id"],
            name="fk_returned_cards_call_id_service_calls",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_returned_cards_call_id", "returned_cards", ["call_id"])
    op.create_index("ix_returned_cards_card_uuid", "returned_cards", ["card_uuid"])
    op.create_index("ix_returned_cards_card_id", "returned_cards", ["card_id"])

    op.create_table(
        "feedback",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(200), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.Text(), nullable=False),
        sa.Column("override_reason_code", sa.String(256), nullable=True),
        sa.Column("override_reason_system", sa.String(1024), nullable=True),
        sa.Column("override_reason_display", sa.String(1024), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", _When, nullable=False),
        sa.Column("received_at", _When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])

    op.create_table(
        "used_jti",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("issuer", sa.String(1024), nullable=False),
        sa.Column("jti", sa.String(271), nullable=False),
        sa.Column("expires_at", _When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_used_jti"),
        sa.UniqueConstraint("issuer", "jti", name="uq_used_jti_issuer_jti"),
    )
    op.create_index("ix_used_jti_expires_at", "used_jti", ["expires_at"])


def downgrade() -> None:
    for table in ("used_jti", "feedback", "returned_cards", "service_calls"):
        op.drop_table(table)
