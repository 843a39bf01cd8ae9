"""The audit row says which instance answered, and carries a unique record id.

- `service_calls.instance_id`: the setting `instance_id` (default host name + process id)
  of the process that answered; never patient data. NULL on rows written before 0.2.0.
- `service_calls.record_id`: a random id given to the row when the call was answered, so
  a row replayed from the local audit spool after a crash is written once, not twice.
  NULL on rows written before 0.2.0 (a unique index allows many NULLs on both backends).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("service_calls", sa.Column("instance_id", sa.String(200), nullable=True))
    op.add_column("service_calls", sa.Column("record_id", sa.String(64), nullable=True))
    op.create_index("ix_service_calls_record_id", "service_calls", ["record_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_service_calls_record_id", table_name="service_calls")
    with op.batch_alter_table("service_calls") as batch:
        batch.drop_column("record_id")
        batch.drop_column("instance_id")
