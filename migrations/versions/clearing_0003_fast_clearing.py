"""Clearing at scale: the terminal predecessor found at ingest, and the closed-day check of verdicts per statement.

Revision ID: clearing_0003
Revises: clearing_0002
Create Date: 2026-11-22

- ``clearing_record.prev_term_seq``: the term_seq of the same terminal's record at ``device_seq − 1`` when ingest
  found it in the same batch (``NULL``: clearing looks it up). A batch holds a device's consecutive records, so
  clearing looks up only each batch's first record instead of every record.
- PostgreSQL: the trigger that refuses a verdict on a closed clearing day runs once per statement over the
  inserted rows (a transition table) instead of once per row: clearing inserts its verdicts with ``COPY``.
"""

from __future__ import annotations

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


def upgrade() -> None:
    """Add the column; on PostgreSQL, replace the row trigger by a statement trigger."""
    op.add_column("clearing_record", sa.Column("prev_term_seq", BIGINT, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    """Back to clearing_0002."""
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
    op.drop_column("clearing_record", "prev_term_seq")
