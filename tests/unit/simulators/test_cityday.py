"""The city-day generator: genuine-looking records (chains, counters, TACs), deterministic for a seed."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path

from support import vector_keys

from cardos import crypto
from cardos.batch import BatchRecord, parse_batch
from simulators.cityday import CityPlan, generate

DAY = date(2025, 3, 1)


def _records(out: Path) -> list[BatchRecord]:
    records: list[BatchRecord] = []
    for path in sorted(out.glob("*-20250301-*.csv")):
        records.extend(parse_batch(path.read_bytes()).records)
    return records


def test_chains_counters_and_tacs(tmp_path: Path) -> None:
    keys = vector_keys(crypto.Alg.SM4)
    day = generate(CityPlan(records=3_000, day=DAY, seed=5, batch_size=400), tmp_path, keys)
    records = _records(tmp_path)
    assert len(records) == day.records == 3_000 and day.loads > 0 and day.purchases > 0
    assert sum(r.amount for r in records) == day.amount_total
    opening = {row["card_no"]: row for row in csv.DictReader(day.opening_file.open())}
    by_card: dict[str, list[BatchRecord]] = defaultdict(list)
    for record in records:
        by_card[record.card_no].append(record)
    for card_no, chain in by_card.items():
        chain.sort(key=lambda r: (r.txn_time, r.txn_type != "02"))
        balance = int(opening[card_no]["balance"])
        online, offline = int(opening[card_no]["online_seq"]), int(opening[card_no]["offline_seq"])
        for record in chain:
            assert record.balance_before == balance
            if record.txn_type == "02":
                assert record.card_seq == online
                online += 1
                balance += record.amount
            else:
                assert record.card_seq == offline
                offline += 1
                balance -= record.amount
            assert balance >= 0
    by_device: dict[str, list[BatchRecord]] = defaultdict(list)
    for record in records:
        by_device[record.term_id].append(record)
    for chain in by_device.values():
        assert [r.device_seq for r in chain] == list(range(1, len(chain) + 1))
        assert [r.txn_time for r in chain] == sorted(r.txn_time for r in chain)
    for record in records[::37]:
        dtk = keys.card_key(0x04, bytes.fromhex(record.card_no))
        date4, time3, term_id = (
            bytes.fromhex(record.txn_date),
            bytes.fromhex(record.txn_time),
            bytes.fromhex(record.term_id),
        )
        if record.txn_type == "02":
            tac = crypto.load_tac(keys.alg, dtk, record.balance_before + record.amount, record.card_seq, record.amount,
                                  term_id, date4, time3)  # fmt: skip
        else:
            tac = crypto.purchase_tac(keys.alg, dtk, record.amount, 6, term_id, record.term_seq, date4, time3)
        assert tac.hex().upper() == record.tac


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    keys = vector_keys(crypto.Alg.DES)

    def digest(out: Path) -> str:
        generate(CityPlan(records=800, day=DAY, seed=9), out, keys)
        h = hashlib.sha256()
        for path in sorted(out.iterdir()):
            h.update(path.name.encode() + path.read_bytes())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_spilling_taps_to_disk_changes_nothing(tmp_path: Path) -> None:
    """Bounded memory: taps spilled to per-device files every few hundred give the very same files."""
    keys = vector_keys(crypto.Alg.DES)

    def files(out: Path, spill: int) -> dict[str, bytes]:
        generate(CityPlan(records=3_000, day=DAY, seed=2, batch_size=500, spill_records=spill), out, keys)
        return {path.name: path.read_bytes() for path in sorted(out.iterdir())}

    held = files(tmp_path / "held", 1_000_000)
    spilled = files(tmp_path / "spilled", 333)
    assert held == spilled
    assert not any(name.startswith(".spill") for name in spilled)


def test_batches_are_made_after_their_last_record(tmp_path: Path) -> None:
    """A batch made before some of its records would put them outside clearing's time window."""
    generate(CityPlan(records=3_000, day=DAY, seed=8), tmp_path, vector_keys(crypto.Alg.DES))
    for path in tmp_path.glob("*-20250301-*.csv"):
        batch = parse_batch(path.read_bytes())
        made = datetime.fromisoformat(batch.header.created_at)
        last = max(datetime.strptime(r.txn_date + r.txn_time, "%Y%m%d%H%M%S") for r in batch.records)
        assert made.replace(tzinfo=None) > last
