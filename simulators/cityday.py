"""A city's day as batch files: riders' trips with morning and evening peaks, lines and stations, a card-type
mix, transfers, and the loads that keep the purses topped up (issue #8, "City scale").

The output drives clearing at 1M–20M records without simulating each card through a reader: every record is
what a genuine card and PSAM would have produced — per-card counters and balance chains, per-PSAM term_seq,
per-device device_seq, valid TACs under the issuer's keys — written as spec §5 batches per device.
Deterministic for a seed.
"""

from __future__ import annotations

import bisect
import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

from cardos import crypto
from cardos.batch import BatchHeader
from cardos.keyfile import IssuerKeys
from cardos.layout import KeyUsage

CST = timezone(timedelta(hours=8))
CITY = "0310"
ISSUER_ID = bytes.fromhex("0310000000000000")
COUNTER_TERM_BASE = 9000
CARD_TYPE_MIX = ((0x01, 70), (0x02, 15), (0x03, 10), (0x04, 3), (0x05, 2))
"""adult, student, senior, disabled, staff: percent of cards."""
CONCESSION = {0x01: 1.0, 0x02: 0.5, 0x03: 0.0, 0x04: 0.0, 0x05: 1.0}
FLAT_FARE = 200
TRANSFER_DISCOUNT = 100
TRANSFER_WINDOW = 90 * 60
LOAD_AMOUNTS = (5_000, 10_000, 20_000)


def hour_weights() -> list[float]:
    """Taps per hour of day: quiet night, morning peak 7–9, midday plateau, evening peak 17–19."""
    return [
        0.2, 0.1, 0.05, 0.05, 0.2, 1.0, 3.0, 9.0, 10.0, 5.0, 3.5, 3.5,
        4.0, 3.5, 3.5, 4.0, 6.0, 9.5, 8.5, 5.0, 3.5, 2.5, 1.5, 0.6,
    ]  # fmt: skip


