"""``onecard bench city-day`` (issue #8, "City scale"): a small generated day through issuance seeding, the inbox
and clearing on a real Celery worker on PostgreSQL — the day closes, reconciles, and every record has a class."""

from __future__ import annotations

import json
from pathlib import Path

from services import Postgres, Redis
from typer.testing import CliRunner

from onecard_cli.bench_cityday import bench_cityday
from onecard_cli.main import app


def test_a_small_city_day_closes_reconciled_with_every_record_classified(
    postgres: Postgres, redis_server: Redis, tmp_path: Path
) -> None:
    # The fixtures only say the services can run here (skip or fail as the other tests do); the benchmark starts
    # its own throw-away cluster and Redis, as it does on the command line.
    lines: list[str] = []
    doc = bench_cityday(3_000, workers=1, keep=tmp_path, progress=lines.append)
    assert doc["bench"] == "city-day" and doc["records"] == 3_000
    assert doc["reconciliation_ok"] is True and doc["reconciliation_failed"] == []
    assert doc["every_record_classified"] is True and sum(doc["classes"].values()) == 3_000
    assert doc["classes"] == {"settled": 3_000}, doc["codes"]  # a genuine day: the opening state anchors each card
    assert doc["loads"] > 0 and doc["purchases"] + doc["loads"] == 3_000
    assert doc["clear_s"] > 0 and doc["records_per_s"] > 0 and doc["baseline"] > 0
    memory = doc["memory_mb"]
    assert len(memory["workers_peak_rss"]) == 1 and memory["workers_peak_rss"][0] > 0
    assert memory["postgres_backend_peak_rss"] > 0 and memory["driver_peak_rss"] > 0
    assert any("clearing" in line for line in lines)
    kept = Path(doc["files"])
    assert kept.parent == tmp_path and (kept / "batches" / "registry.json").exists()


def test_the_command_prints_one_json_document(postgres: Postgres, redis_server: Redis) -> None:
    result = CliRunner().invoke(app, ["bench", "city-day", "--records", "1500", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"bench", "value", "unit", "baseline", "ratio"} <= doc.keys()
    assert doc["unit"] == "records/s" and doc["reconciliation_ok"] is True


def test_a_day_generated_earlier_is_cleared_from_its_files(
    postgres: Postgres, redis_server: Redis, tmp_path: Path
) -> None:
    runner = CliRunner()
    made = runner.invoke(
        app, ["sim", "city-day", "--records", "2000", "--out", str(tmp_path / "day"), "--date", "2025-03-04"]
    )
    assert made.exit_code == 0, made.output
    ran = runner.invoke(
        app,
        ["bench", "city-day", "--from", str(tmp_path / "day"), "--date", "2025-03-04", "--workers", "1", "--json"],
    )
    assert ran.exit_code == 0, ran.output
    doc = json.loads(ran.stdout.strip().splitlines()[-1])
    assert doc["records"] == 2_000 and doc["generate_s"] == 0.0
    assert doc["classes"] == {"settled": 2_000} and doc["reconciliation_ok"] is True
    missing = runner.invoke(app, ["bench", "city-day", "--from", str(tmp_path / "nothing"), "--json"])
    assert missing.exit_code != 0 and "no city day" in missing.output
