"""``onecard demo``: a scripted day on the embedded default (in-process readers, no services).

What is built so far: cards issued from factory chips, PSAMs for the buses, online loads, bus taps
(purchases and CAPP purchases), a tear recovered with GET TRANSACTION PROOF, and each bus's day
written as a spec §5 batch file. Issuance records, clearing, settlement and reports come with their issues.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cardos import perso
from cardos.batch import Batch, BatchRecord, RecordStatus
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from cardos.layout import HolderData, PublicData, TransitRecord
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.errors import TransactionRefused
from terminal.field import InProcessField
from terminal.loadhost import KeyFileLoadHost
from terminal.personalise import personalise
from terminal.purse import PurseTerminal, RecordMeta, bcd_now

CST = timezone(timedelta(hours=8))
SURNAMES = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU"]
GIVEN = ["WEI", "FANG", "NA", "MIN", "JING", "LEI", "QIANG", "YAN", "JUN", "HUI"]


class DemoClock:
    """The simulated time of day, moved on by the script."""

    def __init__(self, day: date) -> None:
        self.now = datetime(day.year, day.month, day.day, 6, 0, tzinfo=CST)

    def __call__(self) -> datetime:
        return self.now


def run_demo(*, cards: int, riders: int, date: str | None, seed: int) -> None:
    """Run the scripted day and print a summary."""
    console = Console()
    day = datetime.strptime(date, "%Y-%m-%d").date() if date else datetime.now(CST).date()
    rnd = random.Random(seed)
    clock = DemoClock(day)
    keys = IssuerKeys(
        bytes.fromhex("0310000000000000"),
        Alg.DES,
        {name: rnd.randbytes(16) for name in ("KT", "MDAMK", "MPK", "MLK", "MTK", "MPUK", "MRPK")},
    )
    console.print(f"[bold]One-card demo[/bold] for {day.isoformat()} (in-process readers, seed {seed})")
    issued: list[Card] = []
    host = KeyFileLoadHost(keys, clock)
    counter = PurseTerminal(clock=clock)
    loads: list[BatchRecord] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("issuing and loading cards", total=cards)
        for index in range(cards):
            card_no = f"0310{index + 1:012d}"
            card = Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], rnd.randbytes(8), rng=rnd.randbytes)
            registered = index % 4 != 3
            holder = (
                HolderData(
                    f"{rnd.choice(SURNAMES)} {rnd.choice(GIVEN)}",
                    f"1101011990{index:04d}123X"[:18],
                    "13800000000",
                )
                if registered
                else None
            )
            card_type = rnd.choice([1, 1, 1, 2, 3])
            profile = perso.user_card_profile(keys, card_no=card_no, holder=holder, card_type=card_type)
            with InProcessChannel(card) as channel:
                personalise(channel, keys.alg, keys.keys["KT"], perso.user_card_script(profile))
                amount = rnd.choice([2_000, 5_000, 10_000])
                result = counter.load(
                    channel,
                    amount,
                    host,
                    term_id=bytes.fromhex("031000009001"),
                    request_id=f"load-{card_no}",
                    device_seq=len(loads) + 1,
                )
                loads.append(result.record)
            issued.append(card)
            progress.advance(task)

    buses: list[tuple[str, PurseTerminal, InProcessField, list[BatchRecord]]] = []
    for bus in range(3):
        term_id = f"03100000010{bus + 1}"
        psam = Card.factory(CardKind.PSAM, keys.alg, keys.keys["KT"], rnd.randbytes(8), rng=rnd.randbytes)
        with InProcessChannel(psam) as channel:
            personalise(channel, keys.alg, keys.keys["KT"], perso.psam_script_from_keys(keys, term_id))
        psam_card = PsamCard(InProcessChannel(psam))
        psam_card.open()
        field = InProcessField()
        buses.append((term_id, PurseTerminal(clock=clock, psam=psam_card, card_source=field), field, []))

    refused = 0
    torn = 0
    fare = 200
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("riders tapping", total=riders)
        for tap in range(riders):
            clock.now += timedelta(seconds=rnd.randint(20, 240))
            term_id, term, field, records = buses[tap % len(buses)]
            card = rnd.choice(issued)
            line = 10 + tap % len(buses)

            def boarding(public: PublicData, old: bytes, line: int = line) -> bytes:
                date4, time3 = bcd_now(clock())
                transit = TransitRecord.decode(old)
                return TransitRecord(
                    **{
                        **{f: getattr(transit, f) for f in TransitRecord.__dataclass_fields__},
                        "boarding_date": date4,
                        "boarding_time": time3,
                        "boarding_line": line,
                    }
                ).encode()

            tear = tap == riders // 2
            if tear:
                card.memory.arm_tear(3)  # the rider pulls the card away in the middle of DEBIT
                field.present(card)
                torn += 1
            try:
                result = term.purchase(
                    InProcessChannel(card),
                    fare,
                    capp_record=boarding,
                    meta=RecordMeta(line_id=str(line), vehicle_id=f"BUS{line}"),
                    device_seq=len(records) + 1,
                )
                records.append(result.record)
            except TransactionRefused:
                refused += 1
            card.memory.arm_tear(None)
            progress.advance(task)

    out_dir = Path("reports") / day.isoformat() / "batches"
    out_dir.mkdir(parents=True, exist_ok=True)
    created = clock().astimezone(UTC).astimezone(CST)
    counter_batch = Batch.build(f"COUNTER-{day:%Y%m%d}-1", "COUNTER-01", "OP-ISSUER", "031000009001", created, loads)
    (out_dir / "counter-01.csv").write_bytes(counter_batch.encode())
    table = Table(title="Bus validators")
    for column in ("term_id", "taps", "amount (yuan)", "recovered by proof"):
        table.add_column(column)
    for term_id, _, _, records in buses:
        batch = Batch.build(f"{term_id}-{day:%Y%m%d}-1", f"BUS-{term_id}", "OP-BUS-A", term_id, created, records)
        (out_dir / f"bus-{term_id}.csv").write_bytes(batch.encode())
        proofs = sum(1 for r in records if r.status is RecordStatus.PROOF)
        table.add_row(term_id, str(len(records)), f"{batch.header.amount_total / 100:.2f}", str(proofs))
    console.print(table)
    summary = Table(title="Day summary", show_header=False)
    summary.add_row("cards issued", str(cards))
    summary.add_row("loads", f"{len(loads)} ({sum(r.amount for r in loads) / 100:.2f} yuan)")
    summary.add_row("taps refused (balance)", str(refused))
    summary.add_row("tears recovered", str(torn))
    summary.add_row("batch files", str(out_dir))
    console.print(summary)
    console.print(
        "[yellow]Not built yet:[/yellow] issuance records, clearing, settlement, reconciliation and reports "
        "(issues #5–#8); `onecard serve` comes with the API (#7)."
    )
