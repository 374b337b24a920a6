"""``onecard bench api`` end to end, briefly: a throw-away PostgreSQL, one worker, two clients, one second each."""

from __future__ import annotations

import glob

import pytest

from onecard_cli.bench_api import bench_api


@pytest.mark.skipif(not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL is not installed")
def test_bench_api_loads_exactly_once_and_accounts_for_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONECARD_DATABASE_URL", raising=False)
    lines: list[str] = []
    doc = bench_api(lines.append, clients=2, seconds=1.0, workers=1, durable=False)
    assert doc["bench"] == "api" and doc["value"] > 0 and doc["baseline"] > 0
    assert doc["loads_errors"] == {} and doc["exactly_once"] and doc["loads_recorded"] == doc["loads_count"]
    for part in ("api_workers", "postgres", "clients", "total"):
        assert doc["cpu_ms_per_load"][part] >= 0 and part in doc["cpu_ms_per_noop"]
    assert doc["cpu_ms_per_load"]["api_workers"] > 0 and doc["cpu_ms_per_load"]["postgres"] > 0
    assert any("loads:" in line for line in lines)
