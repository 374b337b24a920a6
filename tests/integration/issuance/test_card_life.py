"""Loss, replacement with its balance transfer, refund and cancellation, PIN reset, blocks, holder changes."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from backoffice.errors import Conflict, Forbidden
from cardos.apdu import CommandAPDU
from cardos.layout import PURSE_AID, SOCIAL_AID, HolderData, SocialSecurityData, encode_pin
from cardos.sw import SW
from issuance import services
from issuance.bookkeeping import COUNTER_CASH, card_account, settlement_account
from issuance.lifecycle import CardState, HotlistReason, InvalidTransition, SettlementKind, SettlementStatus
from issuance.loadhost import LoadRefused
from issuance.models import BalanceSettlement, CardEvent
from terminal.channel import InProcessChannel

if TYPE_CHECKING:
    from conftest import Desk  # tests/integration/issuance/conftest.py

SELECT_PURSE = CommandAPDU(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256)
GET_BALANCE = CommandAPDU(0x80, 0x5C, 0x00, 0x02, b"", 4)


def _verify(pin: str) -> CommandAPDU:
    return CommandAPDU(0x00, 0x20, 0x00, 0x00, encode_pin(pin))


def test_loss_is_hotlisted_at_once_with_versions(desk: Desk) -> None:
    first, _ = desk.new_card(0)
    second, _ = desk.new_card(1)
    entry = desk.run(services.report_loss, desk.clerk, card_no=first)
    assert entry.version == 1 and entry.card_no == first and entry.reason == "lost"
    assert desk.card(first).state is CardState.LOST and desk.card(first).hotlisted_at == entry.listed_at
    stolen = desk.run(services.report_loss, desk.clerk, card_no=second, reason=HotlistReason.STOLEN)
    assert stolen.version == 2
    with pytest.raises(InvalidTransition):
        desk.run(services.report_loss, desk.clerk, card_no=first)
    with desk.uow() as uow:
        full = services.hotlist_download(uow)
        delta = services.hotlist_download(uow, since_version=1)
        none = services.hotlist_download(uow, since_version=2)
        ahead = services.hotlist_download(uow, since_version=7)
    assert full.version == 2 and full.full and [e.card_no for e in full.entries] == [first, second]
    assert delta.version == 2 and not delta.full and [e.card_no for e in delta.entries] == [second]
    assert none.version == 2 and not none.full and none.entries == ()
    assert ahead.full and len(ahead.entries) == 2
    # A lost card takes no more loads.
    with pytest.raises(Conflict):
        services.load_card(
            desk.uow, desk.clerk, desk.keys, InProcessChannel(_), amount=1, request_id="x", term_id=desk.term_id
        )


def test_state_machine_refusals(desk: Desk) -> None:
    resident = desk.register(0)
    card_no = desk.apply(resident)
    with pytest.raises(InvalidTransition):
        desk.run(services.activate_card, desk.clerk, card_no=card_no)  # never personalised
    with pytest.raises(InvalidTransition):
        desk.run(services.replace_card, desk.clerk, old_card_no=card_no)  # not lost
    chip = desk.issue(card_no)
    with pytest.raises(InvalidTransition):
        desk.run(services.replace_card, desk.clerk, old_card_no=card_no)  # active: report the loss first
    with InProcessChannel(chip) as channel, pytest.raises(Conflict, match="not blocked"):
        desk.run(services.unblock_card, desk.supervisor, desk.keys, channel, card_no=card_no)
    with InProcessChannel(chip) as channel, pytest.raises(Forbidden):
        desk.run(services.refund_card, desk.clerk, desk.keys, card_no=card_no, channel=channel)
    other_no, other_chip = desk.new_card(1)
    with InProcessChannel(other_chip) as channel, pytest.raises(Conflict, match="another card"):
        desk.run(services.block_card, desk.clerk, desk.keys, channel, card_no=card_no)
    assert desk.card(card_no).state is CardState.ACTIVE and desk.card(other_no).state is CardState.ACTIVE


def test_replacement_moves_the_cleared_balance_exactly_once(desk: Desk) -> None:
    old_no, old_chip = desk.new_card(0)
    desk.load(old_chip, 3_000, "old-load")
    bought_at = desk.clock()
    with desk.uow() as uow:  # clearing settles an offline purchase made before the loss
        services.record_cleared_purchase(
            uow.session, card_no=old_no, card_seq=0, amount=500, txn_at=bought_at, reference="batch-1:1"
        )
        uow.commit()
    entry = desk.run(services.report_loss, desk.clerk, card_no=old_no)
    replacement = desk.run(services.replace_card, desk.clerk, old_card_no=old_no)
    new_no = replacement.new_card.card_no
    assert replacement.new_card.state is CardState.APPLIED and replacement.new_card.resident_id is not None
    assert replacement.transfer.status is SettlementStatus.PENDING and replacement.transfer.cutoff_at == entry.listed_at
    assert desk.card(old_no).state is CardState.REPLACED
    new_chip = desk.issue(new_no)
    settlement_id = replacement.transfer.settlement_id

    # Not yet cleared up to the hotlist time: nothing moves, and nothing can be collected.
    with desk.uow() as uow:
        assert services.complete_pending_transfers(uow, entry.listed_at - timedelta(seconds=1), clock=desk.clock) == []
    with pytest.raises(Conflict, match="not cleared"):
        services.collect_transfer(
            desk.uow,
            desk.clerk,
            desk.keys,
            InProcessChannel(new_chip),
            settlement_id=settlement_id,
            term_id=desk.term_id,
        )
    # Late but pre-loss purchases still lower the shadow; post-loss ones are clearing's rejects.
    with desk.uow() as uow:
        services.record_cleared_purchase(
            uow.session, card_no=old_no, card_seq=1, amount=200, txn_at=bought_at, reference="batch-2:1"
        )
        with pytest.raises(Conflict, match="after the card's hotlist time"):
            services.record_cleared_purchase(
                uow.session,
                card_no=old_no,
                card_seq=2,
                amount=100,
                txn_at=entry.listed_at + timedelta(minutes=5),
                reference="batch-3:1",
            )
        uow.commit()

    with desk.uow() as uow:
        done = services.complete_pending_transfers(uow, entry.listed_at, clock=desk.clock)
    assert [(s.settlement_id, s.status, s.amount) for s in done] == [(settlement_id, SettlementStatus.READY, 2_300)]
    with desk.uow() as uow:  # clearing calls again: never twice
        assert services.complete_pending_transfers(uow, entry.listed_at + timedelta(days=1), clock=desk.clock) == []
    with desk.uow() as uow, pytest.raises(Conflict, match="already settled"):
        services.record_cleared_purchase(
            uow.session, card_no=old_no, card_seq=2, amount=50, txn_at=bought_at, reference="batch-4:1"
        )
    assert desk.card(old_no).shadow_balance == 0 and desk.balance(settlement_account(settlement_id)) == 2_300

    with InProcessChannel(new_chip) as channel:
        loaded = services.collect_transfer(
            desk.uow,
            desk.clerk,
            desk.keys,
            channel,
            settlement_id=settlement_id,
            term_id=desk.term_id,
            clock=desk.clock,
        )
    assert loaded.amount == 2_300 and loaded.balance_after == 2_300
    with InProcessChannel(new_chip) as channel:
        again = services.collect_transfer(
            desk.uow,
            desk.clerk,
            desk.keys,
            channel,
            settlement_id=settlement_id,
            term_id=desk.term_id,
            clock=desk.clock,
        )
    assert again.replayed
    assert desk.chip_balance(new_chip) == 2_300 and desk.card(new_no).shadow_balance == 2_300
    assert desk.balance(card_account(old_no)) == 0 and desk.balance(settlement_account(settlement_id)) == 0
    assert desk.balance(card_account(new_no)) == 2_300 and desk.balance(COUNTER_CASH) == -3_000
    with desk.uow() as uow:
        settlement = uow.session.get(BalanceSettlement, settlement_id)
        assert settlement is not None and settlement.status is SettlementStatus.DONE
    # The old chip, if found, is refused by the host (and hotlisted for validators).
    with pytest.raises(LoadRefused, match="replaced"):
        desk.load(old_chip, 100, "old-again")


def test_refund_blocks_the_purse_and_pays_out_once(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    desk.load(chip, 1_234, "refund-load")
    with InProcessChannel(chip) as channel:
        refund = desk.run(services.refund_card, desk.supervisor, desk.keys, card_no=card_no, channel=channel)
    assert refund.kind is SettlementKind.REFUND
    assert refund.status is SettlementStatus.READY and refund.amount == 1_234  # the chip agreed with the shadow
    view = desk.card(card_no)
    assert view.state is CardState.REFUNDED and view.hotlisted_at is not None
    (select,) = desk.send(chip, SELECT_PURSE)
    assert select.sw == SW.FUNCTION_NOT_SUPPORTED  # APPLICATION BLOCK 01: permanently blocked
    paid = desk.run(services.pay_out_refund, desk.supervisor, settlement_id=refund.settlement_id)
    assert paid.status is SettlementStatus.DONE
    with pytest.raises(Conflict):
        desk.run(services.pay_out_refund, desk.supervisor, settlement_id=refund.settlement_id)
    assert desk.balance(COUNTER_CASH) == 0 and desk.balance(card_account(card_no)) == 0


def test_cancel_blocks_the_card_and_waits_for_clearing_when_the_card_is_absent(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    desk.load(chip, 800, "cancel-load")
    with InProcessChannel(chip) as channel:
        cancelled = desk.run(services.cancel_card, desk.supervisor, desk.keys, card_no=card_no, channel=channel)
    assert cancelled.status is SettlementStatus.READY and cancelled.amount == 800
    responses = desk.send(chip, SELECT_PURSE, CommandAPDU(0x00, 0xA4, 0x04, 0x00, SOCIAL_AID, 256), GET_BALANCE)
    assert [r.sw for r in responses] == [SW.FUNCTION_NOT_SUPPORTED] * 3  # CARD BLOCK: everything answers 6A81

    lost_no, lost_chip = desk.new_card(1)
    desk.load(lost_chip, 500, "lost-load")
    desk.run(services.report_loss, desk.clerk, card_no=lost_no)
    refund = desk.run(services.refund_card, desk.supervisor, desk.keys, card_no=lost_no)
    assert refund.status is SettlementStatus.PENDING and refund.amount is None
    with pytest.raises(Conflict):
        desk.run(services.pay_out_refund, desk.supervisor, settlement_id=refund.settlement_id)
    with desk.uow() as uow:
        ready = services.complete_pending_transfers(uow, refund.cutoff_at, clock=desk.clock)
    assert [(r.kind, r.amount) for r in ready] == [(SettlementKind.REFUND, 500)]

    # A card never loaded holds nothing: cancelling it waits for nothing.
    stock_no = desk.apply(None)
    stock = desk.run(services.cancel_card, desk.supervisor, desk.keys, card_no=stock_no)
    assert (stock.status, stock.amount) == (SettlementStatus.DONE, 0)
    assert desk.card(stock_no).state is CardState.CANCELLED and desk.card(stock_no).hotlisted_at is None


def test_pin_reset_and_temporary_block(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    wrong = desk.send(chip, SELECT_PURSE, _verify("0000"), _verify("0000"), _verify("0000"), _verify("123456"))
    assert [r.sw for r in wrong[1:]] == [0x63C2, 0x63C1, 0x63C0, SW.AUTH_METHOD_BLOCKED]
    with InProcessChannel(chip) as channel:
        desk.run(services.reset_pin, desk.clerk, desk.keys, channel, card_no=card_no, new_pin="8642")
    _, verified = desk.send(chip, SELECT_PURSE, _verify("8642"))
    assert verified.sw == SW.OK
    with InProcessChannel(chip) as channel:
        desk.run(
            services.reset_pin, desk.clerk, desk.keys, channel, card_no=card_no, new_pin="9753", application="social"
        )
    _, social_ok = desk.send(chip, CommandAPDU(0x00, 0xA4, 0x04, 0x00, SOCIAL_AID, 256), _verify("9753"))
    assert social_ok.sw == SW.OK
    assert [e.detail for e in desk.audit_actions("card.pin_reset")] == [
        '{"application": "purse"}',
        '{"application": "social"}',
    ]

    with InProcessChannel(chip) as channel:
        blocked = desk.run(services.block_card, desk.clerk, desk.keys, channel, card_no=card_no)
    assert blocked.state is CardState.BLOCKED and blocked.hotlisted_at is None
    select, balance = desk.send(chip, SELECT_PURSE, GET_BALANCE)
    assert select.sw == SW.APP_BLOCKED_TEMP and balance.sw == SW.APP_LOCKED
    with pytest.raises(Forbidden), InProcessChannel(chip) as channel:
        desk.run(services.unblock_card, desk.clerk, desk.keys, channel, card_no=card_no)
    with InProcessChannel(chip) as channel:
        unblocked = desk.run(services.unblock_card, desk.supervisor, desk.keys, channel, card_no=card_no)
    assert unblocked.state is CardState.ACTIVE and desk.send(chip, SELECT_PURSE)[0].sw == SW.OK
    with InProcessChannel(chip) as channel:
        locked = desk.run(services.block_card, desk.clerk, desk.keys, channel, card_no=card_no, permanent=True)
    assert locked.state is CardState.LOCKED and locked.hotlisted_at is not None
    with desk.uow() as uow:
        states = [e.to_state for e in uow.session.query(CardEvent).order_by(CardEvent.id)]
    assert states[-3:] == [CardState.BLOCKED, CardState.ACTIVE, CardState.LOCKED]


def test_cardholder_data_change_with_line_mac(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    with InProcessChannel(chip) as channel:
        view = desk.run(
            services.change_cardholder_data,
            desk.clerk,
            desk.keys,
            desk.vault,
            channel,
            card_no=card_no,
            name="ZHANG SANFENG",
            phone="13912345678",
            address="9 Jiefang Road",
        )
    assert view.name == "ZHANG SANFENG" and view.phone == "139****5678" and view.id_number == "110***********002X"
    _, holder = desk.send(chip, SELECT_PURSE, CommandAPDU(0x00, 0xB0, 0x96, 0x00, b"", 56))
    assert HolderData.decode(holder.data) == HolderData("ZHANG SANFENG", desk.id_numbers[0], "13912345678")
    _, _, social = desk.send(
        chip,
        CommandAPDU(0x00, 0xA4, 0x04, 0x00, SOCIAL_AID, 256),
        _verify("123456"),
        CommandAPDU(0x00, 0xB0, 0x85, 0x00, b"", 64),
    )
    assert SocialSecurityData.decode(social.data).name == "ZHANG SANFENG"
    assert desk.audit_actions("resident.change")[0].detail.count("name") == 1
