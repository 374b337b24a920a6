"""Volatile transaction state kept between the steps of a load, a purchase or a PSAM session."""

from __future__ import annotations

from dataclasses import dataclass, field

from cardos import crypto


@dataclass(slots=True)
class PendingLoad:
    """Between INITIALIZE FOR LOAD and CREDIT FOR LOAD (spec §2.4)."""

    df: int
    amount: int
    term_id: bytes
    rand: bytes
    online_seq: int
    old_balance: int
    session_key: bytes
    alg: crypto.Alg
    dtk: bytes


@dataclass(slots=True)
class PendingPurchase:
    """Between INITIALIZE FOR (CAPP) PURCHASE and DEBIT (spec §2.4)."""

    df: int
    txn_type: int
    amount: int
    term_id: bytes
    rand: bytes
    offline_seq: int
    balance: int
    dpk: bytes
    alg: crypto.Alg
    dtk: bytes
    capp_cache: dict[tuple[int, int], bytes] = field(default_factory=dict)


@dataclass(slots=True)
class PsamSession:
    """Between INIT SAM FOR PURCHASE and CREDIT SAM FOR PURCHASE (spec §3)."""

    amount: int
    session_key: bytes
    alg: crypto.Alg
