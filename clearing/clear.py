"""Clear a run's records, one card-number range at a time (issue #6 "Verify and classify", "Ledger and settlement").

:func:`clear_shard` runs in one unit of work for the cards ``low`` ≤ card_no ≤ ``last`` (:func:`plan_shards` splits
the day's records into ranges of about :data:`SHARD_RECORDS`): every operator's records of those cards, so a card's
whole chain is read once, by one task, and no two tasks lock the same card.

1. the shard's records to decide: new ones (dated up to the day, or impossible: after their batch was made) and
   pending ones;
2. the facts around them, set-wise: devices, cards and their hotlist times, the card chains (the records near
   them, the last one before, the counter predecessors), each PSAM's previous record (noted at ingest when the
   batch held it), issuance's loads, the bills;
3. :func:`clearing.rules.classify` for each record (pure);
4. settled and suspicious purchases post against the float, or against suspense when the card's balance has
   already been paid out (issuance's settlement is final); the cards' shadows go down set-wise, with issuance's
   purse movements;
5. the verdicts, then the ledger: each operator's share of the shard into ``clearing:<op>``.

Settlement is per (operator, clearing day), in the close (:func:`settle_day`): the day's gross out of
``clearing:<op>`` into ``payable:<op>`` and ``fee_income`` with the fee of the whole day rounded half up once
(cli.md), and the operator's statement.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, String, column, select, table, text
from sqlalchemy.orm import Session

from clearing import bulk, ledger
from clearing.models import Bill, Device, Operator
from clearing.registry import fee_schedule_on
from clearing.rules import (
    DEFAULT_POLICY,
    FLOAT,
    NEW_CARD,
    PURCHASE_TYPES,
    SUSPENSE,
    Candidate,
    CardChain,
    CardFact,
    ChainRecord,
    Code,
    Decision,
    DeviceFact,
    FeeSchedule,
    Klass,
    LoadMatch,
    Opening,
    Policy,
    classify,
    clearing_account,
    day_fee,
    entry,
    settlement_movements,
)
from issuance.models import BalanceSettlement, Card, Load

log = logging.getLogger("onecard.clearing.clear")

LOOKBACK = 86_400
"""Seconds of a card's history read together with the records being decided (older: the last one, and lookups)."""
POSTED = ("float", "suspense")
VERDICT_COLUMNS = (
    "record_id", "verdict_no", "clearing_day", "run_id", "operator_id", "class", "code", "late", "posting",
    "posted_from", "amount", "entry_ref", "action_id",
)  # fmt: skip
COUNTED_LOADS = frozenset({"ok", "proof"})
FINAL_SETTLEMENTS = ("ready", "done")
CLEARING_ACTOR = "clearing"


@dataclass(frozen=True, slots=True)
class RunRef:
    """The run a task belongs to: its id, clearing day and number within the day."""

    run_id: int
    day: date
    run_no: int


class _Todo(NamedTuple):
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
    ref: str
    ingest_id: int
    batch_term_id: str
    batch_device_kind: str
    batch_created_epoch: int
    operator_id: str
    prev_term_seq: int | None
    last_verdict: int


@dataclass
class ClearResult:
    """What clearing one operator's day decided and posted."""

    operator_id: str
    decided: Counter[str] = field(default_factory=Counter)
    posted: int = 0
    """Fen settled into the clearing account by this task."""
    gross: int = 0
    fee: int = 0
    payable: int = 0


def db_timestamp(session: Session, moment: datetime) -> Any:
    """A UTC timestamp as the dialect stores it (SQLite: the text SQLAlchemy writes for DateTime)."""
    if bulk.is_postgres(session):
        return moment
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _todo(session: Session, run: RunRef, shard: Shard, policy: Policy) -> list[_Todo]:
    """The shard's records to decide: new ones of the batches the run claimed (dated up to the day, or impossible:
    after their batch was made) and pending ones, of every operator."""
    columns = (
        "r.id, r.role, r.txn_type, r.card_no, r.card_seq, r.amount, r.balance_before, r.term_id, r.term_seq, "
        "r.device_seq, r.txn_date, r.txn_epoch, r.status, r.tac_check, r.ref, r.ingest_id, b.term_id, "
        "b.device_kind, b.created_epoch, b.operator_id, r.prev_term_seq"
    )
    rows = bulk.fetch_rows(
        session,
        f"SELECT {columns}, 0 FROM clearing_record r JOIN batch_ingest b ON b.id = r.ingest_id "
        "WHERE b.claim_run_id IS NOT NULL AND b.claim_run_id <= :run "
        "AND b.open_records > 0 AND r.role IN ('primary', 'conflict') AND r.card_no BETWEEN :low AND :last "
        "AND (r.txn_date <= :day OR r.txn_epoch > b.created_epoch + :skew) "
        "AND NOT EXISTS (SELECT 1 FROM clearing_verdict v WHERE v.record_id = r.id) "
        f"UNION ALL SELECT {columns}, v.verdict_no FROM clearing_verdict v "
        "JOIN clearing_record r ON r.id = v.record_id JOIN batch_ingest b ON b.id = r.ingest_id "
        "WHERE v.class = 'pending' AND r.role = 'primary' AND r.card_no BETWEEN :low AND :last "
        "AND NOT EXISTS (SELECT 1 FROM clearing_verdict w WHERE w.record_id = v.record_id "
        "AND w.verdict_no > v.verdict_no)",
        {
            "run": run.run_id,
            "day": run.day.strftime("%Y%m%d"),
            "skew": policy.future_skew,
            "low": shard.low,
            "last": shard.last,
        },
    )
    return sorted((_Todo(*row) for row in rows), key=lambda todo: todo.record_id)


