"""Fixtures for the pure issuance tests: a personal-data vault with an AES-GCM sealer."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from issuance.pii import PersonalDataVault


class AesGcmSealer:
    """AES-256-GCM with a random nonce: ``nonce 12 ‖ ciphertext ‖ tag`` (the keystore will provide this)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], aad)


@pytest.fixture
def make_vault() -> Callable[[], PersonalDataVault]:
    """Makes vaults with fresh random keys."""
    return lambda: PersonalDataVault(AesGcmSealer(os.urandom(32)), os.urandom(32))


@pytest.fixture
def vault(make_vault: Callable[[], PersonalDataVault]) -> PersonalDataVault:
    """A vault with fresh random keys."""
    return make_vault()
