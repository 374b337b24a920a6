"""The API's own tables (branch ``api`` of the migrations): staff accounts, their sessions, the counter desks and
the idempotency records of money-moving requests.

Typed SQLAlchemy 2 mappings on :class:`backoffice.db.Base`; ``migrations/versions/api_0001_staff.py`` makes the
same schema. Times are stored in UTC and come back timezone-aware.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.db import Base
from issuance.models import UtcDateTime


class StaffAccount(Base):
    """A member of staff who logs in: an argon2id password hash, roles, and the desk they work at (if any)."""

    __tablename__ = "api_staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[str] = mapped_column(String(100))
    """Comma-separated, sorted :class:`api.staff_auth.ApiRole` values."""
    desk_id: Mapped[str | None] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class StaffSession(Base):
    """A log-in: the SHA-256 of an opaque bearer token (the token itself is never stored)."""

    __tablename__ = "api_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("api_staff.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class CounterDesk(Base):
    """A service-counter desk: the PC/SC reader on it and the counter terminal id its loads are recorded under."""

    __tablename__ = "api_desks"

    desk_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    reader: Mapped[str] = mapped_column(String(200))
    term_id: Mapped[str] = mapped_column(String(12), unique=True)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class IdempotencyRecord(Base):
    """One ``Idempotency-Key`` of one member of staff: the request it was first used for and its response.

    ``pending`` while the first request runs (``claim_token`` names the claimant; a claim older than its lease
    may be taken over), ``done`` with the exact status and body bytes every retry is answered with.
    """

    __tablename__ = "api_idempotency"
    __table_args__ = (
        UniqueConstraint("staff_id", "idem_key"),
        CheckConstraint("state IN ('pending', 'done')", name="state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("api_staff.id"))
    idem_key: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(40))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    claim_token: Mapped[str] = mapped_column(String(32))
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
