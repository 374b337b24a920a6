"""Clearing tables: the registry (operators, fee schedules, devices), fare tables, utility bills, the batch inbox.

The inbox is deliberately generic: raw batches by content hash, one row per accepted ``(device_id, batch_id)``,
refused uploads with their reason and bytes. Records are not parsed into ledger tables here; clearing's ingest
(issue 6) reads the accepted uploads.

Every timestamp is stored in UTC and comes back timezone-aware (:class:`UtcDateTime`), on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from backoffice.db import Base

OPERATOR_KINDS = ("bus", "metro", "utility", "issuer")
DEVICE_KINDS = ("validator", "kiosk", "counter", "gate")
DEVICE_STATUSES = ("active", "retired")
UTILITIES = ("water", "electricity", "gas")
BILL_STATUSES = ("open", "held", "paid")
REFUSAL_OUTCOMES = ("refused", "conflict")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime stored in UTC; read back aware (UTC) on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC (naive on SQLite, which keeps no offset)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime cannot be stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """An aware UTC datetime."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Operator(Base):
    """A company in the scheme: a bus or metro operator, a utility, or the card issuer."""

    __tablename__ = "operator"
    __table_args__ = (CheckConstraint(_one_of("kind", OPERATOR_KINDS), name="kind"),)

    operator_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    fees: Mapped[list[OperatorFee]] = relationship(back_populates="operator", order_by="OperatorFee.effective_from")


class OperatorFee(Base):
    """One fee schedule of an operator, in force from ``effective_from`` until the next one."""

    __tablename__ = "operator_fee"
    __table_args__ = (
        UniqueConstraint("operator_id", "effective_from"),
        CheckConstraint("per_txn >= 0", name="per_txn_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[str] = mapped_column(ForeignKey("operator.operator_id"))
    percent: Mapped[str] = mapped_column(String(16))
    """The fee percentage as a canonical decimal string (``"1.5"``); read it with ``Decimal(percent)``."""
    per_txn: Mapped[int] = mapped_column()
    """A fixed fee per transaction, fen."""
    effective_from: Mapped[date] = mapped_column(Date())

    operator: Mapped[Operator] = relationship(back_populates="fees")


class Device(Base):
    """A registered device: validator, kiosk, counter reader or gate.

    ``upload_key`` is the device's HMAC key (64 hex digits). The server needs it in clear to verify
    requests and batches; it never appears in an API response, a log line or this object's ``repr``.
    """

    __tablename__ = "device"
    __table_args__ = (
        CheckConstraint(_one_of("kind", DEVICE_KINDS), name="kind"),
        CheckConstraint(_one_of("status", DEVICE_STATUSES), name="status"),
        UniqueConstraint("term_id"),
    )

    device_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    operator_id: Mapped[str] = mapped_column(ForeignKey("operator.operator_id"))
    kind: Mapped[str] = mapped_column(String(16))
    term_id: Mapped[str] = mapped_column(String(12))
    upload_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    operator: Mapped[Operator] = relationship()

    def __repr__(self) -> str:
        return f"Device(device_id={self.device_id!r}, kind={self.kind!r}, status={self.status!r})"


class FareTable(Base):
    """A versioned fare table document of an operator, in force from ``effective_from``."""

    __tablename__ = "fare_table"
    __table_args__ = (
        UniqueConstraint("operator_id", "version"),
        Index(None, "operator_id", "effective_from"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[str] = mapped_column(ForeignKey("operator.operator_id"))
    version: Mapped[str] = mapped_column(String(32))
    document: Mapped[dict[str, Any]] = mapped_column(JSON())
    effective_from: Mapped[datetime] = mapped_column(UtcDateTime())
    published_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Bill(Base):
    """A utility bill a kiosk can look up, hold and mark paid (amounts in fen)."""

    __tablename__ = "bill"
    __table_args__ = (
        CheckConstraint(_one_of("utility", UTILITIES), name="utility"),
        CheckConstraint(_one_of("status", BILL_STATUSES), name="status"),
        CheckConstraint("amount_due > 0", name="amount_due_positive"),
        UniqueConstraint("payment_term_id", "payment_term_seq"),
        Index(None, "utility", "account"),
    )

    bill_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    utility: Mapped[str] = mapped_column(String(16))
    operator_id: Mapped[str] = mapped_column(ForeignKey("operator.operator_id"))
    account: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(7))
    amount_due: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    held_by_device_id: Mapped[str | None] = mapped_column(ForeignKey("device.device_id"))
    held_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    paid_by_device_id: Mapped[str | None] = mapped_column(ForeignKey("device.device_id"))
    amount_paid: Mapped[int | None] = mapped_column()
    payment_term_id: Mapped[str | None] = mapped_column(String(12))
    payment_term_seq: Mapped[int | None] = mapped_column()
    payment_card_no: Mapped[str | None] = mapped_column(String(16))
    payment_card_seq: Mapped[int | None] = mapped_column()
    payment_record: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    """The purchase record that paid the bill (spec §5 columns as keys), as the kiosk sent it."""
    row_version: Mapped[int] = mapped_column()
    """Optimistic lock: every update checks and bumps it (two kiosks racing for one bill on SQLite)."""

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class BatchContent(Base):
    """The raw bytes of an uploaded batch, kept once per SHA-256 (accepted and refused alike)."""

    __tablename__ = "batch_content"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary())
    size_bytes: Mapped[int] = mapped_column()
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class BatchUpload(Base):
    """One accepted batch: exactly one row per ``(device_id, batch_id)``; re-sends of the same bytes count up."""

    __tablename__ = "batch_upload"
    __table_args__ = (
        UniqueConstraint("device_id", "batch_id"),
        Index(None, "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("device.device_id"))
    batch_id: Mapped[str] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(ForeignKey("batch_content.sha256"))
    batch_signature: Mapped[str] = mapped_column(String(64))
    """The device's ``X-Batch-Signature`` (HMAC-SHA256 of the bytes), kept with the batch."""
    operator_id: Mapped[str] = mapped_column(String(32))
    term_id: Mapped[str] = mapped_column(String(12))
    batch_created_at: Mapped[str] = mapped_column(String(40))
    """The header's ``created_at`` as the device wrote it (ISO 8601 with offset)."""
    record_count: Mapped[int] = mapped_column()
    amount_total: Mapped[int] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duplicate_count: Mapped[int] = mapped_column(default=0, server_default="0")
    last_duplicate_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class BatchRefusal(Base):
    """An upload that was not accepted, with its reason and bytes, for inspection.

    ``outcome`` is ``refused`` (422: signature, header, format, totals) or ``conflict`` (409: an accepted
    ``batch_id`` sent again with other bytes). ``batch_id`` is what the header said, when it could be read.
    """

    __tablename__ = "batch_refusal"
    __table_args__ = (
        CheckConstraint(_one_of("outcome", REFUSAL_OUTCOMES), name="outcome"),
        Index(None, "device_id", "batch_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("device.device_id"))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    content_sha256: Mapped[str] = mapped_column(ForeignKey("batch_content.sha256"))
    batch_signature: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
