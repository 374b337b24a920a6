"""PINs, EXTERNAL AUTHENTICATE and the block / unblock commands (spec §2.2–§2.5).

A PIN try and a failed EXTERNAL AUTHENTICATE are committed before the comparison, so a tear never
gives a free guess.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.commands import common
from cardos.fs import AppStatus, LifeCycle, PinEntry
from cardos.layout import KeyUsage, pin_is_well_formed
from cardos.registry import USER, command
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card

MAX_AUTH_FAILURES = 5


def _pin(card: Card) -> tuple[int, PinEntry]:
    df = card.current_dir()
    entry = card.fs.pin(df.fid)
    if entry is None:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no PIN here")
    return df.fid, entry


def _try_pin(card: Card, df: int, entry: PinEntry, offered: bytes) -> PinEntry:
    """Count a try (committed), then compare; raise ``63Cx`` on a wrong PIN."""
    if entry.tries_left == 0:
        raise CardError(SW.AUTH_METHOD_BLOCKED, "PIN blocked")
    counted = PinEntry(entry.max_tries, entry.tries_left - 1, entry.value)
    card.fs.put_pin(df, counted)
    card.commit()
    if not hmac.compare_digest(offered, entry.value):
        card.pin_verified = False
        raise CardError(SW.wrong_pin(counted.tries_left))
    restored = PinEntry(entry.max_tries, entry.max_tries, entry.value)
    card.fs.put_pin(df, restored)
    return restored


@command("VERIFY", 0x00, 0x20, kinds=USER)
def verify(card: Card, cmd: CommandAPDU) -> bytes:
    """VERIFY: ``6700`` no data, ``6983`` blocked, ``6A80`` bad format, ``63Cx`` wrong."""
    common.p1p2(cmd, 0x00, 0x00)
    if cmd.lc == 0:
        raise CardError(SW.WRONG_LENGTH, "no PIN")
    common.le(cmd, 0)
    df, entry = _pin(card)
    if entry.tries_left == 0:
        raise CardError(SW.AUTH_METHOD_BLOCKED, "PIN blocked")
    if not pin_is_well_formed(cmd.data):
        raise CardError(SW.WRONG_DATA, "bad PIN format")
    _try_pin(card, df, entry, cmd.data)
    card.pin_verified = True
    return b""


@command("CHANGE PIN / RELOAD PIN", 0x80, 0x5E, kinds=USER)
def change_or_reload_pin(card: Card, cmd: CommandAPDU) -> bytes:
    """P1 ``01``: CHANGE PIN ``old FF new``; P1 ``00``: RELOAD PIN ``new ‖ MAC4`` under DRPK."""
    common.p1p2(cmd, {0x00, 0x01}, 0x00)
    common.le(cmd, 0)
    if cmd.p1 == 0x01:
        return _change_pin(card, cmd)
    return _reload_pin(card, cmd)


def _change_pin(card: Card, cmd: CommandAPDU) -> bytes:
    if cmd.lc == 0:
        raise CardError(SW.WRONG_LENGTH)
    df, entry = _pin(card)
    if entry.tries_left == 0:
        raise CardError(SW.AUTH_METHOD_BLOCKED, "PIN blocked")
    split = cmd.data.find(b"\xff")
    if split < 0:
        raise CardError(SW.WRONG_DATA, "no FF separator")
    old, new = cmd.data[:split], cmd.data[split + 1 :]
    if not (pin_is_well_formed(old) and pin_is_well_formed(new)):
        raise CardError(SW.WRONG_DATA, "bad PIN format")
    checked = _try_pin(card, df, entry, old)
    card.fs.put_pin(df, PinEntry(checked.max_tries, checked.max_tries, new))
    card.pin_verified = True
    return b""


def _reload_pin(card: Card, cmd: CommandAPDU) -> bytes:
    if cmd.lc < 5:
        raise CardError(SW.WRONG_LENGTH, "no room for a PIN and its MAC")
    df, entry = _pin(card)
    drpk, alg = common.key(card, df, KeyUsage.DRPK)
    new, received = cmd.data[:-4], cmd.data[-4:]
    if not pin_is_well_formed(new):
        raise CardError(SW.WRONG_DATA, "bad PIN format")
    iv = common.challenge(card)
    try:
        crypto.verify_mac(alg, drpk.value, new, received, iv)
    except crypto.MacError:
        raise CardError(SW.MAC_WRONG) from None
    card.fs.put_pin(df, PinEntry(entry.max_tries, entry.max_tries, new))
    return b""


@command("EXTERNAL AUTHENTICATE", 0x00, 0x82, personalisation=True, needs_auth=False)
def external_authenticate(card: Card, cmd: CommandAPDU) -> bytes:
    """EXTERNAL AUTHENTICATE with KT (§2.5): ``6300`` wrong, ``6983`` after 5 consecutive failures."""
    common.p1p2(cmd, 0x00, 0x10)
    common.lc(cmd, 8)
    common.le(cmd, 0)
    failures = card.fs.auth_failures()
    if failures >= MAX_AUTH_FAILURES:
        card.authenticated = False
        raise CardError(SW.AUTH_METHOD_BLOCKED)
    challenge = card.command_challenge()
    if challenge is None or len(challenge) != 8:
        card.authenticated = False
        raise CardError(SW.NO_CHALLENGE, "EXTERNAL AUTHENTICATE needs an 8-byte challenge")
    transport = card.fs.transport_key()
    if transport is None:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED)
    alg, kt = transport
    card.fs.set_auth_failures(failures + 1)
    card.commit()
    expected = crypto.external_auth_cryptogram(crypto.Alg(alg), kt, challenge)
    if not hmac.compare_digest(expected, cmd.data):
        card.authenticated = False
        raise CardError(SW.AUTH_FAILED)
    card.fs.set_auth_failures(0)
    card.authenticated = True
    return b""


def _line_mac_command(card: Card, cmd: CommandAPDU) -> int:
    """Common checks of the ``84``-class block commands; returns the current application's FID."""
    common.lc(cmd, 4)
    common.le(cmd, 0)
    df = card.current_adf()
    common.verify_line_mac(card, cmd, df.fid)
    return df.fid


