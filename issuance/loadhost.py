"""The back office as the load host (spec §2.4, Load; §5 records): MAC1, MAC2, TAC, and each load exactly once.

:class:`BackOfficeLoadHost` implements :class:`terminal.purse.LoadHost`. Each of :meth:`~BackOfficeLoadHost.authorize`
and :meth:`~BackOfficeLoadHost.confirm` is one unit of work that commits before it answers, so an authorization
is on record before its MAC2 leaves the host.

MAC1 is verified before anything is changed, so a forged request cannot disturb genuine ones. Exactly once per
client request id (``loads.request_id`` is unique):

* ``authorize`` for a request id that already has an ``authorized`` load gives a new MAC2 only when the card's
  online counter has not moved since (the earlier MAC2 was never used: spec §2.4, GET TRANSACTION PROOF);
  if it has moved, the earlier attempt may have credited the card: it becomes ``unconfirmed`` and the
  request is refused. A request id whose load is ``ok``, ``proof``, ``unconfirmed``, ``void`` or ``rejected``
  is refused: nothing is loaded twice.
* ``confirm`` counts a load (shadow balance, counter, money movement) only on its first ``ok`` / ``proof``
  outcome with a TAC that verifies; an ``unconfirmed`` outcome is recorded and counted later only if a proof
  arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import Conflict
from cardos import crypto
from cardos.batch import BatchRecord, RecordStatus
from issuance.access import Staff
from issuance.bookkeeping import (
    COUNTER_CASH,
    Clock,
    audit,
    card_account,
    local_now,
    move_money,
    next_counter_value,
)
from issuance.keys import Keystore
from issuance.lifecycle import CardState, LoadStatus, SettlementStatus
from issuance.models import BalanceSettlement, Card, Load
from terminal.errors import HostRefused
from terminal.purse import LoadAuthorization, LoadRequest, bcd_now

UowFactory = Callable[[], UnitOfWork]
COUNTED = frozenset({LoadStatus.OK, LoadStatus.PROOF})
RECORDS = frozenset({LoadStatus.OK, LoadStatus.PROOF, LoadStatus.UNCONFIRMED, LoadStatus.VOID, LoadStatus.REJECTED})
"""Statuses of loads that are spec §5 records (they have a device_seq)."""


class LoadRefused(HostRefused, Conflict):
    """The host refuses a load (a terminal sees :class:`HostRefused`, the API a 409)."""

    code = "load_refused"


def host_term_seq_counter(term_id: str) -> str:
    """Counter name of the host's term_seq for a counter terminal."""
    return f"host_term_seq:{term_id}"


def device_seq_counter(term_id: str) -> str:
    """Counter name of the record numbers of a counter terminal."""
    return f"device_seq:{term_id}"


@dataclass(frozen=True)
class LoadFunding:
    """Where a load's money comes from: counter cash, or a settlement moving to its replacement card."""

    account: str = COUNTER_CASH
    settlement_id: int | None = None
    card_no: str | None = None
    """When set, only this card may receive the load."""


