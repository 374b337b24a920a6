"""``onecard registry import FILE``: validated whole, all or nothing, adds or updates; both databases."""

from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from integration.api.devicekit import KEYS, registry_document
from sqlalchemy import select
from typer.testing import CliRunner

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from clearing.models import Device, Operator, OperatorFee
from clearing.registry import (
    ImportCounts,
    RegistryFileError,
    fee_schedule_on,
    import_registry,
    parse_registry_file,
)
from onecard_cli.registry import registry_app

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(registry_app, name="registry")


def _import(db_url: str, doc: dict[str, Any]) -> ImportCounts:
    engine = make_engine(db_url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            return import_registry(uow, parse_registry_file(json.dumps(doc).encode()))
    finally:
        engine.dispose()


def _table(db_url: str, model: type[Any]) -> list[Any]:
    engine = make_engine(db_url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            rows = list(uow.session.scalars(select(model)))
            uow.session.expunge_all()
            return rows
    finally:
        engine.dispose()


def _schedule(db_url: str, operator_id: str, day: date) -> tuple[Decimal, int] | None:
    engine = make_engine(db_url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            fee = fee_schedule_on(uow.session, operator_id, day)
            return None if fee is None else (fee.percent, fee.per_txn)
    finally:
        engine.dispose()


def test_import_adds_then_updates(db_url: str) -> None:
    upgrade(db_url, "clearing@head")
    doc = registry_document()
    assert _import(db_url, doc) == ImportCounts(operators_added=4, fees_added=2, devices_added=7)
    assert _import(db_url, doc) == ImportCounts(operators_unchanged=4, fees_unchanged=2, devices_unchanged=7)

    changed = copy.deepcopy(doc)
    changed["operators"][0]["name"] = "Bus company A (renamed)"
    changed["operators"][0]["fee"] = [
        {"percent": "1.50", "per_txn": 0, "from": "2025-01-01"},
        {"percent": "1.25", "per_txn": 5, "from": "2025-07-01"},
    ]
    changed["devices"][0]["upload_key"] = "AB" * 32
    changed["devices"][1]["status"] = "retired"
    counts = _import(db_url, changed)
    assert counts == ImportCounts(
        operators_updated=1, operators_unchanged=3, fees_added=1, fees_unchanged=2, devices_updated=2,
        devices_unchanged=5,
    )  # fmt: skip

    devices = {device.device_id: device for device in _table(db_url, Device)}
    assert devices["BUSA-V01"].upload_key == "ab" * 32
    assert devices["BUSA-V02"].status == "retired"
    assert "upload_key" not in repr(devices["BUSA-V01"]) and "ab" * 32 not in repr(devices["BUSA-V01"])
    assert _schedule(db_url, "OP-BUS-A", date(2025, 6, 30)) == (Decimal("1.5"), 0)
    assert _schedule(db_url, "OP-BUS-A", date(2025, 7, 1)) == (Decimal("1.25"), 5)
    assert _schedule(db_url, "OP-BUS-A", date(2024, 12, 31)) is None
    assert len(_table(db_url, OperatorFee)) == 3


def _broken(doc: dict[str, Any], how: str) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    if how == "term_id":
        broken["devices"][-1]["term_id"] = "12345"
    elif how == "unknown operator":
        broken["devices"][-1]["operator_id"] = "OP-NOBODY"
    elif how == "repeated device":
        broken["devices"].append(copy.deepcopy(broken["devices"][0]))
    elif how == "percent as a number":
        broken["operators"][0]["fee"]["percent"] = 1.5
    elif how == "unknown key":
        broken["devices"][0]["colour"] = "red"
    return broken


@pytest.mark.parametrize(
    "how", ["term_id", "unknown operator", "repeated device", "percent as a number", "unknown key"]
)
def test_a_bad_file_imports_nothing(db_url: str, how: str) -> None:
    upgrade(db_url, "clearing@head")
    with pytest.raises(RegistryFileError) as refused:
        _import(db_url, _broken(registry_document(), how))
    assert all(key not in refused.value.message for key in KEYS.values())
    assert _table(db_url, Operator) == [] and _table(db_url, Device) == [] and _table(db_url, OperatorFee) == []


def test_a_term_id_of_another_device_is_refused(db_url: str) -> None:
    upgrade(db_url, "clearing@head")
    _import(db_url, registry_document())
    newcomer = {
        "format": "onecard-registry/1",
        "operators": [{"operator_id": "OP-METRO", "name": "Metro", "kind": "metro"}],
        "devices": [{"device_id": "METRO-G01", "operator_id": "OP-METRO", "kind": "gate",
                     "term_id": "031000000101", "upload_key": "77" * 32}],
    }  # fmt: skip
    with pytest.raises(RegistryFileError, match="term_id 031000000101 belongs to device BUSA-V01"):
        _import(db_url, newcomer)
    assert "OP-METRO" not in {operator.operator_id for operator in _table(db_url, Operator)}


def test_the_command_prints_counts_or_one_error_line(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONECARD_DATABASE_URL", db_url)
    good = tmp_path / "registry.json"
    good.write_text(json.dumps(registry_document()))

    not_migrated = runner.invoke(cli, ["registry", "import", str(good)])
    assert not_migrated.exit_code == 1
    assert not_migrated.output.startswith("error: database: ") and "onecard db upgrade" in not_migrated.output

    upgrade(db_url, "clearing@head")
    result = runner.invoke(cli, ["registry", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "operators: 4 added, 0 updated, 0 unchanged",
        "fee schedules: 2 added, 0 updated, 0 unchanged",
        "devices: 7 added, 0 updated, 0 unchanged",
    ]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken(registry_document(), "term_id")))
    for path, expected in (
        (bad, "error: bad registry file: devices[6].term_id: must be 12 digits"),
        (tmp_path / "missing.json", "error: [Errno 2] No such file or directory"),
    ):
        refused = runner.invoke(cli, ["registry", "import", str(path)])
        assert refused.exit_code == 1
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), refused.output
        assert "Traceback" not in refused.output
    not_json = tmp_path / "not.json"
    not_json.write_text("{not json")
    refused = runner.invoke(cli, ["registry", "import", str(not_json)])
    assert refused.exit_code == 1 and refused.output.startswith("error: bad registry file: Invalid JSON")
