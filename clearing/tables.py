"""Clearing's own tables (issue #6): ingested batches and their records, verdicts, the ledger, runs and tasks,
settlement statements, the issuance feed, exceptions and their audit trail.

Kept apart from :mod:`clearing.models` (the registry, inbox and bills of the device API), whose table set the API
tests pin. The schema is made by ``migrations/versions/clearing_0002_ledger_records.py``, which also installs the
triggers that make the ledger append-only and balanced (see :mod:`clearing.ledger`).

Money is integer fen (BIGINT). Record times are kept as the card wrote them (``txn_date``, ``txn_time``) and as
Unix seconds (``txn_epoch``, the device's clock read at the offset of its batch header).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.db import Base
from clearing.models import UtcDateTime

RECORD_ROLES = ("primary", "conflict", "superseded")
CLASSES = ("settled", "suspicious", "pending", "rejected", "conflict")
POSTINGS = ("float", "suspense", "reverse")
DAY_STATUSES = ("open", "closed")
RUN_STAGES = ("ingest", "clear", "close", "done", "failed")
TASK_STAGES = ("ingest", "clear", "close")
TASK_STATUSES = ("pending", "done")
ACCOUNT_KINDS = ("asset", "liability", "income", "expense", "clearing", "suspense")
ACTIONS = ("accept", "reject", "adjust")
ACTION_STATUSES = ("proposed", "approved", "refused")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class BatchIngest(Base):
    """One accepted upload whose records were loaded (exactly one row per upload)."""

    __tablename__ = "batch_ingest"
    __table_args__ = (
        UniqueConstraint("upload_id"),
        Index(None, "claim_run_id", "operator_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("batch_upload.id"))
    device_id: Mapped[str] = mapped_column(String(32))
    device_kind: Mapped[str] = mapped_column(String(16))
    operator_id: Mapped[str] = mapped_column(String(32))
    term_id: Mapped[str] = mapped_column(String(12))
    created_epoch: Mapped[int] = mapped_column()
    """The header's ``created_at`` as Unix seconds."""
    utc_offset: Mapped[int] = mapped_column(Integer())
    """The header's UTC offset in seconds: the device's clock, at which its records' times are read."""
    record_count: Mapped[int] = mapped_column()
    new_records: Mapped[int] = mapped_column()
    duplicates: Mapped[int] = mapped_column()
    conflicts: Mapped[int] = mapped_column()
    completions: Mapped[int] = mapped_column()
    """Unconfirmed records completed by this batch's ``proof`` / ``ok`` copies (spec §5)."""
    tac_failures: Mapped[int] = mapped_column()
    open_records: Mapped[int] = mapped_column()
    """Records of this batch without a verdict yet."""
    min_txn_date: Mapped[str] = mapped_column(String(8))
    max_txn_date: Mapped[str] = mapped_column(String(8))
    claim_run_id: Mapped[int | None] = mapped_column()
    """The clearing run that first took this batch's records into account."""
    first_record_id: Mapped[int] = mapped_column(default=0)
    last_record_id: Mapped[int] = mapped_column(default=0)
    """The batch's records have the ids ``first_record_id`` … ``last_record_id`` (one block per batch)."""
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ClearingRecord(Base):
    """One record of a batch (spec §5 columns), with what ingest found: its identity role and its TAC.

    ``role`` is ``primary`` (owns its keys), ``conflict`` (a key of a primary record with other content) or
    ``superseded`` (an unconfirmed record completed by a later proof copy). The database enforces the identity:
    one primary record per ``(term_id, term_seq)`` and per ``(card_no, family, card_seq)`` (unconfirmed records
    are not part of the card key).
    """

    __tablename__ = "clearing_record"
    __table_args__ = (
        CheckConstraint(_one_of("role", RECORD_ROLES), name="role"),
        CheckConstraint("family IN (0, 1)", name="family"),
        CheckConstraint("amount >= 0 AND balance_before >= 0", name="amounts_not_negative"),
        Index(
            "uq_clearing_record_terminal_key",
            "term_id",
            "term_seq",
            unique=True,
            postgresql_where=text("role = 'primary'"),
            sqlite_where=text("role = 'primary'"),
        ),
        Index(
            "uq_clearing_record_card_key",
            "card_no",
            "family",
            "card_seq",
            unique=True,
            postgresql_where=text("role = 'primary' AND status <> 'unconfirmed'"),
            sqlite_where=text("role = 'primary' AND status <> 'unconfirmed'"),
        ),
        Index("ix_clearing_record_card_time", "card_no", "txn_epoch"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ingest_id: Mapped[int] = mapped_column()
    """The batch (``batch_ingest.id``); no foreign key: both are written in one transaction, and the batch's id block
    (``first_record_id`` … ``last_record_id``) is how records are found by batch."""
    line_no: Mapped[int] = mapped_column(Integer())
    operator_id: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(10))
    txn_type: Mapped[str] = mapped_column(String(2))
    family: Mapped[int] = mapped_column(SmallInteger())
    """0: the online counter (loads), 1: the offline counter (purchases) — spec §5 counter families."""
    card_no: Mapped[str] = mapped_column(String(16))
    card_type: Mapped[str] = mapped_column(String(2))
    card_seq: Mapped[int] = mapped_column(Integer())
    amount: Mapped[int] = mapped_column()
    balance_before: Mapped[int] = mapped_column()
    term_id: Mapped[str] = mapped_column(String(12))
    term_seq: Mapped[int] = mapped_column()
    txn_date: Mapped[str] = mapped_column(String(8))
    txn_time: Mapped[str] = mapped_column(String(6))
    txn_epoch: Mapped[int] = mapped_column()
    tac: Mapped[str] = mapped_column(String(8))
    alg: Mapped[str] = mapped_column(String(2))
    key_ver: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(11))
    line_id: Mapped[str] = mapped_column(String(32))
    station_id: Mapped[str] = mapped_column(String(32))
    vehicle_id: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(64))
    device_seq: Mapped[int] = mapped_column()
    tac_check: Mapped[str] = mapped_column(String(5))
    """``ok``, ``bad``, ``nokey`` (no issuer key of that alg / version) or ``none`` (unconfirmed: no TAC)."""
    digest: Mapped[str] = mapped_column(String(32))
    """Hex BLAKE2b-128 of the 19 columns: identical copies have the same digest."""
    conflict_of: Mapped[int | None] = mapped_column()
    """For a conflict: the primary record whose key it shares."""
    prev_term_seq: Mapped[int | None] = mapped_column()
    """term_seq of the same terminal's record at ``device_seq − 1`` when ingest found it in the same batch (``None``:
    clearing looks it up)."""


