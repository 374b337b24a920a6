"""The PKCS#11 keystore on a real SoftHSM token (card-protocol.md §1–§3; cli.md ``ONECARD_KEYSTORE=pkcs11:…``).

The fixture makes its own SoftHSM configuration and token in a temporary directory, points ``SOFTHSM2_CONF`` at it
for this process, and deletes it all afterwards. Without SoftHSM the tests skip, unless services are required
(``ONECARD_REQUIRE_SERVICES`` or ``CI``), when they fail.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PyKCS11
import pytest
from services import require_services
from support import vector_keys
from typer.testing import CliRunner
from unit.issuance.test_keystore import (
    ALG_IDS,
    ALGS,
    RAW_KEY,
    VECTOR_CHECK_IDS,
    VECTOR_CHECKS,
    assert_no_secret,
    check_kcvs,
    check_put_key_user_card,
    exchange_put_keys,
)

from backoffice.errors import KeystoreError
from cardos import crypto, perso
from cardos.crypto import Alg
from cardos.keyfile import MASTER_KEY_NAMES, IssuerKeys
from issuance.keystore import KeyConflict, Keystore, SoftwareKeystore, UnknownKey, key_label, open_keystore
from issuance.keystore_pkcs11 import KEK_LABEL, Pkcs11Keystore
from onecard_cli.keys import keys_app

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
LABEL = "onecard-test"
PIN = "246810"
SO_PIN = "13579135"


@dataclass(frozen=True)
class SoftHsm:
    """A throw-away SoftHSM token."""

    module: str
    label: str
    pin: str
    token_dir: Path

    @property
    def setting(self) -> str:
        """The ``ONECARD_KEYSTORE`` value for this token."""
        return f"pkcs11:{self.module}:{self.label}"


def _unavailable(reason: str) -> None:
    if require_services():
        pytest.fail(f"the HSM keystore tests need SoftHSM: {reason}")
    pytest.skip(f"the HSM keystore tests need SoftHSM: {reason}")


@pytest.fixture(scope="module")
def softhsm() -> Iterator[SoftHsm]:
    """A SoftHSM token of its own, in a temporary directory, for this module's tests."""
    util = shutil.which("softhsm2-util")
    module = next((path for path in MODULE_CANDIDATES if os.path.exists(path)), None)
    if util is None or module is None:
        _unavailable("softhsm2-util or libsofthsm2.so not found (Debian package softhsm2)")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="onecard-softhsm-"))
    token_dir = root / "tokens"
    token_dir.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        try:
            subprocess.run(
                [util, "--init-token", "--free", "--label", LABEL, "--so-pin", SO_PIN, "--pin", PIN],
                check=True,
                capture_output=True,
                timeout=30,
            )
            yield SoftHsm(module, LABEL, PIN, token_dir)
        except subprocess.CalledProcessError as exc:
            _unavailable(f"softhsm2-util --init-token failed: {exc.stderr.decode(errors='replace')[-300:]}")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hsm(softhsm: SoftHsm) -> Iterator[Pkcs11Keystore]:
    """The HSM keystore holding both vector suites under version 1."""
    store = open_keystore(softhsm.setting, {"ONECARD_HSM_PIN": softhsm.pin})
    assert isinstance(store, Pkcs11Keystore)
    for alg in ALGS:
        store.import_keys(vector_keys(alg))
    yield store
    store.close()


@pytest.fixture
def session(hsm: Pkcs11Keystore) -> Any:
    """The keystore's own PKCS#11 session, to look at the token's objects."""
    return hsm._session


def _objects(session: Any, cls: int) -> dict[str, Any]:
    found = {}
    for handle in session.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_TOKEN, True)]):
        found[str(session.getAttributeValue(handle, [PyKCS11.CKA_LABEL])[0])] = handle
    return found


# --- the vectors, through the token ------------------------------------------------------------------------------


@pytest.mark.parametrize("check", VECTOR_CHECKS, ids=VECTOR_CHECK_IDS)
@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_vectors(hsm: Pkcs11Keystore, alg: Alg, check: Callable[[Keystore, Alg], None]) -> None:
    check(hsm, alg)


