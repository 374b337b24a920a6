"""The load host's fast path (issue #7, performance): the rows it records are those of the general path, it hands
over to the general path whenever the general path must decide, and callers' hooks run in its two transactions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Connection, event, select

from cardos.batch import BatchRecord, RecordStatus
from cardos.card import Card as Chip
from cardos.memory import PowerLoss
from issuance import services
from issuance.bookkeeping import COUNTER_CASH, card_account
from issuance.lifecycle import LoadStatus
from issuance.loadhost import BackOfficeLoadHost
from issuance.models import AuditEntry, Card, Load, PurseMovement
from terminal.cards import UserCard
from terminal.channel import InProcessChannel
from terminal.field import InProcessField
from terminal.purse import LoadRequest

if TYPE_CHECKING:
    from conftest import Desk  # tests/integration/issuance/conftest.py


CREDIT_FOR_LOAD = b"\x80\x52"


class LeavesAfterCredit:
    """Forwards every command; after CREDIT FOR LOAD the card leaves (its answer is lost)."""

    def __init__(self, inner: Chip) -> None:
        self.inner = inner

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def power_on(self) -> None:
        self.inner.power_on()

    def power_off(self) -> None:
        self.inner.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        response = self.inner.transmit(apdu)
        if apdu[:2] == CREDIT_FOR_LOAD:
            raise PowerLoss("the card left after CREDIT FOR LOAD")
        return response


class LeavesBeforeCredit(LeavesAfterCredit):
    """The card leaves as CREDIT FOR LOAD arrives: the credit never happens."""

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[:2] == CREDIT_FOR_LOAD:
            raise PowerLoss("the card left before CREDIT FOR LOAD")
        return self.inner.transmit(apdu)


class RecordingHooks:
    """Records the hook calls; ``confirming`` notes the load's status and device_seq."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[str] = []
        self.refuse = refuse

    def authorizing(self, conn: Connection) -> None:
        self.calls.append("authorizing")
        if self.refuse:
            raise LookupError("the caller abandons the load")

    def authorization_committed(self) -> None:
        self.calls.append("committed")

    def confirming(self, conn: Connection, load: Load) -> None:
        self.calls.append(f"confirming:{load.status}:{load.device_seq}")


def _commits(desk: Desk) -> list[int]:
    counted = [0]

    @event.listens_for(desk.engine, "commit")
    def _count(_conn: Any) -> None:
        counted[0] += 1

    return counted


