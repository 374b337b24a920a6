"""Personalisation from the factory state (spec §2.5): every command here needs EXTERNAL AUTHENTICATE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.commands import common
from cardos.fs import EF, CardKind, KeyEntry, LifeCycle, PinEntry, Purse
from cardos.layout import MF_FID, Access, FileKind, KeyUsage, pin_is_well_formed
from cardos.registry import USER, command
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card

ACCESS_VALUES = {a.value for a in Access}
USER_KEY_USAGES = {KeyUsage.DAMK, KeyUsage.DPK, KeyUsage.DLK, KeyUsage.DTK, KeyUsage.DPUK, KeyUsage.DRPK}
PSAM_KEY_USAGES = {KeyUsage.MPK}
RESERVED_FIDS = {MF_FID, 0xFFFF}
MAX_TRANSPARENT_SIZE = 0x1000
PUT_PIN = 0x20


@command("CREATE FILE", 0x80, 0xE0, personalisation=True)
def create_file(card: Card, cmd: CommandAPDU) -> bytes:
    """CREATE DF (P1 ``01``, MF current) and CREATE EF (P1 ``02``, in the current DF)."""
    common.p1p2(cmd, {0x01, 0x02}, 0x00)
    common.le(cmd, 0)
    if cmd.p1 == 0x01:
        return _create_df(card, cmd)
    return _create_ef(card, cmd)


def _create_df(card: Card, cmd: CommandAPDU) -> bytes:
    data = cmd.data
    if len(data) < 3 or len(data) != 3 + data[2]:
        raise CardError(SW.WRONG_LENGTH)
    if card.current_df != MF_FID:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "CREATE DF needs the MF current")
    fid, aid = int.from_bytes(data[0:2], "big"), data[3:]
    fs = card.fs
    if any(df.fid == fid or df.aid == aid for df in fs.dfs()) or fs.ef(MF_FID, fid) is not None:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "duplicate FID or AID")
    if fid in RESERVED_FIDS or not 5 <= len(aid) <= 16:
        raise CardError(SW.WRONG_DATA)
    fs.create_df(fid, aid)
    card.select_df(fid)
    return b""


def _create_ef(card: Card, cmd: CommandAPDU) -> bytes:
    common.lc(cmd, 8)
    df = card.current_dir()
    data = cmd.data
    fid, sfi, kind, size = (
        int.from_bytes(data[0:2], "big"),
        data[2],
        data[3],
        int.from_bytes(data[4:6], "big"),
    )
    read, write = data[6], data[7]
    fs = card.fs
    siblings = fs.efs(df.fid)
    if df.is_mf and any(d.fid == fid for d in fs.dfs()):
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "duplicate FID")
    if any(ef.fid == fid or (sfi and ef.sfi == sfi) for ef in siblings) or fid == df.fid:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "duplicate FID or SFI")
    if fid in RESERVED_FIDS or sfi > 0x1E or kind not in (1, 2, 3):
        raise CardError(SW.WRONG_DATA)
    if read not in ACCESS_VALUES or write not in ACCESS_VALUES:
        raise CardError(SW.WRONG_DATA, "bad access condition")
    if kind == FileKind.TRANSPARENT:
        if not 1 <= size <= MAX_TRANSPARENT_SIZE:
            raise CardError(SW.WRONG_DATA, "bad size")
    elif size >> 8 == 0 or size & 0xFF == 0 or size & 0xFF == 0xFF:
        raise CardError(SW.WRONG_DATA, "bad record size")
    ef = EF(df.fid, fid, sfi, FileKind(kind), size, read, write)
    fs.create_ef(ef)
    card.select_ef(ef)
    return b""


@command("PUT KEY / PUT PIN", 0x80, 0xD4, personalisation=True)
def put_key_or_pin(card: Card, cmd: CommandAPDU) -> bytes:
    """PUT KEY (P1 = usage, P2 = index) and PUT PIN (P1 ``20``)."""
    if cmd.p1 == PUT_PIN:
        return _put_pin(card, cmd)
    usages = USER_KEY_USAGES if card.kind is CardKind.USER else PSAM_KEY_USAGES
    if cmd.p1 not in usages or cmd.p2 == 0:
        raise CardError(SW.WRONG_P1P2)
    common.lc(cmd, 22)
    common.le(cmd, 0)
    df = card.current_adf()
    version, alg, tries = cmd.data[0], cmd.data[1], cmd.data[2]
    wrapped, expected_kcv = cmd.data[3:19], cmd.data[19:22]
    transport = card.fs.transport_key()
    if transport is None or alg != transport[0]:
        raise CardError(SW.KEY_NOT_SUPPORTED, "algorithm differs from the transport key's")
    if cmd.p1 == KeyUsage.MPK and cmd.p2 != version:
        raise CardError(SW.WRONG_DATA, "a PSAM's MPK index is its version")
    try:
        value = crypto.unwrap_key(crypto.Alg(alg), transport[1], wrapped, expected_kcv)
    except crypto.MacError:
        raise CardError(SW.WRONG_DATA, "KCV differs") from None
    card.fs.put_key(df.fid, KeyEntry(cmd.p1, cmd.p2, version, alg, tries, value))
    return b""


def _put_pin(card: Card, cmd: CommandAPDU) -> bytes:
    common.p1p2(cmd, PUT_PIN, 0x00)
    if cmd.lc < 2:
        raise CardError(SW.WRONG_LENGTH)
    common.le(cmd, 0)
    if card.kind is not CardKind.USER:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "a PSAM has no PIN")
    df = card.current_adf()
    tries, pin = cmd.data[0], cmd.data[1:]
    if not 1 <= tries <= 15 or not pin_is_well_formed(pin):
        raise CardError(SW.WRONG_DATA, "bad PIN or try count")
    card.fs.put_pin(df.fid, PinEntry(tries, tries, pin))
    return b""


@command("WRITE DATA", 0x80, 0xD6, personalisation=True)
def write_data(card: Card, cmd: CommandAPDU) -> bytes:
    """WRITE DATA into the current EF, ignoring access conditions."""
    if cmd.lc == 0:
        raise CardError(SW.WRONG_LENGTH)
    common.le(cmd, 0)
    ef = card.current_file()
    fs = card.fs
    if ef.kind is FileKind.TRANSPARENT:
        offset = (cmd.p1 << 8) | cmd.p2
        if offset >= ef.byte_size:
            raise CardError(SW.WRONG_OFFSET)
        if offset + cmd.lc > ef.byte_size:
            raise CardError(SW.WRONG_LENGTH)
        contents = fs.contents(ef)
        fs.set_contents(ef, contents[:offset] + cmd.data + contents[offset + cmd.lc :])
        return b""
    if cmd.p2 != 0x04 or cmd.p1 == 0:
        raise CardError(SW.WRONG_P1P2)
    if cmd.p1 > len(fs.records(ef)):
        raise CardError(SW.RECORD_NOT_FOUND)
    if cmd.lc != ef.record_length:
        raise CardError(SW.WRONG_LENGTH)
    fs.write_record(ef, cmd.p1, cmd.data)
    return b""


@command("INIT PURSE", 0x80, 0xD8, kinds=USER, personalisation=True)
def init_purse(card: Card, cmd: CommandAPDU) -> bytes:
    """INIT PURSE: ``limit 4 ‖ 00000000``; balance and both counters start at 0."""
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 8)
    common.le(cmd, 0)
    df = card.current_adf()
    if cmd.data[4:8] != b"\x00" * 4:
        raise CardError(SW.WRONG_DATA)
    card.fs.put_purse(df.fid, Purse(0, 0, 0, int.from_bytes(cmd.data[0:4], "big")))
    return b""


@command("FINISH", 0x80, 0xE8, personalisation=True)
def finish(card: Card, cmd: CommandAPDU) -> bytes:
    """FINISH: delete KT and move the card to ``issued``."""
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 0)
    common.le(cmd, 0)
    card.fs.tx.put("kt", None)
    card.fs.set_life_cycle(LifeCycle.ISSUED)
    card.authenticated = False
    return b""
