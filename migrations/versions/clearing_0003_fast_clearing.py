"""Clearing at scale: the terminal predecessor found at ingest, and the closed-day check of verdicts per statement.

Revision ID: clearing_0003
Revises: clearing_0002
Create Date: 2026-11-22

- ``clearing_record.prev_term_seq``: the term_seq of the same terminal's record at ``device_seq − 1`` when ingest
  found it in the same batch (``NULL``: clearing looks it up). A batch holds a device's consecutive records, so
  clearing looks up only each batch's first record instead of every record.
- PostgreSQL: the trigger that refuses a verdict on a closed clearing day runs once per statement over the
  inserted rows (a transition table) instead of once per row: clearing inserts its verdicts with ``COPY``.
- ``clearing_verdict.record_id`` loses its foreign key: checking it share-locked every record row a verdict
  names (a write to every page of ``clearing_record``, once per record). Verdicts are written only by clearing,
  from the records it has just read in the same transaction, and records are never deleted (append-only).
- ``ix_clearing_verdict_suspense``: the few verdicts that post to or reverse from suspense, so that the
  reconciliation's open-items check reads them and not every verdict ever given.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "clearing_0003"
down_revision = "clearing_0002"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PG_UPGRADE = [
    "DROP TRIGGER IF EXISTS clearing_verdict_check ON clearing_verdict",
    """
    CREATE FUNCTION clearing_verdict_statement_check() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        closed date;
    BEGIN
        SELECT d.day INTO closed FROM clearing_day d
        WHERE d.status = 'closed' AND d.day IN (SELECT DISTINCT i.clearing_day FROM inserted_verdicts i) LIMIT 1;
        IF closed IS NOT NULL THEN
            RAISE EXCEPTION 'clearing day % is closed: no verdict is given on it', closed
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER clearing_verdict_check AFTER INSERT ON clearing_verdict "
    "REFERENCING NEW TABLE AS inserted_verdicts FOR EACH STATEMENT EXECUTE FUNCTION clearing_verdict_statement_check()",
]
PG_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS clearing_verdict_check ON clearing_verdict",
    "DROP FUNCTION IF EXISTS clearing_verdict_statement_check()",
    "CREATE TRIGGER clearing_verdict_check BEFORE INSERT ON clearing_verdict "
    "FOR EACH ROW EXECUTE FUNCTION clearing_verdict_check()",
]


FK_NAME = "fk_clearing_verdict_record_id_clearing_record"


def _sqlite_rebuild_verdicts(with_fk: bool) -> None:
    """SQLite cannot drop or add a constraint: rebuild ``clearing_verdict`` from its own DDL with or without the
    foreign key, keeping its rows, indexes and triggers."""
    bind = op.get_bind()
    table_sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'clearing_verdict'"
    ).scalar_one()
    dependents = bind.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'clearing_verdict' "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name"
    ).all()
    if with_fk:
        new_sql = re.sub(
            r"\)\s*$",
            f", CONSTRAINT {FK_NAME} FOREIGN KEY(record_id) REFERENCES clearing_record (id))",
            table_sql.rstrip(),
        )
    else:
        new_sql = re.sub(
            rf",\s*CONSTRAINT {FK_NAME} FOREIGN KEY\s*\(record_id\)\s*REFERENCES clearing_record \(id\)", "", table_sql
        )
    if new_sql == table_sql:
        raise RuntimeError("clearing_verdict's DDL is not the one this migration knows")
    new_sql = re.sub(r'^CREATE TABLE "?clearing_verdict"?', "CREATE TABLE clearing_verdict_rebuilt", new_sql)
    for kind, name, _ in dependents:
        bind.exec_driver_sql(f"DROP {kind.upper()} IF EXISTS {name}")
    bind.exec_driver_sql(new_sql)
    bind.exec_driver_sql("INSERT INTO clearing_verdict_rebuilt SELECT * FROM clearing_verdict")
    bind.exec_driver_sql("DROP TABLE clearing_verdict")
    bind.exec_driver_sql("ALTER TABLE clearing_verdict_rebuilt RENAME TO clearing_verdict")
    for _, _, sql in dependents:
        bind.exec_driver_sql(sql)


def upgrade() -> None:
    """Add the column; drop the verdicts' foreign key; on PostgreSQL, replace the row trigger by a statement
    trigger."""
    op.add_column("clearing_record", sa.Column("prev_term_seq", BIGINT, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(FK_NAME, "clearing_verdict", type_="foreignkey")
        for statement in PG_UPGRADE:
            op.execute(statement)
    else:
        _sqlite_rebuild_verdicts(with_fk=False)
    suspense = sa.text("posting = 'suspense' OR posted_from = 'suspense'")
    op.create_index(
        "ix_clearing_verdict_suspense",
        "clearing_verdict",
        ["record_id"],
        postgresql_where=suspense,
        sqlite_where=suspense,
    )


def downgrade() -> None:
    """Back to clearing_0002."""
    op.drop_index("ix_clearing_verdict_suspense", table_name="clearing_verdict")
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
        op.create_foreign_key(FK_NAME, "clearing_verdict", "clearing_record", ["record_id"], ["id"])
    else:
        _sqlite_rebuild_verdicts(with_fk=True)
    op.drop_column("clearing_record", "prev_term_seq")
