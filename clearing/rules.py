"""The rules of clearing as pure functions (spec §5; issue #6): no database, no clock, no keys.

- :func:`classify` puts one record in its class with a code, from the record, the facts the adapters looked up
  (device, card, batch, the PSAM's sequence, the issuance load, the bill) and the card's chain of records.
- :func:`day_fee` is the fee of an operator's clearing day, rounded half up to whole fen (cli.md).
- :class:`Entry` is a journal entry as an immutable value that refuses to exist unbalanced.

Everything is integer fen and Unix seconds.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from enum import IntEnum, StrEnum
from typing import NamedTuple

LOAD = "02"
PURCHASE_TYPES = frozenset({"06", "09"})
PURCHASE_DEVICE_KINDS = frozenset({"validator", "kiosk", "gate"})
LOAD_DEVICE_KINDS = frozenset({"counter"})


class Family(IntEnum):
    """The counter a record uses (spec §5): loads the online counter, purchases the offline one."""

    ONLINE = 0
    OFFLINE = 1


def family_of(txn_type: str) -> Family:
    """The counter family of a transaction type (spec §5: {02} and {06, 09})."""
    return Family.ONLINE if txn_type == LOAD else Family.OFFLINE


class Klass(StrEnum):
    """The class every record ends in (spec §5; cli.md report ``records``)."""

    SETTLED = "settled"
    SUSPICIOUS = "suspicious"
    """Settled, and reported."""
    PENDING = "pending"
    REJECTED = "rejected"
    """Never settled."""
    CONFLICT = "conflict"
    """A key of another record with other content: possible fraud, never settled."""


class Code(StrEnum):
    """Why a record is in its class."""

    OK = "ok"
    CONFIRMED_BY_COUNTER = "confirmed_by_counter"
    ACCEPTED = "accepted"
    ADJUSTED = "adjusted"
    # suspicious (settled, reported)
    COUNTER_GAP = "counter_gap"
    BALANCE_CHAIN = "balance_chain"
    DEVICE_SEQ_GAP = "device_seq_gap"
    TERM_SEQ_ORDER = "term_seq_order"
    BILL_UNMATCHED = "bill_unmatched"
    LOAD_NOT_COUNTED = "load_not_counted"
    LOAD_NOT_ON_RECORD = "load_not_on_record"
    BALANCE_FINAL = "balance_final"
    ACKNOWLEDGED = "acknowledged"
    # pending
    UNCONFIRMED = "unconfirmed"
    # rejected (never settled)
    BAD_TAC = "bad_tac"
    UNKNOWN_KEY = "unknown_key"
    UNKNOWN_DEVICE = "unknown_device"
    TERM_MISMATCH = "term_mismatch"
    RETIRED_DEVICE = "retired_device"
    DEVICE_KIND = "device_kind"
    UNKNOWN_CARD = "unknown_card"
    OUTSIDE_WINDOW = "outside_window"
    HOTLISTED = "hotlisted"
    VOID_REUSED_SEQ = "void_reused_seq"
    VOID_TIMEOUT = "void_timeout"
    REJECTED_ON_REVIEW = "rejected_on_review"
    REVERSED = "reversed"
    # conflict
    KEY_CONFLICT = "key_conflict"


@dataclass(frozen=True, slots=True)
class Policy:
    """Clearing's time limits."""

    future_skew: int = 600
    """Clock drift between devices, seconds: a record may be this much after its batch was made, and the card's
    transactions on different devices this much out of order."""
    max_upload_age: int = 30 * 86_400
    """A record older than this when its batch was made is outside the window."""
    pending_days: int = 7
    """An unconfirmed record nothing has confirmed after this many days past its date is void."""
    settlement_grace_days: int = 7
    """A closed card's balance is final (issuance settles it) once clearing has closed this many days after the
    card's hotlist time: offline purchases made before then have had the time to arrive."""
    utc_offset: int = 8 * 3600
    """Clearing days run from midnight to midnight at this UTC offset (China Standard Time)."""