@dataclass(frozen=True)
class CityPlan:
    """The size and shape of the day."""

    records: int
    day: date
    seed: int = 1
    lines: int = 0
    buses_per_line: int = 4
    batch_size: int = 50_000
    spill_records: int = 1_000_000
    """Taps held in memory before they go to per-device spill files (memory stays bounded at any size)."""

    def resolved_lines(self) -> int:
        """Lines: given, or about one per 20,000 records (at least 3)."""
        return self.lines or max(3, min(2_000, self.records // 20_000))


_Tap = tuple[int, str, int, int, int, int, int]
"""(second of day, card_no, txn_type, card_type, card_seq, amount, balance_before)."""


@dataclass
class Device:
    """A validator (with its PSAM) or a counter."""

    device_id: str
    operator_id: str
    kind: str
    term_id: str
    line_id: str
    upload_key: str
    term_seq: int = 0
    device_seq: int = 0
    records: list[_Tap] = field(default_factory=list)


@dataclass
class _Card:
    card_no: str
    card_type: int
    balance: int
    online_seq: int = 0
    offline_seq: int = 0


@dataclass
class CityDay:
    """What was generated: where the files are and their totals."""

    out_dir: Path
    batch_files: list[Path]
    registry_file: Path
    key_file: Path
    opening_file: Path
    """The cards' balances and counters before the day (card_no, card_type, balance, online_seq, offline_seq)."""
    records: int
    purchases: int
    loads: int
    amount_total: int
    cards: int


class _TacMaker:
    """TACs under the issuer's MTK; one fast calculator per card, cached while the card's records come."""

    def __init__(self, keys: IssuerKeys) -> None:
        self._diversifier = crypto.Diversifier(keys.alg, keys.keys["MTK"])
        self._alg = keys.alg
        self._calculators: dict[str, crypto.TacCalculator] = {}

    def calculator(self, card_no: str) -> crypto.TacCalculator:
        """The TAC calculator of a card."""
        calc = self._calculators.get(card_no)
        if calc is None:
            if len(self._calculators) > 50_000:
                self._calculators.clear()
            dtk = self._diversifier.card_key(bytes.fromhex(card_no))
            calc = self._calculators[card_no] = crypto.TacCalculator(self._alg, dtk)
        return calc


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def generate(plan: CityPlan, out_dir: Path, keys: IssuerKeys, progress: Callable[[int], None] | None = None) -> CityDay:
    """Write the day's batches, the registry and the key file under ``out_dir``."""
    rnd = random.Random(plan.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_lines = plan.resolved_lines()
    operators = [f"OP-BUS-{chr(ord('A') + i)}" for i in range(min(4, n_lines))]
    validators: list[Device] = []
    for line in range(n_lines):
        for _bus in range(plan.buses_per_line):
            index = len(validators) + 1
            validators.append(
                Device(
                    device_id=f"V{index:06d}",
                    operator_id=operators[line % len(operators)],
                    kind="validator",
                    term_id=f"{CITY}{index:08d}",
                    line_id=str(line + 1),
                    upload_key=rnd.randbytes(32).hex(),
                )
            )
    counters = [
        Device(
            f"C{i + 1:04d}", "OP-ISSUER", "counter", f"{CITY}{COUNTER_TERM_BASE + i:08d}", "", rnd.randbytes(32).hex()
        )
        for i in range(max(2, n_lines // 10))
    ]
    weights = hour_weights()
    cumulative = [sum(weights[: h + 1]) for h in range(24)]
    # Riders make 2 taps on average (1–4): the number of cards follows from the records wanted.
    tacs = _TacMaker(keys)
    day_text = plan.day.strftime("%Y%m%d")
    purchases = loads = amount_total = produced = 0
    next_progress = 100_000
    spill = _Spill(out_dir / f".spill-{os.getpid()}", plan.spill_records)
    opening_file = out_dir / "opening-cards.csv"
    opening = open(opening_file, "w", encoding="utf-8")  # noqa: SIM115 - closed below, written in the loop
    opening.write("card_no,card_type,balance,online_seq,offline_seq\n")
    card_index = -1
    while produced < plan.records:
        card_index += 1
        roll = rnd.randrange(100)
        card_type = next(t for t, upto in _cumulative_mix() if roll < upto)
        card = _Card(
            f"{CITY}{card_index + 1:012d}",
            card_type,
            balance=rnd.choice((300, 1_000, 3_000, 8_000)),
            online_seq=rnd.randrange(40),
            offline_seq=rnd.randrange(600),
        )
        opening.write(f"{card.card_no},{card.card_type:02X},{card.balance},{card.online_seq},{card.offline_seq}\n")
        taps = min(rnd.choice((1, 2, 2, 2, 3, 4)), plan.records - produced)
        start = max(601, _tap_second(rnd, cumulative))
        home_line = rnd.randrange(n_lines)
        last_paid_at = -(10**9)
        transfers = 0
        previous_at = start - 601
        for tap in range(taps):
            at = previous_at + rnd.randint(15 * 60, 5 * 3600) if tap else start
            if at > 86_399:
                break
            line = home_line if tap % 2 == 0 or rnd.random() < 0.3 else rnd.randrange(n_lines)
            device = validators[line * plan.buses_per_line + rnd.randrange(plan.buses_per_line)]
            fare = int(FLAT_FARE * CONCESSION[card.card_type])
            if fare and at - last_paid_at <= TRANSFER_WINDOW and transfers < 2:
                fare = max(0, fare - TRANSFER_DISCOUNT)
                transfers += 1
            else:
                transfers = 0
            if card.balance < fare:
                counter = counters[card_index % len(counters)]
                amount = rnd.choice(LOAD_AMOUNTS)
                load_at = max(0, previous_at + 1, at - rnd.randint(60, 600))
                counter.records.append(
                    (load_at, card.card_no, 0x02, card.card_type, card.online_seq, amount, card.balance)
                )
                spill.added(validators, counters)
                card.online_seq += 1
                card.balance += amount
                loads += 1
                amount_total += amount
                produced += 1
            device.records.append((at, card.card_no, 0x06, card.card_type, card.offline_seq, fare, card.balance))
            spill.added(validators, counters)
            card.offline_seq += 1
            card.balance -= fare
            last_paid_at = at
            previous_at = at
            purchases += 1
            amount_total += fare
            produced += 1
        if progress is not None and produced >= next_progress:
            progress(produced)
            next_progress += 100_000
    opening.close()
    try:
        files = _write_batches(plan, out_dir, validators + counters, tacs, day_text, spill)
    finally:
        spill.remove()
    registry_file = out_dir / "registry.json"
    registry_file.write_text(json.dumps(_registry(operators, validators + counters), indent=1), encoding="utf-8")
    key_file = out_dir / "keys.json"
    key_file.write_text(json.dumps(keys.to_json(), indent=1), encoding="utf-8")
    os.chmod(key_file, 0o600)
    return CityDay(
        out_dir, files, registry_file, key_file, opening_file, produced, purchases, loads, amount_total, card_index + 1
    )


def _cumulative_mix() -> Iterator[tuple[int, int]]:
    total = 0
    for card_type, percent in CARD_TYPE_MIX:
        total += percent
        yield card_type, total


def _tap_second(rnd: random.Random, cumulative: list[float]) -> int:
    hour = bisect.bisect_left(cumulative, rnd.random() * cumulative[-1])
    return min(hour, 23) * 3600 + rnd.randrange(3600)


class _Spill:
    """Taps beyond ``limit`` in memory go to one append-only file per device (read back, one device at a time, when
    the batches are written): the generator's memory stays bounded whatever the size of the day."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = max(1, limit)
        self.held = 0
        self.spilled: set[str] = set()

    def added(self, *groups: list[Device]) -> None:
        """One tap was added to a device; spill every device's taps when too many are held."""
        self.held += 1
        if self.held < self.limit:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for devices in groups:
            for device in devices:
                if device.records:
                    with open(self.directory / device.device_id, "a", encoding="ascii") as fh:
                        fh.writelines(",".join(map(str, tap)) + "\n" for tap in device.records)
                    self.spilled.add(device.device_id)
                    device.records = []
        self.held = 0

    def taps(self, device: Device) -> list[_Tap]:
        """All of a device's taps: the spilled ones and those still held."""
        taps: list[_Tap] = []
        if device.device_id in self.spilled:
            with open(self.directory / device.device_id, encoding="ascii") as fh:
                for line in fh:
                    at, card_no, txn_type, card_type, card_seq, amount, balance = line.split(",")
                    taps.append((int(at), card_no, int(txn_type), int(card_type), int(card_seq), int(amount),
                                 int(balance)))  # fmt: skip
        taps.extend(device.records)
        device.records = []
        return taps

    def remove(self) -> None:
        """Delete the spill files."""
        if self.directory.exists():
            for path in self.directory.iterdir():
                path.unlink()
            self.directory.rmdir()


def _write_batches(
    plan: CityPlan, out_dir: Path, devices: list[Device], tacs: _TacMaker, day_text: str, spill: _Spill
) -> list[Path]:
    """Sort each device's taps by time, number them (term_seq, device_seq), sign them, write spec §5 batches."""
    files: list[Path] = []
    # Made after the day's last tap (devices upload after midnight): a batch made before some of its records would
    # put them outside clearing's time window (rejected ``outside_window``).
    created = datetime.combine(plan.day + timedelta(days=1), time(0, 30), CST).isoformat(timespec="seconds")
    date4 = bytes.fromhex(day_text)
    alg = f"{plan_alg(tacs):02X}"
    for device in devices:
        taps = spill.taps(device)
        if not taps:
            continue
        taps.sort()
        term_id = bytes.fromhex(device.term_id)
        lines: list[tuple[int, str]] = []
        for seq, (at, card_no, txn_type, card_type, card_seq, amount, balance) in enumerate(taps, start=1):
            hhmmss = _hhmmss(at)
            calc = tacs.calculator(card_no)
            if txn_type == 0x02:
                tac = calc.load(balance + amount, card_seq, amount, term_id, date4, bytes.fromhex(hhmmss))
                tail = ",,,"
            else:
                tac = calc.purchase(amount, txn_type, term_id, seq, date4, bytes.fromhex(hhmmss))
                tail = f"{device.line_id},,{device.device_id},"
            lines.append(
                (
                    amount,
                    f"{txn_type:02X},{card_no},{card_type:02X},{card_seq},{amount},{balance},{device.term_id},{seq},"
                    f"{day_text},{hhmmss},{tac.hex().upper()},{alg},01,ok,{tail},{seq}\n",
                )
            )
        del taps
        for part, start in enumerate(range(0, len(lines), plan.batch_size), start=1):
            chunk = lines[start : start + plan.batch_size]
            header = BatchHeader(
                batch_id=f"{device.device_id}-{day_text}-{part}",
                device_id=device.device_id,
                operator_id=device.operator_id,
                term_id=device.term_id,
                created_at=created,
                record_count=len(chunk),
                amount_total=sum(amount for amount, _ in chunk),
            )
            path = out_dir / f"{device.device_id}-{day_text}-{part}.csv"
            with open(path, "w", encoding="utf-8", newline="") as fh:
                fh.write(header.to_json() + "\n")
                fh.writelines(text for _, text in chunk)
            files.append(path)
    return files


def plan_alg(tacs: _TacMaker) -> int:
    """The algorithm the TACs are made with."""
    return int(tacs._alg)


def _registry(operators: list[str], devices: list[Device]) -> dict[str, object]:
    """The registry file (cli.md) of the day's operators and devices."""

    def fee(percent: str) -> dict[str, object]:
        return {"percent": percent, "per_txn": 0, "from": "2025-01-01"}

    bus_operators = [
        {"operator_id": op, "name": f"Bus company {op[-1]}", "kind": "bus", "fee": fee("1.5")} for op in operators
    ]
    issuer = {"operator_id": "OP-ISSUER", "name": "Card issuer", "kind": "issuer", "fee": fee("0")}
    return {
        "format": "onecard-registry/1",
        "operators": [*bus_operators, issuer],
        "devices": [
            {
                "device_id": d.device_id,
                "operator_id": d.operator_id,
                "kind": d.kind,
                "term_id": d.term_id,
                "upload_key": d.upload_key,
            }
            for d in devices
        ],
    }


def card_tac_key_check(keys: IssuerKeys, card_no: str) -> bytes:
    """The DTK of a card (for tests that verify generated TACs)."""
    return keys.card_key(KeyUsage.DTK, bytes.fromhex(card_no))
