"""Session-wide real services: PostgreSQL and Redis, started here and stopped at the end."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import Postgres, Redis, ServiceUnavailable, require_services, start_postgres, start_redis

_db_counter = itertools.count(1)


def _unavailable(exc: Exception) -> None:
    if require_services():
        pytest.fail(f"a required service is unavailable: {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster for the whole run."""
    try:
        cluster = start_postgres()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """A redis-server for the whole run."""
    try:
        server = start_redis()
    except ServiceUnavailable as exc:
        _unavailable(exc)
        raise
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: a SQLite file, then a PostgreSQL database (every DB test runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'onecard.db'}"
    cluster: Postgres = request.getfixturevalue("postgres")
    return cluster.create_database(f"t{next(_db_counter)}")
