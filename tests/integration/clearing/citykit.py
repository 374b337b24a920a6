"""A small city for the clearing tests: a migrated database with a registry, issuance with real cards, a counter
that loads them through the back office, validators and kiosks with PSAMs that take real purchases, batches
uploaded through the inbox, and clearing runs in-process.

Every record is what a genuine card and PSAM produce (real TACs under the vector keys), so tampering with one
field is caught the way it would be in production.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from support import issue_psam, vector_keys

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from cardos.batch import Batch, BatchRecord, RecordStatus
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from clearing import bills, ledger
from clearing.inbox import receive_batch
from clearing.models import Device
from clearing.registry import import_registry, load_device_credentials, parse_registry_file
from clearing.reports import build_report
from clearing.rules import FLOAT, Policy
from clearing.runs import ClearingEnv, RunState, run_in_process
from issuance import services
from issuance.access import Role, Staff
from issuance.keystore import AesGcmSealer, SoftwareKeystore
from issuance.loadhost import load_records
from issuance.models import Card as CardRow
from issuance.pii import PersonalDataVault
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.purse import PurchaseResult, PurseTerminal, RecordMeta

CST = timezone(timedelta(hours=8))
DAY = date(2025, 3, 3)
COUNTER = "COUNTER-01"
DEVICES: dict[str, tuple[str, str, str]] = {
    # device_id: (operator_id, kind, term_id)
    "BUSA-V01": ("OP-BUS-A", "validator", "031000000101"),
    "BUSA-V02": ("OP-BUS-A", "validator", "031000000102"),
    "BUSB-V01": ("OP-BUS-B", "validator", "031000000201"),
    "BUSA-V09": ("OP-BUS-A", "validator", "031000000109"),
    "WATER-K01": ("OP-WATER", "kiosk", "031000000301"),
    COUNTER: ("OP-ISSUER", "counter", "031000009001"),
}
RETIRED = "BUSA-V09"


def upload_key(device_id: str) -> str:
    """The device's upload key (test value)."""
    return hashlib.sha256(device_id.encode()).hexdigest()


def registry_document() -> dict[str, Any]:
    """Operators with fee schedules and the devices."""
    return {
        "format": "onecard-registry/1",
        "operators": [
            {"operator_id": "OP-BUS-A", "name": "Bus company A", "kind": "bus",
             "fee": [{"percent": "1.5", "per_txn": 0, "from": "2025-01-01"},
                     {"percent": "2", "per_txn": 0, "from": "2025-03-10"}]},
            {"operator_id": "OP-BUS-B", "name": "Bus company B", "kind": "bus",
             "fee": {"percent": "0.55", "per_txn": 1, "from": "2025-01-01"}},
            {"operator_id": "OP-WATER", "name": "Water company", "kind": "utility",
             "fee": {"percent": "0.5", "per_txn": 10, "from": "2025-01-01"}},
            {"operator_id": "OP-ISSUER", "name": "Card issuer", "kind": "issuer"},
        ],
        "devices": [
            {"device_id": device_id, "operator_id": operator, "kind": kind, "term_id": term_id,
             "upload_key": upload_key(device_id)}
            for device_id, (operator, kind, term_id) in DEVICES.items()
        ],
    }  # fmt: skip


