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

The common case has a fast path: a *fresh* request id (the caller has just seen that no load has it; the unique
request id still guards a race) on an active card with no other outstanding authorization, and an ``ok`` /
``proof`` outcome whose TAC verifies for a load still ``authorized``. Its statements are built once and run
straight on the driver (:func:`backoffice.db.run_statement`); on PostgreSQL each of its two transactions writes
its rows in one statement (data-modifying CTEs), elsewhere in a few Core statements. Anything else (a retry of a
request id, stale authorizations to settle, a settlement's transfer, an ``unconfirmed`` or refused outcome) rolls
the fast transaction back and takes the general path below, which decides exactly as before. The fast path
records the same rows (load, counters, audit entries, shadow balance, one money movement from the funding
account to the card's). Locks: the authorization takes the card's row first, as the general path does; the
outcome's one statement takes the terminal's record-number counter before the load's row (the general path the
other way round), which could only make two transactions wait on each other if the same card were authorized at
another terminal at that instant (a cloned card): PostgreSQL then aborts one, and an aborted outcome leaves the
load ``authorized``, to be settled by proof like a crash.

:class:`LoadHooks` let a caller add its own rows to the two transactions (the API stores its idempotency claim in
the authorization's and the response in the confirmation's), so that a load at the counter commits twice: the
authorization (before MAC2 leaves the host: a crash after the card was credited leaves the load ``authorized``,
to be settled by proof, never loaded twice) and the outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import BigInteger, Connection, Table, bindparam, case, exists, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork, run_statement
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
from issuance.lifecycle import CardState, CardType, LoadStatus, SettlementStatus
from issuance.models import AuditEntry, BalanceSettlement, Card, IssuanceCounter, Load, PurseMovement
from terminal.errors import HostRefused
from terminal.purse import LoadAuthorization, LoadRequest, bcd_now

UowFactory = Callable[[], UnitOfWork]
COUNTED = frozenset({LoadStatus.OK, LoadStatus.PROOF})
RECORDS = frozenset({LoadStatus.OK, LoadStatus.PROOF, LoadStatus.UNCONFIRMED, LoadStatus.VOID, LoadStatus.REJECTED})
"""Statuses of loads that are spec §5 records (they have a device_seq)."""


_CARDS = cast(Table, Card.__table__)
_LOADS = cast(Table, Load.__table__)
_COUNTERS = cast(Table, IssuanceCounter.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)
_MOVEMENTS = cast(Table, PurseMovement.__table__)

# The fast path's statements, built once (building a statement and its cache key costs more than running it).
_FAST_CARD = (
    select(
        _CARDS.c.id,
        _CARDS.c.card_type,
        _CARDS.c.state,
        _CARDS.c.alg,
        _CARDS.c.key_version,
        _CARDS.c.purse_limit,
        exists()
        .where(
            _LOADS.c.card_id == _CARDS.c.id,
            _LOADS.c.status == LoadStatus.AUTHORIZED,
            _LOADS.c.request_id != bindparam("k_request_id"),
        )
        .label("stale"),
    )
    .where(_CARDS.c.card_no == bindparam("k_card_no"))
    .with_for_update(of=_CARDS)
)
_BUMP_COUNTER = (
    update(_COUNTERS)
    .where(_COUNTERS.c.name == bindparam("k_name"))
    .values(value=_COUNTERS.c.value + 1)
    .returning(_COUNTERS.c.value)
)
_NEW_COUNTER = {
    "postgresql": postgresql.insert(_COUNTERS).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(_COUNTERS).on_conflict_do_nothing(),
}
_NEW_LOAD = {
    "postgresql": postgresql.insert(_LOADS)
    .on_conflict_do_nothing(index_elements=["request_id"])
    .returning(_LOADS.c.id),
    "sqlite": sqlite.insert(_LOADS).on_conflict_do_nothing(index_elements=["request_id"]).returning(_LOADS.c.id),
}
_NEW_AUDIT = insert(_AUDIT)
_NEW_MOVEMENT = insert(_MOVEMENTS)
_COUNT_LOAD = (
    update(_LOADS)
    .where(
        _LOADS.c.id == bindparam("k_id"),
        _LOADS.c.status == LoadStatus.AUTHORIZED,
        _LOADS.c.term_seq == bindparam("k_term_seq"),
        _LOADS.c.device_seq.is_(None),
    )
    .returning(_LOADS.c.id)
)
_SET_DEVICE_SEQ = update(_LOADS).where(_LOADS.c.id == bindparam("k_id"))

# On PostgreSQL each of the fast path's two transactions writes its rows in one statement (data-modifying CTEs):
# the same rows as the statements above, each written only when the load's own row is. A counter that does not
# exist yet writes nothing (:func:`_ensure_counter` creates it first). The audit detail is the JSON
# of :func:`issuance.bookkeeping.audit` (sorted keys; the number the statement allocates is the last key).
_PG_AUTHORIZE = text(
    """
WITH seq AS (
    UPDATE issuance_counters SET value = value + 1 WHERE name = :counter RETURNING value
), load AS (
    INSERT INTO loads (request_id, card_id, card_no, card_type, term_id, term_seq, online_seq, old_balance, amount,
                       txn_date, txn_time, alg, key_ver, tac, status, device_seq, funding_account, staff_id,
                       created_at, authorized_at, completed_at)
    SELECT :request_id, :card_id, :card_no, :card_type, :term_id, seq.value, :online_seq, :old_balance, :amount,
           :txn_date, :txn_time, :alg, :key_ver, '', :status, NULL, :funding_account, :staff_id, :now, :now, NULL
    FROM seq
    ON CONFLICT (request_id) DO NOTHING
    RETURNING id, term_seq
), audit AS (
    INSERT INTO audit_log (at, actor_id, actor_role, action, object_type, object_id, detail)
    SELECT :now, :staff_id, :actor_role, 'load.authorize', 'load', :request_id,
           CAST(:detail_head AS text) || load.term_seq || '}'
    FROM load
)
SELECT id, term_seq FROM load
"""
)
_PG_CONFIRM = text(
    """
WITH seq AS (
    UPDATE issuance_counters SET value = value + 1 WHERE name = :counter RETURNING value
), load AS (
    UPDATE loads SET status = :status, tac = :tac, completed_at = :now, device_seq = (SELECT value FROM seq)
    WHERE id = :load_id AND status = 'authorized' AND term_seq = :term_seq AND device_seq IS NULL
      AND EXISTS (SELECT 1 FROM seq)
    RETURNING device_seq
), card AS (
    UPDATE cards SET shadow_balance = shadow_balance + :amount,
                     shadow_online_seq = GREATEST(shadow_online_seq, :next_seq),
                     shadow_updated_at = :now
    WHERE id = :card_id AND EXISTS (SELECT 1 FROM load)
), movement AS (
    INSERT INTO purse_movements (kind, from_account, to_account, amount, reference, at, actor_id)
    SELECT 'load', :from_account, :to_account, :amount, :reference, :now, :staff_id FROM load
), audit AS (
    INSERT INTO audit_log (at, actor_id, actor_role, action, object_type, object_id, detail)
    SELECT :now, :staff_id, :actor_role, :action, 'load', :request_id,
           CAST(:detail_head AS text) || load.device_seq || '}'
    FROM load
)
SELECT device_seq FROM load
"""
)


_KNOWN_COUNTERS: set[tuple[str, str]] = set()
"""(database URL, counter) this process has seen exist: the one-statement writes need the counter. Were one gone
(a database recreated), the statement writes nothing and the general path decides (and creates it)."""


def _ensure_counter(conn: Connection, name: str) -> tuple[str, str]:
    """Create the counter ``name`` (at 0) unless this process knows it exists; the key to remember it by."""
    key = (str(conn.engine.url), name)
    if key not in _KNOWN_COUNTERS:
        run_statement(conn, _NEW_COUNTER[conn.dialect.name], {"name": name, "value": 0})
    return key


def _one_statement(conn: Connection) -> bool:
    """Whether the fast path writes each transaction's rows in one statement (PostgreSQL through psycopg)."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def _detail_head(**detail: Any) -> str:
    """The audit detail JSON up to the value of its last key (sorted), which the statement appends with ``}``."""
    document = json.dumps(detail, sort_keys=True, default=str)
    last = json.dumps(detail[sorted(detail)[-1]], default=str)
    assert document.endswith(last + "}")
    return document[: -len(last) - 1]


_SHADOW = (
    update(_CARDS)
    .where(_CARDS.c.id == bindparam("k_id"))
    .values(
        shadow_balance=_CARDS.c.shadow_balance + bindparam("k_amount", type_=BigInteger()),
        shadow_online_seq=case(
            (
                _CARDS.c.shadow_online_seq > bindparam("k_next_seq", type_=BigInteger()),
                _CARDS.c.shadow_online_seq,
            ),
            else_=bindparam("k_next_seq", type_=BigInteger()),
        ),
    )
)


class LoadHooks(Protocol):
    """A caller's additions to the load host's transactions (each runs inside the transaction, before commit)."""

    def authorizing(self, conn: Connection) -> None:
        """First thing in the authorization's transaction (until one that included it has committed); may raise
        to abandon the load before anything else is done (the transaction rolls back)."""

    def authorization_committed(self) -> None:
        """The transaction that ran :meth:`authorizing` has committed (also when the host then refuses)."""

    def confirming(self, conn: Connection, load: Load) -> None:
        """Last thing in the transaction that records the load's ``ok``, ``proof`` or ``unconfirmed`` outcome;
        ``load`` holds the values being committed (detached: read it, do not change it)."""


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
        fresh: bool = False,
        hooks: LoadHooks | None = None,
    ) -> None:
        self._new_uow = new_uow
        self._keys = keys
        self._staff = staff
        self._clock = clock
        self._funding = funding
        self._fresh = fresh and funding.settlement_id is None and not funding.account.startswith("settlement:")
        self._hooks = hooks
        self._hooked = hooks is None
        """Whether a committed authorization transaction has run the hook (nothing to run without hooks)."""
        self._fast: _FastAuthorization | None = None
        self.outcome: Load | None = None
        """The load as its outcome was committed by :meth:`confirm` (detached), when confirm got that far."""

    def _run_authorizing_hook(self, session: Session) -> bool:
        if self._hooked or self._hooks is None:
            return False
        self._hooks.authorizing(session.connection())
        return True

    def _committed(self, uow: UnitOfWork, hooked: bool) -> None:
        uow.commit()
        if hooked and self._hooks is not None:
            self._hooked = True
            self._hooks.authorization_committed()

    # --- authorize -----------------------------------------------------------------------------------

    def authorize(self, request: LoadRequest) -> LoadAuthorization:
        """Check the card and the request, verify MAC1, record the authorization, answer MAC2 (spec §2.4)."""
        self._fast = None
        if self._fresh:
            self._fresh = False  # a second attempt at this request (the card came back) is not fresh
            fast = self._authorize_fresh(request)
            if fast is not None:
                return fast
        return self._authorize_general(request)

    def _authorize_general(self, request: LoadRequest) -> LoadAuthorization:
        card_no = request.card_no.hex()
        term_id = request.term_id.hex()
        with self._new_uow() as uow:
            session = uow.session
            hooked = self._run_authorizing_hook(session)
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
                self._committed(uow, hooked)
                raise LoadRefused("MAC1 does not verify: not a genuine card of this issuer", card_no=card_no) from None
            load = session.scalars(
                select(Load).where(Load.request_id == request.request_id).with_for_update()
            ).one_or_none()
            if load is not None:
                refusal = self._check_retry(session, load, card, request, term_id)
                if refusal is not None:
                    self._committed(uow, hooked)
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
                self._committed(uow, hooked)
            except IntegrityError:
                # Another authorization of the same request id committed first: this one gives no MAC2.
                raise LoadRefused("this request id is being loaded elsewhere", request_id=request.request_id) from None
        return LoadAuthorization(request.request_id, mac2, date4, time3, term_seq)

    def _authorize_fresh(self, request: LoadRequest) -> LoadAuthorization | None:
        """The common case, in a few statements: ``None`` (rolled back) when the general path must decide."""
        card_no = request.card_no.hex()
        term_id = request.term_id.hex()
        with self._new_uow() as uow:
            session = uow.session
            hooked = self._run_authorizing_hook(session)
            conn = session.connection()
            rows, _ = run_statement(conn, _FAST_CARD, {"k_card_no": card_no, "k_request_id": request.request_id})
            if not rows or rows[0][6]:
                return None  # not ours (the general path refuses), or stale authorizations to settle
            card = _CardRow(*rows[0][:6])
            self._check_card(card, card_no, request)
            now = self._clock()
            date4, time3 = bcd_now(now)
            try:
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
                return None  # the general path records the refusal
            values: dict[str, Any] = {
                "request_id": request.request_id,
                "card_id": card.id,
                "card_no": card_no,
                "card_type": f"{card.card_type.code:02X}",
                "term_id": term_id,
                "online_seq": request.online_seq,
                "old_balance": request.old_balance,
                "amount": request.amount,
                "txn_date": date4.hex(),
                "txn_time": time3.hex(),
                "alg": f"{request.alg:02X}",
                "key_ver": f"{request.key_version:02X}",
                "tac": "",
                "status": LoadStatus.AUTHORIZED,
                "device_seq": None,
                "funding_account": self._funding.account,
                "staff_id": self._staff.staff_id,
                "created_at": now,
                "authorized_at": now,
                "completed_at": None,
            }
            detail = {
                "card_no": card_no,
                "amount": request.amount,
                "online_seq": request.online_seq,
                "term_id": term_id,
            }
            counter = host_term_seq_counter(term_id)
            if _one_statement(conn):
                fixed_in_sql = ("tac", "device_seq", "completed_at", "created_at", "authorized_at")
                params = {
                    **{name: value for name, value in values.items() if name not in fixed_in_sql},
                    "status": LoadStatus.AUTHORIZED.value,
                    "counter": counter,
                    "now": now,
                    "actor_role": str(self._staff.role),
                    "detail_head": _detail_head(**detail, term_seq=0),
                }
                known = _ensure_counter(conn, counter)
                rows, _ = run_statement(conn, _PG_AUTHORIZE, params)
                if not rows:
                    return None  # the request id is on record after all: the general path decides
                _KNOWN_COUNTERS.add(known)
                load_id, term_seq = int(rows[0][0]), int(rows[0][1])
                values["term_seq"] = term_seq
            else:
                term_seq = _bump_counter(conn, counter)
                values["term_seq"] = term_seq
                inserted, _ = run_statement(conn, _NEW_LOAD[conn.dialect.name], values)
                if not inserted:
                    return None  # the request id is on record after all: the general path decides
                load_id = int(inserted[0][0])
                _insert_audit(
                    conn, self._staff, "load.authorize", "load", request.request_id, now, **detail, term_seq=term_seq
                )
            try:
                self._committed(uow, hooked)
            except IntegrityError:
                raise LoadRefused("this request id is being loaded elsewhere", request_id=request.request_id) from None
        self._fast = _FastAuthorization(load_id, {**values, "id": load_id})
        return LoadAuthorization(request.request_id, mac2, date4, time3, term_seq)

    def _check_card(self, card: _CardFacts | None, card_no: str, request: LoadRequest) -> None:
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
        fast, self._fast = self._fast, None
        if (
            fast is not None
            and record.status is not RecordStatus.UNCONFIRMED
            and fast.values["term_seq"] == auth.term_seq
            and fast.values["online_seq"] == request.online_seq
            and fast.values["request_id"] == request.request_id
            and self._confirm_fast(fast, record)
        ):
            return
        self._confirm_general(request, auth, record)

    def _confirm_fast(self, fast: _FastAuthorization, record: BatchRecord) -> bool:
        """Count a load authorized by the fast path whose TAC verifies, in Core; ``False`` (nothing done) when the
        general path must decide (the TAC does not verify, or the load is no longer ``authorized``)."""
        values = fast.values
        tac = bytes.fromhex(record.tac)
        try:
            genuine: bool = self._keys.verify_load_tac(
                request_alg(values),
                int(values["key_ver"], 16),
                bytes.fromhex(values["card_no"]),
                new_balance=values["old_balance"] + values["amount"],
                online_seq=values["online_seq"],
                amount=values["amount"],
                term_id=bytes.fromhex(values["term_id"]),
                date4=bytes.fromhex(values["txn_date"]),
                time3=bytes.fromhex(values["txn_time"]),
                tac=tac,
            )
        except crypto.MacError:
            genuine = False
        if not genuine:
            return False
        outcome = LoadStatus.PROOF if record.status is RecordStatus.PROOF else LoadStatus.OK
        tac_hex = tac.hex().upper()
        with self._new_uow() as uow:
            conn = uow.session.connection()
            now = self._clock()
            counter = device_seq_counter(values["term_id"])
            if _one_statement(conn):
                known = _ensure_counter(conn, counter)
                rows, _ = run_statement(
                    conn,
                    _PG_CONFIRM,
                    {
                        "counter": counter,
                        "status": outcome.value,
                        "tac": tac_hex,
                        "now": now,
                        "load_id": fast.load_id,
                        "term_seq": values["term_seq"],
                        "amount": values["amount"],
                        "next_seq": values["online_seq"] + 1,
                        "card_id": values["card_id"],
                        "from_account": values["funding_account"],
                        "to_account": card_account(values["card_no"]),
                        "reference": f"load:{values['request_id']}",
                        "staff_id": self._staff.staff_id,
                        "actor_role": str(self._staff.role),
                        "action": f"load.{outcome}",
                        "request_id": values["request_id"],
                        "detail_head": _detail_head(card_no=values["card_no"], amount=values["amount"], device_seq=0),
                    },
                )
                if not rows:
                    return False  # settled meanwhile (another authorization of the card): the general path decides
                _KNOWN_COUNTERS.add(known)
                device_seq = int(rows[0][0])
            else:
                counted, _ = run_statement(
                    conn,
                    _COUNT_LOAD,
                    {
                        "k_id": fast.load_id,
                        "k_term_seq": values["term_seq"],
                        "status": outcome,
                        "tac": tac_hex,
                        "completed_at": now,
                    },
                )
                if not counted:
                    return False  # settled meanwhile (another authorization of the card): the general path decides
                device_seq = _bump_counter(conn, counter)
                run_statement(conn, _SET_DEVICE_SEQ, {"k_id": fast.load_id, "device_seq": device_seq})
                run_statement(
                    conn,
                    _SHADOW,
                    {
                        "k_id": values["card_id"],
                        "k_amount": values["amount"],
                        "k_next_seq": values["online_seq"] + 1,
                        "shadow_updated_at": now,
                    },
                )
                run_statement(
                    conn,
                    _NEW_MOVEMENT,
                    {
                        "kind": "load",
                        "from_account": values["funding_account"],
                        "to_account": card_account(values["card_no"]),
                        "amount": values["amount"],
                        "reference": f"load:{values['request_id']}",
                        "at": now,
                        "actor_id": self._staff.staff_id,
                    },
                )
                _insert_audit(
                    conn,
                    self._staff,
                    f"load.{outcome}",
                    "load",
                    values["request_id"],
                    now,
                    card_no=values["card_no"],
                    amount=values["amount"],
                    device_seq=device_seq,
                )
            load = Load(**{**values, "status": outcome, "tac": tac_hex, "completed_at": now, "device_seq": device_seq})
            if self._hooks is not None:
                self._hooks.confirming(conn, load)
            uow.commit()
        self.outcome = load
        return True

    def _confirm_general(self, request: LoadRequest, auth: LoadAuthorization, record: BatchRecord) -> None:
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
                    session.flush()
                    if self._hooks is not None:
                        self._hooks.confirming(session.connection(), load)
                    uow.commit()
                    self.outcome = load
                return
            tac = bytes.fromhex(record.tac)
            outcome = LoadStatus.PROOF if record.status is RecordStatus.PROOF else LoadStatus.OK
            complete_load(session, self._keys, self._staff, load, tac, outcome, now)
            if load.status in COUNTED and self._hooks is not None:
                session.flush()
                self._hooks.confirming(session.connection(), load)
            uow.commit()
            if load.status in COUNTED:
                self.outcome = load
        if load.status is LoadStatus.REJECTED:
            raise LoadRefused("the card's load TAC does not verify", request_id=request.request_id)


@dataclass(frozen=True, slots=True)
class _FastAuthorization:
    """What the fast path committed for an authorization: the load's id and its column values."""

    load_id: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _CardRow:
    """The columns of a card the fast authorization reads."""

    id: int
    card_type: CardType
    state: CardState
    alg: int | None
    key_version: int | None
    purse_limit: int

    def __post_init__(self) -> None:
        # Straight from the driver these are the stored strings.
        object.__setattr__(self, "card_type", CardType(self.card_type))
        object.__setattr__(self, "state", CardState(self.state))


