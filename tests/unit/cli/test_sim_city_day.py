"""``onecard sim city-day``: a city's day written as batch files, the registry, the keys and the opening cards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from cardos.batch import parse_batch
from cardos.keyfile import load_key_file
from onecard_cli.main import app

runner = CliRunner()


def test_sim_city_day_writes_the_days_files(tmp_path: Path) -> None:
    out = tmp_path / "day"
    result = runner.invoke(
        app, ["sim", "city-day", "--records", "2000", "--out", str(out), "--date", "2025-03-04", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "2,000 records" in result.stdout and "batch files" in result.stdout
    batches = sorted(out.glob("*-20250304-*.csv"))
    records = [record for path in batches for record in parse_batch(path.read_bytes()).records]
    assert len(records) == 2000
    assert {r.txn_type for r in records} == {"02", "06"}
    registry = json.loads((out / "registry.json").read_text())
    devices = {d["device_id"] for d in registry["devices"]}
    assert {parse_batch(path.read_bytes()).header.device_id for path in batches} <= devices
    assert load_key_file(out / "keys.json").issuer_id.hex() == "0310000000000000"
    with (out / "opening-cards.csv").open() as fh:
        cards = {row["card_no"] for row in csv.DictReader(fh)}
    assert {r.card_no for r in records} <= cards


def test_sim_city_day_same_seed_same_files(tmp_path: Path) -> None:
    def files(name: str) -> dict[str, bytes]:
        out = tmp_path / name
        result = runner.invoke(app, ["sim", "city-day", "--records", "500", "--out", str(out), "--date", "2025-03-04"])
        assert result.exit_code == 0, result.output
        return {path.name: path.read_bytes() for path in sorted(out.iterdir())}

    assert files("a") == files("b")


def test_sim_city_day_bad_date_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sim", "city-day", "--records", "10", "--out", str(tmp_path), "--date", "March"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.output
