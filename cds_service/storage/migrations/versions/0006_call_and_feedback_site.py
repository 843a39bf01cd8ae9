"""One service, several hospitals (issue 20): the site a call and a feedback entry belong to.

- `service_calls.site`: the site (setting `site_overlays`, trust file `site`, per issuer or
  per tenant) whose overlay the call was evaluated with. NULL: the deployment's shared
  content, and every row written before 0.3.0.
- `feedback.site`: the site of the client that sent the feedback (NULL: shared content, or
  before 0.3.0). Feedback counts for a card only when it came from the card's own site.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("service_calls", sa.Column("site", sa.String(200), nullable=True))
    op.add_column("feedback", sa.Column("site", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("site")
    with op.batch_alter_table("service_calls") as batch:
        batch.drop_column("site")
