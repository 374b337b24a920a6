"""Issuance records: residents, social security, cards, hotlist, PSAMs, loads, settlements, movements, audit.

Revision ID: issuance_0001
Revises:
Create Date: 2025-03-01

The first revision of the ``issuance`` branch (independent of the other packages' branches). Written for
SQLite and PostgreSQL alike; enumerations are VARCHAR with named CHECK constraints.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issuance_0001"
down_revision = None
branch_labels = ("issuance",)
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
CARD_STATES = ("applied", "personalised", "active", "blocked", "locked", "lost", "replaced", "refunded", "cancelled")


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=max(map(len, values)))


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.Column("actor_role", sa.String(length=20), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("object_type", sa.String(length=30), nullable=False),
        sa.Column("object_id", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])

    op.create_table(
        "hotlist_entries",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("version", BIGINT, nullable=False),
        sa.Column("card_no", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("listed_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hotlist_entries")),
        sa.UniqueConstraint("version", name=op.f("uq_hotlist_entries_version")),
    )
    op.create_index(op.f("ix_hotlist_entries_card_no"), "hotlist_entries", ["card_no"])

    op.create_table(
        "issuance_counters",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_issuance_counters")),
    )

    op.create_table(
        "psams",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("term_id", sa.String(length=12), nullable=False),
        sa.Column("chip_serial", sa.String(length=16), nullable=False),
        sa.Column("alg", BIGINT, nullable=False),
        sa.Column("key_version", BIGINT, nullable=False),
        sa.Column("personalised_at", TIMESTAMP, nullable=False),
        sa.Column("personalised_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_psams")),
        sa.UniqueConstraint("chip_serial", name=op.f("uq_psams_chip_serial")),
        sa.UniqueConstraint("term_id", name=op.f("uq_psams_term_id")),
    )

    op.create_table(
        "purse_movements",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("from_account", sa.String(length=40), nullable=False),
        sa.Column("to_account", sa.String(length=40), nullable=False),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("reference", sa.String(length=80), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_purse_movements_amount_positive")),
        sa.CheckConstraint("from_account <> to_account", name=op.f("ck_purse_movements_distinct_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purse_movements")),
    )
    op.create_index(op.f("ix_purse_movements_from_account"), "purse_movements", ["from_account"])
    op.create_index(op.f("ix_purse_movements_to_account"), "purse_movements", ["to_account"])

    op.create_table(
        "residents",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("id_number_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("id_number_lookup", sa.String(length=64), nullable=False),
        sa.Column("id_number_masked", sa.String(length=18), nullable=False),
        sa.Column("phone", sa.String(length=11), nullable=False),
        sa.Column("address", sa.String(length=200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_residents")),
        sa.UniqueConstraint("id_number_lookup", name=op.f("uq_residents_id_number_lookup")),
    )

    op.create_table(
        "cards",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("card_no", sa.String(length=16), nullable=False),
        sa.Column("city_code", sa.String(length=4), nullable=False),
        sa.Column("serial", BIGINT, nullable=False),
        sa.Column("card_type", _enum("card_type", "adult", "student", "senior", "disabled", "staff"), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("resident_id", BIGINT, nullable=True),
        sa.Column("state", _enum("card_state", *CARD_STATES), nullable=False),
        sa.Column("purse_limit", BIGINT, nullable=False),
        sa.Column("alg", BIGINT, nullable=True),
        sa.Column("key_version", BIGINT, nullable=True),
        sa.Column("chip_serial", sa.String(length=16), nullable=True),
        sa.Column("social_application", sa.Boolean(), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=True),
        sa.Column("expiry_date", sa.Date(), nullable=True),
        sa.Column("shadow_balance", BIGINT, nullable=False),
        sa.Column("shadow_online_seq", BIGINT, nullable=False),
        sa.Column("shadow_offline_seq", BIGINT, nullable=False),
        sa.Column("shadow_updated_at", TIMESTAMP, nullable=True),
        sa.Column("hotlisted_at", TIMESTAMP, nullable=True),
        sa.Column("replaced_by_id", BIGINT, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("row_version", BIGINT, nullable=False),
        sa.CheckConstraint("purse_limit >= 0", name=op.f("ck_cards_purse_limit_not_negative")),
        sa.ForeignKeyConstraint(["replaced_by_id"], ["cards.id"], name=op.f("fk_cards_replaced_by_id_cards")),
        sa.ForeignKeyConstraint(["resident_id"], ["residents.id"], name=op.f("fk_cards_resident_id_residents")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cards")),
        sa.UniqueConstraint("card_no", name=op.f("uq_cards_card_no")),
        sa.UniqueConstraint("chip_serial", name=op.f("uq_cards_chip_serial")),
        sa.UniqueConstraint("city_code", "serial", name=op.f("uq_cards_city_code_serial")),
    )
    op.create_index(op.f("ix_cards_resident_id"), "cards", ["resident_id"])

    op.create_table(
        "social_security_records",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("resident_id", BIGINT, nullable=True),
        sa.Column("ss_number_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("ss_number_lookup", sa.String(length=64), nullable=False),
        sa.Column("ss_number_masked", sa.String(length=18), nullable=False),
        sa.Column("schemes", BIGINT, nullable=False),
        sa.Column("agency_code", sa.String(length=6), nullable=False),
        sa.Column("status", _enum("ss_status", "active", "suspended", "terminated"), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("linked_at", TIMESTAMP, nullable=True),
        sa.Column("linked_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint("schemes >= 0 AND schemes <= 31", name=op.f("ck_social_security_records_schemes_flags")),
        sa.ForeignKeyConstraint(
            ["resident_id"], ["residents.id"], name=op.f("fk_social_security_records_resident_id_residents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_social_security_records")),
        sa.UniqueConstraint("resident_id", name=op.f("uq_social_security_records_resident_id")),
        sa.UniqueConstraint("ss_number_lookup", name=op.f("uq_social_security_records_ss_number_lookup")),
    )

    op.create_table(
        "balance_settlements",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("kind", _enum("settlement_kind", "transfer", "refund", "cancel"), nullable=False),
        sa.Column("from_card_id", BIGINT, nullable=False),
        sa.Column("to_card_id", BIGINT, nullable=True),
        sa.Column("cutoff_at", TIMESTAMP, nullable=False),
        sa.Column("status", _enum("settlement_status", "pending", "ready", "done"), nullable=False),
        sa.Column("amount", BIGINT, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("ready_at", TIMESTAMP, nullable=True),
        sa.Column("done_at", TIMESTAMP, nullable=True),
        sa.Column("done_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint("amount IS NULL OR amount >= 0", name=op.f("ck_balance_settlements_amount_not_negative")),
        sa.ForeignKeyConstraint(["from_card_id"], ["cards.id"], name=op.f("fk_balance_settlements_from_card_id_cards")),
        sa.ForeignKeyConstraint(["to_card_id"], ["cards.id"], name=op.f("fk_balance_settlements_to_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_settlements")),
        sa.UniqueConstraint("from_card_id", name=op.f("uq_balance_settlements_from_card_id")),
    )
    op.create_index(op.f("ix_balance_settlements_to_card_id"), "balance_settlements", ["to_card_id"])

    op.create_table(
        "card_events",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("card_id", BIGINT, nullable=False),
        sa.Column("from_state", _enum("from_state", *CARD_STATES), nullable=True),
        sa.Column("to_state", _enum("to_state", *CARD_STATES), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.Column("actor_role", sa.String(length=20), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_card_events_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_events")),
    )
    op.create_index(op.f("ix_card_events_card_id"), "card_events", ["card_id"])

    op.create_table(
        "loads",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("card_id", BIGINT, nullable=False),
        sa.Column("card_no", sa.String(length=16), nullable=False),
        sa.Column("card_type", sa.String(length=2), nullable=False),
        sa.Column("term_id", sa.String(length=12), nullable=False),
        sa.Column("term_seq", BIGINT, nullable=False),
        sa.Column("online_seq", BIGINT, nullable=False),
        sa.Column("old_balance", BIGINT, nullable=False),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("txn_date", sa.String(length=8), nullable=False),
        sa.Column("txn_time", sa.String(length=6), nullable=False),
        sa.Column("alg", sa.String(length=2), nullable=False),
        sa.Column("key_ver", sa.String(length=2), nullable=False),
        sa.Column("tac", sa.String(length=8), nullable=False),
        sa.Column(
            "status",
            _enum("load_status", "authorized", "ok", "proof", "unconfirmed", "void", "rejected"),
            nullable=False,
        ),
        sa.Column("device_seq", BIGINT, nullable=True),
        sa.Column("funding_account", sa.String(length=40), nullable=False),
        sa.Column("staff_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("authorized_at", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_loads_amount_positive")),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_loads_card_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loads")),
        sa.UniqueConstraint("request_id", name=op.f("uq_loads_request_id")),
        sa.UniqueConstraint("term_id", "device_seq", name=op.f("uq_loads_term_id_device_seq")),
        sa.UniqueConstraint("term_id", "term_seq", name=op.f("uq_loads_term_id_term_seq")),
    )
    op.create_index("ix_loads_card_id_online_seq", "loads", ["card_id", "online_seq"])


def downgrade() -> None:
    for table in (
        "loads",
        "card_events",
        "balance_settlements",
        "social_security_records",
        "cards",
        "residents",
        "purse_movements",
        "psams",
        "issuance_counters",
        "hotlist_entries",
        "audit_log",
    ):
        op.drop_table(table)
