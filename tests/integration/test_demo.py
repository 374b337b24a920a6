"""``onecard demo`` (issue #8): the simulated day runs at a small size, its reconciliation holds, two runs with the
same seed write byte-identical reports, and so does a run with ``--pcsc`` (every card through pcscd and vpcd)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import onecard_cli.demo
from cardos.card import Card, CardKind
from onecard_cli.main import app
from simulators.pcscd import Pcscd
from terminal.channel import Channel, InProcessChannel

DAY = "2025-03-03"
NEXT = "2025-03-04"
ARGS = ["demo", "--cards", "6", "--riders", "40", "--date", DAY, "--seed", "7"]


def _reports(where: Path) -> dict[str, bytes]:
    return {str(path.relative_to(where)): path.read_bytes() for path in sorted((where / "reports").rglob("*"))
            if path.is_file()}  # fmt: skip


def _run(where: Path, monkeypatch: pytest.MonkeyPatch, args: list[str] = ARGS) -> dict[str, bytes]:
    where.mkdir()
    monkeypatch.chdir(where)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reconciliation OK" in result.output
    assert (where / "demo" / DAY / "onecard.db").is_file()
    return _reports(where)


def test_demo_day_reconciles_and_same_seed_gives_identical_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _run(tmp_path / "first", monkeypatch)
    expected = {f"reports/{day}/clearing-{day}.{fmt}" for day in (DAY, NEXT) for fmt in ("json", "csv", "xlsx", "pdf")}
    assert expected <= set(first)
    batches = {name for name in first if name.startswith(f"reports/{DAY}/batches/")}
    assert set(first) == expected | batches  # and the exact bytes of every uploaded batch
    assert (
        f"reports/{DAY}/batches/counter-01.csv" in batches and f"reports/{DAY}/batches/bus-031000000102.csv" in batches
    )

    report = json.loads(first[f"reports/{DAY}/clearing-{DAY}.json"])
    assert report["reconciliation"]["ok"]
    assert all(check["ok"] for check in report["reconciliation"]["checks"])
    operators = {o["operator_id"] for o in report["operators"]}
    assert {"OP-BUS-A", "OP-BUS-B"} <= operators
    assert operators & {"OP-WATER", "OP-ELEC", "OP-GAS"}  # bills paid at the kiosks
    assert ("rejected", "hotlisted") in {(e["class"], e["code"]) for e in report["exceptions"]}  # the lost card
    late = json.loads(first[f"reports/{NEXT}/clearing-{NEXT}.json"])
    assert late["reconciliation"]["ok"]
    assert late["late"]  # the validator that uploaded the next morning
    assert first[f"reports/{DAY}/clearing-{DAY}.pdf"].startswith(b"%PDF")

    second = _run(tmp_path / "second", monkeypatch)
    assert second.keys() == first.keys()
    for name, content in first.items():
        assert second[name] == content, f"{name} differs between two runs with the same seed"


SMALL = ["--cards", "4", "--riders", "12", "--date", DAY, "--seed", "7"]


@pytest.mark.pcsc
def test_demo_with_pcsc_writes_the_same_reports_as_in_process(
    pcscd: Pcscd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every card through pcscd and vpcd slot 0 (issue, loads, taps, the tear, kiosk payments; the PSAMs personalised
    in slot 1): byte for byte the reports of the in-process day with the same seed."""
    in_process = _run(tmp_path / "in-process", monkeypatch, ["demo", *SMALL])

    where = tmp_path / "pcsc"
    where.mkdir()
    monkeypatch.chdir(where)
    # Count what goes where: every card through the vpcd slots, only the PSAMs' day-long channels in-process.
    opened: Counter[str] = Counter()
    in_process_kinds: list[CardKind] = []
    real_open = onecard_cli.demo.PcscReaders.open

    def counting_open(readers: onecard_cli.demo.PcscReaders, chip: Card, *, psam: bool = False) -> Channel:
        opened["psam" if psam else "card"] += 1
        return real_open(readers, chip, psam=psam)

    def counting_channel(chip: Card) -> InProcessChannel:
        in_process_kinds.append(chip.kind)
        return InProcessChannel(chip)

    monkeypatch.setattr(onecard_cli.demo.PcscReaders, "open", counting_open)
    monkeypatch.setattr(onecard_cli.demo, "InProcessChannel", counting_channel)
    out = io.StringIO()
    # The session's pcscd fixture holds the machine-wide vpcd lock (the command takes it itself).
    assert onecard_cli.demo.run_demo(
        cards=4, riders=12, date=DAY, seed=7, console=Console(file=out, width=200), pcsc=True, lock=False
    )
    text = out.getvalue()
    assert "cards in the PC/SC reader Virtual PCD 00 00" in text
    assert "torn during DEBIT, presented again" in text and "reconciliation OK" in text
    pcsc = _reports(where)
    devices = 6  # three validators, three kiosks
    assert opened["psam"] == devices and in_process_kinds == [CardKind.PSAM] * devices
    # issuing and loading 4 + 1 cards, 12 riders' taps, the lost and the stolen card, the tear (twice), 3 bills
    assert opened["card"] == 2 * 5 + 12 + 2 + 2 + 3

    assert pcsc.keys() == in_process.keys()
    for name, content in in_process.items():
        assert pcsc[name] == content, f"{name} differs between the in-process and the --pcsc day"


def test_demo_pcsc_without_pcscd_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pcscd or no vpcd driver: ``--pcsc`` stops before the day with one line naming the Debian packages."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(onecard_cli.demo, "find_pcscd", lambda: None)
    monkeypatch.setattr(onecard_cli.demo, "find_vpcd_config", lambda: None)
    result = CliRunner().invoke(app, ["demo", "--pcsc", *SMALL])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --pcsc needs pcscd"), result.output
    assert "Debian package pcscd" in lines[0] and "Debian package vsmartcard-vpcd" in lines[0]
    assert not (tmp_path / "demo").exists()  # nothing of the day was started
