"""Purse transactions through real PC/SC (issue #3): cards in vpcd readers, the reader layer, and a PSAM.

Every exchange goes through pcscd and the vsmartcard vpcd driver: the user card is served in
``Virtual PCD 00 00`` and the PSAM in ``Virtual PCD 00 01`` by :class:`simulators.vpcd.VpcdSlot` in this
process, and the terminal reaches them with :class:`terminal.channel.PcscChannel`,
:func:`terminal.reader.wait_for_card` and :class:`terminal.reader.PcscCardSource`.

- :func:`test_end_to_end`: factory chips personalised over PC/SC, load, purchase, CAPP purchase, the log,
  APPLICATION BLOCK (reads work, purchases are refused), APPLICATION UNBLOCK, purchase again; both suites.
- :class:`TestTearing`: the card leaves the field at every APDU boundary of a load, a purchase and a CAPP
  purchase (before the command, after it with the answer lost, and at each physical write of DEBIT /
  CREDIT), is presented again, and the terminal's record, the card, the PSAM and the load host agree.
  The full matrix runs for both suites. Also: the wrong card after a tear, no card within the time limit
  (``unconfirmed``), and a PSAM that rejects MAC2.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import pytest
from pcsc_fixtures import vpcd_slot_in_use
from support import COUNTER_TERM_ID, PSAM_TERM_ID, StepClock, issue_card, vector_keys

from cardos import crypto, perso
from cardos.apdu import CommandAPDU
from cardos.batch import BatchRecord, RecordStatus
from cardos.card import Card, CardKind, LifeCycle
from cardos.crypto import Alg
from cardos.interface import ContactlessCard
from cardos.keyfile import IssuerKeys
from cardos.layout import (
    PSAM_ADF_FID,
    PURSE_AID,
    TXN_LOAD,
    TXN_PURCHASE,
    HolderData,
    KeyUsage,
    LogRecord,
    PublicData,
    TransitRecord,
)
from cardos.memory import Memory
from cardos.sw import SW
from simulators.pcscd import Pcscd
from simulators.vpcd import TapResult, TearMode, VpcdSlot
from terminal.cards import PsamCard, UserCard
from terminal.channel import Channel, InProcessChannel, PcscChannel, command_name
from terminal.errors import CardRemoved, CardStatusError, TransactionRefused
from terminal.loadhost import KeyFileLoadHost
from terminal.personalise import personalise
from terminal.purse import CardSnapshot, PurchaseResult, PurseTerminal
from terminal.reader import PcscCardSource, wait_for_card

pytestmark = pytest.mark.pcsc

ALGS = [Alg.DES, Alg.SM4]
CARD_READER = "Virtual PCD 00 00"
PSAM_READER = "Virtual PCD 00 01"
CARD_NO = "0310000000000001"
STRANGER_NO = "0310000000000002"
COUNTER_ID = bytes.fromhex(COUNTER_TERM_ID)
WAIT = 5.0
"""Seconds to wait for pcscd to show a card inserted in a vpcd slot."""
RECOVERY_TIMEOUT = 5.0
"""The terminal's wait for the card to come back: a re-insertion takes about 1 s (vpcd poll gap, pcscd poll)."""

PRESENT_AGAIN = "present the card again"
PRESENT_ORIGINAL = "present the original card"
LEFT_UNCONFIRMED = "the card left before the purchase could be confirmed"
MAC2_REJECTED = "the card's MAC2 was rejected by the PSAM; the record is kept for clearing"


# --- helpers -------------------------------------------------------------------------------------------


def _factory_card(keys: IssuerKeys, serial: str) -> Card:
    return Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], bytes.fromhex(serial))


def personalise_user_card(slot: VpcdSlot, keys: IssuerKeys, card_no: str, serial: str) -> Card:
    """Insert a FACTORY chip in ``slot`` and personalise it over PC/SC into an issued user card (left inserted)."""
    chip = _factory_card(keys, serial)
    holder = HolderData("ZHANG SAN", "110101199003071234", "13800000000")
    profile = perso.user_card_profile(keys, card_no=card_no, holder=holder)
    slot.insert(chip)
    with wait_for_card(slot.reader_name, WAIT) as channel:
        assert channel.atr == chip.atr
        with pytest.raises(CardStatusError) as no_purse:  # a factory chip has no purse application yet
            UserCard(channel).select_purse()
        assert no_purse.value.sw == SW.FILE_NOT_FOUND
        personalise(channel, keys.alg, keys.keys["KT"], perso.user_card_script(profile))
    assert chip.life_cycle is LifeCycle.ISSUED
    return chip


