"""Evidence pages: the data behind each card's evidence page link, kept for a while.

The link carries only an unguessable token; the table keeps its SHA-256, never the token.
`data` is set to NULL when the page expires (a tombstone stays a few days so an expired
link answers 410, then the row is deleted). See storage/evidence_pages.py.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_pages",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("card_id", sa.String(200), nullable=False),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_evidence_pages_expires_at", "evidence_pages", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_evidence_pages_expires_at", table_name="evidence_pages")
    op.drop_table("evidence_pages")
