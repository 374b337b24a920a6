"""The protocol's cryptography (spec §1): the only module of the card side that imports ``cryptography``.

Intent-level functions over raw primitives: diversify, session keys, MACs (verify raises), TAC, KCV,
key wrapping for PUT KEY, and the transaction MACs of §2.4 and §3. Terminals and the back office reuse
them. Key bytes never appear in exception messages or reprs produced here.
"""

from __future__ import annotations

import hmac
import struct
from enum import IntEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

__all__ = [
    "Alg",
    "MacError",
    "TacCalculator",
    "decrypt_ecb",
    "diversify",
    "encrypt_ecb",
    "external_auth_cryptogram",
    "kcv",
    "line_mac",
    "load_mac1",
    "load_mac2",
    "load_session_key",
    "load_tac",
    "mac",
    "pad",
    "purchase_mac1",
    "purchase_mac2",
    "purchase_session_key",
    "purchase_tac",
    "session_key",
    "tac_key",
    "unwrap_key",
    "verify_load_mac1",
    "verify_load_mac2",
    "verify_mac",
    "verify_purchase_mac1",
    "verify_purchase_mac2",
    "wrap_key",
]


class Alg(IntEnum):
    """Algorithm suite id (spec §1)."""

    DES = 0x00
    SM4 = 0x04

    @property
    def block_size(self) -> int:
        """Cipher block length in bytes."""
        return 8 if self is Alg.DES else 16


class MacError(Exception):
    """A MAC, cryptogram or KCV did not verify."""


def _algorithm(alg: Alg, key: bytes) -> CipherAlgorithm:
    if alg is Alg.SM4:
        if len(key) != 16:
            raise ValueError("an SM4 key is 16 bytes")
        return algorithms.SM4(key)
    if len(key) == 8:
        return TripleDES(key * 3)
    if len(key) == 16:
        return TripleDES(key + key[:8])
    raise ValueError("a DES-family key is 8 or 16 bytes")


