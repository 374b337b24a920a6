"""The issuer keystore (card-protocol.md §1, §2.2, §2.4, §2.5, §3; cli.md key file and ``onecard keys import``).

Every computation is checked against the known-answer vectors for both suites. ``VECTOR_CHECKS`` is shared with
``tests/integration/test_keystore_softhsm.py``, which runs the same checks on the PKCS#11 keystore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import VECTORS, vector_keys
from typer.testing import CliRunner

from backoffice.errors import InvalidInput, KeystoreError
from cardos import crypto
from cardos.crypto import Alg
from cardos.keyfile import MASTER_KEY_NAMES, IssuerKeys
from issuance.keystore import (
    AesGcmSealer,
    BaseKeystore,
    CardKeyCache,
    KeyConflict,
    Keystore,
    MacMismatch,
    SoftwareKeystore,
    UnknownKey,
    open_keystore,
)
from onecard_cli.keys import keys_app

ALGS = [Alg.DES, Alg.SM4]
ALG_IDS = ["00", "04"]
RAW_KEY = bytes(range(32))
H = bytes.fromhex

# --- vectors -----------------------------------------------------------------------------------------------------


def suite(alg: Alg) -> dict[str, Any]:
    """The vector suite of ``alg``."""
    doc: dict[str, Any] = VECTORS["suites"][f"{alg:02X}"]
    return doc


def card_no(alg: Alg) -> bytes:
    """The vectors' card_no."""
    return H(suite(alg)["card_no"])


def secret_hexes(alg: Alg) -> set[str]:
    """Every key of a suite's vectors (masters, KT, card keys, TAC key, session keys) as hex, both cases."""
    s = suite(alg)
    values = [s["transport_key"]["KT"], s["tac_key"]["key"]]
    values += [entry["key"] for entry in s["master_keys"].values()]
    values += [entry["key"] for entry in s["diversified_keys"].values()]
    values += [s[name]["session_key"] for name in ("load", "purchase", "capp_purchase")]
    return {v.upper() for v in values} | {v.lower() for v in values}


ALL_SECRETS = secret_hexes(Alg.DES) | secret_hexes(Alg.SM4)


def assert_no_secret(text: str) -> None:
    """No key of either suite appears in ``text``."""
    leaked = [secret for secret in ALL_SECRETS if secret in text]
    assert not leaked, "key material in text"


def exchange_put_keys(alg: Alg, exchange: str) -> list[tuple[int, int, bytes]]:
    """``(usage, index, data)`` of every PUT KEY command of a vector exchange."""
    found = []
    for step in suite(alg)["exchanges"][exchange]:
        if step["name"] == "PUT KEY":
            apdu = H(step["command"])
            assert apdu[:2] == H("80D4") and apdu[4] == len(apdu) - 5
            found.append((apdu[2], apdu[3], apdu[5:]))
    return found


def check_put_key_user_card(store: Keystore, alg: Alg) -> None:
    """All PUT KEY data of ``personalise_user_card`` (ADF 1001 and ADF 1002), usages 01–06 (§2.5)."""
    put_keys = exchange_put_keys(alg, "personalise_user_card")
    assert sorted({usage for usage, _, _ in put_keys}) == [1, 2, 3, 4, 5, 6]
    assert len(put_keys) == 9
    for usage, index, data in put_keys:
        assert index == 0x01
        assert store.put_key_data(alg, 1, usage, card_no(alg)) == data


def check_put_key_vector(store: Keystore, alg: Alg) -> None:
    """The ``put_key`` vector (DLK) and every card key's KCV in its PUT KEY data (§1, §2.5)."""
    vector = suite(alg)["put_key"]
    data = store.put_key_data(alg, int(vector["version"], 16), int(vector["usage"], 16), card_no(alg))
    assert data == H(vector["data"])
    assert data[3:19] == H(vector["wrapped_key"])
    for entry in suite(alg)["diversified_keys"].values():
        assert store.put_key_data(alg, 1, int(entry["usage"], 16), card_no(alg))[19:] == H(entry["kcv"])


