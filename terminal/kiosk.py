"""The utility kiosk: look a bill up, pay it in full with the card, print a receipt (docs/device-api.md, Bills).

A payment (spec §2.4 purchase, type ``06``; spec §5 record with ``ref`` = the bill number) goes:

1. the bill must be open and the amount its whole amount due (partial payment is refused before anything);
2. the card is read and checked (issuer, hotlist, EF 0015 dates); intents this card left here are settled;
3. the bill is held for this kiosk by the back office (``POST …/hold``). Without an answer the kiosk refuses:
   it never charges a card for a bill it could not reserve;
4. the purchase runs with its intent committed before DEBIT (:func:`terminal.recovery.durable_purchase`); if
   the card refuses, the hold is released (``DELETE …/hold``) and nothing was charged;
5. the record is stored, then the payment is reported (``POST …/payment``); when that report cannot be
   delivered it waits in the store's outbox and is sent again (the record also travels in the kiosk's batch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cardos.batch import BatchRecord
from cardos.layout import PublicData
from cardos.sw import SW
from terminal.cards import PsamCard, UserCard
from terminal.channel import Channel
from terminal.clock import ClockGuard
from terminal.errors import CardRemoved, CardStatusError, TerminalError, TransactionRefused
from terminal.purse import CardSource, PurseTerminal, RecordMeta
from terminal.recovery import durable_purchase, settle_intents
from terminal.store import DeviceStore, StorageFull
from terminal.uplink import Bill, NetworkUnavailable, RequestFailed, UplinkError
from terminal.validator import card_refusal, yuan

log = logging.getLogger("onecard.terminal.kiosk")

UTILITIES = {"water": "水费", "electricity": "电费", "gas": "燃气费"}
PAYMENT_OUTBOX = "bill_payment"


class BackOffice(Protocol):
    """The bill endpoints of the device API (:class:`terminal.uplink.DeviceClient` implements them)."""

    def bills(self, utility: str, account: str) -> list[Bill]:
        """The account's open bills."""
        ...

    def hold_bill(self, bill_no: str, amount: int) -> None:
        """Reserve the bill for this kiosk (the whole amount due)."""
        ...

    def pay_bill(self, bill_no: str, record: Mapping[str, object]) -> None:
        """Report the payment record (spec §5 columns)."""
        ...

    def release_bill(self, bill_no: str) -> None:
        """Release the hold when the card refused."""
        ...


