"""Exceptions (issue #6): resolved by one person, approved by another, every action audited; settlements,
reversals, adjustments and write-offs move money in the current clearing day and reconcile."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from integration.clearing.citykit import DAY, City, open_city, tampered, unconfirmed
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from backoffice.errors import Conflict, Forbidden, InvalidInput
from clearing.exceptions import approve, open_exceptions, propose, refuse
from clearing.rules import Policy
from clearing.tables import ClearingAudit
from issuance import services

NEXT = DAY + timedelta(days=1)


def _record_id(city: City, card_no: str, card_seq: int) -> int:
    with city.uow() as uow:
        return int(
            uow.session.execute(
                text(
                    "SELECT id FROM clearing_record WHERE card_no = :c AND card_seq = :s AND family = 1 "
                    "AND role = 'primary'"
                ),
                {"c": card_no, "s": card_seq},
            ).scalar_one()
        )


def test_maker_checker_settles_reverses_adjusts_and_audits(city: City) -> None:
    forged_card, gap_card, pending_card, kept_card = (city.new_card(load=5_000) for _ in range(4))
    city.send_counter()
    city.clock.set(DAY, 8)
    bad = tampered(city.tap("BUSA-V01", forged_card, 200), tac="00000000")
    gap = [city.tap("BUSA-V01", gap_card, 300) for _ in range(2)]
    left = city.tap("BUSA-V01", pending_card, 400)
    kept = tampered(city.tap("BUSA-V01", kept_card, 100), tac="11111111")
    city.send("BUSA-V01", [bad, gap[1], unconfirmed(left), kept])
    assert city.run(DAY).stage == "done"
    with city.uow() as uow:
        assert {(i.klass, i.code) for i in open_exceptions(uow.session)} == {
            ("rejected", "bad_tac"),
            ("suspicious", "counter_gap"),
            ("pending", "unconfirmed"),
        }
    bad_id, gap_id = _record_id(city, forged_card, 0), _record_id(city, gap_card, 1)
    left_id, kept_id = _record_id(city, pending_card, 0), _record_id(city, kept_card, 0)

    with city.uow() as uow:
        accepted = propose(uow, record_id=bad_id, action="accept", note="operator showed the trip", maker="fin-1")
    with city.uow() as uow, pytest.raises(Conflict):
        propose(uow, record_id=bad_id, action="reject", note="second opinion", maker="fin-3")
    with city.uow() as uow, pytest.raises(Forbidden):
        approve(uow, action_id=accepted.action_id, checker="fin-1")  # the maker is not the checker
    with city.uow() as uow, pytest.raises(InvalidInput):
        propose(uow, record_id=left_id, action="adjust", amount=401, note="more than it was", maker="fin-1")
    with city.uow() as uow:
        reversal = propose(uow, record_id=gap_id, action="reject", note="record of a cloned card", maker="fin-1")
    with city.uow() as uow:
        adjusted = propose(uow, record_id=left_id, action="adjust", amount=350, note="agreed", maker="fin-2")
    with city.uow() as uow:
        refused = propose(uow, record_id=kept_id, action="accept", note="please", maker="fin-2")
    shadows_before = {card: city.shadow(card) for card in (forged_card, gap_card, pending_card)}

    with city.uow() as uow:
        assert approve(uow, action_id=accepted.action_id, checker="fin-2").applied_day == NEXT
    with city.uow() as uow:
        approve(uow, action_id=reversal.action_id, checker="fin-2")
    with city.uow() as uow:
        approve(uow, action_id=adjusted.action_id, checker="fin-1")
    with city.uow() as uow:
        assert refuse(uow, action_id=refused.action_id, checker="fin-1").status == "refused"
    with city.uow() as uow, pytest.raises(Conflict):
        approve(uow, action_id=refused.action_id, checker="fin-3")

    assert city.verdict_of(bad) == ("settled", "accepted")
    assert city.verdict_of(gap[1]) == ("rejected", "reversed")
    assert city.verdict_of(left) == ("settled", "adjusted")
    assert city.verdict_of(kept) == ("rejected", "bad_tac")
    assert city.shadow(forged_card) == shadows_before[forged_card] - 200
    assert city.shadow(gap_card) == shadows_before[gap_card] + 300
    assert city.shadow(pending_card) == shadows_before[pending_card] - 350
    with city.uow() as uow, pytest.raises(Conflict):  # reversed once: nothing left to resolve
        propose(uow, record_id=gap_id, action="reject", note="again", maker="fin-1")

    city.clock.set(NEXT, 8)
    state = city.run(NEXT)
    assert state.stage == "done", state.result
    statement = {o["operator_id"]: o for o in city.report(NEXT)["operators"]}["OP-BUS-A"]
    assert (statement["count"], statement["amount"]) == (1 + 1 - 1, 200 + 350 - 300)
    assert statement["fee"] == 4  # 1.5 % of 250 = 3.75, rounded half up once for the day
    assert city.float_balance() == sum(city.shadow(c) for c in (forged_card, gap_card, pending_card, kept_card))

    with city.uow() as uow:
        actions = [
            (a.actor_id, a.action) for a in uow.session.scalars(select(ClearingAudit).order_by(ClearingAudit.id))
        ]
    assert actions == [
        ("fin-1", "exception.propose"),
        ("fin-1", "exception.propose"),
        ("fin-2", "exception.propose"),
        ("fin-2", "exception.propose"),
        ("fin-2", "exception.approve"),
        ("fin-2", "exception.approve"),
        ("fin-1", "exception.approve"),
        ("fin-1", "exception.refuse"),
    ]
    with city.uow() as uow, pytest.raises(DBAPIError):  # the database keeps the four eyes too
        uow.session.execute(text("UPDATE clearing_exception_action SET decided_by = proposed_by"))
        uow.session.flush()


def test_a_purchase_after_the_balance_moved_on_goes_to_suspense_and_is_written_off(db_url: str, tmp_path: Path) -> None:
    city = open_city(db_url, tmp_path, Policy(settlement_grace_days=0))
    try:
        lost, other = city.new_card(load=5_000), city.new_card(load=5_000)
        city.send_counter()
        city.clock.set(DAY, 8)
        before_loss = city.tap("BUSB-V01", lost, 500)  # uploaded only after the balance moved to the new card
        city.clock.set(DAY, 9)
        city.report_loss(lost)
        with city.uow() as uow:
            replacement = services.replace_card(uow, city.clerk, old_card_no=lost, clock=city.clock)
        city.send("BUSA-V01", [city.tap("BUSA-V01", other, 100)])
        assert city.run(DAY).stage == "done"  # closes; the old card's 5,000 fen move to its settlement
        assert city.shadow(lost) == 0

        city.clock.set(NEXT, 8)
        city.send("BUSB-V01", [before_loss])
        assert city.run(NEXT).stage == "done"
        assert city.verdict_of(before_loss) == ("suspicious", "balance_final")
        document = city.report(NEXT)
        assert {c["name"]: c["actual"] for c in document["reconciliation"]["checks"]}["suspense_open_items"] == 500
        assert {o["operator_id"]: o["payable"] for o in document["operators"]}["OP-BUS-B"] == 500 - 4  # paid anyway

        record_id = _record_id(city, lost, 0)
        with city.uow() as uow:
            write_off = propose(uow, record_id=record_id, action="accept", note="issuer bears it", maker="fin-1")
        with city.uow() as uow:
            approve(uow, action_id=write_off.action_id, checker="fin-2")
        assert city.verdict_of(before_loss) == ("suspicious", "acknowledged")
        third = NEXT + timedelta(days=1)
        assert city.run(third).stage == "done"
        checks = {c["name"]: c for c in city.report(third)["reconciliation"]["checks"]}
        assert checks["suspense_open_items"]["actual"] == 0 and all(c["ok"] for c in checks.values())
        assert replacement.transfer.from_card_no == lost
    finally:
        city.dispose()
