"""Reports (cli.md ``onecard clearing report``): the same bytes every time for a closed day, the same day gives the
same reports on SQLite and on PostgreSQL, and the commands ingest, run and report."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from integration.clearing.citykit import DAY, City, open_city, tampered, unconfirmed
from openpyxl import load_workbook
from services import Postgres
from sqlalchemy import text
from typer.testing import CliRunner

from clearing.reports import RENDERERS, ReportTampered, day_report
from onecard_cli.clearing import clearing_app

NEXT = DAY + timedelta(days=1)


def a_city_day(city: City) -> None:
    """Two days: loads, taps on two bus companies and the water kiosk, an unconfirmed tap, a forgery, a late one."""
    cards = [city.new_card(load=10_000) for _ in range(4)]
    city.send_counter()
    taps = []
    for hour in (7, 8, 12, 17, 18):
        city.clock.set(DAY, hour, 5)
        taps += [city.tap("BUSA-V01", cards[0], 200), city.tap("BUSB-V01", cards[1], 150)]
    city.clock.set(DAY, 9)
    city.bill("W-2025-02-001", 4_321)
    water = city.tap("WATER-K01", cards[2], 4_321, ref="W-2025-02-001")
    city.pay("W-2025-02-001", water)
    unmatched = city.tap("WATER-K01", cards[2], 99, ref="W-NO-SUCH-BILL")
    pending = city.tap("BUSA-V02", cards[3], 200)
    late = city.tap("BUSA-V02", cards[3], 200)
    city.clock.set(DAY, 23)
    city.send("BUSA-V01", [t for t in taps if t.term_id == "031000000101"])
    city.send("BUSB-V01", [tampered(taps[1], amount=1)] + [t for t in taps[3::2]])
    city.send("WATER-K01", [water, unmatched])
    city.send("BUSA-V02", [unconfirmed(pending)])
    assert city.run(DAY).stage == "done"
    city.clock.set(NEXT, 8)
    city.send("BUSA-V02", [late])
    city.load(cards[0], 3_000)
    city.send_counter()
    assert city.run(NEXT).stage == "done"


def _all_formats(city: City, day: object) -> dict[str, bytes]:
    with city.uow() as uow:
        document = day_report(uow.session, day)  # type: ignore[arg-type]
    return {name: render(document) for name, render in RENDERERS.items()}


def test_the_same_day_gives_the_same_reports_on_sqlite_and_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    made: dict[str, dict[str, bytes]] = {}
    for name, url in (
        ("sqlite", f"sqlite:///{tmp_path / 'city.db'}"),
        ("postgresql", postgres.create_database("reports_same_day")),
    ):
        (tmp_path / name).mkdir()
        city = open_city(url, tmp_path / name)
        try:
            a_city_day(city)
            made[name] = {**_all_formats(city, DAY), **{f"next.{k}": v for k, v in _all_formats(city, NEXT).items()}}
        finally:
            city.dispose()
    assert made["sqlite"] == made["postgresql"]
    document = json.loads(made["sqlite"]["json"])
    assert document["status"] == "closed" and document["reconciliation"]["ok"]
    assert {o["operator_id"] for o in document["operators"]} == {"OP-BUS-A", "OP-BUS-B", "OP-WATER"}
    water = next(o for o in document["operators"] if o["operator_id"] == "OP-WATER")
    # 0.5 % of 4,420 is 22.1 → 22, plus 10 fen for each of the 2 payments
    assert (water["count"], water["amount"], water["fee"], water["payable"]) == (2, 4_420, 42, 4_420 - 42)
    assert {(e["class"], e["code"]) for e in document["exceptions"]} == {
        ("pending", "unconfirmed"),
        ("rejected", "bad_tac"),
        ("suspicious", "counter_gap"),  # the forged record is no link of the card's chain
        ("suspicious", "bill_unmatched"),
    }
    late = json.loads(made["sqlite"]["next.json"])["late"]
    assert [(x["card_seq"], x["class"]) for x in late] == [
        (0, "settled"),
        (1, "settled"),
    ]  # confirmed, and the late one


def test_a_closed_days_reports_are_the_same_bytes_every_time(city: City) -> None:
    a_city_day(city)
    first = _all_formats(city, DAY)
    city.clock.set(NEXT + timedelta(days=1), 8)
    assert city.run(NEXT + timedelta(days=1)).stage == "done"
    assert _all_formats(city, DAY) == first
    assert first["pdf"].startswith(b"%PDF") and b"/CreationDate (D:20000101000000" in first["pdf"]  # invariant
    workbook = load_workbook(io.BytesIO(first["xlsx"]))
    assert workbook.sheetnames[:3] == ["statement", "records", "exceptions"]
    assert {info.date_time for info in zipfile.ZipFile(io.BytesIO(first["xlsx"])).infolist()} == {(1980, 1, 1, 0, 0, 0)}
    csv_text = first["csv"].decode()
    assert csv_text.startswith(f"report,date,{DAY.isoformat()},status,closed\n")
    # Someone edits a closed day's statement behind clearing's back: the report says so.
    with city.uow() as uow:
        uow.session.execute(text("UPDATE clearing_statement SET fee = fee + 1 WHERE clearing_day = :d"), {"d": DAY})
        uow.commit()
    with city.uow() as uow, pytest.raises(ReportTampered):
        day_report(uow.session, DAY)


def test_the_commands_ingest_run_and_report(city: City, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ONECARD_DATABASE_URL": city.url, **city.keystore_env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ONECARD_REDIS_URL", raising=False)
    card = city.new_card(load=5_000)
    counter = tmp_path / "counter.csv"
    counter.write_bytes(city.batch("COUNTER-01", city.counter_records()))
    city.clock.set(DAY, 8)
    taps = [city.tap("BUSA-V01", card, 200) for _ in range(3)]
    bus = tmp_path / "bus.csv"
    bus.write_bytes(city.batch("BUSA-V01", [*taps[:2], tampered(taps[2], amount=1)]))
    wrong = tmp_path / "wrong.csv"
    header, _, body = city.batch("BUSB-V01", [city.tap("BUSB-V01", card, 100)]).partition(b"\n")
    wrong.write_bytes(header.replace(b'"amount_total":100', b'"amount_total":999') + b"\n" + body)
    runner = CliRunner()

    result = runner.invoke(clearing_app, ["ingest", str(counter), str(bus), str(wrong), "--json"])
    assert result.exit_code == 1, result.output
    files = {Path(item["file"]).name: item for item in json.loads(result.stdout)["files"]}
    assert (files["counter.csv"]["accepted"], files["counter.csv"]["rejected"]) == (1, 0)
    assert (files["bus.csv"]["accepted"], files["bus.csv"]["rejected"], files["bus.csv"]["duplicate"]) == (3, 1, 0)
    assert files["wrong.csv"]["status"] == "refused" and "amount_total" in files["wrong.csv"]["reason"]
    assert "1 of 3 files refused" in result.stderr
    again = runner.invoke(clearing_app, ["ingest", str(bus)])
    assert again.exit_code == 0 and "already ingested" in again.stdout

    run = runner.invoke(clearing_app, ["run", "--date", DAY.isoformat()])
    assert run.exit_code == 0, run.output
    assert f"clearing day {DAY.isoformat()} (run 1): closed" in run.stdout
    report = runner.invoke(clearing_app, ["report", "--date", DAY.isoformat(), "--format", "json"])
    document = json.loads(report.stdout)
    assert document["operators"][0]["amount"] == 400 and document["records"]["rejected"] == 1
    for fmt in ("csv", "xlsx", "pdf"):
        out = tmp_path / f"report.{fmt}"
        made = runner.invoke(clearing_app, ["report", "--date", DAY.isoformat(), "--format", fmt, "--out", str(out)])
        assert made.exit_code == 0 and out.read_bytes()
    bad = runner.invoke(clearing_app, ["report", "--date", "2025-13-01"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: --date must be YYYY-MM-DD")
    never = runner.invoke(clearing_app, ["report", "--date", "2024-01-01"])
    assert never.exit_code == 1 and "has not been run" in never.stderr


def test_the_same_day_gives_the_same_reports_however_many_shards_clear_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clear stage is split into card ranges (one task each): one shard per card or one for the whole day,
    the statements, classes and every report byte are the same."""
    made: dict[str, dict[str, bytes]] = {}
    tasks: dict[str, int] = {}
    for name, shard_records in (("one", "1000000"), ("many", "1")):
        monkeypatch.setenv("ONECARD_CLEARING_SHARD_RECORDS", shard_records)
        (tmp_path / name).mkdir()
        city = open_city(f"sqlite:///{tmp_path / name / 'city.db'}", tmp_path / name)
        try:
            a_city_day(city)
            made[name] = {**_all_formats(city, DAY), **{f"next.{k}": v for k, v in _all_formats(city, NEXT).items()}}
            with city.uow() as uow:
                tasks[name] = int(
                    uow.session.execute(
                        text("SELECT count(*) FROM clearing_task WHERE stage = 'clear' AND run_id = 1")
                    ).scalar_one()
                )
        finally:
            city.dispose()
    assert tasks["one"] == 1 and tasks["many"] >= 4
    assert made["one"] == made["many"]