def check_put_key_psam(store: Keystore, alg: Alg) -> None:
    """MPK wrapped under KT for a PSAM: vector ``put_key_psam`` and exchange ``personalise_psam`` (§3)."""
    data = store.psam_put_key_data(alg, 1)
    assert data == H(suite(alg)["put_key_psam"]["data"])
    assert exchange_put_keys(alg, "personalise_psam") == [(0x21, 0x01, data)]


def check_external_authenticate(store: Keystore, alg: Alg) -> None:
    """``E_KT(challenge)`` (§2.5), and the exchanges' EXTERNAL AUTHENTICATE commands."""
    vector = suite(alg)["external_authenticate"]
    cryptogram = store.external_authenticate(alg, 1, H(vector["challenge"]))
    assert cryptogram == H(vector["cryptogram"])
    assert H(vector["apdu"])[5:] == cryptogram


def _load_args(alg: Alg) -> dict[str, Any]:
    inputs = suite(alg)["load"]["inputs"]
    return {
        "rand": H(inputs["rand"]),
        "online_seq": int(inputs["online_seq"], 16),
        "old_balance": int(inputs["old_balance"], 16),
        "amount": int(inputs["amount"], 16),
        "term_id": H(inputs["term_id"]),
        "date4": H(inputs["date"]),
        "time3": H(inputs["time"]),
    }


def check_load(store: Keystore, alg: Alg) -> None:
    """Load host: MAC1 checked, MAC2 answered; a wrong MAC1 or other amount refused (§2.4, Load)."""
    vector = suite(alg)["load"]
    args = _load_args(alg)
    mac1 = H(vector["mac1"])
    assert store.verify_load_mac1_and_mac2(alg, 1, card_no(alg), mac1=mac1, **args) == H(vector["mac2"])
    bad = bytes([mac1[0] ^ 0x01]) + mac1[1:]
    with pytest.raises(MacMismatch, match="MAC1"):
        store.verify_load_mac1_and_mac2(alg, 1, card_no(alg), mac1=bad, **args)
    with pytest.raises(crypto.MacError):
        store.verify_load_mac1_and_mac2(alg, 1, card_no(alg), mac1=mac1, **{**args, "amount": args["amount"] + 1})
    other_card = card_no(alg)[:-1] + b"\x02"
    with pytest.raises(MacMismatch):
        store.verify_load_mac1_and_mac2(alg, 1, other_card, mac1=mac1, **args)


def check_load_tac(store: Keystore, alg: Alg) -> None:
    """The load's TAC verifies; one changed field or bit does not (§2.4, Load step 3)."""
    vector = suite(alg)["load"]
    args = _load_args(alg)
    tac_args: dict[str, Any] = {
        "new_balance": int(vector["new_balance"], 16),
        "online_seq": args["online_seq"],
        "amount": args["amount"],
        "term_id": args["term_id"],
        "date4": args["date4"],
        "time3": args["time3"],
    }
    tac = H(vector["tac"])
    assert store.verify_load_tac(alg, 1, card_no(alg), tac=tac, **tac_args) is True
    with pytest.raises(MacMismatch, match="TAC"):
        store.verify_load_tac(alg, 1, card_no(alg), tac=tac[:3] + bytes([tac[3] ^ 0x80]), **tac_args)
    with pytest.raises(MacMismatch):
        store.verify_load_tac(alg, 1, card_no(alg), tac=tac, **{**tac_args, "new_balance": 1})


def check_purchase_tac(store: Keystore, alg: Alg) -> None:
    """Purchase and CAPP purchase TACs verify; altered records do not (§2.4, Purchase; §5)."""
    for name in ("purchase", "capp_purchase"):
        vector = suite(alg)[name]
        inputs = vector["inputs"]
        args: dict[str, Any] = {
            "amount": int(inputs["amount"], 16),
            "txn_type": int(inputs["type"], 16),
            "term_id": H(inputs["term_id"]),
            "term_seq": int(inputs["term_seq"], 16),
            "date4": H(inputs["date"]),
            "time3": H(inputs["time"]),
        }
        tac = H(vector["tac"])
        assert store.verify_purchase_tac(alg, 1, card_no(alg), tac=tac, **args) is True
        with pytest.raises(MacMismatch, match="TAC"):
            store.verify_purchase_tac(alg, 1, card_no(alg), tac=bytes(4), **args)
        with pytest.raises(MacMismatch):
            store.verify_purchase_tac(alg, 1, card_no(alg), tac=tac, **{**args, "term_seq": args["term_seq"] + 1})