class KioskRefused(TerminalError):
    """The kiosk refused; ``charged`` says whether the card was charged (never, except ``unconfirmed``)."""

    def __init__(self, code: str, message: str, *, charged: bool | None = False) -> None:
        self.code = code
        self.message = message
        self.charged = charged
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class KioskConfig:
    """A kiosk's identity and what cards it accepts."""

    device_id: str
    operator_id: str
    issuers: frozenset[str]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A paid bill: the bill, the stored record, and whether the back office confirmed it yet."""

    bill: Bill
    record: BatchRecord
    balance_after: int | None
    paid_at: datetime
    confirmed: bool
    note: str = ""

    def text(self) -> str:
        """The printed receipt (Chinese and English labels)."""
        card = self.record.card_no
        masked = card[:4] + "*" * (len(card) - 8) + card[-4:]
        status = "paid 已缴费" if self.confirmed else "paid, confirmation pending 已扣款，待确认"
        lines = [
            "ONECARD UTILITY PAYMENT 一卡通缴费凭条",
            f"Bill 账单号        {self.bill.bill_no}",
            f"Utility 类别       {self.bill.utility} {UTILITIES.get(self.bill.utility, '')}".rstrip(),
            f"Account 户号       {self.bill.account}",
            f"Period 账期        {self.bill.period}",
            f"Amount 金额        {yuan(self.record.amount)}",
            f"Card 卡号          {masked}",
            f"Balance 余额       {'' if self.balance_after is None else yuan(self.balance_after)}",
            f"Terminal 终端      {self.record.term_id} / {self.record.term_seq}",
            f"TAC               {self.record.tac or '-'}",
            f"Time 时间          {self.paid_at:%Y-%m-%d %H:%M:%S}",
            f"Status 状态        {status}",
        ]
        if self.note:
            lines.append(f"Note 备注          {self.note}")
        return "\n".join(lines)


class Kiosk:
    """One utility kiosk (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        config: KioskConfig,
        back_office: BackOffice,
        store: DeviceStore,
        psam: PsamCard,
        clock: ClockGuard,
        *,
        card_source: CardSource | None = None,
        recovery_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.back_office = back_office
        self.store = store
        self.clock = clock
        self._now: datetime | None = None
        self.terminal = PurseTerminal(
            clock=self._clock, psam=psam, card_source=card_source, recovery_timeout=recovery_timeout
        )

    def _clock(self) -> datetime:
        return self._now if self._now is not None else self.clock.now()

    # --- bills -------------------------------------------------------------------------------------------

    def find_bills(self, utility: str, account: str) -> list[Bill]:
        """The account's open bills (docs/device-api.md, Bills); refused (never guessed) without the network."""
        if utility not in UTILITIES:
            raise KioskRefused("bad_utility", f"utility must be one of {', '.join(UTILITIES)}")
        if not account.strip():
            raise KioskRefused("bad_account", "give the account number")
        try:
            return self.back_office.bills(utility, account.strip())
        except NetworkUnavailable:
            raise KioskRefused("no_network", "The kiosk is offline: bills cannot be looked up now") from None
        except UplinkError as exc:
            raise KioskRefused("lookup_failed", f"Bills cannot be looked up now ({exc})") from None

    # --- payment -----------------------------------------------------------------------------------------

    def pay(self, channel: Channel, bill: Bill, amount: int) -> Receipt:
        """Pay ``bill`` in full with the card in ``channel`` (spec §2.4 purchase, ref = bill number).

        Raises :class:`KioskRefused`; ``charged`` is False unless the card left with the outcome unknown.
        """
        if bill.status not in ("open", "held"):  # "held": perhaps by this kiosk; the hold request tells
            raise KioskRefused("bill_not_open", f"Bill {bill.bill_no} is {bill.status}: nothing to pay")
        if amount != bill.amount_due:
            raise KioskRefused(
                "partial_payment", f"Partial payment is not accepted: the amount due is {yuan(bill.amount_due)}"
            )
        if self.store.is_full():
            raise KioskRefused("storage_full", "The kiosk's storage is full: payments are suspended")
        now = self.clock.now()
        self._now = now
        try:
            return self._pay(channel, bill, amount, now)
        finally:
            self._now = None

    def _pay(self, channel: Channel, bill: Bill, amount: int, now: datetime) -> Receipt:
        card = UserCard(channel)
        earlier: Receipt | None = None
        try:
            card.select_purse()
            public = card.read_public()
            if self.store.intents(public.card_no):
                for settled in settle_intents(self.store, card, public.card_no, at=now):
                    record = settled.record
                    if not settled.charged or record is None or not record.ref:
                        continue
                    confirmed, note = self._report_payment(record.ref, record)
                    if record.ref == bill.bill_no:  # this very bill was paid by the attempt the card left
                        balance = card.get_balance()
                        note = note or "paid at the earlier attempt"
                        earlier = Receipt(bill, record, balance, settled.intent.tap_time, confirmed, note)
        except CardRemoved:
            raise KioskRefused("card_removed", "Keep the card on the reader") from None
        except (CardStatusError, ValueError):
            raise KioskRefused("card_unreadable", "This card cannot pay here") from None
        if earlier is not None:
            return earlier
        refused = card_refusal(public, issuers=self.config.issuers, store=self.store, today=now.strftime("%Y%m%d"))
        if refused is not None:
            self.store.add_event("refusal", f"{refused[0]}: {refused[1]}", at=now, card_no=public.card_no)
            raise KioskRefused(str(refused[0]), refused[1])
        self._hold(bill, amount)
        try:
            result = durable_purchase(
                self.terminal,
                self.store,
                channel,
                amount,
                public=public,
                tap_time=now,
                kind="bill",
                meta=RecordMeta(ref=bill.bill_no),
            )
        except StorageFull:
            self._release(bill)
            raise KioskRefused("storage_full", "The kiosk's storage is full: payments are suspended") from None
        except TransactionRefused as exc:
            self._release(bill)
            text = "Insufficient balance" if exc.sw == SW.INSUFFICIENT_BALANCE else f"The card refused: {exc.reason}"
            raise KioskRefused("card_refused", f"{text}; the card was not charged") from None
        except TerminalError as exc:
            if self.store.intents(public.card_no):
                raise KioskRefused(
                    "unconfirmed", "Payment not confirmed: present the card again", charged=None
                ) from exc
            self._release(bill)
            raise KioskRefused("card_removed", "The card left the reader; it was not charged") from exc
        if result.record is None:
            raise KioskRefused("unconfirmed", "Payment not confirmed: present the card again", charged=None)
        confirmed, note = self._report_payment(bill.bill_no, result.record)
        return Receipt(bill, result.record, result.purchase.balance_after, now, confirmed, note)

    def _hold(self, bill: Bill, amount: int) -> None:
        try:
            self.back_office.hold_bill(bill.bill_no, amount)
        except NetworkUnavailable:
            raise KioskRefused(
                "no_network", "The kiosk is offline: payment refused, the card was not charged"
            ) from None
        except RequestFailed as exc:
            if exc.status == 409:
                raise KioskRefused(
                    "bill_unavailable", f"Bill {bill.bill_no} is already paid or being paid elsewhere"
                ) from None
            if exc.status == 422:
                raise KioskRefused("partial_payment", f"The back office refused the amount: {exc.message}") from None
            raise KioskRefused("hold_failed", f"The bill cannot be reserved now ({exc.code})") from None
        except UplinkError as exc:
            raise KioskRefused("hold_failed", f"The bill cannot be reserved now ({exc})") from None

    def _release(self, bill: Bill) -> None:
        try:
            self.back_office.release_bill(bill.bill_no)
        except UplinkError as exc:
            log.warning("hold of bill %s not released (it expires by itself): %s", bill.bill_no, exc)

    def _report_payment(self, bill_no: str, record: BatchRecord) -> tuple[bool, str]:
        """Report a stored payment; queue it when it cannot be delivered now. ``(confirmed, note)``."""
        doc = record.to_json()
        try:
            self.back_office.pay_bill(bill_no, doc)
        except RequestFailed as exc:
            if exc.status == 409:
                self.store.add_event(
                    "bill_conflict",
                    f"{bill_no}: paid by another record; this one is refunded by clearing",
                    at=self._clock(),
                )
                return False, "the bill was already paid: this payment will be refunded"
            if exc.retryable:
                self._queue(bill_no, doc)
                return False, "confirmation will follow"
            raise
        except UplinkError:
            self._queue(bill_no, doc)
            return False, "confirmation will follow"
        return True, ""

    def _queue(self, bill_no: str, doc: Mapping[str, object]) -> None:
        self.store.add_outbox(PAYMENT_OUTBOX, bill_no, json.dumps(doc, separators=(",", ":")), at=self._clock())

    def flush_payments(self) -> int:
        """Send the queued ``POST …/payment`` reports (docs/device-api.md, Bills); returns how many were delivered."""
        delivered = 0
        for item in self.store.outbox(PAYMENT_OUTBOX):
            try:
                self.back_office.pay_bill(item.key, json.loads(item.body))
            except RequestFailed as exc:
                if exc.retryable:
                    self.store.outbox_failed(item.item_id, str(exc))
                    break
                self.store.add_event("bill_conflict", f"{item.key}: {exc}", at=self.clock.now())
                self.store.outbox_done(item.item_id)
                continue
            except UplinkError as exc:
                self.store.outbox_failed(item.item_id, str(exc))
                break
            self.store.outbox_done(item.item_id)
            delivered += 1
        return delivered

    def card_public(self, channel: Channel) -> PublicData:
        """Read the card's EF 0015 (spec §2.1), to show whose card it is before paying."""
        card = UserCard(channel)
        card.select_purse()
        return card.read_public()
