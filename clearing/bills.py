"""Utility bills paid at kiosks (docs/device-api.md, "Bills"): create, look up, hold, pay, release.

A kiosk holds an open bill for :data:`HOLD_SECONDS` before it charges the card, then reports the purchase record;
the bill is paid exactly once, in full. A hold whose time has passed counts as no hold. Only kiosks use bills; a
kiosk of a utility company sees that company's bills only, any other kiosk (the issuer's) sees every utility's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, Forbidden, InvalidInput, NotFound
from cardos.batch import BatchRecord, RecordStatus
from clearing.models import UTILITIES, Bill, Operator
from clearing.registry import DeviceIdentity

HOLD_SECONDS = 120
BILL_NO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
PURCHASE_TXN_TYPES = ("06", "09")


class AmountMismatch(InvalidInput):
    """The amount is not the amount due: partial (or over-) payment is refused (422)."""

    code = "amount_mismatch"


@dataclass(frozen=True, slots=True)
class BillView:
    """A bill as a kiosk sees it; ``status`` is ``held`` only while a hold runs."""

    bill_no: str
    utility: str
    account: str
    period: str
    amount_due: int
    status: str
    held_until: datetime | None


@dataclass(frozen=True, slots=True)
class PaymentView:
    """A paid bill."""

    bill_no: str
    status: str
    amount_paid: int
    paid_at: datetime


def _view(bill: Bill, now: datetime) -> BillView:
    held = _hold_runs(bill, now)
    return BillView(
        bill_no=bill.bill_no,
        utility=bill.utility,
        account=bill.account,
        period=bill.period,
        amount_due=bill.amount_due,
        status="held" if held else ("paid" if bill.status == "paid" else "open"),
        held_until=bill.held_until if held else None,
    )


def _hold_runs(bill: Bill, now: datetime) -> bool:
    return bill.status == "held" and bill.held_until is not None and bill.held_until > now


def _held_by_another(bill: Bill, device: DeviceIdentity, now: datetime) -> bool:
    return _hold_runs(bill, now) and bill.held_by_device_id != device.device_id


def _require_kiosk(device: DeviceIdentity) -> None:
    if device.kind != "kiosk":
        raise Forbidden("only kiosks use bills")


def _may_see(device: DeviceIdentity, operator_id: str) -> bool:
    return device.operator_kind != "utility" or device.operator_id == operator_id


def _bill_for(session: Session, device: DeviceIdentity, bill_no: str) -> Bill:
    """The bill, locked for the rest of the transaction; :class:`NotFound` when missing or not the kiosk's."""
    _require_kiosk(device)
    bill = session.scalars(select(Bill).where(Bill.bill_no == bill_no).with_for_update()).one_or_none()
    if bill is None or not _may_see(device, bill.operator_id):
        raise NotFound(f"no bill {bill_no}")
    return bill


def create_bill(
    uow: UnitOfWork,
    *,
    bill_no: str,
    utility: str,
    operator_id: str,
    account: str,
    period: str,
    amount_due: int,
    now: datetime | None = None,
) -> BillView:
    """Create an open bill of utility company ``operator_id`` (an operator of kind ``utility``); commits."""
    at = now or datetime.now(UTC)
    if not BILL_NO.fullmatch(bill_no):
        raise InvalidInput("a bill_no is 1 to 32 letters, digits, '_' or '-'")
    if utility not in UTILITIES:
        raise InvalidInput(f"utility must be one of {', '.join(UTILITIES)}")
    if not ACCOUNT.fullmatch(account):
        raise InvalidInput("an account is 1 to 32 letters, digits, '_' or '-'")
    if not PERIOD.fullmatch(period):
        raise InvalidInput("a period is YYYY-MM")
    if isinstance(amount_due, bool) or not isinstance(amount_due, int) or amount_due <= 0:
        raise InvalidInput("amount_due is a positive number of fen")
    session = uow.session
    operator = session.get(Operator, operator_id)
    if operator is None or operator.kind != "utility":
        raise InvalidInput(f"{operator_id} is not a utility company")
    if session.get(Bill, bill_no) is not None:
        raise Conflict(f"bill {bill_no} exists")
    bill = Bill(
        bill_no=bill_no,
        utility=utility,
        operator_id=operator_id,
        account=account,
        period=period,
        amount_due=amount_due,
        status="open",
        created_at=at,
    )
    session.add(bill)
    uow.commit()
    return _view(bill, at)


def _commit(uow: UnitOfWork, bill_no: str) -> None:
    """Commit; a concurrent change of the same bill (optimistic lock) is a :class:`Conflict`."""
    try:
        uow.commit()
    except StaleDataError:
        raise Conflict(f"bill {bill_no} changed meanwhile; look it up again") from None


