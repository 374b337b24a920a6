"""API: staff accounts, sessions, counter desks, idempotency records.

Revision ID: api_0001
Revises:
Create Date: 2025-03-01

The first revision of the ``api`` branch (independent of the other packages' branches); the tables of
``api/models.py``. Written for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "api_0001"
down_revision = None
branch_labels = ("api",)
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the API tables."""
    op.create_table(
        "api_staff",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("roles", sa.String(length=100), nullable=False),
        sa.Column("desk_id", sa.String(length=32), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("password_changed_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_staff")),
        sa.UniqueConstraint("username", name=op.f("uq_api_staff_username")),
    )
    op.create_table(
        "api_sessions",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("staff_id", BIGINT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["api_staff.id"], name=op.f("fk_api_sessions_staff_id_api_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_sessions_token_hash")),
    )
    op.create_index(op.f("ix_api_sessions_staff_id"), "api_sessions", ["staff_id"])
    op.create_table(
        "api_desks",
        sa.Column("desk_id", sa.String(length=32), nullable=False),
        sa.Column("reader", sa.String(length=200), nullable=False),
        sa.Column("term_id", sa.String(length=12), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("desk_id", name=op.f("pk_api_desks")),
        sa.UniqueConstraint("term_id", name=op.f("uq_api_desks_term_id")),
    )
    op.create_table(
        "api_idempotency",
        sa.Column("id", BIGINT, nullable=False),
        sa.Column("staff_id", BIGINT, nullable=False),
        sa.Column("idem_key", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=False),
        sa.Column("claimed_at", TIMESTAMP, nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("state IN ('pending', 'done')", name=op.f("ck_api_idempotency_state")),
        sa.ForeignKeyConstraint(["staff_id"], ["api_staff.id"], name=op.f("fk_api_idempotency_staff_id_api_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_idempotency")),
        sa.UniqueConstraint("staff_id", "idem_key", name=op.f("uq_api_idempotency_staff_id_idem_key")),
    )


def downgrade() -> None:
    """Drop the API tables."""
    for table in ("api_idempotency", "api_desks", "api_sessions", "api_staff"):
        op.drop_table(table)
