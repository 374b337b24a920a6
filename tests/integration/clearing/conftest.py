"""Fixtures of the clearing tests: a small city on a fresh database (SQLite, then PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.clearing.citykit import City, open_city


@pytest.fixture
def city(db_url: str, tmp_path: Path) -> Iterator[City]:
    """A migrated database with the city's registry, the vector keys in a software keystore, in-process clearing."""
    opened = open_city(db_url, tmp_path)
    yield opened
    opened.dispose()
