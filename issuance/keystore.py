"""The issuer keystore: master keys held for the back office, used only through intent-level operations.

The back office never sees a master key. It asks the keystore for what the protocol needs (card-protocol.md):
PUT KEY data for a card key diversified from its master and wrapped under KT (§1, §2.2, §2.5), the PSAM's MPK
(§3), the EXTERNAL AUTHENTICATE cryptogram (§2.5), the load host's MAC1 check and MAC2 (§2.4, Load), the TAC
checks of clearing (§2.4, §5) and line MACs for counter maintenance commands (§2.4, Line MAC).

Keys are identified by ``(alg, key version, name)``, names being the master keys of cli.md's key file:
KT, MDAMK, MPK, MLK, MTK, MPUK, MRPK. Two implementations:

- :class:`SoftwareKeystore`, the embedded default: an encrypted JSON file (AES-256-GCM, the file key from scrypt
  over ``ONECARD_KEYSTORE_PASSPHRASE`` or given raw as 64 hex digits in ``ONECARD_KEYSTORE_KEY``);
- :class:`issuance.keystore_pkcs11.Pkcs11Keystore`, an HSM through PKCS#11 (``pkcs11:<module>:<token label>``).

:func:`open_keystore` picks one from the ``ONECARD_KEYSTORE`` setting. This module is the only back-office module
that imports ``cryptography`` (for the file encryption); the protocol's computations go through
:mod:`cardos.crypto`. Key bytes never appear in logs, exception messages, reprs or return values other than the
cryptograms the protocol defines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hmac
import json
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from backoffice.errors import Conflict, InvalidInput, KeystoreError
from backoffice.settings import DEFAULT_KEYSTORE, read_dotenv
from cardos import crypto
from cardos.crypto import Alg
from cardos.keyfile import CARD_KEY_MASTERS, MASTER_KEY_NAMES, IssuerKeys
from cardos.perso import KEY_TRIES

__all__ = [
    "CARD_KEY_MASTERS",
    "MASTER_KEY_NAMES",
    "AesGcmSealer",
    "BaseKeystore",
    "CardKeyCache",
    "KeyConflict",
    "KeyInfo",
    "Keystore",
    "MacMismatch",
    "SoftwareKeystore",
    "SoftwareOps",
    "UnknownKey",
    "open_keystore",
]

AlgLike = Alg | int
"""An algorithm id: :class:`~cardos.crypto.Alg` or its integer (``0x00``, ``0x04``)."""

LINE_MAC_USAGES = frozenset({0x01, 0x06})
"""Card keys that MAC commands: DAMK (line MAC, §2.4) and DRPK (RELOAD PIN, §2.4)."""

PURCHASE_TYPES = frozenset({0x06, 0x09})
DTK_USAGE = 0x04
CARD_KEY_CACHE_SIZE = 4096

ENV_PASSPHRASE = "ONECARD_KEYSTORE_PASSPHRASE"
ENV_RAW_KEY = "ONECARD_KEYSTORE_KEY"
ENV_HSM_PIN = "ONECARD_HSM_PIN"
PKCS11_PREFIX = "pkcs11:"

FILE_FORMAT = "onecard-keystore/1"
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


# --- errors ---------------------------------------------------------------------------------------------------


class UnknownKey(KeystoreError):
    """The keystore holds no such key (name, alg, version); the message names the key, never its bytes."""

    code = "unknown_key"


class KeyConflict(Conflict):
    """An import would replace a stored key by a different one under the same name, alg and version."""

    code = "key_conflict"


class MacMismatch(InvalidInput, crypto.MacError):
    """A MAC1 or TAC presented to the keystore does not verify (spec §2.4): the data is not genuine."""

    code = "mac_mismatch"


# --- what the keystore lists ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class KeyInfo:
    """One stored master key as :meth:`Keystore.kcvs` lists it: never its bytes, only its check value (§1)."""

    alg: Alg
    version: int
    name: str
    kcv: str

    def to_json(self) -> dict[str, Any]:
        """``{"name", "alg", "version", "kcv"}`` with ``alg`` as two hex digits."""
        return {"name": self.name, "alg": f"{self.alg:02X}", "version": self.version, "kcv": self.kcv}


@runtime_checkable
class Keystore(Protocol):
    """The back office's keystore: intent-level operations on issuer master keys (card-protocol.md §1–§3).

    ``alg`` is the suite (``00`` DES family, ``04`` SM4), ``version`` the key version (1 byte), ``usage`` a card key
    usage of §2.2 (``01``–``06`` → MDAMK, MPK, MLK, MTK, MPUK, MRPK). Byte strings are raw bytes (card_no 8 bytes,
    term_id 6, date4 4, time3 3, MACs and TACs 4).
    """

    def import_keys(self, keys: IssuerKeys, version: int = 1) -> dict[str, str]:
        """Store a key file's master keys under ``(keys.alg, version)``: all of them or none (cli.md)."""
        ...

    def kcvs(self) -> list[KeyInfo]:
        """Every stored key: name, alg, version and KCV (§1)."""
        ...

    def put_key_data(self, alg: AlgLike, version: int, usage: int, card_no: bytes) -> bytes:
        """PUT KEY data for a card key: ``version ‖ alg ‖ 0F ‖ E_KT(DK) ‖ KCV(DK)`` (§2.5)."""
        ...

    def psam_put_key_data(self, alg: AlgLike, version: int) -> bytes:
        """PUT KEY data for a PSAM's MPK of this version (§3, §2.5)."""
        ...

    def external_authenticate(self, alg: AlgLike, version: int, challenge: bytes) -> bytes:
        """EXTERNAL AUTHENTICATE cryptogram ``E_KT(challenge)`` (§2.5)."""
        ...

    def verify_load_mac1_and_mac2(
        self,
        alg: AlgLike,
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
        """Check a load's MAC1 and answer its MAC2 (§2.4, Load); raise :class:`MacMismatch` on a bad MAC1."""
        ...

    def verify_load_tac(
        self,
        alg: AlgLike,
        version: int,
        card_no: bytes,
        new_balance: int,
        online_seq: int,
        amount: int,
        term_id: bytes,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> Literal[True]:
        """Check a load's TAC (§2.4, Load): True, or :class:`MacMismatch` raised when it is wrong."""
        ...

    def verify_purchase_tac(
        self,
        alg: AlgLike,
        version: int,
        card_no: bytes,
        amount: int,
        txn_type: int,
        term_id: bytes,
        term_seq: int,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> Literal[True]:
        """Check a purchase's TAC (§2.4, Purchase; §5): True, or :class:`MacMismatch` raised when it is wrong."""
        ...

    def line_mac(
        self, alg: AlgLike, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        """Line MAC of a ``04``/``84``-class command, or RELOAD PIN's MAC with DRPK (§2.4, Line MAC)."""
        ...

    def close(self) -> None:
        """Release the keystore's resources (sessions, cached card keys)."""
        ...


# --- argument checks --------------------------------------------------------------------------------------------


def check_alg(alg: AlgLike) -> Alg:
    """The suite of ``alg``, or :class:`InvalidInput`."""
    try:
        return Alg(alg)
    except ValueError:
        raise InvalidInput("unknown algorithm id", alg=str(alg)) from None


def check_version(version: int) -> int:
    """A key version is one byte."""
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 0xFF:
        raise InvalidInput("a key version is one byte (0..255)")
    return version


def _check_bytes(name: str, value: bytes, *lengths: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) not in lengths:
        raise InvalidInput(f"{name} must be {' or '.join(map(str, lengths))} bytes")
    return bytes(value)


def _check_uint(name: str, value: int, size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * size):
        raise InvalidInput(f"{name} must fit in {size} bytes")
    return value


def _check_usage(usage: int, allowed: frozenset[int] | None = None) -> int:
    if usage not in CARD_KEY_MASTERS or (allowed is not None and usage not in allowed):
        raise InvalidInput("no such card key usage for this operation", usage=f"{usage:02X}")
    return usage


def key_label(alg: Alg, version: int, name: str) -> str:
    """How a key is named in messages and in an HSM: ``onecard:00:01:MLK``."""
    return f"onecard:{alg:02X}:{version:02X}:{name}"


def diversification_input(card_no: bytes) -> bytes:
    """``N ‖ ~N``: what the DES family enciphers, block by block, to diversify a key (spec §1)."""
    return card_no + bytes(b ^ 0xFF for b in card_no)


def put_key_field(alg: Alg, version: int, wrapped: bytes, kcv: bytes) -> bytes:
    """PUT KEY's data field: ``version ‖ alg ‖ tries (0F) ‖ E_KT(key) ‖ KCV(key)`` (spec §2.5)."""
    return bytes((version, alg, KEY_TRIES)) + wrapped + kcv


# --- the shared implementation: argument checks once, then the implementation's hooks ---------------------


class CardKeyCache:
    """An in-memory LRU of derived card keys (clearing checks many TACs of the same cards); never persisted."""

    def __init__(self, size: int = CARD_KEY_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[Alg, int, int, bytes], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CardKeyCache(entries={len(self._items)})"

    def get(self, key: tuple[Alg, int, int, bytes], derive: Callable[[], bytes]) -> bytes:
        """The cached card key, else ``derive()`` (kept, evicting the least recently used)."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        value = derive()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every cached key."""
        with self._lock:
            self._items.clear()


class BaseKeystore(ABC):
    """Checks every argument once and turns MAC failures into :class:`MacMismatch`; subclasses do the crypto."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the protocol

    def import_keys(self, keys: IssuerKeys, version: int = 1) -> dict[str, str]:
        """Store the master keys of a key file (cli.md) under ``(keys.alg, version)``, all or none.

        Keys already stored identically are accepted again; a different key under the same name, alg and version
        raises :class:`KeyConflict` and nothing is stored. Returns every key's KCV (§1) as upper-case hex.
        """
        alg = check_alg(keys.alg)
        check_version(version)
        if not keys.keys:
            raise InvalidInput("the key set is empty")
        for name, key in keys.keys.items():
            if name not in MASTER_KEY_NAMES:
                raise InvalidInput(f"unknown key name {name}")
            if not isinstance(key, bytes) or len(key) != 16:
                raise InvalidInput(f"key {name} must be 16 bytes")
        return self._import(alg, version, dict(keys.keys))

    def kcvs(self) -> list[KeyInfo]:
        """Every stored key (name, alg, version, KCV — never key bytes), sorted (§1 key check value)."""
        return sorted(self._list())

    def put_key_data(self, alg: AlgLike, version: int, usage: int, card_no: bytes) -> bytes:
        """PUT KEY data field for card key ``usage`` of ``card_no`` (spec §2.5, §2.2, §1 diversification).

        ``version ‖ alg ‖ 0F ‖ E_KT(DK) ‖ KCV(DK)`` with ``DK = diversify(master, card_no)``: 22 bytes.
        """
        a = check_alg(alg)
        return self._put_key_data(a, check_version(version), _check_usage(usage), _check_bytes("card_no", card_no, 8))

    def psam_put_key_data(self, alg: AlgLike, version: int) -> bytes:
        """PUT KEY data for a PSAM's MPK of ``version`` (usage ``21``, index = version; spec §3, §2.5)."""
        return self._psam_put_key_data(check_alg(alg), check_version(version))

    def external_authenticate(self, alg: AlgLike, version: int, challenge: bytes) -> bytes:
        """EXTERNAL AUTHENTICATE cryptogram ``E_KT(challenge)``, 8 bytes (spec §2.5 step 1)."""
        return self._external_authenticate(
            check_alg(alg), check_version(version), _check_bytes("challenge", challenge, 8)
        )

    def verify_load_mac1_and_mac2(
        self,
        alg: AlgLike,
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
        """The load host (spec §2.4, Load, steps 1–2): check MAC1 with ``SK = session(DLK, …)``, answer MAC2.

        Raises :class:`MacMismatch` when MAC1 does not verify (not a genuine card).
        """
        return self._load_mac2(
            check_alg(alg),
            check_version(version),
            _check_bytes("card_no", card_no, 8),
            _check_bytes("rand", rand, 4),
            _check_uint("online_seq", online_seq, 2),
            _check_uint("old_balance", old_balance, 4),
            _check_uint("amount", amount, 4),
            _check_bytes("term_id", term_id, 6),
            _check_bytes("mac1", mac1, 4),
            _check_bytes("date4", date4, 4),
            _check_bytes("time3", time3, 3),
        )

    def authorize_load(
        self,
        alg: AlgLike,
        version: int,
        card_no: bytes,
        *,
        rand: bytes,
        online_seq: int,
        old_balance: int,
        amount: int,
        term_id: bytes,
        mac1: bytes,
        date4: bytes,
        time3: bytes,
    ) -> bytes:
        """:meth:`verify_load_mac1_and_mac2` under the name ``issuance.keys.Keystore`` uses (spec §2.4, Load)."""
        return self.verify_load_mac1_and_mac2(
            alg, version, card_no, rand, online_seq, old_balance, amount, term_id, mac1, date4, time3
        )

    def verify_load_tac(
        self,
        alg: AlgLike,
        version: int,
        card_no: bytes,
        new_balance: int,
        online_seq: int,
        amount: int,
        term_id: bytes,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> Literal[True]:
        """Check a load's TAC (spec §2.4, Load, step 3): ``MAC_TK(new_balance ‖ online_seq ‖ amount ‖ 02 ‖ …)``.

        ``online_seq`` is the counter before the load. Returns True; raises :class:`MacMismatch` (never returns
        False) when the TAC is wrong, so ``if not verify_…`` and ``try``/``except`` callers are both safe.
        """
        a, v = check_alg(alg), check_version(version)
        n = _check_bytes("card_no", card_no, 8)
        args = (
            _check_uint("new_balance", new_balance, 4),
            _check_uint("online_seq", online_seq, 2),
            _check_uint("amount", amount, 4),
            _check_bytes("term_id", term_id, 6),
            _check_bytes("date4", date4, 4),
            _check_bytes("time3", time3, 3),
        )
        expected = crypto.load_tac(a, self._dtk(a, v, n), *args)
        if not hmac.compare_digest(expected, _check_bytes("tac", tac, 4)):
            raise MacMismatch("load TAC does not verify")
        return True

    def verify_purchase_tac(
        self,
        alg: AlgLike,
        version: int,
        card_no: bytes,
        amount: int,
        txn_type: int,
        term_id: bytes,
        term_seq: int,
        date4: bytes,
        time3: bytes,
        tac: bytes,
    ) -> Literal[True]:
        """Check a purchase's TAC (spec §2.4, Purchase, step 3; §5 clearing).

        ``TAC = MAC_TK(amount ‖ type ‖ term_id ‖ term_seq ‖ date4 ‖ time3)``. Returns True; raises
        :class:`MacMismatch` (never returns False) when the TAC is wrong.
        """
        a, v = check_alg(alg), check_version(version)
        n = _check_bytes("card_no", card_no, 8)
        if txn_type not in PURCHASE_TYPES:
            raise InvalidInput("a purchase's type is 06 or 09")
        args = (
            _check_uint("amount", amount, 4),
            txn_type,
            _check_bytes("term_id", term_id, 6),
            _check_uint("term_seq", term_seq, 4),
            _check_bytes("date4", date4, 4),
            _check_bytes("time3", time3, 3),
        )
        expected = crypto.purchase_tac(a, self._dtk(a, v, n), *args)
        if not hmac.compare_digest(expected, _check_bytes("tac", tac, 4)):
            raise MacMismatch("purchase TAC does not verify")
        return True

    def line_mac(
        self, alg: AlgLike, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        """Line MAC (spec §2.4, Line MAC): ``MAC_K(CLA ‖ INS ‖ P1 ‖ P2 ‖ Lc ‖ data)``, IV = challenge ‖ 00….

        ``usage`` is ``01`` (DAMK: APPLICATION BLOCK / UNBLOCK, CARD BLOCK, UPDATE BINARY) or ``06`` (DRPK:
        RELOAD PIN, whose MAC covers the new PIN only). ``challenge`` is the card's 4- or 8-byte GET CHALLENGE.
        """
        if not isinstance(header_and_data, bytes | bytearray) or len(header_and_data) > 261:
            raise InvalidInput("the MACed command is at most 261 bytes")
        return self._line_mac(
            check_alg(alg),
            check_version(version),
            _check_usage(usage, LINE_MAC_USAGES),
            _check_bytes("card_no", card_no, 8),
            bytes(header_and_data),
            _check_bytes("challenge", challenge, 4, 8),
        )

    @abstractmethod
    def close(self) -> None:
        """Release the keystore's resources and forget cached card keys."""

    # -- the implementation's hooks (arguments already checked)

    @abstractmethod
    def _import(self, alg: Alg, version: int, keys: dict[str, bytes]) -> dict[str, str]: ...

    @abstractmethod
    def _list(self) -> list[KeyInfo]: ...

    @abstractmethod
    def _put_key_data(self, alg: Alg, version: int, usage: int, card_no: bytes) -> bytes: ...

    @abstractmethod
    def _psam_put_key_data(self, alg: Alg, version: int) -> bytes: ...

    @abstractmethod
    def _external_authenticate(self, alg: Alg, version: int, challenge: bytes) -> bytes: ...

    @abstractmethod
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
    ) -> bytes: ...

    def tac_calculator(self, alg: Alg, version: int, card_no: bytes) -> crypto.TacCalculator:
        """A fast TAC calculator of one card (spec §1 TAC key, §2.4), for clearing, which checks millions of TACs:
        the card's DTK is derived by the keystore and lives only in the calculator's cipher, in memory."""
        return crypto.TacCalculator(alg, self._dtk(alg, version, card_no))

    @abstractmethod
    def _dtk(self, alg: Alg, version: int, card_no: bytes) -> bytes:
        """The card's DTK (may come from an in-memory LRU; never stored)."""

    @abstractmethod
    def _line_mac(
        self, alg: Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes: ...


class SoftwareOps:
    """The protocol's computations with master keys in memory, through :mod:`cardos.crypto` (spec §1–§3).

    ``master(alg, version, name)`` returns a master key or raises :class:`UnknownKey`. Used by
    :class:`SoftwareKeystore` for every suite and by the PKCS#11 keystore for SM4, which the token lacks.
    """

    def __init__(self, master: Callable[[Alg, int, str], bytes]) -> None:
        self._master = master
        self._cache = CardKeyCache()
        self._diversifiers: dict[tuple[Alg, int], crypto.Diversifier] = {}

    def __repr__(self) -> str:
        return "SoftwareOps()"

    def card_key(self, alg: Alg, version: int, usage: int, card_no: bytes) -> bytes:
        """``diversify(master, card_no)`` (§1)."""
        return crypto.diversify(alg, self._master(alg, version, CARD_KEY_MASTERS[usage]), card_no)

    def tac_calculator(self, alg: Alg, version: int, card_no: bytes) -> crypto.TacCalculator:
        """The card's TAC calculator, its DTK diversified by a :class:`cardos.crypto.Diversifier` of MTK kept for
        the master (one cipher per master key, not one per card)."""
        diversifier = self._diversifiers.get((alg, version))
        if diversifier is None:
            diversifier = crypto.Diversifier(alg, self._master(alg, version, CARD_KEY_MASTERS[DTK_USAGE]))
            self._diversifiers[(alg, version)] = diversifier
        return crypto.TacCalculator(alg, diversifier.card_key(card_no))

    def dtk(self, alg: Alg, version: int, card_no: bytes) -> bytes:
        """The card's DTK, from the LRU when it was derived recently."""
        return self._cache.get(
            (alg, version, DTK_USAGE, card_no), lambda: self.card_key(alg, version, DTK_USAGE, card_no)
        )

    def put_key_data(self, alg: Alg, version: int, usage: int, card_no: bytes) -> bytes:
        """PUT KEY data of a card key (§2.5)."""
        kt = self._master(alg, version, "KT")
        dk = self.card_key(alg, version, usage, card_no)
        return put_key_field(alg, version, crypto.wrap_key(alg, kt, dk), crypto.kcv(alg, dk))

    def psam_put_key_data(self, alg: Alg, version: int) -> bytes:
        """PUT KEY data of MPK for a PSAM (§3)."""
        kt = self._master(alg, version, "KT")
        mpk = self._master(alg, version, "MPK")
        return put_key_field(alg, version, crypto.wrap_key(alg, kt, mpk), crypto.kcv(alg, mpk))

    def external_authenticate(self, alg: Alg, version: int, challenge: bytes) -> bytes:
        """``E_KT(challenge)`` (§2.5)."""
        return crypto.external_auth_cryptogram(alg, self._master(alg, version, "KT"), challenge)

    def load_mac2(
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
        """Check MAC1, answer MAC2 (§2.4, Load)."""
        dlk = self.card_key(alg, version, 0x03, card_no)
        sk = crypto.load_session_key(alg, dlk, rand, online_seq)
        try:
            crypto.verify_load_mac1(alg, sk, old_balance, amount, term_id, mac1)
        except crypto.MacError:
            raise MacMismatch("load MAC1 does not verify") from None
        return crypto.load_mac2(alg, sk, amount, term_id, date4, time3)

    def line_mac(
        self, alg: Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        """Line MAC with a card key (§2.4)."""
        return crypto.line_mac(alg, self.card_key(alg, version, usage, card_no), header_and_data, challenge)

    def forget(self) -> None:
        """Drop the cached card keys."""
        self._cache.clear()


# --- the software keystore: an encrypted file -----------------------------------------------------------------


class _FileKey:
    """The file-encryption key, from a passphrase (scrypt) or raw; kept only in memory, never shown."""

    def __init__(self, *, passphrase: str | None, raw_key: bytes | None) -> None:
        if (passphrase is None) == (raw_key is None):
            raise KeystoreError(f"the keystore needs exactly one of {ENV_PASSPHRASE} or {ENV_RAW_KEY}")
        if passphrase is not None and not passphrase:
            raise KeystoreError(f"{ENV_PASSPHRASE} is empty")
        if raw_key is not None and len(raw_key) != 32:
            raise KeystoreError(f"{ENV_RAW_KEY} must be 32 bytes (64 hex digits)")
        self._passphrase = passphrase
        self._raw = raw_key
        self._derived: dict[tuple[bytes, int, int, int], bytes] = {}

    def __repr__(self) -> str:
        return "_FileKey(scrypt)" if self._passphrase is not None else "_FileKey(raw)"

    def new_kdf(self) -> dict[str, Any]:
        """KDF parameters for a new file."""
        if self._passphrase is None:
            return {"name": "raw"}
        return {"name": "scrypt", "salt": os.urandom(16).hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}

    def key_for(self, kdf: Mapping[str, Any], path: Path) -> bytes:
        """The AES-256 key of a file with these KDF parameters."""
        name = kdf.get("name")
        if name == "raw":
            if self._raw is None:
                raise KeystoreError(f"keystore file {path} is protected by a raw key: set {ENV_RAW_KEY}")
            return self._raw
        if name != "scrypt":
            raise KeystoreError(f"keystore file {path} uses an unknown key derivation")
        if self._passphrase is None:
            raise KeystoreError(f"keystore file {path} is protected by a passphrase: set {ENV_PASSPHRASE}")
        try:
            salt = bytes.fromhex(str(kdf["salt"]))
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        except (KeyError, TypeError, ValueError):
            raise KeystoreError(f"keystore file {path} has malformed key derivation parameters") from None
        # Bounds keep a tampered file from asking for gigabytes; a power of two is what scrypt needs.
        if not (len(salt) >= 16 and 2**14 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 16 and 1 <= p <= 4):
            raise KeystoreError(f"keystore file {path} has key derivation parameters out of range")
        params = (salt, n, r, p)
        if params not in self._derived:
            kdf_fn = Scrypt(salt=salt, length=32, n=n, r=r, p=p)
            self._derived[params] = kdf_fn.derive(self._passphrase.encode("utf-8"))
        return self._derived[params]


def _aad(kdf: Mapping[str, Any]) -> bytes:
    return json.dumps({"format": FILE_FORMAT, "kdf": dict(kdf)}, sort_keys=True, separators=(",", ":")).encode()


class MemoryKeystore(BaseKeystore):
    """Master keys held in this process's memory only, every operation through :class:`SoftwareOps` (spec §1–§3):
    the demo's and the tests' keystore, and the base of :class:`SoftwareKeystore`, which keeps them in a file."""

    def __init__(self, key_sets: Iterable[IssuerKeys] = ()) -> None:
        self._keys: dict[tuple[Alg, int, str], bytes] = {}
        self._ops = SoftwareOps(self._master)
        for keys in key_sets:
            self.import_keys(keys, keys.version)

    def __repr__(self) -> str:
        sets = sorted({(f"{int(alg):02X}", version) for alg, version, _ in self._keys})
        return f"{type(self).__name__}(sets={sets})"

    # -- hooks

    def _master(self, alg: Alg, version: int, name: str) -> bytes:
        key = self._keys.get((alg, version, name))
        if key is None:
            raise UnknownKey(f"no key {key_label(alg, version, name)} in the keystore")
        return key

    def _import(self, alg: Alg, version: int, keys: dict[str, bytes]) -> dict[str, str]:
        for name, key in keys.items():
            old = self._keys.get((alg, version, name))
            if old is not None and not hmac.compare_digest(old, key):
                raise KeyConflict(f"a different key {key_label(alg, version, name)} is already stored")
        self._keys.update({(alg, version, name): key for name, key in keys.items()})
        return {name: crypto.kcv(alg, key).hex().upper() for name, key in keys.items()}

    def _list(self) -> list[KeyInfo]:
        return [
            KeyInfo(alg, version, name, crypto.kcv(alg, key).hex().upper())
            for (alg, version, name), key in self._keys.items()
        ]

    def _put_key_data(self, alg: Alg, version: int, usage: int, card_no: bytes) -> bytes:
        return self._ops.put_key_data(alg, version, usage, card_no)

    def _psam_put_key_data(self, alg: Alg, version: int) -> bytes:
        return self._ops.psam_put_key_data(alg, version)

    def _external_authenticate(self, alg: Alg, version: int, challenge: bytes) -> bytes:
        return self._ops.external_authenticate(alg, version, challenge)

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
        return self._ops.load_mac2(
            alg, version, card_no, rand, online_seq, old_balance, amount, term_id, mac1, date4, time3
        )

    def _dtk(self, alg: Alg, version: int, card_no: bytes) -> bytes:
        return self._ops.dtk(alg, version, card_no)

    def tac_calculator(self, alg: Alg, version: int, card_no: bytes) -> crypto.TacCalculator:
        """See :meth:`BaseKeystore.tac_calculator` (the master's diversifier is made once)."""
        return self._ops.tac_calculator(alg, version, card_no)

    def _line_mac(
        self, alg: Alg, version: int, usage: int, card_no: bytes, header_and_data: bytes, challenge: bytes
    ) -> bytes:
        return self._ops.line_mac(alg, version, usage, card_no, header_and_data, challenge)

    def close(self) -> None:
        """Drop cached card keys (the master keys stay in memory until the object goes)."""
        self._ops.forget()


class SoftwareKeystore(MemoryKeystore):
    """The embedded default keystore: master keys in an encrypted JSON file (cli.md, ``ONECARD_KEYSTORE``).

    The file is ``{"format": "onecard-keystore/1", "kdf": {…}, "nonce": hex, "ciphertext": base64}``: one
    AES-256-GCM encryption of the key list, the header bound as associated data, a fresh nonce per write. The
    file key comes from scrypt over a passphrase or is given raw (32 bytes). Writes are atomic (temporary file,
    fsync, rename) under an exclusive lock on ``<path>.lock``. A missing file is an empty keystore.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, passphrase: str | None = None, raw_key: bytes | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._file_key = _FileKey(passphrase=passphrase, raw_key=raw_key)
        self._kdf: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._keys, self._kdf = self._read()

    def __repr__(self) -> str:
        return f"SoftwareKeystore(path={str(self.path)!r}, keys={len(self._keys)})"

    # -- file

    def _read(self) -> tuple[dict[tuple[Alg, int, str], bytes], dict[str, Any] | None]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore file {self.path}: {exc.__class__.__name__}") from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT or not isinstance(doc.get("kdf"), dict):
                raise ValueError
            kdf: dict[str, Any] = doc["kdf"]
            nonce = bytes.fromhex(str(doc["nonce"]))
            ciphertext = base64.b64decode(str(doc["ciphertext"]), validate=True)
        except (ValueError, KeyError, binascii.Error):
            raise KeystoreError(f"{self.path} is not an onecard keystore file") from None
        file_key = self._file_key.key_for(kdf, self.path)
        try:
            plain = AESGCM(file_key).decrypt(nonce, ciphertext, _aad(kdf))
        except (InvalidTag, ValueError):
            raise KeystoreError(
                f"cannot open keystore file {self.path}: wrong passphrase or key, or the file was altered"
            ) from None
        keys: dict[tuple[Alg, int, str], bytes] = {}
        try:
            for entry in json.loads(plain)["keys"]:
                alg = Alg(int(entry["alg"], 16))
                ident = (alg, check_version(int(entry["version"])), str(entry["name"]))
                keys[ident] = bytes.fromhex(entry["key"])
        except (ValueError, KeyError, TypeError, InvalidInput):
            raise KeystoreError(f"keystore file {self.path} has a malformed key list") from None
        return keys, kdf

    def _write(self, keys: Mapping[tuple[Alg, int, str], bytes], kdf: dict[str, Any]) -> None:
        entries = [
            {"alg": f"{alg:02X}", "version": version, "name": name, "key": key.hex().upper()}
            for (alg, version, name), key in sorted(keys.items())
        ]
        plain = json.dumps({"keys": entries}).encode()
        nonce = os.urandom(12)
        ciphertext = AESGCM(self._file_key.key_for(kdf, self.path)).encrypt(nonce, plain, _aad(kdf))
        doc = {
            "format": FILE_FORMAT,
            "kdf": kdf,
            "nonce": nonce.hex(),
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        }
        data = (json.dumps(doc, indent=1) + "\n").encode()
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeystoreError(f"cannot lock keystore file {self.path}: {exc.__class__.__name__}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- hooks

    def _import(self, alg: Alg, version: int, keys: dict[str, bytes]) -> dict[str, str]:
        with self._lock, self._file_lock():
            stored, kdf = self._read()  # another process may have written since we opened
            for name, key in keys.items():
                old = stored.get((alg, version, name))
                if old is not None and not hmac.compare_digest(old, key):
                    raise KeyConflict(f"a different key {key_label(alg, version, name)} is already stored")
            merged = dict(stored)
            merged.update({(alg, version, name): key for name, key in keys.items()})
            if merged != stored or kdf is None:
                kdf = kdf if kdf is not None else self._file_key.new_kdf()
                self._write(merged, kdf)
            self._keys, self._kdf = merged, kdf
        return {name: crypto.kcv(alg, key).hex().upper() for name, key in keys.items()}


# --- sealing other back-office secrets ------------------------------------------------------------------------


class AesGcmSealer:
    """AES-256-GCM sealing of short values, ``nonce 12 ‖ ciphertext ‖ tag 16`` (the ``Sealer`` of issuance.pii).

    Here because this is the back office's one module that imports ``cryptography``. The 32-byte data key is
    the caller's; it is never shown.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeystoreError("a sealing key is 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "AesGcmSealer(<key redacted>)"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad``, under a fresh random nonce."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        """Open a value made by :meth:`seal` with the same ``aad``; :class:`KeystoreError` if it does not."""
        if len(sealed) < 28:
            raise KeystoreError("a sealed value is at least 28 bytes")
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag:
            raise KeystoreError("a sealed value does not open (wrong key, altered, or another column's)") from None


# --- choosing a keystore --------------------------------------------------------------------------------------


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    if env is not None:
        return env
    return {**read_dotenv(), **os.environ}


def _raw_key(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise KeystoreError(f"{ENV_RAW_KEY} must be 64 hex digits") from None


def open_keystore(setting: str | None = None, env: Mapping[str, str] | None = None) -> BaseKeystore:
    """The keystore named by the ``ONECARD_KEYSTORE`` setting (README "Configuration", cli.md).

    ``pkcs11:<module path>:<token label>`` opens an HSM token with the PIN from ``ONECARD_HSM_PIN``; anything
    else (default ``./onecard-keys.json``) is a :class:`SoftwareKeystore` file protected by
    ``ONECARD_KEYSTORE_PASSPHRASE`` or ``ONECARD_KEYSTORE_KEY``. ``env`` defaults to the environment over ``.env``.
    """
    values = _environment(env)
    setting = setting or values.get("ONECARD_KEYSTORE") or DEFAULT_KEYSTORE
    if setting.startswith(PKCS11_PREFIX):
        module, sep, label = setting[len(PKCS11_PREFIX) :].partition(":")
        if not sep or not module or not label:
            raise KeystoreError("an HSM keystore is pkcs11:<module path>:<token label>")
        pin = values.get(ENV_HSM_PIN)
        if not pin:
            raise KeystoreError(f"set {ENV_HSM_PIN} to open the HSM keystore")
        from issuance.keystore_pkcs11 import Pkcs11Keystore

        return Pkcs11Keystore(module, label, pin)
    path = setting.removeprefix("file:")
    return SoftwareKeystore(
        path, passphrase=values.get(ENV_PASSPHRASE) or None, raw_key=_raw_key(values.get(ENV_RAW_KEY))
    )
