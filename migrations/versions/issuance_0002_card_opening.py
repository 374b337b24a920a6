"""Issuance: a card's opening state, for cards taken over from an earlier system; the authorized loads found fast.

Revision ID: issuance_0002
Revises: issuance_0001
Create Date: 2026-11-22

``cards.opening_balance``, ``opening_online_seq``, ``opening_offline_seq``: the purse as this back office first knew
it. Clearing starts a card's chain there when it holds no earlier record of the card (0, 0, 0 for cards issued
here: a new card starts empty with both counters at 0).

``ix_loads_authorized``: the loads still ``authorized`` (MAC2 sent, outcome not known) of a card, which every new
load of the card checks first; the card's other loads no longer have to be read for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "issuance_0002"
down_revision = "issuance_0001"
branch_labels = None
depends_on = None

COLUMNS = ("opening_balance", "opening_online_seq", "opening_offline_seq")
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the three columns, 0 for every existing card."""
    for name in COLUMNS:
        op.add_column("cards", sa.Column(name, BIGINT, nullable=False, server_default=sa.text("0")))
    authorized = sa.text("status = 'authorized'")
    op.create_index("ix_loads_authorized", "loads", ["card_id"], postgresql_where=authorized, sqlite_where=authorized)


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_loads_authorized", table_name="loads")
    for name in COLUMNS:
        op.drop_column("cards", name)