def encrypt_ecb(alg: Alg, key: bytes, data: bytes) -> bytes:
    """``E_K(x)``: ECB encryption of whole blocks (spec §1)."""
    if len(data) % Alg(alg).block_size:
        raise ValueError("ECB input must be whole blocks")
    enc = Cipher(_algorithm(Alg(alg), key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def decrypt_ecb(alg: Alg, key: bytes, data: bytes) -> bytes:
    """ECB decryption of whole blocks."""
    if len(data) % Alg(alg).block_size:
        raise ValueError("ECB input must be whole blocks")
    dec = Cipher(_algorithm(Alg(alg), key), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def _cbc_last_block(alg: Alg, key: bytes, data: bytes, iv: bytes) -> bytes:
    enc = Cipher(_algorithm(alg, key), modes.CBC(iv)).encryptor()
    out = enc.update(data) + enc.finalize()
    return out[-alg.block_size :]


def pad(data: bytes, block_size: int) -> bytes:
    """``pad(x)``: append ``80`` then ``00`` to a multiple of the block size, always (spec §1)."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % block_size)


def mac(alg: Alg, key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    """``MAC_K(x)``: 4-byte CBC MAC over ``pad(x)`` (spec §1).

    DES family: single DES for an 8-byte key, ISO 9797-1 algorithm 3 (retail MAC) for a 16-byte key.
    SM4: SM4 CBC. ``iv`` defaults to zeros; a shorter IV is right-padded with zeros to the block size.
    """
    alg = Alg(alg)
    block = alg.block_size
    iv = (iv or b"").ljust(block, b"\x00")
    if len(iv) != block:
        raise ValueError("IV longer than a block")
    padded = pad(data, block)
    if alg is Alg.SM4 or len(key) == 8:
        return _cbc_last_block(alg, key, padded, iv)[:4]
    if len(key) != 16:
        raise ValueError("a DES-family MAC key is 8 or 16 bytes")
    left, right = key[:8], key[8:]
    o = _cbc_last_block(alg, left, padded, iv)
    o = decrypt_ecb(alg, right, o)
    return encrypt_ecb(alg, left, o)[:4]


def verify_mac(alg: Alg, key: bytes, data: bytes, received: bytes, iv: bytes | None = None) -> None:
    """Check a 4-byte MAC in constant time; raise :class:`MacError` if it is wrong (spec §1)."""
    if not hmac.compare_digest(mac(alg, key, data, iv), received):
        raise MacError("MAC does not verify")


def diversify(alg: Alg, master_key: bytes, card_no: bytes) -> bytes:
    """Card key from an issuer master key and the 8-byte card_no (spec §1, diversification)."""
    if len(card_no) != 8:
        raise ValueError("card_no is 8 bytes")
    inverted = bytes(b ^ 0xFF for b in card_no)
    if Alg(alg) is Alg.SM4:
        return encrypt_ecb(Alg.SM4, master_key, card_no + inverted)
    return encrypt_ecb(Alg.DES, master_key, card_no) + encrypt_ecb(Alg.DES, master_key, inverted)


def session_key(alg: Alg, card_key: bytes, session_input: bytes) -> bytes:
    """Session key from a 16-byte card key and 8 input bytes (spec §1)."""
    if len(session_input) != 8:
        raise ValueError("session input is 8 bytes")
    if Alg(alg) is Alg.SM4:
        return encrypt_ecb(Alg.SM4, card_key, session_input + b"\x80" + b"\x00" * 7)
    return encrypt_ecb(Alg.DES, card_key, session_input)


def tac_key(alg: Alg, dtk: bytes) -> bytes:
    """TAC key from the card's DTK (spec §1)."""
    if Alg(alg) is Alg.SM4:
        return dtk
    return bytes(a ^ b for a, b in zip(dtk[:8], dtk[8:16], strict=True))


def kcv(alg: Alg, key: bytes) -> bytes:
    """Key check value: first 3 bytes of ``E_K`` of one zero block (spec §1)."""
    alg = Alg(alg)
    return encrypt_ecb(alg, key, b"\x00" * alg.block_size)[:3]


def wrap_key(alg: Alg, transport_key: bytes, key: bytes) -> bytes:
    """``E_KT(key)`` for PUT KEY (spec §2.5)."""
    return encrypt_ecb(alg, transport_key, key)


def unwrap_key(alg: Alg, transport_key: bytes, wrapped: bytes, expected_kcv: bytes) -> bytes:
    """Unwrap a PUT KEY key and check its KCV; raise :class:`MacError` when the KCV differs (spec §2.5)."""
    key = decrypt_ecb(alg, transport_key, wrapped)
    if not hmac.compare_digest(kcv(alg, key), expected_kcv):
        raise MacError("KCV of the unwrapped key differs")
    return key


def external_auth_cryptogram(alg: Alg, transport_key: bytes, challenge: bytes) -> bytes:
    """EXTERNAL AUTHENTICATE cryptogram: ``E_KT(challenge)``, for SM4 the first 8 bytes (spec §2.5)."""
    if len(challenge) != 8:
        raise ValueError("the challenge is 8 bytes")
    block = Alg(alg).block_size
    return encrypt_ecb(alg, transport_key, challenge.ljust(block, b"\x00"))[:8]


def line_mac(alg: Alg, damk: bytes, header_and_data: bytes, challenge: bytes) -> bytes:
    """Line MAC of a ``04``/``84``-class command: IV is the challenge padded with zeros (spec §2.4)."""
    return mac(alg, damk, header_and_data, challenge)


# --- load (spec §2.4, Load) ---------------------------------------------------------------------------


def load_session_key(alg: Alg, dlk: bytes, rand: bytes, online_seq: int) -> bytes:
    """``SK = session(DLK, rand ‖ online_seq ‖ 80 00)``."""
    return session_key(alg, dlk, rand + online_seq.to_bytes(2, "big") + b"\x80\x00")


def load_mac1(alg: Alg, sk: bytes, old_balance: int, amount: int, term_id: bytes) -> bytes:
    """``MAC1 = MAC_SK(old_balance ‖ amount ‖ 02 ‖ term_id)``."""
    return mac(alg, sk, old_balance.to_bytes(4, "big") + amount.to_bytes(4, "big") + b"\x02" + term_id)


def load_mac2(alg: Alg, sk: bytes, amount: int, term_id: bytes, date4: bytes, time3: bytes) -> bytes:
    """``MAC2 = MAC_SK(amount ‖ 02 ‖ term_id ‖ date4 ‖ time3)``."""
    return mac(alg, sk, amount.to_bytes(4, "big") + b"\x02" + term_id + date4 + time3)


def load_tac(
    alg: Alg,
    dtk: bytes,
    new_balance: int,
    online_seq: int,
    amount: int,
    term_id: bytes,
    date4: bytes,
    time3: bytes,
) -> bytes:
    """``TAC = MAC_TK(new_balance ‖ online_seq_before ‖ amount ‖ 02 ‖ term_id ‖ date4 ‖ time3)``."""
    data = (
        new_balance.to_bytes(4, "big")
        + online_seq.to_bytes(2, "big")
        + amount.to_bytes(4, "big")
        + b"\x02"
        + term_id
        + date4
        + time3
    )
    return mac(alg, tac_key(alg, dtk), data)


def verify_load_mac2(
    alg: Alg, sk: bytes, amount: int, term_id: bytes, date4: bytes, time3: bytes, received: bytes
) -> None:
    """Check a load's MAC2 (card side); raise :class:`MacError` if wrong."""
    if not hmac.compare_digest(load_mac2(alg, sk, amount, term_id, date4, time3), received):
        raise MacError("MAC2 does not verify")


def verify_load_mac1(alg: Alg, sk: bytes, old_balance: int, amount: int, term_id: bytes, received: bytes) -> None:
    """Check a load's MAC1 (host side); raise :class:`MacError` if wrong."""
    if not hmac.compare_digest(load_mac1(alg, sk, old_balance, amount, term_id), received):
        raise MacError("MAC1 does not verify")


# --- purchase (spec §2.4, Purchase; §3) ---------------------------------------------------------------


def purchase_session_key(alg: Alg, dpk: bytes, rand: bytes, offline_seq: int, term_seq: int) -> bytes:
    """``SK = session(DPK, rand ‖ offline_seq ‖ term_seq[2:4])``."""
    return session_key(alg, dpk, rand + offline_seq.to_bytes(2, "big") + term_seq.to_bytes(4, "big")[2:])


def purchase_mac1(alg: Alg, sk: bytes, amount: int, txn_type: int, term_id: bytes, date4: bytes, time3: bytes) -> bytes:
    """``MAC1 = MAC_SK(amount ‖ type ‖ term_id ‖ date4 ‖ time3)``."""
    return mac(alg, sk, amount.to_bytes(4, "big") + bytes((txn_type,)) + term_id + date4 + time3)


def purchase_mac2(alg: Alg, sk: bytes, amount: int) -> bytes:
    """``MAC2 = MAC_SK(amount)``."""
    return mac(alg, sk, amount.to_bytes(4, "big"))


def verify_purchase_mac1(
    alg: Alg,
    sk: bytes,
    amount: int,
    txn_type: int,
    term_id: bytes,
    date4: bytes,
    time3: bytes,
    received: bytes,
) -> None:
    """Check a purchase's MAC1 (card side); raise :class:`MacError` if wrong."""
    if not hmac.compare_digest(purchase_mac1(alg, sk, amount, txn_type, term_id, date4, time3), received):
        raise MacError("MAC1 does not verify")


def verify_purchase_mac2(alg: Alg, sk: bytes, amount: int, received: bytes) -> None:
    """Check a purchase's MAC2 (PSAM side); raise :class:`MacError` if wrong."""
    if not hmac.compare_digest(purchase_mac2(alg, sk, amount), received):
        raise MacError("MAC2 does not verify")


def purchase_tac(
    alg: Alg,
    dtk: bytes,
    amount: int,
    txn_type: int,
    term_id: bytes,
    term_seq: int,
    date4: bytes,
    time3: bytes,
) -> bytes:
    """``TAC = MAC_TK(amount ‖ type ‖ term_id ‖ term_seq ‖ date4 ‖ time3)``."""
    data = amount.to_bytes(4, "big") + bytes((txn_type,)) + term_id + term_seq.to_bytes(4, "big") + date4 + time3
    return mac(alg, tac_key(alg, dtk), data)


_PURCHASE_DATA = struct.Struct(">IB6sI4s3s")
"""amount 4 ‖ type 1 ‖ term_id 6 ‖ term_seq 4 ‖ date4 ‖ time3 (spec §2.4, purchase TAC)."""
_LOAD_DATA = struct.Struct(">IHIB6s4s3s")
"""new_balance 4 ‖ online_seq 2 ‖ amount 4 ‖ 02 ‖ term_id 6 ‖ date4 ‖ time3 (spec §2.4, load TAC)."""


class TacCalculator:
    """TACs of one card, fast: the TAC key's ECB encryptor is made once and CBC is done block by block.

    Meant for clearing and generators that compute or check millions of TACs; the results equal
    :func:`purchase_tac` and :func:`load_tac` (spec §1, TAC key; §2.4).
    """

    __slots__ = ("_block", "_encrypt")

    def __init__(self, alg: Alg, dtk: bytes) -> None:
        alg = Alg(alg)
        key = tac_key(alg, dtk)
        self._block = alg.block_size
        self._encrypt = Cipher(_algorithm(alg, key), modes.ECB()).encryptor().update

    def _mac_value(self, data: bytes) -> int:
        """The 4-byte CBC MAC of ``pad(data)`` as an integer."""
        block = self._block
        data += b"\x80" + bytes((-len(data) - 1) % block)
        encrypt = self._encrypt
        from_bytes = int.from_bytes
        chained = 0
        for start in range(0, len(data), block):
            plain = (from_bytes(data[start : start + block], "big") ^ chained).to_bytes(block, "big")
            chained = from_bytes(encrypt(plain), "big")
        return chained >> (block * 8 - 32)

    def _mac(self, data: bytes) -> bytes:
        return self._mac_value(data).to_bytes(4, "big")

    def purchase_value(
        self, amount: int, txn_type: int, term_id: bytes, term_seq: int, date4: bytes, time3: bytes
    ) -> int:
        """:meth:`purchase` as a 32-bit integer (big-endian): what clearing compares with a record's TAC."""
        if len(term_id) != 6 or len(date4) != 4 or len(time3) != 3:
            raise ValueError("term_id, date and time are 6, 4 and 3 bytes")
        try:
            data = _PURCHASE_DATA.pack(amount, txn_type, term_id, term_seq, date4, time3)
        except struct.error as exc:
            raise OverflowError(str(exc)) from None
        return self._mac_value(data)

    def load_value(
        self, new_balance: int, online_seq: int, amount: int, term_id: bytes, date4: bytes, time3: bytes
    ) -> int:
        """:meth:`load` as a 32-bit integer (big-endian)."""
        if len(term_id) != 6 or len(date4) != 4 or len(time3) != 3:
            raise ValueError("term_id, date and time are 6, 4 and 3 bytes")
        try:
            data = _LOAD_DATA.pack(new_balance, online_seq, amount, 0x02, term_id, date4, time3)
        except struct.error as exc:
            raise OverflowError(str(exc)) from None
        return self._mac_value(data)

    def purchase(self, amount: int, txn_type: int, term_id: bytes, term_seq: int, date4: bytes, time3: bytes) -> bytes:
        """``TAC = MAC_TK(amount ‖ type ‖ term_id ‖ term_seq ‖ date4 ‖ time3)``."""
        return self._mac(
            amount.to_bytes(4, "big") + bytes((txn_type,)) + term_id + term_seq.to_bytes(4, "big") + date4 + time3
        )

    def load(self, new_balance: int, online_seq: int, amount: int, term_id: bytes, date4: bytes, time3: bytes) -> bytes:
        """``TAC = MAC_TK(new_balance ‖ online_seq_before ‖ amount ‖ 02 ‖ term_id ‖ date4 ‖ time3)``."""
        return self._mac(
            new_balance.to_bytes(4, "big")
            + online_seq.to_bytes(2, "big")
            + amount.to_bytes(4, "big")
            + b"\x02"
            + term_id
            + date4
            + time3
        )


class Diversifier:
    """Card keys from one master key, fast: the master's ECB encryptor is made once (spec §1, diversification).

    Both suites encipher ``N ‖ ~N`` in ECB: two DES blocks give ``E(N) ‖ E(~N)``, one SM4 block gives
    ``E(N ‖ ~N)``; the results equal :func:`diversify`.
    """

    __slots__ = ("_encrypt",)

    def __init__(self, alg: Alg, master_key: bytes) -> None:
        self._encrypt = Cipher(_algorithm(Alg(alg), master_key), modes.ECB()).encryptor().update

    def card_key(self, card_no: bytes) -> bytes:
        """The card's 16-byte key."""
        if len(card_no) != 8:
            raise ValueError("card_no is 8 bytes")
        return self._encrypt(card_no + bytes(b ^ 0xFF for b in card_no))