DEFAULT_POLICY = Policy()


# --- the card's chain ------------------------------------------------------------------------------------------


class ChainRecord(NamedTuple):
    """A record as the card's chain sees it: only what the card itself wrote (its TAC verified, or unconfirmed).

    Fields are in chain order: tuples compare by time, then family (loads first), counter value, id.
    """

    txn_epoch: int
    family: int
    card_seq: int
    record_id: int
    amount: int
    balance_before: int
    unconfirmed: bool

    @property
    def balance_after(self) -> int:
        """The balance after the transaction: loads add, purchases take."""
        return self.balance_before + self.amount if self.family == Family.ONLINE else self.balance_before - self.amount

    @property
    def order(self) -> tuple[int, int, int, int]:
        """Position in the card's merged chain: time, then family (loads first), counter, id."""
        return (self.txn_epoch, self.family, self.card_seq, self.record_id)


class Opening(NamedTuple):
    """A card's purse before the first transaction clearing may see: empty with both counters at 0 for a card issued
    here; the state at take-over for a card that came from an earlier system."""

    balance: int = 0
    online_seq: int = 0
    offline_seq: int = 0

    def seq(self, family: int) -> int:
        """The counter value of the family's first transaction."""
        return self.online_seq if family == Family.ONLINE else self.offline_seq


NEW_CARD = Opening()


class CardChain:
    """One card's records known to clearing near the records being classified (loads included)."""

    __slots__ = ("_by_key", "_confirmed_keys", "_sorted", "complete_history", "opening")

    def __init__(
        self, records: Iterable[ChainRecord], complete_history: bool = False, opening: Opening = NEW_CARD
    ) -> None:
        self.complete_history = complete_history
        """True when no record of the card exists before the earliest one here (its first transactions)."""
        self.opening = opening
        """Where the card's chain starts (its first transaction of each family, its balance before the first)."""
        unique = list({record.record_id: record for record in records}.values())
        unique.sort()
        self._sorted = unique
        self._confirmed_keys: set[tuple[int, int]] = set()
        self._by_key: dict[tuple[int, int], ChainRecord] = {}
        for record in unique:
            key = (record.family, record.card_seq)
            if not record.unconfirmed:
                self._confirmed_keys.add(key)
                self._by_key[key] = record
            else:
                self._by_key.setdefault(key, record)

    @property
    def records(self) -> list[ChainRecord]:
        """The records in chain order."""
        return list(self._sorted)

    def has(self, family: int, seq: int, *, confirmed_only: bool = False) -> bool:
        """Whether a record of the card used counter value ``seq`` of ``family``."""
        return (family, seq) in (self._confirmed_keys if confirmed_only else self._by_key)

    def reused(self, record: ChainRecord) -> bool:
        """An unconfirmed record whose counter value a confirmed record of the card used: it never happened."""
        return bool(record.unconfirmed) and (record.family, record.card_seq) in self._confirmed_keys

    def predecessor(self, record: ChainRecord) -> ChainRecord | None:
        """The card's transaction just before ``record`` (void unconfirmed records skipped)."""
        index = bisect.bisect_left(self._sorted, record.order) - 1
        while index >= 0:
            candidate = self._sorted[index]
            if candidate.record_id != record.record_id and not self.reused(candidate):
                return candidate
            index -= 1
        return None

    def balance_fits(self, record: ChainRecord, skew: int = 0) -> bool:
        """``balance_before`` equals the balance after the card's previous transaction (spec §5, chain check).

        The previous transaction is the one before in time; since the counter's and the validators' clocks drift
        apart by up to ``skew`` seconds, a transaction of the other counter within ``skew`` of this one, or this
        counter's previous value, may be the previous one too. An unconfirmed predecessor fits with its balance
        before or after (its debit may or may not have happened); the first transaction of a card starts from 0.
        """
        previous = self.predecessor(record)
        candidates = [] if previous is None else [previous]
        if skew:
            low = bisect.bisect_left(self._sorted, (record.txn_epoch - skew,))
            high = bisect.bisect_left(self._sorted, (record.txn_epoch + skew + 1,))
            candidates += [
                other
                for other in self._sorted[low:high]
                if other.family != record.family and other.record_id != record.record_id and not self.reused(other)
            ]
        same = self._by_key.get((record.family, record.card_seq - 1))
        if same is not None and not self.reused(same):
            candidates.append(same)
        if not candidates and not self.complete_history:
            return True  # nothing known before it: nothing to compare with
        allowed: set[int] = set()
        for candidate in candidates:
            if candidate.unconfirmed:
                if candidate.family == record.family and candidate.card_seq + 1 == record.card_seq:
                    allowed.add(candidate.balance_after)  # the counter moved: the debit happened
                else:
                    allowed.update((candidate.balance_before, candidate.balance_after))
            else:
                allowed.add(candidate.balance_after)
        if self.complete_history and (previous is None or not self.has(record.family, record.card_seq - 1)):
            allowed.add(self.opening.balance)  # possibly the card's first transaction
        return record.balance_before in allowed