def check_line_macs(store: Keystore, alg: Alg) -> None:
    """Line MAC vectors with DAMK (4- and 8-byte challenges, one and three blocks) and RELOAD PIN with DRPK."""
    for name in ("line_mac", "line_mac_update_binary", "line_mac_challenge8"):
        vector = suite(alg)[name]
        mac = store.line_mac(alg, 1, 0x01, card_no(alg), H(vector["mac_input"]), H(vector["challenge"]))
        assert mac == H(vector["mac"]), name
        assert H(vector["apdu"]).endswith(mac)
    vector = suite(alg)["reload_pin"]
    assert store.line_mac(alg, 1, 0x06, card_no(alg), H(vector["mac_input"]), H(vector["challenge"])) == H(
        vector["mac"]
    )


def check_kcvs(store: Keystore, alg: Alg) -> None:
    """The listing has every master key with the vectors' KCV, and no key bytes (§1)."""
    s = suite(alg)
    expected = {name: entry["kcv"] for name, entry in s["master_keys"].items()} | {"KT": s["transport_key"]["kcv"]}
    listed = {info.name: info.kcv for info in store.kcvs() if info.alg is alg and info.version == 1}
    assert listed == expected
    assert_no_secret(repr(store.kcvs()) + json.dumps([info.to_json() for info in store.kcvs()]))


