"""SELECT, READ BINARY, READ RECORD, UPDATE BINARY with MAC, GET CHALLENGE (spec §2.4, §2.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardos.apdu import CommandAPDU
from cardos.commands import common
from cardos.fs import DF, EF, AppStatus
from cardos.layout import MF_FID, Access, FileKind, fci
from cardos.registry import command
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card

EF_PUBLIC_FID = 0x0015
PROTECTED_PUBLIC_BYTES = range(10, 20)


def _resolve_fid(card: Card, fid: int) -> DF | EF | None:
    """``3F00`` from anywhere, else a child of the current DF, else a child of its parent (§2.4)."""
    fs = card.fs
    if fid == MF_FID:
        return fs.df(MF_FID)
    current = card.current_df
    scopes = [current] if current == MF_FID else [current, MF_FID]
    for scope in scopes:
        if scope == MF_FID:
            for df in fs.dfs():
                if df.fid == fid:
                    return df
        ef = fs.ef(scope, fid)
        if ef is not None:
            return ef
    return None


def _select_dir(card: Card, cmd: CommandAPDU, df: DF) -> bytes:
    response = fci(df.aid)
    common.le(cmd, len(response))
    if df.status is AppStatus.BLOCKED_PERMANENTLY:
        raise CardError(SW.FUNCTION_NOT_SUPPORTED, "application blocked permanently")
    card.select_df(df.fid)
    if df.status is AppStatus.BLOCKED:
        raise CardError(SW.APP_BLOCKED_TEMP, data=response)
    return response


@command("SELECT", 0x00, 0xA4, in_factory=True, in_blocked_app=True)
def select(card: Card, cmd: CommandAPDU) -> bytes:
    """SELECT by name (P1 ``04``) or by FID (P1 ``00``)."""
    common.p1p2(cmd, {0x00, 0x04}, 0x00)
    if cmd.p1 == 0x00:
        common.lc(cmd, 2)
        target = _resolve_fid(card, int.from_bytes(cmd.data, "big"))
        if target is None:
            raise CardError(SW.FILE_NOT_FOUND)
        if isinstance(target, DF):
            return _select_dir(card, cmd, target)
        common.le(cmd, 0)
        card.select_ef(target)
        return b""
    if not 1 <= cmd.lc <= 16:
        raise CardError(SW.WRONG_LENGTH)
    mf = card.fs.df(MF_FID)
    if mf is not None and cmd.data == mf.aid:
        return _select_dir(card, cmd, mf)
    for df in card.fs.dfs():
        if df.aid == cmd.data:
            return _select_dir(card, cmd, df)
    raise CardError(SW.FILE_NOT_FOUND)


def _by_sfi(card: Card, sfi: int) -> EF:
    ef = card.fs.ef_by_sfi(card.current_df, sfi)
    if ef is None:
        raise CardError(SW.FILE_NOT_FOUND)
    card.select_ef(ef)
    return ef


def _check_read(card: Card, ef: EF) -> None:
    if ef.read == Access.FREE:
        return
    if ef.read == Access.PIN and card.pin_verified:
        return
    raise CardError(SW.SECURITY_NOT_SATISFIED, "read access")


def _binary_target(card: Card, cmd: CommandAPDU) -> tuple[EF, int]:
    """(EF, offset) for READ / UPDATE BINARY: SFI in P1 bits 1-5 with offset P2, else offset P1‖P2."""
    if cmd.p1 & 0x80:
        if cmd.p1 & 0x60 or not cmd.p1 & 0x1F:
            raise CardError(SW.WRONG_P1P2)
        return _by_sfi(card, cmd.p1 & 0x1F), cmd.p2
    return card.current_file(), (cmd.p1 << 8) | cmd.p2


def _check_sfi_p1(cmd: CommandAPDU) -> None:
    if cmd.p1 & 0x80 and (cmd.p1 & 0x60 or not cmd.p1 & 0x1F):
        raise CardError(SW.WRONG_P1P2)


@command("READ BINARY", 0x00, 0xB0, in_factory=True, in_blocked_app=True)
def read_binary(card: Card, cmd: CommandAPDU) -> bytes:
    """READ BINARY (§2.6): ``6A82``, ``6985``, ``6982``, ``6B00``, ``6700`` in that order."""
    _check_sfi_p1(cmd)
    common.lc(cmd, 0)
    ef, offset = _binary_target(card, cmd)
    if ef.kind is not FileKind.TRANSPARENT:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "not a transparent file")
    _check_read(card, ef)
    size = ef.byte_size
    if offset >= size:
        raise CardError(SW.WRONG_OFFSET)
    if cmd.le is None or cmd.le == 256:
        length = min(size - offset, 256)
    else:
        length = cmd.le
        if offset + length > size:
            raise CardError(SW.WRONG_LENGTH, "read past the end")
    return card.fs.contents(ef)[offset : offset + length]


@command("READ RECORD", 0x00, 0xB2, in_factory=True, in_blocked_app=True)
def read_record(card: Card, cmd: CommandAPDU) -> bytes:
    """READ RECORD (§2.6): record ``00`` or P2 low bits other than ``100`` answer ``6A86``."""
    if cmd.p1 == 0 or cmd.p2 & 0x07 != 0x04:
        raise CardError(SW.WRONG_P1P2)
    common.lc(cmd, 0)
    sfi = cmd.p2 >> 3
    ef = card.current_file() if sfi == 0 else _by_sfi(card, sfi)
    if ef.kind is FileKind.TRANSPARENT:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "not a record file")
    _check_read(card, ef)
    records = card.fs.records(ef)
    if cmd.p1 > len(records):
        raise CardError(SW.RECORD_NOT_FOUND)
    if cmd.le is not None and cmd.le not in (256, ef.record_length):
        raise CardError(SW.WRONG_LENGTH)
    return records[cmd.p1 - 1]


@command("UPDATE BINARY", 0x04, 0xD6)
def update_binary(card: Card, cmd: CommandAPDU) -> bytes:
    """UPDATE BINARY with line MAC (§2.4, order of §2.6)."""
    _check_sfi_p1(cmd)
    if cmd.lc < 5:
        raise CardError(SW.WRONG_LENGTH)
    common.le(cmd, 0)
    ef, offset = _binary_target(card, cmd)
    if ef.kind is not FileKind.TRANSPARENT:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "not a transparent file")
    writable = ef.write in (Access.FREE, Access.LINE_MAC) or (ef.write == Access.PIN and card.pin_verified)
    if not writable:
        raise CardError(SW.SECURITY_NOT_SATISFIED, "write access")
    body = common.verify_line_mac(card, cmd, ef.df)
    size = ef.byte_size
    if offset >= size:
        raise CardError(SW.WRONG_OFFSET)
    if offset + len(body) > size:
        raise CardError(SW.WRONG_LENGTH, "write past the end")
    if ef.fid == EF_PUBLIC_FID and offset < PROTECTED_PUBLIC_BYTES.stop and offset + len(body) > 10:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "city code and card_no cannot change")
    contents = card.fs.contents(ef)
    card.fs.set_contents(ef, contents[:offset] + body + contents[offset + len(body) :])
    return b""


@command("GET CHALLENGE", 0x00, 0x84, in_factory=True, in_blocked_app=True)
def get_challenge(card: Card, cmd: CommandAPDU) -> bytes:
    """GET CHALLENGE of 4 or 8 bytes; it serves only the next command received."""
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 0)
    if cmd.le not in (4, 8):
        raise CardError(SW.WRONG_LENGTH, "a challenge is 4 or 8 bytes")
    card.challenge = card.random(cmd.le)
    return card.challenge