_TMP_CARDS = table("clearing_tmp_cards", column("card_no", String()))


def _temp_cards(session: Session, since_by_card: dict[str, int], until_by_card: dict[str, int | None]) -> None:
    bulk.temp_table(
        session,
        "clearing_tmp_cards",
        "card_no text, since bigint, until bigint, anchor bigint, open_balance bigint, open_online bigint, "
        "open_offline bigint",
    )
    bulk.insert_rows(
        session,
        "clearing_tmp_cards",
        ("card_no", "since", "until"),
        [(card_no, since, until_by_card[card_no]) for card_no, since in sorted(since_by_card.items())],
    )
    session.execute(  # each card's opening state, by index probe (a join with all cards plans badly)
        text(
            "UPDATE clearing_tmp_cards SET (open_balance, open_online, open_offline) = (SELECT k.opening_balance, "
            "k.opening_online_seq, k.opening_offline_seq FROM cards k WHERE k.card_no = clearing_tmp_cards.card_no)"
        )
    )
    bulk.analyze(session, "clearing_tmp_cards")


def _devices(session: Session) -> dict[str, DeviceFact]:
    facts: dict[str, DeviceFact] = {}
    for term_id, kind, status, updated_at in session.execute(
        select(Device.term_id, Device.kind, Device.status, Device.updated_at)
    ):
        retired = int(updated_at.timestamp()) if status == "retired" else None
        facts[term_id] = DeviceFact(term_id, kind, retired)
    return facts


def _cards(session: Session) -> dict[str, CardFact]:
    rows = session.execute(
        select(
            Card.card_no, Card.hotlisted_at, Card.opening_balance, Card.opening_online_seq, Card.opening_offline_seq
        ).where(Card.card_no.in_(select(_TMP_CARDS.c.card_no)))
    )
    facts: dict[str, CardFact] = {}
    for card_no, hotlisted, balance, online_seq, offline_seq in rows:
        opening = NEW_CARD if not (balance or online_seq or offline_seq) else Opening(balance, online_seq, offline_seq)
        facts[card_no] = CardFact(int(hotlisted.timestamp()) if hotlisted is not None else None, opening)
    return facts


CHAIN_COLUMNS = (
    "r.txn_epoch, r.family, r.card_seq, r.id, r.amount, r.balance_before, "
    "CASE WHEN r.status = 'unconfirmed' THEN 1 ELSE 0 END, r.card_no"
)
USABLE = "r.role = 'primary' AND r.tac_check IN ('ok', 'none')"
"""The records a card's chain is made of: what the card itself wrote (TAC verified, or unconfirmed)."""


def _anchor_cards(session: Session) -> None:
    """For each touched card, the last usable record before its window (``clearing_tmp_cards.anchor``)."""
    session.execute(
        text(
            "UPDATE clearing_tmp_cards SET anchor = (SELECT r.id FROM clearing_record r "
            "WHERE r.card_no = clearing_tmp_cards.card_no AND r.txn_epoch < clearing_tmp_cards.since "
            f"AND {USABLE} ORDER BY r.txn_epoch DESC, r.family DESC, r.card_seq DESC LIMIT 1)"
        )
    )


def _load_context(session: Session) -> None:
    """The touched cards' usable records from their windows, and each one's last before it, into
    ``clearing_tmp_context`` (analysed: the window query over it plans well at any size)."""
    bulk.temp_table(
        session,
        "clearing_tmp_context",
        "txn_epoch bigint, family smallint, card_seq integer, id bigint, amount bigint, balance_before bigint, "
        "status text, card_no text",
    )
    columns = "r.txn_epoch, r.family, r.card_seq, r.id, r.amount, r.balance_before, r.status, r.card_no"
    session.execute(
        text(
            f"INSERT INTO clearing_tmp_context SELECT {columns} FROM clearing_record r JOIN clearing_tmp_cards t "
            "ON r.card_no = t.card_no AND r.txn_epoch >= t.since AND (t.until IS NULL OR r.txn_epoch <= t.until) "
            f"WHERE {USABLE}"
        )
    )
    session.execute(
        text(
            f"INSERT INTO clearing_tmp_context SELECT {columns} FROM clearing_tmp_cards t "
            "JOIN clearing_record r ON r.id = t.anchor"
        )
    )
    bulk.analyze(session, "clearing_tmp_context")


