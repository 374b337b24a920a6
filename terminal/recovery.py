"""Crash-safe purchases: an intent is stored before DEBIT, and settled from the card when it comes back.

A device may die (power cut, SIGKILL) at any point of a tap. What the card did is decided by one command,
DEBIT (spec §2.4, step 3); so :func:`durable_purchase` stores an *intent* — the record as it will be, without
TAC or device_seq — and commits it before DEBIT is sent (the ``before_debit`` hook of
:meth:`terminal.purse.PurseTerminal.purchase`). Then:

- the purchase completes (``ok`` or ``proof``): one transaction turns the intent into the record (numbered with
  the next device_seq) before the rider is told anything;
- the card left and did not come back in time (``unconfirmed``), or the device died: the intent stays.

An intent is settled when its card next meets the device (:func:`settle_intents`, before anything else is done
with the card), from what the card itself proves (spec §2.4, GET TRANSACTION PROOF):

1. a proof for the intent's ``(seq, type)`` and the newest purchase in the log is the intent's transaction →
   charged: a ``proof`` record with the card's TAC;
2. otherwise the intent's transaction in the card's log (the proof was replaced by a later purchase) →
   charged, but unprovable: an ``unconfirmed`` record (clearing settles it from the card's counters);
3. otherwise a 0-fen INITIALIZE returns the intent's seq → the DEBIT never happened: the intent is dropped;
4. otherwise the log still reaches back to that seq with another transaction there → not charged: dropped;
5. otherwise the card cannot tell (more than a log's worth of purchases since): an ``unconfirmed`` record.

An intent whose card never comes back becomes an ``unconfirmed`` record after a grace period
(:func:`expire_intents`), so that clearing sees it. No device_seq is ever given to an intent, so dropping one
leaves no gap (spec §5, column 19).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from cardos.batch import BatchRecord, RecordStatus
from cardos.layout import TXN_CAPP, TXN_PURCHASE, LogRecord, PublicData
from cardos.sw import SW
from terminal.cards import UserCard
from terminal.channel import Channel
from terminal.errors import CardStatusError
from terminal.purse import PurchaseResult, PurseTerminal, RecordMeta
from terminal.store import DeviceStore, Intent


class Outcome(StrEnum):
    """What the card says about an intent (see the module docstring)."""

    CHARGED = "charged"
    CHARGED_UNPROVEN = "charged-unproven"
    NOT_CHARGED = "not-charged"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Settled:
    """An intent settled: the outcome and the stored record (None when the intent was dropped)."""

    intent: Intent
    outcome: Outcome
    record: BatchRecord | None

    @property
    def charged(self) -> bool:
        """True when the card proved (or its log shows) that the money moved."""
        return self.outcome in (Outcome.CHARGED, Outcome.CHARGED_UNPROVEN)


@dataclass(frozen=True, slots=True)
class DurableResult:
    """A purchase run by :func:`durable_purchase`: ``record`` is the stored record (None while pending)."""

    purchase: PurchaseResult
    record: BatchRecord | None
    intent_id: int | None

    @property
    def pending(self) -> bool:
        """True when the outcome is not known yet (the intent stays until the card comes back)."""
        return self.record is None


def expected_log(draft: BatchRecord) -> LogRecord:
    """The EF 0018 record the card writes if the draft's DEBIT happened (spec §2.1)."""
    return LogRecord(
        seq=draft.card_seq,
        amount=draft.amount,
        txn_type=int(draft.txn_type, 16),
        term_id=bytes.fromhex(draft.term_id),
        date=bytes.fromhex(draft.txn_date),
        time=bytes.fromhex(draft.txn_time),
    )


