"""Issuance tables (issue #5): residents, social-security records, cards and their history, the hotlist,
PSAMs, loads, balance settlements, purse money movements, the audit log and allocation counters.

Typed SQLAlchemy 2 mappings on :class:`backoffice.db.Base`; the schema is made by the ``issuance`` branch of
the Alembic migrations (``migrations/versions/issuance_*.py``), which must stay equal to these mappings.
Money is integer fen (BIGINT). Times are stored in UTC and come back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.db import Base
from issuance.lifecycle import (
    CardState,
    CardType,
    LoadStatus,
    SettlementKind,
    SettlementStatus,
    SocialSecurityStatus,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC (SQLite keeps no offset: values come back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: give a timezone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_type(enum: type[StrEnum], name: str) -> Enum:
    """A portable enumeration column: VARCHAR of the values with a named CHECK constraint."""
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=max(len(member.value) for member in enum),
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Resident(Base):
    """A resident: the ID number is sealed, found by its keyed hash, displayed masked."""

    __tablename__ = "residents"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60))
    id_number_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    id_number_lookup: Mapped[str] = mapped_column(String(64), unique=True)
    id_number_masked: Mapped[str] = mapped_column(String(18))
    phone: Mapped[str] = mapped_column(String(11))
    address: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SocialSecurityRecord(Base):
    """A social-security record; its number is the resident's ID number, sealed and hashed the same way."""

    __tablename__ = "social_security_records"
    __table_args__ = (CheckConstraint("schemes >= 0 AND schemes <= 31", name="schemes_flags"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    resident_id: Mapped[int | None] = mapped_column(ForeignKey("residents.id"), unique=True)
    ss_number_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    ss_number_lookup: Mapped[str] = mapped_column(String(64), unique=True)
    ss_number_masked: Mapped[str] = mapped_column(String(18))
    schemes: Mapped[int]
    agency_code: Mapped[str] = mapped_column(String(6))
    status: Mapped[SocialSecurityStatus] = mapped_column(enum_type(SocialSecurityStatus, "ss_status"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    linked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    linked_by: Mapped[str | None] = mapped_column(String(64))


class Card(Base):
    """A card: identity, life-cycle state, and the back office's shadow of its purse.

    The shadow (balance and both counters) is what loads and cleared purchases have told the back office;
    ``shadow_online_seq`` / ``shadow_offline_seq`` are the next counter values the card would use.
    """

    __tablename__ = "cards"
    __table_args__ = (
        UniqueConstraint("city_code", "serial"),
        CheckConstraint("purse_limit >= 0", name="purse_limit_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    card_no: Mapped[str] = mapped_column(String(16), unique=True)
    city_code: Mapped[str] = mapped_column(String(4))
    serial: Mapped[int]
    card_type: Mapped[CardType] = mapped_column(enum_type(CardType, "card_type"))
    registered: Mapped[bool] = mapped_column(Boolean)
    resident_id: Mapped[int | None] = mapped_column(ForeignKey("residents.id"), index=True)
    state: Mapped[CardState] = mapped_column(enum_type(CardState, "card_state"))
    purse_limit: Mapped[int]
    alg: Mapped[int | None]
    key_version: Mapped[int | None]
    chip_serial: Mapped[str | None] = mapped_column(String(16), unique=True)
    social_application: Mapped[bool] = mapped_column(Boolean, default=False)
    start_date: Mapped[date | None] = mapped_column(Date)
    expiry_date: Mapped[date | None] = mapped_column(Date)
    shadow_balance: Mapped[int] = mapped_column(default=0)
    shadow_online_seq: Mapped[int] = mapped_column(default=0)
    shadow_offline_seq: Mapped[int] = mapped_column(default=0)
    shadow_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    opening_balance: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    """The purse as this back office first knew it (a card taken over from an earlier system): the balance before
    its first transaction clearing sees. 0 for cards issued here."""
    opening_online_seq: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    opening_offline_seq: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    """The counter values of the card's first load and first purchase clearing may see (spec §5 counter
    families); 0 for cards issued here."""
    hotlisted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    replaced_by_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    row_version: Mapped[int] = mapped_column(default=1)

    __mapper_args__: dict[str, Any] = {"version_id_col": row_version}  # noqa: RUF012


class CardEvent(Base):
    """One life-cycle change of a card: from, to, who and when."""

    __tablename__ = "card_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), index=True)
    from_state: Mapped[CardState | None] = mapped_column(enum_type(CardState, "from_state"))
    to_state: Mapped[CardState] = mapped_column(enum_type(CardState, "to_state"))
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(String(200), default="")


class HotlistEntry(Base):
    """A hotlisted card; ``version`` increases by one per entry (validators download full and delta lists)."""

    __tablename__ = "hotlist_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(unique=True)
    card_no: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(20))
    listed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Psam(Base):
    """A personalised PSAM and its term_id (spec §3)."""

    __tablename__ = "psams"

    id: Mapped[int] = mapped_column(primary_key=True)
    term_id: Mapped[str] = mapped_column(String(12), unique=True)
    chip_serial: Mapped[str] = mapped_column(String(16), unique=True)
    alg: Mapped[int]
    key_version: Mapped[int]
    personalised_at: Mapped[datetime] = mapped_column(UtcDateTime())
    personalised_by: Mapped[str] = mapped_column(String(64))


class Load(Base):
    """An online load, one row per client request id (spec §2.4, Load; §5 record fields).

    ``term_seq`` is the host's, per counter term_id; ``device_seq`` is given when the load becomes a record
    (``ok``, ``proof``, ``unconfirmed``, ``rejected``), contiguous per term_id.
    """

    __tablename__ = "loads"
    __table_args__ = (
        UniqueConstraint("term_id", "term_seq"),
        UniqueConstraint("term_id", "device_seq"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_loads_card_id_online_seq", "card_id", "online_seq"),
        Index(
            "ix_loads_authorized",
            "card_id",
            postgresql_where=text("status = 'authorized'"),
            sqlite_where=text("status = 'authorized'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"))
    card_no: Mapped[str] = mapped_column(String(16))
    card_type: Mapped[str] = mapped_column(String(2))
    term_id: Mapped[str] = mapped_column(String(12))
    term_seq: Mapped[int]
    online_seq: Mapped[int]
    old_balance: Mapped[int]
    amount: Mapped[int]
    txn_date: Mapped[str] = mapped_column(String(8))
    txn_time: Mapped[str] = mapped_column(String(6))
    alg: Mapped[str] = mapped_column(String(2))
    key_ver: Mapped[str] = mapped_column(String(2))
    tac: Mapped[str] = mapped_column(String(8), default="")
    status: Mapped[LoadStatus] = mapped_column(enum_type(LoadStatus, "load_status"))
    device_seq: Mapped[int | None]
    funding_account: Mapped[str] = mapped_column(String(40))
    staff_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    authorized_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class BalanceSettlement(Base):
    """A card's settled balance on its way out: to a replacement card or paid out. One per card, ever.

    ``pending`` until clearing has cleared the card's offline transactions up to ``cutoff_at`` (its hotlist
    or block time); then ``ready`` with the shadow balance moved into it; ``done`` once loaded onto the new
    card or paid out.
    """

    __tablename__ = "balance_settlements"
    __table_args__ = (CheckConstraint("amount IS NULL OR amount >= 0", name="amount_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[SettlementKind] = mapped_column(enum_type(SettlementKind, "settlement_kind"))
    from_card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), unique=True)
    to_card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"), index=True)
    cutoff_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[SettlementStatus] = mapped_column(enum_type(SettlementStatus, "settlement_status"))
    amount: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(64))
    ready_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    done_by: Mapped[str | None] = mapped_column(String(64))


class PurseMovement(Base):
    """One movement of purse money from one account to another (so every movement balances).

    Accounts: ``counter_cash`` (cash taken or paid at the counter), ``card:<card_no>`` (a card's purse as
    the back office knows it), ``settlement:<id>`` (a balance on its way out), ``cleared_purchases``.
    """

    __tablename__ = "purse_movements"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("from_account <> to_account", name="distinct_accounts"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    from_account: Mapped[str] = mapped_column(String(40), index=True)
    to_account: Mapped[str] = mapped_column(String(40), index=True)
    amount: Mapped[int]
    reference: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor_id: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    """Who did what, when, to which object: every state change and every unmasked read of personal data.

    ``detail`` is JSON and never holds an unmasked personal number, a PIN or key material.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor_id: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(30))
    object_id: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="{}")


class IssuanceCounter(Base):
    """Allocation counters: card serials per city, the hotlist version, host term_seq and device_seq."""

    __tablename__ = "issuance_counters"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int]