def personalise_psam(slot: VpcdSlot, keys: IssuerKeys) -> tuple[Card, PsamCard]:
    """Insert a FACTORY PSAM chip in ``slot``, personalise it over PC/SC, and open the terminal's channel to it."""
    chip = Card.factory(CardKind.PSAM, keys.alg, keys.keys["KT"], bytes.fromhex("D0D1D2D3D4D5D6D7"))
    slot.insert(chip)
    with wait_for_card(slot.reader_name, WAIT) as channel:
        personalise(channel, keys.alg, keys.keys["KT"], perso.psam_script_from_keys(keys, PSAM_TERM_ID))
    assert chip.life_cycle is LifeCycle.ISSUED
    psam = PsamCard(wait_for_card(slot.reader_name, WAIT))  # a fresh session, as a terminal opens it
    assert psam.open() == bytes.fromhex(PSAM_TERM_ID)
    return chip, psam


def log_of(record: BatchRecord) -> LogRecord:
    """The EF 0018 record a card writes for the transaction of ``record``."""
    return LogRecord(
        record.card_seq,
        record.amount,
        int(record.txn_type, 16),
        bytes.fromhex(record.term_id),
        bytes.fromhex(record.txn_date),
        bytes.fromhex(record.txn_time),
    )


def expected_tac(keys: IssuerKeys, record: BatchRecord) -> str:
    """The TAC clearing expects for ``record``, computed with the issuer's keys."""
    dtk = keys.card_key(KeyUsage.DTK, bytes.fromhex(record.card_no))
    txn_type = int(record.txn_type, 16)
    term_id, date4, time3 = (bytes.fromhex(v) for v in (record.term_id, record.txn_date, record.txn_time))
    if txn_type == TXN_LOAD:
        tac = crypto.load_tac(
            keys.alg, dtk, record.balance_before + record.amount, record.card_seq, record.amount, term_id, date4, time3
        )
    else:
        tac = crypto.purchase_tac(keys.alg, dtk, record.amount, txn_type, term_id, record.term_seq, date4, time3)
    return tac.hex().upper()


def sw_of(channel: Channel, cmd: CommandAPDU) -> int:
    return channel.transmit(cmd).sw


SELECT_PURSE = CommandAPDU(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256)
GET_BALANCE = CommandAPDU(0x80, 0x5C, 0x00, 0x02, b"", 4)


@dataclass
class Rig:
    """A personalised user card in slot 0, a personalised PSAM in slot 1, and what a terminal needs."""

    keys: IssuerKeys
    card: Card
    card_slot: VpcdSlot
    psam_chip: Card
    psam: PsamCard
    clock: StepClock = field(default_factory=StepClock)
    messages: list[str] = field(default_factory=list)
    on_present_again: Callable[[], None] | None = None
    """Called when the terminal asks for the card back (``None``: nobody presents it)."""

    @property
    def alg(self) -> Alg:
        return self.keys.alg

    def notify(self, message: str) -> None:
        self.messages.append(message)
        if message == PRESENT_AGAIN and self.on_present_again is not None:
            self.on_present_again()

    def terminal(self, recovery_timeout: float = RECOVERY_TIMEOUT) -> PurseTerminal:
        return PurseTerminal(
            clock=self.clock,
            psam=self.psam,
            card_source=PcscCardSource(CARD_READER),
            recovery_timeout=recovery_timeout,
            notify=self.notify,
        )

    def reinsert(self) -> None:
        """The holder brings the same card back into the field."""
        self.card_slot.insert(self.card)

    def connect(self) -> PcscChannel:
        """A channel to the card, putting it back into the field first if it left."""
        if self.card_slot.card is None:
            self.card_slot.insert(self.card)
        return wait_for_card(CARD_READER, WAIT)

    def swap(self, chip: ContactlessCard) -> None:
        """Take whatever is in the card slot out and put ``chip`` in."""
        self.card_slot.remove()
        self.card_slot.insert(chip)

    def snapshot(self) -> CardSnapshot:
        """Everything readable from the card, through PC/SC (GET BALANCE, the log, both counters)."""
        with self.connect() as channel:
            return PurseTerminal(clock=self.clock).read(channel)

    def psam_term_seq(self) -> int:
        """The term_seq persisted in the PSAM chip (read from a copy of its memory)."""
        copy = Card.from_memory(Memory.from_image(self.psam_chip.memory.to_image()))
        return copy.fs.term_seq(PSAM_ADF_FID)

    def damk(self) -> bytes:
        return self.keys.card_key(KeyUsage.DAMK, bytes.fromhex(CARD_NO))


