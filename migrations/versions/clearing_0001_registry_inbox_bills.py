"""Clearing: registry (operators, fee schedules, devices), fare tables, bills, the batch inbox.

Revision ID: clearing_0001
Revises:
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "clearing_0001"
down_revision = None
branch_labels = ("clearing",)
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the clearing tables."""
    op.create_table(
        "operator",
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("operator_id", name=op.f("pk_operator")),
        sa.CheckConstraint("kind IN ('bus', 'metro', 'utility', 'issuer')", name=op.f("ck_operator_kind")),
    )
    op.create_table(
        "operator_fee",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("percent", sa.String(16), nullable=False),
        sa.Column("per_txn", BIGINT, nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_fee")),
        sa.ForeignKeyConstraint(
            ["operator_id"], ["operator.operator_id"], name=op.f("fk_operator_fee_operator_id_operator")
        ),
        sa.UniqueConstraint("operator_id", "effective_from", name=op.f("uq_operator_fee_operator_id_effective_from")),
        sa.CheckConstraint("per_txn >= 0", name=op.f("ck_operator_fee_per_txn_not_negative")),
    )
    op.create_table(
        "device",
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("term_id", sa.String(12), nullable=False),
        sa.Column("upload_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device")),
        sa.ForeignKeyConstraint(["operator_id"], ["operator.operator_id"], name=op.f("fk_device_operator_id_operator")),
        sa.UniqueConstraint("term_id", name=op.f("uq_device_term_id")),
        sa.CheckConstraint("kind IN ('validator', 'kiosk', 'counter', 'gate')", name=op.f("ck_device_kind")),
        sa.CheckConstraint("status IN ('active', 'retired')", name=op.f("ck_device_status")),
    )
    op.create_table(
        "fare_table",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("effective_from", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fare_table")),
        sa.ForeignKeyConstraint(
            ["operator_id"], ["operator.operator_id"], name=op.f("fk_fare_table_operator_id_operator")
        ),
        sa.UniqueConstraint("operator_id", "version", name=op.f("uq_fare_table_operator_id_version")),
    )
    op.create_index(op.f("ix_fare_table_operator_id"), "fare_table", ["operator_id", "effective_from"])
    op.create_table(
        "bill",
        sa.Column("bill_no", sa.String(32), nullable=False),
        sa.Column("utility", sa.String(16), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("account", sa.String(32), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("amount_due", BIGINT, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("held_by_device_id", sa.String(32), nullable=True),
        sa.Column("held_until", TIMESTAMP, nullable=True),
        sa.Column("paid_at", TIMESTAMP, nullable=True),
        sa.Column("paid_by_device_id", sa.String(32), nullable=True),
        sa.Column("amount_paid", BIGINT, nullable=True),
        sa.Column("payment_term_id", sa.String(12), nullable=True),
        sa.Column("payment_term_seq", BIGINT, nullable=True),
        sa.Column("payment_card_no", sa.String(16), nullable=True),
        sa.Column("payment_card_seq", BIGINT, nullable=True),
        sa.Column("payment_record", sa.JSON(), nullable=True),
        sa.Column("row_version", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("bill_no", name=op.f("pk_bill")),
        sa.ForeignKeyConstraint(["operator_id"], ["operator.operator_id"], name=op.f("fk_bill_operator_id_operator")),
        sa.ForeignKeyConstraint(
            ["held_by_device_id"], ["device.device_id"], name=op.f("fk_bill_held_by_device_id_device")
        ),
        sa.ForeignKeyConstraint(
            ["paid_by_device_id"], ["device.device_id"], name=op.f("fk_bill_paid_by_device_id_device")
        ),
        sa.UniqueConstraint(
            "payment_term_id", "payment_term_seq", name=op.f("uq_bill_payment_term_id_payment_term_seq")
        ),
        sa.CheckConstraint("utility IN ('water', 'electricity', 'gas')", name=op.f("ck_bill_utility")),
        sa.CheckConstraint("status IN ('open', 'held', 'paid')", name=op.f("ck_bill_status")),
        sa.CheckConstraint("amount_due > 0", name=op.f("ck_bill_amount_due_positive")),
    )
    op.create_index(op.f("ix_bill_utility"), "bill", ["utility", "account"])
    op.create_table(
        "batch_content",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", BIGINT, nullable=False),
        sa.Column("first_received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_batch_content")),
    )
    op.create_table(
        "batch_upload",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("batch_signature", sa.String(64), nullable=False),
        sa.Column("operator_id", sa.String(32), nullable=False),
        sa.Column("term_id", sa.String(12), nullable=False),
        sa.Column("batch_created_at", sa.String(40), nullable=False),
        sa.Column("record_count", BIGINT, nullable=False),
        sa.Column("amount_total", BIGINT, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("duplicate_count", BIGINT, server_default="0", nullable=False),
        sa.Column("last_duplicate_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_upload")),
        sa.ForeignKeyConstraint(["device_id"], ["device.device_id"], name=op.f("fk_batch_upload_device_id_device")),
        sa.ForeignKeyConstraint(
            ["content_sha256"], ["batch_content.sha256"], name=op.f("fk_batch_upload_content_sha256_batch_content")
        ),
        sa.UniqueConstraint("device_id", "batch_id", name=op.f("uq_batch_upload_device_id_batch_id")),
    )
    op.create_index(op.f("ix_batch_upload_received_at"), "batch_upload", ["received_at"])
    op.create_table(
        "batch_refusal",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("batch_signature", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_refusal")),
        sa.ForeignKeyConstraint(["device_id"], ["device.device_id"], name=op.f("fk_batch_refusal_device_id_device")),
        sa.ForeignKeyConstraint(
            ["content_sha256"], ["batch_content.sha256"], name=op.f("fk_batch_refusal_content_sha256_batch_content")
        ),
        sa.CheckConstraint("outcome IN ('refused', 'conflict')", name=op.f("ck_batch_refusal_outcome")),
    )
    op.create_index(op.f("ix_batch_refusal_device_id"), "batch_refusal", ["device_id", "batch_id"])


def downgrade() -> None:
    """Drop the clearing tables."""
    op.drop_index(op.f("ix_batch_refusal_device_id"), table_name="batch_refusal")
    op.drop_table("batch_refusal")
    op.drop_index(op.f("ix_batch_upload_received_at"), table_name="batch_upload")
    op.drop_table("batch_upload")
    op.drop_table("batch_content")
    op.drop_index(op.f("ix_bill_utility"), table_name="bill")
    op.drop_table("bill")
    op.drop_index(op.f("ix_fare_table_operator_id"), table_name="fare_table")
    op.drop_table("fare_table")
    op.drop_table("device")
    op.drop_table("operator_fee")
    op.drop_table("operator")