class ClearingDuplicate(Base):
    """An identical copy of a record already held: counted, never settled (spec §5)."""

    __tablename__ = "clearing_duplicate"
    __table_args__ = (Index(None, "clearing_day"), Index(None, "ingest_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    ingest_id: Mapped[int] = mapped_column(ForeignKey("batch_ingest.id"))
    line_no: Mapped[int] = mapped_column(Integer())
    record_id: Mapped[int | None] = mapped_column()
    """The record it copies (``None``: a copy inside its own batch of a line that was itself a conflict)."""
    operator_id: Mapped[str] = mapped_column(String(32))
    clearing_day: Mapped[date | None] = mapped_column(Date())


class ClearingVerdict(Base):
    """A record's class as decided on a clearing day; the latest verdict is the record's class.

    A record settles at most once and is reversed at most once: partial unique indexes on ``record_id``.
    ``amount`` is what the verdict posted (negative for a reversal), ``entry_ref`` the ledger entry.
    """

    __tablename__ = "clearing_verdict"
    __table_args__ = (
        PrimaryKeyConstraint("record_id", "verdict_no"),
        CheckConstraint(_one_of("class", CLASSES), name="class"),
        CheckConstraint(f"posting IS NULL OR {_one_of('posting', POSTINGS)}", name="posting"),
        Index("ix_clearing_verdict_day", "clearing_day", "class"),
        Index(
            "ix_clearing_verdict_pending",
            "operator_id",
            postgresql_where=text("class = 'pending'"),
            sqlite_where=text("class = 'pending'"),
        ),
        Index(
            "uq_clearing_verdict_posted_once",
            "record_id",
            unique=True,
            postgresql_where=text("posting IN ('float', 'suspense')"),
            sqlite_where=text("posting IN ('float', 'suspense')"),
        ),
        Index(
            "ix_clearing_verdict_suspense",
            "record_id",
            postgresql_where=text("posting = 'suspense' OR posted_from = 'suspense'"),
            sqlite_where=text("posting = 'suspense' OR posted_from = 'suspense'"),
        ),
        Index(
            "uq_clearing_verdict_reversed_once",
            "record_id",
            unique=True,
            postgresql_where=text("posting = 'reverse'"),
            sqlite_where=text("posting = 'reverse'"),
        ),
    )

    record_id: Mapped[int] = mapped_column()
    """The record (``clearing_record.id``); no foreign key: clearing writes verdicts only for records it has just
    read in the same transaction, records are never deleted, and checking the key would share-lock every record."""
    verdict_no: Mapped[int] = mapped_column(SmallInteger())
    clearing_day: Mapped[date] = mapped_column(Date())
    run_id: Mapped[int | None] = mapped_column()
    operator_id: Mapped[str] = mapped_column(String(32))
    klass: Mapped[str] = mapped_column("class", String(10))
    code: Mapped[str] = mapped_column(String(24))
    late: Mapped[bool] = mapped_column(Boolean())
    posting: Mapped[str | None] = mapped_column(String(10))
    """``float`` / ``suspense``: a purchase settled against that account; ``reverse``: a settlement undone."""
    posted_from: Mapped[str | None] = mapped_column(String(10))
    """For a reversal: the account the settlement had debited (``float`` or ``suspense``)."""
    amount: Mapped[int] = mapped_column()
    entry_ref: Mapped[str | None] = mapped_column(String(96))
    action_id: Mapped[int | None] = mapped_column()


class ClearingDay(Base):
    """A clearing day: open until a run reconciles it, then closed for good (never rewritten)."""

    __tablename__ = "clearing_day"
    __table_args__ = (CheckConstraint(_one_of("status", DAY_STATUSES), name="status"),)

    day: Mapped[date] = mapped_column(Date(), primary_key=True)
    status: Mapped[str] = mapped_column(String(8))
    runs: Mapped[int] = mapped_column(Integer())
    closed_run_id: Mapped[int | None] = mapped_column()
    report_sha256: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the day's JSON report when it closed: regenerating it must give the same bytes."""


class ClearingRun(Base):
    """One run of a clearing day; its stages advance through :class:`ClearingTask` rows (no chords)."""

    __tablename__ = "clearing_run"
    __table_args__ = (
        UniqueConstraint("clearing_day", "run_no"),
        CheckConstraint(_one_of("stage", RUN_STAGES), name="stage"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    clearing_day: Mapped[date] = mapped_column(ForeignKey("clearing_day.day"))
    run_no: Mapped[int] = mapped_column(Integer())
    stage: Mapped[str] = mapped_column(String(8))
    result: Mapped[str | None] = mapped_column(Text())
    """The run's outcome (JSON): reconciliation checks, counts."""
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ClearingTask(Base):
    """One task of a run: per batch (ingest), per operator (clear), once (close)."""

    __tablename__ = "clearing_task"
    __table_args__ = (
        PrimaryKeyConstraint("run_id", "stage", "task_key"),
        CheckConstraint(_one_of("stage", TASK_STAGES), name="stage"),
        CheckConstraint(_one_of("status", TASK_STATUSES), name="status"),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("clearing_run.id"))
    stage: Mapped[str] = mapped_column(String(8))
    task_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    error: Mapped[str | None] = mapped_column(Text())
    """Why the last attempt failed (the task stays pending; running the day again retries it)."""


class ClearingStatement(Base):
    """An operator's settlement statement for a clearing day (cumulative over the day's runs)."""

    __tablename__ = "clearing_statement"
    __table_args__ = (PrimaryKeyConstraint("clearing_day", "operator_id"),)

    clearing_day: Mapped[date] = mapped_column(Date())
    operator_id: Mapped[str] = mapped_column(String(32))
    record_count: Mapped[int] = mapped_column()
    paid_count: Mapped[int] = mapped_column()
    """Records with an amount above 0 (the per-transaction fee counts these)."""
    amount: Mapped[int] = mapped_column()
    fee: Mapped[int] = mapped_column()
    payable: Mapped[int] = mapped_column()


class LedgerAccount(Base):
    """An account of the double-entry ledger."""

    __tablename__ = "ledger_account"
    __table_args__ = (CheckConstraint(_one_of("kind", ACCOUNT_KINDS), name="kind"),)

    account: Mapped[str] = mapped_column(String(48), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    operator_id: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))


class LedgerEntry(Base):
    """A posted journal entry: inserted after its lines, which the database checks balance (append-only)."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        CheckConstraint("line_count >= 2", name="two_lines_at_least"),
        CheckConstraint("total > 0", name="total_positive"),
        Index(None, "clearing_day", "operator_id"),
    )

    entry_ref: Mapped[str] = mapped_column(String(96), primary_key=True)
    clearing_day: Mapped[date] = mapped_column(ForeignKey("clearing_day.day"))
    kind: Mapped[str] = mapped_column(String(16))
    operator_id: Mapped[str | None] = mapped_column(String(32))
    line_count: Mapped[int] = mapped_column(Integer())
    total: Mapped[int] = mapped_column()
    """The sum of the debits, equal to the sum of the credits."""
    memo: Mapped[str] = mapped_column(String(200))


class LedgerLine(Base):
    """One line of an entry: a debit or a credit (never both, never zero) of one account."""

    __tablename__ = "ledger_line"
    __table_args__ = (
        PrimaryKeyConstraint("entry_ref", "line_no"),
        ForeignKeyConstraint(
            ["entry_ref"],
            ["ledger_entry.entry_ref"],
            name="fk_ledger_line_entry_ref_ledger_entry",
            deferrable=True,
            initially="DEFERRED",
        ),
        CheckConstraint("debit >= 0 AND credit >= 0", name="not_negative"),
        CheckConstraint("(debit = 0) <> (credit = 0)", name="one_side"),
        Index(None, "account"),
    )

    entry_ref: Mapped[str] = mapped_column(String(96))
    line_no: Mapped[int] = mapped_column(SmallInteger())
    account: Mapped[str] = mapped_column(ForeignKey("ledger_account.account"))
    debit: Mapped[int] = mapped_column()
    credit: Mapped[int] = mapped_column()


class FeedImport(Base):
    """An issuance purse movement (load, settlement, payout) taken into the ledger, once."""

    __tablename__ = "clearing_feed_import"

    movement_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    clearing_day: Mapped[date] = mapped_column(Date())
    entry_ref: Mapped[str] = mapped_column(String(96))


class ExceptionAction(Base):
    """A resolution of an exception: proposed by one person (maker), approved or refused by another (checker)."""

    __tablename__ = "clearing_exception_action"
    __table_args__ = (
        CheckConstraint(_one_of("action", ACTIONS), name="action"),
        CheckConstraint(_one_of("status", ACTION_STATUSES), name="status"),
        CheckConstraint("decided_by IS NULL OR decided_by <> proposed_by", name="four_eyes"),
        CheckConstraint("amount IS NULL OR amount >= 0", name="amount_not_negative"),
        Index(
            "uq_clearing_exception_action_open",
            "record_id",
            unique=True,
            postgresql_where=text("status = 'proposed'"),
            sqlite_where=text("status = 'proposed'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("clearing_record.id"))
    action: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int | None] = mapped_column()
    note: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(10))
    proposed_by: Mapped[str] = mapped_column(String(64))
    proposed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    applied_day: Mapped[date | None] = mapped_column(Date())


class ClearingAudit(Base):
    """Who did what to which clearing object, when (exceptions, runs)."""

    __tablename__ = "clearing_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(30))
    object_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text())
