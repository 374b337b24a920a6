"""Clearing: ingested records, verdicts, the double-entry ledger (balanced and append-only in the database),
runs and tasks, statements, the issuance feed, exceptions and their audit.

Revision ID: clearing_0002
Revises: clearing_0001
Create Date: 2025-03-10

How the database keeps the ledger balanced, on SQLite and PostgreSQL alike: the lines of an entry are inserted
first, the entry row last. Inserting the entry row checks (trigger) that its lines exist, that there are
``line_count`` of them and that their debits and their credits both sum to ``total``; a line cannot be added to
an entry that is posted (trigger); every line references its entry through a foreign key checked at COMMIT
(DEFERRABLE INITIALLY DEFERRED), so a transaction that leaves lines without their entry cannot commit. Nothing
in the ledger or the verdicts is ever updated or deleted (triggers), nothing is posted into a closed day
(triggers), and a closed day never reopens (trigger).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "clearing_0002"
down_revision = "clearing_0001"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

PG_FUNCTIONS = [
    """
    CREATE FUNCTION clearing_ledger_entry_check() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        lines integer;
        debits bigint;
        credits bigint;
    BEGIN
        SELECT count(*), coalesce(sum(debit), 0), coalesce(sum(credit), 0) INTO lines, debits, credits
        FROM ledger_line WHERE entry_ref = NEW.entry_ref;
        IF lines <> NEW.line_count OR debits <> NEW.total OR credits <> NEW.total THEN
            RAISE EXCEPTION 'ledger entry % does not balance: % lines (% declared), debits %, credits %, total %',
                NEW.entry_ref, lines, NEW.line_count, debits, credits, NEW.total USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM clearing_day WHERE day = NEW.clearing_day AND status = 'closed') THEN
            RAISE EXCEPTION 'clearing day % is closed: nothing is posted into it', NEW.clearing_day
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE FUNCTION clearing_ledger_line_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM ledger_entry WHERE entry_ref = NEW.entry_ref) THEN
            RAISE EXCEPTION 'ledger entry % is posted: no line can be added', NEW.entry_ref
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE FUNCTION clearing_verdict_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM clearing_day WHERE day = NEW.clearing_day AND status = 'closed') THEN
            RAISE EXCEPTION 'clearing day % is closed: no verdict is given on it', NEW.clearing_day
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE FUNCTION clearing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP USING ERRCODE = 'check_violation';
    END $$
    """,
    """
    CREATE FUNCTION clearing_day_check() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.status = 'closed' THEN
            RAISE EXCEPTION 'clearing day % is closed for good', OLD.day USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
]
PG_TRIGGERS = [
    "CREATE TRIGGER ledger_entry_check BEFORE INSERT ON ledger_entry "
    "FOR EACH ROW EXECUTE FUNCTION clearing_ledger_entry_check()",
    "CREATE TRIGGER ledger_line_check BEFORE INSERT ON ledger_line "
    "FOR EACH ROW EXECUTE FUNCTION clearing_ledger_line_check()",
    "CREATE TRIGGER clearing_verdict_check BEFORE INSERT ON clearing_verdict "
    "FOR EACH ROW EXECUTE FUNCTION clearing_verdict_check()",
    "CREATE TRIGGER clearing_day_check BEFORE UPDATE OR DELETE ON clearing_day "
    "FOR EACH ROW EXECUTE FUNCTION clearing_day_check()",
    *(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION clearing_append_only()"
        for table in ("ledger_entry", "ledger_line", "clearing_verdict")
    ),
    *(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION clearing_append_only()"
        for table in ("ledger_entry", "ledger_line", "clearing_verdict")
    ),
]
PG_DROP = [
    *(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}" for table in ("ledger_entry", "ledger_line")),
    *(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}" for table in ("ledger_entry", "ledger_line")),
    "DROP TRIGGER IF EXISTS clearing_verdict_append_only ON clearing_verdict",
    "DROP TRIGGER IF EXISTS clearing_verdict_no_truncate ON clearing_verdict",
    "DROP TRIGGER IF EXISTS ledger_entry_check ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_line_check ON ledger_line",
    "DROP TRIGGER IF EXISTS clearing_verdict_check ON clearing_verdict",
    "DROP TRIGGER IF EXISTS clearing_day_check ON clearing_day",
    "DROP FUNCTION IF EXISTS clearing_ledger_entry_check()",
    "DROP FUNCTION IF EXISTS clearing_ledger_line_check()",
    "DROP FUNCTION IF EXISTS clearing_verdict_check()",
    "DROP FUNCTION IF EXISTS clearing_append_only()",
    "DROP FUNCTION IF EXISTS clearing_day_check()",
]

