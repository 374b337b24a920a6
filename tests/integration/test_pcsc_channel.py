"""The PC/SC plumbing end to end: pcscd + vpcd + a simulated card, driven through PcscChannel."""

from __future__ import annotations

import threading
from functools import reduce
from pathlib import Path

import pytest

from cardos.apdu import CommandAPDU
from cardos.interface import ContactlessCard
from cardos.memory import JOURNAL_MARK, Memory
from simulators.pcscd import Pcscd
from simulators.vpcd import TapResult, TearMode, VpcdSlot
from terminal.channel import PcscChannel, measure_round_trip
from terminal.errors import CardRemoved, ReaderUnavailable, WaitTimeout
from terminal.reader import PcscCardSource, card_present, wait_for_card, wait_for_removal

pytestmark = pytest.mark.pcsc

INS_CHAINED = 0xCA  # answers 61 05, then GET RESPONSE gives 5 bytes
INS_WRONG_LE = 0xCB  # answers 6C 08 unless Le is 08
INS_COMMIT = 0xE2  # writes one memory cell (4 physical writes), then 9000

CHAINED_DATA = bytes.fromhex("0102030405")
WRONG_LE_DATA = bytes.fromhex("A1A2A3A4A5A6A7A8")


class EchoCard:
    """A minimal ContactlessCard: ``9000`` to anything, plus three special instructions."""

    def __init__(self, serial: int = 1) -> None:
        body = bytes.fromhex("888001") + serial.to_bytes(8, "big")
        self.atr = b"\x3b" + body + bytes((reduce(lambda a, b: a ^ b, body),))
        self.memory = Memory()
        self.commands: list[bytes] = []
        self.powered = False
        self.power_ons = 0
        self._pending = b""

    def power_on(self) -> None:
        self.memory.recover()
        self.powered = True
        self.power_ons += 1
        self._pending = b""

    def power_off(self) -> None:
        self.powered = False
        self._pending = b""

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        ins = apdu[1]
        if ins == 0xC0:
            data, self._pending = self._pending, b""
            return data + b"\x90\x00" if data else b"\x69\x85"
        if ins == INS_CHAINED:
            self._pending = CHAINED_DATA
            return b"\x61\x05"
        if ins == INS_WRONG_LE:
            return WRONG_LE_DATA + b"\x90\x00" if apdu[4:] == b"\x08" else b"\x6c\x08"
        if ins == INS_COMMIT:
            txn = self.memory.begin()
            value = txn.get("counter") or b"\x00"
            txn.put("counter", bytes(((value[0] + 1) & 0xFF,)))
            txn.commit()
        return b"\x90\x00"

    @property
    def counter(self) -> int:
        value = self.memory.get("counter")
        return value[0] if value else 0


def _inserted(slot: VpcdSlot, card: EchoCard) -> PcscChannel:
    slot.insert(card)
    return wait_for_card(slot.reader_name, 5.0)


def test_transmit_and_atr(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard(serial=0x1122334455667788)
    with _inserted(vpcd_slot, card) as channel:
        assert channel.atr == card.atr
        assert channel.protocol == 2  # T=1
        response = channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, bytes.fromhex("A000000632010105")))
        assert response.sw == 0x9000
        assert response.data == b""
    assert card.commands == [bytes.fromhex("00A4040008A000000632010105")]


