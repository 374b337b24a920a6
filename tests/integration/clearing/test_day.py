"""A clearing day of real records and every anomaly of issue #6, each caught and classified, none settled twice,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from integration.clearing.citykit import DAY, City, tampered, unconfirmed
from sqlalchemy import text
from support import issue_psam

from cardos.batch import RecordStatus
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.purse import PurseTerminal, RecordMeta

NEXT = DAY + timedelta(days=1)


def _posted_per_record(city: City) -> list[int]:
    with city.uow() as uow:
        rows = uow.session.execute(
            text(
                "SELECT record_id, count(*) FROM clearing_verdict WHERE posting IN ('float', 'suspense') "
                "GROUP BY record_id"
            )
        ).all()
    return [int(count) for _, count in rows]


def test_tampered_replayed_conflicting_gapped_hotlisted_records(city: City) -> None:
    cards = [city.new_card(load=5_000) for _ in range(10)]
    city.send_counter()
    city.clock.set(DAY, 8)
    genuine = city.tap("BUSA-V01", cards[0], 200)
    forged = {
        "amount": tampered(city.tap("BUSA-V01", cards[1], 200), amount=20),
        "card": tampered(city.tap("BUSA-V01", cards[2], 200), card_no=cards[9]),
        "time": tampered(city.tap("BUSA-V01", cards[3], 200), txn_time="075959"),
        "tac": tampered(city.tap("BUSA-V01", cards[4], 200), tac="00000000"),
    }
    chain = [city.tap("BUSA-V01", cards[5], 300) for _ in range(3)]  # the middle one is lost on the way
    balance = city.tap("BUSA-V01", cards[6], 100)
    balance_broken = tampered(balance, balance_before=balance.balance_before + 500)
    counter_broken = tampered(city.tap("BUSA-V01", cards[6], 100), card_seq=7)
    first_batch = [genuine, *forged.values(), chain[0], chain[2], balance_broken, counter_broken]
    assert city.send("BUSA-V01", first_batch, "V01-A") == "accepted"

    # The same batch again under another batch_id: a replay, every record a duplicate.
    assert city.send("BUSA-V01", first_batch, "V01-A-again") == "accepted"
    # A record with a held key and other content: a conflict (possible fraud).
    city.clock.set(DAY, 9)
    conflict = tampered(genuine, term_seq=genuine.term_seq + 100, device_seq=99)
    # The card is reported lost at 09:00; the validator, not yet told, takes it at 10:00.
    city.clock.set(DAY, 8, 30)
    before_loss = city.tap("BUSA-V02", cards[7], 200)
    city.clock.set(DAY, 9)
    city.report_loss(cards[7])
    city.clock.set(DAY, 10)
    after_loss = city.tap("BUSA-V02", cards[7], 200)
    lost_on_the_way = city.tap("BUSA-V02", cards[8], 200)  # never uploaded: the next record follows a device gap
    after_gap = city.tap("BUSA-V02", cards[0], 200)
    assert city.send("BUSA-V02", [before_loss, after_loss, after_gap, conflict]) == "accepted"

    state = city.run(DAY)
    assert state.stage == "done", state.result

    for field, record in forged.items():
        assert city.verdict_of(record) == ("rejected", "bad_tac"), field
    assert city.verdict_of(genuine) == ("settled", "ok")
    assert city.verdict_of(chain[0]) == ("settled", "ok")
    assert city.verdict_of(chain[2]) == ("suspicious", "counter_gap")
    assert city.verdict_of(balance_broken) == ("suspicious", "balance_chain")
    assert city.verdict_of(counter_broken) == ("suspicious", "counter_gap")
    assert city.verdict_of(before_loss) == ("settled", "ok")
    assert city.verdict_of(after_loss) == ("rejected", "hotlisted")
    assert city.verdict_of(after_gap) == ("suspicious", "device_seq_gap")
    assert city.verdict_of(conflict) == ("conflict", "key_conflict")
    assert (lost_on_the_way.card_no, lost_on_the_way.card_seq, lost_on_the_way.term_seq, 1) not in city.classes()

    report = city.report(DAY)
    assert report["records"] == {
        "settled": 10 + 3,  # 10 loads, 3 purchases
        "suspicious": 4,
        "rejected": 5,
        "conflict": 1,
        "pending": 0,
        "duplicate": len(first_batch),
    }
    assert report["reconciliation"]["ok"]
    assert sorted({(e["class"], e["code"]) for e in report["exceptions"]}) == [
        ("conflict", "key_conflict"),
        ("rejected", "bad_tac"),
        ("rejected", "hotlisted"),
        ("suspicious", "balance_chain"),
        ("suspicious", "counter_gap"),
        ("suspicious", "device_seq_gap"),
    ]
    # Settled and suspicious purchases are paid, once; rejected, conflicting and duplicate ones never.
    assert set(_posted_per_record(city)) == {1}
    paid = [genuine, chain[0], chain[2], balance_broken, counter_broken, before_loss, after_gap]
    by_operator = {o["operator_id"]: o for o in report["operators"]}
    assert by_operator["OP-BUS-A"]["amount"] == sum(r.amount for r in paid)
    assert by_operator["OP-BUS-A"]["count"] == len(paid)
    fee = (sum(r.amount for r in paid) * 15 + 500) // 1000  # 1.5 %, half up, once for the day
    assert by_operator["OP-BUS-A"]["fee"] == fee
    assert by_operator["OP-BUS-A"]["payable"] == sum(r.amount for r in paid) - fee
    assert city.float_balance() == 10 * 5_000 - sum(r.amount for r in paid)
    assert city.float_balance() == sum(city.shadow(card) for card in cards)

    # Replaying the whole day later changes nothing: duplicates again, never settled twice.
    assert city.send("BUSA-V01", first_batch, "V01-A-third") == "accepted"
    assert city.run(NEXT).stage == "done"
    assert city.report(NEXT)["records"]["duplicate"] == len(first_batch)
    assert set(_posted_per_record(city)) == {1}
    assert city.float_balance() == sum(city.shadow(card) for card in cards)


def test_unknown_and_retired_devices_and_the_time_window(city: City) -> None:
    card = city.new_card(load=5_000)
    other = city.new_card(load=5_000)
    city.send_counter()
    city.clock.set(DAY, 11)
    before_retirement = city.tap("BUSA-V09", card, 200)
    city.clock.set(DAY, 13)
    after_retirement = city.tap("BUSA-V09", card, 200)
    city.send("BUSA-V09", [before_retirement, after_retirement])
    # A PSAM nobody registered, its record smuggled into a registered validator's batch.
    stranger = PsamCard(InProcessChannel(issue_psam(city.keys, "031000000999")))
    stranger.open()
    with InProcessChannel(city.chips[other]) as channel:
        smuggled = PurseTerminal(clock=city.clock, psam=stranger).purchase(
            channel, 100, meta=RecordMeta(), device_seq=1
        )
    # A record taken hours after its batch says it was made (a device clock gone wrong).
    city.clock.set(DAY, 14)
    future = city.tap("BUSA-V01", other, 100)
    city.clock.set(DAY, 10)
    city.upload("BUSA-V01", city.batch("BUSA-V01", [smuggled.record, future]))
    assert city.run(DAY).stage == "done"
    assert city.verdict_of(before_retirement) == ("settled", "ok")
    assert city.verdict_of(after_retirement) == ("rejected", "retired_device")
    assert city.verdict_of(smuggled.record) == ("rejected", "unknown_device")
    assert city.verdict_of(future) == ("rejected", "outside_window")


def test_late_records_post_into_the_current_day_and_closed_days_stay(city: City) -> None:
    card = city.new_card(load=5_000)
    city.send_counter()
    city.clock.set(DAY, 8)
    on_time = city.tap("BUSA-V01", card, 200)
    late = city.tap("BUSB-V01", card, 300)  # bus B uploads it only the next day
    city.send("BUSA-V01", [on_time])
    assert city.run(DAY).stage == "done"
    closed_report = city.report(DAY)
    closed_ledger = [row for row in city.ledger_snapshot() if str(row[1]).startswith(DAY.isoformat())]

    city.clock.set(NEXT, 9)
    city.send("BUSB-V01", [late])
    assert city.run(NEXT).stage == "done"
    assert city.verdict_of(late) == ("settled", "ok")
    next_report = city.report(NEXT)
    assert [(x["card_no"], x["card_seq"], x["txn_date"]) for x in next_report["late"]] == [
        (card, late.card_seq, DAY.strftime("%Y%m%d"))
    ]
    assert {o["operator_id"]: o["amount"] for o in next_report["operators"]} == {"OP-BUS-B": 300}
    # The closed day did not move: same report, same entries; running it again changes nothing.
    assert city.report(DAY) == closed_report
    assert [row for row in city.ledger_snapshot() if str(row[1]).startswith(DAY.isoformat())] == closed_ledger
    assert city.run(DAY).stage == "done"
    assert city.report(DAY) == closed_report


def test_unconfirmed_records_wait_then_settle_or_void(city: City) -> None:
    confirmed_later, reused, proven, forgotten, spare = (city.new_card(load=5_000) for _ in range(5))
    city.send_counter()
    city.clock.set(DAY, 8)
    # The card left during DEBIT: the validator writes the record unconfirmed. The card's next tap (counter + 1)
    # proves the DEBIT happened.
    left = city.tap("BUSA-V01", confirmed_later, 200)
    # Here the first attempt's DEBIT never reached the card (that attempt's PSAM and device numbers are taken from
    # a tap of a spare card): the purchase that did happen uses the same counter value; it arrives the next day.
    attempt = city.tap("BUSA-V01", spare, 200)
    real = city.tap("BUSA-V01", reused, 200)
    phantom = tampered(unconfirmed(real), term_seq=attempt.term_seq, device_seq=attempt.device_seq)
    # Completed later by GET TRANSACTION PROOF: the same record again with status proof.
    recovered = city.tap("BUSA-V01", proven, 200)
    # Nothing ever confirms this one.
    lost = city.tap("BUSA-V01", forgotten, 200)
    city.send("BUSA-V01", [unconfirmed(left), phantom, unconfirmed(recovered), unconfirmed(lost)])
    assert city.run(DAY).stage == "done"
    for record in (left, phantom, recovered, lost):
        assert city.verdict_of(record) == ("pending", "unconfirmed")
    assert city.report(DAY)["records"]["pending"] == 4

    city.clock.set(NEXT, 8)
    again = city.tap("BUSB-V01", confirmed_later, 100)
    city.send("BUSB-V01", [again])
    city.send("BUSA-V01", [real, tampered(recovered, status=RecordStatus.PROOF)])
    assert city.run(NEXT).stage == "done"
    assert city.verdict_of(left) == ("settled", "confirmed_by_counter")
    assert city.verdict_of(again) == ("settled", "ok")
    assert city.verdict_of(real) == ("settled", "ok")
    assert city.verdict_of(phantom) == ("rejected", "void_reused_seq")
    assert city.verdict_of(recovered) == ("settled", "ok")
    assert city.verdict_of(lost) == ("pending", "unconfirmed")
    next_report = city.report(NEXT)
    assert [p["card_no"] for p in next_report["pending"]] == [forgotten]
    assert city.report(DAY)["records"]["pending"] == 4  # the closed day's report does not move

    # Past the pending time limit the last one is void.
    far = NEXT + timedelta(days=city.policy.pending_days + 1)
    assert city.run(far).stage == "done"
    assert city.verdict_of(lost) == ("rejected", "void_timeout")
    assert city.float_balance() == sum(
        city.shadow(card) for card in (confirmed_later, reused, proven, forgotten, spare)
    )