@command("APPLICATION BLOCK", 0x84, 0x1E, in_blocked_app=True)
def application_block(card: Card, cmd: CommandAPDU) -> bytes:
    """APPLICATION BLOCK: P2 ``00`` temporary, ``01`` permanent; a permanent block stays permanent."""
    common.p1p2(cmd, 0x00, {0x00, 0x01})
    fid = _line_mac_command(card, cmd)
    status = card.current_dir().status
    if cmd.p2 == 0x01 or status is AppStatus.BLOCKED_PERMANENTLY:
        card.fs.set_df_status(fid, AppStatus.BLOCKED_PERMANENTLY)
    else:
        card.fs.set_df_status(fid, AppStatus.BLOCKED)
    return b""


@command("APPLICATION UNBLOCK", 0x84, 0x18, in_blocked_app=True)
def application_unblock(card: Card, cmd: CommandAPDU) -> bytes:
    """APPLICATION UNBLOCK of a temporarily blocked application (a no-op when not blocked)."""
    common.p1p2(cmd, 0x00, 0x00)
    fid = _line_mac_command(card, cmd)
    if card.current_dir().status is AppStatus.BLOCKED:
        card.fs.set_df_status(fid, AppStatus.ACTIVE)
    return b""


@command("CARD BLOCK", 0x84, 0x16, in_blocked_app=True)
def card_block(card: Card, cmd: CommandAPDU) -> bytes:
    """CARD BLOCK: afterwards every well-formed command answers ``6A81``."""
    common.p1p2(cmd, 0x00, 0x00)
    _line_mac_command(card, cmd)
    card.fs.set_life_cycle(LifeCycle.CARD_BLOCKED)
    return b""
