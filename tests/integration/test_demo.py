"""``onecard demo`` (issue #8): the simulated day runs at a small size, its reconciliation holds, and two runs with
the same seed write byte-identical reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onecard_cli.main import app

DAY = "2025-03-03"
NEXT = "2025-03-04"
ARGS = ["demo", "--cards", "6", "--riders", "40", "--date", DAY, "--seed", "7"]


def _run(where: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    where.mkdir()
    monkeypatch.chdir(where)
    result = CliRunner().invoke(app, ARGS)
    assert result.exit_code == 0, result.output
    assert "reconciliation OK" in result.output
    assert (where / "demo" / DAY / "onecard.db").is_file()
    return {str(path.relative_to(where)): path.read_bytes() for path in sorted((where / "reports").rglob("*"))
            if path.is_file()}  # fmt: skip


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
