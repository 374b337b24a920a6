"""The key operations issuance needs (spec §1, §2.4, §2.5), as intents: no caller ever holds a key.

:class:`Keystore` is the interface the services code against; ``issuance/keystore.py`` (software file or
PKCS#11 HSM) is the production implementation, to be reconciled with this protocol. :class:`InMemoryKeystore`
serves tests and demos from :class:`cardos.keyfile.IssuerKeys` held in memory.

``card_no`` is always the 8 BCD bytes of spec §0; ``version`` the key version (``key_ver``) a card or PSAM
carries. For :meth:`Keystore.external_authenticate` it names the key set whose transport key KT the factory
chips of the batch carry.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Protocol

from backoffice.errors import KeystoreError
from cardos import crypto
from cardos.keyfile import CARD_KEY_MASTERS, IssuerKeys
from cardos.layout import KeyUsage
from cardos.perso import put_key_data


class Keystore(Protocol):
    """Intent-level key operations for personalisation, loads and card maintenance.

    The method names and parameters are those of ``issuance.keystore.Keystore``, so its implementations
    satisfy this protocol. MAC and TAC failures raise :class:`cardos.crypto.MacError` (or a subclass).
    """

    def put_key_data(self, alg: crypto.Alg, version: int, usage: int, card_no: bytes) -> bytes:
        """PUT KEY data (22 bytes) for the card key of ``usage``, diversified with ``card_no`` and wrapped
        under KT (spec §2.5)."""
        ...

    def psam_put_key_data(self, alg: crypto.Alg, version: int) -> bytes:
        """PUT KEY data (22 bytes) for a PSAM's master purchase key MPK of ``version`` (spec §3)."""
        ...

    def external_authenticate(self, alg: crypto.Alg, version: int, challenge: bytes) -> bytes:
        """``E_KT(challenge)`` (8 bytes) for EXTERNAL AUTHENTICATE of a factory chip (spec §2.5)."""
        ...

    def verify_load_mac1_and_mac2(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        rand: bytes,
        online_seq: int,
        old_balance: int,
        amount: int,
        term_id: bytes,
        mac1: bytes,
        date4: bytes,
        time3: bytes,
    ) -> bytes:
        """Verify a load's MAC1 and return MAC2 (spec §2.4, Load); raise :class:`cardos.crypto.MacError`
        when MAC1 is wrong."""
        ...

    def verify_load_tac(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        new_balance: int,
        online_seq: int,
        amount: int,
        term_id: bytes,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> bool:
        """True when a load's TAC is the card's (spec §2.4, Load, step 3); a wrong one may raise
        :class:`cardos.crypto.MacError` instead of answering False."""
        ...

    def verify_purchase_tac(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        amount: int,
        txn_type: int,
        term_id: bytes,
        term_seq: int,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> bool:
        """True when a purchase's TAC is the card's (spec §2.4, Purchase, step 3); a wrong one may raise
        :class:`cardos.crypto.MacError` instead of answering False."""
        ...

    def line_mac(
        self, alg: crypto.Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        """``MAC_K(header_and_data)`` with IV = ``challenge ‖ 00…`` under the card key of ``usage`` (spec §2.4,
        Line MAC; RELOAD PIN passes the new PIN alone under DRPK)."""
        ...


class UnknownKey(KeystoreError):
    """The keystore holds no key set for this algorithm and version."""

    code = "unknown_key"


class InMemoryKeystore:
    """A :class:`Keystore` over issuer master keys held in memory, one key set per ``(alg, version)``."""

    def __init__(self, key_sets: Iterable[IssuerKeys]) -> None:
        self._sets = {(crypto.Alg(keys.alg), keys.version): keys for keys in key_sets}
        if not self._sets:
            raise ValueError("an in-memory keystore needs at least one key set")

    def __repr__(self) -> str:
        return f"InMemoryKeystore(sets={sorted((f'{alg:02X}', ver) for alg, ver in self._sets)})"

    def _set(self, alg: crypto.Alg, version: int) -> IssuerKeys:
        try:
            return self._sets[(crypto.Alg(alg), version)]
        except (KeyError, ValueError):
            raise UnknownKey(f"no key set for alg {int(alg):02X} version {version}") from None

    def _card_key(self, alg: crypto.Alg, version: int, usage: int, card_no: bytes) -> bytes:
        if usage not in CARD_KEY_MASTERS:
            raise UnknownKey(f"no card key of usage {usage:02X}")
        return self._set(alg, version).card_key(usage, card_no)

    def _transport_key(self, alg: crypto.Alg, version: int) -> bytes:
        keys = self._set(alg, version)
        if "KT" not in keys.keys:
            raise UnknownKey("the key set has no transport key KT")
        return keys.keys["KT"]

    def _wrapped(self, alg: crypto.Alg, version: int, key: bytes) -> bytes:
        return put_key_data(alg, self._transport_key(alg, version), version, key)

    def put_key_data(self, alg: crypto.Alg, version: int, usage: int, card_no: bytes) -> bytes:
        """PUT KEY data for a diversified card key (spec §2.5)."""
        return self._wrapped(alg, version, self._card_key(alg, version, usage, card_no))

    def psam_put_key_data(self, alg: crypto.Alg, version: int) -> bytes:
        """PUT KEY data for MPK (spec §3)."""
        return self._wrapped(alg, version, self._set(alg, version).keys["MPK"])

    def external_authenticate(self, alg: crypto.Alg, version: int, challenge: bytes) -> bytes:
        """EXTERNAL AUTHENTICATE cryptogram (spec §2.5)."""
        return crypto.external_auth_cryptogram(alg, self._transport_key(alg, version), challenge)

    def verify_load_mac1_and_mac2(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        rand: bytes,
        online_seq: int,
        old_balance: int,
        amount: int,
        term_id: bytes,
        mac1: bytes,
        date4: bytes,
        time3: bytes,
    ) -> bytes:
        """Verify MAC1, answer MAC2 (spec §2.4, Load)."""
        dlk = self._card_key(alg, version, KeyUsage.DLK, card_no)
        sk = crypto.load_session_key(alg, dlk, rand, online_seq)
        crypto.verify_load_mac1(alg, sk, old_balance, amount, term_id, mac1)
        return crypto.load_mac2(alg, sk, amount, term_id, date4, time3)

    def verify_load_tac(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        new_balance: int,
        online_seq: int,
        amount: int,
        term_id: bytes,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> bool:
        """Check a load TAC (spec §2.4, Load)."""
        dtk = self._card_key(alg, version, KeyUsage.DTK, card_no)
        expected = crypto.load_tac(alg, dtk, new_balance, online_seq, amount, term_id, date4, time3)
        return hmac.compare_digest(expected, tac)

    def verify_purchase_tac(
        self,
        alg: crypto.Alg,
        version: int,
        card_no: bytes,
        amount: int,
        txn_type: int,
        term_id: bytes,
        term_seq: int,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> bool:
        """Check a purchase TAC (spec §2.4, Purchase)."""
        dtk = self._card_key(alg, version, KeyUsage.DTK, card_no)
        expected = crypto.purchase_tac(alg, dtk, amount, txn_type, term_id, term_seq, date4, time3)
        return hmac.compare_digest(expected, tac)

    def line_mac(
        self, alg: crypto.Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        """Line MAC under a card key (spec §2.4)."""
        return crypto.line_mac(alg, self._card_key(alg, version, usage, card_no), header_and_data, challenge)
