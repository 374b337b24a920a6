"""The HSM keystore: issuer master keys in a PKCS#11 token, driven through PyKCS11 (``pkcs11:<module>:<label>``).

DES family (``alg 00``, card-protocol.md §1): every master key is a token ``CKK_DES2`` object, private, sensitive
and non-extractable, created with its ``CKA_CHECK_VALUE`` (the token checks the KCV of §1 itself). KT may only
encrypt (EXTERNAL AUTHENTICATE, PUT KEY); the other masters may only derive. Diversification runs inside the token
with ``CKM_DES3_ECB_ENCRYPT_DATA`` over ``N ‖ ~N``, which is ``E_MK(N) ‖ E_MK(~N)`` in one derivation:

- session keys (§1, single DES) are derived from a derived card key over ``I ‖ I``, giving ``SK ‖ SK``: a
  two-key 3DES key that *is* single DES under SK (tokens built on OpenSSL 3 have no usable ``CKM_DES_*``);
  MAC1/MAC2 are then ``CKM_DES3_CBC`` over ``pad(x)``, keeping the first 4 bytes of the last block;
- the retail MAC of a 16-byte card key (line MAC, §2.4) is single-DES CBC under ``K_L`` over all blocks but the
  last (``K_L ‖ K_L`` derived over ``N ‖ N``), then one 3DES-EDE block under the card key: the same thing as
  ISO 9797-1 algorithm 3, since ``E_KL(D_KR(E_KL(y)))`` is 3DES;
- PUT KEY (§2.5): SoftHSM has no ``C_WrapKey`` under a DES key (``CKM_DES3_ECB``/``CKM_DES3_CBC`` answer
  ``CKR_MECHANISM_INVALID``) and its DES derivation rewrites parity bits, so the card key is derived as a
  short-lived generic-secret session object, read, and enciphered under KT by the token (``C_Encrypt``,
  ``CKM_DES3_ECB``); KT and the master never leave the token, the card key lives in memory for one call.
  A PSAM's ``E_KT(MPK)`` is computed by the token at import (when the clear MPK is in hand) and kept as a data
  object, so MPK stays non-extractable;
- the TAC key ``DTK[0:8] XOR DTK[8:16]`` (§1) has no PKCS#11 mechanism: DTK is derived in the token, read and
  kept in an in-memory LRU for clearing, never stored.

SM4 (``alg 04``): SoftHSM has no SM4. The masters are kept AES-256-GCM encrypted under a key-encrypting key that
lives in the token (sensitive, non-extractable, used only through ``C_Encrypt``/``C_Decrypt``), as private data
objects on the same token; they are decrypted in memory per operation and the computation is done by
:mod:`cardos.crypto`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import PyKCS11

from backoffice.errors import KeystoreError
from cardos import crypto
from cardos.crypto import Alg
from cardos.keyfile import CARD_KEY_MASTERS
from issuance.keystore import (
    DTK_USAGE,
    BaseKeystore,
    CardKeyCache,
    KeyConflict,
    KeyInfo,
    MacMismatch,
    SoftwareOps,
    UnknownKey,
    diversification_input,
    key_label,
    put_key_field,
)

__all__ = ["KEK_LABEL", "Pkcs11Keystore"]

Handle = Any
"""A PyKCS11 object handle."""

APPLICATION = "onecard-keystore/1"
KEK_LABEL = "onecard:kek"
PSAM_SUFFIX = "PSAM-MPK"
_USAGE_FALSE = (
    PyKCS11.CKA_ENCRYPT,
    PyKCS11.CKA_DECRYPT,
    PyKCS11.CKA_SIGN,
    PyKCS11.CKA_VERIFY,
    PyKCS11.CKA_WRAP,
    PyKCS11.CKA_UNWRAP,
    PyKCS11.CKA_DERIVE,
)


def _ckr(exc: PyKCS11.PyKCS11Error) -> str:
    return str(PyKCS11.CKR.get(exc.value, f"CKR 0x{exc.value:08X}"))


def _usages(**allowed: bool) -> list[tuple[int, bool]]:
    """Every usage attribute false except those named (``encrypt=True`` …)."""
    names = {getattr(PyKCS11, f"CKA_{name.upper()}"): value for name, value in allowed.items()}
    return [(attr, names.get(attr, False)) for attr in _USAGE_FALSE]


class Pkcs11Keystore(BaseKeystore):
    """Issuer master keys in a PKCS#11 token (spec §1–§3 computations; see the module docstring for how).

    ``module`` is the PKCS#11 library, ``token_label`` the token's label, ``pin`` the user PIN. One logged-in
    read/write session per instance, used under a lock. PKCS#11 logins belong to the process: a second instance
    on a token this process is already logged in to is not asked for the PIN again.
    """

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self._lock = threading.RLock()
        self._ops = SoftwareOps(self._sm4_master)
        self._dtk_cache = CardKeyCache()
        self._session: Any = None
        self._lib = PyKCS11.PyKCS11Lib()
        try:
            self._lib.load(module)
        except (PyKCS11.PyKCS11Error, OSError):
            raise KeystoreError(f"cannot load the PKCS#11 module {module}") from None
        try:
            slot = self._find_slot(token_label)
            self._session = self._lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
        except KeystoreError:
            self._lib.unload()
            raise
        except PyKCS11.PyKCS11Error as exc:
            self._lib.unload()
            raise KeystoreError(f"cannot open a session on token {token_label!r} ({_ckr(exc)})") from None
        try:
            self._session.login(pin)
        except PyKCS11.PyKCS11Error as exc:
            if exc.value != PyKCS11.CKR_USER_ALREADY_LOGGED_IN:
                self.close()
                raise KeystoreError(f"token {token_label!r} refused the PIN ({_ckr(exc)})") from None

    def __repr__(self) -> str:
        return f"Pkcs11Keystore(module={self.module!r}, token={self.token_label!r})"

    def _find_slot(self, label: str) -> int:
        try:
            for slot in self._lib.getSlotList(tokenPresent=True):
                if str(self._lib.getTokenInfo(slot).label).strip() == label:
                    return int(slot)
        except PyKCS11.PyKCS11Error as exc:
            raise KeystoreError(f"cannot list the PKCS#11 slots ({_ckr(exc)})") from None
        raise KeystoreError(f"no PKCS#11 token labelled {label!r} in {self.module}")

    def close(self) -> None:
        """Close the session (the token's login ends with its last session) and forget cached card keys."""
        self._ops.forget()
        self._dtk_cache.clear()
        with self._lock:
            if self._session is not None:
                with contextlib.suppress(PyKCS11.PyKCS11Error):
                    self._session.closeSession()
                self._session = None
                # The module is finalised when its last user in the process lets go.
                with contextlib.suppress(PyKCS11.PyKCS11Error):
                    self._lib.unload()

    # -- token plumbing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _token(self, what: str) -> Iterator[Any]:
        """The session under the lock; token errors become :class:`KeystoreError` naming ``what``."""
        with self._lock:
            if self._session is None:
                raise KeystoreError("the HSM keystore is closed")
            try:
                yield self._session
            except PyKCS11.PyKCS11Error as exc:
                raise KeystoreError(f"the HSM could not {what} ({_ckr(exc)})") from None

    @contextlib.contextmanager
    def _scratch(self, session: Any) -> Iterator[list[Handle]]:
        """Session objects to destroy on the way out, whatever happens."""
        handles: list[Handle] = []
        try:
            yield handles
        finally:
            for handle in handles:
                with contextlib.suppress(PyKCS11.PyKCS11Error):
                    session.destroyObject(handle)

    @staticmethod
    def _find(session: Any, cls: int, label: str) -> Handle | None:
        found = session.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, label)])
        return found[0] if found else None

    def _master_handle(self, session: Any, alg: Alg, version: int, name: str) -> Handle:
        handle = self._find(session, PyKCS11.CKO_SECRET_KEY, key_label(alg, version, name))
        if handle is None:
            raise UnknownKey(f"no key {key_label(alg, version, name)} in the HSM")
        return handle

    @staticmethod
    def _derive_des(session: Any, base: Handle, data: bytes, *, encrypt: bool = False, derive: bool = False) -> Handle:
        """``E_base(data)`` (3DES ECB) as a sensitive, non-extractable DES2 session key."""
        template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_DES2),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_PRIVATE, True),
            (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_EXTRACTABLE, False),
            *_usages(encrypt=encrypt, derive=derive),
        ]
        mechanism = PyKCS11.KEY_DERIVATION_STRING_DATA_MechanismBase(data, PyKCS11.CKM_DES3_ECB_ENCRYPT_DATA)
        return session.deriveKey(base, template, mechanism)

    @staticmethod
    def _derive_clear(session: Any, base: Handle, data: bytes) -> bytes:
        """``E_base(data)`` (3DES ECB) read out of a generic-secret session object destroyed at once."""
        template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
            (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_GENERIC_SECRET),
            (PyKCS11.CKA_VALUE_LEN, len(data)),
            (PyKCS11.CKA_TOKEN, False),
            (PyKCS11.CKA_PRIVATE, True),
            (PyKCS11.CKA_SENSITIVE, False),
            (PyKCS11.CKA_EXTRACTABLE, True),
            *_usages(),
        ]
        mechanism = PyKCS11.KEY_DERIVATION_STRING_DATA_MechanismBase(data, PyKCS11.CKM_DES3_ECB_ENCRYPT_DATA)
        handle = session.deriveKey(base, template, mechanism)
        try:
            value = session.getAttributeValue(handle, [PyKCS11.CKA_VALUE], allAsBinary=True)[0]
        finally:
            session.destroyObject(handle)
        if value is None or len(value) != len(data):
            raise KeystoreError("the HSM did not return the derived card key")
        return bytes(value)

    @staticmethod
    def _encrypt(session: Any, key: Handle, data: bytes, iv: bytes | None = None) -> bytes:
        mechanism = (
            PyKCS11.Mechanism(PyKCS11.CKM_DES3_ECB) if iv is None else PyKCS11.Mechanism(PyKCS11.CKM_DES3_CBC, iv)
        )
        return bytes(session.encrypt(key, data, mechanism))

    def _single_des_mac(self, session: Any, key: Handle, data: bytes) -> bytes:
        """``MAC_K(x)`` for an 8-byte K held as ``K ‖ K`` (ISO 9797-1 algorithm 1, §1)."""
        return self._encrypt(session, key, crypto.pad(data, 8), b"\x00" * 8)[-8:][:4]

    # -- SM4 masters: AES-GCM under the token's key-encrypting key -----------------------------------------

    def _kek(self, session: Any, create: bool) -> Handle | None:
        handle = self._find(session, PyKCS11.CKO_SECRET_KEY, KEK_LABEL)
        if handle is None and create:
            template = [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_AES),
                (PyKCS11.CKA_VALUE_LEN, 32),
                (PyKCS11.CKA_TOKEN, True),
                (PyKCS11.CKA_PRIVATE, True),
                (PyKCS11.CKA_SENSITIVE, True),
                (PyKCS11.CKA_EXTRACTABLE, False),
                (PyKCS11.CKA_MODIFIABLE, False),
                (PyKCS11.CKA_LABEL, KEK_LABEL),
                *_usages(encrypt=True, decrypt=True),
            ]
            handle = session.generateKey(template, PyKCS11.MechanismAESGENERATEKEY)
        return handle

    @staticmethod
    def _aad(label: str, kcv: str) -> bytes:
        return f"{APPLICATION}|{label}|{kcv}".encode()

    def _sm4_entry(self, session: Any, alg: Alg, version: int, name: str) -> tuple[Handle, dict[str, str]] | None:
        label = key_label(alg, version, name)
        handle = self._find(session, PyKCS11.CKO_DATA, label)
        if handle is None:
            return None
        raw = session.getAttributeValue(handle, [PyKCS11.CKA_VALUE], allAsBinary=True)[0]
        try:
            entry = json.loads(bytes(raw))
            if not isinstance(entry, dict) or not {"kcv", "iv", "ct"} <= entry.keys():
                raise ValueError
        except (ValueError, TypeError):
            raise KeystoreError(f"the stored key {label} is damaged") from None
        return handle, {k: str(v) for k, v in entry.items()}

    def _sm4_master(self, alg: Alg, version: int, name: str) -> bytes:
        label = key_label(alg, version, name)
        with self._token(f"unwrap {label}") as session:
            found = self._sm4_entry(session, alg, version, name)
            kek = self._kek(session, create=False)
            if found is None or kek is None:
                raise UnknownKey(f"no key {label} in the HSM")
            entry = found[1]
            mechanism = PyKCS11.AES_GCM_Mechanism(bytes.fromhex(entry["iv"]), self._aad(label, entry["kcv"]), 128)
            try:
                key = bytes(session.decrypt(kek, bytes.fromhex(entry["ct"]), mechanism))
            except PyKCS11.PyKCS11Error:
                raise KeystoreError(f"the stored key {label} fails its integrity check") from None
        if len(key) != 16 or crypto.kcv(alg, key).hex().upper() != entry["kcv"]:
            raise KeystoreError(f"the stored key {label} fails its integrity check")
        return key

    # -- import and listing --------------------------------------------------------------------------------

    def _import(self, alg: Alg, version: int, keys: dict[str, bytes]) -> dict[str, str]:
        kcvs = {name: crypto.kcv(alg, key).hex().upper() for name, key in keys.items()}
        with self._token("import the keys") as session, contextlib.ExitStack() as undo:
            created: list[Handle] = []

            def rollback() -> None:
                for handle in created:
                    with contextlib.suppress(PyKCS11.PyKCS11Error):
                        session.destroyObject(handle)

            undo.callback(rollback)
            new = self._new_keys(session, alg, version, keys, kcvs)
            if alg is Alg.SM4:
                self._create_sm4(session, version, {n: keys[n] for n in new}, kcvs, created)
            else:
                self._create_des(session, version, {n: keys[n] for n in new}, kcvs, created)
            undo.pop_all()
        return kcvs

    def _new_keys(
        self, session: Any, alg: Alg, version: int, keys: dict[str, bytes], kcvs: dict[str, str]
    ) -> list[str]:
        """Names not stored yet; :class:`KeyConflict` when one is stored with another value."""
        new: list[str] = []
        for name, key in keys.items():
            label = key_label(alg, version, name)
            if alg is Alg.SM4:
                if self._sm4_entry(session, alg, version, name) is None:
                    new.append(name)
                elif not hmac.compare_digest(self._sm4_master(alg, version, name), key):
                    raise KeyConflict(f"a different key {label} is already stored")
                continue
            handle = self._find(session, PyKCS11.CKO_SECRET_KEY, label)
            if handle is None:
                new.append(name)
                continue
            stored = session.getAttributeValue(handle, [PyKCS11.CKA_CHECK_VALUE], allAsBinary=True)[0]
            if stored is None or bytes(stored).hex().upper() != kcvs[name]:
                raise KeyConflict(f"a different key {label} is already stored")
        return new

    def _create_des(
        self, session: Any, version: int, keys: dict[str, bytes], kcvs: dict[str, str], created: list[Handle]
    ) -> None:
        for name, key in keys.items():
            label = key_label(Alg.DES, version, name)
            template = [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY),
                (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_DES2),
                (PyKCS11.CKA_TOKEN, True),
                (PyKCS11.CKA_PRIVATE, True),
                (PyKCS11.CKA_SENSITIVE, True),
                (PyKCS11.CKA_EXTRACTABLE, False),
                (PyKCS11.CKA_MODIFIABLE, False),
                (PyKCS11.CKA_LABEL, label),
                (PyKCS11.CKA_ID, label.encode()),
                (PyKCS11.CKA_VALUE, key),
                # The token checks this against the key itself (CKR_ATTRIBUTE_VALUE_INVALID if it differs).
                (PyKCS11.CKA_CHECK_VALUE, bytes.fromhex(kcvs[name])),
                *(_usages(encrypt=True) if name == "KT" else _usages(derive=True)),
            ]
            created.append(session.createObject(template))
        mpk = keys.get("MPK")
        psam_label = key_label(Alg.DES, version, PSAM_SUFFIX)
        if mpk is not None and self._find(session, PyKCS11.CKO_DATA, psam_label) is None:
            kt = self._find(session, PyKCS11.CKO_SECRET_KEY, key_label(Alg.DES, version, "KT"))
            if kt is not None:
                blob = self._encrypt(session, kt, mpk) + bytes.fromhex(kcvs["MPK"])
                created.append(self._create_data(session, psam_label, blob))

    def _create_sm4(
        self, session: Any, version: int, keys: dict[str, bytes], kcvs: dict[str, str], created: list[Handle]
    ) -> None:
        if not keys:
            return
        kek = self._kek(session, create=True)
        for name, key in keys.items():
            label = key_label(Alg.SM4, version, name)
            iv = os.urandom(12)
            mechanism = PyKCS11.AES_GCM_Mechanism(iv, self._aad(label, kcvs[name]), 128)
            ciphertext = bytes(session.encrypt(kek, key, mechanism))
            entry = {"kcv": kcvs[name], "iv": iv.hex(), "ct": ciphertext.hex()}
            created.append(self._create_data(session, label, json.dumps(entry).encode()))

    @staticmethod
    def _create_data(session: Any, label: str, value: bytes) -> Handle:
        return session.createObject(
            [
                (PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA),
                (PyKCS11.CKA_TOKEN, True),
                (PyKCS11.CKA_PRIVATE, True),
                (PyKCS11.CKA_MODIFIABLE, False),
                (PyKCS11.CKA_LABEL, label),
                (PyKCS11.CKA_APPLICATION, APPLICATION),
                (PyKCS11.CKA_VALUE, value),
            ]
        )

    def _list(self) -> list[KeyInfo]:
        infos: list[KeyInfo] = []
        with self._token("list the keys") as session:
            for cls in (PyKCS11.CKO_SECRET_KEY, PyKCS11.CKO_DATA):
                for handle in session.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_TOKEN, True)]):
                    label = session.getAttributeValue(handle, [PyKCS11.CKA_LABEL])[0]
                    parts = str(label or "").split(":")
                    if len(parts) != 4 or parts[0] != "onecard" or parts[3] == PSAM_SUFFIX:
                        continue
                    try:
                        alg, version = Alg(int(parts[1], 16)), int(parts[2], 16)
                    except ValueError:
                        continue
                    if cls == PyKCS11.CKO_SECRET_KEY:
                        value = session.getAttributeValue(handle, [PyKCS11.CKA_CHECK_VALUE], allAsBinary=True)[0]
                        kcv = bytes(value or b"").hex().upper()
                    else:
                        found = self._sm4_entry(session, alg, version, parts[3])
                        kcv = found[1]["kcv"] if found else ""
                    infos.append(KeyInfo(alg, version, parts[3], kcv))
        return infos

    # -- the operations ----------------------------------------------------------------------------------------

    def _put_key_data(self, alg: Alg, version: int, usage: int, card_no: bytes) -> bytes:
        if alg is Alg.SM4:
            return self._ops.put_key_data(alg, version, usage, card_no)
        with self._token("build PUT KEY data") as session:
            kt = self._master_handle(session, alg, version, "KT")
            master = self._master_handle(session, alg, version, CARD_KEY_MASTERS[usage])
            dk = self._derive_clear(session, master, diversification_input(card_no))
            wrapped = self._encrypt(session, kt, dk)
        return put_key_field(alg, version, wrapped, crypto.kcv(alg, dk))

    def _psam_put_key_data(self, alg: Alg, version: int) -> bytes:
        if alg is Alg.SM4:
            return self._ops.psam_put_key_data(alg, version)
        label = key_label(alg, version, PSAM_SUFFIX)
        with self._token("read the PSAM key data") as session:
            handle = self._find(session, PyKCS11.CKO_DATA, label)
            if handle is None:
                self._master_handle(session, alg, version, "MPK")
                raise UnknownKey(f"no E_KT(MPK) for {key_label(alg, version, 'MPK')}: import MPK and KT together")
            blob = bytes(session.getAttributeValue(handle, [PyKCS11.CKA_VALUE], allAsBinary=True)[0])
        if len(blob) != 19:
            raise KeystoreError(f"the stored {label} is damaged")
        return put_key_field(alg, version, blob[:16], blob[16:])

    def _external_authenticate(self, alg: Alg, version: int, challenge: bytes) -> bytes:
        if alg is Alg.SM4:
            return self._ops.external_authenticate(alg, version, challenge)
        with self._token("compute the authentication cryptogram") as session:
            return self._encrypt(session, self._master_handle(session, alg, version, "KT"), challenge)

    def _load_mac2(
        self,
        alg: Alg,
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
        if alg is Alg.SM4:
            return self._ops.load_mac2(
                alg, version, card_no, rand, online_seq, old_balance, amount, term_id, mac1, date4, time3
            )
        session_input = rand + online_seq.to_bytes(2, "big") + b"\x80\x00"
        with self._token("compute the load MACs") as session, self._scratch(session) as scratch:
            mlk = self._master_handle(session, alg, version, "MLK")
            scratch.append(self._derive_des(session, mlk, diversification_input(card_no), derive=True))
            scratch.append(self._derive_des(session, scratch[0], session_input * 2, encrypt=True))
            sk = scratch[1]
            mac1_data = old_balance.to_bytes(4, "big") + amount.to_bytes(4, "big") + b"\x02" + term_id
            if not hmac.compare_digest(self._single_des_mac(session, sk, mac1_data), mac1):
                raise MacMismatch("load MAC1 does not verify")
            mac2_data = amount.to_bytes(4, "big") + b"\x02" + term_id + date4 + time3
            return self._single_des_mac(session, sk, mac2_data)

    def _dtk(self, alg: Alg, version: int, card_no: bytes) -> bytes:
        if alg is Alg.SM4:
            return self._ops.dtk(alg, version, card_no)

        def derive() -> bytes:
            with self._token("derive the TAC key") as session:
                mtk = self._master_handle(session, alg, version, "MTK")
                return self._derive_clear(session, mtk, diversification_input(card_no))

        return self._dtk_cache.get((alg, version, DTK_USAGE, card_no), derive)

    def _line_mac(
        self, alg: Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        if alg is Alg.SM4:
            return self._ops.line_mac(alg, version, usage, card_no, header_and_data, challenge)
        padded = crypto.pad(header_and_data, 8)
        iv = challenge.ljust(8, b"\x00")
        with self._token("compute the line MAC") as session, self._scratch(session) as scratch:
            master = self._master_handle(session, alg, version, CARD_KEY_MASTERS[usage])
            scratch.append(self._derive_des(session, master, diversification_input(card_no), encrypt=True))
            chain = iv
            if len(padded) > 8:
                # K_L ‖ K_L: single DES under the card key's left half, E_MK(N).
                scratch.append(self._derive_des(session, master, card_no * 2, encrypt=True))
                chain = self._encrypt(session, scratch[1], padded[:-8], iv)[-8:]
            last = bytes(a ^ b for a, b in zip(chain, padded[-8:], strict=True))
            return self._encrypt(session, scratch[0], last)[:4]
