"""The key operations issuance needs (spec §1, §2.4, §2.5), as intents: no caller ever holds a key.

:class:`Keystore` is the narrow interface the services code against; the keystores of ``issuance/keystore.py``
(software file, PKCS#11 HSM, and :class:`InMemoryKeystore` = ``issuance.keystore.MemoryKeystore``, the demo's and
the tests' keys held in memory) implement it.

``card_no`` is always the 8 BCD bytes of spec §0; ``version`` the key version (``key_ver``) a card or PSAM
carries. For :meth:`Keystore.external_authenticate` it names the key set whose transport key KT the factory
chips of the batch carry.
"""

from __future__ import annotations

from typing import Protocol

from cardos import crypto


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


from issuance.keystore import MemoryKeystore as InMemoryKeystore  # noqa: E402
from issuance.keystore import UnknownKey  # noqa: E402

__all__ = ["InMemoryKeystore", "Keystore", "UnknownKey"]
