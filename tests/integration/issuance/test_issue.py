"""Issuing cards and PSAMs through the keystore (spec §2.5, §3): end to end, in-process."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest
from rich.console import Console
from support import StepClock

from backoffice.db import UnitOfWork, session_factory
from backoffice.errors import CardRefused, Conflict, Forbidden
from cardos.apdu import CommandAPDU
from cardos.card import Card, CardKind
from cardos.layout import SOCIAL_AID, SocialSecurityData, encode_pin
from cardos.sw import SW
from issuance import services
from issuance.lifecycle import CardState, CardType
from issuance.models import CardEvent, Psam
from issuance.progress import progress_bar
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.purse import PurseTerminal

if TYPE_CHECKING:
    from conftest import Desk  # tests/integration/issuance/conftest.py

SELECT_SOCIAL = CommandAPDU(0x00, 0xA4, 0x04, 0x00, SOCIAL_AID, 256)
READ_EF0005 = CommandAPDU(0x00, 0xB0, 0x85, 0x00, b"", 64)


def test_issue_a_registered_card_end_to_end(desk: Desk) -> None:
    resident_id = desk.register(0)
    card_no = desk.apply(resident_id, CardType.SENIOR)
    assert card_no == "0310000000000001"
    chip = desk.factory_chip()
    steps: list[str] = []
    with InProcessChannel(chip) as channel:
        view = desk.run(
            services.issue_card,
            desk.clerk,
            desk.keys,
            desk.vault,
            desk.issuer,
            channel,
            card_no=card_no,
            pin="2468",
            progress=lambda done, total, name: steps.append(name),
        )
    assert view.state is CardState.ACTIVE and view.chip_serial == chip.chip_serial.hex().upper()
    assert view.purse_limit == 500_000 and view.registered
    assert steps[0] == "CREATE DF" and steps[-1] == "FINISH" and steps.count("PUT KEY") == 9

    with InProcessChannel(chip) as channel:
        snapshot = PurseTerminal(clock=StepClock()).read(channel)
    assert snapshot.public.card_no == card_no and snapshot.public.issuer_id == desk.issuer.issuer_id
    assert snapshot.public.card_type == 0x03 and snapshot.public.registered
    assert snapshot.public.start_date == "20250301" and snapshot.public.expiry_date == "20350228"
    assert (snapshot.holder.name, snapshot.holder.id_number, snapshot.holder.phone) == (
        "ZHANG SAN",
        desk.id_numbers[0],
        "13800000000",
    )
    assert snapshot.balance == 0 and snapshot.online_seq == 0 and snapshot.offline_seq == 0

    # ADF 1002: EF 0005 needs the PIN the resident chose.
    _, locked, wrong = desk.send(
        chip, SELECT_SOCIAL, READ_EF0005, CommandAPDU(0x00, 0x20, 0x00, 0x00, encode_pin("1357"))
    )
    assert locked.sw == SW.SECURITY_NOT_SATISFIED and wrong.sw == 0x63C2
    _, verified, read = desk.send(
        chip, SELECT_SOCIAL, CommandAPDU(0x00, 0x20, 0x00, 0x00, encode_pin("2468")), READ_EF0005
    )
    assert verified.sw == SW.OK and read.sw == SW.OK
    social = SocialSecurityData.decode(read.data)
    assert (social.ss_number, social.name, social.insurance_flags, social.agency) == (
        desk.id_numbers[0],
        "ZHANG SAN",
        0x03,
        "310000",
    )
    with desk.uow() as uow:
        history = [(e.from_state, e.to_state, e.actor_id) for e in uow.session.query(CardEvent).order_by(CardEvent.id)]
    assert history == [
        (None, CardState.APPLIED, "clerk-1"),
        (CardState.APPLIED, CardState.PERSONALISED, "clerk-1"),
        (CardState.PERSONALISED, CardState.ACTIVE, "clerk-1"),
    ]


def test_issue_refusals_and_recovery(desk: Desk) -> None:
    card_no, chip = desk.new_card(0)
    # The resident holds a live card: no second one.
    with pytest.raises(Conflict, match="already holds a card"):
        desk.apply(desk.card(card_no).resident_id)
    # An issued chip is not a factory chip: issuing another card onto it is refused, the chip untouched.
    other = desk.apply(None)
    with InProcessChannel(chip) as channel, pytest.raises(Conflict, match="already an issued card"):
        desk.run(
            services.issue_card, desk.clerk, desk.keys, desk.vault, desk.issuer, channel, card_no=other, pin="1234"
        )
    assert desk.card(other).state is CardState.APPLIED
    # A chip with the wrong transport key refuses EXTERNAL AUTHENTICATE: the card stays applied.
    wrong_kt = type(desk.issuer_keys)(
        desk.issuer_keys.issuer_id, desk.issuer_keys.alg, {**desk.issuer_keys.keys, "KT": bytes(16)}
    )
    alien = Card.factory(CardKind.USER, wrong_kt.alg, wrong_kt.keys["KT"], bytes.fromhex("A1A2A3A4A5A6A7A8"))
    with InProcessChannel(alien) as channel, pytest.raises(CardRefused) as refused:
        desk.run(
            services.issue_card, desk.clerk, desk.keys, desk.vault, desk.issuer, channel, card_no=other, pin="1234"
        )
    assert refused.value.details["sw"] == "6300"
    assert desk.card(other).state is CardState.APPLIED

    # Personalised but not recorded (the commit was lost): issuing again records the chip as it is.
    class CommitLost(UnitOfWork):
        def commit(self) -> None:
            raise ConnectionError("the database went away")

    chip2 = desk.factory_chip()
    with (
        InProcessChannel(chip2) as channel,
        CommitLost(session_factory(desk.engine)) as uow,
        pytest.raises(ConnectionError),
    ):
        services.issue_card(uow, desk.clerk, desk.keys, desk.vault, desk.issuer, channel, card_no=other, pin="1234")
    assert desk.card(other).state is CardState.APPLIED
    with InProcessChannel(chip2) as channel:
        view = desk.run(
            services.issue_card, desk.clerk, desk.keys, desk.vault, desk.issuer, channel, card_no=other, pin="1234"
        )
    assert view.state is CardState.ACTIVE and not view.registered and view.purse_limit == 100_000


def test_batch_personalisation_with_progress(desk: Desk) -> None:
    card_nos = [desk.apply(None, CardType.STUDENT) for _ in range(3)]
    chips = [desk.factory_chip() for _ in range(2)]
    jobs = [
        services.PersonalisationJob(no, InProcessChannel(chip), "000000")
        for no, chip in zip(card_nos, chips, strict=False)
    ]
    used = InProcessChannel(chips[0])  # the third job gets a chip that is already issued by the first
    jobs.append(services.PersonalisationJob(card_nos[2], used, "000000"))
    ticks: list[tuple[int, int, str]] = []
    screen = io.StringIO()
    with progress_bar(len(jobs), "personalising", Console(file=screen, width=100)) as advance:

        def progress(done: int, total: int, label: str) -> None:
            ticks.append((done, total, label))
            advance(done, total, label)

        results = services.personalise_batch(
            desk.uow, desk.clerk, desk.keys, desk.vault, desk.issuer, jobs, clock=desk.clock, progress=progress
        )
    assert "3/3" in screen.getvalue()
    for job in jobs:
        job.channel.close()
    assert ticks == [(1, 3, card_nos[0]), (2, 3, card_nos[1]), (3, 3, card_nos[2])]
    assert [r.error is None for r in results] == [True, True, False]
    assert results[2].error is not None and results[2].error.startswith("conflict")
    assert [desk.card(no).state for no in card_nos] == [CardState.PERSONALISED] * 2 + [CardState.APPLIED]
    view = desk.run(services.activate_card, desk.clerk, card_no=card_nos[0])
    assert view.state is CardState.ACTIVE


def test_personalise_a_psam_and_buy_with_it(desk: Desk) -> None:
    psam_chip = desk.factory_chip(CardKind.PSAM)
    with InProcessChannel(psam_chip) as channel:
        with pytest.raises(Forbidden):
            desk.run(services.personalise_psam, desk.clerk, desk.keys, desk.issuer, channel, term_id="031000000001")
        view = desk.run(
            services.personalise_psam, desk.supervisor, desk.keys, desk.issuer, channel, term_id="031000000001"
        )
    assert view.term_id == "031000000001" and desk.count(Psam) == 1
    with InProcessChannel(desk.factory_chip(CardKind.PSAM)) as channel, pytest.raises(Conflict):
        desk.run(services.personalise_psam, desk.supervisor, desk.keys, desk.issuer, channel, term_id="031000000001")

    card_no, chip = desk.new_card(1)
    desk.load(chip, 1_000, "psam-test-load")
    psam = PsamCard(InProcessChannel(psam_chip))
    assert psam.open() == bytes.fromhex("031000000001")
    terminal = PurseTerminal(clock=desk.clock, psam=psam)
    with InProcessChannel(chip) as channel:
        bought = terminal.purchase(channel, 150)
    assert bought.mac2_ok is True and bought.balance_after == 850
    # The purchase TAC verifies through the keystore, as clearing will check it.
    record = bought.record
    assert desk.keys.verify_purchase_tac(
        desk.issuer.alg,
        1,
        bytes.fromhex(card_no),
        record.amount,
        0x06,
        bytes.fromhex(record.term_id),
        record.term_seq,
        bytes.fromhex(record.txn_date),
        bytes.fromhex(record.txn_time),
        bytes.fromhex(record.tac),
    )