@contextlib.contextmanager
def open_rig(alg: Alg, card_slot: VpcdSlot, psam_slot: VpcdSlot) -> Iterator[Rig]:
    keys = vector_keys(alg)
    card = personalise_user_card(card_slot, keys, CARD_NO, "C0C1C2C3C4C5C6C7")
    psam_chip, psam = personalise_psam(psam_slot, keys)
    try:
        yield Rig(keys, card, card_slot, psam_chip, psam)
    finally:
        psam.channel.close()


def transit_update(line_id: int, station: int) -> Callable[[PublicData, bytes], bytes]:
    def tap_in(public: PublicData, old: bytes) -> bytes:
        assert public.card_no == CARD_NO
        return TransitRecord(
            trip_state=TransitRecord.TRIP_IN,
            line_id=line_id,
            entry_station=station,
            entry_term_id=bytes.fromhex(PSAM_TERM_ID),
        ).encode()

    return tap_in


# --- 1. end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS, ids=lambda a: a.name)
def test_end_to_end(alg: Alg, vpcd_slot: VpcdSlot, vpcd_slot1: VpcdSlot) -> None:
    with open_rig(alg, vpcd_slot, vpcd_slot1) as rig:
        keys = rig.keys
        term = rig.terminal()
        host = KeyFileLoadHost(keys, rig.clock)
        channel = rig.connect()
        try:
            loaded = term.load(channel, 10_000, host, term_id=COUNTER_ID, request_id="e2e-load")
            assert (loaded.record.status, loaded.record.txn_type) == (RecordStatus.OK, "02")
            assert (loaded.record.balance_before, loaded.balance_after, loaded.record.card_seq) == (0, 10_000, 0)
            assert loaded.record.tac == expected_tac(keys, loaded.record)
            assert host.confirmed == [loaded.record]

            bought = term.purchase(channel, 150)
            assert bought.mac2_ok is True and bought.balance_after == 9_850
            assert (bought.record.txn_type, bought.record.card_seq, bought.record.term_seq) == ("06", 0, 1)
            assert bought.record.term_id == PSAM_TERM_ID
            assert bought.record.tac == expected_tac(keys, bought.record)

            seen: list[bytes] = []

            def tap_in(public: PublicData, old: bytes) -> bytes:
                seen.append(old)
                return transit_update(12, 3)(public, old)

            capp = term.purchase(channel, 200, capp_record=tap_in)
            assert seen == [bytes(48)]  # the terminal read the (empty) transit record before INITIALIZE
            assert capp.mac2_ok is True and capp.balance_after == 9_650
            assert (capp.record.txn_type, capp.record.card_seq, capp.record.term_seq) == ("09", 1, 2)
            assert capp.record.tac == expected_tac(keys, capp.record)
            assert rig.psam_term_seq() == 2

            snap = term.read(channel)
            assert snap.public.card_no == CARD_NO and snap.holder.name == "ZHANG SAN"
            assert (snap.balance, snap.online_seq, snap.offline_seq) == (9_650, 1, 2)
            assert snap.log == [log_of(capp.record), log_of(bought.record), log_of(loaded.record)]
            assert snap.transit is not None
            assert (snap.transit.trip_state, snap.transit.line_id, snap.transit.entry_station) == (1, 12, 3)

            # APPLICATION BLOCK (temporary), with the line MAC under the card's DAMK.
            user = UserCard(channel)
            user.line_mac_command(0x84, 0x1E, 0x00, 0x00, b"", alg, rig.damk(), "APPLICATION BLOCK")
            assert sw_of(channel, SELECT_PURSE) == SW.APP_BLOCKED_TEMP
            assert user.read_public().card_no == CARD_NO  # reads still work
            assert user.read_log() == snap.log
            assert user.read_capp_record(1) == snap.transit.encode()
            assert sw_of(channel, GET_BALANCE) == SW.APP_LOCKED
            public = snap.public
            with pytest.raises(TransactionRefused) as refused:
                term.purchase(channel, 100, public=public)  # INITIALIZE in the blocked application
            assert refused.value.sw == SW.APP_LOCKED and "blocked" in refused.value.reason
            with pytest.raises(TransactionRefused) as refused_capp:
                term.purchase(channel, 0, public=public, capp_record=transit_update(12, 4))
            assert refused_capp.value.sw == SW.APP_LOCKED
            with pytest.raises(TransactionRefused) as refused_select:
                term.purchase(channel, 100)  # a terminal that SELECTs first sees 6283
            assert refused_select.value.sw == SW.APP_BLOCKED_TEMP
            with pytest.raises(TransactionRefused):
                term.load(channel, 100, host, term_id=COUNTER_ID, request_id="e2e-blocked")
            assert host.confirmed == [loaded.record]
            assert rig.psam_term_seq() == 2  # nothing reached the PSAM

            # APPLICATION UNBLOCK, then purchases work again.
            user.line_mac_command(0x84, 0x18, 0x00, 0x00, b"", alg, rig.damk(), "APPLICATION UNBLOCK")
            again = term.purchase(channel, 50)
            assert again.mac2_ok is True and again.balance_after == 9_600
            assert (again.record.card_seq, again.record.term_seq) == (2, 3)
            assert again.record.tac == expected_tac(keys, again.record)
        finally:
            channel.close()

        # A new session (the card was powered off and on): everything persisted on the chip.
        final = rig.snapshot()
        assert (final.balance, final.online_seq, final.offline_seq) == (9_600, 1, 3)
        assert final.log == [log_of(r.record) for r in (again, capp, bought, loaded)]