_OPENING_SEQ = "coalesce(CASE WHEN w.family = 0 THEN t.open_online ELSE t.open_offline END, 0)"


def _plain_chains(session: Session, todos: Sequence[_Todo]) -> set[int]:
    """The records whose chain is plainly whole, checked set-wise by the database (window functions): the card's
    previous transaction in time is a confirmed one whose balance after is this one's balance before (or this is the
    card's first transaction, from its opening balance), the counter's previous value is there (or this is the
    family's first value, the card's opening counter), and no unconfirmed record of the card is in view. The others
    are checked one card at a time by :class:`clearing.rules.CardChain`."""
    bulk.temp_table(session, "clearing_tmp_todo", "id bigint")
    bulk.insert_rows(
        session, "clearing_tmp_todo", ("id",), [(t.record_id,) for t in todos if t.status != "unconfirmed"]
    )
    bulk.analyze(session, "clearing_tmp_todo")
    rows = bulk.fetch_rows(
        session,
        "SELECT w.id FROM (SELECT c.id, c.card_no, c.family, c.card_seq, c.balance_before, "
        "LAG(CASE WHEN c.family = 0 THEN c.balance_before + c.amount ELSE c.balance_before - c.amount END) "
        "OVER (PARTITION BY c.card_no ORDER BY c.txn_epoch, c.family, c.card_seq, c.id) AS previous_after, "
        "LAG(c.status) OVER (PARTITION BY c.card_no ORDER BY c.txn_epoch, c.family, c.card_seq, c.id) "
        "AS previous_status, "
        "LAG(c.card_seq) OVER (PARTITION BY c.card_no, c.family ORDER BY c.card_seq, c.id) AS previous_seq, "
        "SUM(CASE WHEN c.status = 'unconfirmed' THEN 1 ELSE 0 END) OVER (PARTITION BY c.card_no) AS tentative "
        "FROM clearing_tmp_context c) w JOIN clearing_tmp_todo d ON d.id = w.id "
        "JOIN clearing_tmp_cards t ON t.card_no = w.card_no "
        "WHERE w.tentative = 0 AND ("
        "(w.previous_status IS NOT NULL AND w.previous_after = w.balance_before "
        f"AND (w.previous_seq = w.card_seq - 1 OR (w.previous_seq IS NULL AND w.card_seq = {_OPENING_SEQ}))) "
        f"OR (w.previous_status IS NULL AND t.anchor IS NULL AND w.card_seq = {_OPENING_SEQ} "
        "AND w.balance_before = coalesce(t.open_balance, 0)))",
    )
    bulk.drop_temp_table(session, "clearing_tmp_todo")
    return {int(row[0]) for row in rows}


def _chains(
    session: Session, todos: Sequence[_Todo], cards: set[str], facts: dict[str, CardFact]
) -> dict[str, CardChain]:
    """The chains of ``cards`` (records from their window, the last one before it, counter predecessors)."""
    if not cards:
        return {}
    rows = _context_of(session, cards)
    anchors = bulk.fetch_rows(session, "SELECT card_no FROM clearing_tmp_cards WHERE anchor IS NOT NULL")
    anchored = {str(row[0]) for row in anchors if row[0] in cards}
    records: dict[str, list[ChainRecord]] = defaultdict(list)
    keys: set[tuple[str, int, int]] = set()
    make = ChainRecord._make
    for row in rows:
        card_no = row[7]
        records[card_no].append(make(row[:7]))
        keys.add((card_no, row[1], row[2]))
    missing = {
        (todo.card_no, 0 if todo.txn_type == "02" else 1, todo.card_seq - 1)
        for todo in todos
        if todo.card_seq > 0 and todo.card_no in cards
    } - keys
    for row in _rows_by_key(session, CHAIN_COLUMNS, sorted(missing)):
        records[row[7]].append(make(row[:7]))
    return {
        card_no: CardChain(
            records.get(card_no, []),
            complete_history=card_no not in anchored,
            opening=_opening(facts.get(card_no)),
        )
        for card_no in cards
    }


def _opening(fact: CardFact | None) -> Opening:
    return fact.opening if fact is not None and fact.opening is not None else NEW_CARD


def _context_of(session: Session, cards: set[str]) -> list[tuple[Any, ...]]:
    bulk.temp_table(session, "clearing_tmp_some", "card_no text")
    bulk.insert_rows(session, "clearing_tmp_some", ("card_no",), [(c,) for c in sorted(cards)])
    rows = bulk.fetch_rows(
        session,
        "SELECT c.txn_epoch, c.family, c.card_seq, c.id, c.amount, c.balance_before, "
        "CASE WHEN c.status = 'unconfirmed' THEN 1 ELSE 0 END, c.card_no FROM clearing_tmp_context c "
        "JOIN clearing_tmp_some s ON s.card_no = c.card_no",
    )
    bulk.drop_temp_table(session, "clearing_tmp_some")
    return rows


