"""``onecard db upgrade`` on a fresh SQLite file (cli.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from onecard_cli.db import db_app

runner = CliRunner()
onecard = typer.Typer()  # mounted as main.py will mount it: ``onecard db upgrade``
onecard.add_typer(db_app, name="db")


def test_db_upgrade_creates_the_schema_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "fresh.db"
    monkeypatch.setenv("ONECARD_DATABASE_URL", f"sqlite:///{database}")
    first = runner.invoke(onecard, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "up to date" in first.output
    engine = create_engine(f"sqlite:///{database}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"residents", "cards", "loads", "hotlist_entries", "audit_log", "alembic_version"} <= tables
    second = runner.invoke(onecard, ["db", "upgrade"])
    assert second.exit_code == 0, second.output


def test_db_upgrade_failure_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ONECARD_DEBUG", raising=False)
    monkeypatch.setenv("ONECARD_DATABASE_URL", f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    result = runner.invoke(onecard, ["db", "upgrade"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: cannot upgrade sqlite:///") and "Traceback" not in result.output
    monkeypatch.setenv("ONECARD_DATABASE_URL", "not a url")
    result = runner.invoke(onecard, ["db", "upgrade"])
    assert result.exit_code == 1 and "error: ONECARD_DATABASE_URL is not a database URL" in result.output