class _CardFacts(Protocol):
    """What the checks read of a card (an ORM :class:`Card` or a Core row of the same columns)."""

    @property
    def state(self) -> CardState: ...
    @property
    def alg(self) -> int | None: ...
    @property
    def key_version(self) -> int | None: ...
    @property
    def purse_limit(self) -> int: ...


def request_alg(values: dict[str, Any]) -> crypto.Alg:
    """The algorithm suite of a load's column values (``alg`` as two hex digits)."""
    return crypto.Alg(int(values["alg"], 16))


def _bump_counter(conn: Connection, name: str) -> int:
    """:func:`issuance.bookkeeping.next_counter_value` in Core: one ``UPDATE … RETURNING`` (an upsert creates the
    counter the first time)."""
    rows, _ = run_statement(conn, _BUMP_COUNTER, {"k_name": name})
    if rows:
        return int(rows[0][0])
    run_statement(conn, _NEW_COUNTER[conn.dialect.name], {"name": name, "value": 0})
    rows, _ = run_statement(conn, _BUMP_COUNTER, {"k_name": name})
    return int(rows[0][0])


def _insert_audit(
    conn: Connection, staff: Staff, action: str, object_type: str, object_id: str, at: datetime, **detail: Any
) -> None:
    """:func:`issuance.bookkeeping.audit` in Core (the same row)."""
    run_statement(
        conn,
        _NEW_AUDIT,
        {
            "at": at,
            "actor_id": staff.staff_id,
            "actor_role": str(staff.role),
            "action": action,
            "object_type": object_type,
            "object_id": str(object_id),
            "detail": json.dumps(detail, sort_keys=True, default=str),
        },
    )


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
        genuine: bool = keys.verify_load_tac(
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