def _rows_by_key(session: Session, columns: str, keys: Sequence[tuple[str, int, int]]) -> list[tuple[Any, ...]]:
    if not keys:
        return []
    bulk.temp_table(session, "clearing_tmp_keys", "card_no text, family smallint, seq integer")
    bulk.insert_rows(session, "clearing_tmp_keys", ("card_no", "family", "seq"), keys)
    rows = bulk.fetch_rows(
        session,
        f"SELECT {columns} FROM clearing_record r JOIN clearing_tmp_keys k ON r.card_no = k.card_no "
        "AND r.family = k.family AND r.card_seq = k.seq WHERE r.role = 'primary' AND r.tac_check IN ('ok', 'none')",
    )
    bulk.drop_temp_table(session, "clearing_tmp_keys")
    return rows


def _previous_term_seqs(session: Session, todos: Sequence[_Todo]) -> dict[tuple[str, int], int]:
    """``(term_id, device_seq − 1) → term_seq`` for the records being decided (the PSAM's sequence).

    Ingest noted it when the batch held that record (``prev_term_seq``: a batch is a run of the device's records).
    For the others (each batch's first), term_seq and device_seq grow together on a terminal, so the record at
    ``device_seq − 1`` is normally the terminal's record just below in term_seq: that one is looked up through the
    terminal key, one index probe per record. Where it is not (a gap, or records out of order), the terminal's
    records around are read (:func:`_term_seqs_in_ranges`).
    """
    found: dict[tuple[str, int], int] = {}
    for todo in todos:
        if todo.prev_term_seq is not None:
            found[(todo.term_id, todo.device_seq - 1)] = todo.prev_term_seq
    wanted = sorted(
        {
            (todo.term_id, todo.term_seq, todo.device_seq)
            for todo in todos
            if todo.device_seq > 1 and (todo.term_id, todo.device_seq - 1) not in found
        }
    )
    if not wanted:
        return found
    bulk.temp_table(session, "clearing_tmp_dev", "term_id text, term_seq bigint, device_seq bigint")
    bulk.insert_rows(session, "clearing_tmp_dev", ("term_id", "term_seq", "device_seq"), wanted)
    bulk.analyze(session, "clearing_tmp_dev")
    rows = bulk.fetch_rows(
        session,
        "SELECT t.term_id, t.term_seq, t.device_seq, p.device_seq, p.term_seq FROM (SELECT d.term_id, d.term_seq, "
        "d.device_seq, (SELECT r.id FROM clearing_record r WHERE r.term_id = d.term_id AND r.term_seq < d.term_seq "
        "AND r.role = 'primary' ORDER BY r.term_seq DESC LIMIT 1) AS below FROM clearing_tmp_dev d) t "
        "LEFT JOIN clearing_record p ON p.id = t.below",
    )
    bulk.drop_temp_table(session, "clearing_tmp_dev")
    unsure: list[_Todo] = []
    by_key = {(todo.term_id, todo.term_seq, todo.device_seq): todo for todo in todos}
    for term_id, term_seq, device_seq, below_device_seq, below_term_seq in rows:
        if below_device_seq is not None and int(below_device_seq) == int(device_seq) - 1:
            found[(str(term_id), int(device_seq) - 1)] = int(below_term_seq)
        else:
            unsure.append(by_key[(str(term_id), int(term_seq), int(device_seq))])
    if unsure:
        for key, value in _term_seqs_in_ranges(session, unsure).items():
            found.setdefault(key, value)
    return found


def _term_seqs_in_ranges(session: Session, todos: Sequence[_Todo]) -> dict[tuple[str, int], int]:
    """``(term_id, device_seq) → term_seq`` around ``todos``: each terminal's records from the one before its
    lowest term_seq among them up to its highest."""
    ranges: dict[str, tuple[int, int]] = {}
    for todo in todos:
        low, high = ranges.get(todo.term_id, (todo.term_seq, todo.term_seq))
        ranges[todo.term_id] = (min(low, todo.term_seq), max(high, todo.term_seq))
    if not ranges:
        return {}
    bulk.temp_table(session, "clearing_tmp_terms", "term_id text, low bigint, high bigint")
    bulk.insert_rows(
        session, "clearing_tmp_terms", ("term_id", "low", "high"), [(t, lo, hi) for t, (lo, hi) in ranges.items()]
    )
    session.execute(
        text(
            "UPDATE clearing_tmp_terms SET low = coalesce((SELECT max(r.term_seq) FROM clearing_record r "
            "WHERE r.term_id = clearing_tmp_terms.term_id AND r.role = 'primary' "
            "AND r.term_seq < clearing_tmp_terms.low), low)"
        )
    )
    rows = bulk.fetch_rows(
        session,
        "SELECT r.term_id, r.device_seq, r.term_seq FROM clearing_record r JOIN clearing_tmp_terms t "
        "ON r.term_id = t.term_id AND r.term_seq BETWEEN t.low AND t.high WHERE r.role = 'primary'",
    )
    bulk.drop_temp_table(session, "clearing_tmp_terms")
    found: dict[tuple[str, int], int] = {}
    for term_id, device_seq, term_seq in rows:
        found.setdefault((str(term_id), int(device_seq)), int(term_seq))
    return found


