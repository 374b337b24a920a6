"""Purse transactions in-process: load, purchase, CAPP purchase, tear recovery, wrong card, bad MAC2."""

from __future__ import annotations

import pytest
from support import COUNTER_TERM_ID, StepClock, issue_card, issue_psam, vector_keys

from cardos import crypto
from cardos.batch import RecordStatus
from cardos.card import Card
from cardos.crypto import Alg
from cardos.layout import PublicData, TransitRecord
from cardos.memory import Memory
from terminal.cards import PsamCard, UserCard
from terminal.channel import InProcessChannel
from terminal.errors import CardRemoved, HostRefused, TransactionRefused
from terminal.field import InProcessField
from terminal.loadhost import KeyFileLoadHost
from terminal.purse import PurseTerminal

ALGS = [Alg.DES, Alg.SM4]


def _terminal(alg: Alg, field: InProcessField | None = None) -> tuple[PurseTerminal, Card, KeyFileLoadHost]:
    keys = vector_keys(alg)
    psam = issue_psam(keys)
    clock = StepClock()
    term = PurseTerminal(clock=clock, psam=PsamCard(InProcessChannel(psam)), card_source=field)
    return term, psam, KeyFileLoadHost(keys, clock)


def _balance(card: Card) -> int:
    with InProcessChannel(card) as channel:
        user = UserCard(channel)
        user.select_purse()
        return user.get_balance()


def _clone(card: Card) -> Card:
    return Card.from_memory(Memory.from_image(card.memory.to_image()))


@pytest.mark.parametrize("alg", ALGS)
def test_load_purchase_capp_and_read(alg: Alg) -> None:
    keys = vector_keys(alg)
    card = issue_card(keys)
    term, _, host = _terminal(alg)
    channel = InProcessChannel(card)
    loaded = term.load(channel, 10_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="r1")
    assert loaded.record.status is RecordStatus.OK and loaded.record.balance_before == 0
    assert loaded.balance_after == 10_000 and host.confirmed == [loaded.record]
    bought = term.purchase(channel, 150)
    assert bought.mac2_ok is True and bought.balance_after == 9_850
    assert bought.record.card_seq == 0 and bought.record.term_seq == 1 and bought.record.txn_type == "06"

    def tap_in(public: PublicData, old: bytes) -> bytes:
        return TransitRecord(trip_state=1, line_id=12, entry_station=3).encode()

    capp = term.purchase(channel, 0, capp_record=tap_in)
    assert capp.record.txn_type == "09" and capp.record.card_seq == 1 and capp.mac2_ok
    snap = term.read(channel)
    assert snap.balance == 9_850 and snap.online_seq == 1 and snap.offline_seq == 2
    assert [r.txn_type for r in snap.log] == [0x09, 0x06, 0x02]
    assert snap.transit is not None and snap.transit.trip_state == 1 and snap.transit.line_id == 12
    # The purchase TAC verifies with the issuer's keys, as clearing will check it.
    dtk = keys.card_key(0x04, bytes.fromhex(snap.public.card_no))
    rec = bought.record
    tac = crypto.purchase_tac(
        alg,
        dtk,
        rec.amount,
        0x06,
        bytes.fromhex(rec.term_id),
        rec.term_seq,
        bytes.fromhex(rec.txn_date),
        bytes.fromhex(rec.txn_time),
    )
    assert tac.hex().upper() == rec.tac


@pytest.mark.parametrize("alg", ALGS)
def test_refusals_move_no_money(alg: Alg) -> None:
    keys = vector_keys(alg)
    card = issue_card(keys, registered=False)
    term, _, host = _terminal(alg)
    channel = InProcessChannel(card)
    with pytest.raises(TransactionRefused, match="insufficient balance"):
        term.purchase(channel, 1)
    with pytest.raises(TransactionRefused, match="limit"):
        term.load(channel, 100_001, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="r")
    term.load(channel, 100_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="r2")
    assert _balance(card) == 100_000


@pytest.mark.parametrize("alg", ALGS)
def test_host_refuses_a_card_of_another_issuer(alg: Alg) -> None:
    other = vector_keys(alg)
    wrong = type(other)(other.issuer_id, alg, {**other.keys, "MLK": bytes(16)})
    card = issue_card(other)
    term, _, _ = _terminal(alg)
    with pytest.raises(HostRefused):
        term.load(
            InProcessChannel(card),
            10,
            KeyFileLoadHost(wrong, StepClock()),
            term_id=bytes.fromhex(COUNTER_TERM_ID),
            request_id="x",
        )
    assert _balance(card) == 0


