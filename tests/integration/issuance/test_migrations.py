"""The issuance migrations (an independent Alembic branch) make exactly the tables the models map, on both
databases, and go down and up again."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backoffice.db import Base, make_engine
from backoffice.schema import alembic_config, upgrade
from issuance import models

ISSUANCE_TABLES = {
    model.__tablename__
    for model in (
        models.Resident,
        models.SocialSecurityRecord,
        models.Card,
        models.CardEvent,
        models.HotlistEntry,
        models.Psam,
        models.Load,
        models.BalanceSettlement,
        models.PurseMovement,
        models.AuditEntry,
        models.IssuanceCounter,
    )
}


def _table_of(diff: Any) -> str | None:
    """The table a compare_metadata difference is about."""
    if isinstance(diff, list):
        diff = diff[0]
    for item in diff[1:]:
        name = getattr(item, "name", None) if not isinstance(item, str) else None
        table = getattr(item, "table", None)
        if table is not None:
            return str(table.name)
        if hasattr(item, "columns") and name:
            return str(name)
    return str(diff[2]) if len(diff) > 2 and isinstance(diff[2], str) else None


def test_migrations_match_the_models_and_go_down_and_up(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= ISSUANCE_TABLES
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in ISSUANCE_TABLES]
        assert diffs == []
        command.downgrade(alembic_config(db_url), "issuance@base")
        with engine.connect() as conn:
            assert not ISSUANCE_TABLES & set(inspect(conn).get_table_names())
        upgrade(db_url)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= ISSUANCE_TABLES
    finally:
        engine.dispose()
