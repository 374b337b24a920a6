"""Card maintenance at the counter (spec §2.3, §2.4): line-MAC commands whose MACs the keystore computes.

APPLICATION BLOCK / UNBLOCK, CARD BLOCK, UPDATE BINARY with MAC (cardholder data) and RELOAD PIN. Every
function sends GET CHALLENGE first; a status word other than ``9000`` raises
:class:`terminal.errors.CardStatusError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.layout import (
    HOLDER_LEN,
    PUBLIC_LEN,
    PURSE_AID,
    SFI_HOLDER,
    SFI_PUBLIC,
    SFI_SOCIAL,
    SOCIAL_AID,
    HolderData,
    KeyUsage,
    PublicData,
)
from cardos.sw import SW
from issuance.keys import Keystore
from terminal.channel import Channel
from terminal.errors import check_sw

NAME_OFFSET_IN_SOCIAL = 18
NAME_LENGTH = 20


@dataclass(frozen=True)
class CardKeyRef:
    """Which keys a card carries: the keystore derives them from card_no, ``alg`` and ``version``."""

    card_no: str
    alg: crypto.Alg
    version: int

    @property
    def card_no_bytes(self) -> bytes:
        """card_no as 8 BCD bytes."""
        return bytes.fromhex(self.card_no)


def select_application(channel: Channel, aid: bytes, name: str) -> None:
    """SELECT an application by AID, a temporarily blocked one (``6283``) included."""
    check_sw(channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, aid, 256)), name, (SW.OK, SW.APP_BLOCKED_TEMP))


def read_public(channel: Channel) -> PublicData:
    """SELECT the purse (even temporarily blocked) and read EF 0015."""
    select_application(channel, PURSE_AID, "SELECT purse")
    cmd = CommandAPDU(0x00, 0xB0, 0x80 | SFI_PUBLIC, 0x00, b"", PUBLIC_LEN)
    return PublicData.decode(check_sw(channel.transmit(cmd), "READ BINARY 0015").data)


def _challenge(channel: Channel) -> bytes:
    return check_sw(channel.transmit(CommandAPDU(0x00, 0x84, 0x00, 0x00, b"", 4)), "GET CHALLENGE").data


def send_with_line_mac(
    channel: Channel, keys: Keystore, card: CardKeyRef, cla: int, ins: int, p1: int, p2: int, body: bytes, name: str
) -> None:
    """One ``04``/``84``-class command with its DAMK line MAC (spec §2.4, Line MAC)."""
    challenge = _challenge(channel)
    header = bytes((cla, ins, p1, p2, len(body) + 4))
    mac = keys.line_mac(card.alg, card.version, KeyUsage.DAMK, card.card_no_bytes, header + body, challenge)
    check_sw(channel.transmit(CommandAPDU(cla, ins, p1, p2, body + mac)), name)


def application_block(channel: Channel, keys: Keystore, card: CardKeyRef, *, permanent: bool) -> None:
    """APPLICATION BLOCK of the purse: temporary (``P2 00``) or permanent (``P2 01``)."""
    select_application(channel, PURSE_AID, "SELECT purse")
    p2 = 0x01 if permanent else 0x00
    send_with_line_mac(channel, keys, card, 0x84, 0x1E, 0x00, p2, b"", "APPLICATION BLOCK")


def application_unblock(channel: Channel, keys: Keystore, card: CardKeyRef) -> None:
    """APPLICATION UNBLOCK of a temporarily blocked purse."""
    select_application(channel, PURSE_AID, "SELECT purse")
    send_with_line_mac(channel, keys, card, 0x84, 0x18, 0x00, 0x00, b"", "APPLICATION UNBLOCK")


def card_block(channel: Channel, keys: Keystore, card: CardKeyRef) -> None:
    """CARD BLOCK: afterwards the card answers ``6A81`` to everything (spec §2.3)."""
    select_application(channel, PURSE_AID, "SELECT purse")
    send_with_line_mac(channel, keys, card, 0x84, 0x16, 0x00, 0x00, b"", "CARD BLOCK")


def update_holder(channel: Channel, keys: Keystore, card: CardKeyRef, holder: HolderData) -> None:
    """Rewrite EF 0016 (cardholder data) with UPDATE BINARY with MAC, by SFI."""
    data = holder.encode()
    if len(data) != HOLDER_LEN:
        raise ValueError("EF 0016 is 56 bytes")
    select_application(channel, PURSE_AID, "SELECT purse")
    send_with_line_mac(channel, keys, card, 0x04, 0xD6, 0x80 | SFI_HOLDER, 0x00, data, "UPDATE BINARY 0016")


def update_social_name(channel: Channel, keys: Keystore, card: CardKeyRef, name_field: bytes) -> None:
    """Rewrite the name in EF 0005 of ADF 1002 (bytes 18–37) with UPDATE BINARY with MAC."""
    if len(name_field) != NAME_LENGTH:
        raise ValueError("the name field is 20 bytes")
    select_application(channel, SOCIAL_AID, "SELECT social security")
    send_with_line_mac(
        channel, keys, card, 0x04, 0xD6, 0x80 | SFI_SOCIAL, NAME_OFFSET_IN_SOCIAL, name_field, "UPDATE BINARY 0005"
    )


def reload_pin(channel: Channel, keys: Keystore, card: CardKeyRef, aid: bytes, new_pin: bytes) -> None:
    """RELOAD PIN in the application ``aid``: ``new ‖ MAC_DRPK(new)`` with IV = the challenge (spec §2.4)."""
    select_application(channel, aid, "SELECT")
    challenge = _challenge(channel)
    mac = keys.line_mac(card.alg, card.version, KeyUsage.DRPK, card.card_no_bytes, new_pin, challenge)
    check_sw(channel.transmit(CommandAPDU(0x80, 0x5E, 0x00, 0x00, new_pin + mac)), "RELOAD PIN")
