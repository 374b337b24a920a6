"""The onecard command: one-line errors, no tracebacks, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onecard_cli.main import app

runner = CliRunner()


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sim", "card", "--reader", "0"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.output


def test_key_file_with_bad_kcv_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "format": "onecard-keys/1",
                "issuer_id": "0310000000000000",
                "alg": "00",
                "keys": {"KT": "F0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF"},
                "kcv": {"KT": "000000"},
            }
        )
    )
    result = runner.invoke(app, ["sim", "card", "--reader", "0", "--factory", "--keys", str(keys)])
    assert result.exit_code == 1
    assert "error: KCV of KT does not match" in result.output


def test_reader_that_does_not_exist() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onecard_cli.main", "card", "read", "--reader", "No Such Reader", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_demo_runs_and_writes_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--cards", "4", "--riders", "12", "--date", "2025-03-01"])
    assert result.exit_code == 0, result.output
    batches = sorted((tmp_path / "reports" / "2025-03-01" / "batches").iterdir())
    assert batches[0].name == "bus-031000000101.csv"
    from cardos.batch import parse_batch

    assert sum(parse_batch(b.read_bytes()).header.record_count for b in batches if b.name.startswith("bus")) > 0
