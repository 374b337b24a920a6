"""Online loads with the back office as load host (spec §2.4, Load): exactly once per client request id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support import LeavesAfterCredit, LeavesBeforeCredit, issue_card

from backoffice.errors import CardRefused, Conflict
from cardos.batch import BatchRecord, RecordStatus
from issuance import services
from issuance.bookkeeping import COUNTER_CASH, card_account
from issuance.lifecycle import LoadStatus
from issuance.loadhost import BackOfficeLoadHost, LoadRefused, load_records
from issuance.models import Load
from terminal.cards import UserCard
from terminal.channel import InProcessChannel
from terminal.errors import HostRefused
from terminal.field import InProcessField
from terminal.purse import LoadRequest, PurseTerminal

if TYPE_CHECKING:
    from conftest import Desk  # tests/integration/issuance/conftest.py


def test_load_once_per_request_id(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    first = desk.load(chip, 20_000, "req-1")
    assert first.status is LoadStatus.OK and first.balance_after == 20_000 and not first.replayed
    assert first.record is not None and first.record.status is RecordStatus.OK and first.record.card_seq == 0
    assert (first.record.term_id, first.record.term_seq, first.record.device_seq) == (desk.term_id, 1, 1)
    # The same request again: answered from the record, the card untouched.
    again = desk.load(chip, 20_000, "req-1")
    assert again.replayed and again.status is LoadStatus.OK and again.record == first.record
    assert desk.chip_balance(chip) == 20_000
    with pytest.raises(Conflict, match="another load"):
        desk.load(chip, 30_000, "req-1")
    # A terminal going straight to the host with a used request id is refused before CREDIT.
    host = BackOfficeLoadHost(desk.uow, desk.keys, desk.clerk, clock=desk.clock)
    with InProcessChannel(chip) as channel, pytest.raises(LoadRefused, match="already ok"):
        PurseTerminal(clock=desk.clock).load(
            channel, 20_000, host, term_id=bytes.fromhex(desk.term_id), request_id="req-1"
        )
    assert desk.chip_balance(chip) == 20_000
    second = desk.load(chip, 5_000, "req-2")
    assert second.record is not None and second.record.balance_before == 20_000 and second.record.card_seq == 1
    view = desk.card(card_no)
    assert view.shadow_balance == 25_000 and view.shadow_online_seq == 2
    # Every movement balances: what the counter took is what the card holds.
    assert desk.balance(card_account(card_no)) == 25_000 and desk.balance(COUNTER_CASH) == -25_000
    with desk.uow() as uow:
        records = load_records(uow.session, desk.term_id)
    assert [r.device_seq for r in records] == [1, 2] and [r.amount for r in records] == [20_000, 5_000]
    assert all(r.txn_type == "02" and len(r.tac) == 8 for r in records)


def test_limits_and_refusals(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    anonymous_no = desk.apply(None)
    anonymous = desk.issue(anonymous_no)
    with pytest.raises(CardRefused, match="limit"):
        desk.load(anonymous, 100_001, "anon-1")  # the card refuses at INITIALIZE (6A80)
    assert desk.load(anonymous, 100_000, "anon-2").balance_after == 100_000
    assert desk.load(chip, 500_000, "reg-1").balance_after == 500_000
    with pytest.raises(CardRefused, match="limit"):
        desk.load(chip, 1, "reg-2")
    with pytest.raises(Exception, match="positive"):
        desk.load(chip, 0, "reg-3")
    # A card the back office did not issue, and a counterfeit of an issued one (other keys: MAC1 fails).
    with pytest.raises(HostRefused, match="not one of ours"):
        desk.load(issue_card(desk.issuer_keys, "0310999999999999"), 100, "foreign-1")
    forged_keys = type(desk.issuer_keys)(
        desk.issuer_keys.issuer_id, desk.issuer_keys.alg, {**desk.issuer_keys.keys, "MLK": bytes(16)}
    )
    with pytest.raises(HostRefused, match="MAC1"):
        desk.load(issue_card(forged_keys, card_no), 100, "forged-1")
    assert desk.audit_actions("load.mac1_refused")[0].object_id == card_no
    assert desk.count(Load) == 2


def test_card_leaves_after_credit_proof_recovered_once(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    field = InProcessField([chip])  # the resident presents the card again
    outcome = services.load_card(
        desk.uow,
        desk.clerk,
        desk.keys,
        InProcessChannel(LeavesAfterCredit(chip)),
        amount=3_000,
        request_id="tear-1",
        term_id=desk.term_id,
        clock=desk.clock,
        card_source=field,
        recovery_timeout=1.0,
    )
    assert outcome.status is LoadStatus.PROOF and outcome.record is not None
    assert outcome.record.status is RecordStatus.PROOF and outcome.record.tac
    assert desk.chip_balance(chip) == 3_000 and desk.card(card_no).shadow_balance == 3_000
    # The client retries the same request (its answer was lost too): nothing is loaded twice.
    retried = desk.load(chip, 3_000, "tear-1")
    assert retried.replayed and retried.status is LoadStatus.PROOF
    assert desk.chip_balance(chip) == 3_000 and desk.card(card_no).shadow_balance == 3_000
    assert desk.balance(card_account(card_no)) == 3_000


def test_unconfirmed_load_is_resolved_by_proof(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    outcome = desk.load(LeavesAfterCredit(chip), 4_000, "lost-answer")  # no card source: cannot recover now
    assert outcome.status is LoadStatus.UNCONFIRMED and outcome.record is not None
    assert outcome.record.status is RecordStatus.UNCONFIRMED and outcome.record.tac == ""
    assert desk.card(card_no).shadow_balance == 0  # not counted until proven
    with pytest.raises(Conflict, match="unconfirmed"):
        desk.load(chip, 4_000, "lost-answer")
    with InProcessChannel(chip) as channel:
        resolved = services.resolve_unconfirmed_load(
            desk.uow, desk.clerk, desk.keys, channel, request_id="lost-answer", clock=desk.clock
        )
    assert resolved.status is LoadStatus.PROOF and resolved.record is not None
    assert resolved.record.device_seq == outcome.record.device_seq  # the record replaces the unconfirmed one
    assert desk.chip_balance(chip) == 4_000 and desk.card(card_no).shadow_balance == 4_000
    with InProcessChannel(chip) as channel:
        again = services.resolve_unconfirmed_load(
            desk.uow, desk.clerk, desk.keys, channel, request_id="lost-answer", clock=desk.clock
        )
    assert again.replayed and desk.card(card_no).shadow_balance == 4_000


def test_unconfirmed_load_that_never_happened_is_void(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    outcome = desk.load(LeavesBeforeCredit(chip), 4_000, "never")
    assert outcome.status is LoadStatus.UNCONFIRMED
    with InProcessChannel(chip) as channel:
        resolved = services.resolve_unconfirmed_load(
            desk.uow, desk.clerk, desk.keys, channel, request_id="never", clock=desk.clock
        )
    assert resolved.status is LoadStatus.VOID and resolved.balance_after is None
    assert desk.chip_balance(chip) == 0 and desk.card(card_no).shadow_balance == 0
    # A new request loads it; the void one keeps its record number (it stays unconfirmed for clearing).
    fresh = desk.load(chip, 4_000, "never-again")
    assert fresh.status is LoadStatus.OK and fresh.record is not None and fresh.record.card_seq == 0
    with desk.uow() as uow:
        statuses = [(r.device_seq, r.status) for r in load_records(uow.session, desk.term_id)]
    assert statuses == [(1, RecordStatus.UNCONFIRMED), (2, RecordStatus.OK)]


def test_host_retry_rules(desk: Desk) -> None:
    """Authorizations that were never used become void; one the card may have used becomes unconfirmed."""
    card_no, chip = desk.new_card(0)
    host = BackOfficeLoadHost(desk.uow, desk.keys, desk.clerk, clock=desk.clock)
    term_id = bytes.fromhex(desk.term_id)

    def initialize(user: UserCard, request_id: str, amount: int) -> LoadRequest:
        init = user.initialize_load(amount, term_id)
        return LoadRequest(
            request_id,
            bytes.fromhex(card_no),
            term_id,
            amount,
            init.old_balance,
            init.online_seq,
            init.key_version,
            init.alg,
            init.rand,
            init.mac1,
        )

    def statuses() -> dict[str, LoadStatus]:
        with desk.uow() as uow:
            return {load.request_id: load.status for load in uow.session.query(Load)}

    with InProcessChannel(chip) as channel:
        user = UserCard(channel)
        user.select_purse()
        host.authorize(initialize(user, "A", 1_000))  # the counter crashed before CREDIT
        request_b = initialize(user, "B", 2_000)  # same counter value: A's MAC2 can never be used now
        auth_b = host.authorize(request_b)
        tac = user.credit_for_load(auth_b.date4, auth_b.time3, auth_b.mac2)
        record = BatchRecord(
            "02", card_no, "01", 0, 2_000, 0, desk.term_id, auth_b.term_seq, "", "", tac.hex().upper(), "00", "01",
            RecordStatus.OK,
        )  # fmt: skip
        host.confirm(request_b, auth_b, record)
        assert statuses() == {"A": LoadStatus.VOID, "B": LoadStatus.OK}
        with pytest.raises(LoadRefused, match="already void"):
            host.authorize(initialize(user, "A", 1_000))

        request_c = initialize(user, "C", 3_000)
        auth_c = host.authorize(request_c)
        user.credit_for_load(auth_c.date4, auth_c.time3, auth_c.mac2)  # credited, but never confirmed
        with pytest.raises(LoadRefused, match="unconfirmed"):
            host.authorize(initialize(user, "C", 3_000))  # the counter moved: C may have happened
        assert statuses()["C"] is LoadStatus.UNCONFIRMED
        assert desk.card(card_no).shadow_balance == 2_000

    with InProcessChannel(chip) as channel:
        resolved = services.resolve_unconfirmed_load(
            desk.uow, desk.clerk, desk.keys, channel, request_id="C", clock=desk.clock
        )
    assert resolved.status is LoadStatus.PROOF
    assert desk.card(card_no).shadow_balance == 5_000 == desk.chip_balance(chip)