def test_is_a_keystore(hsm: Pkcs11Keystore) -> None:
    assert isinstance(hsm, Keystore)


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_agrees_with_the_software_keystore_on_random_inputs(hsm: Pkcs11Keystore, alg: Alg, tmp_path: Path) -> None:
    """Any card, any command length (line MACs of 1 to 6 DES blocks), any load or purchase."""
    rng = random.Random(f"keystore-{alg}")
    with SoftwareKeystore(tmp_path / "k.json", raw_key=RAW_KEY) as soft:
        soft.import_keys(vector_keys(alg))
        for _ in range(12):
            number = bytes.fromhex(f"0310{rng.randrange(10**12):012d}")
            usage = rng.randrange(1, 7)
            assert hsm.put_key_data(alg, 1, usage, number) == soft.put_key_data(alg, 1, usage, number)
            data, challenge = rng.randbytes(rng.randrange(0, 44)), rng.randbytes(rng.choice((4, 8)))
            line_usage = rng.choice((1, 6))
            assert hsm.line_mac(alg, 1, line_usage, number, data, challenge) == soft.line_mac(
                alg, 1, line_usage, number, data, challenge
            )
            assert hsm.external_authenticate(alg, 1, challenge.ljust(8, b"\x01")) == soft.external_authenticate(
                alg, 1, challenge.ljust(8, b"\x01")
            )
            dlk = vector_keys(alg).card_key(0x03, number)
            rand, seq, balance, amount = (
                rng.randbytes(4),
                rng.randrange(0xFFFF),
                rng.randrange(10**5),
                rng.randrange(10**4),
            )
            term_id, date4, time3 = rng.randbytes(6), rng.randbytes(4), rng.randbytes(3)
            sk = crypto.load_session_key(alg, dlk, rand, seq)
            mac1 = crypto.load_mac1(alg, sk, balance, amount, term_id)
            load = (alg, 1, number, rand, seq, balance, amount, term_id, mac1, date4, time3)
            assert hsm.verify_load_mac1_and_mac2(*load) == soft.verify_load_mac1_and_mac2(*load)
            dtk = vector_keys(alg).card_key(0x04, number)
            tac = crypto.purchase_tac(alg, dtk, amount, 0x06, term_id, seq, date4, time3)
            assert hsm.verify_purchase_tac(alg, 1, number, amount, 0x06, term_id, seq, date4, time3, tac)


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_put_key_data_matches_perso(hsm: Pkcs11Keystore, alg: Alg) -> None:
    """For another card, the token's PUT KEY data equals what cardos.perso builds from clear keys (§2.5)."""
    number = "0310000000004321"
    profile = perso.user_card_profile(vector_keys(alg), card_no=number)
    steps = [step for step in perso.user_card_script(profile) if step.name == "PUT KEY"]
    assert len(steps) == 6
    for step in steps:
        assert hsm.put_key_data(alg, 1, step.apdu.p1, bytes.fromhex(number)) == step.apdu.data


# --- what the token holds ------------------------------------------------------------------------------------------


def test_des_master_keys_are_sensitive_and_never_leave_the_token(hsm: Pkcs11Keystore, session: Any) -> None:
    keys = _objects(session, PyKCS11.CKO_SECRET_KEY)
    lib = hsm._lib.lib
    wrapper = session.generateKey(
        [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
            (PyKCS11.CKA_VALUE_LEN, 32),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_WRAP, True),
        ],
        PyKCS11.MechanismAESGENERATEKEY,
    )
    for name in MASTER_KEY_NAMES:
        handle = keys[key_label(Alg.DES, 1, name)]
        sensitive, extractable, private, modifiable, decrypt, wrap = session.getAttributeValue(
            handle,
            [
                PyKCS11.CKA_SENSITIVE,
                PyKCS11.CKA_EXTRACTABLE,
                PyKCS11.CKA_PRIVATE,
                PyKCS11.CKA_MODIFIABLE,
                PyKCS11.CKA_DECRYPT,
                PyKCS11.CKA_WRAP,
            ],
        )
        assert (sensitive, extractable, private, modifiable, decrypt, wrap) == (True, False, True, False, False, False)
        template = PyKCS11.LowLevel.ckattrlist(1)
        template[0].SetType(PyKCS11.CKA_VALUE)
        assert lib.C_GetAttributeValue(session.session, handle, template) == PyKCS11.CKR_ATTRIBUTE_SENSITIVE
        assert session.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0] is None
        with pytest.raises(PyKCS11.PyKCS11Error):
            session.setAttributeValue(handle, [(PyKCS11.CKA_EXTRACTABLE, True)])
        with pytest.raises(PyKCS11.PyKCS11Error) as refused:
            session.wrapKey(wrapper, handle, PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_WRAP_PAD))
        assert refused.value.value == PyKCS11.CKR_KEY_UNEXTRACTABLE
        if name != "KT":
            # Masters only derive: no encryption oracle giving card-key halves in clear.
            with pytest.raises(PyKCS11.PyKCS11Error):
                session.encrypt(handle, bytes(8), PyKCS11.Mechanism(PyKCS11.CKM_DES3_ECB))
    session.destroyObject(wrapper)
    kek = keys[KEK_LABEL]
    assert session.getAttributeValue(kek, [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE]) == [True, False]
    assert session.getAttributeValue(kek, [PyKCS11.CKA_VALUE])[0] is None


