"""VpcdSlot against a fake vpcd driver (a local TCP server): framing, controls, robustness, tears."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import simulators.vpcd as vpcd
from cardos.memory import Memory
from simulators.vpcd import TearMode, VpcdSlot, VpcdUnavailable

ATR = bytes.fromhex("3B888001000000000000000109")


class Card:
    def __init__(self) -> None:
        self.atr = ATR
        self.memory = Memory()
        self.events: list[str] = []

    def power_on(self) -> None:
        self.memory.recover()
        self.events.append("on")

    def power_off(self) -> None:
        self.events.append("off")

    def transmit(self, apdu: bytes) -> bytes:
        self.events.append(apdu.hex().upper())
        if apdu[1] == 0xEE:
            raise RuntimeError("card bug")
        if apdu[1] == 0xEF:
            return b""
        if apdu[1] == 0xE2:
            txn = self.memory.begin()
            txn.put("cell", apdu[5:] or b"\x01")
            txn.commit()
        return b"\x90\x00"


class Driver:
    """The reader side of one vpcd connection."""

    def __init__(self, server: socket.socket) -> None:
        server.settimeout(5.0)
        self.sock, _ = server.accept()
        self.sock.settimeout(2.0)

    def send(self, payload: bytes) -> None:
        # Like Debian's driver: the length and the body in two writes.
        self.sock.sendall(struct.pack(">H", len(payload)))
        self.sock.sendall(payload)

    def recv(self) -> bytes | None:
        header = self._exact(2)
        if header is None:
            return None
        body = self._exact(struct.unpack(">H", header)[0])
        return body

    def ask(self, payload: bytes) -> bytes | None:
        self.send(payload)
        return self.recv()

    def _exact(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


@pytest.fixture
def slot(server: socket.socket) -> Iterator[VpcdSlot]:
    port = server.getsockname()[1]
    the_slot = VpcdSlot(0, port=port, connect_timeout=2.0, poll_gap=0.0)
    yield the_slot
    the_slot.close(timeout=0.5)
    vpcd._port_ready_at.pop(("127.0.0.1", port), None)


def test_controls_and_commands(slot: VpcdSlot, server: socket.socket) -> None:
    card = Card()
    slot.insert(card)
    driver = Driver(server)
    assert driver.ask(b"\x04") == ATR
    driver.send(b"\x01")
    assert driver.ask(bytes.fromhex("00A4000002 3F00".replace(" ", ""))) == b"\x90\x00"
    driver.send(b"\x02")
    driver.send(b"\x00")
    assert driver.ask(b"\x04") == ATR
    assert card.events == ["on", "00A40000023F00", "on", "off"]
    assert slot.wait_finished(1.0) == "power-off"
    slot.remove()
    assert card.events[-1] == "off"
    assert driver.recv() is None  # the card left: end of stream
    driver.close()


def test_malformed_messages_do_not_stop_the_card(slot: VpcdSlot, server: socket.socket) -> None:
    card = Card()
    slot.insert(card)
    driver = Driver(server)
    driver.send(b"")  # nothing to answer
    driver.send(b"\x07")  # unknown control: ignored
    assert driver.ask(b"\x00\xb0") == b"\x67\x00"  # too short for an APDU
    assert driver.ask(bytes.fromhex("00EE0000")) == b"\x6f\x00"  # the card raised
    assert driver.ask(bytes.fromhex("00EF0000")) == b"\x6f\x00"  # the card answered nothing
    assert driver.ask(bytes.fromhex("0084000004")) == b"\x90\x00"
    assert slot.card is card
    driver.close()


def test_removal_then_presence_poll_is_clean(slot: VpcdSlot, server: socket.socket) -> None:
    slot.poll_gap = 5.0
    slot.insert(Card())
    driver = Driver(server)
    driver.send(b"\x01")
    assert driver.ask(b"\x04") == ATR
    slot.remove()
    assert slot.wait_removed(1.0)
    assert driver.ask(b"\x04") is None  # the presence poll finds the card gone
    driver.close()
    slot.close(timeout=1.0)
    assert vpcd._port_ready_at.get(("127.0.0.1", slot.port), 0.0) <= time.monotonic()


def test_tear_before_command(slot: VpcdSlot, server: socket.socket) -> None:
    slot.poll_gap = 5.0
    card = Card()
    slot.insert(card)
    driver = Driver(server)
    driver.send(b"\x01")
    tear = slot.tear(TearMode.BEFORE_COMMAND, when=lambda apdu: apdu[1] == 0xE2)
    assert driver.ask(bytes.fromhex("00B0950000")) == b"\x90\x00"
    assert driver.ask(bytes.fromhex("80E2000001AA")) is None
    assert tear.wait(1.0) and tear.fired
    assert card.memory.get("cell") is None
    assert card.events == ["on", "00B0950000", "off"]
    driver.close()
    slot.close(timeout=1.0)
    # The driver noticed the absence inside a command: the next card waits for a presence poll.
    assert vpcd._port_ready_at[("127.0.0.1", slot.port)] > time.monotonic() + 4.0


def test_tear_drop_answer_commits(slot: VpcdSlot, server: socket.socket, tmp_path: Path) -> None:
    image = tmp_path / "card.json"
    card = Card()
    slot.insert(card, image=image)
    driver = Driver(server)
    driver.send(b"\x01")
    tear = slot.tear(TearMode.DROP_ANSWER)
    assert driver.ask(bytes.fromhex("80E2000001BB")) is None
    assert tear.fired and tear.response == b"\x90\x00"
    assert card.memory.get("cell") == b"\xbb"
    assert Memory.load(image).get("cell") == b"\xbb"
    driver.close()


def test_tear_at_write(slot: VpcdSlot, server: socket.socket, tmp_path: Path) -> None:
    image = tmp_path / "card.json"
    card = Card()
    slot.insert(card, image=image)
    driver = Driver(server)
    driver.send(b"\x01")
    tear = slot.tear(TearMode.AT_WRITE, write_index=2)  # before the commit mark
    assert driver.ask(bytes.fromhex("80E2000001CC")) is None
    assert tear.fired
    assert not card.memory.tear_armed
    assert card.events[-1] == "80E2000001CC"  # power was lost: no power_off
    driver.close()
    slot.close(timeout=1.0)
    card.memory = Memory.load(image)
    card.power_on()  # recovery forgets the unmarked journal
    assert card.memory.get("cell") is None


def test_power_loss_armed_on_the_card(slot: VpcdSlot, server: socket.socket) -> None:
    card = Card()
    slot.insert(card)
    driver = Driver(server)
    driver.send(b"\x01")
    card.memory.arm_tear(1)
    assert driver.ask(bytes.fromhex("80E2000001DD")) is None
    assert slot.wait_removed(1.0)
    driver.close()


def test_tear_arguments_are_checked(slot: VpcdSlot) -> None:
    with pytest.raises(ValueError):
        slot.tear(TearMode.AT_WRITE)
    with pytest.raises(ValueError):
        slot.tear(TearMode.DROP_ANSWER, write_index=1)


def test_second_insert_needs_removal(slot: VpcdSlot, server: socket.socket) -> None:
    slot.insert(Card())
    driver = Driver(server)
    with pytest.raises(RuntimeError):
        slot.insert(Card())
    driver.close()


def test_unreachable_driver() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    slot = VpcdSlot(1, port=port, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(VpcdUnavailable, match="Virtual PCD 00 01"):
        slot.insert(Card())
    assert time.monotonic() - started < 2.0