# --- 2. tearing ----------------------------------------------------------------------------------------


class Kind(Enum):
    LOAD = "load"
    PURCHASE = "purchase"
    CAPP = "capp"


COMMANDS: dict[Kind, tuple[str, ...]] = {
    Kind.LOAD: ("SELECT", "READ BINARY", "INITIALIZE FOR LOAD", "CREDIT FOR LOAD"),
    Kind.PURCHASE: ("SELECT", "READ BINARY", "INITIALIZE FOR PURCHASE", "DEBIT FOR PURCHASE"),
    Kind.CAPP: (
        "SELECT",
        "READ BINARY",
        "READ RECORD",
        "INITIALIZE FOR CAPP PURCHASE",
        "UPDATE CAPP DATA CACHE",
        "DEBIT FOR PURCHASE",
    ),
}
"""The card APDUs of each transaction, in order (the PSAM's and the host's are not counted)."""
FINAL_WRITES = {Kind.LOAD: 8, Kind.PURCHASE: 8, Kind.CAPP: 10}
"""Physical writes of CREDIT / DEBIT: ``2n + 2`` for ``n`` cells (purse, log, proof, and EF 0017 for CAPP).
The other commands write nothing, so only the last command is torn at its writes."""


def _tear_cases() -> list[object]:
    cases: list[object] = []
    for kind, commands in COMMANDS.items():
        last = len(commands) - 1
        for index, name in enumerate(commands):
            short = name.lower().replace(" ", "-")
            for mode in (TearMode.BEFORE_COMMAND, TearMode.DROP_ANSWER):
                cases.append(pytest.param(kind, index, mode, None, id=f"{kind.value}-{index}-{short}-{mode.value}"))
            if index == last:
                for write in range(1, FINAL_WRITES[kind] + 1):
                    case_id = f"{kind.value}-{index}-{short}-at-write-{write}"
                    cases.append(pytest.param(kind, index, TearMode.AT_WRITE, write, id=case_id))
    return cases


TEAR_CASES = _tear_cases()
_case_numbers = itertools.count(1)


