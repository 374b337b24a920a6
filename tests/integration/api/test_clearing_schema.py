"""The clearing migrations create exactly the tables of clearing.models, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Table

import clearing.models  # noqa: F401  (registers the tables)
from backoffice.db import Base, make_engine
from backoffice.schema import upgrade

CLEARING_TABLES = {"operator", "operator_fee", "device", "fare_table", "bill", "batch_content", "batch_upload",
                   "batch_refusal"}  # fmt: skip


def _table_of(difference: Any) -> str:
    """The table an Alembic autogenerate difference is about."""
    if isinstance(difference, list):  # modify_* differences come grouped per column
        difference = difference[0]
    subject = difference[1]
    if isinstance(subject, Table):
        return subject.name
    if hasattr(subject, "table"):  # an index or a constraint
        return str(subject.table.name)
    return str(difference[2])  # add_column / remove_column / modify_*: (kind, schema, table, …)


def test_migrations_match_the_models(db_url: str) -> None:
    mapped = {
        mapper.local_table.name for mapper in Base.registry.mappers if mapper.class_.__module__ == "clearing.models"
    }
    assert mapped == CLEARING_TABLES
    upgrade(db_url, "clearing@head")
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in CLEARING_TABLES]
    finally:
        engine.dispose()
    assert differences == []
