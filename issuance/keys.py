"""The key operations issuance needs (spec §1, §2.4, §2.5), as intents: no caller ever holds a key.

:class:`Keystore` is the narrow interface the services code against; the keystores of ``issuance/keystore.py``
(software file, PKCS#11 HSM, and :class:`InMemoryKeystore` = ``issuance.keystore.MemoryKeystore``, the demo's and
the tests' keys held in memory) implement it.

``card_no`` is always the 8 BCD bytes of spec §0; ``version`` the key version (``key_ver``) a card or PSAM
carries. For :meth:`Keystore.external_authenticate` it names the key set whose transport key KT the factory
chips of the batch carry.
"""

from __future__ import annotations

from issuance.keystore import Keystore, UnknownKey
from issuance.keystore import MemoryKeystore as InMemoryKeystore

__all__ = ["InMemoryKeystore", "Keystore", "UnknownKey"]
