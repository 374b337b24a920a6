"""Fixtures of the device API tests: a migrated database with the small registry, and the app over it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from integration.api.devicekit import World, migrate_and_register, open_world


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    """The clearing schema, the small registry, and the app with a movable clock (SQLite, then PostgreSQL)."""
    migrate_and_register(db_url)
    opened, client = open_world(db_url)
    with client:
        yield opened
    opened.app.state.onecard.engine.dispose()
