"""The utility kiosk end to end against a fake back office speaking the device API (docs/device-api.md, Bills)."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import COUNTER_TERM_ID, issue_card, issue_psam, vector_keys

from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.card import Card
from cardos.crypto import Alg
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.clock import ClockGuard
from terminal.errors import CardRemoved
from terminal.kiosk import Kiosk, KioskConfig, KioskRefused
from terminal.loadhost import KeyFileLoadHost
from terminal.purse import PurseTerminal
from terminal.store import DeviceStore, HotlistEntry
from terminal.uplink import Bill, DeviceClient, HttpResponse, NetworkUnavailable
from terminal.validator import CST

KEYS = vector_keys(Alg.SM4)
DEVICE = "WATER-K01"
KEY = bytes(range(100, 132))
TERM_ID = "031000000201"
NOW = datetime(2025, 3, 3, 10, 0, tzinfo=CST)


def _error(status: int, code: str) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps({"error": {"code": code, "message": code, "details": {}}}).encode())


@dataclass
class FakeBillServer:
    """The bill endpoints: holds, one payment per bill, signed requests; can be taken offline."""

    bills: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, str] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    online: bool = True
    calls: list[str] = field(default_factory=list)

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        if not self.online:
            raise NetworkUnavailable("no route to host")
        timestamp = headers["X-Timestamp"]
        message = f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        if headers["X-Signature"] != hmac.new(KEY, message, hashlib.sha256).hexdigest():
            return _error(401, "unauthorized")
        device = headers["X-Device-Id"]
        url = urllib.parse.urlsplit(path)
        parts = url.path.strip("/").split("/")
        self.calls.append(f"{method} {url.path}")
        if method == "GET" and parts == ["devices", "bills"]:
            query = dict(urllib.parse.parse_qsl(url.query))
            found = [
                b
                for b in self.bills.values()
                if b["utility"] == query["utility"] and b["account"] == query["account"] and b["status"] == "open"
            ]
            return HttpResponse(200, {}, json.dumps({"bills": found}).encode())
        if len(parts) == 4 and parts[:2] == ["devices", "bills"]:
            bill = self.bills.get(urllib.parse.unquote(parts[2]))
            if bill is None:
                return _error(404, "not_found")
            if parts[3] == "hold" and method == "POST":
                amount = json.loads(body)["amount"]
                if bill["status"] != "open" or self.holds.get(bill["bill_no"], device) != device:
                    return _error(409, "conflict")
                if amount != bill["amount_due"]:
                    return _error(422, "partial_payment")
                self.holds[bill["bill_no"]] = device
                return HttpResponse(200, {}, b"{}")
            if parts[3] == "hold" and method == "DELETE":
                self.holds.pop(bill["bill_no"], None)
                return HttpResponse(204, {}, b"")
            if parts[3] == "payment" and method == "POST":
                record = json.loads(body)
                paid = self.payments.get(bill["bill_no"])
                if paid is not None:
                    return HttpResponse(200, {}, b"{}") if paid == record else _error(409, "conflict")
                if record["ref"] != bill["bill_no"] or record["amount"] != bill["amount_due"]:
                    return _error(422, "invalid_input")
                self.payments[bill["bill_no"]] = record
                bill["status"] = "paid"
                self.holds.pop(bill["bill_no"], None)
                return HttpResponse(200, {}, b"{}")
        return _error(404, "not_found")


def _bill(bill_no: str, amount: int, utility: str = "water", account: str = "A-1001") -> dict[str, Any]:
    return {
        "bill_no": bill_no,
        "utility": utility,
        "account": account,
        "period": "2025-02",
        "amount_due": amount,
        "status": "open",
    }


@dataclass
class KioskRig:
    server: FakeBillServer
    kiosk: Kiosk
    store: DeviceStore


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[KioskRig]:
    server = FakeBillServer(bills={"W-0001": _bill("W-0001", 12_345), "G-0002": _bill("G-0002", 800, "gas")})
    store = DeviceStore(tmp_path / "kiosk.db")
    clock = ClockGuard(lambda: NOW, tz=CST)
    client = DeviceClient(server, DEVICE, KEY, wall=clock.corrected_wall)
    psam = PsamCard(InProcessChannel(issue_psam(KEYS, TERM_ID)))
    config = KioskConfig(DEVICE, "OP-WATER", frozenset({KEYS.issuer_id.hex().upper()}))
    yield KioskRig(server, Kiosk(config, client, store, psam, clock, recovery_timeout=0.1), store)
    store.close()


def make_card(number: int, balance: int) -> Card:
    card = issue_card(KEYS, f"0310{number:012d}", serial=number.to_bytes(8, "big"))
    host = KeyFileLoadHost(KEYS, lambda: NOW)
    with InProcessChannel(card) as channel:
        PurseTerminal(clock=lambda: NOW).load(
            channel, balance, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l"
        )
    return card


def card_state(card: Card) -> tuple[int, int | None]:
    with InProcessChannel(card) as channel:
        snap = PurseTerminal(clock=lambda: NOW).read(channel)
    return snap.balance, snap.offline_seq


def test_bill_paid_end_to_end(rig: KioskRig) -> None:
    card = make_card(1, 20_000)
    [bill] = rig.kiosk.find_bills("water", "A-1001")
    assert (bill.bill_no, bill.amount_due, bill.period) == ("W-0001", 12_345, "2025-02")
    receipt = rig.kiosk.pay(InProcessChannel(card), bill, 12_345)
    assert receipt.confirmed and receipt.balance_after == 20_000 - 12_345
    assert card_state(card) == (20_000 - 12_345, 1)
    record = receipt.record
    assert (record.ref, record.amount, record.txn_type, record.term_id, record.device_seq) == (
        "W-0001",
        12_345,
        "06",
        TERM_ID,
        1,
    )
    assert [s.record for s in rig.store.records()] == [record]  # stored, for the kiosk's batch
    assert rig.server.payments["W-0001"] == record.to_json()
    assert rig.server.bills["W-0001"]["status"] == "paid" and rig.server.holds == {}
    text = receipt.text()
    for expected in ("W-0001", "¥123.45", "水费", "0310********0001", "¥76.55", record.tac, "paid 已缴费"):
        assert expected in text
    assert rig.kiosk.find_bills("water", "A-1001") == []  # paid bills are no longer open


def test_second_payment_of_the_same_bill_is_refused_and_the_card_not_charged(rig: KioskRig) -> None:
    first, second = make_card(2, 20_000), make_card(3, 20_000)
    [bill] = rig.kiosk.find_bills("water", "A-1001")
    rig.kiosk.pay(InProcessChannel(first), bill, bill.amount_due)
    before = card_state(second)
    with pytest.raises(KioskRefused) as refused:
        rig.kiosk.pay(InProcessChannel(second), bill, bill.amount_due)  # the bill as shown before it was paid
    assert refused.value.code == "bill_unavailable" and refused.value.charged is False
    assert card_state(second) == before
    assert len(rig.store.records()) == 1 and rig.store.intents() == []
    paid = Bill.from_json(rig.server.bills["W-0001"])
    with pytest.raises(KioskRefused) as not_open:
        rig.kiosk.pay(InProcessChannel(second), paid, paid.amount_due)
    assert not_open.value.code == "bill_not_open" and card_state(second) == before


def test_partial_payment_is_refused_before_anything(rig: KioskRig) -> None:
    card = make_card(4, 20_000)
    [bill] = rig.kiosk.find_bills("water", "A-1001")
    calls = len(rig.server.calls)
    with pytest.raises(KioskRefused) as refused:
        rig.kiosk.pay(InProcessChannel(card), bill, 10_000)
    assert refused.value.code == "partial_payment"
    assert len(rig.server.calls) == calls and card_state(card) == (20_000, 0)


def test_without_network_the_kiosk_refuses_before_charging(rig: KioskRig) -> None:
    card = make_card(5, 20_000)
    [bill] = rig.kiosk.find_bills("gas", "A-1001")
    rig.server.online = False
    with pytest.raises(KioskRefused) as lookup:
        rig.kiosk.find_bills("gas", "A-1001")
    assert lookup.value.code == "no_network"
    with pytest.raises(KioskRefused) as pay:
        rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)
    assert pay.value.code == "no_network" and "not charged" in pay.value.message
    assert card_state(card) == (20_000, 0) and rig.store.records() == [] and rig.store.intents() == []


def test_card_refusal_releases_the_hold(rig: KioskRig) -> None:
    card = make_card(6, 500)
    [bill] = rig.kiosk.find_bills("gas", "A-1001")
    with pytest.raises(KioskRefused) as refused:
        rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)
    assert refused.value.code == "card_refused" and "Insufficient balance" in refused.value.message
    assert rig.server.holds == {} and "DELETE /devices/bills/G-0002/hold" in rig.server.calls
    assert card_state(card) == (500, 0) and rig.store.records() == []


def test_hotlisted_card_cannot_pay(rig: KioskRig) -> None:
    card = make_card(7, 20_000)
    rig.store.write_hotlist(version="1", full=True, entries=[HotlistEntry("0310000000000007", "", "stolen")])
    [bill] = rig.kiosk.find_bills("gas", "A-1001")
    with pytest.raises(KioskRefused) as refused:
        rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)
    assert refused.value.code == "hotlisted" and rig.server.holds == {} and card_state(card) == (20_000, 0)


class DropsAfterHold:
    """The network fails right after the hold: the card is charged, the payment report must wait."""

    def __init__(self, server: FakeBillServer) -> None:
        self.server = server

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        response = self.server.send(method, path, headers, body)
        if path.endswith("/hold") and method == "POST":
            self.server.online = False
        return response


def test_payment_report_waits_in_the_outbox_when_the_network_drops(rig: KioskRig) -> None:
    card = make_card(8, 20_000)
    [bill] = rig.kiosk.find_bills("gas", "A-1001")
    client = rig.kiosk.back_office
    assert isinstance(client, DeviceClient)
    client.transport = DropsAfterHold(rig.server)
    receipt = rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)
    assert not receipt.confirmed and "confirmation pending" in receipt.text()
    assert card_state(card) == (20_000 - 800, 1) and len(rig.store.outbox()) == 1
    assert rig.kiosk.flush_payments() == 0  # still offline
    rig.server.online = True
    assert rig.kiosk.flush_payments() == 1
    assert rig.server.bills["G-0002"]["status"] == "paid" and rig.store.outbox() == []
    assert rig.server.payments["G-0002"]["ref"] == "G-0002"


class AnswerLost:
    """The card performs DEBIT but leaves the reader before its answer arrives."""

    def __init__(self, inner: InProcessChannel) -> None:
        self.inner = inner

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def transmit(self, cmd: CommandAPDU) -> ResponseAPDU:
        response = self.inner.transmit(cmd)
        if cmd.ins == 0x54:
            self.inner.close()
            raise CardRemoved("the card left before answering DEBIT")
        return response

    def close(self) -> None:
        self.inner.close()


def test_payment_whose_answer_was_lost_is_recovered_when_the_card_returns(rig: KioskRig) -> None:
    card = make_card(10, 20_000)
    [bill] = rig.kiosk.find_bills("water", "A-1001")
    with pytest.raises(KioskRefused) as unknown:
        rig.kiosk.pay(AnswerLost(InProcessChannel(card)), bill, bill.amount_due)
    assert unknown.value.code == "unconfirmed" and unknown.value.charged is None
    assert card_state(card) == (20_000 - 12_345, 1) and rig.store.records() == []
    assert rig.server.bills["W-0001"]["status"] == "open"  # not reported: the kiosk did not know yet
    receipt = rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)  # the card presented again
    assert receipt.confirmed and receipt.record.status == "proof" and receipt.balance_after == 20_000 - 12_345
    assert card_state(card) == (20_000 - 12_345, 1), "charged once"
    assert rig.server.payments["W-0001"] == receipt.record.to_json()
    assert [s.record for s in rig.store.records()] == [receipt.record] and rig.store.intents() == []


def test_unknown_utility_is_refused(rig: KioskRig) -> None:
    with pytest.raises(KioskRefused):
        rig.kiosk.find_bills("heating", "A-1001")
    assert rig.server.calls == []


def test_time_on_receipt_is_the_payment_time(rig: KioskRig) -> None:
    card = make_card(9, 20_000)
    [bill] = rig.kiosk.find_bills("water", "A-1001")
    receipt = rig.kiosk.pay(InProcessChannel(card), bill, bill.amount_due)
    assert receipt.paid_at == NOW and receipt.record.txn_date + receipt.record.txn_time == "20250303100000"
    assert NOW - timedelta(seconds=1) < receipt.paid_at <= NOW
