"""InProcessChannel: chaining, tracing and redaction, power and tearing, error types."""

from __future__ import annotations

import logging

import pytest

from cardos.apdu import CommandAPDU
from cardos.memory import Memory
from cardos.sw import SW
from terminal.channel import Channel, InProcessChannel, command_name, redact
from terminal.errors import CardRemoved, CardStatusError, TerminalError, check_sw

ATR = bytes.fromhex("3B888001A1A2A3A4A5A6A7A8") + b"\x00"


class ScriptedCard:
    """Answers from a script keyed by INS; records power and commands."""

    def __init__(self) -> None:
        self.atr = ATR
        self.memory = Memory()
        self.events: list[str] = []
        self.commands: list[bytes] = []
        self._chunks: list[bytes] = []
        self._endless = False

    def power_on(self) -> None:
        self.events.append("on")

    def power_off(self) -> None:
        self.events.append("off")

    def transmit(self, apdu: bytes) -> bytes:
        self.commands.append(apdu)
        ins = apdu[1]
        if ins == 0xCA:  # 12 bytes in three GET RESPONSE pieces
            self._chunks = [b"\x01" * 4, b"\x02" * 4, b"\x03" * 4]
            return b"\x61\x04"
        if ins == 0xC0 and self._endless:
            return b"\x00\x61\x01"
        if ins == 0xC0:
            chunk = self._chunks.pop(0)
            return chunk + (b"\x61\x04" if self._chunks else b"\x90\x00")
        if ins == 0xCB:
            return b"\xaa" * 3 + b"\x90\x00" if apdu[-1:] == b"\x03" and len(apdu) == 5 else b"\x6c\x03"
        if ins == 0xCC:  # a broken card that never stops chaining
            self._endless = True
            return b"\x61\x01"
        if ins == 0xE2:
            txn = self.memory.begin()
            txn.put("cell", b"\x01")
            txn.commit()
        return b"\x90\x00"


def test_power_and_atr() -> None:
    card = ScriptedCard()
    channel: Channel = InProcessChannel(card)
    assert channel.atr == ATR
    assert card.events == ["on"]
    channel.close()
    channel.close()
    assert card.events == ["on", "off"]
    with pytest.raises(CardRemoved):
        channel.transmit(CommandAPDU(0x00, 0xA4, 0x00, 0x00, b"\x3f\x00"))


def test_get_response_chain_is_concatenated() -> None:
    card = ScriptedCard()
    with InProcessChannel(card) as channel:
        response = channel.transmit(CommandAPDU(0x80, 0xCA, 0x00, 0x00))
    assert response.sw == SW.OK
    assert response.data == b"\x01" * 4 + b"\x02" * 4 + b"\x03" * 4
    assert card.commands[1:] == [bytes.fromhex("00C0000004")] * 3


def test_wrong_le_is_resent() -> None:
    card = ScriptedCard()
    with InProcessChannel(card) as channel:
        response = channel.transmit(CommandAPDU(0x80, 0xCB, 0x00, 0x00, le=256))
    assert (response.data, response.sw) == (b"\xaa" * 3, SW.OK)
    assert card.commands == [bytes.fromhex("80CB000000"), bytes.fromhex("80CB000003")]


def test_endless_chain_is_an_error() -> None:
    with InProcessChannel(ScriptedCard()) as channel, pytest.raises(TerminalError, match="GET RESPONSE"):
        channel.transmit(CommandAPDU(0x80, 0xCC, 0x00, 0x00))


def test_power_loss_is_card_removed() -> None:
    card = ScriptedCard()
    channel = InProcessChannel(card)
    card.memory.arm_tear(2)
    with pytest.raises(CardRemoved):
        channel.transmit(CommandAPDU(0x80, 0xE2, 0x00, 0x00))
    assert channel.closed
    assert card.events == ["on"]  # power was lost, not switched off
    with pytest.raises(CardRemoved):
        channel.transmit(CommandAPDU(0x80, 0x5C, 0x00, 0x02, le=4))


def test_trace_redacts_secrets(caplog: pytest.LogCaptureFixture) -> None:
    key_block = bytes.fromhex("0100031122334455667788991122334455667788AABBCC")
    cryptogram = bytes.fromhex("0F1E2D3C4B5A6978")
    pin = bytes.fromhex("123456")
    caplog.set_level(logging.DEBUG, logger="onecard.apdu")
    with InProcessChannel(ScriptedCard(), name="test-reader") as channel:
        channel.transmit(CommandAPDU(0x80, 0xD4, 0x01, 0x01, key_block))
        channel.transmit(CommandAPDU(0x00, 0x82, 0x00, 0x10, cryptogram))
        channel.transmit(CommandAPDU(0x00, 0x20, 0x00, 0x00, pin))
        channel.transmit(CommandAPDU(0x80, 0x5E, 0x01, 0x00, pin + b"\xff" + pin))
        channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, bytes.fromhex("A000000632010105")))
    text = caplog.text.upper()
    for secret in (key_block, cryptogram, pin):
        assert secret.hex().upper() not in text
    assert "80D4010117 <23 BYTES REDACTED>" in text
    assert "PUT KEY" in text and "EXTERNAL AUTHENTICATE" in text
    assert "00A4040008A000000632010105" in text
    assert all(record.name == "onecard.apdu" for record in caplog.records)


def test_redact_keeps_le() -> None:
    cmd = CommandAPDU(0x00, 0x82, 0x00, 0x10, bytes(8), le=256)
    assert redact(cmd) == "0082001008 <8 bytes redacted> 00"
    assert redact(CommandAPDU(0x00, 0xB0, 0x95, 0x00, le=30)) == "00B095001E"


@pytest.mark.parametrize(
    ("cmd", "name"),
    [
        (CommandAPDU(0x80, 0x50, 0x01, 0x02, bytes(11)), "INITIALIZE FOR PURCHASE"),
        (CommandAPDU(0x80, 0x50, 0x03, 0x02, bytes(11)), "INITIALIZE FOR CAPP PURCHASE"),
        (CommandAPDU(0x80, 0xD4, 0x20, 0x00, b"\x03\x12\x34"), "PUT PIN"),
        (CommandAPDU(0x80, 0x54, 0x01, 0x00, bytes(15)), "DEBIT FOR PURCHASE"),
        (CommandAPDU(0x84, 0x1E, 0x00, 0x01, bytes(4)), "APPLICATION BLOCK"),
        (CommandAPDU(0x90, 0x99, 0x00, 0x00), "CLA 90 INS 99"),
    ],
)
def test_command_names(cmd: CommandAPDU, name: str) -> None:
    assert command_name(cmd) == name


def test_check_sw() -> None:
    with InProcessChannel(ScriptedCard()) as channel:
        response = channel.transmit(CommandAPDU(0x80, 0x5C, 0x00, 0x02, le=4))
    assert check_sw(response, "GET BALANCE") is response
    with pytest.raises(CardStatusError) as info:
        check_sw(response, "GET BALANCE", accept=(SW.INSUFFICIENT_BALANCE,))
    assert info.value.sw == 0x9000
    assert info.value.status is SW.OK
    assert info.value.command_name == "GET BALANCE"
    error = CardStatusError(0x63C2, "VERIFY")
    assert error.status is None
    assert str(error) == "VERIFY: wrong PIN, 2 tries left"
