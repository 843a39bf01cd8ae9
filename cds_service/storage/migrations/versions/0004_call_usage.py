"""The audit row says what the call used (issue 19).

- `service_calls.usage`: JSON text: what became of the FHIR access token (none / not used /
  used / refused), the resource types prefetched, fetched or refused, the prefetch keys the
  client did not send, and the time of each step. No identifiers, no clinical values. NULL
  on rows written before, and on calls that ended before the prefetch step.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("service_calls", sa.Column("usage", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_calls") as batch:
        batch.drop_column("usage")
