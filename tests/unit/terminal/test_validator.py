"""The bus validator in-process: fares on real card objects, refusals, repeat taps, storage, crashes, clocks."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import COUNTER_TERM_ID, issue_card, issue_psam, vector_keys

from cardos import crypto, perso
from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.batch import BatchRecord, RecordStatus
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from cardos.layout import CardType, KeyUsage, TransitRecord
from terminal.cards import PsamCard
from terminal.channel import Channel, InProcessChannel
from terminal.clock import ClockGuard
from terminal.fares import FareRuleError, FareTable
from terminal.field import InProcessField
from terminal.loadhost import KeyFileLoadHost
from terminal.personalise import personalise
from terminal.purse import PurseTerminal
from terminal.store import DeviceStore, HotlistEntry
from terminal.validator import CST, Refusal, TapStatus, Validator, ValidatorConfig

KEYS = vector_keys(Alg.DES)
TERM_ID = "031000000101"
ISSUER = KEYS.issuer_id.hex().upper()
FARES_DOC: dict[str, Any] = {
    "version": "2025-03.1",
    "operator_id": "OP-BUS-A",
    "service_day_starts": "04:00",
    "daily_cap": 1000,
    "transfer": {"window_minutes": 90, "max_transfers": 1, "discount": 100},
    "concessions": {"student": {"percent": 50}, "disabled": {"percent": 0}},
    "lines": {
        "12": {"kind": "flat", "fare": 200},
        "301": {
            "kind": "distance",
            "stations": [1, 2, 3],
            "fares": [[200, 200, 300], [200, 200, 200], [300, 200, 200]],
        },
    },
}
FARES = FareTable.from_json(FARES_DOC)
MONDAY = datetime(2025, 3, 3, 10, 0, tzinfo=CST)


class ManualWall:
    """A wall clock and a monotonic clock that the test moves."""

    def __init__(self, start: datetime = MONDAY) -> None:
        self.now = start
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def load(card: Card, amount: int) -> None:
    host = KeyFileLoadHost(KEYS, lambda: MONDAY)
    with InProcessChannel(card) as channel:
        PurseTerminal(clock=lambda: MONDAY).load(
            channel, amount, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="load"
        )


def make_card(number: int, *, card_type: int = CardType.ADULT, balance: int = 5_000, **dates: str) -> Card:
    card_no = f"0310{number:012d}"
    serial = number.to_bytes(8, "big")
    if dates:
        card = Card.factory(CardKind.USER, KEYS.alg, KEYS.keys["KT"], serial)
        profile = perso.user_card_profile(KEYS, card_no=card_no, card_type=card_type, **dates)
        with InProcessChannel(card) as channel:
            personalise(channel, KEYS.alg, KEYS.keys["KT"], perso.user_card_script(profile))
    else:
        card = issue_card(KEYS, card_no, serial=serial, card_type=card_type)
    if balance:
        load(card, balance)
    return card


@dataclass
class CardState:
    balance: int
    offline_seq: int
    transit: TransitRecord


def state(card: Card) -> CardState:
    with InProcessChannel(card) as channel:
        snap = PurseTerminal(clock=lambda: MONDAY).read(channel)
    assert snap.offline_seq is not None and snap.transit is not None
    return CardState(snap.balance, snap.offline_seq, snap.transit)


@dataclass
class Rig:
    """A validator with its PSAM, store file, clock and display, that can be 'restarted' on the same store."""

    tmp: Path
    line_id: int = 12
    capacity: int = 1_000
    wall: ManualWall = field(default_factory=ManualWall)
    psam: Card = field(default_factory=lambda: issue_psam(KEYS, TERM_ID))
    shown: list[str] = field(default_factory=list)
    card_field: InProcessField = field(default_factory=InProcessField)
    fares: FareTable = FARES
    validator: Validator = field(init=False)
    store: DeviceStore = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.store = DeviceStore(self.tmp / "validator.db", capacity=self.capacity)
        stations = (1, 2, 3) if self.line_id == 301 else (1,)
        config = ValidatorConfig(
            device_id="BUSA-V01",
            operator_id="OP-BUS-A",
            line_id=self.line_id,
            vehicle_id="BUS-0012",
            stations=stations,
            issuers=frozenset({ISSUER}),
            repeat_window=timedelta(seconds=30),
        )
        clock = ClockGuard(
            self.wall,
            tz=CST,
            floor=self.store.latest_time(),
            monotonic=self.wall.monotonic,
            report=lambda event: self.store.add_event(f"clock_{event.kind}", event.detail, at=event.issued),
        )
        psam = PsamCard(InProcessChannel(self.psam))
        psam.open()
        self.validator = Validator(
            config,
            self.fares,
            self.store,
            psam,
            clock,
            card_source=self.card_field,
            recovery_timeout=0.2,
            display=self.shown.append,
        )

    def restart(self) -> None:
        """What a process restart leaves: the store file and the PSAM; everything in memory is gone."""
        self.store.close()
        self.start()

    def tap(self, card: Card, *, after: float = 60.0) -> Any:
        self.wall.advance(after)
        return self.validator.tap(InProcessChannel(card))

    def records(self) -> list[BatchRecord]:
        return [stored.record for stored in self.store.records()]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.store.close()


@pytest.fixture
def distance_rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path, line_id=301)
    yield made
    made.store.close()


def tac_verifies(record: BatchRecord) -> bool:
    """The record's TAC is the card's, over the record's own term_seq, date and time (as clearing checks it)."""
    dtk = KEYS.card_key(KeyUsage.DTK, bytes.fromhex(record.card_no))
    tac = crypto.purchase_tac(
        Alg.DES,
        dtk,
        record.amount,
        int(record.txn_type, 16),
        bytes.fromhex(record.term_id),
        record.term_seq,
        bytes.fromhex(record.txn_date),
        bytes.fromhex(record.txn_time),
    )
    return tac.hex().upper() == record.tac