def open_bills(
    session: Session, device: DeviceIdentity, utility: str, account: str, now: datetime | None = None
) -> list[BillView]:
    """The unpaid bills of ``account`` at ``utility`` that the kiosk may see, oldest period first."""
    _require_kiosk(device)
    at = now or datetime.now(UTC)
    if utility not in UTILITIES:
        raise InvalidInput(f"utility must be one of {', '.join(UTILITIES)}")
    if not ACCOUNT.fullmatch(account):
        raise InvalidInput("an account is 1 to 32 letters, digits, '_' or '-'")
    query = select(Bill).where(Bill.utility == utility, Bill.account == account, Bill.status != "paid")
    if device.operator_kind == "utility":
        query = query.where(Bill.operator_id == device.operator_id)
    bills = session.scalars(query.order_by(Bill.period, Bill.bill_no)).all()
    return [_view(bill, at) for bill in bills]


def hold_bill(
    uow: UnitOfWork, device: DeviceIdentity, bill_no: str, amount: int, now: datetime | None = None
) -> BillView:
    """Reserve an open bill for this kiosk for :data:`HOLD_SECONDS` (again: extends its own hold); commits.

    :class:`Conflict` when paid or held by another kiosk; :class:`AmountMismatch` unless ``amount`` is the
    amount due.
    """
    at = now or datetime.now(UTC)
    bill = _bill_for(uow.session, device, bill_no)
    if bill.status == "paid":
        raise Conflict(f"bill {bill_no} is paid")
    if _held_by_another(bill, device, at):
        raise Conflict(f"bill {bill_no} is held by another device")
    if amount != bill.amount_due:
        raise AmountMismatch(f"the amount must be the amount due ({bill.amount_due} fen)", amount_due=bill.amount_due)
    bill.status = "held"
    bill.held_by_device_id = device.device_id
    bill.held_until = at + timedelta(seconds=HOLD_SECONDS)
    _commit(uow, bill_no)
    return _view(bill, at)


def release_hold(uow: UnitOfWork, device: DeviceIdentity, bill_no: str, now: datetime | None = None) -> BillView:
    """Release this kiosk's hold (the card refused); releasing a bill nobody holds changes nothing. Commits.

    :class:`Conflict` when paid or held by another kiosk.
    """
    at = now or datetime.now(UTC)
    bill = _bill_for(uow.session, device, bill_no)
    if bill.status == "paid":
        raise Conflict(f"bill {bill_no} is paid")
    if _held_by_another(bill, device, at):
        raise Conflict(f"bill {bill_no} is held by another device")
    bill.status = "open"
    bill.held_by_device_id = None
    bill.held_until = None
    _commit(uow, bill_no)
    return _view(bill, at)


def pay_bill(
    uow: UnitOfWork, device: DeviceIdentity, bill_no: str, record: BatchRecord, now: datetime | None = None
) -> PaymentView:
    """Mark the bill paid by ``record``, the kiosk's purchase record (``ref`` = bill_no); commits.

    Exactly once: the same record again answers the same; another record is a :class:`Conflict`. The record must
    be a completed purchase (``ok`` or ``proof``) taken by this kiosk's terminal for exactly the amount due. A bill
    held by another kiosk is a :class:`Conflict`; a bill not held (or whose hold ran out) may be paid.
    """
    at = now or datetime.now(UTC)
    session = uow.session
    bill = _bill_for(session, device, bill_no)
    document = record.to_json()
    if bill.status == "paid":
        same = bill.payment_record == document and bill.paid_by_device_id == device.device_id
        if same and bill.paid_at is not None and bill.amount_paid is not None:
            return PaymentView(bill.bill_no, "paid", bill.amount_paid, bill.paid_at)
        raise Conflict(f"bill {bill_no} is paid by another record")
    if record.ref != bill_no:
        raise InvalidInput("the record's ref must be the bill_no")
    if record.txn_type not in PURCHASE_TXN_TYPES:
        raise InvalidInput("a bill is paid by a purchase (txn_type 06 or 09)")
    if record.status is RecordStatus.UNCONFIRMED:
        raise InvalidInput("an unconfirmed purchase cannot pay a bill: complete it with its proof first")
    if record.term_id != device.term_id:
        raise InvalidInput("the record was not taken by this kiosk's terminal")
    if record.amount != bill.amount_due:
        raise AmountMismatch(f"the amount must be the amount due ({bill.amount_due} fen)", amount_due=bill.amount_due)
    if _held_by_another(bill, device, at):
        raise Conflict(f"bill {bill_no} is held by another device")
    other = session.scalars(
        select(Bill.bill_no).where(Bill.payment_term_id == record.term_id, Bill.payment_term_seq == record.term_seq)
    ).first()
    if other is not None:
        raise Conflict("this record paid another bill")
    bill.status = "paid"
    bill.held_by_device_id = None
    bill.held_until = None
    bill.paid_at = at
    bill.paid_by_device_id = device.device_id
    bill.amount_paid = record.amount
    bill.payment_term_id = record.term_id
    bill.payment_term_seq = record.term_seq
    bill.payment_card_no = record.card_no
    bill.payment_card_seq = record.card_seq
    bill.payment_record = document
    _commit(uow, bill_no)
    return PaymentView(bill.bill_no, "paid", record.amount, at)
