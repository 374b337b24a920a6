"""Personal data at rest (issue #5): ID and social-security numbers sealed, looked up by keyed hash, shown masked.

Sealing (authenticated encryption, AES-GCM in production) is done by a :class:`Sealer` the caller provides:
``issuance/keystore.py`` is the back office's one module that imports ``cryptography`` and the natural holder of
the data key, so this module imports no cryptography of its own. The look-up hash is HMAC-SHA256 from the
standard library under a separate key, so equal numbers find each other without decryption and a copied
table cannot be brute-forced without the key. The associated data of a sealed value names its column, so a
value copied into another column does not open. Display goes through :func:`mask_number`
(``110***********1234``).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from backoffice.errors import KeystoreError
from terminal.masking import mask_id, mask_phone

LOOKUP_KEY_LENGTH = 32
AAD_ID_NUMBER = b"onecard/residents.id_number"
AAD_SS_NUMBER = b"onecard/social_security_records.ss_number"

__all__ = [
    "AAD_ID_NUMBER",
    "AAD_SS_NUMBER",
    "PersonalDataError",
    "PersonalDataVault",
    "Sealer",
    "mask_number",
    "mask_phone",
]


class PersonalDataError(KeystoreError):
    """A sealed value that does not open (wrong key, altered bytes, or another column's value)."""

    code = "personal_data_error"


class Sealer(Protocol):
    """Authenticated encryption of short values under a data key the sealer holds (AES-256-GCM)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad`` (a fresh nonce each time)."""
        ...

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt a value made by :meth:`seal` with the same ``aad``; raise if it does not authenticate."""
        ...


def mask_number(number: str) -> str:
    """An ID or social-security number for display: ``110***********1234``."""
    return mask_id(number)


class PersonalDataVault:
    """Seals, opens and hashes personal numbers: a :class:`Sealer` and a 32-byte look-up key."""

    def __init__(self, sealer: Sealer, lookup_key: bytes) -> None:
        if len(lookup_key) != LOOKUP_KEY_LENGTH:
            raise ValueError("the look-up key is 32 bytes")
        self._sealer = sealer
        self._lookup_key = lookup_key

    def __repr__(self) -> str:
        return "PersonalDataVault(<keys redacted>)"

    def seal(self, value: str, aad: bytes) -> bytes:
        """Seal a text value for the column named by ``aad``."""
        return self._sealer.seal(value.encode("utf-8"), aad)

    def open(self, sealed: bytes, aad: bytes) -> str:
        """Open a sealed text value of the column named by ``aad``; :class:`PersonalDataError` if it fails."""
        try:
            return self._sealer.open_sealed(sealed, aad).decode("utf-8")
        except PersonalDataError:
            raise
        except Exception:
            raise PersonalDataError("a sealed personal value does not open") from None

    def lookup_hash(self, number: str) -> str:
        """The keyed look-up hash of a normalised ID / social-security number (64 hex digits)."""
        canonical = number.strip().upper().encode("ascii", errors="strict")
        return hmac.new(self._lookup_key, b"number:" + canonical, hashlib.sha256).hexdigest()