def _nth_command(n: int) -> Callable[[bytes], bool]:
    """A tear filter that accepts the ``n``-th command (1-based) the card receives after arming."""
    seen = itertools.count(1)
    return lambda _apdu: next(seen) == n


def _committed(mode: TearMode, write: int | None, writes: int) -> bool:
    """Whether a tear during the final command leaves it done: after the commit mark (write ``n + 1``)
    recovery replays the journal, before it nothing happened."""
    if mode is TearMode.BEFORE_COMMAND:
        return False
    if mode is TearMode.DROP_ANSWER:
        return True
    assert write is not None
    return write >= writes // 2 + 1


@pytest.fixture(scope="class", params=ALGS, ids=lambda a: a.name)
def rig(request: pytest.FixtureRequest, pcscd: Pcscd) -> Iterator[Rig]:
    """A card with 2,000 yuan and a PSAM, personalised over PC/SC, kept in the vpcd slots for the class."""
    with (
        vpcd_slot_in_use(0) as card_slot,
        vpcd_slot_in_use(1) as psam_slot,
        open_rig(request.param, card_slot, psam_slot) as made,
    ):
        with made.connect() as channel:
            host = KeyFileLoadHost(made.keys, made.clock)
            made.terminal().load(channel, 200_000, host, term_id=COUNTER_ID, request_id="rig")
        yield made


