"""Alembic environment: always run by storage/migrate.py on a connection it already holds.

The connection comes in `config.attributes["connection"]` (inside a transaction and, on
PostgreSQL, under the schema lock), so several workers starting together migrate once.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by a bare `alembic` command
    raise RuntimeError("run migrations with `cds-service db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
