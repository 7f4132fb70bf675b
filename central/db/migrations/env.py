"""Alembic environment: always run with a connection handed in by central.db.migrate."""

from __future__ import annotations

from alembic import context

import central.db.models  # noqa: F401  (registers every table on the metadata)
from central.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded so nobody runs plain `alembic upgrade` by mistake
    raise RuntimeError("run migrations with `mes-central migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
