"""``onecard demo``: a simulated city day on the embedded default (SQLite, no Redis, in-process readers unless
``--pcsc``).

The day, all of it seeded (``--seed``) and timed by a simulated clock on ``--date`` (never the wall clock):

1. a fresh database ``demo/<date>/onecard.db`` (recreated each run, migrated), operators (two bus companies,
   water, electricity, gas, the issuer) and their devices registered through :mod:`clearing.registry`;
2. at the service counter (:mod:`issuance.services`): residents registered and linked to social security, cards
   applied for and issued on factory chips (registered and anonymous, adult / student / senior / disabled),
   loads through the back office as load host;
3. buses: :class:`terminal.validator.Validator` on three lines (two flat-fare lines of bus company A with
   transfers, a daily cap and concessions; a distance line of bus company B with tap-in / tap-out), repeat taps,
   a stolen card on the validators' hotlist, a card pulled away during DEBIT and presented again (a tear);
4. utility bills (water, electricity, gas) created in :mod:`clearing.bills` and paid at a
   :class:`terminal.kiosk.Kiosk` through the device API;
5. a card reported lost at 13:00 (a validator that has not heard of it yet still takes it) and replaced;
6. every device uploads its batches through the real device API (``api.app.create_app``, signed as
   docs/device-api.md says) after midnight — except one validator, which uploads the next morning: its records
   are late and clear on the next day;
7. clearing, settlement and reconciliation of the day (and of the next, for the late validator); reports in
   JSON, CSV, XLSX and PDF under ``reports/<date>/`` (and ``reports/<date+1>/``), the uploaded batches' exact
   bytes under ``reports/<date>/batches/``; rich tables of the outcome.

Every card meets a terminal through one :class:`CardReaders` (the counter's issuing and loads, the validators'
taps, the kiosks' payments, the tear and its recovery): :class:`InProcessReaders` by default, or with ``--pcsc``
:class:`PcscReaders`, which put each card into vpcd slot 0 (``Virtual PCD 00 00``, pcscd with the vsmartcard vpcd
driver) while it is presented and take it out afterwards; the terminals reach it through
:class:`terminal.channel.PcscChannel`. The validators' and kiosks' PSAMs are personalised through the same readers
(vpcd slot 1, ``Virtual PCD 00 01``, with ``--pcsc``), then stay in-process: six PSAMs sharing one slot would need a
PSAM swap, two more reader polls, on almost every tap.

Two runs with the same arguments write byte-identical report files, with or without ``--pcsc``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import random
import shutil
import time as wall_time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # starlette's note about httpx: the in-process client works as it is
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.app import create_app
from api.device_auth import current_time
from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from backoffice.settings import Settings
from cardos import perso
from cardos.batch import Batch, BatchRecord
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from clearing import bills, intake
from clearing.registry import import_registry, parse_registry_file, publish_fare_table
from clearing.reports import RENDERERS, day_report
from clearing.runs import ClearingEnv, RunState, run_in_process
from issuance import services
from issuance.access import Role, Staff
from issuance.idnumber import check_character
from issuance.keys import InMemoryKeystore
from issuance.keystore import AesGcmSealer
from issuance.lifecycle import CardType, InsuredScheme
from issuance.loadhost import load_records
from issuance.pii import PersonalDataVault
from onecard_cli.errors import CliError
from simulators.pcscd import READER_CONF_DIR, PcscdError, ensure_pcscd, find_pcscd, find_vpcd_config, vpcd_lock
from simulators.vpcd import VpcdSlot
from terminal.cards import PsamCard
from terminal.channel import Channel, InProcessChannel, PcscChannel
from terminal.clock import ClockGuard
from terminal.errors import TerminalError, WaitTimeout
from terminal.fares import FareTable
from terminal.kiosk import Kiosk, KioskConfig, KioskRefused
from terminal.personalise import personalise
from terminal.reader import wait_for_card, wait_for_removal
from terminal.store import DeviceStore, HotlistEntry
from terminal.uplink import DeviceClient, HttpxTransport
from terminal.validator import TapOutcome, TapStatus, Validator, ValidatorConfig

CST = timezone(timedelta(hours=8))
CITY = "0310"
ISSUER_ID = bytes.fromhex("0310000000000000")
SURNAMES = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU"]
GIVEN = ["WEI", "FANG", "NA", "MIN", "JING", "LEI", "QIANG", "YAN", "JUN", "HUI"]
STREETS = ["Renmin Road", "Jiefang Road", "Zhongshan Road", "Heping Street", "Xinhua Road"]
CARD_TYPES = [CardType.ADULT] * 6 + [CardType.STUDENT] * 2 + [CardType.SENIOR, CardType.DISABLED]
COUNTER = "COUNTER-01"
LATE = "BUSA-V02"
"""The validator that uploads the next morning."""
UTILITIES = (("water", "OP-WATER", "WATER-K01"), ("electricity", "OP-ELEC", "ELEC-K01"), ("gas", "OP-GAS", "GAS-K01"))
"""utility, its company, the company's kiosk."""


@dataclass(frozen=True)
class DeviceSpec:
    """A device of the demo city."""

    device_id: str
    operator_id: str
    kind: str
    term_id: str
    line_id: int = 0
    stations: tuple[int, ...] = (1,)


