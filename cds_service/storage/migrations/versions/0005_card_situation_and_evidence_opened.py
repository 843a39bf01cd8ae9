"""What clinicians do with the cards: which situation fired, and whether its evidence page
was opened.

- `returned_cards.situation`: the id of the card file's situation that fired. NULL on rows
  written before 0.3.0.
- `returned_cards.evidence_opened_at`: when the card's evidence page was first opened (the
  service owns the page, so it alone knows). NULL: never opened (or before 0.3.0).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("returned_cards", sa.Column("situation", sa.String(200), nullable=True))
    op.add_column("returned_cards", sa.Column("evidence_opened_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("returned_cards") as batch:
        batch.drop_column("evidence_opened_at")
        batch.drop_column("situation")