def _load_matches(session: Session, todos: Sequence[_Todo]) -> dict[int, LoadMatch]:
    loads = [todo for todo in todos if todo.txn_type == "02"]
    if not loads:
        return {}
    wanted = sorted({(todo.term_id, todo.term_seq) for todo in loads})
    bulk.temp_table(session, "clearing_tmp_loads", "term_id text, term_seq bigint")
    bulk.insert_rows(session, "clearing_tmp_loads", ("term_id", "term_seq"), wanted)
    keys = table("clearing_tmp_loads", column("term_id", String()), column("term_seq", BigInteger()))
    found: dict[tuple[str, int], tuple[str, int, int, str]] = {}
    for term_id, term_seq, card_no, online_seq, amount, status in session.execute(
        select(Load.term_id, Load.term_seq, Load.card_no, Load.online_seq, Load.amount, Load.status).join(
            keys, (keys.c.term_id == Load.term_id) & (keys.c.term_seq == Load.term_seq)
        )
    ):
        found[(term_id, term_seq)] = (card_no, online_seq, amount, str(status))
    bulk.drop_temp_table(session, "clearing_tmp_loads")
    matches: dict[int, LoadMatch] = {}
    for todo in loads:
        load = found.get((todo.term_id, todo.term_seq))
        if load is None or load[:3] != (todo.card_no, todo.card_seq, todo.amount):
            matches[todo.record_id] = LoadMatch.MISSING
        else:
            matches[todo.record_id] = LoadMatch.COUNTED if load[3] in COUNTED_LOADS else LoadMatch.NOT_COUNTED
    return matches


def _bill_matches(session: Session, todos: Sequence[_Todo]) -> set[int]:
    """Utility payments matched to their bill: paid by this very record, for this amount, to its operator."""
    refs = sorted({todo.ref for todo in todos if todo.ref and todo.txn_type in PURCHASE_TYPES})
    paid: dict[str, tuple[str | None, int | None, str | None, int | None, str]] = {}
    for start in range(0, len(refs), 1000):
        for bill_no, term_id, term_seq, card_no, amount, bill_operator in session.execute(
            select(
                Bill.bill_no,
                Bill.payment_term_id,
                Bill.payment_term_seq,
                Bill.payment_card_no,
                Bill.amount_paid,
                Bill.operator_id,
            ).where(Bill.bill_no.in_(refs[start : start + 1000]), Bill.status == "paid")
        ):
            paid[bill_no] = (term_id, term_seq, card_no, amount, bill_operator)
    return {
        todo.record_id
        for todo in todos
        if paid.get(todo.ref) == (todo.term_id, todo.term_seq, todo.card_no, todo.amount, todo.operator_id)
    }


def decide(session: Session, run: RunRef, todos: Sequence[_Todo], policy: Policy) -> dict[int, Decision]:
    """Classify the records (spec §5) with the facts looked up set-wise."""
    if not todos:
        return {}
    utilities = set(session.scalars(select(Operator.operator_id).where(Operator.kind == "utility")))
    since: dict[str, int] = {}
    until: dict[str, int | None] = {}
    for todo in todos:
        card_no = todo.card_no
        since[card_no] = min(since.get(card_no, todo.txn_epoch), todo.txn_epoch - LOOKBACK)
        if todo.status == "unconfirmed" or (card_no in until and until[card_no] is None):
            until[card_no] = None  # what confirms it comes later: everything after it
        else:
            latest = until.get(card_no)
            until[card_no] = max(latest or 0, todo.txn_epoch + policy.future_skew)
    _temp_cards(session, since, until)
    devices = _devices(session)
    cards = _cards(session)
    _anchor_cards(session)
    _load_context(session)
    plain = _plain_chains(session, todos)
    chains = _chains(session, todos, {todo.card_no for todo in todos if todo.record_id not in plain}, cards)
    whole = CardChain([])
    previous = _previous_term_seqs(session, todos)
    loads = _load_matches(session, todos)
    bills = _bill_matches(session, [todo for todo in todos if todo.operator_id in utilities]) if utilities else set()
    decisions: dict[int, Decision] = {}
    device_of, card_of, load_of, chain_of = devices.get, cards.get, loads.get, chains.get
    for todo in todos:
        record_id = todo.record_id
        candidate = Candidate(
            *todo[:14],  # record_id … tac_check: the same fields in the same order
            todo.batch_term_id,
            todo.batch_device_kind,
            todo.batch_created_epoch,
            todo.operator_id in utilities,
            device_of(todo.term_id),
            card_of(todo.card_no),
            previous.get((todo.term_id, todo.device_seq - 1)),
            load_of(record_id),
            record_id in bills,
            record_id in plain,
        )
        decisions[record_id] = classify(candidate, chain_of(todo.card_no, whole), run.day, policy)
    return decisions