def test_flat_fare_is_charged_and_stored_before_it_is_shown(rig: Rig) -> None:
    card = make_card(1)
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.CHARGED and outcome.fare == 200 and outcome.balance_after == 4_800
    assert rig.shown == ["Fare ¥2.00 - balance ¥48.00"]
    [record] = rig.records()
    assert record == outcome.record
    assert (record.device_seq, record.amount, record.balance_before, record.txn_type) == (1, 200, 5_000, "09")
    assert (record.line_id, record.station_id, record.vehicle_id, record.term_id) == ("12", "1", "BUS-0012", TERM_ID)
    assert record.ref == "fares=2025-03.1;flat" and record.status is RecordStatus.OK
    assert rig.store.records()[0].fare_version == "2025-03.1"
    assert rig.store.intents() == []
    after = state(card)
    assert after.balance == 4_800 and after.offline_seq == 1
    assert after.transit.boarding_line == 12 and after.transit.cap_paid == 200
    assert tac_verifies(record)


def test_the_record_is_committed_before_the_rider_is_told(rig: Rig) -> None:
    seen_by_another_connection: list[int] = []

    def display(line: str) -> None:
        with DeviceStore(rig.store.path) as other:  # what a restarted process would find
            seen_by_another_connection.append(len(other.records()))

    rig.validator.display = display
    rig.tap(make_card(9))
    assert seen_by_another_connection == [1]