def test_sm4_keys_are_stored_encrypted_under_the_token_kek(hsm: Pkcs11Keystore, session: Any) -> None:
    data = _objects(session, PyKCS11.CKO_DATA)
    for name in MASTER_KEY_NAMES:
        handle = data[key_label(Alg.SM4, 1, name)]
        value = bytes(session.getAttributeValue(handle, [PyKCS11.CKA_VALUE], allAsBinary=True)[0])
        assert vector_keys(Alg.SM4).keys[name] not in value
        assert_no_secret(value.decode())
        assert session.getAttributeValue(handle, [PyKCS11.CKA_PRIVATE])[0] is True
    assert not any(label.startswith("onecard:04:") for label in _objects(session, PyKCS11.CKO_SECRET_KEY))


def test_token_files_hold_no_key_in_clear(hsm: Pkcs11Keystore, softhsm: SoftHsm) -> None:
    blobs = b"".join(path.read_bytes() for path in softhsm.token_dir.rglob("*") if path.is_file())
    assert blobs, "the token has files"
    for alg in ALGS:
        for key in vector_keys(alg).keys.values():
            assert key not in blobs and key.hex().encode() not in blobs and key.hex().upper().encode() not in blobs


def test_derived_card_keys_do_not_stay_in_the_token(hsm: Pkcs11Keystore, session: Any) -> None:
    number = bytes.fromhex("0310000000000077")
    check_put_key_user_card(hsm, Alg.DES)
    hsm.line_mac(Alg.DES, 1, 1, number, bytes(20), bytes(4))
    leftovers = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_TOKEN, False)])
    assert leftovers == []


# --- import ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_import_is_idempotent_and_refuses_a_different_key(hsm: Pkcs11Keystore, alg: Alg) -> None:
    keys = vector_keys(alg)
    before = hsm.kcvs()
    assert hsm.import_keys(keys) == keys.kcvs()
    changed = dict(keys.keys) | {"MLK": bytes(range(16))}
    with pytest.raises(KeyConflict, match=f"onecard:{alg:02X}:01:MLK") as info:
        hsm.import_keys(IssuerKeys(keys.issuer_id, alg, changed))
    assert_no_secret(str(info.value))
    assert hsm.kcvs() == before
    check_kcvs(hsm, alg)