class BalanceMovedOn(Exception):
    """A card's balance became final (issuance settled it) while its purchases were being posted: start over."""


def _final_balances(session: Session, card_nos: Iterable[str], *, lock: bool) -> set[str]:
    """Cards among ``card_nos`` whose balance issuance has settled for good (ready or done); with ``lock``, the
    cards are locked first (in card_no order: no deadlocks) so that it stays so until commit."""
    wanted = sorted(set(card_nos))
    if not wanted:
        return set()
    bulk.temp_table(session, "clearing_tmp_post", "card_no text PRIMARY KEY")
    bulk.insert_rows(session, "clearing_tmp_post", ("card_no",), [(c,) for c in wanted])
    if lock and bulk.is_postgres(session):
        session.execute(
            text(
                "SELECT c.id FROM cards c JOIN clearing_tmp_post p ON p.card_no = c.card_no "
                "ORDER BY c.card_no FOR UPDATE OF c"
            )
        ).all()
    tmp = table("clearing_tmp_post", column("card_no", String()))
    final = session.scalars(
        select(Card.card_no)
        .join(BalanceSettlement, BalanceSettlement.from_card_id == Card.id)
        .where(Card.card_no.in_(select(tmp.c.card_no)), BalanceSettlement.status.in_(FINAL_SETTLEMENTS))
    ).all()
    bulk.drop_temp_table(session, "clearing_tmp_post")
    return set(final)


def lock_cards_and_find_final(session: Session, card_nos: Iterable[str]) -> set[str]:
    """Lock the cards whose shadows will move (until commit); those whose balance issuance has settled for good."""
    return _final_balances(session, card_nos, lock=True)


def lower_shadows(session: Session, day: date, operator_id: str, reference: str, rows: Sequence[_Todo]) -> None:
    """The set-wise twin of ``issuance.services.record_cleared_purchase``: settled purchases lower each card's
    shadow balance and raise its offline counter, with one purse movement per card (``card:<no>`` →
    ``cleared_purchases``). The caller holds the cards' locks and has kept final balances out."""
    per_card: dict[str, list[int]] = {}
    for todo in rows:
        amount, next_seq, epoch = per_card.get(todo.card_no, [0, 0, 0])
        per_card[todo.card_no] = [
            amount + todo.amount,
            max(next_seq, todo.card_seq + 1),
            max(epoch, todo.txn_epoch),
        ]
    if not per_card:
        return
    at_type = "timestamptz" if bulk.is_postgres(session) else "text"
    bulk.temp_table(
        session, "clearing_tmp_shadow", f"card_no text PRIMARY KEY, amount bigint, next_seq integer, at {at_type}"
    )
    bulk.insert_rows(
        session,
        "clearing_tmp_shadow",
        ("card_no", "amount", "next_seq", "at"),
        [
            (card_no, amount, next_seq, db_timestamp(session, datetime.fromtimestamp(epoch, UTC)))
            for card_no, (amount, next_seq, epoch) in sorted(per_card.items())
        ],
    )
    if bulk.is_postgres(session):
        session.execute(
            text(
                "UPDATE cards c SET shadow_balance = c.shadow_balance - d.amount, "
                "shadow_offline_seq = GREATEST(c.shadow_offline_seq, d.next_seq), "
                "shadow_updated_at = GREATEST(coalesce(c.shadow_updated_at, d.at), d.at), "
                "row_version = c.row_version + 1 FROM clearing_tmp_shadow d WHERE c.card_no = d.card_no"
            )
        )
    else:
        session.execute(
            text(
                "UPDATE cards SET shadow_balance = shadow_balance - d.amount, "
                "shadow_offline_seq = max(shadow_offline_seq, d.next_seq), "
                "shadow_updated_at = CASE WHEN shadow_updated_at IS NULL OR shadow_updated_at < d.at "
                "THEN d.at ELSE shadow_updated_at END, row_version = row_version + 1 "
                "FROM clearing_tmp_shadow d WHERE cards.card_no = d.card_no"
            )
        )
    session.execute(
        text(
            "INSERT INTO purse_movements (kind, from_account, to_account, amount, reference, at, actor_id) "
            "SELECT 'purchase', 'card:' || d.card_no, 'cleared_purchases', d.amount, :reference, d.at, :actor "
            "FROM clearing_tmp_shadow d WHERE d.amount > 0 ORDER BY d.card_no"
        ),
        {"reference": reference[:80], "actor": CLEARING_ACTOR},
    )
    bulk.drop_temp_table(session, "clearing_tmp_shadow")


def fee_schedule(session: Session, operator_id: str, day: date) -> FeeSchedule | None:
    """The operator's fee schedule in force on the clearing day (the registry's, effective dates)."""
    view = fee_schedule_on(session, operator_id, day)
    return None if view is None else FeeSchedule(view.percent, view.per_txn)