class CityClock:
    """The city's time (China Standard Time), moved by the test; each reading adds a second."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def set(self, day: date, hour: int, minute: int = 0) -> None:
        """Jump to a time of a day."""
        self.now = datetime(day.year, day.month, day.day, hour, minute, tzinfo=CST)


_chips = itertools.count(0xC0C1C2C300000000)
_batches = itertools.count(1)


@dataclass
class City:
    """One city on one database."""

    url: str
    keys: IssuerKeys
    keystore: SoftwareKeystore
    clock: CityClock
    policy: Policy = field(default_factory=Policy)
    clerk: Staff = field(default_factory=lambda: Staff("clerk-1", Role.CLERK))
    supervisor: Staff = field(default_factory=lambda: Staff("super-1", Role.SUPERVISOR))
    chips: dict[str, Card] = field(default_factory=dict)
    terminals: dict[str, PurseTerminal] = field(default_factory=dict)
    device_seq: dict[str, int] = field(default_factory=dict)
    counter_uploaded: int = 0
    env: ClearingEnv = field(init=False)
    keystore_env: dict[str, str] = field(default_factory=dict)
    """How the commands open the same keystore (environment variables)."""

    def __post_init__(self) -> None:
        engine = make_engine(self.url)
        self.engine = engine
        self.sessions = session_factory(engine)
        self.vault = PersonalDataVault(AesGcmSealer(os.urandom(32)), os.urandom(32))
        self.issuer = services.IssuerProfile(self.keys.issuer_id, Alg.DES)
        self.env = ClearingEnv(self.sessions, lambda: self.keystore, self.policy, clock=lambda: datetime.now(UTC))

    def uow(self) -> UnitOfWork:
        """A new unit of work."""
        return UnitOfWork(self.sessions)

    # --- issuance --------------------------------------------------------------------------------------------

    def new_card(self, load: int = 0) -> str:
        """An anonymous card, issued on a fresh chip, loaded at the counter with ``load`` fen."""
        with self.uow() as uow:
            view = services.apply_for_card(uow, self.clerk, card_type=services.CardType.ADULT, city_code="0310",
                                           resident_id=None, clock=self.clock)  # fmt: skip
        self.issue_applied(view.card_no)
        if load:
            self.load(view.card_no, load)
        return str(view.card_no)

    def issue_applied(self, card_no: str) -> None:
        """Issue an applied card (a new one, or a replacement) onto a fresh chip."""
        chip = Card.factory(CardKind.USER, self.keys.alg, self.keys.keys["KT"], next(_chips).to_bytes(8, "big"))
        with self.uow() as uow, InProcessChannel(chip) as channel:
            services.issue_card(uow, self.clerk, self.keystore, self.vault, self.issuer, channel,
                                card_no=card_no, pin="123456", clock=self.clock)  # fmt: skip
        self.chips[card_no] = chip

    def load(self, card_no: str, amount: int) -> services.LoadOutcome:
        """A counter load (back office as load host)."""
        with InProcessChannel(self.chips[card_no]) as channel:
            return services.load_card(
                lambda: self.uow(), self.clerk, self.keystore, channel, amount=amount,
                request_id=f"load-{card_no}-{next(_batches)}", term_id=DEVICES[COUNTER][2], clock=self.clock,
            )  # fmt: skip

    def bill(self, bill_no: str, amount: int) -> None:
        """An open water bill of ``amount`` fen."""
        with self.uow() as uow:
            bills.create_bill(uow, bill_no=bill_no, utility="water", operator_id="OP-WATER", account="ACC-1",
                              period="2025-02", amount_due=amount, now=datetime.now(UTC))  # fmt: skip

    def pay(self, bill_no: str, record: BatchRecord) -> None:
        """The kiosk reports the purchase that paid the bill (docs/device-api.md, bills)."""
        with self.uow() as uow:
            credentials = load_device_credentials(uow.session, "WATER-K01")
        assert credentials is not None
        with self.uow() as uow:
            bills.pay_bill(uow, credentials.identity, bill_no, record, datetime.now(UTC))

    def report_loss(self, card_no: str) -> None:
        """The holder reports the card lost: hotlisted now."""
        with self.uow() as uow:
            services.report_loss(uow, self.clerk, card_no=card_no, clock=self.clock)

    def shadow(self, card_no: str) -> int:
        """Issuance's shadow balance of a card."""
        with self.uow() as uow:
            return int(uow.session.scalar(select(CardRow.shadow_balance).where(CardRow.card_no == card_no)) or 0)

    # --- terminals -------------------------------------------------------------------------------------------

    def terminal(self, device_id: str) -> PurseTerminal:
        """The device's purse terminal with its PSAM."""
        if device_id not in self.terminals:
            psam = PsamCard(InProcessChannel(issue_psam(self.keys, DEVICES[device_id][2])))
            psam.open()
            self.terminals[device_id] = PurseTerminal(clock=self.clock, psam=psam)
        return self.terminals[device_id]

    def tap(self, device_id: str, card_no: str, amount: int, ref: str = "") -> BatchRecord:
        """A purchase on the device's terminal; the record with the device's next device_seq."""
        seq = self.device_seq.get(device_id, 0) + 1
        self.device_seq[device_id] = seq
        with InProcessChannel(self.chips[card_no]) as channel:
            result: PurchaseResult = self.terminal(device_id).purchase(
                channel, amount, meta=RecordMeta(line_id="10", ref=ref), device_seq=seq
            )
        return result.record

    # --- uploads ---------------------------------------------------------------------------------------------

    def batch(self, device_id: str, records: list[BatchRecord], batch_id: str | None = None) -> bytes:
        """The encoded batch of a device."""
        operator, _, term_id = DEVICES[device_id]
        made = self.clock.now.astimezone(CST) + timedelta(minutes=1)
        return Batch.build(batch_id or f"{device_id}-{next(_batches)}", device_id, operator, term_id, made,
                           records).encode()  # fmt: skip

    def upload(self, device_id: str, body: bytes) -> str:
        """Upload through the inbox (signed like the device); the receipt's status."""
        with self.uow() as uow:
            credentials = load_device_credentials(uow.session, device_id)
        assert credentials is not None
        signature = hmac.new(bytes.fromhex(upload_key(device_id)), body, hashlib.sha256).hexdigest()
        with self.uow() as uow:
            return receive_batch(uow, credentials.identity, body, signature, datetime.now(UTC)).status

    def send(self, device_id: str, records: list[BatchRecord], batch_id: str | None = None) -> str:
        """Encode and upload."""
        return self.upload(device_id, self.batch(device_id, records, batch_id))

    def counter_records(self) -> list[BatchRecord]:
        """The counter's load records not uploaded yet."""
        with self.uow() as uow:
            records = load_records(uow.session, DEVICES[COUNTER][2], self.counter_uploaded)
        if records:
            self.counter_uploaded = records[-1].device_seq
        return records

    def send_counter(self) -> None:
        """The counter's new load records as a batch."""
        records = self.counter_records()
        if records:
            self.send(COUNTER, records)

    # --- clearing --------------------------------------------------------------------------------------------

    def run(self, day: date = DAY) -> RunState:
        """Run clearing of ``day`` in-process."""
        return run_in_process(self.env, day)

    def report(self, day: date = DAY) -> dict[str, Any]:
        """The day's report document."""
        with self.uow() as uow:
            return build_report(uow.session, day)

    def classes(self) -> dict[tuple[str, int, int, int], tuple[str, str]]:
        """Every record's current class and code by (card_no, card_seq, term_seq, family)."""
        with self.uow() as uow:
            rows = uow.session.execute(
                text(
                    "SELECT r.card_no, r.card_seq, r.term_seq, r.family, v.class, v.code FROM clearing_verdict v "
                    "JOIN clearing_record r ON r.id = v.record_id WHERE r.role <> 'superseded' "
                    "AND NOT EXISTS (SELECT 1 FROM clearing_verdict w "
                    "WHERE w.record_id = v.record_id AND w.verdict_no > v.verdict_no)"
                )
            ).all()
        return {(str(a), int(b), int(c), int(f)): (str(d), str(e)) for a, b, c, f, d, e in rows}

    def verdict_of(self, record: BatchRecord) -> tuple[str, str]:
        """The current class and code of the record holding this record's card key and term_seq."""
        return self.classes()[(record.card_no, record.card_seq, record.term_seq, 0 if record.txn_type == "02" else 1)]

    def float_balance(self) -> int:
        """The float (credit balance of the card liability)."""
        with self.uow() as uow:
            return -ledger.balance(uow.session, FLOAT)

    def ledger_snapshot(self) -> list[tuple[Any, ...]]:
        """Every entry and line (for comparing runs)."""
        with self.uow() as uow:
            return [
                tuple(row)
                for row in uow.session.execute(
                    text(
                        "SELECT e.entry_ref, e.clearing_day, e.kind, e.operator_id, e.total, l.line_no, l.account, "
                        "l.debit, l.credit FROM ledger_entry e JOIN ledger_line l ON l.entry_ref = e.entry_ref "
                        "ORDER BY e.entry_ref, l.line_no"
                    )
                ).all()
            ]

    def count(self, table: str) -> int:
        """Rows of a table."""
        with self.uow() as uow:
            return int(uow.session.scalar(select(func.count()).select_from(text(table))) or 0)

    def dispose(self) -> None:
        """Close the engine."""
        self.engine.dispose()


