"""Checks shared by handlers, in the order of spec §2.6."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.fs import KeyEntry
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card


def p1p2(cmd: CommandAPDU, p1: int | set[int], p2: int | set[int]) -> None:
    """``6A86`` unless P1 and P2 are among the allowed values."""
    ok1 = cmd.p1 in p1 if isinstance(p1, set) else cmd.p1 == p1
    ok2 = cmd.p2 in p2 if isinstance(p2, set) else cmd.p2 == p2
    if not (ok1 and ok2):
        raise CardError(SW.WRONG_P1P2)


def lc(cmd: CommandAPDU, *allowed: int) -> None:
    """``6700`` unless Lc is one of the allowed lengths (0: no data)."""
    if cmd.lc not in allowed:
        raise CardError(SW.WRONG_LENGTH, "wrong Lc")


def le(cmd: CommandAPDU, response_length: int, *, required: bool = False) -> None:
    """Le must be absent (unless required), ``00`` or the exact response length; otherwise ``6700`` (§0)."""
    if cmd.le is None:
        if required:
            raise CardError(SW.WRONG_LENGTH, "Le missing")
        return
    if cmd.le != 256 and cmd.le != response_length:
        raise CardError(SW.WRONG_LENGTH, "wrong Le")


def key(card: Card, df: int, usage: int, index: int = 1) -> tuple[KeyEntry, crypto.Alg]:
    """A key of the DF or ``9403``."""
    entry = card.fs.key(df, usage, index)
    if entry is None or entry.alg not in (crypto.Alg.DES, crypto.Alg.SM4):
        raise CardError(SW.KEY_NOT_SUPPORTED, "no such key")
    return entry, crypto.Alg(entry.alg)


def challenge(card: Card) -> bytes:
    """The challenge this command may use, or ``6984``."""
    value = card.command_challenge()
    if value is None:
        raise CardError(SW.NO_CHALLENGE)
    return value


def verify_line_mac(card: Card, cmd: CommandAPDU, df: int) -> bytes:
    """Check the line MAC of a ``04``/``84``-class command with the DF's DAMK; return the data without it.

    Order: key (``9403``), challenge (``6984``), MAC (``6988``).
    """
    damk, alg = key(card, df, 0x01)
    value = challenge(card)
    body, received = cmd.data[:-4], cmd.data[-4:]
    header = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.lc))
    try:
        crypto.verify_mac(alg, damk.value, header + body, received, value)
    except crypto.MacError:
        raise CardError(SW.LINE_MAC_WRONG) from None
    return body
