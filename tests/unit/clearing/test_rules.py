"""The pure rules of clearing (spec §5, cli.md): classification codes, the card chain, fees, balanced entries,
and TAC checks against the known-answer vectors on both keystore paths."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from support import VECTORS, vector_keys

from cardos.crypto import Alg
from clearing.rules import (
    FEE_INCOME,
    FLOAT,
    Candidate,
    CardChain,
    CardFact,
    ChainRecord,
    DeviceFact,
    FeeSchedule,
    LoadMatch,
    Opening,
    Policy,
    UnbalancedEntry,
    classify,
    clearing_account,
    day_fee,
    entry,
    payable_account,
    settlement_movements,
)
from clearing.tacs import TacVerifier
from issuance.keys import InMemoryKeystore
from issuance.keystore import SoftwareKeystore

DAY = date(2025, 3, 3)
T0 = 1_740_960_000  # 2025-03-03 08:00 +08:00
POLICY = Policy()


def candidate(**changes: object) -> Candidate:
    """A genuine purchase (card seq 1 after a load at seq 0) with every fact in order, changed as asked."""
    base = Candidate(
        record_id=2, role="primary", txn_type="06", card_no="0310000000000001", card_seq=0, amount=200,
        balance_before=5_000, term_id="031000000101", term_seq=11, device_seq=2, txn_date="20250303",
        txn_epoch=T0, status="ok", tac_check="ok", batch_term_id="031000000101", batch_device_kind="validator",
        batch_created_epoch=T0 + 3_600, utility=False, device=DeviceFact("031000000101", "validator", None),
        card=CardFact(None), previous_term_seq=10,
    )  # fmt: skip
    return base._replace(**changes)


LOAD = ChainRecord(txn_epoch=T0 - 3_600, family=0, card_seq=0, record_id=1, amount=5_000, balance_before=0,
                   unconfirmed=False)  # fmt: skip


def chain(*records: ChainRecord, complete: bool = True) -> CardChain:
    return CardChain(list(records), complete_history=complete)


def decide(c: Candidate, *others: ChainRecord, complete: bool = True, day: date = DAY) -> tuple[str, str]:
    decision = classify(c, chain(LOAD, c.chain_record, *others, complete=complete), day, POLICY)
    return str(decision.klass), str(decision.code)


def test_a_genuine_purchase_settles() -> None:
    assert decide(candidate()) == ("settled", "ok")
    decision = classify(candidate(), chain(LOAD), date(2025, 3, 5), POLICY)
    assert decision.late and str(decision.klass) == "settled"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"role": "conflict"}, ("conflict", "key_conflict")),
        ({"tac_check": "bad"}, ("rejected", "bad_tac")),
        ({"tac_check": "nokey"}, ("rejected", "unknown_key")),
        ({"device": None}, ("rejected", "unknown_device")),
        ({"batch_term_id": "031000000102"}, ("rejected", "term_mismatch")),
        ({"device": DeviceFact("031000000101", "validator", T0 - 1)}, ("rejected", "retired_device")),
        ({"batch_device_kind": "counter"}, ("rejected", "device_kind")),
        ({"card": None}, ("rejected", "unknown_card")),
        ({"batch_created_epoch": T0 - 601}, ("rejected", "outside_window")),
        ({"batch_created_epoch": T0 + 31 * 86_400}, ("rejected", "outside_window")),
        ({"card": CardFact(T0 - 1)}, ("rejected", "hotlisted")),
        ({"card": CardFact(T0)}, ("settled", "ok")),  # at the hotlist time itself: still the holder's
        ({"balance_before": 4_999}, ("suspicious", "balance_chain")),
        ({"card_seq": 2}, ("suspicious", "counter_gap")),
        ({"previous_term_seq": None}, ("suspicious", "device_seq_gap")),
        ({"previous_term_seq": 11}, ("suspicious", "term_seq_order")),
        ({"device_seq": 1, "previous_term_seq": None}, ("settled", "ok")),  # a device's first record
        ({"utility": True}, ("suspicious", "bill_unmatched")),
        ({"utility": True, "bill_matched": True}, ("settled", "ok")),
    ],
)
def test_each_rule_has_its_code(changes: dict[str, object], expected: tuple[str, str]) -> None:
    assert decide(candidate(**changes)) == expected


def test_loads_are_matched_to_issuance() -> None:
    load = candidate(txn_type="02", card_seq=0, balance_before=0, amount=5_000, batch_device_kind="counter",
                     record_id=1, txn_epoch=T0 - 3_600)  # fmt: skip
    for match, expected in (
        (LoadMatch.COUNTED, ("settled", "ok")),
        (LoadMatch.NOT_COUNTED, ("suspicious", "load_not_counted")),
        (LoadMatch.MISSING, ("suspicious", "load_not_on_record")),
    ):
        got = classify(load._replace(load_match=match), chain(load.chain_record), DAY, POLICY)
        assert (str(got.klass), str(got.code)) == expected
    assert decide(candidate(txn_type="02", batch_device_kind="validator")) == ("rejected", "device_kind")


def test_unconfirmed_records_wait_for_the_cards_counter() -> None:
    pending = candidate(status="unconfirmed", tac_check="none")
    assert decide(pending) == ("pending", "unconfirmed")
    reused = ChainRecord(T0 + 60, 1, 0, 9, 200, 5_000, False)  # the next purchase used the same counter value
    assert decide(pending, reused) == ("rejected", "void_reused_seq")
    moved_on = ChainRecord(T0 + 60, 1, 1, 9, 100, 4_800, False)  # the counter moved: the debit happened
    assert decide(pending, moved_on) == ("settled", "confirmed_by_counter")
    assert decide(pending, day=date(2025, 3, 11)) == ("rejected", "void_timeout")
    assert decide(pending, day=date(2025, 3, 10)) == ("pending", "unconfirmed")
    # The purchase after an unconfirmed one: its balance follows the debit (the counter moved past it).
    after = candidate(record_id=9, card_seq=1, balance_before=4_800, txn_epoch=T0 + 60, term_seq=12, device_seq=3,
                      previous_term_seq=11)  # fmt: skip
    assert decide(after, pending.chain_record) == ("settled", "ok")
    assert decide(after._replace(balance_before=5_000), pending.chain_record) == (
        "suspicious",
        "balance_chain",
    )


def test_the_chain_tolerates_device_clocks_within_the_skew() -> None:
    # The validator's clock is 5 minutes behind the counter's: the purchase seems to come before the load.
    early = candidate(txn_epoch=LOAD.txn_epoch - 300)
    assert decide(early) == ("settled", "ok")
    assert decide(candidate(txn_epoch=LOAD.txn_epoch - 900)) == ("suspicious", "balance_chain")
    # A card whose earlier history is not in view: nothing to compare with.
    alone = classify(candidate(card_seq=5), chain(complete=False), DAY, POLICY)
    assert str(alone.code) == "counter_gap"
    lone = classify(candidate(card_seq=0), chain(complete=False), DAY, POLICY)
    assert str(lone.code) == "ok"


def test_a_day_fee_is_rounded_half_up_once() -> None:
    bus = FeeSchedule(Decimal("1.5"), 0)
    assert day_fee(bus, 900, 4) == 14  # 13.5
    assert day_fee(bus, 899, 4) == 13  # 13.485
    assert day_fee(bus, 100, 1) + day_fee(bus, 100, 1) == 4 and day_fee(bus, 200, 2) == 3  # per day, not per record
    assert day_fee(FeeSchedule(Decimal("0.5"), 10), 4_420, 2) == 22 + 20
    assert day_fee(bus, -900, -4) == -14  # a day of reversals gives the fee back, away from zero at .5
    assert day_fee(None, 1_000, 3) == 0


def test_entries_balance_or_do_not_exist() -> None:
    posted = entry("r", DAY, "settle", "OP", "", settlement_movements("OP", 1_000, 15))
    assert posted is not None
    assert [(line.account, line.debit, line.credit) for line in posted.lines] == [
        (clearing_account("OP"), 1_000, 0),
        (FEE_INCOME, 0, 15),
        (payable_account("OP"), 0, 985),
    ]
    assert posted.total == 1_000
    with pytest.raises(UnbalancedEntry):
        entry("r", DAY, "x", None, "", {FLOAT: 1, FEE_INCOME: -2})


@pytest.fixture(params=["software", "in-memory"])
def verifier(request: pytest.FixtureRequest, tmp_path: Path) -> TacVerifier:
    """A verifier over the vector keys: derived card keys (software keystore) or per-record verify calls."""
    keys = vector_keys(Alg.DES)
    if request.param == "software":
        store = SoftwareKeystore(tmp_path / "keys.json", raw_key=os.urandom(32))
        store.import_keys(keys)
        return TacVerifier(store)
    return TacVerifier(InMemoryKeystore([keys]))


def test_tacs_of_the_vectors_verify_and_any_change_fails(verifier: TacVerifier) -> None:
    suite = VECTORS["suites"]["00"]
    card_no = suite["card_no"]
    p = suite["purchase"]["inputs"]
    purchase = {
        "txn_type": "06", "card_no": card_no, "card_seq": int(p["offline_seq"], 16), "amount": int(p["amount"], 16),
        "balance_before": int(p["balance"], 16), "term_id": p["term_id"], "term_seq": int(p["term_seq"], 16),
        "txn_date": p["date"], "txn_time": p["time"], "tac": suite["purchase"]["tac"], "alg": "00", "key_ver": "01",
    }  # fmt: skip
    load_inputs = suite["load"]["inputs"]
    load = {
        "txn_type": "02", "card_no": card_no, "card_seq": int(load_inputs["online_seq"], 16),
        "amount": int(load_inputs["amount"], 16), "balance_before": int(load_inputs["old_balance"], 16),
        "term_id": load_inputs["term_id"], "term_seq": 1, "txn_date": load_inputs["date"],
        "txn_time": load_inputs["time"], "tac": suite["load"]["tac"], "alg": "00", "key_ver": "01",
    }  # fmt: skip
    assert verifier.check(**purchase) == "ok"  # type: ignore[arg-type]
    assert verifier.check(**load) == "ok"  # type: ignore[arg-type]
    for field, value in (("amount", 1), ("txn_time", "081501"), ("term_seq", 0x103), ("tac", "00000000"),
                         ("card_no", "0310000000000002"), ("txn_type", "09")):  # fmt: skip
        assert verifier.check(**{**purchase, field: value}) == "bad", field  # type: ignore[arg-type]
    assert verifier.check(**{**load, "balance_before": 999}) == "bad"  # type: ignore[arg-type]
    assert verifier.check(**{**purchase, "card_seq": 99, "balance_before": 1}) == "ok"  # type: ignore[arg-type]
    assert verifier.check(**{**purchase, "key_ver": "7F"}) == "nokey"  # type: ignore[arg-type]
    assert verifier.check(**{**purchase, "amount": 2**33}) == "bad"  # type: ignore[arg-type]


def test_the_adapters_record_fields_lead_the_candidate_in_the_same_order() -> None:
    """clearing.clear builds candidates positionally from its rows: the first 14 fields must line up."""
    from clearing.clear import _Todo

    assert _Todo._fields[:14] == Candidate._fields[:14]


def test_a_card_taken_over_from_an_earlier_system_starts_at_its_opening_state() -> None:
    """Clearing holds no record of the card before the day: its chain starts at the card's opening balance and
    counters (issuance's ``opening_*``), not at an empty purse with counters at 0."""
    opening = Opening(balance=3_000, online_seq=4, offline_seq=7)
    first = candidate(card_seq=7, balance_before=3_000, card=CardFact(None, opening))

    def outcome(c: Candidate) -> tuple[str, str]:
        taken_over = CardChain([c.chain_record], complete_history=True, opening=opening)
        decision = classify(c, taken_over, DAY, POLICY)
        return str(decision.klass), str(decision.code)

    assert outcome(first) == ("settled", "ok")
    assert outcome(first._replace(card_seq=8)) == ("suspicious", "counter_gap")  # a value skipped
    assert outcome(first._replace(card_seq=0)) == ("suspicious", "counter_gap")  # before the opening counter
    assert outcome(first._replace(balance_before=2_999)) == ("suspicious", "balance_chain")
    # a new card (no opening state) still starts from 0 and 0
    fresh = candidate(card_seq=0, balance_before=0)
    assert str(classify(fresh, CardChain([fresh.chain_record], complete_history=True), DAY, POLICY).klass) == "settled"
    assert str(classify(first, CardChain([first.chain_record], complete_history=True), DAY, POLICY).code) == (
        "counter_gap"
    )
