"""Personal data: sealed at rest, keyed look-up hash, masking."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from issuance.pii import AAD_ID_NUMBER, AAD_SS_NUMBER, PersonalDataError, PersonalDataVault, mask_number

NUMBER = "11010519491231002X"


def test_seal_and_open(vault: PersonalDataVault) -> None:
    sealed = vault.seal(NUMBER, AAD_ID_NUMBER)
    assert NUMBER.encode() not in sealed
    assert vault.seal(NUMBER, AAD_ID_NUMBER) != sealed  # a fresh nonce each time
    assert vault.open(sealed, AAD_ID_NUMBER) == NUMBER


def test_a_value_does_not_open_in_another_column_or_altered(vault: PersonalDataVault) -> None:
    sealed = vault.seal(NUMBER, AAD_ID_NUMBER)
    with pytest.raises(PersonalDataError):
        vault.open(sealed, AAD_SS_NUMBER)
    altered = sealed[:-1] + bytes((sealed[-1] ^ 1,))
    with pytest.raises(PersonalDataError):
        vault.open(altered, AAD_ID_NUMBER)


def test_lookup_hash_is_keyed_and_normalised(
    vault: PersonalDataVault, make_vault: Callable[[], PersonalDataVault]
) -> None:
    other = make_vault()
    assert vault.lookup_hash(NUMBER) == vault.lookup_hash(" 11010519491231002x")
    assert vault.lookup_hash(NUMBER) != other.lookup_hash(NUMBER)
    assert len(vault.lookup_hash(NUMBER)) == 64
    assert "keys redacted" in repr(vault)


def test_masking() -> None:
    assert mask_number("110105194912311234") == "110***********1234"
    assert mask_number(NUMBER) == "110***********002X"


def test_lookup_key_length_is_checked(vault: PersonalDataVault) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PersonalDataVault(vault._sealer, os.urandom(16))
