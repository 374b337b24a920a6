"""Alembic environment: the metadata of every back-office package."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import clearing.models  # noqa: F401  (registers the tables)
import issuance.models  # noqa: F401
from backoffice.db import Base, make_engine

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    """Run the migrations on one connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