_LINES_OF_NEW = "FROM ledger_line WHERE entry_ref = NEW.entry_ref"
SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER ledger_entry_check BEFORE INSERT ON ledger_entry
    WHEN (SELECT count(*) {_LINES_OF_NEW}) <> NEW.line_count
      OR (SELECT coalesce(sum(debit), 0) {_LINES_OF_NEW}) <> NEW.total
      OR (SELECT coalesce(sum(credit), 0) {_LINES_OF_NEW}) <> NEW.total
    BEGIN SELECT RAISE(ABORT, 'ledger entry does not balance'); END
    """,
    """
    CREATE TRIGGER ledger_entry_open_day BEFORE INSERT ON ledger_entry
    WHEN EXISTS (SELECT 1 FROM clearing_day WHERE day = NEW.clearing_day AND status = 'closed')
    BEGIN SELECT RAISE(ABORT, 'the clearing day is closed: nothing is posted into it'); END
    """,
    """
    CREATE TRIGGER ledger_line_check BEFORE INSERT ON ledger_line
    WHEN EXISTS (SELECT 1 FROM ledger_entry WHERE entry_ref = NEW.entry_ref)
    BEGIN SELECT RAISE(ABORT, 'the ledger entry is posted: no line can be added'); END
    """,
    """
    CREATE TRIGGER clearing_verdict_check BEFORE INSERT ON clearing_verdict
    WHEN EXISTS (SELECT 1 FROM clearing_day WHERE day = NEW.clearing_day AND status = 'closed')
    BEGIN SELECT RAISE(ABORT, 'the clearing day is closed: no verdict is given on it'); END
    """,
    """
    CREATE TRIGGER clearing_day_check BEFORE UPDATE ON clearing_day WHEN OLD.status = 'closed'
    BEGIN SELECT RAISE(ABORT, 'the clearing day is closed for good'); END
    """,
    """
    CREATE TRIGGER clearing_day_no_delete BEFORE DELETE ON clearing_day WHEN OLD.status = 'closed'
    BEGIN SELECT RAISE(ABORT, 'the clearing day is closed for good'); END
    """,
    *(
        f"""
        CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table}
        BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END
        """
        for table in ("ledger_entry", "ledger_line", "clearing_verdict")
        for op_name in ("UPDATE", "DELETE")
    ),
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS ledger_entry_check",
    "DROP TRIGGER IF EXISTS ledger_entry_open_day",
    "DROP TRIGGER IF EXISTS ledger_line_check",
    "DROP TRIGGER IF EXISTS clearing_verdict_check",
    "DROP TRIGGER IF EXISTS clearing_day_check",
    "DROP TRIGGER IF EXISTS clearing_day_no_delete",
    *(
        f"DROP TRIGGER IF EXISTS {table}_no_{op_name}"
        for table in ("ledger_entry", "ledger_line", "clearing_verdict")
        for op_name in ("update", "delete")
    ),
]


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    """Create the tables, then the triggers of the dialect."""
    op.create_table(
        "batch_ingest",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("upload_id", BIGINT, nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("device_kind", sa.String(16), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("term_id", sa.String(12), nullable=False),
        sa.Column("created_epoch", BIGINT, nullable=False),
        sa.Column("utc_offset", sa.Integer(), nullable=False),
        sa.Column("record_count", BIGINT, nullable=False),
        sa.Column("new_records", BIGINT, nullable=False),
        sa.Column("duplicates", BIGINT, nullable=False),
        sa.Column("conflicts", BIGINT, nullable=False),
        sa.Column("completions", BIGINT, nullable=False),
        sa.Column("tac_failures", BIGINT, nullable=False),
        sa.Column("open_records", BIGINT, nullable=False),
        sa.Column("min_txn_date", sa.String(8), nullable=False),
        sa.Column("max_txn_date", sa.String(8), nullable=False),
        sa.Column("claim_run_id", BIGINT, nullable=True),
        sa.Column("first_record_id", BIGINT, nullable=False),
        sa.Column("last_record_id", BIGINT, nullable=False),
        sa.Column("ingested_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_ingest")),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["batch_upload.id"], name=op.f("fk_batch_ingest_upload_id_batch_upload")
        ),
        sa.UniqueConstraint("upload_id", name=op.f("uq_batch_ingest_upload_id")),
    )
    op.create_index(op.f("ix_batch_ingest_claim_run_id"), "batch_ingest", ["claim_run_id", "operator_id"])

    op.create_table(
        "clearing_record",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("ingest_id", BIGINT, nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("txn_type", sa.String(2), nullable=False),
        sa.Column("family", sa.SmallInteger(), nullable=False),
        sa.Column("card_no", sa.String(16), nullable=False),
        sa.Column("card_type", sa.String(2), nullable=False),
        sa.Column("card_seq", sa.Integer(), nullable=False),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("balance_before", BIGINT, nullable=False),
        sa.Column("term_id", sa.String(12), nullable=False),
        sa.Column("term_seq", BIGINT, nullable=False),
        sa.Column("txn_date", sa.String(8), nullable=False),
        sa.Column("txn_time", sa.String(6), nullable=False),
        sa.Column("txn_epoch", BIGINT, nullable=False),
        sa.Column("tac", sa.String(8), nullable=False),
        sa.Column("alg", sa.String(2), nullable=False),
        sa.Column("key_ver", sa.String(2), nullable=False),
        sa.Column("status", sa.String(11), nullable=False),
        sa.Column("line_id", sa.String(32), nullable=False),
        sa.Column("station_id", sa.String(32), nullable=False),
        sa.Column("vehicle_id", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("device_seq", BIGINT, nullable=False),
        sa.Column("tac_check", sa.String(5), nullable=False),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("conflict_of", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearing_record")),
        sa.CheckConstraint(
            _one_of("role", ("primary", "conflict", "superseded")), name=op.f("ck_clearing_record_role")
        ),
        sa.CheckConstraint("family IN (0, 1)", name=op.f("ck_clearing_record_family")),
        sa.CheckConstraint("amount >= 0 AND balance_before >= 0", name=op.f("ck_clearing_record_amounts_not_negative")),
    )
    primary = "role = 'primary'"
    confirmed_primary = "role = 'primary' AND status <> 'unconfirmed'"
    op.create_index(
        "uq_clearing_record_terminal_key",
        "clearing_record",
        ["term_id", "term_seq"],
        unique=True,
        postgresql_where=sa.text(primary),
        sqlite_where=sa.text(primary),
    )
    op.create_index(
        "uq_clearing_record_card_key",
        "clearing_record",
        ["card_no", "family", "card_seq"],
        unique=True,
        postgresql_where=sa.text(confirmed_primary),
        sqlite_where=sa.text(confirmed_primary),
    )
    op.create_index("ix_clearing_record_card_time", "clearing_record", ["card_no", "txn_epoch"])

    op.create_table(
        "clearing_duplicate",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("ingest_id", BIGINT, nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("record_id", BIGINT, nullable=True),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("clearing_day", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearing_duplicate")),
        sa.ForeignKeyConstraint(
            ["ingest_id"], ["batch_ingest.id"], name=op.f("fk_clearing_duplicate_ingest_id_batch_ingest")
        ),
    )
    op.create_index(op.f("ix_clearing_duplicate_clearing_day"), "clearing_duplicate", ["clearing_day"])
    op.create_index(op.f("ix_clearing_duplicate_ingest_id"), "clearing_duplicate", ["ingest_id"])

    op.create_table(
        "clearing_day",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("closed_run_id", BIGINT, nullable=True),
        sa.Column("report_sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_clearing_day")),
        sa.CheckConstraint(_one_of("status", ("open", "closed")), name=op.f("ck_clearing_day_status")),
    )

    op.create_table(
        "clearing_verdict",
        sa.Column("record_id", BIGINT, nullable=False),
        sa.Column("verdict_no", sa.SmallInteger(), nullable=False),
        sa.Column("clearing_day", sa.Date(), nullable=False),
        sa.Column("run_id", BIGINT, nullable=True),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("class", sa.String(10), nullable=False),
        sa.Column("code", sa.String(24), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("posting", sa.String(10), nullable=True),
        sa.Column("posted_from", sa.String(10), nullable=True),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("entry_ref", sa.String(96), nullable=True),
        sa.Column("action_id", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("record_id", "verdict_no", name=op.f("pk_clearing_verdict")),
        sa.ForeignKeyConstraint(
            ["record_id"], ["clearing_record.id"], name=op.f("fk_clearing_verdict_record_id_clearing_record")
        ),
        sa.CheckConstraint(
            _one_of("class", ("settled", "suspicious", "pending", "rejected", "conflict")),
            name=op.f("ck_clearing_verdict_class"),
        ),
        sa.CheckConstraint(
            "posting IS NULL OR " + _one_of("posting", ("float", "suspense", "reverse")),
            name=op.f("ck_clearing_verdict_posting"),
        ),
    )
    op.create_index("ix_clearing_verdict_day", "clearing_verdict", ["clearing_day", "class"])
    pending = "class = 'pending'"
    op.create_index(
        "ix_clearing_verdict_pending",
        "clearing_verdict",
        ["operator_id"],
        postgresql_where=sa.text(pending),
        sqlite_where=sa.text(pending),
    )
    posted = "posting IN ('float', 'suspense')"
    reversed_ = "posting = 'reverse'"
    op.create_index(
        "uq_clearing_verdict_posted_once",
        "clearing_verdict",
        ["record_id"],
        unique=True,
        postgresql_where=sa.text(posted),
        sqlite_where=sa.text(posted),
    )
    op.create_index(
        "uq_clearing_verdict_reversed_once",
        "clearing_verdict",
        ["record_id"],
        unique=True,
        postgresql_where=sa.text(reversed_),
        sqlite_where=sa.text(reversed_),
    )

    op.create_table(
        "clearing_run",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("clearing_day", sa.Date(), nullable=False),
        sa.Column("run_no", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(8), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearing_run")),
        sa.ForeignKeyConstraint(
            ["clearing_day"], ["clearing_day.day"], name=op.f("fk_clearing_run_clearing_day_clearing_day")
        ),
        sa.UniqueConstraint("clearing_day", "run_no", name=op.f("uq_clearing_run_clearing_day_run_no")),
        sa.CheckConstraint(
            _one_of("stage", ("ingest", "clear", "close", "done", "failed")), name=op.f("ck_clearing_run_stage")
        ),
    )
    op.create_table(
        "clearing_task",
        sa.Column("run_id", BIGINT, nullable=False),
        sa.Column("stage", sa.String(8), nullable=False),
        sa.Column("task_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "stage", "task_key", name=op.f("pk_clearing_task")),
        sa.ForeignKeyConstraint(["run_id"], ["clearing_run.id"], name=op.f("fk_clearing_task_run_id_clearing_run")),
        sa.CheckConstraint(_one_of("stage", ("ingest", "clear", "close")), name=op.f("ck_clearing_task_stage")),
        sa.CheckConstraint(_one_of("status", ("pending", "done")), name=op.f("ck_clearing_task_status")),
    )
    op.create_table(
        "clearing_statement",
        sa.Column("clearing_day", sa.Date(), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("record_count", BIGINT, nullable=False),
        sa.Column("paid_count", BIGINT, nullable=False),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("fee", BIGINT, nullable=False),
        sa.Column("payable", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("clearing_day", "operator_id", name=op.f("pk_clearing_statement")),
    )

    op.create_table(
        "ledger_account",
        sa.Column("account", sa.String(48), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_ledger_account")),
        sa.CheckConstraint(
            _one_of("kind", ("asset", "liability", "income", "expense", "clearing", "suspense")),
            name=op.f("ck_ledger_account_kind"),
        ),
    )
    op.create_table(
        "ledger_entry",
        sa.Column("entry_ref", sa.String(96), nullable=False),
        sa.Column("clearing_day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=True),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("total", BIGINT, nullable=False),
        sa.Column("memo", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("entry_ref", name=op.f("pk_ledger_entry")),
        sa.ForeignKeyConstraint(
            ["clearing_day"], ["clearing_day.day"], name=op.f("fk_ledger_entry_clearing_day_clearing_day")
        ),
        sa.CheckConstraint("line_count >= 2", name=op.f("ck_ledger_entry_two_lines_at_least")),
        sa.CheckConstraint("total > 0", name=op.f("ck_ledger_entry_total_positive")),
    )
    op.create_index(op.f("ix_ledger_entry_clearing_day"), "ledger_entry", ["clearing_day", "operator_id"])
    op.create_table(
        "ledger_line",
        sa.Column("entry_ref", sa.String(96), nullable=False),
        sa.Column("line_no", sa.SmallInteger(), nullable=False),
        sa.Column("account", sa.String(48), nullable=False),
        sa.Column("debit", BIGINT, nullable=False),
        sa.Column("credit", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("entry_ref", "line_no", name=op.f("pk_ledger_line")),
        sa.ForeignKeyConstraint(
            ["entry_ref"],
            ["ledger_entry.entry_ref"],
            name="fk_ledger_line_entry_ref_ledger_entry",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.ForeignKeyConstraint(
            ["account"], ["ledger_account.account"], name=op.f("fk_ledger_line_account_ledger_account")
        ),
        sa.CheckConstraint("debit >= 0 AND credit >= 0", name=op.f("ck_ledger_line_not_negative")),
        sa.CheckConstraint("(debit = 0) <> (credit = 0)", name=op.f("ck_ledger_line_one_side")),
    )
    op.create_index(op.f("ix_ledger_line_account"), "ledger_line", ["account"])

    op.create_table(
        "clearing_feed_import",
        sa.Column("movement_id", BIGINT, autoincrement=False, nullable=False),
        sa.Column("clearing_day", sa.Date(), nullable=False),
        sa.Column("entry_ref", sa.String(96), nullable=False),
        sa.PrimaryKeyConstraint("movement_id", name=op.f("pk_clearing_feed_import")),
    )
    op.create_table(
        "clearing_exception_action",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("record_id", BIGINT, nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("amount", BIGINT, nullable=True),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("proposed_by", sa.String(64), nullable=False),
        sa.Column("proposed_at", TIMESTAMP, nullable=False),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("applied_day", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearing_exception_action")),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["clearing_record.id"],
            name=op.f("fk_clearing_exception_action_record_id_clearing_record"),
        ),
        sa.CheckConstraint(
            _one_of("action", ("accept", "reject", "adjust")), name=op.f("ck_clearing_exception_action_action")
        ),
        sa.CheckConstraint(
            _one_of("status", ("proposed", "approved", "refused")), name=op.f("ck_clearing_exception_action_status")
        ),
        sa.CheckConstraint(
            "decided_by IS NULL OR decided_by <> proposed_by", name=op.f("ck_clearing_exception_action_four_eyes")
        ),
        sa.CheckConstraint(
            "amount IS NULL OR amount >= 0", name=op.f("ck_clearing_exception_action_amount_not_negative")
        ),
    )
    proposed = "status = 'proposed'"
    op.create_index(
        "uq_clearing_exception_action_open",
        "clearing_exception_action",
        ["record_id"],
        unique=True,
        postgresql_where=sa.text(proposed),
        sqlite_where=sa.text(proposed),
    )
    op.create_table(
        "clearing_audit",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("object_type", sa.String(30), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearing_audit")),
    )

    if op.get_bind().dialect.name == "postgresql":
        for statement in (*PG_FUNCTIONS, *PG_TRIGGERS):
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    """Drop the triggers, then the tables."""
    for statement in PG_DROP if op.get_bind().dialect.name == "postgresql" else SQLITE_DROP:
        op.execute(statement)
    for table in (
        "clearing_audit",
        "clearing_exception_action",
        "clearing_feed_import",
        "ledger_line",
        "ledger_entry",
        "ledger_account",
        "clearing_statement",
        "clearing_task",
        "clearing_run",
        "clearing_verdict",
        "clearing_day",
        "clearing_duplicate",
        "clearing_record",
        "batch_ingest",
    ):
        op.drop_table(table)