class TestTearing:
    """The card leaves the field inside a transaction; nothing is created or lost."""

    @pytest.fixture(autouse=True)
    def _fresh(self, rig: Rig) -> Iterator[None]:
        rig.messages.clear()
        rig.on_present_again = rig.reinsert
        yield
        rig.card_slot.cancel_tear()
        rig.on_present_again = None

    @pytest.mark.parametrize(("kind", "index", "mode", "write"), TEAR_CASES)
    def test_tear(self, rig: Rig, kind: Kind, index: int, mode: TearMode, write: int | None) -> None:
        case = next(_case_numbers)
        amount = 100 + case
        before = rig.snapshot()
        term_seq_before = rig.psam_term_seq()
        host = KeyFileLoadHost(rig.keys, rig.clock)
        term = rig.terminal()
        capp = transit_update(1000 + case, index) if kind is Kind.CAPP else None
        commands = COMMANDS[kind]
        final = index == len(commands) - 1

        def run(channel: Channel) -> PurchaseResult:
            if kind is Kind.LOAD:
                return term.load(channel, amount, host, term_id=COUNTER_ID, request_id=f"tear-{case}")
            return term.purchase(channel, amount, capp_record=capp)

        channel = rig.connect()
        tear = rig.card_slot.tear(mode, write_index=write, when=_nth_command(index + 1))
        try:
            if final:
                result = run(channel)
            else:
                with pytest.raises(CardRemoved):
                    run(channel)
        finally:
            channel.close()
        assert tear.applied and tear.fired, tear.error
        assert tear.command is not None
        assert command_name(CommandAPDU.parse(tear.command)) == commands[index]

        if not final:
            # A clean failure: the terminal did not wait for the card, nothing was charged.
            assert rig.messages == []
            assert host.confirmed == []
            after = rig.snapshot()
            assert after.balance == before.balance
            assert (after.online_seq, after.offline_seq) == (before.online_seq, before.offline_seq)
            assert after.log == before.log and after.transit == before.transit
            init_sam_sent = commands[index] == "UPDATE CAPP DATA CACHE"
            assert rig.psam_term_seq() == term_seq_before + init_sam_sent
            return

        committed = _committed(mode, write, FINAL_WRITES[kind])
        record = result.record
        assert rig.messages == [PRESENT_AGAIN]
        assert record.status is (RecordStatus.PROOF if committed else RecordStatus.OK)
        assert record.amount == amount and record.balance_before == before.balance
        assert record.tac == expected_tac(rig.keys, record)
        # The recovered channel is live: the card's state through it, then through a new session.
        try:
            latest = UserCard(result.channel).read_log(1)
        finally:
            result.channel.close()
        assert latest == [log_of(record)]
        after = rig.snapshot()
        assert after.log[0] == log_of(record) and after.log[1:] == before.log[: len(after.log) - 1]
        if kind is Kind.LOAD:
            assert record.txn_type == "02" and record.card_seq == before.online_seq
            assert result.balance_after == after.balance == before.balance + amount
            assert (after.online_seq, after.offline_seq) == (before.online_seq + 1, before.offline_seq)
            assert host.confirmed == [record]  # the host checked the TAC of exactly this load
            assert record.term_seq == (1 if committed else 2)  # a retried load asked the host twice
            assert rig.psam_term_seq() == term_seq_before
        else:
            assert record.txn_type == ("09" if kind is Kind.CAPP else "06")
            assert record.card_seq == before.offline_seq and record.term_id == PSAM_TERM_ID
            assert result.mac2_ok is True  # the PSAM accepted the MAC2 (from DEBIT or from the proof)
            assert result.balance_after == after.balance == before.balance - amount
            assert (after.online_seq, after.offline_seq) == (before.online_seq, before.offline_seq + 1)
            # A retried purchase used a second term_seq; the record carries the PSAM's latest.
            assert record.term_seq == rig.psam_term_seq() == term_seq_before + (1 if committed else 2)
            if capp is not None:
                assert after.transit is not None
                assert after.transit.encode() == capp(before.public, b"")

    @pytest.mark.parametrize("mode", [TearMode.BEFORE_COMMAND, TearMode.DROP_ANSWER], ids=lambda m: m.value)
    def test_no_card_within_the_time_limit_leaves_the_record_unconfirmed(self, rig: Rig, mode: TearMode) -> None:
        rig.on_present_again = None
        before = rig.snapshot()
        term = rig.terminal(recovery_timeout=1.0)
        channel = rig.connect()
        tear = rig.card_slot.tear(mode, when=lambda apdu: apdu[:2] == b"\x80\x54")
        try:
            result = term.purchase(channel, 77)
        finally:
            channel.close()
        assert tear.fired
        record = result.record
        assert rig.messages == [PRESENT_AGAIN, LEFT_UNCONFIRMED]
        assert record.status is RecordStatus.UNCONFIRMED and record.tac == ""
        assert result.mac2_ok is None and result.balance_after is None
        assert record.card_seq == before.offline_seq and record.balance_before == before.balance

        after = rig.snapshot()  # the card comes back later (clearing holds the record as pending)
        if mode is TearMode.DROP_ANSWER:
            # The card did the purchase: its log, balance and proof complete the record.
            assert after.balance == before.balance - 77 and after.offline_seq == before.offline_seq + 1
            assert after.log[0] == log_of(record)
            with rig.connect() as channel:
                user = UserCard(channel)
                user.select_purse()
                proof = user.get_transaction_proof(TXN_PURCHASE, record.card_seq)
            assert proof is not None and proof[1].hex().upper() == expected_tac(rig.keys, record)
        else:
            # DEBIT never reached the card: nothing moved, and its next purchase reuses the seq.
            assert after.balance == before.balance and after.offline_seq == before.offline_seq
            assert after.log == before.log

    def test_wrong_card_is_refused_then_the_original_recovers(self, rig: Rig) -> None:
        stranger = issue_card(rig.keys, STRANGER_NO, serial=bytes.fromhex("E0E1E2E3E4E5E6E7"))
        stranger_writes = stranger.memory.writes
        before = rig.snapshot()
        tapped: list[TapResult] = []

        def stranger_then_original() -> None:
            # Someone taps another card first (held until the terminal lets it go), then the holder's.
            tapped.extend(rig.card_slot.tap([stranger], dwell=10.0))
            rig.card_slot.insert(rig.card)

        helper = threading.Thread(target=stranger_then_original, daemon=True)
        rig.on_present_again = helper.start
        term = rig.terminal(recovery_timeout=15.0)
        channel = rig.connect()
        tear = rig.card_slot.tear(TearMode.DROP_ANSWER, when=lambda apdu: apdu[:2] == b"\x80\x54")
        try:
            result = term.purchase(channel, 88)
        finally:
            channel.close()
            helper.join(15.0)
        assert tear.fired
        assert rig.messages == [PRESENT_AGAIN, PRESENT_ORIGINAL]
        # The stranger was only read (SELECT, READ BINARY 0015), then released by the terminal.
        assert [(t.card, t.commands, t.reason) for t in tapped] == [(stranger, 2, "power-off")]
        assert stranger.memory.writes == stranger_writes
        record = result.record
        assert record.status is RecordStatus.PROOF and result.mac2_ok is True
        assert record.card_no == CARD_NO and record.tac == expected_tac(rig.keys, record)
        after = rig.snapshot()
        assert after.balance == before.balance - 88 and after.log[0] == log_of(record)

    def test_a_proof_of_another_terminal_is_not_trusted(self, rig: Rig) -> None:
        """The card comes back having made another purchase with the same seq elsewhere: GET TRANSACTION
        PROOF answers for that one, EF 0018 shows it is not ours, and the purchase is done again."""
        before = rig.snapshot()
        other_psam = Card.factory(CardKind.PSAM, rig.alg, rig.keys.keys["KT"], bytes.fromhex("D8D9DADBDCDDDEDF"))
        other: list[PurchaseResult] = []

        def bought_elsewhere_then_back() -> None:
            with InProcessChannel(other_psam) as psam_channel:
                personalise(
                    psam_channel,
                    rig.alg,
                    rig.keys.keys["KT"],
                    perso.psam_script_from_keys(rig.keys, "031000000099"),
                )
            elsewhere = PurseTerminal(clock=rig.clock, psam=PsamCard(InProcessChannel(other_psam)))
            with InProcessChannel(rig.card) as card_channel:
                other.append(elsewhere.purchase(card_channel, 55))
            rig.reinsert()

        rig.on_present_again = bought_elsewhere_then_back
        term = rig.terminal()
        channel = rig.connect()
        tear = rig.card_slot.tear(TearMode.BEFORE_COMMAND, when=lambda apdu: apdu[:2] == b"\x80\x54")
        try:
            result = term.purchase(channel, 66)
        finally:
            channel.close()
        assert tear.fired and len(other) == 1
        assert other[0].record.card_seq == before.offline_seq  # the same seq as our lost DEBIT
        record = result.record
        assert record.status is RecordStatus.OK and result.mac2_ok is True
        assert record.card_seq == before.offline_seq + 1
        after = rig.snapshot()
        assert after.balance == before.balance - 55 - 66
        assert after.log[:2] == [log_of(record), log_of(other[0].record)]

    # --- 3. the PSAM rejects a bad MAC2 ------------------------------------------------------------------

    def test_psam_rejects_a_bad_mac2_and_the_record_is_kept(self, rig: Rig) -> None:
        class CorruptMac2:
            """The real card, except that MAC2 in DEBIT's answer (``TAC 4 ‖ MAC2 4``) is altered."""

            def __init__(self, inner: Card) -> None:
                self.inner = inner
                self.corrupted = 0

            @property
            def atr(self) -> bytes:
                return self.inner.atr

            def power_on(self) -> None:
                self.inner.power_on()

            def power_off(self) -> None:
                self.inner.power_off()

            def transmit(self, apdu: bytes) -> bytes:
                response = self.inner.transmit(apdu)
                if apdu[:2] == b"\x80\x54" and response[-2:] == b"\x90\x00":
                    self.corrupted += 1
                    return response[:4] + bytes(b ^ 0x5A for b in response[4:8]) + response[8:]
                return response

        before = rig.snapshot()
        wrapper = CorruptMac2(rig.card)
        rig.swap(wrapper)
        term = rig.terminal()
        try:
            with wait_for_card(CARD_READER, WAIT) as channel:
                result = term.purchase(channel, 99)
        finally:
            rig.swap(rig.card)
        assert wrapper.corrupted == 1
        assert result.mac2_ok is False
        assert MAC2_REJECTED in rig.messages
        record = result.record
        assert record.status is RecordStatus.OK and record.tac == expected_tac(rig.keys, record)
        # CREDIT SAM ended the PSAM's session despite the 9302.
        assert sw_of(rig.psam.channel, CommandAPDU(0x80, 0x72, 0x00, 0x00, bytes(4))) == SW.CONDITIONS_NOT_SATISFIED
        after = rig.snapshot()
        assert after.balance == before.balance - 99 and after.log[0] == log_of(record)
        assert record.txn_type == f"{TXN_PURCHASE:02X}"
