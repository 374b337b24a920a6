"""Purse transactions with a PSAM or a load host, and recovery when the card leaves (spec §2.4, §5).

:class:`PurseTerminal` reads cards, runs purchases and CAPP purchases with its PSAM, runs loads through a
:class:`LoadHost`, and when the card leaves the field after DEBIT or CREDIT waits for it to come back,
refuses any other card, and recovers the outcome with GET TRANSACTION PROOF. Every completed
transaction becomes a :class:`cardos.batch.BatchRecord` with status ``ok``, ``proof`` or ``unconfirmed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Protocol

from cardos import crypto
from cardos.batch import BatchRecord, RecordStatus
from cardos.layout import TXN_CAPP, TXN_LOAD, TXN_PURCHASE, HolderData, LogRecord, PublicData, TransitRecord
from cardos.sw import SW
from terminal.cards import PsamCard, UserCard
from terminal.channel import Channel
from terminal.errors import CardRemoved, CardStatusError, TerminalError, TransactionRefused, WaitTimeout

log = logging.getLogger("onecard.terminal")

Clock = Callable[[], datetime]
REFUSALS = {
    SW.INSUFFICIENT_BALANCE: "insufficient balance",
    SW.WRONG_DATA: "the purse limit would be exceeded",
    SW.APP_LOCKED: "the card's purse is blocked",
    SW.APP_BLOCKED_TEMP: "the card's purse is blocked",
    SW.FUNCTION_NOT_SUPPORTED: "the card is blocked",
    SW.COUNTER_AT_MAXIMUM: "the card's transaction counter is exhausted",
    SW.KEY_NOT_SUPPORTED: "the card's key is not supported here",
    SW.FILE_NOT_FOUND: "not a purse card",
}


def bcd_now(now: datetime) -> tuple[bytes, bytes]:
    """``(date4, time3)`` in BCD."""
    return bytes.fromhex(now.strftime("%Y%m%d")), bytes.fromhex(now.strftime("%H%M%S"))


class CardSource(Protocol):
    """Where the terminal waits for a card to come (back) into its field."""

    def wait_for_card(self, timeout: float) -> Channel:
        """A channel to the card in the field; raise :class:`WaitTimeout` after ``timeout`` seconds."""
        ...

    def wait_for_removal(self, channel: Channel, timeout: float) -> None:
        """Return when the card of ``channel`` has left the field."""
        ...


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """Everything a terminal can read from a card without moving money."""

    atr: bytes
    public: PublicData
    holder: HolderData
    balance: int | None
    """``None`` while the purse is blocked (GET BALANCE answers ``9303``)."""
    online_seq: int | None
    offline_seq: int | None
    log: list[LogRecord]
    transit: TransitRecord | None
    blocked: bool = False
    """The purse application is temporarily blocked (SELECT answered ``6283``)."""


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """Batch columns the terminal fills in that the card does not know."""

    line_id: str = ""
    station_id: str = ""
    vehicle_id: str = ""
    ref: str = ""


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    """A completed purchase: the record, and whether the PSAM accepted MAC2 (``None``: not checked)."""

    record: BatchRecord
    mac2_ok: bool | None
    balance_after: int | None
    channel: Channel


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What the load host needs to authorise a load (verify MAC1, compute MAC2)."""

    request_id: str
    card_no: bytes
    term_id: bytes
    amount: int
    old_balance: int
    online_seq: int
    key_version: int
    alg: crypto.Alg
    rand: bytes
    mac1: bytes


@dataclass(frozen=True, slots=True)
class LoadAuthorization:
    """The host's answer: MAC2 and the date, time and host term_seq it covers."""

    request_id: str
    mac2: bytes
    date4: bytes
    time3: bytes
    term_seq: int