DEVICES = (
    DeviceSpec("BUSA-V01", "OP-BUS-A", "validator", "031000000101", 12),
    DeviceSpec("BUSA-V02", "OP-BUS-A", "validator", "031000000102", 15),
    DeviceSpec("BUSB-V01", "OP-BUS-B", "validator", "031000000201", 301, (1, 2, 3, 4, 5)),
    DeviceSpec("WATER-K01", "OP-WATER", "kiosk", "031000000301"),
    DeviceSpec("ELEC-K01", "OP-ELEC", "kiosk", "031000000401"),
    DeviceSpec("GAS-K01", "OP-GAS", "kiosk", "031000000501"),
    DeviceSpec(COUNTER, "OP-ISSUER", "counter", "031000009001"),
)
FARES: dict[str, dict[str, Any]] = {
    "OP-BUS-A": {
        "version": "demo-A.1",
        "operator_id": "OP-BUS-A",
        "service_day_starts": "04:00",
        "daily_cap": 800,
        "transfer": {"window_minutes": 90, "max_transfers": 1, "discount": 100},
        "peak_hours": [["07:00", "09:00"], ["17:00", "19:00"]],
        "concessions": {"student": {"percent": 50}, "senior": {"percent": 0, "peak_percent": 100},
                        "disabled": {"percent": 0}},
        "lines": {"12": {"name": "12", "kind": "flat", "fare": 200},
                  "15": {"name": "15", "kind": "flat", "fare": 200}},
    },
    "OP-BUS-B": {
        "version": "demo-B.1",
        "operator_id": "OP-BUS-B",
        "service_day_starts": "04:00",
        "daily_cap": 1000,
        "transfer": {"window_minutes": 90, "max_transfers": 1, "discount": 100},
        "concessions": {"student": {"percent": 50}, "senior": {"percent": 0}, "disabled": {"percent": 0}},
        "lines": {"301": {"name": "301", "kind": "distance", "stations": [1, 2, 3, 4, 5],
                          "fares": [[200, 200, 300, 300, 400], [200, 200, 200, 300, 300], [300, 200, 200, 200, 300],
                                    [300, 300, 200, 200, 200], [400, 300, 300, 200, 200]],
                          "max_trip_minutes": 180}},
    },
}  # fmt: skip


class DemoClock:
    """The simulated time (China Standard Time); moved only by the script."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        """Move on and read."""
        self.now += timedelta(seconds=seconds)
        return self.now

    def set(self, day: date, hour: int, minute: int = 0) -> None:
        """Jump to a time of a day (never backwards)."""
        self.now = max(self.now, datetime(day.year, day.month, day.day, hour, minute, tzinfo=CST))

    def monotonic(self) -> float:
        """A monotonic reading that follows the simulated time."""
        return self.now.timestamp()

    def utc(self) -> datetime:
        """The time in UTC."""
        return self.now.astimezone(UTC)


class CardReaders:
    """Where the demo's cards meet the terminals: the one place that opens a channel to a card.

    :meth:`open` brings a card (or, with ``psam``, a PSAM being personalised) into a reader's field and returns a
    channel to it; :meth:`release` ends the channel and takes the card out of the field. :class:`InProcessReaders`
    drives the card objects directly, :class:`PcscReaders` through pcscd and the vpcd readers.
    """

    description = ""
    """How the cards are read, for the demo's header line."""
    recovery_timeout = 0.05
    """How long a terminal waits for a torn card to be presented again (it always is, at once)."""

    def open(self, chip: Card, *, psam: bool = False) -> Channel:
        """Bring ``chip`` into the field and return a channel to it."""
        raise NotImplementedError

    def release(self, channel: Channel) -> None:
        """Close ``channel`` (the card is powered off) and take its card out of the field (idempotent)."""
        channel.close()

    @contextmanager
    def present(self, chip: Card, *, psam: bool = False) -> Iterator[Channel]:
        """The card in the field for the ``with`` block, released afterwards."""
        channel = self.open(chip, psam=psam)
        try:
            yield channel
        finally:
            self.release(channel)

    def close(self) -> None:
        """Take every card out and give back what the readers hold."""


class InProcessReaders(CardReaders):
    """The embedded default: every card is driven in-process through :class:`terminal.channel.InProcessChannel`."""

    description = "in-process readers"

    def open(self, chip: Card, *, psam: bool = False) -> Channel:
        """A powered-on in-process channel to ``chip``."""
        return InProcessChannel(chip)


PCSC_WAIT = 10.0
"""Seconds to wait for pcscd to see a card arrive in (or leave) a vpcd reader."""
VPCD_LOCK_WAIT = 30.0
"""Seconds to wait for another process holding the machine-wide vpcd lock."""