def prepare(url: str) -> None:
    """Migrate and register the city's operators and devices (a database other cities can be copied from)."""
    upgrade(url)
    engine = make_engine(url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            import_registry(uow, parse_registry_file(json.dumps(registry_document()).encode()))
        with UnitOfWork(session_factory(engine)) as uow:
            device = uow.session.get(Device, RETIRED)
            assert device is not None
            device.status, device.updated_at = "retired", datetime(2025, 3, 3, 12, 0, tzinfo=CST)
            uow.commit()
    finally:
        engine.dispose()


def open_city(url: str, tmp: Path, policy: Policy | None = None, *, prepared: bool = False) -> City:
    """A city on ``url`` (:func:`prepare` d unless ``prepared``), the vector keys in a software keystore."""
    if not prepared:
        prepare(url)
    keys = vector_keys(Alg.DES)
    keystore_key = os.urandom(32)
    keystore = SoftwareKeystore(tmp / "keys.json", raw_key=keystore_key)
    keystore.import_keys(keys)
    city = City(
        url, keys, keystore, CityClock(datetime(DAY.year, DAY.month, DAY.day, 7, 0, tzinfo=CST)), policy or Policy()
    )
    city.keystore_env = {"ONECARD_KEYSTORE": str(tmp / "keys.json"), "ONECARD_KEYSTORE_KEY": keystore_key.hex()}
    return city


def tampered(record: BatchRecord, **changes: Any) -> BatchRecord:
    """The record with some columns changed (the TAC stays the card's)."""
    return dataclasses.replace(record, **changes)


def unconfirmed(record: BatchRecord) -> BatchRecord:
    """The record as a terminal that lost the card writes it: no TAC."""
    return dataclasses.replace(record, status=RecordStatus.UNCONFIRMED, tac="")


def each(iterable: Iterator[Any] | list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    """``[fn(x) for x in iterable]``."""
    return [fn(item) for item in iterable]