class LoadHost(Protocol):
    """The back office side of an online load (spec §2.4, Load)."""

    def authorize(self, request: LoadRequest) -> LoadAuthorization:
        """Verify MAC1 and return MAC2; raise :class:`~terminal.errors.HostRefused` to refuse."""
        ...

    def confirm(self, request: LoadRequest, auth: LoadAuthorization, record: BatchRecord) -> None:
        """Record the completed (or unconfirmed) load; check its TAC; raise on a bad TAC."""
        ...


class _Outcome(Enum):
    PROOF = "proof"
    RETRY = "retry"
    UNCONFIRMED = "unconfirmed"


@dataclass(slots=True)
class _Recovered:
    outcome: _Outcome
    channel: Channel | None = None
    mac2: bytes = b""
    tac: bytes = b""


@dataclass
class PurseTerminal:
    """Runs purse transactions for one terminal (with a PSAM for purchases)."""

    clock: Clock
    psam: PsamCard | None = None
    card_source: CardSource | None = None
    recovery_timeout: float = 10.0
    notify: Callable[[str], None] = field(default=lambda message: log.info("%s", message))
    max_attempts: int = 3

    # --- reading -------------------------------------------------------------------------------------

    def read(self, channel: Channel, *, counters: bool = True, term_id: bytes = b"\x00" * 6) -> CardSnapshot:
        """Read EF 0015, 0016, the balance, the log, the transit record and (optionally) both counters.

        Counters are read with 0-fen INITIALIZE commands, which a later command cancels.
        """
        card = UserCard(channel)
        try:
            blocked = card.select_purse(allow_blocked=True)
            public = card.read_public()
            holder = card.read_holder()
            balance = None if blocked else card.get_balance()
            records = card.read_log()
            transit_raw = card.read_record(0x17, 1, 48, "READ RECORD 0017")
            online = offline = None
            if counters and not blocked:
                online = self._counter(lambda: card.initialize_load(0, term_id).online_seq)
                offline = self._counter(lambda: card.initialize_purchase(0, term_id, capp=False).offline_seq)
        except CardStatusError as exc:
            raise self._refusal(exc) from exc
        transit = TransitRecord.decode(transit_raw) if transit_raw else None
        return CardSnapshot(channel.atr, public, holder, balance, online, offline, records, transit, blocked)

    @staticmethod
    def _counter(read: Callable[[], int]) -> int | None:
        try:
            return read()
        except CardStatusError as exc:
            if exc.sw == SW.COUNTER_AT_MAXIMUM:
                return 0xFFFF
            if exc.sw in (SW.KEY_NOT_SUPPORTED, SW.WRONG_DATA):
                return None
            raise

    @staticmethod
    def _refusal(exc: CardStatusError) -> TransactionRefused:
        reason = REFUSALS.get(exc.sw, f"the card refused: {exc}")  # type: ignore[call-overload]
        return TransactionRefused(reason, exc.sw)

    # --- purchase ------------------------------------------------------------------------------------

    def purchase(
        self,
        channel: Channel,
        amount: int,
        *,
        capp_record: Callable[[PublicData, bytes], bytes] | None = None,
        meta: RecordMeta = RecordMeta(),
        device_seq: int = 1,
        public: PublicData | None = None,
        before_debit: Callable[[BatchRecord], None] | None = None,
    ) -> PurchaseResult:
        """One purchase (or CAPP purchase when ``capp_record`` computes the new EF 0017 record 1).

        ``before_debit`` is called with the record as it will be (status ``ok``, no TAC yet) right before
        each DEBIT is sent, so that a terminal can store its intent durably first (spec §2.4, proof).
        Raises :class:`TransactionRefused` when the card refuses before any money moved and
        :class:`CardRemoved` when the card left before DEBIT (nothing happened: tap again).
        """
        if self.psam is None:
            raise TerminalError("a purchase needs a PSAM")
        if amount < 0 or amount > 0xFFFFFFFF:
            raise ValueError("amount out of range")
        psam = self.psam
        term_id = psam.term_id
        capp = capp_record is not None
        txn_type = TXN_CAPP if capp else TXN_PURCHASE
        card = UserCard(channel)
        try:
            if public is None:
                card.select_purse()
                public = card.read_public()
            new_record = capp_record(public, card.read_capp_record(1)) if capp_record is not None else None
            for _attempt in range(self.max_attempts):
                init = card.initialize_purchase(amount, term_id, capp=capp)
                date4, time3 = bcd_now(self.clock())
                term_seq, mac1 = psam.init_sam_for_purchase(
                    rand=init.rand,
                    offline_seq=init.offline_seq,
                    amount=amount,
                    txn_type=txn_type,
                    date4=date4,
                    time3=time3,
                    key_version=init.key_version,
                    alg=init.alg,
                    card_no=bytes.fromhex(public.card_no),
                    issuer_id=public.issuer_id,
                )
                if new_record is not None:
                    card.update_capp_cache(new_record)
                record = BatchRecord(
                    txn_type=f"{txn_type:02X}",
                    card_no=public.card_no,
                    card_type=f"{public.card_type:02X}",
                    card_seq=init.offline_seq,
                    amount=amount,
                    balance_before=init.balance,
                    term_id=term_id.hex(),
                    term_seq=term_seq,
                    txn_date=date4.hex(),
                    txn_time=time3.hex(),
                    tac="",
                    alg=f"{init.alg:02X}",
                    key_ver=f"{init.key_version:02X}",
                    status=RecordStatus.OK,
                    line_id=meta.line_id,
                    station_id=meta.station_id,
                    vehicle_id=meta.vehicle_id,
                    ref=meta.ref,
                    device_seq=device_seq,
                )
                if before_debit is not None:
                    before_debit(record)
                try:
                    tac, mac2 = card.debit(term_seq, date4, time3, mac1)
                except CardRemoved:
                    expected = LogRecord(init.offline_seq, amount, txn_type, term_id, date4, time3)
                    recovered = self._recover(public.card_no, expected, capp=capp)
                    if recovered.outcome is _Outcome.RETRY and recovered.channel is not None:
                        channel = recovered.channel
                        card = UserCard(channel)
                        if capp_record is not None:  # recompute from the card as it is now
                            new_record = capp_record(public, card.read_capp_record(1))
                        continue
                    if recovered.outcome is _Outcome.UNCONFIRMED:
                        self.notify("the card left before the purchase could be confirmed")
                        return PurchaseResult(
                            replace(record, status=RecordStatus.UNCONFIRMED),
                            None,
                            None,
                            recovered.channel or channel,
                        )
                    channel = recovered.channel or channel
                    tac, mac2 = recovered.tac, recovered.mac2
                    record = replace(record, status=RecordStatus.PROOF)
                record = replace(record, tac=tac.hex().upper())
                mac2_ok = psam.credit_sam_for_purchase(mac2)
                if not mac2_ok:
                    log.warning(
                        "PSAM rejected MAC2 of %s seq %d: record kept for clearing",
                        public.card_no,
                        init.offline_seq,
                    )
                    self.notify("the card's MAC2 was rejected by the PSAM; the record is kept for clearing")
                return PurchaseResult(record, mac2_ok, init.balance - amount, channel)
        except CardStatusError as exc:
            raise self._refusal(exc) from exc
        raise TransactionRefused("the purchase could not be completed: tap again")

    # --- load ----------------------------------------------------------------------------------------

    def load(
        self,
        channel: Channel,
        amount: int,
        host: LoadHost,
        *,
        term_id: bytes,
        request_id: str,
        device_seq: int = 1,
        meta: RecordMeta = RecordMeta(),
    ) -> PurchaseResult:
        """One online load through ``host`` (spec §2.4, Load), recovered like a purchase."""
        if amount < 0 or amount > 0xFFFFFFFF:
            raise ValueError("amount out of range")
        card = UserCard(channel)
        try:
            card.select_purse()
            public = card.read_public()
            for _attempt in range(self.max_attempts):
                init = card.initialize_load(amount, term_id)
                request = LoadRequest(
                    request_id=request_id,
                    card_no=bytes.fromhex(public.card_no),
                    term_id=term_id,
                    amount=amount,
                    old_balance=init.old_balance,
                    online_seq=init.online_seq,
                    key_version=init.key_version,
                    alg=init.alg,
                    rand=init.rand,
                    mac1=init.mac1,
                )
                auth = host.authorize(request)
                record = BatchRecord(
                    txn_type=f"{TXN_LOAD:02X}",
                    card_no=public.card_no,
                    card_type=f"{public.card_type:02X}",
                    card_seq=init.online_seq,
                    amount=amount,
                    balance_before=init.old_balance,
                    term_id=term_id.hex(),
                    term_seq=auth.term_seq,
                    txn_date=auth.date4.hex(),
                    txn_time=auth.time3.hex(),
                    tac="",
                    alg=f"{init.alg:02X}",
                    key_ver=f"{init.key_version:02X}",
                    status=RecordStatus.OK,
                    line_id=meta.line_id,
                    station_id=meta.station_id,
                    vehicle_id=meta.vehicle_id,
                    ref=meta.ref,
                    device_seq=device_seq,
                )
                try:
                    tac = card.credit_for_load(auth.date4, auth.time3, auth.mac2)
                except CardRemoved:
                    expected = LogRecord(init.online_seq, amount, TXN_LOAD, term_id, auth.date4, auth.time3)
                    recovered = self._recover(public.card_no, expected, capp=False)
                    if recovered.outcome is _Outcome.RETRY and recovered.channel is not None:
                        channel = recovered.channel
                        card = UserCard(channel)
                        continue
                    if recovered.outcome is _Outcome.UNCONFIRMED:
                        record = replace(record, status=RecordStatus.UNCONFIRMED)
                        host.confirm(request, auth, record)
                        return PurchaseResult(record, None, None, recovered.channel or channel)
                    channel = recovered.channel or channel
                    tac = recovered.tac
                    record = replace(record, status=RecordStatus.PROOF)
                record = replace(record, tac=tac.hex().upper())
                host.confirm(request, auth, record)
                return PurchaseResult(record, None, init.old_balance + amount, channel)
        except CardStatusError as exc:
            raise self._refusal(exc) from exc
        raise TransactionRefused("the load could not be completed: present the card again")

    # --- recovery ------------------------------------------------------------------------------------

    def _recover(self, card_no: str, expected: LogRecord, *, capp: bool) -> _Recovered:
        """Wait for the original card and find out whether ``expected`` happened (spec §2.4, proof)."""
        source = self.card_source
        if source is None:
            return _Recovered(_Outcome.UNCONFIRMED)
        self.notify("present the card again")
        deadline = time.monotonic() + self.recovery_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                channel = source.wait_for_card(remaining)
            except WaitTimeout:
                break
            try:
                card = UserCard(channel)
                card.select_purse()
                public = card.read_public()
                if public.card_no != card_no:
                    self.notify("present the original card")
                    source.wait_for_removal(channel, max(deadline - time.monotonic(), 0.0))
                    channel.close()
                    continue
                proof = card.get_transaction_proof(expected.txn_type, expected.seq)
                if proof is not None:
                    latest = card.read_log(1)
                    if latest and latest[0] == expected:
                        return _Recovered(_Outcome.PROOF, channel, mac2=proof[0], tac=proof[1])
                    return _Recovered(_Outcome.RETRY, channel)
                if expected.txn_type == TXN_LOAD:
                    seq = card.initialize_load(expected.amount, expected.term_id).online_seq
                else:
                    seq = card.initialize_purchase(expected.amount, expected.term_id, capp=capp).offline_seq
                if seq == expected.seq:
                    return _Recovered(_Outcome.RETRY, channel)
                return _Recovered(_Outcome.UNCONFIRMED, channel)
            except CardRemoved:
                continue
            except (CardStatusError, WaitTimeout):
                channel.close()
                continue
        return _Recovered(_Outcome.UNCONFIRMED)