def test_store_failure_after_debit_is_not_shown_as_paid(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    card = make_card(10)

    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(rig.store, "record_intent", broken)
        outcome = rig.tap(card)
    assert outcome.status is TapStatus.UNCONFIRMED and state(card).offline_seq == 1
    assert rig.records() == [] and len(rig.store.intents()) == 1
    assert rig.tap(card, after=5).status is TapStatus.ALREADY_PAID
    assert [r.status for r in rig.records()] == [RecordStatus.PROOF]


def test_store_failure_before_debit_refuses_without_charging(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    card = make_card(11)

    def broken(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rig.store, "add_intent", broken)
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.REFUSED and outcome.message == "Tap refused: validator storage error"
    assert state(card).offline_seq == 0 and state(card).balance == 5_000


def test_distance_tap_in_then_tap_out(distance_rig: Rig) -> None:
    rig = distance_rig
    card = make_card(2, card_type=CardType.STUDENT)
    tap_in = rig.tap(card)
    assert tap_in.status is TapStatus.TAPPED_IN and tap_in.fare == 0
    assert tap_in.message == "Tapped in at stop 1 - balance ¥50.00"
    rig.validator.set_station(3)
    tap_out = rig.tap(card, after=600)
    assert tap_out.status is TapStatus.CHARGED and tap_out.fare == 150  # 300, student half
    records = rig.records()
    assert [(r.device_seq, r.card_seq, r.amount, r.station_id) for r in records] == [(1, 0, 0, "1"), (2, 1, 150, "3")]
    assert [r.ref for r in records] == ["fares=2025-03.1;tap-in", "fares=2025-03.1;tap-out"]
    assert state(card).transit.trip_state == TransitRecord.TRIP_OUT


def test_missing_tap_out_is_charged_at_the_next_tap_in(distance_rig: Rig) -> None:
    rig = distance_rig
    card = make_card(3)
    rig.tap(card)
    outcome = rig.tap(card, after=4 * 3600)  # past max_trip_minutes (180)
    assert outcome.status is TapStatus.TAPPED_IN and outcome.fare == 300
    assert outcome.message.startswith("Unfinished trip charged ¥3.00")
    assert outcome.record is not None and outcome.record.ref == "fares=2025-03.1;tap-in;pen=300"


def test_repeat_tap_within_the_window_charges_nothing(rig: Rig) -> None:
    card = make_card(4)
    rig.tap(card)
    again = rig.tap(card, after=10)
    assert again.status is TapStatus.ALREADY_PAID and again.message == "Already paid"
    assert state(card).offline_seq == 1 and len(rig.records()) == 1
    later = rig.tap(card, after=40)
    assert later.status is TapStatus.CHARGED and len(rig.records()) == 2


def test_hotlisted_card_is_refused_and_the_refusal_recorded(rig: Rig) -> None:
    card = make_card(5)
    rig.store.write_hotlist(
        version="7", full=True, entries=[HotlistEntry("0310000000000005", "2025-03-02T09:00:00+08:00", "lost")]
    )
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.REFUSED and outcome.refusal is Refusal.HOTLISTED
    assert "lost" in outcome.message
    assert rig.records() == [] and state(card).offline_seq == 0
    [event] = rig.store.events("refusal")
    assert event.card_no == "0310000000000005" and event.detail.startswith("hotlisted")


@pytest.mark.parametrize(
    ("dates", "refusal"),
    [
        ({"start_date": "20200101", "expiry_date": "20250302"}, Refusal.EXPIRED),
        ({"start_date": "20250304", "expiry_date": "20341231"}, Refusal.NOT_YET_VALID),
    ],
)
def test_card_outside_its_dates_is_refused(rig: Rig, dates: dict[str, str], refusal: Refusal) -> None:
    card = make_card(6, **dates)
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.REFUSED and outcome.refusal is refusal
    assert rig.records() == [] and state(card).offline_seq == 0
    assert len(rig.store.events("refusal")) == 1


def test_card_valid_on_its_expiry_day(rig: Rig) -> None:
    card = make_card(7, start_date="20200101", expiry_date="20250303")
    assert rig.tap(card).status is TapStatus.CHARGED


def test_unknown_issuer_is_refused(rig: Rig) -> None:
    other = IssuerKeys(bytes.fromhex("0420000000000000"), KEYS.alg, dict(KEYS.keys))
    card = issue_card(other, "0420000000000001")
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.REFUSED and outcome.refusal is Refusal.UNKNOWN_ISSUER
    assert rig.records() == []


def test_insufficient_balance_is_refused_without_a_record(rig: Rig) -> None:
    card = make_card(8, balance=150)
    outcome = rig.tap(card)
    assert outcome.status is TapStatus.REFUSED and outcome.refusal is Refusal.INSUFFICIENT_BALANCE
    assert outcome.message == "Insufficient balance: fare ¥2.00"
    assert rig.records() == [] and rig.store.intents() == [] and state(card).offline_seq == 0


def test_storage_full_refuses_taps_until_a_batch_is_acknowledged(tmp_path: Path) -> None:
    rig = Rig(tmp_path, capacity=2)
    cards = [make_card(20 + n) for n in range(3)]
    assert rig.tap(cards[0]).status is TapStatus.CHARGED
    assert rig.tap(cards[1]).status is TapStatus.CHARGED
    full = rig.tap(cards[2])
    assert full.status is TapStatus.REFUSED and full.refusal is Refusal.STORAGE_FULL
    assert "storage full" in full.message
    assert state(cards[2]).offline_seq == 0 and len(rig.records()) == 2
    [batch] = rig.store.close_batches(device_id="BUSA-V01", operator_id="OP-BUS-A", created_at=MONDAY, sign=str)
    assert rig.tap(cards[2]).status is TapStatus.REFUSED  # batched is not acknowledged
    rig.store.batch_acknowledged(batch.batch_id, at=MONDAY)
    assert rig.tap(cards[2]).status is TapStatus.CHARGED
    assert [r.device_seq for r in rig.records()] == [3]
    rig.store.close()


# --- crashes: the process dies at a chosen command ---------------------------------------------------------


class Killed(BaseException):
    """The validator process died (SIGKILL): nothing after this point runs."""


class DyingChannel:
    """A channel whose process dies before sending, or right after receiving, the command with ``ins``."""

    def __init__(self, inner: Channel, ins: int, *, after: bool) -> None:
        self.inner = inner
        self.ins = ins
        self.after = after

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def transmit(self, cmd: CommandAPDU) -> ResponseAPDU:
        if cmd.ins == self.ins and not self.after:
            raise Killed
        response = self.inner.transmit(cmd)
        if cmd.ins == self.ins and self.after:
            raise Killed
        return response

    def close(self) -> None:
        self.inner.close()


DEBIT = 0x54


def _die_during_tap(rig: Rig, card: Card, *, after: bool) -> None:
    rig.wall.advance(60)
    with pytest.raises(Killed):
        rig.validator.tap(DyingChannel(InProcessChannel(card), DEBIT, after=after))
    rig.restart()


def test_killed_after_debit_the_card_is_recorded_once_when_it_returns(rig: Rig) -> None:
    card = make_card(30)
    _die_during_tap(rig, card, after=True)
    assert state(card).offline_seq == 1  # the card was charged…
    assert rig.records() == [] and len(rig.store.intents()) == 1  # …and only the intent survived
    outcome = rig.tap(card, after=45)
    assert outcome.status is TapStatus.ALREADY_PAID and "earlier tap confirmed" in outcome.message
    [record] = rig.records()
    assert record.status is RecordStatus.PROOF and record.card_seq == 0 and record.amount == 200
    assert tac_verifies(record) and record.device_seq == 1
    assert rig.store.intents() == [] and state(card).offline_seq == 1 and state(card).balance == 4_800
    # a later tap is an ordinary new fare
    assert rig.tap(card, after=3600).status is TapStatus.CHARGED
    assert [r.device_seq for r in rig.records()] == [1, 2]


class DyingField:
    """The card comes back to the field after a tear, in a channel whose process dies after DEBIT."""

    def __init__(self, card: Card) -> None:
        self.card = card

    def wait_for_card(self, timeout: float) -> Channel:
        return DyingChannel(InProcessChannel(self.card), DEBIT, after=True)

    def wait_for_removal(self, channel: Channel, timeout: float) -> None:
        channel.close()


def test_killed_after_a_retried_debit_the_intent_is_the_retry(rig: Rig) -> None:
    card = make_card(37)
    card.memory.arm_tear(1)  # the first DEBIT does nothing; the card comes back, the purchase is retried…
    rig.validator.terminal.card_source = DyingField(card)
    rig.wall.advance(60)
    with pytest.raises(Killed):  # …and the process dies right after the retried DEBIT
        rig.validator.tap(InProcessChannel(card))
    card.memory.arm_tear(None)
    rig.restart()
    [intent] = rig.store.intents()
    assert intent.draft.term_seq == 2  # the PSAM's second term_seq: the retry's, not the first attempt's
    assert rig.tap(card, after=30).status is TapStatus.ALREADY_PAID
    [record] = rig.records()
    assert record.status is RecordStatus.PROOF and record.term_seq == 2 and tac_verifies(record)
    assert state(card).offline_seq == 1


def test_killed_before_debit_no_record_and_the_next_tap_charges(rig: Rig) -> None:
    card = make_card(31)
    _die_during_tap(rig, card, after=False)
    assert state(card).offline_seq == 0 and len(rig.store.intents()) == 1
    outcome = rig.tap(card, after=45)
    assert outcome.status is TapStatus.CHARGED
    [record] = rig.records()
    assert record.status is RecordStatus.OK and record.device_seq == 1  # no device_seq was spent on the intent
    assert state(card).offline_seq == 1 and state(card).balance == 4_800
    assert len(rig.store.events("intent_dropped")) == 1


def test_killed_after_debit_card_used_elsewhere_then_back(rig: Rig) -> None:
    card = make_card(32)
    _die_during_tap(rig, card, after=True)
    other_psam = PsamCard(InProcessChannel(issue_psam(KEYS, "031000000999")))
    with InProcessChannel(card) as channel:
        PurseTerminal(clock=lambda: MONDAY, psam=other_psam).purchase(channel, 50)  # replaces the proof
    outcome = rig.tap(card, after=45)
    assert outcome.status is TapStatus.ALREADY_PAID  # the card's log shows the fare was taken here
    [record] = rig.records()
    assert record.status is RecordStatus.UNCONFIRMED and record.tac == "" and record.card_seq == 0


def test_killed_before_debit_card_used_elsewhere_is_not_charged(rig: Rig) -> None:
    card = make_card(33)
    _die_during_tap(rig, card, after=False)
    other_psam = PsamCard(InProcessChannel(issue_psam(KEYS, "031000000999")))
    with InProcessChannel(card) as channel:
        PurseTerminal(clock=lambda: MONDAY, psam=other_psam).purchase(channel, 50)  # uses seq 0 elsewhere
    outcome = rig.tap(card, after=45)
    assert outcome.status is TapStatus.CHARGED
    assert [(r.card_seq, r.status) for r in rig.records()] == [(1, RecordStatus.OK)]


def test_killed_after_debit_card_never_returns_becomes_unconfirmed(rig: Rig) -> None:
    card = make_card(34)
    _die_during_tap(rig, card, after=True)
    rig.wall.advance(3600)
    assert rig.validator.housekeeping() == []
    rig.wall.advance(24 * 3600)
    [made] = rig.validator.housekeeping()
    assert made.status is RecordStatus.UNCONFIRMED and made.device_seq == 1 and made.tac == ""
    assert rig.store.intents() == []


def test_tear_at_debit_recovered_while_the_rider_holds_on(rig: Rig) -> None:
    card = make_card(35)
    card.memory.arm_tear(3)  # power lost inside DEBIT's commit
    rig.card_field.present(card)
    outcome = rig.tap(card)
    card.memory.arm_tear(None)
    assert outcome.status is TapStatus.CHARGED
    [record] = rig.records()
    assert state(card).offline_seq == 1 and record.card_seq == 0 and tac_verifies(record)
    assert rig.store.intents() == []


def test_torn_card_that_does_not_come_back_is_settled_at_its_next_tap(rig: Rig) -> None:
    card = make_card(36)
    card.memory.arm_tear(1)  # the first write of DEBIT fails: nothing happened on the card
    outcome = rig.tap(card)
    card.memory.arm_tear(None)
    assert outcome.status is TapStatus.UNCONFIRMED and outcome.message == "Fare not confirmed - tap the card again"
    assert rig.records() == [] and len(rig.store.intents()) == 1
    again = rig.tap(card, after=20)
    assert again.status is TapStatus.CHARGED  # not charged before, so charged now, once
    assert len(rig.records()) == 1 and state(card).offline_seq == 1 and state(card).balance == 4_800


# --- clocks ------------------------------------------------------------------------------------------------


def test_clock_running_backwards_never_dates_a_record_earlier(rig: Rig) -> None:
    cards = [make_card(40 + n) for n in range(3)]
    rig.tap(cards[0])
    rig.wall.now -= timedelta(hours=2)  # the RTC jumps back; the monotonic clock keeps going
    rig.wall.mono += 5
    rig.tap(cards[1], after=0)
    rig.restart()  # and after a restart too
    rig.tap(cards[2], after=0)
    times = [datetime.strptime(r.txn_date + r.txn_time, "%Y%m%d%H%M%S") for r in rig.records()]
    assert times == sorted(times) and times[1] == times[0] + timedelta(seconds=5)
    assert len(rig.store.events("clock_backwards")) == 2
    assert rig.validator.status()["clock_backwards"] == 1


def test_clock_far_from_the_server_is_reported_and_corrected(rig: Rig) -> None:
    card = make_card(45)
    server_time = rig.wall.now + timedelta(days=400)  # the device clock is 400 days behind
    rig.validator.clock.observe_server_time(server_time, rig.wall.now)
    assert rig.validator.status()["clock_skew"] == 400 * 86400
    outcome = rig.tap(card, after=0)
    assert outcome.record is not None and outcome.record.txn_date == server_time.strftime("%Y%m%d")
    assert len(rig.store.events("clock_skew")) == 1
    rig.validator.clock.observe_server_time(rig.wall.now + timedelta(seconds=2), rig.wall.now)
    assert rig.validator.status()["clock_skew"] is None


# --- fare tables -------------------------------------------------------------------------------------------


def test_new_fare_table_applies_from_the_next_tap_and_is_recorded(rig: Rig) -> None:
    card = make_card(50)
    doc = copy.deepcopy(FARES_DOC)
    doc["version"] = "2025-04.1"
    doc["lines"]["12"]["fare"] = 250
    rig.validator.offer_fares(FareTable.from_json(doc))
    outcome = rig.tap(card)
    assert outcome.fare == 250 and outcome.record is not None and outcome.record.ref.startswith("fares=2025-04.1;")
    assert rig.store.records()[0].fare_version == "2025-04.1"
    doc["lines"] = {"99": {"kind": "flat", "fare": 100}}
    with pytest.raises(FareRuleError):
        rig.validator.offer_fares(FareTable.from_json(doc))


def test_status_reports_storage_and_versions(rig: Rig) -> None:
    rig.tap(make_card(51))
    status = rig.validator.status()
    assert status["fare_version"] == "2025-03.1" and status["pending"] == 1 and status["storage_full"] is False
    assert rig.store.pragma("journal_mode") == "wal" and rig.store.pragma("synchronous") == "2"  # FULL