class PcscReaders(CardReaders):
    """Cards in real PC/SC readers: pcscd with the vsmartcard vpcd driver.

    A card goes into vpcd slot 0 (``Virtual PCD 00 00``) through :class:`simulators.vpcd.VpcdSlot` when it is
    presented, the terminal waits for pcscd to see it (:func:`terminal.reader.wait_for_card`) and talks to it
    through :class:`terminal.channel.PcscChannel`; released, the card is powered off and taken out of the slot, and
    the next card goes in once pcscd has seen the slot empty. PSAMs being personalised use slot 1
    (``Virtual PCD 00 01``). Use :meth:`start`.
    """

    recovery_timeout = PCSC_WAIT

    def __init__(self, card_slot: VpcdSlot, psam_slot: VpcdSlot) -> None:
        self.card_slot = card_slot
        self.psam_slot = psam_slot
        self.description = (
            f"cards in the PC/SC reader {card_slot.reader_name} (pcscd + vpcd); PSAMs personalised in "
            f"{psam_slot.reader_name}, then used in-process"
        )

    @classmethod
    @contextmanager
    def start(cls, *, lock: bool = True) -> Iterator[PcscReaders]:
        """pcscd with the vpcd readers (started when none runs, stopped afterwards) and both slots, empty.

        ``lock``: hold the machine-wide vpcd lock meanwhile (False when the caller already holds it, as the test
        session's ``pcscd`` fixture does). Raises :class:`onecard_cli.errors.CliError`, one line naming what is
        missing, when pcscd, the vpcd driver or pyscard is not there.
        """
        missing = [
            f"{what} (Debian package {package})"
            for what, package, found in (
                ("pcscd", "pcscd", find_pcscd() is not None),
                (f"the vpcd driver in {READER_CONF_DIR}", "vsmartcard-vpcd", find_vpcd_config() is not None),
            )
            if not found
        ]
        if missing:
            raise CliError(f"--pcsc needs pcscd with the vpcd readers; missing: {', '.join(missing)}")
        try:
            import smartcard.scard  # noqa: F401  (pyscard, and the libpcsclite it loads)
        except ImportError as exc:
            raise CliError(f"--pcsc needs pyscard and libpcsclite (Debian package libpcsclite1): {exc}") from exc
        with contextlib.ExitStack() as stack:
            try:
                if lock:
                    stack.enter_context(vpcd_lock(VPCD_LOCK_WAIT))
                handle = ensure_pcscd()
            except PcscdError as exc:
                raise CliError(f"--pcsc: {exc}") from exc
            stack.callback(handle.stop)  # after the slots are empty, before the lock is released
            readers = cls(VpcdSlot(0, connect_timeout=PCSC_WAIT), VpcdSlot(1, connect_timeout=PCSC_WAIT))
            stack.callback(readers.close)
            for slot in (readers.card_slot, readers.psam_slot):
                try:
                    wait_for_removal(slot.reader_name, PCSC_WAIT)
                except WaitTimeout as exc:
                    raise CliError(f"--pcsc: {exc} (another program is using the vpcd slot)") from exc
            yield readers

    def _slot(self, psam: bool) -> VpcdSlot:
        return self.psam_slot if psam else self.card_slot

    def open(self, chip: Card, *, psam: bool = False) -> Channel:
        """Put ``chip`` into its vpcd slot once pcscd has seen the slot empty; a PC/SC channel to it."""
        slot = self._slot(psam)
        slot.remove()  # a card a terminal gave up on
        wait_for_removal(slot.reader_name, PCSC_WAIT)
        slot.insert(chip)
        try:
            return wait_for_card(slot.reader_name, PCSC_WAIT)
        except BaseException:
            slot.remove()
            raise

    def release(self, channel: Channel) -> None:
        """Power the card off, then take it out of its slot (pcscd notices at its next poll)."""
        channel.close()
        if isinstance(channel, PcscChannel):
            self._slot(channel.reader == self.psam_slot.reader_name).remove()

    def close(self) -> None:
        """Take the cards out and wait until pcscd has seen both slots empty."""
        for slot in (self.card_slot, self.psam_slot):
            slot.close()
            with contextlib.suppress(TerminalError):
                wait_for_removal(slot.reader_name, PCSC_WAIT)


class DemoField:
    """A terminal's :class:`terminal.purse.CardSource`: cards presented (again) to it through the demo's readers,
    e.g. a torn card for the terminal's recovery; none presented, :class:`WaitTimeout` at once."""

    def __init__(self, readers: CardReaders) -> None:
        self.readers = readers
        self._queue: collections.deque[Card] = collections.deque()

    def present(self, chip: Card) -> None:
        """Queue a card to enter the field when the terminal next waits for one."""
        self._queue.append(chip)

    def wait_for_card(self, timeout: float) -> Channel:
        """The next queued card in the field (the readers' own wait applies: it has been presented)."""
        if not self._queue:
            raise WaitTimeout("no card presented")
        return self.readers.open(self._queue.popleft())

    def wait_for_removal(self, channel: Channel, timeout: float) -> None:
        """The card leaves the field."""
        self.readers.release(channel)


@dataclass
class Terminal:
    """A validator or kiosk of the demo with its store."""

    spec: DeviceSpec
    store: DeviceStore
    card_field: DemoField
    validator: Validator | None = None
    kiosk: Kiosk | None = None


@dataclass
class DaySummary:
    """What happened, for the tables."""

    residents: int = 0
    registered: int = 0
    anonymous: int = 0
    card_types: Counter[str] = field(default_factory=Counter)
    loads: int = 0
    loaded: int = 0
    taps: Counter[str] = field(default_factory=Counter)
    fare_kinds: Counter[str] = field(default_factory=Counter)
    bills_paid: int = 0
    bills_amount: int = 0
    uploads: list[tuple[str, str, int, int, str]] = field(default_factory=list)
    lost_card: str = ""
    replacement: str = ""
    tears: int = 0
    tear_outcome: str = ""
    transfer: str = ""
    lost_used: str = ""


def upload_key(seed: int, device_id: str) -> bytes:
    """A device's upload key, derived from the seed."""
    return hashlib.sha256(f"onecard-demo/{seed}/{device_id}".encode()).digest()


def registry_document(seed: int) -> dict[str, Any]:
    """Operators with fee schedules, and the devices."""
    operators = [
        {"operator_id": "OP-BUS-A", "name": "Bus company A", "kind": "bus",
         "fee": {"percent": "1.5", "per_txn": 0, "from": "2020-01-01"}},
        {"operator_id": "OP-BUS-B", "name": "Bus company B", "kind": "bus",
         "fee": {"percent": "0.55", "per_txn": 1, "from": "2020-01-01"}},
        {"operator_id": "OP-WATER", "name": "Water company", "kind": "utility",
         "fee": {"percent": "0.5", "per_txn": 10, "from": "2020-01-01"}},
        {"operator_id": "OP-ELEC", "name": "Electricity company", "kind": "utility",
         "fee": {"percent": "0.4", "per_txn": 10, "from": "2020-01-01"}},
        {"operator_id": "OP-GAS", "name": "Gas company", "kind": "utility",
         "fee": {"percent": "0.5", "per_txn": 5, "from": "2020-01-01"}},
        {"operator_id": "OP-ISSUER", "name": "Card issuer", "kind": "issuer"},
    ]  # fmt: skip
    devices = [
        {"device_id": d.device_id, "operator_id": d.operator_id, "kind": d.kind, "term_id": d.term_id,
         "upload_key": upload_key(seed, d.device_id).hex()}
        for d in DEVICES
    ]  # fmt: skip
    return {"format": "onecard-registry/1", "operators": operators, "devices": devices}


