"""The purse application (spec §2.4): load, purchase, CAPP purchase, proof, balance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.commands import common
from cardos.fs import Proof, Purse
from cardos.layout import SFI_LOG, TXN_CAPP, TXN_LOAD, TXN_PURCHASE, FileKind, KeyUsage, LogRecord
from cardos.registry import USER, command
from cardos.session import PendingLoad, PendingPurchase
from cardos.sw import SW, CardError

if TYPE_CHECKING:
    from cardos.card import Card

COUNTER_MAX = 0xFFFF
LOAD_FAMILY = "load"
PURCHASE_FAMILY = "purchase"
INIT_TYPES = {0x00: TXN_LOAD, 0x01: TXN_PURCHASE, 0x03: TXN_CAPP}


def _purse(card: Card) -> tuple[int, Purse]:
    df = card.current_dir()
    purse = None if df.is_mf else card.fs.purse(df.fid)
    if purse is None:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no purse here")
    return df.fid, purse


def _append_log(card: Card, df: int, record: LogRecord) -> None:
    log_ef = card.fs.ef_by_sfi(df, SFI_LOG)
    if log_ef is not None and log_ef.kind is FileKind.CYCLIC and log_ef.record_length == len(record.encode()):
        card.fs.append_record(log_ef, record.encode())


@command("GET BALANCE", 0x80, 0x5C, kinds=USER)
def get_balance(card: Card, cmd: CommandAPDU) -> bytes:
    """GET BALANCE: the 4-byte balance."""
    common.p1p2(cmd, 0x00, 0x02)
    common.lc(cmd, 0)
    common.le(cmd, 4)
    _, purse = _purse(card)
    return purse.balance.to_bytes(4, "big")


@command("INITIALIZE", 0x80, 0x50, kinds=USER)
def initialize(card: Card, cmd: CommandAPDU) -> bytes:
    """INITIALIZE FOR LOAD (P1 ``00``), PURCHASE (``01``), CAPP PURCHASE (``03``)."""
    common.p1p2(cmd, set(INIT_TYPES), 0x02)
    common.lc(cmd, 11)
    txn_type = INIT_TYPES[cmd.p1]
    common.le(cmd, 16 if txn_type == TXN_LOAD else 15)
    df, purse = _purse(card)
    key_index = cmd.data[0]
    amount = int.from_bytes(cmd.data[1:5], "big")
    term_id = cmd.data[5:11]
    usage = KeyUsage.DLK if txn_type == TXN_LOAD else KeyUsage.DPK
    key, alg = common.key(card, df, usage, key_index)
    dtk, _ = common.key(card, df, KeyUsage.DTK)
    rand_len = 4
    if txn_type == TXN_LOAD:
        if purse.online_seq >= COUNTER_MAX:
            raise CardError(SW.COUNTER_AT_MAXIMUM)
        if purse.balance + amount > purse.limit:
            raise CardError(SW.WRONG_DATA, "above the purse limit")
        rand = card.random(rand_len)
        sk = crypto.load_session_key(alg, key.value, rand, purse.online_seq)
        mac1 = crypto.load_mac1(alg, sk, purse.balance, amount, term_id)
        card.pending = PendingLoad(
            df, amount, term_id, rand, purse.online_seq, purse.balance, sk, alg, dtk.value
        )
        return (
            purse.balance.to_bytes(4, "big")
            + purse.online_seq.to_bytes(2, "big")
            + bytes((key.version, alg))
            + rand
            + mac1
        )
    if purse.offline_seq >= COUNTER_MAX:
        raise CardError(SW.COUNTER_AT_MAXIMUM)
    if amount > purse.balance:
        raise CardError(SW.INSUFFICIENT_BALANCE)
    rand = card.random(rand_len)
    card.pending = PendingPurchase(
        df, txn_type, amount, term_id, rand, purse.offline_seq, purse.balance, key.value, alg, dtk.value
    )
    return (
        purse.balance.to_bytes(4, "big")
        + purse.offline_seq.to_bytes(2, "big")
        + b"\x00\x00\x00"
        + bytes((key.version, alg))
        + rand
    )


@command("CREDIT FOR LOAD", 0x80, 0x52, kinds=USER)
def credit_for_load(card: Card, cmd: CommandAPDU) -> bytes:
    """CREDIT FOR LOAD: check MAC2, then credit, counter, log and proof as one atomic write."""
    pending, card.pending = card.pending, None
    common.p1p2(cmd, 0x00, 0x00)
    common.lc(cmd, 11)
    common.le(cmd, 4)
    if not isinstance(pending, PendingLoad) or pending.df != card.current_df:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no load pending")
    date4, time3, mac2 = cmd.data[0:4], cmd.data[4:7], cmd.data[7:11]
    alg, sk = pending.alg, pending.session_key
    try:
        crypto.verify_load_mac2(alg, sk, pending.amount, pending.term_id, date4, time3, mac2)
    except crypto.MacError:
        raise CardError(SW.MAC_WRONG, "MAC2 wrong") from None
    _, purse = _purse(card)
    new_balance = purse.balance + pending.amount
    tac = crypto.load_tac(
        alg, pending.dtk, new_balance, pending.online_seq, pending.amount, pending.term_id, date4, time3
    )
    fs = card.fs
    fs.put_purse(pending.df, Purse(new_balance, purse.online_seq + 1, purse.offline_seq, purse.limit))
    _append_log(
        card,
        pending.df,
        LogRecord(pending.online_seq, pending.amount, TXN_LOAD, pending.term_id, date4, time3),
    )
    fs.put_proof(pending.df, LOAD_FAMILY, Proof(pending.online_seq, TXN_LOAD, b"\x00" * 4, tac))
    return tac


@command("UPDATE CAPP DATA CACHE", 0x80, 0xDC, kinds=USER)
def update_capp_data_cache(card: Card, cmd: CommandAPDU) -> bytes:
    """80DC: cache one record for the pending CAPP purchase (order of §2.6)."""
    sfi = cmd.p2 >> 3
    if cmd.p2 & 0x07 or sfi == 0:
        raise CardError(SW.WRONG_P1P2)
    df = card.current_dir()
    ef = None if df.is_mf else card.fs.ef_by_sfi(df.fid, sfi)
    if ef is None:
        raise CardError(SW.FILE_NOT_FOUND)
    if ef.kind is not FileKind.LINEAR:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "not a linear file")
    if not 1 <= cmd.p1 <= ef.record_count:
        raise CardError(SW.RECORD_NOT_FOUND)
    if cmd.lc != ef.record_length:
        raise CardError(SW.WRONG_LENGTH)
    common.le(cmd, 0)
    pending = card.pending
    if not isinstance(pending, PendingPurchase) or pending.txn_type != TXN_CAPP:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no CAPP purchase pending")
    pending.capp_cache[(ef.fid, cmd.p1)] = cmd.data
    return b""


@command("DEBIT FOR PURCHASE", 0x80, 0x54, kinds=USER)
def debit_for_purchase(card: Card, cmd: CommandAPDU) -> bytes:
    """DEBIT FOR (CAPP) PURCHASE: check MAC1, then debit, counter, CAPP records, log, proof atomically."""
    pending, card.pending = card.pending, None
    common.p1p2(cmd, 0x01, 0x00)
    common.lc(cmd, 15)
    common.le(cmd, 8)
    if not isinstance(pending, PendingPurchase) or pending.df != card.current_df:
        raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no purchase pending")
    term_seq = int.from_bytes(cmd.data[0:4], "big")
    date4, time3, mac1 = cmd.data[4:8], cmd.data[8:11], cmd.data[11:15]
    alg = pending.alg
    sk = crypto.purchase_session_key(alg, pending.dpk, pending.rand, pending.offline_seq, term_seq)
    try:
        crypto.verify_purchase_mac1(
            alg, sk, pending.amount, pending.txn_type, pending.term_id, date4, time3, mac1
        )
    except crypto.MacError:
        raise CardError(SW.MAC_WRONG, "MAC1 wrong") from None
    _, purse = _purse(card)
    fs = card.fs
    fs.put_purse(
        pending.df,
        Purse(purse.balance - pending.amount, purse.online_seq, purse.offline_seq + 1, purse.limit),
    )
    for (fid, number), record in sorted(pending.capp_cache.items()):
        ef = fs.ef(pending.df, fid)
        if ef is not None:
            fs.write_record(ef, number, record)
    _append_log(
        card,
        pending.df,
        LogRecord(pending.offline_seq, pending.amount, pending.txn_type, pending.term_id, date4, time3),
    )
    mac2 = crypto.purchase_mac2(alg, sk, pending.amount)
    tac = crypto.purchase_tac(
        alg, pending.dtk, pending.amount, pending.txn_type, pending.term_id, term_seq, date4, time3
    )
    fs.put_proof(pending.df, PURCHASE_FAMILY, Proof(pending.offline_seq, pending.txn_type, mac2, tac))
    return tac + mac2


@command("GET TRANSACTION PROOF", 0x80, 0x5A, kinds=USER, in_blocked_app=True)
def get_transaction_proof(card: Card, cmd: CommandAPDU) -> bytes:
    """GET TRANSACTION PROOF: ``MAC2 ‖ TAC`` of the last transaction of a counter, or ``9406``."""
    common.p1p2(cmd, 0x00, {TXN_LOAD, TXN_PURCHASE, TXN_CAPP})
    common.lc(cmd, 2)
    common.le(cmd, 8)
    df, _ = _purse(card)
    family = LOAD_FAMILY if cmd.p2 == TXN_LOAD else PURCHASE_FAMILY
    proof = card.fs.proof(df, family)
    seq = int.from_bytes(cmd.data, "big")
    if proof is None or proof.seq != seq or proof.txn_type != cmd.p2:
        raise CardError(SW.NO_SUCH_TRANSACTION)
    return proof.mac2 + proof.tac