class BackOfficeLoadHost:
    """A :class:`terminal.purse.LoadHost` over the database and a :class:`~issuance.keys.Keystore`."""

    def __init__(
        self,
        new_uow: UowFactory,
        keys: Keystore,
        staff: Staff,
        *,
        clock: Clock = local_now,
        funding: LoadFunding = LoadFunding(),
    ) -> None:
        self._new_uow = new_uow
        self._keys = keys
        self._staff = staff
        self._clock = clock
        self._funding = funding

    # --- authorize -----------------------------------------------------------------------------------

    def authorize(self, request: LoadRequest) -> LoadAuthorization:
        """Check the card and the request, verify MAC1, record the authorization, answer MAC2 (spec §2.4)."""
        card_no = request.card_no.hex()
        term_id = request.term_id.hex()
        with self._new_uow() as uow:
            session = uow.session
            card = session.scalars(select(Card).where(Card.card_no == card_no).with_for_update()).one_or_none()
            self._check_card(card, card_no, request)
            assert card is not None
            now = self._clock()
            date4, time3 = bcd_now(now)
            try:  # first of all: is this a genuine card of ours asking? (nothing changes otherwise)
                mac2 = self._keys.verify_load_mac1_and_mac2(
                    request.alg,
                    request.key_version,
                    request.card_no,
                    rand=request.rand,
                    online_seq=request.online_seq,
                    old_balance=request.old_balance,
                    amount=request.amount,
                    term_id=request.term_id,
                    mac1=request.mac1,
                    date4=date4,
                    time3=time3,
                )
            except crypto.MacError:
                audit(session, self._staff, "load.mac1_refused", "card", card_no, now, request_id=request.request_id)
                uow.commit()
                raise LoadRefused("MAC1 does not verify: not a genuine card of this issuer", card_no=card_no) from None
            load = session.scalars(
                select(Load).where(Load.request_id == request.request_id).with_for_update()
            ).one_or_none()
            if load is not None:
                refusal = self._check_retry(session, load, card, request, term_id)
                if refusal is not None:
                    uow.commit()
                    raise refusal
            self._settle_stale_authorizations(session, card, request)
            term_seq = next_counter_value(session, host_term_seq_counter(term_id))
            if load is None:
                load = Load(
                    request_id=request.request_id, created_at=now, tac="", funding_account=self._funding.account
                )
                session.add(load)
            load.card_id = card.id
            load.card_no = card_no
            load.card_type = f"{card.card_type.code:02X}"
            load.term_id = term_id
            load.term_seq = term_seq
            load.online_seq = request.online_seq
            load.old_balance = request.old_balance
            load.amount = request.amount
            load.txn_date = date4.hex()
            load.txn_time = time3.hex()
            load.alg = f"{request.alg:02X}"
            load.key_ver = f"{request.key_version:02X}"
            load.status = LoadStatus.AUTHORIZED
            load.staff_id = self._staff.staff_id
            load.authorized_at = now
            audit(
                session,
                self._staff,
                "load.authorize",
                "load",
                request.request_id,
                now,
                card_no=card_no,
                amount=request.amount,
                online_seq=request.online_seq,
                term_id=term_id,
                term_seq=term_seq,
            )
            try:
                uow.commit()
            except IntegrityError:
                # Another authorization of the same request id committed first: this one gives no MAC2.
                raise LoadRefused("this request id is being loaded elsewhere", request_id=request.request_id) from None
        return LoadAuthorization(request.request_id, mac2, date4, time3, term_seq)

    def _check_card(self, card: Card | None, card_no: str, request: LoadRequest) -> None:
        if card is None:
            raise LoadRefused("this card is not one of ours", card_no=card_no)
        if self._funding.card_no is not None and card_no != self._funding.card_no:
            raise LoadRefused("this is not the card the balance moves to", card_no=card_no)
        if card.state is not CardState.ACTIVE:
            raise LoadRefused(f"the card is {card.state}: no loads", card_no=card_no)
        if card.alg != request.alg or card.key_version != request.key_version:
            raise LoadRefused("the card's keys are not those it was issued with", card_no=card_no)
        if request.amount <= 0:
            raise LoadRefused("a load is at least 1 fen", card_no=card_no)
        if request.old_balance + request.amount > card.purse_limit:
            raise LoadRefused("the load would take the balance above the purse limit", card_no=card_no)

    def _check_retry(
        self, session: Session, load: Load, card: Card, request: LoadRequest, term_id: str
    ) -> LoadRefused | None:
        """A second authorization for a request id: allowed only while the earlier MAC2 provably went unused.

        Returns the refusal to raise after committing (the earlier attempt became ``unconfirmed``).
        """
        if load.card_id != card.id or load.amount != request.amount or load.term_id != term_id:
            raise LoadRefused("this request id was used for another load", request_id=request.request_id)
        if load.status is not LoadStatus.AUTHORIZED:
            raise LoadRefused(f"this request's load is already {load.status}", request_id=request.request_id)
        if request.online_seq != load.online_seq:
            self._mark_unconfirmed(session, load)
            return LoadRefused(
                "the card's counter moved since this request was authorized: its outcome is unconfirmed",
                request_id=request.request_id,
            )
        return None

    def _settle_stale_authorizations(self, session: Session, card: Card, request: LoadRequest) -> None:
        """Other requests' authorizations of this card: unused if at the same counter, unconfirmed if older."""
        stale = session.scalars(
            select(Load)
            .where(Load.card_id == card.id, Load.status == LoadStatus.AUTHORIZED)
            .where(Load.request_id != request.request_id)
            .with_for_update()
        ).all()
        for other in stale:
            if other.online_seq == request.online_seq:
                other.status = LoadStatus.VOID
                other.completed_at = self._clock()
            elif other.online_seq < request.online_seq:
                self._mark_unconfirmed(session, other)

    def _mark_unconfirmed(self, session: Session, load: Load) -> None:
        load.status = LoadStatus.UNCONFIRMED
        load.completed_at = self._clock()
        if load.device_seq is None:
            load.device_seq = next_counter_value(session, device_seq_counter(load.term_id))

    # --- confirm -------------------------------------------------------------------------------------

    def confirm(self, request: LoadRequest, auth: LoadAuthorization, record: BatchRecord) -> None:
        """Record the load's outcome; check the TAC; count it once (spec §2.4, Load; §5 statuses)."""
        with self._new_uow() as uow:
            session = uow.session
            load = session.scalars(
                select(Load).where(Load.request_id == request.request_id).with_for_update()
            ).one_or_none()
            if load is None or load.term_seq != auth.term_seq or load.online_seq != request.online_seq:
                raise LoadRefused("no such authorization", request_id=request.request_id)
            now = self._clock()
            if record.status is RecordStatus.UNCONFIRMED:
                if load.status is LoadStatus.AUTHORIZED:
                    self._mark_unconfirmed(session, load)
                    audit(session, self._staff, "load.unconfirmed", "load", load.request_id, now, card_no=load.card_no)
                    uow.commit()
                return
            tac = bytes.fromhex(record.tac)
            outcome = LoadStatus.PROOF if record.status is RecordStatus.PROOF else LoadStatus.OK
            complete_load(session, self._keys, self._staff, load, tac, outcome, now)
            uow.commit()
        if load.status is LoadStatus.REJECTED:
            raise LoadRefused("the card's load TAC does not verify", request_id=request.request_id)