def id_number(rnd: random.Random, index: int) -> str:
    """A valid GB 11643 resident ID number (Beijing Dongcheng, born 1940–2008)."""
    born = date(1940, 1, 1) + timedelta(days=rnd.randint(0, 365 * 68))
    first17 = f"110101{born:%Y%m%d}{index % 1000:03d}"
    return first17 + check_character(first17)


def issue_psam(keys: IssuerKeys, term_id: str, serial: bytes, readers: CardReaders) -> PsamCard:
    """A factory chip personalised through ``readers`` into the device's PSAM, opened in-process (the device keeps
    its PSAM: see :class:`CardReaders`)."""
    chip = Card.factory(CardKind.PSAM, keys.alg, keys.keys["KT"], serial)
    with readers.present(chip, psam=True) as channel:
        personalise(channel, keys.alg, keys.keys["KT"], perso.psam_script_from_keys(keys, term_id))
    psam = PsamCard(InProcessChannel(chip))
    psam.open()
    return psam


class DemoCity:
    """One demo day on its own database."""

    def __init__(self, root: Path, day: date, seed: int, console: Console, readers: CardReaders) -> None:
        self.root = root
        self.readers = readers
        self.day = day
        self.seed = seed
        self.console = console
        self.rnd = random.Random(seed)
        self.clock = DemoClock(datetime(day.year, day.month, day.day, 6, 0, tzinfo=CST))
        self.url = f"sqlite:///{root / 'onecard.db'}"
        self.keys = IssuerKeys(
            ISSUER_ID,
            Alg.DES,
            {name: self.rnd.randbytes(16) for name in ("KT", "MDAMK", "MPK", "MLK", "MTK", "MPUK", "MRPK")},
        )
        self.keystore = InMemoryKeystore([self.keys])
        self.vault = PersonalDataVault(AesGcmSealer(self.rnd.randbytes(32)), self.rnd.randbytes(32))
        self.issuer = services.IssuerProfile(ISSUER_ID, Alg.DES)
        self.clerk = Staff("clerk-1", Role.CLERK)
        upgrade(self.url)
        self.engine = make_engine(self.url)
        self.sessions = session_factory(self.engine)
        self.env = ClearingEnv(self.sessions, lambda: self.keystore, clock=self.clock.utc)
        self.app = create_app(Settings(database_url=self.url, keystore=str(root / "no-keystore.json")))
        self.app.dependency_overrides[current_time] = self.clock.utc
        # The embedded default ingests an upload right after it commits (clearing.intake); give that ingest the
        # demo's keys and clock instead of the environment's keystore and the wall clock.
        state = self.app.state.onecard
        intake._embedded[state.engine] = ClearingEnv(state.sessions, lambda: self.keystore, clock=self.clock.utc)
        self.http = TestClient(self.app)
        self.chips: dict[str, Card] = {}
        self.card_types: dict[str, CardType] = {}
        self.terminals: dict[str, Terminal] = {}
        self.summary = DaySummary()
        self.counter_uploaded = 0

    def uow(self) -> UnitOfWork:
        """A new unit of work."""
        return UnitOfWork(self.sessions)

    def close(self) -> None:
        """Close the stores, the client and the engine."""
        for terminal in self.terminals.values():
            terminal.store.close()
        self.http.close()
        self.app.state.onecard.engine.dispose()
        self.engine.dispose()

    # --- set-up --------------------------------------------------------------------------------------------

    def register(self) -> None:
        """Operators, fee schedules and devices; the device-side validators and kiosk."""
        with self.uow() as uow:
            document = json.dumps(registry_document(self.seed)).encode()
            import_registry(uow, parse_registry_file(document), now=self.clock.utc())
        for operator, doc in FARES.items():  # what GET /devices/fares serves the validators
            with self.uow() as uow:
                publish_fare_table(
                    uow, operator, str(doc["version"]), doc, effective_from=self.clock.utc(), now=self.clock.utc()
                )
        issuers = frozenset({ISSUER_ID.hex().upper()})
        for spec in DEVICES:
            if spec.kind == "counter":
                continue
            store = DeviceStore(self.root / "devices" / f"{spec.device_id}.db")
            guard = ClockGuard(self.clock, tz=CST, monotonic=self.clock.monotonic)
            psam = issue_psam(self.keys, spec.term_id, self.rnd.randbytes(8), self.readers)
            card_field = DemoField(self.readers)
            terminal = Terminal(spec, store, card_field)
            if spec.kind == "validator":
                config = ValidatorConfig(
                    device_id=spec.device_id, operator_id=spec.operator_id, line_id=spec.line_id,
                    vehicle_id=f"BUS-{spec.line_id:04d}", stations=spec.stations, issuers=issuers,
                    repeat_window=timedelta(seconds=60),
                )  # fmt: skip
                table = FareTable.from_json(FARES[spec.operator_id])
                terminal.validator = Validator(
                    config, table, store, psam, guard, card_source=card_field,
                    recovery_timeout=self.readers.recovery_timeout, display=lambda _line: None,
                )  # fmt: skip
            else:
                client = DeviceClient(
                    HttpxTransport("http://testserver", client=self.http),
                    spec.device_id,
                    upload_key(self.seed, spec.device_id),
                    wall=self.clock.utc,
                )
                terminal.kiosk = Kiosk(
                    KioskConfig(spec.device_id, spec.operator_id, issuers), client, store, psam, guard,
                    card_source=card_field, recovery_timeout=self.readers.recovery_timeout,
                )  # fmt: skip
            self.terminals[spec.device_id] = terminal

    # --- the counter ---------------------------------------------------------------------------------------

    def issue(self, index: int) -> str:
        """One resident (or an anonymous buyer) at the counter: register, link, apply, issue, load."""
        rnd = self.rnd
        self.clock.tick(rnd.randint(60, 300))
        registered = index % 4 != 3
        resident_id: int | None = None
        card_type = CardType.ADULT
        if registered:
            card_type = rnd.choice(CARD_TYPES)
            number = id_number(rnd, index)
            with self.uow() as uow:
                resident = services.register_resident(
                    uow, self.clerk, self.vault, name=f"{rnd.choice(SURNAMES)} {rnd.choice(GIVEN)}",
                    id_number=number, phone=f"138{rnd.randint(0, 99_999_999):08d}",
                    address=f"{rnd.randint(1, 300)} {rnd.choice(STREETS)}", clock=self.clock.tick,
                )  # fmt: skip
                resident_id = resident.resident_id
            with self.uow() as uow:
                services.link_social_security(
                    uow, self.clerk, self.vault, resident_id=resident_id, ss_number=number,
                    schemes=InsuredScheme.PENSION | InsuredScheme.MEDICAL, agency_code="310000", clock=self.clock.tick,
                )  # fmt: skip
            self.summary.residents += 1
        return self.new_card(card_type, resident_id)

    def new_card(self, card_type: CardType, resident_id: int | None) -> str:
        """Apply for a card and issue it on a fresh factory chip; load it."""
        with self.uow() as uow:
            view = services.apply_for_card(
                uow, self.clerk, card_type=card_type, city_code=CITY, resident_id=resident_id, clock=self.clock.tick
            )
        card_no = str(view.card_no)
        self.issue_chip(card_no)
        self.card_types[card_no] = card_type
        self.summary.card_types[str(card_type)] += 1
        if resident_id is None:
            self.summary.anonymous += 1
        else:
            self.summary.registered += 1
        self.load(card_no, self.rnd.choice([5_000, 10_000, 20_000]))
        return card_no

    def issue_chip(self, card_no: str) -> None:
        """Issue (personalise) the applied-for card ``card_no`` on a fresh factory chip, presented at the counter."""
        chip = Card.factory(
            CardKind.USER, self.keys.alg, self.keys.keys["KT"], self.rnd.randbytes(8), rng=self.rnd.randbytes
        )
        with self.uow() as uow, self.readers.present(chip) as channel:
            services.issue_card(
                uow, self.clerk, self.keystore, self.vault, self.issuer, channel, card_no=card_no, pin="123456",
                clock=self.clock.tick,
            )  # fmt: skip
        self.chips[card_no] = chip

    def load(self, card_no: str, amount: int) -> None:
        """A counter load (the back office is the load host)."""
        self.summary.loads += 1
        self.summary.loaded += amount
        with self.readers.present(self.chips[card_no]) as channel:
            services.load_card(
                self.uow, self.clerk, self.keystore, channel, amount=amount,
                request_id=f"load-{card_no}-{self.summary.loads}", term_id="031000009001", clock=self.clock.tick,
            )  # fmt: skip

    # --- buses -----------------------------------------------------------------------------------------------

    def tap(self, device_id: str, card_no: str, *, tear: bool = False) -> TapOutcome:
        """A card on a validator (``tear``: pulled away during DEBIT, then presented again)."""
        terminal = self.terminals[device_id]
        assert terminal.validator is not None
        chip = self.chips[card_no]
        if tear:
            chip.memory.arm_tear(3)
            terminal.card_field.present(chip)
        try:
            with self.readers.present(chip) as channel:
                outcome = terminal.validator.tap(channel)
                if outcome.channel is not None and outcome.channel is not channel:
                    self.readers.release(outcome.channel)  # the torn card, presented again
        finally:
            chip.memory.arm_tear(None)
        if tear:
            self.summary.tears += 1
            kept = "no record" if outcome.record is None else f"record status {outcome.record.status.name.lower()}"
            self.summary.tear_outcome = f"{outcome.status}, {kept}"
        label = str(outcome.status) if outcome.refusal is None else f"refused: {outcome.refusal}"
        self.summary.taps[label] += 1
        if outcome.decision is not None:
            decision = outcome.decision
            self.summary.fare_kinds[str(decision.kind)] += 1
            parts = decision.breakdown
            for name, applied in (
                ("transfer discount", parts.transfer_off > 0),
                ("concession", parts.concession_off > 0),
                ("daily cap reached", parts.cap_off > 0),
                ("missing tap-out penalty", parts.penalty > 0),
            ):
                if applied:
                    self.summary.fare_kinds[name] += 1
        return outcome

    def ride(self, riders: int, cards: list[str], progress: Progress, *, until: int, title: str = "") -> None:
        """Taps from now until ``until`` o'clock: repeats, transfers, caps, concessions, tap-in / tap-out on the
        distance line (some riders forget to tap out)."""
        rnd = self.rnd
        validators = [d for d in DEVICES if d.kind == "validator"]
        task = progress.add_task(f"buses: riders tapping ({title})", total=riders)
        end = datetime(self.day.year, self.day.month, self.day.day, until, tzinfo=CST)
        spacing = max((end - self.clock.now).total_seconds(), 0) / max(riders, 1)
        open_trips: dict[str, tuple[str, int]] = {}
        done = 0
        while done < riders:
            self.clock.tick(rnd.uniform(0.2, 1.8) * spacing)
            if open_trips and rnd.random() < 0.8:
                card_no, (device_id, entry) = sorted(open_trips.items())[rnd.randrange(len(open_trips))]
                del open_trips[card_no]
                validator = self.terminals[device_id].validator
                assert validator is not None
                stations = validator.config.stations
                validator.set_station(rnd.choice([s for s in stations if s != entry]))
            else:
                card_no = rnd.choice(cards)
                spec = rnd.choice(validators)
                device_id = spec.device_id
                validator = self.terminals[device_id].validator
                assert validator is not None
                validator.set_station(rnd.choice(spec.stations))
            outcome = self.tap(device_id, card_no)
            done += 1
            progress.advance(task)
            if outcome.status is TapStatus.TAPPED_IN and rnd.random() < 0.9:
                open_trips[card_no] = (device_id, validator.station)
            if done < riders and rnd.random() < 0.05:  # the rider taps again, not sure it worked
                self.clock.tick(rnd.randint(3, 20))
                self.tap(device_id, card_no)
                done += 1
                progress.advance(task)

    def hotlist(self, card_no: str, version: str) -> None:
        """Put a card on every validator's hotlist (what the uplink would have fetched)."""
        listed = self.clock.utc().isoformat()
        for terminal in self.terminals.values():
            if terminal.validator is not None:
                terminal.store.write_hotlist(
                    version=version, full=True, entries=[HotlistEntry(card_no, listed, "stolen")]
                )

    # --- kiosk -----------------------------------------------------------------------------------------------

    def pay_bills(self, cards: list[str], count: int) -> None:
        """Bills of the three utilities, paid in full at the kiosk."""
        for index in range(count):
            utility, operator, kiosk = UTILITIES[index % len(UTILITIES)]
            terminal = self.terminals[kiosk]
            assert terminal.kiosk is not None
            account = f"{utility[:2].upper()}-{index + 1:05d}"
            amount = self.rnd.randint(8, 40) * 100 + self.rnd.choice([0, 50])
            with self.uow() as uow:
                bills.create_bill(
                    uow, bill_no=f"B{self.day:%Y%m}{index + 1:05d}", utility=utility, operator_id=operator,
                    account=account, period=f"{self.day:%Y-%m}", amount_due=amount, now=self.clock.utc(),
                )  # fmt: skip
            self.clock.tick(self.rnd.randint(300, 1800))
            card_no = cards[index % len(cards)]
            found = terminal.kiosk.find_bills(utility, account)
            try:
                with self.readers.present(self.chips[card_no]) as channel:
                    receipt = terminal.kiosk.pay(channel, found[0], found[0].amount_due)
            except KioskRefused as exc:
                self.summary.taps[f"kiosk refused: {exc.code}"] += 1
                continue
            self.summary.bills_paid += 1
            self.summary.bills_amount += receipt.record.amount

    # --- uploads ---------------------------------------------------------------------------------------------

    def _sign(self, device_id: str) -> Callable[[bytes], str]:
        key = upload_key(self.seed, device_id)
        return lambda body: hmac.new(key, body, hashlib.sha256).hexdigest()

    def upload_device(self, device_id: str) -> None:
        """Close the device's batches and upload them through the device API."""
        terminal = self.terminals[device_id]
        client = DeviceClient(
            HttpxTransport("http://testserver", client=self.http),
            device_id,
            upload_key(self.seed, device_id),
            wall=self.clock.utc,
        )
        batches = terminal.store.close_batches(
            device_id=device_id, operator_id=terminal.spec.operator_id, created_at=self.clock(),
            sign=self._sign(device_id),
        )  # fmt: skip
        for batch in batches:
            assert batch.body is not None
            self.keep_batch(f"{'bus' if terminal.validator else 'kiosk'}-{terminal.spec.term_id}", batch.body)
            ack = client.upload_batch(batch.batch_id, batch.body, batch.signature)
            self.summary.uploads.append(
                (
                    device_id,
                    batch.batch_id,
                    batch.record_count,
                    batch.amount_total,
                    f"{ack.status} {self.clock():%m-%d %H:%M}",
                )
            )

    def keep_batch(self, name: str, body: bytes) -> None:
        """A copy of an uploaded batch (spec §5, the exact bytes) under reports/<date>/batches/."""
        out = Path("reports") / self.day.isoformat() / "batches"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.csv"
        number = 1
        while path.exists():
            number += 1
            path = out / f"{name}-{number}.csv"
        path.write_bytes(body)

    def upload_counter(self) -> None:
        """The counter's load records as one batch, through the device API."""
        with self.uow() as uow:
            records: list[BatchRecord] = load_records(uow.session, "031000009001", self.counter_uploaded)
        if not records:
            return
        self.counter_uploaded = records[-1].device_seq
        batch_id = f"{COUNTER}-{self.day:%Y%m%d}-1"
        body = Batch.build(batch_id, COUNTER, "OP-ISSUER", "031000009001", self.clock(), records).encode()
        client = DeviceClient(
            HttpxTransport("http://testserver", client=self.http), COUNTER, upload_key(self.seed, COUNTER),
            wall=self.clock.utc,
        )  # fmt: skip
        self.keep_batch("counter-01", body)
        ack = client.upload_batch(batch_id, body, self._sign(COUNTER)(body))
        total = sum(r.amount for r in records)
        self.summary.uploads.append(
            (COUNTER, batch_id, len(records), total, f"{ack.status} {self.clock():%m-%d %H:%M}")
        )

    # --- clearing --------------------------------------------------------------------------------------------

    def clear(self, day: date) -> RunState:
        """Run clearing of ``day`` in-process."""
        return run_in_process(self.env, day)

    def report(self, day: date) -> dict[str, Any]:
        """The day's report document."""
        with self.uow() as uow:
            return day_report(uow.session, day)

    def write_reports(self, day: date) -> list[Path]:
        """The day's report in every format under reports/<day>/."""
        out = Path("reports") / day.isoformat()
        out.mkdir(parents=True, exist_ok=True)
        document = self.report(day)
        written = []
        for fmt, render in RENDERERS.items():
            path = out / f"clearing-{day.isoformat()}.{fmt}"
            path.write_bytes(render(document))
            written.append(path)
        return written

    @property
    def has_web_pages(self) -> bool:
        """Whether this build serves the staff web pages under /web (FastAPI may keep included routers unflattened,
        so ask the app to resolve the pages' home rather than scanning its routes)."""
        try:
            self.app.url_path_for("home")
        except Exception:
            return any(str(getattr(route, "path", "")).startswith("/web") for route in self.app.routes)
        return True

    def create_staff_user(self) -> tuple[str, str]:
        """A finance + supervisor user for ``onecard serve``; the log-in."""
        from api.staff_auth import create_staff

        password = f"demo-{self.seed}-{hashlib.sha256(str(self.seed).encode()).hexdigest()[:8]}"
        with self.uow() as uow:
            create_staff(uow, "demo", password, ["supervisor", "finance"], now=self.clock.utc())
        return "demo", password


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:  # fmt: skip
        yield progress


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def run_demo(
    *,
    cards: int,
    riders: int,
    date: str | None,
    seed: int,
    console: Console | None = None,
    pcsc: bool = False,
    lock: bool = True,
) -> bool:
    """Run the demo day and print the summary; True when every reconciliation check holds (else
    :class:`onecard_cli.errors.CliError`).

    ``pcsc``: the cards go through pcscd and the vpcd readers (:class:`PcscReaders`) instead of in-process;
    ``lock`` (with ``pcsc``): take the machine-wide vpcd lock meanwhile (False when the caller holds it).
    """
    console = console or Console()
    started = wall_time.monotonic()
    if pcsc:
        with PcscReaders.start(lock=lock) as readers:
            ok = _run_day(readers, cards=cards, riders=riders, date=date, seed=seed, console=console)
    else:
        ok = _run_day(InProcessReaders(), cards=cards, riders=riders, date=date, seed=seed, console=console)
    console.print(f"demo finished in {wall_time.monotonic() - started:.1f} s")
    if not ok:
        raise CliError("the demo day's clearing or reconciliation failed (see the tables above)")
    return ok


