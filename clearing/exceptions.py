"""Exceptions workflow (issue #6): rejected, suspicious, conflicting and pending records are resolved by one person
(the maker proposes) and approved by another (the checker); every step is in ``clearing_audit``.

What an approved action does, in the current clearing day (the first open day after the last closed one):

| record is | accept | reject | adjust (amount) |
|---|---|---|---|
| rejected, pending, conflict (purchase) | settled like a cleared purchase | rejected on review | settled for amount |
| suspicious (posted against the float) | acknowledged | reversed: claim and shadow go back | — |
| suspicious (posted to suspense) | written off (suspense → write-offs) | reversed: out of suspense | — |
| loads (money moves in issuance) | acknowledged | rejected on review | — |

Settling and reversing post into the operator's clearing account; the next run of that day settles it with the
day's fee. The database enforces the four eyes (``decided_by <> proposed_by``), one open proposal per record,
and that a record settles at most once and is reversed at most once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, Forbidden, InvalidInput, NotFound
from clearing import bulk, ledger
from clearing.clear import VERDICT_COLUMNS, db_timestamp, lock_cards_and_find_final
from clearing.rules import (
    FLOAT,
    PURCHASE_TYPES,
    SUSPENSE,
    WRITE_OFFS,
    Code,
    Klass,
    clearing_account,
    entry,
)
from clearing.tables import ClearingAudit, ExceptionAction

EXCEPTION_CLASSES = ("rejected", "suspicious", "conflict", "pending")
REVIEWED_CODES = (str(Code.ACKNOWLEDGED), str(Code.REJECTED_ON_REVIEW), str(Code.REVERSED))


@dataclass(frozen=True, slots=True)
class ExceptionItem:
    """An exception waiting for a decision: the record and its current class."""

    record_id: int
    clearing_day: date
    klass: str
    code: str
    operator_id: str
    card_no: str
    card_seq: int
    term_id: str
    term_seq: int
    txn_type: str
    amount: int
    txn_date: str
    txn_time: str
    posting: str | None


@dataclass(frozen=True, slots=True)
class ActionView:
    """A proposed, approved or refused resolution."""

    action_id: int
    record_id: int
    action: str
    amount: int | None
    note: str
    status: str
    proposed_by: str
    decided_by: str | None
    applied_day: date | None


def _view(action: ExceptionAction) -> ActionView:
    return ActionView(
        action.id,
        action.record_id,
        action.action,
        action.amount,
        action.note,
        action.status,
        action.proposed_by,
        action.decided_by,
        action.applied_day,
    )


def _audit(
    session: Session, actor: str, what: str, object_type: str, object_id: Any, at: datetime, **detail: Any
) -> None:
    session.add(
        ClearingAudit(
            at=at,
            actor_id=actor,
            action=what,
            object_type=object_type,
            object_id=str(object_id),
            detail=json.dumps(detail, sort_keys=True, default=str),
        )
    )


_ITEM_SQL = (
    "SELECT r.id, v.clearing_day, v.class, v.code, v.operator_id, r.card_no, r.card_seq, r.term_id, r.term_seq, "
    "r.txn_type, r.amount, r.txn_date, r.txn_time, "
    "(SELECT p.posting FROM clearing_verdict p WHERE p.record_id = r.id AND p.posting IS NOT NULL "
    "ORDER BY p.verdict_no DESC LIMIT 1) "
    "FROM clearing_verdict v JOIN clearing_record r ON r.id = v.record_id "
    "WHERE NOT EXISTS (SELECT 1 FROM clearing_verdict w WHERE w.record_id = v.record_id "
    "AND w.verdict_no > v.verdict_no)"
)


def _item(row: tuple[Any, ...]) -> ExceptionItem:
    day = row[1] if isinstance(row[1], date) else date.fromisoformat(str(row[1]))
    return ExceptionItem(
        int(row[0]), day, str(row[2]), str(row[3]), str(row[4]), str(row[5]), int(row[6]), str(row[7]), int(row[8]),
        str(row[9]), int(row[10]), str(row[11]), str(row[12]), row[13],
    )  # fmt: skip


def open_exceptions(session: Session, day: date | None = None) -> list[ExceptionItem]:
    """Records whose current class is an exception not yet reviewed (optionally: decided on ``day``)."""
    sql = _ITEM_SQL + " AND v.class IN ('rejected', 'suspicious', 'conflict', 'pending') AND v.code NOT IN "
    sql += "(" + ", ".join(f"'{code}'" for code in REVIEWED_CODES) + ")"
    params: dict[str, Any] = {}
    if day is not None:
        sql += " AND v.clearing_day = :day"
        params["day"] = day
    return [_item(row) for row in bulk.fetch_rows(session, sql + " ORDER BY r.id", params)]


def _current(session: Session, record_id: int) -> tuple[ExceptionItem, int]:
    rows = bulk.fetch_rows(session, _ITEM_SQL + " AND r.id = :id", {"id": record_id})
    if not rows:
        raise NotFound(f"record {record_id} has no class yet")
    verdict_no = session.execute(
        text("SELECT max(verdict_no) FROM clearing_verdict WHERE record_id = :id"), {"id": record_id}
    ).scalar_one()
    return _item(rows[0]), int(verdict_no)


def _check_allowed(item: ExceptionItem, action: str, amount: int | None) -> None:
    if item.klass not in EXCEPTION_CLASSES or item.code in REVIEWED_CODES:
        raise Conflict(f"record {item.record_id} is {item.klass} ({item.code}): nothing to resolve")
    if action not in ("accept", "reject", "adjust"):
        raise InvalidInput("the action is accept, reject or adjust")
    purchase = item.txn_type in PURCHASE_TYPES
    if action == "adjust":
        if not purchase or item.klass == "suspicious":
            raise InvalidInput("only a purchase that was not settled can be settled for another amount")
        if amount is None or isinstance(amount, bool) or not 0 < amount <= item.amount:
            raise InvalidInput(f"an adjusted amount is from 1 to the record's {item.amount} fen")
    elif amount is not None:
        raise InvalidInput("only adjust takes an amount")


def propose(
    uow: UnitOfWork,
    *,
    record_id: int,
    action: str,
    note: str,
    maker: str,
    amount: int | None = None,
    now: datetime | None = None,
) -> ActionView:
    """The maker proposes how an exception is resolved; commits. One open proposal per record."""
    at = now or datetime.now(UTC)
    if not maker or not note.strip():
        raise InvalidInput("a proposal names its maker and says why")
    session = uow.session
    item, _ = _current(session, record_id)
    _check_allowed(item, action, amount)
    proposal = ExceptionAction(
        record_id=record_id, action=action, amount=amount, note=note.strip()[:500], status="proposed",
        proposed_by=maker, proposed_at=at,
    )  # fmt: skip
    session.add(proposal)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"record {record_id} already has an open proposal") from None
    _audit(session, maker, "exception.propose", "record", record_id, at, action=action, amount=amount, note=note)
    uow.commit()
    return _view(proposal)


def current_day(session: Session, today: date) -> date:
    """The clearing day an approval takes effect in: the first open day after the last closed one."""
    last_closed = session.execute(text("SELECT max(day) FROM clearing_day WHERE status = 'closed'")).scalar_one()
    closed = None if last_closed is None else _as_date(last_closed)
    query = "SELECT min(day) FROM clearing_day WHERE status = 'open'"
    params: dict[str, Any] = {}
    if closed is not None:
        query += " AND day > :closed"
        params["closed"] = closed
    first_open = session.execute(text(query), params).scalar_one()
    if first_open is not None:
        return _as_date(first_open)
    return closed + timedelta(days=1) if closed is not None else today


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _decide(uow: UnitOfWork, action_id: int, checker: str) -> ExceptionAction:
    proposal = uow.session.scalars(
        select(ExceptionAction).where(ExceptionAction.id == action_id).with_for_update()
    ).one_or_none()
    if proposal is None:
        raise NotFound(f"no proposal {action_id}")
    if proposal.status != "proposed":
        raise Conflict(f"proposal {action_id} is {proposal.status}")
    if not checker or checker == proposal.proposed_by:
        raise Forbidden("the checker must be another person than the maker")
    return proposal


def refuse(uow: UnitOfWork, *, action_id: int, checker: str, now: datetime | None = None) -> ActionView:
    """The checker refuses a proposal: nothing changes but the proposal; commits."""
    at = now or datetime.now(UTC)
    proposal = _decide(uow, action_id, checker)
    proposal.status, proposal.decided_by, proposal.decided_at = "refused", checker, at
    _audit(uow.session, checker, "exception.refuse", "exception_action", action_id, at, record_id=proposal.record_id)
    uow.commit()
    return _view(proposal)


def approve(uow: UnitOfWork, *, action_id: int, checker: str, now: datetime | None = None) -> ActionView:
    """The checker approves a proposal; it takes effect in the current clearing day (see the module's table)."""
    at = now or datetime.now(UTC)
    session = uow.session
    proposal = _decide(uow, action_id, checker)
    item, verdict_no = _current(session, proposal.record_id)
    _check_allowed(item, proposal.action, proposal.amount)
    day = current_day(session, at.date())
    session.execute(
        text("INSERT INTO clearing_day (day, status, runs) VALUES (:day, 'open', 0) ON CONFLICT DO NOTHING"),
        {"day": day},
    )
    ledger.ensure_accounts(session, [item.operator_id])
    ref = f"{day.isoformat()}/review/{item.operator_id}/a{action_id}"
    verdict, written_off = _apply(session, item, proposal, ref, day)
    posted_ref = ref if ledger.entry_exists(session, ref) else None
    bulk.insert_rows(
        session,
        "clearing_verdict",
        VERDICT_COLUMNS,
        [(item.record_id, verdict_no + 1, day, None, item.operator_id, *verdict, posted_ref, action_id)],
    )
    if written_off is not None:
        proposal.amount = written_off
    proposal.status, proposal.decided_by, proposal.decided_at, proposal.applied_day = "approved", checker, at, day
    _audit(
        session, checker, "exception.approve", "exception_action", action_id, at,
        record_id=item.record_id, action=proposal.action, day=day.isoformat(), outcome=verdict[0], code=verdict[1],
    )  # fmt: skip
    uow.commit()
    return _view(proposal)


Verdict = tuple[str, str, bool, str | None, str | None, int]
"""class, code, late, posting, posted_from, amount."""


def _apply(
    session: Session, item: ExceptionItem, proposal: ExceptionAction, ref: str, day: date
) -> tuple[Verdict, int | None]:
    """Post what the approved action means; the verdict to record and the amount written off (if any)."""
    late = date(int(item.txn_date[:4]), int(item.txn_date[4:6]), int(item.txn_date[6:])) < day
    purchase = item.txn_type in PURCHASE_TYPES
    memo = f"review of record {item.record_id} ({proposal.action})"
    if proposal.action in ("accept", "adjust") and item.klass != "suspicious":
        if not purchase:
            return (str(Klass.SUSPICIOUS), str(Code.ACKNOWLEDGED), late, None, None, 0), None
        amount = proposal.amount if proposal.action == "adjust" and proposal.amount is not None else item.amount
        final = lock_cards_and_find_final(session, [item.card_no])
        account = SUSPENSE if item.card_no in final else FLOAT
        posted = entry(
            ref, day, "review", item.operator_id, memo, {account: amount, clearing_account(item.operator_id): -amount}
        )
        if posted is not None:
            ledger.post(session, posted)
        if account == FLOAT:
            _move_shadow(session, item, -amount, ref)
        code = Code.ADJUSTED if proposal.action == "adjust" else Code.ACCEPTED
        return (str(Klass.SETTLED), str(code), late, account, None, amount), None
    if proposal.action == "accept":  # a suspicious record: acknowledged; out of suspense if it went there
        if item.posting == SUSPENSE:
            posted = entry(
                ref, day, "review", item.operator_id, memo, {WRITE_OFFS: item.amount, SUSPENSE: -item.amount}
            )
            if posted is not None:
                ledger.post(session, posted)
            return (str(Klass.SUSPICIOUS), str(Code.ACKNOWLEDGED), late, None, None, 0), item.amount
        return (str(Klass.SUSPICIOUS), str(Code.ACKNOWLEDGED), late, None, None, 0), None
    if item.klass == "suspicious" and item.posting in (FLOAT, SUSPENSE):  # reject: reverse the settlement
        source = item.posting
        if source == FLOAT:
            if item.card_no in lock_cards_and_find_final(session, [item.card_no]):
                raise Conflict("the card's balance is settled: acknowledge (write off) instead of reversing")
            _move_shadow(session, item, item.amount, ref)
        posted = entry(
            ref, day, "review", item.operator_id, memo,
            {clearing_account(item.operator_id): item.amount, source: -item.amount},
        )  # fmt: skip
        if posted is not None:
            ledger.post(session, posted)
        return (str(Klass.REJECTED), str(Code.REVERSED), late, "reverse", source, -item.amount), None
    return (str(Klass.REJECTED), str(Code.REJECTED_ON_REVIEW), late, None, None, 0), None


def _move_shadow(session: Session, item: ExceptionItem, change: int, reference: str) -> None:
    """Move one card's shadow by ``change`` fen (negative: a purchase settled) with issuance's purse movement."""
    session.execute(
        text(
            "UPDATE cards SET shadow_balance = shadow_balance + :change, row_version = row_version + 1 "
            + ("" if change > 0 else ", shadow_offline_seq = CASE WHEN shadow_offline_seq > :next THEN "
               "shadow_offline_seq ELSE :next END ")
            + "WHERE card_no = :card"
        ),
        {"change": change, "card": item.card_no, "next": item.card_seq + 1},
    )  # fmt: skip
    source, target = ("cleared_purchases", f"card:{item.card_no}")
    if change < 0:
        source, target = target, source
    session.execute(
        text(
            "INSERT INTO purse_movements (kind, from_account, to_account, amount, reference, at, actor_id) "
            "VALUES (:kind, :source, :target, :amount, :reference, :at, 'clearing')"
        ),
        {
            "kind": "purchase" if change < 0 else "reversal",
            "source": source,
            "target": target,
            "amount": abs(change),
            "reference": f"clearing:{reference}"[:80],
            "at": db_timestamp(session, datetime.now(UTC)),
        },
    )