DEBIT_TEARS = [(False, k) for k in (None, *range(1, 9))] + [(True, k) for k in (None, *range(1, 11))]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize(("capp", "tear_at_write"), DEBIT_TEARS)
def test_tear_during_debit_is_recovered(alg: Alg, capp: bool, tear_at_write: int | None) -> None:
    """The card leaves during DEBIT: at each of its writes (8 for a purchase: purse, log, proof journalled;
    10 for a CAPP purchase, which also writes EF 0017), or after its commit with the answer lost."""
    keys = vector_keys(alg)
    card = issue_card(keys)
    field = InProcessField()
    term, _, host = _terminal(alg, field)
    term.load(InProcessChannel(card), 5_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l")

    class TearingCard:
        """Passes APDUs to the card; at DEBIT, tears (at a write, or after the commit, answer lost)."""

        def __init__(self, inner: Card) -> None:
            self.inner = inner

        @property
        def atr(self) -> bytes:
            return self.inner.atr

        def power_on(self) -> None:
            self.inner.power_on()

        def power_off(self) -> None:
            self.inner.power_off()

        def transmit(self, apdu: bytes) -> bytes:
            if apdu[:2] == b"\x80\x54":
                if tear_at_write is None:
                    self.inner.transmit(apdu)
                    from cardos.memory import PowerLoss

                    raise PowerLoss("answer lost")
                self.inner.memory.arm_tear(tear_at_write)
            return self.inner.transmit(apdu)

    field.present(card)  # the original card comes back
    record_fn = (lambda p, old: TransitRecord(trip_state=1).encode()) if capp else None
    result = term.purchase(InProcessChannel(TearingCard(card)), 200, capp_record=record_fn)
    balance = _balance(card)
    assert balance == 4_800  # exactly one debit, whether recovered by proof or retried
    assert result.record.status in (RecordStatus.PROOF, RecordStatus.OK)
    assert result.mac2_ok is True
    assert not card.memory.tear_armed  # the tear really happened inside DEBIT
    if tear_at_write is None:
        assert result.record.status is RecordStatus.PROOF


@pytest.mark.parametrize("alg", ALGS)
def test_wrong_card_is_refused_then_unconfirmed(alg: Alg) -> None:
    keys = vector_keys(alg)
    card = issue_card(keys)
    stranger = issue_card(keys, "0310000000000002")
    field = InProcessField([stranger])
    term, _, host = _terminal(alg, field)
    term.recovery_timeout = 0.5
    messages: list[str] = []
    term.notify = messages.append
    term.load(InProcessChannel(card), 1_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l")

    class LeavesAfterDebit:
        atr = card.atr

        def power_on(self) -> None:
            card.power_on()

        def power_off(self) -> None:
            card.power_off()

        def transmit(self, apdu: bytes) -> bytes:
            response = card.transmit(apdu)
            if apdu[:2] == b"\x80\x54":
                from cardos.memory import PowerLoss

                raise PowerLoss("answer lost")
            return response

    result = term.purchase(InProcessChannel(LeavesAfterDebit()), 100)
    assert "present the original card" in messages
    assert result.record.status is RecordStatus.UNCONFIRMED and result.record.tac == ""
    assert _balance(card) == 900 and _balance(stranger) == 0


@pytest.mark.parametrize("alg", ALGS)
def test_card_gone_before_debit_is_a_clean_failure(alg: Alg) -> None:
    keys = vector_keys(alg)
    card = issue_card(keys)
    term, _, host = _terminal(alg)
    term.load(InProcessChannel(card), 1_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l")
    card.memory.arm_tear(None)
    channel = InProcessChannel(card)
    UserCard(channel).select_purse()
    channel.close()
    with pytest.raises(CardRemoved):
        term.purchase(channel, 100)
    assert _balance(card) == 1_000


@pytest.mark.parametrize("alg", ALGS)
def test_psam_rejects_bad_mac2_and_record_is_kept(alg: Alg) -> None:
    keys = vector_keys(alg)
    card = issue_card(keys)
    term, _, host = _terminal(alg)
    term.load(InProcessChannel(card), 1_000, host, term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l")

    class CorruptMac2:
        atr = card.atr

        def power_on(self) -> None:
            card.power_on()

        def power_off(self) -> None:
            card.power_off()

        def transmit(self, apdu: bytes) -> bytes:
            response = card.transmit(apdu)
            if apdu[:2] == b"\x80\x54" and response[-2:] == b"\x90\x00":
                return response[:4] + bytes(b ^ 0xFF for b in response[4:8]) + response[8:]
            return response

    messages: list[str] = []
    term.notify = messages.append
    result = term.purchase(InProcessChannel(CorruptMac2()), 100)
    assert result.mac2_ok is False and result.record.status is RecordStatus.OK and result.record.tac
    assert any("MAC2" in m for m in messages)
