"""The PSAM application (spec §3): INIT SAM FOR PURCHASE and CREDIT SAM FOR PURCHASE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.commands import common
from cardos.layout import SFI_TERM_ID, TERM_ID_LEN, TXN_CAPP, TXN_PURCHASE, FileKind, KeyUsage
from cardos.registry import PSAM, command
from cardos.session import PsamSession
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card

TERM_SEQ_MAX = 0xFFFFFFFF


@command("INIT SAM FOR PURCHASE", 0x80, 0x70, kinds=PSAM)
def init_sam_for_purchase(card: Card, cmd: CommandAPDU) -> bytes:
    """INIT SAM: derive DPK, use a new term_seq (persisted before answering), return it with MAC1."""
    card.psam_session = None
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 0x24)
    common.le(cmd, 8)
    df = card.current_adf()
    term_id_ef = card.fs.ef_by_sfi(df.fid, SFI_TERM_ID)
    if term_id_ef is None or term_id_ef.kind is not FileKind.TRANSPARENT:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no term_id")
    term_id = card.fs.contents(term_id_ef)[:TERM_ID_LEN]
    data = cmd.data
    rand, offline_seq = data[0:4], int.from_bytes(data[4:6], "big")
    amount, txn_type = int.from_bytes(data[6:10], "big"), data[10]
    date4, time3 = data[11:15], data[15:18]
    key_ver, alg_id = data[18], data[19]
    card_no = data[20:28]
    mpk = card.fs.key(df.fid, KeyUsage.MPK, key_ver)
    if mpk is None or mpk.alg != alg_id or alg_id not in (crypto.Alg.DES, crypto.Alg.SM4):
        raise CardError(SW.KEY_NOT_SUPPORTED, "unknown key version or algorithm")
    term_seq = card.fs.term_seq(df.fid)
    if term_seq >= TERM_SEQ_MAX:
        raise CardError(SW.COUNTER_AT_MAXIMUM)
    if txn_type not in (TXN_PURCHASE, TXN_CAPP):
        raise CardError(SW.WRONG_DATA, "type must be 06 or 09")
    term_seq += 1
    card.fs.put_term_seq(df.fid, term_seq)
    card.commit()
    alg = crypto.Alg(alg_id)
    dpk = crypto.diversify(alg, mpk.value, card_no)
    sk = crypto.purchase_session_key(alg, dpk, rand, offline_seq, term_seq)
    mac1 = crypto.purchase_mac1(alg, sk, amount, txn_type, term_id, date4, time3)
    card.psam_session = PsamSession(amount, sk, alg)
    return term_seq.to_bytes(4, "big") + mac1


@command("CREDIT SAM FOR PURCHASE", 0x80, 0x72, kinds=PSAM)
def credit_sam_for_purchase(card: Card, cmd: CommandAPDU) -> bytes:
    """CREDIT SAM: ``9000`` if MAC2 is right, ``9302`` if not; the session ends either way."""
    session, card.psam_session = card.psam_session, None
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 4)
    common.le(cmd, 0)
    if session is None:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no session")
    try:
        crypto.verify_purchase_mac2(session.alg, session.session_key, session.amount, cmd.data)
    except crypto.MacError:
        raise CardError(SW.MAC_WRONG, "MAC2 wrong") from None
    return b""