def test_fast_load_records_what_the_general_path_records(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    commits = _commits(desk)
    outcome = desk.load(chip, 1_500, "fast-1")
    assert commits[0] == 2  # the authorization, then the outcome
    assert outcome.status is LoadStatus.OK and outcome.balance_after == 1_500 and not outcome.replayed
    assert outcome.record is not None and (outcome.record.term_seq, outcome.record.device_seq) == (1, 1)
    with desk.uow() as uow:
        load = uow.session.scalars(select(Load)).one()
        assert (load.status, load.tac, load.device_seq, load.funding_account) == (
            LoadStatus.OK,
            outcome.record.tac,
            1,
            COUNTER_CASH,
        )
        assert load.completed_at is not None and load.authorized_at == load.created_at
        card = uow.session.scalars(select(Card).where(Card.card_no == card_no)).one()
        assert (card.shadow_balance, card.shadow_online_seq) == (1_500, 1) and card.shadow_updated_at is not None
        movement = uow.session.scalars(select(PurseMovement).where(PurseMovement.kind == "load")).one()
        assert (movement.from_account, movement.to_account, movement.amount) == (
            COUNTER_CASH,
            card_account(card_no),
            1_500,
        )
        assert movement.reference == "load:fast-1" and movement.actor_id == desk.clerk.staff_id
        entries = {
            e.action: (json.loads(e.detail), e.actor_role)
            for e in uow.session.scalars(select(AuditEntry).where(AuditEntry.action.like("load.%")))
        }
    assert entries["load.authorize"][0] == {
        "amount": 1_500,
        "card_no": card_no,
        "online_seq": 0,
        "term_id": desk.term_id,
        "term_seq": 1,
    }
    assert entries["load.ok"] == ({"amount": 1_500, "card_no": card_no, "device_seq": 1}, str(desk.clerk.role))
    assert desk.chip_balance(chip) == 1_500
    # The next load numbers on.
    second = desk.load(chip, 500, "fast-2")
    assert second.record is not None and (second.record.term_seq, second.record.device_seq) == (2, 2)
    assert desk.card(card_no).shadow_balance == 2_000 == desk.chip_balance(chip)


def test_stale_authorization_sends_the_load_down_the_general_path(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    term_id = bytes.fromhex(desk.term_id)
    with InProcessChannel(chip) as channel:
        user = UserCard(channel)
        user.select_purse()
        init = user.initialize_load(1_000, term_id)
        crashed = LoadRequest(
            "crashed", bytes.fromhex(card_no), term_id, 1_000, init.old_balance, init.online_seq, init.key_version,
            init.alg, init.rand, init.mac1,
        )  # fmt: skip
        BackOfficeLoadHost(desk.uow, desk.keys, desk.clerk, clock=desk.clock).authorize(crashed)  # then a crash
    outcome = desk.load(chip, 2_000, "after-crash")
    assert outcome.status is LoadStatus.OK and outcome.balance_after == 2_000
    with desk.uow() as uow:
        statuses = {load.request_id: load.status for load in uow.session.scalars(select(Load))}
    assert statuses == {"crashed": LoadStatus.VOID, "after-crash": LoadStatus.OK}
    assert desk.card(card_no).shadow_balance == 2_000 == desk.chip_balance(chip)


def test_hooks_run_once_in_the_two_transactions(desk: Desk) -> None:
    _, chip = desk.new_card(0)
    hooks = RecordingHooks()
    outcome = desk.load(chip, 700, "hooked", hooks=hooks, on_record_checked=True)
    assert outcome.status is LoadStatus.OK
    assert hooks.calls == ["authorizing", "committed", "confirming:ok:1"]


def test_hooks_when_the_card_comes_back_after_leaving_before_credit(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    hooks = RecordingHooks()
    outcome = services.load_card(
        desk.uow,
        desk.clerk,
        desk.keys,
        InProcessChannel(LeavesBeforeCredit(chip)),
        amount=900,
        request_id="retried",
        term_id=desk.term_id,
        clock=desk.clock,
        card_source=InProcessField([chip]),
        recovery_timeout=1.0,
        hooks=hooks,
    )
    # The second authorization (same request, same counter) takes the general path; the hook ran once.
    assert outcome.status is LoadStatus.OK and outcome.balance_after == 900
    assert hooks.calls == ["authorizing", "committed", "confirming:ok:1"]
    assert desk.card(card_no).shadow_balance == 900 == desk.chip_balance(chip)


def test_hooks_with_a_proof_and_with_an_unconfirmed_outcome(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    hooks = RecordingHooks()
    outcome = services.load_card(
        desk.uow,
        desk.clerk,
        desk.keys,
        InProcessChannel(LeavesAfterCredit(chip)),
        amount=300,
        request_id="proof",
        term_id=desk.term_id,
        clock=desk.clock,
        card_source=InProcessField([chip]),
        recovery_timeout=1.0,
        hooks=hooks,
    )
    assert outcome.status is LoadStatus.PROOF
    assert hooks.calls == ["authorizing", "committed", "confirming:proof:1"]
    lost = RecordingHooks()
    unconfirmed = desk.load(LeavesAfterCredit(chip), 400, "lost", hooks=lost)
    assert unconfirmed.status is LoadStatus.UNCONFIRMED
    assert lost.calls == ["authorizing", "committed", "confirming:unconfirmed:2"]
    assert desk.card(card_no).shadow_balance == 300


def test_a_hook_refusing_leaves_nothing_behind(desk: Desk) -> None:
    _, chip = desk.new_card(0)
    hooks = RecordingHooks(refuse=True)
    with pytest.raises(LookupError):
        desk.load(chip, 800, "refused", hooks=hooks)
    assert hooks.calls == ["authorizing"]
    assert desk.count(Load) == 0 and desk.chip_balance(chip) == 0


def test_a_tac_that_does_not_verify_is_rejected_on_the_general_path(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    host = BackOfficeLoadHost(desk.uow, desk.keys, desk.clerk, clock=desk.clock, fresh=True)
    term_id = bytes.fromhex(desk.term_id)
    with InProcessChannel(chip) as channel:
        user = UserCard(channel)
        user.select_purse()
        init = user.initialize_load(600, term_id)
        request = LoadRequest(
            "bad-tac", bytes.fromhex(card_no), term_id, 600, init.old_balance, init.online_seq, init.key_version,
            init.alg, init.rand, init.mac1,
        )  # fmt: skip
        auth = host.authorize(request)
        user.credit_for_load(auth.date4, auth.time3, auth.mac2)
        record = BatchRecord(
            "02", card_no, "01", 0, 600, 0, desk.term_id, auth.term_seq, "", "", "00000000", "00", "01",
            RecordStatus.OK,
        )  # fmt: skip
        with pytest.raises(Exception, match="TAC"):
            host.confirm(request, auth, record)
    with desk.uow() as uow:
        assert uow.session.scalars(select(Load.status)).one() is LoadStatus.REJECTED
    assert desk.card(card_no).shadow_balance == 0