def complete_load(
    session: Session, keys: Keystore, staff: Staff, load: Load, tac: bytes, outcome: LoadStatus, now: datetime
) -> None:
    """Count a load whose card answered ``tac`` (directly: ``ok``, or by GET TRANSACTION PROOF: ``proof``).

    Idempotent: a load already counted with the same TAC changes nothing; a different TAC is a conflict.
    A TAC that does not verify marks the load ``rejected`` (the caller raises after committing).
    """
    tac_hex = tac.hex().upper()
    if load.status in COUNTED:
        if load.tac != tac_hex:
            raise LoadRefused("this load was already recorded with another TAC", request_id=load.request_id)
        return
    if load.status not in (LoadStatus.AUTHORIZED, LoadStatus.UNCONFIRMED):
        raise LoadRefused(f"this load is {load.status}", request_id=load.request_id)
    if load.device_seq is None:
        load.device_seq = next_counter_value(session, device_seq_counter(load.term_id))
    load.tac = tac_hex
    load.completed_at = now
    try:
        genuine = keys.verify_load_tac(
            crypto.Alg(int(load.alg, 16)),
            int(load.key_ver, 16),
            bytes.fromhex(load.card_no),
            new_balance=load.old_balance + load.amount,
            online_seq=load.online_seq,
            amount=load.amount,
            term_id=bytes.fromhex(load.term_id),
            date4=bytes.fromhex(load.txn_date),
            time3=bytes.fromhex(load.txn_time),
            tac=tac,
        )
    except crypto.MacError:
        genuine = False
    if not genuine:
        load.status = LoadStatus.REJECTED
        audit(session, staff, "load.tac_rejected", "load", load.request_id, now, card_no=load.card_no)
        return
    load.status = outcome
    card = session.get(Card, load.card_id, with_for_update=True)
    assert card is not None
    card.shadow_balance += load.amount
    card.shadow_online_seq = max(card.shadow_online_seq, load.online_seq + 1)
    card.shadow_updated_at = now
    move_money(
        session,
        kind="load",
        from_account=load.funding_account,
        to_account=card_account(load.card_no),
        amount=load.amount,
        reference=f"load:{load.request_id}",
        at=now,
        actor_id=staff.staff_id,
    )
    if load.funding_account.startswith("settlement:"):
        settlement = session.get(BalanceSettlement, int(load.funding_account.split(":", 1)[1]), with_for_update=True)
        if settlement is not None and settlement.status is SettlementStatus.READY:
            settlement.status = SettlementStatus.DONE
            settlement.done_at = now
            settlement.done_by = staff.staff_id
    audit(
        session,
        staff,
        f"load.{outcome}",
        "load",
        load.request_id,
        now,
        card_no=load.card_no,
        amount=load.amount,
        device_seq=load.device_seq,
    )


def batch_record(load: Load) -> BatchRecord:
    """The spec §5 record of a load (``void`` ones stay ``unconfirmed``: clearing resolves them by counter)."""
    if load.status not in RECORDS or load.device_seq is None:
        raise ValueError("this load is not a record yet")
    if load.status in (LoadStatus.UNCONFIRMED, LoadStatus.VOID):
        status, tac = RecordStatus.UNCONFIRMED, ""
    else:
        status = RecordStatus.PROOF if load.status is LoadStatus.PROOF else RecordStatus.OK
        tac = load.tac
    return BatchRecord(
        txn_type="02",
        card_no=load.card_no,
        card_type=load.card_type,
        card_seq=load.online_seq,
        amount=load.amount,
        balance_before=load.old_balance,
        term_id=load.term_id,
        term_seq=load.term_seq,
        txn_date=load.txn_date,
        txn_time=load.txn_time,
        tac=tac,
        alg=load.alg,
        key_ver=load.key_ver,
        status=status,
        device_seq=load.device_seq,
    )


def load_records(session: Session, term_id: str, after_device_seq: int = 0) -> list[BatchRecord]:
    """The spec §5 records of a counter terminal's loads after ``after_device_seq``, in device_seq order."""
    loads = session.scalars(
        select(Load)
        .where(Load.term_id == term_id, Load.device_seq.is_not(None), Load.device_seq > after_device_seq)
        .order_by(Load.device_seq)
    ).all()
    return [batch_record(load) for load in loads]