@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_a_failing_import_leaves_nothing(
    hsm: Pkcs11Keystore, alg: Alg, session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token refuses the last object: every key created before it is destroyed again (all or nothing)."""
    before = hsm.kcvs()
    real = Pkcs11Keystore._create_data
    calls = {"n": 0}

    def flaky(session: Any, label: str, value: bytes) -> Any:
        calls["n"] += 1
        if calls["n"] == (1 if alg is Alg.DES else 5):
            raise PyKCS11.PyKCS11Error(PyKCS11.CKR_DEVICE_MEMORY)
        return real(session, label, value)

    monkeypatch.setattr(Pkcs11Keystore, "_create_data", staticmethod(flaky))
    with pytest.raises(KeystoreError, match="CKR_DEVICE_MEMORY"):
        hsm.import_keys(vector_keys(alg), version=7)
    assert hsm.kcvs() == before
    labels = set(_objects(session, PyKCS11.CKO_SECRET_KEY)) | set(_objects(session, PyKCS11.CKO_DATA))
    assert not any(label.startswith(f"onecard:{alg:02X}:07:") for label in labels)


def test_psam_key_needs_mpk_and_kt_imported_together(hsm: Pkcs11Keystore) -> None:
    keys = vector_keys(Alg.DES)
    hsm.import_keys(IssuerKeys(keys.issuer_id, Alg.DES, {"MPK": keys.keys["MPK"]}), version=9)
    with pytest.raises(UnknownKey, match="import MPK and KT together"):
        hsm.psam_put_key_data(Alg.DES, 9)
    with pytest.raises(UnknownKey, match=r"onecard:00:0A:MPK"):
        hsm.psam_put_key_data(Alg.DES, 10)
    hsm.import_keys(IssuerKeys(keys.issuer_id, Alg.DES, {"MPK": keys.keys["MPK"], "KT": keys.keys["KT"]}), version=10)
    assert hsm.psam_put_key_data(Alg.DES, 10)[3:] == hsm.psam_put_key_data(Alg.DES, 1)[3:]


def test_unknown_keys_and_reprs(hsm: Pkcs11Keystore) -> None:
    with pytest.raises(UnknownKey, match=r"onecard:00:05:KT"):
        hsm.external_authenticate(Alg.DES, 5, bytes(8))
    with pytest.raises(UnknownKey, match=r"onecard:04:05:MDAMK"):
        hsm.line_mac(Alg.SM4, 5, 1, bytes(8), b"", bytes(4))
    assert_no_secret(repr(hsm) + str(hsm) + repr(hsm.kcvs()) + repr(hsm._ops) + repr(hsm._dtk_cache))
    assert PIN not in repr(hsm)


# --- opening ---------------------------------------------------------------------------------------------------------


def test_open_errors(softhsm: SoftHsm) -> None:
    env = {"ONECARD_HSM_PIN": softhsm.pin}
    with pytest.raises(KeystoreError, match="no PKCS#11 token labelled 'nope'"):
        open_keystore(f"pkcs11:{softhsm.module}:nope", env)
    with pytest.raises(KeystoreError, match="cannot load the PKCS#11 module"):
        open_keystore("pkcs11:/nonexistent/libnothing.so:x", env)


def test_a_second_handle_comes_and_goes(hsm: Pkcs11Keystore, softhsm: SoftHsm) -> None:
    with open_keystore(softhsm.setting, {"ONECARD_HSM_PIN": softhsm.pin}) as other:
        assert other.kcvs() == hsm.kcvs()
    with pytest.raises(KeystoreError, match="closed"):
        other.external_authenticate(Alg.DES, 1, bytes(8))
    check_kcvs(hsm, Alg.DES)


def test_wrong_pin_is_refused(softhsm: SoftHsm) -> None:
    """In a fresh process (a process already logged in to the token is not asked for the PIN again)."""
    code = (
        "import sys\n"
        "from issuance.keystore import open_keystore\n"
        "from backoffice.errors import KeystoreError\n"
        "try:\n"
        f"    open_keystore({softhsm.setting!r}, {{'ONECARD_HSM_PIN': '000000'}})\n"
        "except KeystoreError as exc:\n"
        "    print(exc.message); sys.exit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root, env=dict(os.environ)
    )
    assert proc.returncode == 3, proc.stderr
    assert "refused the PIN (CKR_PIN_INCORRECT)" in proc.stdout


def test_cli_imports_into_the_hsm(
    hsm: Pkcs11Keystore, softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONECARD_KEYSTORE", softhsm.setting)
    monkeypatch.setenv("ONECARD_HSM_PIN", softhsm.pin)
    keys = vector_keys(Alg.DES)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(keys.to_json()))
    result = CliRunner().invoke(keys_app, ["import", str(path), "--key-version", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert {k["name"]: k["kcv"] for k in json.loads(result.stdout)["keys"]} == keys.kcvs()
    assert_no_secret(result.output)
    assert (
        hsm.put_key_data(Alg.DES, 3, 2, bytes.fromhex("0310000000000001"))[3:]
        == exchange_put_keys(Alg.DES, "personalise_user_card")[1][2][3:]
    )