def ask_card(card: UserCard, draft: BatchRecord) -> tuple[Outcome, str]:
    """Find out from the card (purse selected) whether the draft's DEBIT happened; ``(outcome, TAC hex)``.

    Spec §2.4, GET TRANSACTION PROOF: a proof matches only seq and type, so the newest purchase in the log
    must be the draft's own transaction (a later load keeps the purchase proof); ``9406`` proves that nothing
    moved only while the counter has not advanced.
    """
    expected = expected_log(draft)
    proof = card.get_transaction_proof(expected.txn_type, expected.seq)
    log = card.read_log()
    purchases = [entry for entry in log if entry.txn_type in (TXN_PURCHASE, TXN_CAPP)]
    if proof is not None and purchases and purchases[0] == expected:
        return Outcome.CHARGED, proof[1].hex().upper()
    if expected in log:
        return Outcome.CHARGED_UNPROVEN, ""
    try:
        seq = card.initialize_purchase(0, expected.term_id, capp=False).offline_seq
    except CardStatusError as exc:
        if exc.sw != SW.COUNTER_AT_MAXIMUM:
            raise
        seq = 0xFFFF
    if seq == expected.seq:
        return Outcome.NOT_CHARGED, ""
    if purchases and min(entry.seq for entry in purchases) <= expected.seq < seq:
        return Outcome.NOT_CHARGED, ""
    return Outcome.UNKNOWN, ""


def settle_intents(store: DeviceStore, card: UserCard, card_no: str, *, at: datetime) -> list[Settled]:
    """Settle every open intent of ``card_no`` from the card in the field (purse selected), oldest first
    (spec §2.4, GET TRANSACTION PROOF; the records are spec §5 ``proof`` or ``unconfirmed``)."""
    settled: list[Settled] = []
    for intent in store.intents(card_no):
        outcome, tac = ask_card(card, intent.draft)
        if outcome is Outcome.NOT_CHARGED:
            store.drop_intent(intent.intent_id, "the card proved the DEBIT did not happen", at=at)
            settled.append(Settled(intent, outcome, None))
            continue
        status = RecordStatus.PROOF if outcome is Outcome.CHARGED else RecordStatus.UNCONFIRMED
        record = store.record_intent(intent.intent_id, replace(intent.draft, status=status, tac=tac))
        settled.append(Settled(intent, outcome, record))
    return settled


def expire_intents(store: DeviceStore, *, older_than: datetime) -> list[BatchRecord]:
    """Intents whose card has not come back since before ``older_than`` become spec §5 ``unconfirmed`` records."""
    stored: list[BatchRecord] = []
    for intent in store.intents():
        if intent.tap_time < older_than:
            draft = replace(intent.draft, status=RecordStatus.UNCONFIRMED, tac="")
            stored.append(store.record_intent(intent.intent_id, draft))
    return stored


def durable_purchase(
    terminal: PurseTerminal,
    store: DeviceStore,
    channel: Channel,
    amount: int,
    *,
    public: PublicData,
    tap_time: datetime,
    kind: str,
    fare_version: str = "",
    meta: RecordMeta | None = None,
    capp_record: Callable[[PublicData, bytes], bytes] | None = None,
) -> DurableResult:
    """One purchase whose intent is committed before DEBIT and whose record is committed before returning.

    Errors of :meth:`PurseTerminal.purchase` propagate (an intent already stored then stays for
    :func:`settle_intents`); :class:`terminal.store.StorageFull` refuses the purchase before DEBIT.
    """
    intent_id: int | None = None

    def before_debit(draft: BatchRecord) -> None:
        nonlocal intent_id
        if intent_id is None:
            intent_id = store.add_intent(draft, tap_time=tap_time, fare_version=fare_version, kind=kind)
        else:
            store.update_intent(intent_id, draft)

    result = terminal.purchase(
        channel,
        amount,
        capp_record=capp_record,
        meta=meta or RecordMeta(),
        public=public,
        before_debit=before_debit,
    )
    if intent_id is None:
        raise AssertionError("the purchase completed without DEBIT")
    if result.record.status is RecordStatus.UNCONFIRMED:
        return DurableResult(result, None, intent_id)
    return DurableResult(result, store.record_intent(intent_id, result.record), intent_id)