VECTOR_CHECKS: list[Callable[[Keystore, Alg], None]] = [
    check_put_key_user_card,
    check_put_key_vector,
    check_put_key_psam,
    check_external_authenticate,
    check_load,
    check_load_tac,
    check_purchase_tac,
    check_line_macs,
    check_kcvs,
]
VECTOR_CHECK_IDS = [check.__name__.removeprefix("check_") for check in VECTOR_CHECKS]


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the keystore file goes."""
    return tmp_path / "onecard-keys.json"


@pytest.fixture
def store(path: Path) -> Iterator[SoftwareKeystore]:
    """A software keystore (raw file key) holding both vector suites under version 1."""
    with SoftwareKeystore(path, raw_key=RAW_KEY) as keystore:
        for alg in ALGS:
            keystore.import_keys(vector_keys(alg))
        yield keystore


def _key_file(tmp_path: Path, alg: Alg, *, bad_kcv: str | None = None) -> Path:
    doc = vector_keys(alg).to_json()
    if bad_kcv is not None:
        kcv = doc["kcv"]
        assert isinstance(kcv, dict)
        kcv[bad_kcv] = "000000"
    path = tmp_path / f"keys-{alg:02X}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --- the vectors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", VECTOR_CHECKS, ids=VECTOR_CHECK_IDS)
@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_vectors(store: SoftwareKeystore, alg: Alg, check: Callable[[Keystore, Alg], None]) -> None:
    check(store, alg)


def test_is_a_keystore(store: SoftwareKeystore) -> None:
    assert isinstance(store, Keystore)


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_put_key_data_matches_perso_for_other_cards(store: SoftwareKeystore, alg: Alg) -> None:
    """For any card_no, the data equals what cardos.perso builds from the clear keys (§2.5)."""
    from cardos import perso

    keys = vector_keys(alg)
    for serial in (2, 99, 123456789012):
        number = f"0310{serial:012d}"
        profile = perso.user_card_profile(keys, card_no=number)
        for step in perso.user_card_script(profile):
            if step.name == "PUT KEY":
                assert store.put_key_data(alg, 1, step.apdu.p1, H(number)) == step.apdu.data


def test_authorize_load_is_the_load_host(store: SoftwareKeystore) -> None:
    vector = suite(Alg.DES)["load"]
    args = _load_args(Alg.DES)
    assert store.authorize_load(Alg.DES, 1, card_no(Alg.DES), mac1=H(vector["mac1"]), **args) == H(vector["mac2"])


# --- import --------------------------------------------------------------------------------------------------------


def test_import_returns_kcvs_and_is_idempotent(path: Path) -> None:
    keys = vector_keys(Alg.DES)
    with SoftwareKeystore(path, raw_key=RAW_KEY) as store:
        assert store.import_keys(keys) == keys.kcvs()
        before = path.read_bytes()
        assert store.import_keys(keys) == keys.kcvs()
        assert path.read_bytes() == before, "an identical import rewrites nothing"


def test_a_different_key_under_the_same_name_refuses_the_whole_import(path: Path) -> None:
    keys = vector_keys(Alg.DES)
    with SoftwareKeystore(path, raw_key=RAW_KEY) as store:
        store.import_keys(IssuerKeys(keys.issuer_id, Alg.DES, {"KT": keys.keys["KT"], "MDAMK": keys.keys["MDAMK"]}))
        before = path.read_bytes()
        changed = dict(keys.keys) | {"MDAMK": bytes(16)}
        with pytest.raises(KeyConflict, match=r"onecard:00:01:MDAMK") as info:
            store.import_keys(IssuerKeys(keys.issuer_id, Alg.DES, changed))
        assert_no_secret(str(info.value) + json.dumps(info.value.to_dict()))
        assert path.read_bytes() == before
        assert {i.name for i in store.kcvs()} == {"KT", "MDAMK"}
        with pytest.raises(UnknownKey):
            store.put_key_data(Alg.DES, 1, 0x03, card_no(Alg.DES))
        # The same keys under another version are another key set.
        store.import_keys(IssuerKeys(keys.issuer_id, Alg.DES, changed), version=2)
    with SoftwareKeystore(path, raw_key=RAW_KEY) as reopened:
        assert {(i.version, i.name) for i in reopened.kcvs()} == {(1, "KT"), (1, "MDAMK")} | {
            (2, name) for name in MASTER_KEY_NAMES
        }


def test_import_checks_the_key_set(path: Path) -> None:
    with SoftwareKeystore(path, raw_key=RAW_KEY) as store:
        with pytest.raises(InvalidInput):
            store.import_keys(IssuerKeys(bytes(8), Alg.DES, {}))
        with pytest.raises(InvalidInput):
            store.import_keys(IssuerKeys(bytes(8), Alg.DES, {"KT": bytes(8)}))
        with pytest.raises(InvalidInput):
            store.import_keys(IssuerKeys(bytes(8), Alg.DES, {"KX": bytes(16)}))
        with pytest.raises(InvalidInput):
            store.import_keys(vector_keys(Alg.DES), version=256)
        assert store.kcvs() == []
    assert not path.exists()


def test_two_handles_on_one_file_merge_their_imports(path: Path) -> None:
    first = SoftwareKeystore(path, raw_key=RAW_KEY)
    second = SoftwareKeystore(path, raw_key=RAW_KEY)
    first.import_keys(vector_keys(Alg.DES))
    second.import_keys(vector_keys(Alg.SM4))
    with SoftwareKeystore(path, raw_key=RAW_KEY) as third:
        assert {info.alg for info in third.kcvs()} == {Alg.DES, Alg.SM4}
    assert {info.alg for info in second.kcvs()} == {Alg.DES, Alg.SM4}


# --- the file --------------------------------------------------------------------------------------------------


def test_file_holds_no_key_in_clear(store: SoftwareKeystore, path: Path) -> None:
    raw = path.read_bytes()
    text = raw.decode("ascii")
    assert_no_secret(text)
    for alg in ALGS:
        for key in vector_keys(alg).keys.values():
            assert key not in raw
    doc = json.loads(text)
    assert set(doc) == {"format", "kdf", "nonce", "ciphertext"}
    assert doc["kdf"] == {"name": "raw"}
    assert os.stat(path).st_mode & 0o077 == 0, "the file is private to its owner"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_passphrase_file_reopens_and_refuses_a_wrong_passphrase(path: Path) -> None:
    with SoftwareKeystore(path, passphrase="correct horse battery staple") as store:
        store.import_keys(vector_keys(Alg.SM4))
    doc = json.loads(path.read_text())
    assert doc["kdf"]["name"] == "scrypt" and doc["kdf"]["n"] >= 2**14
    assert_no_secret(path.read_text())
    with SoftwareKeystore(path, passphrase="correct horse battery staple") as store:
        check_put_key_user_card(store, Alg.SM4)
    with pytest.raises(KeystoreError, match="wrong passphrase or key") as info:
        SoftwareKeystore(path, passphrase="wrong horse")
    assert "wrong horse" not in str(info.value)
    with pytest.raises(KeystoreError, match="ONECARD_KEYSTORE_PASSPHRASE"):
        SoftwareKeystore(path, raw_key=RAW_KEY)


def test_wrong_raw_key_and_missing_credentials(store: SoftwareKeystore, path: Path) -> None:
    with pytest.raises(KeystoreError, match="wrong passphrase or key"):
        SoftwareKeystore(path, raw_key=bytes(32))
    with pytest.raises(KeystoreError, match="protected by a raw key: set ONECARD_KEYSTORE_KEY"):
        SoftwareKeystore(path, passphrase="a passphrase")
    with pytest.raises(KeystoreError, match="exactly one"):
        SoftwareKeystore(path)
    with pytest.raises(KeystoreError, match="32 bytes"):
        SoftwareKeystore(path, raw_key=bytes(16))


def test_altered_file_is_refused(store: SoftwareKeystore, path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["nonce"] = "00" * 12
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="altered"):
        SoftwareKeystore(path, raw_key=RAW_KEY)
    path.write_text("not json")
    with pytest.raises(KeystoreError, match="not an onecard keystore"):
        SoftwareKeystore(path, raw_key=RAW_KEY)


def test_tampered_scrypt_parameters_are_refused(path: Path) -> None:
    with SoftwareKeystore(path, passphrase="pass phrase") as store:
        store.import_keys(vector_keys(Alg.DES))
    doc = json.loads(path.read_text())
    doc["kdf"]["n"] = 2**30
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="out of range"):
        SoftwareKeystore(path, passphrase="pass phrase")


def test_a_failed_write_leaves_the_old_file(
    store: SoftwareKeystore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    keys = vector_keys(Alg.DES)
    with pytest.raises(OSError, match="disk full"):
        store.import_keys(keys, version=3)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert 3 not in {info.version for info in store.kcvs()}


# --- nothing key-like leaks -------------------------------------------------------------------------------------


def test_reprs_and_errors_hold_no_key(store: SoftwareKeystore, path: Path) -> None:
    texts = [repr(store), str(store), repr(store.kcvs()), repr(vector_keys(Alg.DES))]
    errors: list[Exception] = []
    for call in (
        lambda: store.verify_purchase_tac(
            Alg.DES, 1, card_no(Alg.DES), 1, 6, bytes(6), 1, bytes(4), bytes(3), bytes(4)
        ),
        lambda: store.put_key_data(Alg.SM4, 9, 1, card_no(Alg.SM4)),
        lambda: store.import_keys(IssuerKeys(bytes(8), Alg.SM4, {"MTK": bytes(16)})),
        lambda: store.line_mac(Alg.DES, 1, 0x02, card_no(Alg.DES), b"", bytes(4)),
        lambda: SoftwareKeystore(path, raw_key=bytes(32)),
    ):
        with pytest.raises(Exception) as info:
            call()
        errors.append(info.value)
    for error in errors:
        texts += [str(error), repr(error), repr(error.args)]
        if isinstance(error, KeystoreError | InvalidInput | KeyConflict):
            texts.append(json.dumps(error.to_dict()))
    for text in texts:
        assert_no_secret(text)
    assert "RAW_KEY" not in repr(store) and RAW_KEY.hex() not in " ".join(texts)


# --- arguments ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.put_key_data(0x01, 1, 1, bytes(8)),
        lambda s: s.put_key_data(Alg.DES, 1, 0x10, bytes(8)),
        lambda s: s.put_key_data(Alg.DES, 1, 1, bytes(7)),
        lambda s: s.put_key_data(Alg.DES, -1, 1, bytes(8)),
        lambda s: s.external_authenticate(Alg.DES, 1, bytes(4)),
        lambda s: s.line_mac(Alg.DES, 1, 0x03, bytes(8), b"", bytes(4)),
        lambda s: s.line_mac(Alg.DES, 1, 0x01, bytes(8), b"", bytes(5)),
        lambda s: s.verify_purchase_tac(Alg.DES, 1, bytes(8), 1, 0x02, bytes(6), 1, bytes(4), bytes(3), bytes(4)),
        lambda s: s.verify_load_tac(Alg.DES, 1, bytes(8), -1, 0, 1, bytes(6), bytes(4), bytes(3), bytes(4)),
        lambda s: s.verify_load_mac1_and_mac2(
            Alg.DES, 1, bytes(8), bytes(4), 0x10000, 0, 0, bytes(6), bytes(4), bytes(4), bytes(3)
        ),
    ],
)
def test_bad_arguments_are_invalid_input(store: SoftwareKeystore, call: Callable[[BaseKeystore], object]) -> None:
    with pytest.raises(InvalidInput):
        call(store)


def test_unknown_version(store: SoftwareKeystore) -> None:
    with pytest.raises(UnknownKey, match=r"onecard:00:02:KT"):
        store.external_authenticate(Alg.DES, 2, bytes(8))


def test_card_key_cache_is_an_lru() -> None:
    cache = CardKeyCache(size=2)
    calls: list[int] = []

    def derive(n: int) -> Callable[[], bytes]:
        def run() -> bytes:
            calls.append(n)
            return bytes([n])

        return run

    for n in (1, 2, 1, 3, 1, 2):
        assert cache.get((Alg.DES, 1, 4, bytes([n])), derive(n)) == bytes([n])
    assert calls == [1, 2, 3, 2]
    assert "\\x" not in repr(cache)


def test_tac_checks_reuse_the_derived_card_key(store: SoftwareKeystore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = crypto.diversify

    def counting(alg: Alg, master: bytes, number: bytes) -> bytes:
        calls.append(number)
        return real(alg, master, number)

    monkeypatch.setattr(crypto, "diversify", counting)
    for _ in range(3):
        check_purchase_tac(store, Alg.DES)
    assert len(calls) == 1


# --- open_keystore ---------------------------------------------------------------------------------------------


def test_open_keystore_reads_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"ONECARD_KEYSTORE_KEY": RAW_KEY.hex()}
    with open_keystore(env=env) as store:
        assert isinstance(store, SoftwareKeystore)
        store.import_keys(vector_keys(Alg.DES))
    assert (tmp_path / "onecard-keys.json").exists()
    with open_keystore(f"file:{tmp_path / 'onecard-keys.json'}", env) as store:
        assert len(store.kcvs()) == 7
    with open_keystore(env={**env, "ONECARD_KEYSTORE": str(tmp_path / "other.json")}) as store:
        assert store.kcvs() == []
    with pytest.raises(KeystoreError, match="64 hex digits"):
        open_keystore(env={"ONECARD_KEYSTORE_KEY": "not hex"})
    with pytest.raises(KeystoreError, match="pkcs11:<module path>:<token label>"):
        open_keystore("pkcs11:/usr/lib/softhsm/libsofthsm2.so", env)
    with pytest.raises(KeystoreError, match="ONECARD_HSM_PIN"):
        open_keystore("pkcs11:/usr/lib/softhsm/libsofthsm2.so:token", env)


# --- onecard keys import ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's environment: a software keystore at ``path`` with a raw key."""
    monkeypatch.setenv("ONECARD_KEYSTORE", str(path))
    monkeypatch.setenv("ONECARD_KEYSTORE_KEY", RAW_KEY.hex())
    monkeypatch.delenv("ONECARD_KEYSTORE_PASSPHRASE", raising=False)
    monkeypatch.delenv("ONECARD_DEBUG", raising=False)
    return path


