"""TAC verification for clearing (spec §2.4: purchase and load TACs; §1: the TAC key), fast and memory-only.

Every record's TAC is checked with the issuer's keys held by the keystore (``issuance.keystore``). A card's TAC key
is derived once and kept in this process's memory (an LRU of :class:`cardos.crypto.TacCalculator`, which makes its
cipher once and runs CBC by hand): never written anywhere. A keystore that cannot hand out derived card keys is
asked for every TAC through its public ``verify_purchase_tac`` / ``verify_load_tac``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from cardos import crypto
from cardos.crypto import Alg

log = logging.getLogger("onecard.clearing.tacs")

TacCheck = Literal["ok", "bad", "nokey"]
_MISSING = object()
CALCULATOR_CACHE_SIZE = 250_000
LOAD = "02"


def _unknown_key(exc: Exception) -> bool:
    return getattr(exc, "code", None) == "unknown_key"


def card_tac_calculator(keystore: Any, alg: Alg, version: int, card_no: bytes) -> crypto.TacCalculator | None:
    """A TAC calculator for one card from the keystore's public ``tac_calculator(alg, version, card_no)`` (its
    DTK derived by the keystore, held only in memory), or ``None`` when the keystore has none: then every TAC is
    checked through its public ``verify_purchase_tac`` / ``verify_load_tac``."""
    public = getattr(keystore, "tac_calculator", None)
    if callable(public):
        calculator = public(alg, version, card_no)
        return calculator if isinstance(calculator, crypto.TacCalculator) else None
    return None


class TacVerifier:
    """Checks record TACs with the issuer's keys: ``ok``, ``bad`` or ``nokey`` (no key of that alg / version).

    One calculator per ``(alg, key_ver, card_no)``, at most :data:`CALCULATOR_CACHE_SIZE` of them (first in, first
    out); not thread-safe (one per worker thread).
    """

    def __init__(self, keystore: Any, cache_size: int = CALCULATOR_CACHE_SIZE) -> None:
        self._keystore = keystore
        self._size = cache_size
        self._calculators: OrderedDict[tuple[str, str, str], crypto.TacCalculator | None] = OrderedDict()
        self._no_key: set[tuple[str, str]] = set()
        self._bytes: dict[str, bytes] = {}
        self._by_card: dict[str, crypto.TacCalculator | Literal[False] | None] = {}
        """alg ‖ key_ver ‖ card_no → the card's calculator (or None / False, as :meth:`_calculator`)."""

    def __repr__(self) -> str:
        return f"TacVerifier(cards={len(self._calculators)})"

    def _hex(self, value: str) -> bytes:
        found = self._bytes.get(value)
        if found is None:
            if len(self._bytes) > 100_000:
                self._bytes.clear()
            found = self._bytes[value] = bytes.fromhex(value)
        return found

    def _calculator(self, alg: str, key_ver: str, card_no: str) -> crypto.TacCalculator | Literal[False] | None:
        """The card's calculator; ``None``: use the keystore per record; ``False``: no such key."""
        if (alg, key_ver) in self._no_key:
            return False
        key = (alg, key_ver, card_no)
        calculators = self._calculators
        found = calculators.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        try:
            calculator = card_tac_calculator(self._keystore, Alg(int(alg, 16)), int(key_ver, 16), self._hex(card_no))
        except Exception as exc:
            if _unknown_key(exc):
                self._no_key.add((alg, key_ver))
                return False
            raise
        calculators[key] = calculator
        if len(calculators) > self._size:
            calculators.popitem(last=False)  # the oldest derived: first in, first out (cheaper than LRU here)
        return calculator

    def check(
        self,
        txn_type: str,
        card_no: str,
        card_seq: int,
        amount: int,
        balance_before: int,
        term_id: str,
        term_seq: int,
        txn_date: str,
        txn_time: str,
        tac: str,
        alg: str,
        key_ver: str,
    ) -> TacCheck:
        """Verify one record's TAC (spec §2.4): a purchase's over ``amount ‖ type ‖ term_id ‖ term_seq ‖ date ‖
        time``, a load's over ``new_balance ‖ online_seq ‖ amount ‖ 02 ‖ term_id ‖ date ‖ time``."""
        card_key = alg + key_ver + card_no
        if card_key in self._by_card:
            calculator = self._by_card[card_key]
        else:
            calculator = self._calculator(alg, key_ver, card_no)
            if len(self._by_card) > self._size:
                self._by_card.clear()
            self._by_card[card_key] = calculator
        if calculator is False:
            return "nokey"
        if calculator is None:
            return self._check_with_keystore(
                txn_type, card_no, card_seq, amount, balance_before, term_id, term_seq, txn_date, txn_time, tac, alg,
                key_ver,
            )  # fmt: skip
        hexed = self._hex
        try:
            if txn_type == LOAD:
                expected = calculator.load_value(
                    balance_before + amount, card_seq, amount, hexed(term_id), hexed(txn_date), hexed(txn_time)
                )
            else:
                expected = calculator.purchase_value(
                    amount, int(txn_type, 16), hexed(term_id), term_seq, hexed(txn_date), hexed(txn_time)
                )
            written = int(tac, 16) if len(tac) == 8 else -1
        except (OverflowError, ValueError):  # a value no card can have written (more than its field's bytes)
            return "bad"
        return "ok" if expected == written else "bad"

    def _check_with_keystore(
        self,
        txn_type: str,
        card_no: str,
        card_seq: int,
        amount: int,
        balance_before: int,
        term_id: str,
        term_seq: int,
        txn_date: str,
        txn_time: str,
        tac: str,
        alg: str,
        key_ver: str,
    ) -> TacCheck:
        hexed = self._hex
        suite, version, number = Alg(int(alg, 16)), int(key_ver, 16), hexed(card_no)
        verify: Callable[..., Any]
        try:
            if txn_type == LOAD:
                verify = self._keystore.verify_load_tac
                genuine = verify(
                    suite, version, number, balance_before + amount, card_seq, amount, hexed(term_id),
                    hexed(txn_date), hexed(txn_time), bytes.fromhex(tac),
                )  # fmt: skip
            else:
                verify = self._keystore.verify_purchase_tac
                genuine = verify(
                    suite, version, number, amount, int(txn_type, 16), hexed(term_id), term_seq, hexed(txn_date),
                    hexed(txn_time), bytes.fromhex(tac),
                )  # fmt: skip
        except (crypto.MacError, OverflowError):
            return "bad"
        except Exception as exc:
            if getattr(exc, "code", None) == "invalid_input":  # out of the field's range: no card wrote it
                return "bad"
            if _unknown_key(exc):
                self._no_key.add((alg, key_ver))
                return "nokey"
            raise
        return "ok" if genuine else "bad"