_CLEARED_TOTALS = (
    "SELECT operator_id, coalesce(sum(CASE WHEN posting = 'reverse' THEN -1 ELSE 1 END), 0), "
    "coalesce(sum(CASE WHEN amount = 0 THEN 0 WHEN posting = 'reverse' THEN -1 ELSE 1 END), 0), "
    "coalesce(sum(amount), 0) FROM clearing_verdict WHERE clearing_day = :day AND posting IS NOT NULL"
)


def cleared_totals(session: Session, day: date) -> dict[str, tuple[int, int, int]]:
    """Per operator, what its verdicts posted on ``day``: (records, paid records, gross fen), reversals counted
    back; one pass over the day's verdicts."""
    rows = bulk.fetch_rows(session, _CLEARED_TOTALS + " GROUP BY operator_id", {"day": day})
    return {str(op): (int(count), int(paid), int(gross)) for op, count, paid, gross in rows}


def settle_operator_day(
    session: Session, day: date, operator_id: str, entry_ref: str, totals: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """Settle what the operator's clearing account holds for ``day``: into its payable, less the day's fee
    (rounded half up once over the whole day, cli.md); keep the statement. ``totals``: the operator's
    :func:`cleared_totals` when the caller has them. Returns (gross, fee, payable)."""
    if totals is None:
        totals = cleared_totals_of(session, day, operator_id)
    count, paid, gross = totals
    fee = day_fee(fee_schedule(session, operator_id, day), gross, paid)
    before = session.execute(
        text("SELECT amount, fee FROM clearing_statement WHERE clearing_day = :day AND operator_id = :op"),
        {"day": day, "op": operator_id},
    ).first()
    settled_gross, settled_fee = (int(before[0]), int(before[1])) if before is not None else (0, 0)
    settlement = entry(
        entry_ref,
        day,
        "settle",
        operator_id,
        f"settlement of {operator_id} for {day.isoformat()}",
        settlement_movements(operator_id, gross - settled_gross, fee - settled_fee),
    )
    if settlement is not None:
        ledger.post(session, settlement)
    if before is None and count == 0 and gross == 0:
        return 0, 0, 0  # nothing cleared for the operator on this day: no statement
    values = {
        "day": day,
        "op": operator_id,
        "n": count,
        "paid": paid,
        "amount": gross,
        "fee": fee,
        "payable": gross - fee,
    }
    if before is None:
        session.execute(
            text(
                "INSERT INTO clearing_statement (clearing_day, operator_id, record_count, paid_count, amount, fee, "
                "payable) VALUES (:day, :op, :n, :paid, :amount, :fee, :payable)"
            ),
            values,
        )
    else:
        session.execute(
            text(
                "UPDATE clearing_statement SET record_count = :n, paid_count = :paid, amount = :amount, fee = :fee, "
                "payable = :payable WHERE clearing_day = :day AND operator_id = :op"
            ),
            values,
        )
    return gross, fee, gross - fee


def clear_shard(session: Session, run: RunRef, shard: Shard, policy: Policy = DEFAULT_POLICY) -> ClearResult:
    """Decide and post one shard's records (the cards ``shard.low`` ≤ card_no ≤ ``shard.last``, every operator) for
    the run's clearing day (does not commit). Settlement is the close's (:func:`settle_day`)."""
    result = ClearResult(shard.key)
    todos = _todo(session, run, shard, policy)
    decisions = decide(session, run, todos, policy)
    day_text = run.day.isoformat()
    operators = sorted({todo.operator_id for todo in todos})
    ledger.ensure_accounts(session, operators)
    refs = {op: f"{day_text}/clear/{op}/r{run.run_no}/s{shard.index}" for op in operators}
    posted = [
        todo
        for todo in todos
        if todo.txn_type in PURCHASE_TYPES and decisions[todo.record_id].klass in (Klass.SETTLED, Klass.SUSPICIOUS)
    ]
    final = _final_balances(session, (todo.card_no for todo in posted), lock=False)
    verdicts: list[tuple[Any, ...]] = []
    opened: Counter[int] = Counter()
    on_float: list[_Todo] = []
    amounts: dict[str, dict[str, int]] = {op: {FLOAT: 0, SUSPENSE: 0} for op in operators}
    posted_ids = {todo.record_id for todo in posted}
    for todo in todos:
        decision = decisions[todo.record_id]
        if todo.last_verdict and decision.klass is Klass.PENDING:
            continue  # still pending: nothing new to say
        klass, code, posting, amount = decision.klass, decision.code, None, 0
        if todo.record_id in posted_ids:
            if todo.card_no in final:
                klass, code, posting = Klass.SUSPICIOUS, Code.BALANCE_FINAL, SUSPENSE
            else:
                posting = FLOAT
                on_float.append(todo)
            amount = todo.amount
            amounts[todo.operator_id][posting] += amount
        verdicts.append(
            (todo.record_id, todo.last_verdict + 1, run.day, run.run_id, todo.operator_id, str(klass), str(code),
             decision.late, posting, None, amount, refs[todo.operator_id] if posting else None, None)
        )  # fmt: skip
        if not todo.last_verdict:
            opened[todo.ingest_id] += 1
        result.decided[str(klass)] += 1
    if verdicts:
        bulk.insert_rows(session, "clearing_verdict", VERDICT_COLUMNS, verdicts)
    for ingest_id, count in sorted(opened.items()):
        session.execute(
            text("UPDATE batch_ingest SET open_records = open_records - :n WHERE id = :i"), {"n": count, "i": ingest_id}
        )
    for operator_id in operators:
        on = amounts[operator_id]
        gross = on[FLOAT] + on[SUSPENSE]
        cleared = entry(
            refs[operator_id],
            run.day,
            "clear",
            operator_id,
            f"purchases cleared for {operator_id} on {day_text}",
            {FLOAT: on[FLOAT], SUSPENSE: on[SUSPENSE], clearing_account(operator_id): -gross},
        )
        if cleared is not None:
            ledger.post(session, cleared)
        result.posted += gross
    if lock_cards_and_find_final(session, (todo.card_no for todo in on_float)):  # locks held until commit
        raise BalanceMovedOn(f"a card's balance was settled while clearing shard {shard.key}")
    lower_shadows(session, run.day, "", f"clearing:{day_text}/clear/r{run.run_no}/s{shard.index}", on_float)
    log.info("cleared shard %s for %s (run %d): %s", shard.key, day_text, run.run_no, dict(result.decided))
    return result


def cleared_totals_of(session: Session, day: date, operator_id: str) -> tuple[int, int, int]:
    """:func:`cleared_totals` of one operator."""
    rows = bulk.fetch_rows(session, _CLEARED_TOTALS + " AND operator_id = :op", {"day": day, "op": operator_id})
    count, paid, gross = rows[0] if rows else (0, 0, 0)
    return int(count), int(paid), int(gross)


def settle_day(session: Session, run: RunRef) -> dict[str, tuple[int, int, int]]:
    """Settle every operator's cleared amounts of the run's day (:func:`settle_operator_day`): (gross, fee,
    payable) by operator."""
    settled: dict[str, tuple[int, int, int]] = {}
    totals = cleared_totals(session, run.day)
    stated = bulk.fetch_rows(
        session, "SELECT operator_id FROM clearing_statement WHERE clearing_day = :day", {"day": run.day}
    )
    for operator_id in sorted(set(totals) | {str(row[0]) for row in stated}):
        entry_ref = f"{run.day.isoformat()}/settle/{operator_id}/r{run.run_no}"
        settled[operator_id] = settle_operator_day(
            session, run.day, operator_id, entry_ref, totals.get(operator_id, (0, 0, 0))
        )
    return settled


SHARD_RECORDS = 25_000
"""Records per clearing shard aimed at: small enough to spread a day over many workers and keep each task's
memory bounded, big enough that each task's fixed cost does not matter."""
MAX_SHARDS = 1024
CARD_NO_DIGITS = 16


@dataclass(frozen=True, slots=True)
class Shard:
    """The cards ``low`` ≤ card_no ≤ ``last`` (16-digit strings): one clear task of a run."""

    index: int
    count: int
    low: str
    last: str

    @property
    def key(self) -> str:
        """The task key: ``index/count:low-last``."""
        return f"{self.index}/{self.count}:{self.low}-{self.last}"

    @classmethod
    def parse(cls, key: str) -> Shard:
        """The shard of a task key (:attr:`key`)."""
        position, _, span = key.partition(":")
        index, _, count = position.partition("/")
        low, _, last = span.partition("-")
        return cls(int(index), int(count), low, last)


def plan_shards(session: Session, run: RunRef, shard_records: int = SHARD_RECORDS) -> list[Shard]:
    """The run's clear tasks: the card_no range of the records to decide, split into equal ranges of about
    ``shard_records`` records each (card numbers are 16 digits: their text order is their numeric order)."""
    todo = bulk.fetch_rows(
        session,
        "SELECT coalesce(sum(open_records), 0) FROM batch_ingest WHERE claim_run_id IS NOT NULL "
        "AND claim_run_id <= :run AND open_records > 0",
        {"run": run.run_id},
    )
    pending = bulk.fetch_rows(session, "SELECT count(*) FROM clearing_verdict WHERE class = 'pending'")
    total = int(todo[0][0]) + int(pending[0][0])
    if total == 0:
        return []
    low_high = bulk.fetch_rows(session, "SELECT min(card_no), max(card_no) FROM clearing_record")
    low, high = int(low_high[0][0]), int(low_high[0][1]) + 1
    count = max(1, min(MAX_SHARDS, -(-total // max(1, shard_records)), high - low))
    step = -(-(high - low) // count)
    bounds = [min(high, low + i * step) for i in range(count)] + [high]
    width = CARD_NO_DIGITS
    spans = [(bounds[i], bounds[i + 1] - 1) for i in range(count) if bounds[i] < bounds[i + 1]]
    return [
        Shard(index, len(spans), f"{start:0{width}d}", f"{last:0{width}d}") for index, (start, last) in enumerate(spans)
    ]
