"""Session-level record keeping shared by the services: counters, the audit log, card transitions, the hotlist
and purse money movements. Nothing here commits: the calling service does, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backoffice.errors import NotFound
from issuance.access import Staff
from issuance.lifecycle import CardState, check_transition
from issuance.models import AuditEntry, Card, CardEvent, HotlistEntry, IssuanceCounter, PurseMovement

Clock = Callable[[], datetime]

COUNTER_CASH = "counter_cash"
"""Cash taken (loads) or paid out (refunds) at the counter."""
CLEARED_PURCHASES = "cleared_purchases"
"""Purchases clearing has settled (owed to the operators)."""
HOTLIST_VERSION = "hotlist_version"


def local_now() -> datetime:
    """The current local time with its offset: the cards' date4 / time3 and start dates are local (spec §0);
    the database stores it in UTC."""
    return datetime.now().astimezone()


def card_account(card_no: str) -> str:
    """The account of a card's purse."""
    return f"card:{card_no}"


def settlement_account(settlement_id: int) -> str:
    """The account of a balance settlement."""
    return f"settlement:{settlement_id}"


def next_counter_value(session: Session, name: str) -> int:
    """Increment the named counter and return its new value (the first is 1).

    One ``UPDATE … RETURNING`` (an upsert creates the counter), so concurrent callers never get the same value.
    """
    bump = (
        update(IssuanceCounter)
        .where(IssuanceCounter.name == name)
        .values(value=IssuanceCounter.value + 1)
        .returning(IssuanceCounter.value)
    )
    value = session.execute(bump).scalar_one_or_none()
    if value is not None:
        return int(value)
    dialect = session.get_bind().dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert_fn(IssuanceCounter).values(name=name, value=0).on_conflict_do_nothing())
    return int(session.execute(bump).scalar_one())


def audit(
    session: Session,
    staff: Staff,
    action: str,
    object_type: str,
    object_id: str | int,
    at: datetime,
    **detail: Any,
) -> None:
    """Add an audit-log entry. ``detail`` must never hold an unmasked personal number, a PIN or a key."""
    session.add(
        AuditEntry(
            at=at,
            actor_id=staff.staff_id,
            actor_role=str(staff.role),
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )


def transition(session: Session, card: Card, target: CardState, staff: Staff, at: datetime, reason: str = "") -> None:
    """Move ``card`` to ``target`` if its life cycle allows it; record the event and audit it."""
    current = card.state
    check_transition(current, target)
    card.state = target
    session.add(
        CardEvent(
            card_id=card.id,
            from_state=current,
            to_state=target,
            actor_id=staff.staff_id,
            actor_role=str(staff.role),
            at=at,
            reason=reason,
        )
    )
    audit(session, staff, "card.state", "card", card.card_no, at, from_state=str(current), to_state=str(target))


def hotlist(session: Session, card: Card, reason: str, at: datetime) -> HotlistEntry:
    """Put ``card`` on the hotlist now (once: a hotlisted card keeps its first entry and time)."""
    existing = session.scalars(
        select(HotlistEntry).where(HotlistEntry.card_no == card.card_no).order_by(HotlistEntry.version).limit(1)
    ).first()
    if existing is not None:
        return existing
    entry = HotlistEntry(
        version=next_counter_value(session, HOTLIST_VERSION), card_no=card.card_no, reason=reason, listed_at=at
    )
    session.add(entry)
    card.hotlisted_at = at
    return entry


def move_money(
    session: Session,
    *,
    kind: str,
    from_account: str,
    to_account: str,
    amount: int,
    reference: str,
    at: datetime,
    actor_id: str,
) -> None:
    """Record one movement of purse money (nothing for 0 fen). Amounts are integer fen."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError("an amount of money is a non-negative integer number of fen")
    if amount == 0:
        return
    session.add(
        PurseMovement(
            kind=kind,
            from_account=from_account,
            to_account=to_account,
            amount=amount,
            reference=reference,
            at=at,
            actor_id=actor_id,
        )
    )


def account_balance(session: Session, account: str) -> int:
    """What has moved into ``account`` minus what has moved out of it."""
    inflow = session.scalar(
        select(func.coalesce(func.sum(PurseMovement.amount), 0)).where(PurseMovement.to_account == account)
    )
    outflow = session.scalar(
        select(func.coalesce(func.sum(PurseMovement.amount), 0)).where(PurseMovement.from_account == account)
    )
    return int(inflow or 0) - int(outflow or 0)


def card_by_no(session: Session, card_no: str, *, lock: bool = True) -> Card:
    """The card with ``card_no`` (row-locked for the transaction by default); :class:`NotFound` otherwise."""
    query = select(Card).where(Card.card_no == card_no)
    if lock:
        query = query.with_for_update()
    card = session.scalars(query).one_or_none()
    if card is None:
        raise NotFound("no such card", card_no=card_no)
    return card