def test_cli_import_prints_names_and_kcvs(cli_env: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(keys_app, ["import", str(_key_file(tmp_path, Alg.DES))])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert {tuple(line.split()) for line in lines} == set(vector_keys(Alg.DES).kcvs().items())
    assert_no_secret(result.output)
    result = runner.invoke(keys_app, ["import", str(_key_file(tmp_path, Alg.SM4)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["alg"] == "04" and doc["version"] == 1
    assert {k["name"]: k["kcv"] for k in doc["keys"]} == vector_keys(Alg.SM4).kcvs()
    listed = runner.invoke(keys_app, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)["keys"]) == 14
    assert_no_secret(listed.output)


def test_cli_refuses_a_file_with_a_bad_kcv(cli_env: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(keys_app, ["import", str(_key_file(tmp_path, Alg.DES, bad_kcv="MTK"))])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: KCV of MTK does not match"]
    assert result.stdout == ""
    assert not cli_env.exists(), "nothing imported"


def test_cli_refuses_a_conflicting_key(cli_env: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(keys_app, ["import", str(_key_file(tmp_path, Alg.DES))]).exit_code == 0
    before = cli_env.read_bytes()
    other = IssuerKeys.generate(bytes(8), Alg.DES)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other.to_json()))
    result = runner.invoke(keys_app, ["import", str(path)])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: a different key onecard:00:01:") and "Traceback" not in result.output
    assert cli_env.read_bytes() == before


def test_cli_wrong_key_for_the_keystore(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    assert runner.invoke(keys_app, ["import", str(_key_file(tmp_path, Alg.DES))]).exit_code == 0
    monkeypatch.setenv("ONECARD_KEYSTORE_KEY", "11" * 32)
    result = runner.invoke(keys_app, ["list"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot open keystore file") and "wrong passphrase or key" in line


# --- the sealer for other back-office secrets -------------------------------------------------------------------


def test_aes_gcm_sealer() -> None:
    sealer = AesGcmSealer(bytes(range(32)))
    sealed = sealer.seal(b"110101199003071234", b"onecard/residents.id_number")
    assert b"110101199003071234" not in sealed and len(sealed) == 12 + 18 + 16
    assert sealer.open_sealed(sealed, b"onecard/residents.id_number") == b"110101199003071234"
    assert sealer.seal(b"x", b"a") != sealer.seal(b"x", b"a")
    with pytest.raises(KeystoreError, match="does not open"):
        sealer.open_sealed(sealed, b"onecard/other_column")
    with pytest.raises(KeystoreError, match="does not open"):
        AesGcmSealer(bytes(32)).open_sealed(sealed, b"onecard/residents.id_number")
    with pytest.raises(KeystoreError):
        sealer.open_sealed(sealed[:20], b"")
    assert bytes(range(32)).hex() not in repr(sealer)


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_the_tac_calculator_checks_the_vector_tacs(store: SoftwareKeystore, alg: Alg) -> None:
    """Clearing's fast path: the keystore's TAC calculator of the vector card gives the vectors' TACs (§2.4)."""
    vector = suite(alg)["purchase"]
    i = vector["inputs"]
    calculator = store.tac_calculator(alg, 1, card_no(alg))
    tac = calculator.purchase(
        int(i["amount"], 16), int(i["type"], 16), H(i["term_id"]), int(i["term_seq"], 16), H(i["date"]), H(i["time"])
    )
    assert tac == H(vector["tac"])
    assert store.tac_calculator(alg, 1, card_no(alg)).purchase_value(
        int(i["amount"], 16), int(i["type"], 16), H(i["term_id"]), int(i["term_seq"], 16), H(i["date"]), H(i["time"])
    ) == int(vector["tac"], 16)
