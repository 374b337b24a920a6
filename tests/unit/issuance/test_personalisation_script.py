"""Personalisation through the keystore sends exactly the vector-layout script (spec §2.5), no clear key."""

from __future__ import annotations

import pytest
from support import VECTORS, vector_keys

from cardos import crypto, perso
from cardos.crypto import Alg
from cardos.layout import HolderData, KeyUsage, PublicData, SocialSecurityData, encode_pin
from issuance.keys import InMemoryKeystore, UnknownKey
from issuance.personalisation import UserCardContents, chip_serial, psam_steps, user_card_steps

ALGS = [Alg.DES, Alg.SM4]
CARD_NO = "0310000000000001"


def _contents(alg: Alg, social: bool) -> UserCardContents:
    keys = vector_keys(alg)
    return UserCardContents(
        alg=alg,
        key_version=1,
        public=PublicData(keys.issuer_id, CARD_NO, "20250101", "20341231", 0x01, True),
        holder=HolderData("ZHANG SAN", "110101199003071233", "13800000000"),
        purse_limit=perso.purse_limit(True),
        purse_pin=encode_pin("123456"),
        social=SocialSecurityData("110101199003071233", "ZHANG SAN", 0x1F, "310000", "20250101") if social else None,
        social_pin=encode_pin("654321") if social else None,
    )


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("social", [False, True])
def test_user_card_script_equals_the_clear_key_script(alg: Alg, social: bool) -> None:
    keys = vector_keys(alg)
    contents = _contents(alg, social)
    profile = perso.user_card_profile(
        keys,
        card_no=CARD_NO,
        holder=contents.holder,
        pin="123456",
        start_date="20250101",
        expiry_date="20341231",
        social=contents.social,
        social_pin="654321",
    )
    expected = [step.apdu for step in perso.user_card_script(profile)]
    actual = [step.apdu for step in user_card_steps(InMemoryKeystore([keys]), contents)]
    assert actual == expected


def test_des_script_matches_the_vector_exchange() -> None:
    keys = vector_keys(Alg.DES)
    exchange = VECTORS["suites"]["00"]["exchanges"]["personalise_user_card"]
    vector_put_keys = [e["command"] for e in exchange if e["name"] == "PUT KEY"]
    steps = user_card_steps(InMemoryKeystore([keys]), _contents(Alg.DES, social=True))
    ours = [step.apdu.to_bytes().hex().upper() for step in steps if step.name == "PUT KEY"]
    assert ours == vector_put_keys


@pytest.mark.parametrize("alg", ALGS)
def test_psam_script_equals_the_clear_key_script(alg: Alg) -> None:
    keys = vector_keys(alg)
    expected = [step.apdu for step in perso.psam_script_from_keys(keys, "031000000001")]
    actual = [step.apdu for step in psam_steps(InMemoryKeystore([keys]), alg, 1, "031000000001")]
    assert actual == expected


@pytest.mark.parametrize("alg", ALGS)
def test_in_memory_keystore_operations(alg: Alg) -> None:
    keys = vector_keys(alg)
    store = InMemoryKeystore([keys])
    card_no = bytes.fromhex(CARD_NO)
    suite = VECTORS["suites"][f"{alg:02X}"]
    assert store.put_key_data(alg, 1, KeyUsage.DLK, card_no).hex().upper() == suite["put_key"]["data"]
    challenge = bytes.fromhex(suite["external_authenticate"]["challenge"])
    cryptogram = store.external_authenticate(alg, 1, challenge)
    assert cryptogram.hex().upper() == suite["external_authenticate"]["cryptogram"]
    line = suite["line_mac"]
    mac = store.line_mac(
        alg, 1, KeyUsage.DAMK, card_no, bytes.fromhex(line["mac_input"]), bytes.fromhex(line["challenge"])
    )
    assert mac.hex().upper() == line["mac"]
    with pytest.raises(UnknownKey):
        store.put_key_data(alg, 2, KeyUsage.DLK, card_no)
    with pytest.raises(crypto.MacError):
        store.verify_load_mac1_and_mac2(
            alg, 1, card_no, bytes(4), 0, 0, 100, bytes(6), bytes(4), bytes.fromhex("20250301"), bytes.fromhex("101530")
        )
    assert "MLK" not in repr(store) and keys.keys["MLK"].hex() not in repr(store)


def test_chip_serial_from_atr() -> None:
    assert chip_serial(bytes.fromhex("3B888001C0C1C2C3C4C5C6C709")) == "C0C1C2C3C4C5C6C7"
    with pytest.raises(ValueError):
        chip_serial(bytes.fromhex("3B00"))