def _run_day(readers: CardReaders, *, cards: int, riders: int, date: str | None, seed: int, console: Console) -> bool:
    day = datetime.strptime(date, "%Y-%m-%d").date() if date else datetime.now(CST).date()
    next_day = day + timedelta(days=1)
    root = Path("demo") / day.isoformat()
    if root.exists():
        shutil.rmtree(root)
    (root / "devices").mkdir(parents=True)
    for stale in (Path("reports") / day.isoformat(), Path("reports") / next_day.isoformat()):
        if stale.exists():
            shutil.rmtree(stale)
    console.print(f"[bold]One-card demo[/bold] — {day.isoformat()}, {cards} cards, {riders} taps, seed {seed}")
    console.print(f"embedded default: SQLite {root / 'onecard.db'}, no Redis, {readers.description}")
    city = DemoCity(root, day, seed, console, readers)
    try:
        city.register()
        cards = max(cards, 4)
        with _progress(console) as progress:
            task = progress.add_task("counter: residents, cards, loads", total=cards)
            issued: list[str] = []
            for index in range(cards):
                issued.append(city.issue(index))
                progress.advance(task)
            stolen = issued[-1]
            city.clock.set(day, 6, 20)
            city.hotlist(stolen, "demo-1")
            lost = issued[0]
            morning = max(riders // 2, 0)
            city.clock.set(day, 6, 30)
            city.ride(morning, issued[:-1], progress, until=12, title="morning")
            # 13:00 the holder of the first card reports it lost; the card is replaced at the counter.
            city.clock.set(day, 13)
            with city.uow() as uow:
                services.report_loss(uow, city.clerk, card_no=lost, clock=city.clock.tick)
            with city.uow() as uow:
                replacement = services.replace_card(uow, city.clerk, old_card_no=lost, clock=city.clock.tick)
            new_no = str(replacement.new_card.card_no)
            city.issue_chip(new_no)
            city.card_types[new_no] = city.card_types[lost]
            city.load(new_no, 5_000)  # a top-up while the old balance waits to be transferred
            city.summary.lost_card, city.summary.replacement = lost, new_no
            city.summary.transfer = (
                f"{replacement.transfer.status}: the old card's balance moves to the new card once clearing has "
                f"seen its offline taps ({city.env.policy.settlement_grace_days} days' grace)"
            )
            # The lost card, in someone else's hand, on a validator that has not heard of it yet.
            city.clock.tick(600)
            used = city.tap("BUSA-V01", lost)
            city.summary.lost_used = str(used.status) if used.refusal is None else f"refused: {used.refusal}"
            city.tap("BUSA-V01", stolen)  # the stolen one is refused at the door
            # The new card's first ride: pulled away in the middle of DEBIT, presented again, recovered.
            city.clock.tick(900)
            city.tap("BUSA-V02", new_no, tear=True)
            city.pay_bills(issued[1:-1], max(3, cards // 4))
            city.clock.set(day, 15)
            city.ride(riders - morning, [*issued[1:-1], new_no], progress, until=23, title="afternoon")
            # After midnight every device uploads, except the late one (next morning).
            city.clock.set(next_day, 0, 30)
            city.upload_counter()
            for spec in DEVICES:
                if spec.kind != "counter" and spec.device_id != LATE:
                    city.upload_device(spec.device_id)
            task = progress.add_task("clearing, settlement, reconciliation", total=2)
            city.clock.set(next_day, 2)
            state = city.clear(day)
            progress.advance(task)
            city.clock.set(next_day, 9)
            city.upload_device(LATE)
            city.clock.set(next_day + timedelta(days=1), 2)
            next_state = city.clear(next_day)
            progress.advance(task)
        written = city.write_reports(day) + city.write_reports(next_day)
        report, next_report = city.report(day), city.report(next_day)
        login = city.create_staff_user()
        ok = _print_summary(console, city, state, next_state, report, next_report, written, login, root)
    finally:
        city.close()
    return ok


def _print_summary(
    console: Console,
    city: DemoCity,
    state: RunState,
    next_state: RunState,
    report: dict[str, Any],
    next_report: dict[str, Any],
    written: list[Path],
    login: tuple[str, str],
    root: Path,
) -> bool:
    s = city.summary
    cards = Table(title="Cards")
    cards.add_column("")
    cards.add_column("count", justify="right")
    cards.add_row("residents registered and linked to social security", str(s.residents))
    cards.add_row("cards issued: registered", str(s.registered))
    cards.add_row("cards issued: anonymous", str(s.anonymous))
    for kind, count in sorted(s.card_types.items()):
        cards.add_row(f"  {kind}", str(count))
    cards.add_row("loads at the counter", f"{s.loads} ({_yuan(s.loaded)} yuan)")
    cards.add_row("lost card reported (13:00) and replaced", f"{s.lost_card} → {s.replacement}")
    cards.add_row("  balance transfer", s.transfer)
    console.print(cards)

    taps = Table(title="Taps and payments")
    taps.add_column("outcome")
    taps.add_column("count", justify="right")
    for label, count in sorted(s.taps.items()):
        taps.add_row(label, str(count))
    for kind, count in sorted(s.fare_kinds.items()):
        taps.add_row(f"fare: {kind}", str(count))
    taps.add_row("lost card used after the loss (validator not told yet)", s.lost_used)
    taps.add_row("torn during DEBIT, presented again", f"{s.tears} ({s.tear_outcome})")
    taps.add_row("utility bills paid at the kiosk", f"{s.bills_paid} ({_yuan(s.bills_amount)} yuan)")
    console.print(taps)

    uploads = Table(title="Uploads through the device API")
    for column in ("device", "batch", "records", "amount (yuan)", "status"):
        uploads.add_column(column)
    for device_id, batch_id, count, amount, status in s.uploads:
        uploads.add_row(device_id, batch_id, str(count), _yuan(amount), status)
    console.print(uploads)

    ok = True
    for title, run, doc in ((city.day, state, report), (city.day + timedelta(days=1), next_state, next_report)):
        revenue = Table(title=f"Revenue per operator — clearing day {title.isoformat()} (run {run.run_no})")
        for column in ("operator", "count", "amount", "fee", "payable"):
            revenue.add_column(column, justify="left" if column == "operator" else "right")
        for op in doc["operators"]:
            revenue.add_row(
                str(op["operator_id"]), str(op["count"]), _yuan(op["amount"]), _yuan(op["fee"]), _yuan(op["payable"])
            )
        console.print(revenue)
        exceptions = Table(title=f"Records and exceptions — {title.isoformat()}")
        exceptions.add_column("class / code")
        exceptions.add_column("count", justify="right")
        for klass, count in doc["records"].items():
            exceptions.add_row(str(klass), str(count))
        by_code = Counter(f"  {e['class']} / {e['code']}" for e in doc["exceptions"])
        for code, count in sorted(by_code.items()):
            exceptions.add_row(code, str(count))
        if doc.get("late"):
            exceptions.add_row("  late records (taken earlier, uploaded late)", str(len(doc["late"])))
        if title == city.day:
            exceptions.caption = f"counter gaps: those cards' taps on {LATE} are uploaded late, the next morning"
        console.print(exceptions)
        recon = doc["reconciliation"]
        checks = Table(title=f"Reconciliation — {title.isoformat()}: {'OK' if recon['ok'] else 'FAILED'}")
        checks.add_column("check")
        checks.add_column("result")
        for check in recon.get("checks", []):
            name = check.get("name", "?")
            good = check.get("ok", False)
            checks.add_row(str(name), "[green]OK[/green]" if good else f"[red]failed[/red] {check}")
        console.print(checks)
        ok = ok and bool(recon["ok"]) and run.stage == "done"
    console.print("[bold]Reports:[/bold] " + ", ".join(str(p) for p in written))
    console.print(f"[bold]Batches as uploaded:[/bold] {Path('reports') / city.day.isoformat() / 'batches'}")
    pages = "http://127.0.0.1:8000/web/ (the staff pages) or " if city.has_web_pages else ""
    console.print(
        f"To look at the same day: ONECARD_DATABASE_URL=sqlite:///{root / 'onecard.db'} .venv/bin/onecard serve\n"
        f"  then open {pages}http://127.0.0.1:8000/docs — e.g. GET /finance/reports/{city.day.isoformat()}, "
        f"/finance/reconciliation, /finance/exceptions — after POST /auth/login as "
        f"[bold]{login[0]}[/bold] / [bold]{login[1]}[/bold] (supervisor, finance)"
    )
    console.print("[bold green]reconciliation OK[/bold green]" if ok else "[bold red]reconciliation FAILED[/bold red]")
    return ok