def test_get_response_chaining(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    with _inserted(vpcd_slot, card) as channel:
        response = channel.transmit(CommandAPDU(0x80, INS_CHAINED, 0x00, 0x00))
    assert (response.data, response.sw) == (CHAINED_DATA, 0x9000)
    assert card.commands == [bytes.fromhex("80CA0000"), bytes.fromhex("00C0000005")]


def test_wrong_le_is_retried(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    with _inserted(vpcd_slot, card) as channel:
        response = channel.transmit(CommandAPDU(0x80, INS_WRONG_LE, 0x00, 0x00, le=256))
    assert (response.data, response.sw) == (WRONG_LE_DATA, 0x9000)
    assert card.commands == [bytes.fromhex("80CB000000"), bytes.fromhex("80CB000008")]


def test_removal_is_detected(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    channel = _inserted(vpcd_slot, card)
    try:
        assert channel.transmit(CommandAPDU(0x00, 0x84, 0x00, 0x00, le=4)).sw == 0x9000
        vpcd_slot.remove()
        wait_for_removal(vpcd_slot.reader_name, 3.0, since=channel)
        assert not card_present(vpcd_slot.reader_name)
        with pytest.raises(CardRemoved):
            channel.transmit(CommandAPDU(0x00, 0x84, 0x00, 0x00, le=4))
        assert channel.closed  # the handle was released at once
    finally:
        channel.close()
    assert not card.powered
    with pytest.raises(WaitTimeout):
        wait_for_card(vpcd_slot.reader_name, 0.2)


def test_tap_of_three_cards(vpcd_slot: VpcdSlot) -> None:
    cards = [EchoCard(serial=n) for n in (1, 2, 3)]
    results: list[TapResult] = []
    tapper = threading.Thread(target=lambda: results.extend(vpcd_slot.tap(cards, dwell=10.0)))
    tapper.start()
    seen: list[bytes] = []
    try:
        for _ in cards:
            with wait_for_card(vpcd_slot.reader_name, 5.0) as channel:
                seen.append(channel.atr)
                assert channel.transmit(CommandAPDU(0x80, 0x5C, 0x00, 0x02, le=4)).sw == 0x9000
            wait_for_removal(vpcd_slot.reader_name, 5.0, since=channel)
    finally:
        tapper.join(15.0)
    assert seen == [card.atr for card in cards]
    assert [(r.commands, r.reason) for r in results] == [(1, "power-off")] * 3


def test_card_source_for_the_purse_terminal(vpcd_slot: VpcdSlot) -> None:
    cards = [EchoCard(serial=7), EchoCard(serial=8)]
    results: list[TapResult] = []
    tapper = threading.Thread(target=lambda: results.extend(vpcd_slot.tap(cards, dwell=10.0)))
    tapper.start()
    source = PcscCardSource(vpcd_slot.reader_name)
    try:
        for card in cards:
            channel = source.wait_for_card(5.0)
            assert channel.atr == card.atr
            assert channel.transmit(CommandAPDU(0x00, 0xB2, 0x01, 0xC4, le=256)).sw == 0x9000
            source.wait_for_removal(channel, 5.0)  # releases the card: the tap ends
            assert channel.closed
    finally:
        tapper.join(15.0)
    assert [r.reason for r in results] == ["power-off", "power-off"]


def test_tap_ends_when_done_says_so(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    results: list[TapResult] = []

    def two_commands(_: ContactlessCard) -> bool:
        return len(card.commands) >= 2

    tapper = threading.Thread(target=lambda: results.extend(vpcd_slot.tap([card], done=two_commands)))
    tapper.start()
    channel = wait_for_card(vpcd_slot.reader_name, 5.0)
    try:
        for _ in range(2):
            assert channel.transmit(CommandAPDU(0x00, 0xB0, 0x95, 0x00, le=256)).sw == 0x9000
        tapper.join(5.0)
        with pytest.raises(CardRemoved):
            channel.transmit(CommandAPDU(0x00, 0xB0, 0x95, 0x00, le=256))
    finally:
        channel.close()
    assert [(r.commands, r.reason) for r in results] == [(2, "done")]


def test_tear_drop_answer_after_commit(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    with _inserted(vpcd_slot, card) as channel:
        assert channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00)).sw == 0x9000
        tear = vpcd_slot.tear(TearMode.DROP_ANSWER, when=lambda apdu: apdu[1] == INS_COMMIT)
        assert channel.transmit(CommandAPDU(0x00, 0xB0, 0x95, 0x00, le=256)).sw == 0x9000  # not torn
        with pytest.raises(CardRemoved):
            channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00))
    assert tear.wait(1.0) and tear.fired
    assert tear.command == bytes.fromhex("80E20000")
    assert tear.response == bytes.fromhex("9000")
    assert card.counter == 2  # the card did process the torn command


def test_tear_before_command(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    with _inserted(vpcd_slot, card) as channel:
        tear = vpcd_slot.tear(TearMode.BEFORE_COMMAND)
        with pytest.raises(CardRemoved):
            channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00))
    assert tear.fired
    assert card.commands == []
    assert card.counter == 0


def test_tear_at_write_then_recovery(vpcd_slot: VpcdSlot, tmp_path: Path) -> None:
    image = tmp_path / "card.json"
    card = EchoCard()
    vpcd_slot.insert(card, image=image)
    with wait_for_card(vpcd_slot.reader_name, 5.0) as channel:
        # Writes: journal entry, commit mark, the cell, unmark. Power fails before the cell.
        tear = vpcd_slot.tear(TearMode.AT_WRITE, write_index=3)
        with pytest.raises(CardRemoved):
            channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00))
    assert tear.fired
    assert vpcd_slot.wait_removed(2.0)
    saved = Memory.load(image)
    assert saved.get(JOURNAL_MARK) is not None  # the torn state was kept
    assert saved.get("counter") is None
    wait_for_removal(vpcd_slot.reader_name, 3.0)

    card.memory = saved  # the same chip, back in the field: power-on recovery finishes the commit
    vpcd_slot.insert(card, image=image)
    with wait_for_card(vpcd_slot.reader_name, 5.0) as channel:
        assert channel.transmit(CommandAPDU(0x00, 0xB0, 0x95, 0x00, le=256)).sw == 0x9000
    assert card.counter == 1
    assert Memory.load(image).get(JOURNAL_MARK) is None


def test_tear_at_write_beyond_the_command(vpcd_slot: VpcdSlot) -> None:
    card = EchoCard()
    with _inserted(vpcd_slot, card) as channel:
        tear = vpcd_slot.tear(TearMode.AT_WRITE, write_index=5)  # the command makes only 4 writes
        assert channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00)).sw == 0x9000
        assert tear.applied and not tear.fired
        assert not card.memory.tear_armed
        assert channel.transmit(CommandAPDU(0x80, INS_COMMIT, 0x00, 0x00)).sw == 0x9000
    assert card.counter == 2


def test_unknown_reader(pcscd: Pcscd) -> None:
    with pytest.raises(ReaderUnavailable):
        PcscChannel("No Such Reader 00 00")
    with pytest.raises(ReaderUnavailable):
        wait_for_card("No Such Reader 00 00", 0.2)


def test_second_slot(vpcd_slot1: VpcdSlot) -> None:
    card = EchoCard(serial=0x99)
    vpcd_slot1.insert(card)
    with wait_for_card("Virtual PCD 00 01", 5.0) as channel:
        assert channel.atr == card.atr
        assert channel.transmit(CommandAPDU(0x80, 0x70, 0x00, 0x00, bytes(36))).sw == 0x9000


def test_round_trip_baseline(vpcd_slot: VpcdSlot, capsys: pytest.CaptureFixture[str]) -> None:
    card = EchoCard()
    vpcd_slot.insert(card)
    wait_for_card(vpcd_slot.reader_name, 5.0, disposition="leave").close()
    timing = measure_round_trip(vpcd_slot.reader_name, 300)
    assert len(timing.samples) == 300
    with capsys.disabled():
        print(f"\nPC/SC no-op round trip: {timing.as_dict()}")
    # Without TCP_QUICKACK each exchange would wait ~40 ms for a delayed ACK.
    assert timing.median < 0.005