# --- what the adapters look up ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceFact:
    """The registry's device holding a record's term_id."""

    term_id: str
    kind: str
    retired_since: int | None
    """Unix seconds from which the device is retired; ``None`` while active."""


@dataclass(frozen=True, slots=True)
class CardFact:
    """What issuance knows of the card."""

    hotlisted_since: int | None
    opening: Opening | None = None
    """Where the card's chain starts when clearing holds no earlier record of it (``None``: empty, counters 0)."""


class LoadMatch(StrEnum):
    """How issuance recorded the load a load record reports."""

    COUNTED = "counted"
    NOT_COUNTED = "not_counted"
    MISSING = "missing"


class Candidate(NamedTuple):
    """A record to classify with the facts around it."""

    record_id: int
    role: str
    txn_type: str
    card_no: str
    card_seq: int
    amount: int
    balance_before: int
    term_id: str
    term_seq: int
    device_seq: int
    txn_date: str
    txn_epoch: int
    status: str
    tac_check: str
    batch_term_id: str
    batch_device_kind: str
    batch_created_epoch: int
    utility: bool
    """The batch's operator is a utility: its purchases pay bills."""
    device: DeviceFact | None
    card: CardFact | None
    previous_term_seq: int | None
    """term_seq of the same terminal's record at ``device_seq − 1`` (``None`` when there is none)."""
    load_match: LoadMatch | None = None
    bill_matched: bool = False
    chain_verified: bool = False
    """The adapter established set-wise that the card's counter and balance chain are whole up to this record."""

    @property
    def unconfirmed(self) -> bool:
        """Status ``unconfirmed``: the card left before the terminal saw the outcome."""
        return self.status == "unconfirmed"

    @property
    def chain_record(self) -> ChainRecord:
        """This record as its card's chain sees it."""
        return ChainRecord(
            txn_epoch=self.txn_epoch,
            family=family_of(self.txn_type),
            card_seq=self.card_seq,
            record_id=self.record_id,
            amount=self.amount,
            balance_before=self.balance_before,
            unconfirmed=self.unconfirmed,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """A record's class and code on a clearing day."""

    klass: Klass
    code: Code
    late: bool


@functools.lru_cache(maxsize=4096)
def transaction_day(txn_date: str) -> date:
    """The ``txn_date`` column as a date."""
    return date(int(txn_date[:4]), int(txn_date[4:6]), int(txn_date[6:8]))


@functools.lru_cache(maxsize=1024)
def _decision(klass: Klass, code: Code, late: bool) -> Decision:
    return Decision(klass, code, late)


def classify(candidate: Candidate, chain: CardChain, day: date, policy: Policy = DEFAULT_POLICY) -> Decision:
    """The class of one record on clearing ``day`` (spec §5, issue #6 "Verify and classify").

    First failing rule wins: conflict; TAC; device (registered, this batch's, active, right kind); card known;
    time window; hotlist; then, for an unconfirmed record, whether the card's counter proves it happened or not;
    then the chain checks (counter continuity, balance chain, the PSAM's device_seq and term_seq), the issuance
    load of a load record, the bill of a utility payment.
    """
    late = transaction_day(candidate.txn_date) < day

    def decided(klass: Klass, code: Code) -> Decision:
        return _decision(klass, code, late)

    if candidate.role == "conflict":
        return decided(Klass.CONFLICT, Code.KEY_CONFLICT)
    if candidate.tac_check == "bad":
        return decided(Klass.REJECTED, Code.BAD_TAC)
    if candidate.tac_check == "nokey":
        return decided(Klass.REJECTED, Code.UNKNOWN_KEY)
    refusal = _device_refusal(candidate)
    if refusal is not None:
        return decided(Klass.REJECTED, refusal)
    if candidate.card is None:
        return decided(Klass.REJECTED, Code.UNKNOWN_CARD)
    made = candidate.batch_created_epoch
    if not made - policy.max_upload_age <= candidate.txn_epoch <= made + policy.future_skew:
        return decided(Klass.REJECTED, Code.OUTSIDE_WINDOW)
    hotlisted = candidate.card.hotlisted_since
    if hotlisted is not None and candidate.txn_epoch > hotlisted:
        return decided(Klass.REJECTED, Code.HOTLISTED)

    record = None if candidate.chain_verified and not candidate.unconfirmed else candidate.chain_record
    settled_code = Code.OK
    if record is not None and candidate.unconfirmed:
        if chain.has(record.family, record.card_seq, confirmed_only=True):
            return decided(Klass.REJECTED, Code.VOID_REUSED_SEQ)
        if not chain.has(record.family, record.card_seq + 1, confirmed_only=True):
            if (day - transaction_day(candidate.txn_date)).days > policy.pending_days:
                return decided(Klass.REJECTED, Code.VOID_TIMEOUT)
            return decided(Klass.PENDING, Code.UNCONFIRMED)
        settled_code = Code.CONFIRMED_BY_COUNTER

    suspicion = _chain_suspicion(candidate, record, chain, policy.future_skew) or _counterpart_suspicion(candidate)
    if suspicion is not None:
        return decided(Klass.SUSPICIOUS, suspicion)
    return decided(Klass.SETTLED, settled_code)


def _device_refusal(candidate: Candidate) -> Code | None:
    device = candidate.device
    if device is None:
        return Code.UNKNOWN_DEVICE
    if candidate.term_id != candidate.batch_term_id:
        return Code.TERM_MISMATCH
    if device.retired_since is not None and candidate.txn_epoch >= device.retired_since:
        return Code.RETIRED_DEVICE
    allowed = LOAD_DEVICE_KINDS if candidate.txn_type == LOAD else PURCHASE_DEVICE_KINDS
    if candidate.batch_device_kind not in allowed:
        return Code.DEVICE_KIND
    return None


def _chain_suspicion(candidate: Candidate, record: ChainRecord | None, chain: CardChain, skew: int) -> Code | None:
    if record is not None and not candidate.chain_verified:
        first = chain.opening.seq(record.family)
        if record.card_seq != first and not chain.has(record.family, record.card_seq - 1):
            return Code.COUNTER_GAP  # neither the family's first value nor the next after a known one
        if not chain.balance_fits(record, skew):
            return Code.BALANCE_CHAIN
    if candidate.device_seq > 1:
        previous = candidate.previous_term_seq
        if previous is None:
            return Code.DEVICE_SEQ_GAP
        if previous >= candidate.term_seq:
            return Code.TERM_SEQ_ORDER
    return None


def _counterpart_suspicion(candidate: Candidate) -> Code | None:
    if candidate.txn_type == LOAD:
        if candidate.load_match is LoadMatch.MISSING or candidate.load_match is None:
            return Code.LOAD_NOT_ON_RECORD
        if candidate.load_match is LoadMatch.NOT_COUNTED:
            return Code.LOAD_NOT_COUNTED
        return None
    if candidate.utility and not candidate.bill_matched:
        return Code.BILL_UNMATCHED
    return None


# --- fees ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """An operator's fee: ``percent`` of the amount plus ``per_txn`` fen per paid transaction."""

    percent: Decimal
    per_txn: int


def day_fee(schedule: FeeSchedule | None, amount: int, paid_count: int) -> int:
    """The fee of an operator's clearing day (cli.md): ``percent`` of the day's amount rounded half up to whole
    fen, once per operator and day, plus ``per_txn`` for each transaction of more than 0 fen."""
    if schedule is None:
        return 0
    share = (Decimal(amount) * schedule.percent / Decimal(100)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(share) + schedule.per_txn * paid_count


# --- ledger entries -----------------------------------------------------------------------------------------------

FLOAT = "float"
"""Card liability: what the cards hold (issuance's shadows add up to it)."""
DEPOSITS = "deposits"
"""Cash and bank: the money that backs the float (loads in, refunds and operator payments out)."""
FEE_INCOME = "fee_income"
SUSPENSE = "suspense"
"""Money owed to operators for purchases that no card balance covers any more (exceptions to resolve)."""
BALANCE_SETTLEMENTS = "balance_settlements"
"""Balances of closed cards on their way to a replacement card or to the holder (issuance settlements)."""
WRITE_OFFS = "write_offs"


def clearing_account(operator_id: str) -> str:
    """The account an operator's cleared purchases go through before settlement; it drains every run."""
    return f"clearing:{operator_id}"


def payable_account(operator_id: str) -> str:
    """What the issuer owes the operator."""
    return f"payable:{operator_id}"


class UnbalancedEntry(ValueError):
    """A journal entry whose debits and credits differ, or with fewer than two lines."""


@dataclass(frozen=True, slots=True)
class Line:
    """One side of an entry: a positive amount debited or credited to an account."""

    account: str
    debit: int
    credit: int


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal entry: lines whose debits equal their credits; cannot be built otherwise."""

    entry_ref: str
    clearing_day: date
    kind: str
    operator_id: str | None
    memo: str
    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        if len(self.lines) < 2:
            raise UnbalancedEntry(f"entry {self.entry_ref} has fewer than two lines")
        for line in self.lines:
            if line.debit < 0 or line.credit < 0 or (line.debit == 0) == (line.credit == 0):
                raise UnbalancedEntry(f"entry {self.entry_ref}: a line is one positive debit or credit")
        if self.total != sum(line.credit for line in self.lines):
            raise UnbalancedEntry(f"entry {self.entry_ref} does not balance")

    @property
    def total(self) -> int:
        """The sum of the debits (equal to the sum of the credits)."""
        return sum(line.debit for line in self.lines)


def entry(
    entry_ref: str, clearing_day: date, kind: str, operator_id: str | None, memo: str, movements: Mapping[str, int]
) -> Entry | None:
    """An entry from signed amounts per account (positive: debit, negative: credit); ``None`` when all are 0.

    Lines come in account order, debits first, so the same movements always make the same entry.
    """
    nonzero = {account: amount for account, amount in movements.items() if amount}
    if not nonzero:
        return None
    if sum(nonzero.values()) != 0:
        raise UnbalancedEntry(f"entry {entry_ref} does not balance: {sum(nonzero.values())} fen left over")
    debits = sorted((a, v) for a, v in nonzero.items() if v > 0)
    credits = sorted((a, -v) for a, v in nonzero.items() if v < 0)
    lines = tuple(Line(a, v, 0) for a, v in debits) + tuple(Line(a, 0, v) for a, v in credits)
    return Entry(entry_ref, clearing_day, kind, operator_id, memo, lines)


def settlement_movements(operator_id: str, gross: int, fee: int) -> dict[str, int]:
    """Settling ``gross`` fen cleared for an operator: out of its clearing account into its payable, less the fee."""
    return {clearing_account(operator_id): gross, payable_account(operator_id): -(gross - fee), FEE_INCOME: -fee}
