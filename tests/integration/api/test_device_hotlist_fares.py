"""``GET /devices/hotlist`` (with a fake source) and ``GET /devices/fares`` (newest in force); both databases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from integration.api.devicekit import World
from sqlalchemy.orm import Session

from api.devices import EmptyHotlist, HotlistDelta, HotlistEntry, HotlistSnapshot
from backoffice.errors import Conflict, InvalidInput, NotFound
from clearing.registry import publish_fare_table

LISTED = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


class FakeHotlist:
    """Version 3 of a hotlist whose deltas are kept from version 2 on."""

    def __init__(self) -> None:
        self.card_a = HotlistEntry("0310000000000001", LISTED, "lost")
        self.card_b = HotlistEntry("0310000000000002", LISTED + timedelta(hours=1), "stolen")
        self.asked: list[int] = []

    def current_version(self, session: Session) -> int:
        return 3

    def full(self, session: Session) -> HotlistSnapshot:
        return HotlistSnapshot(3, (self.card_a, self.card_b))

    def entries_since(self, session: Session, version: int) -> HotlistDelta | None:
        self.asked.append(version)
        deltas: dict[int, tuple[Sequence[HotlistEntry], Sequence[str]]] = {
            2: ((self.card_b,), ("0310000000000009",)),
            3: ((), ()),
        }
        if version not in deltas:
            return None
        entries, removed = deltas[version]
        return HotlistDelta(3, entries, removed)


def test_hotlist_full_and_delta(world: World) -> None:
    validator = world.device("BUSA-V01")
    assert validator.get("/devices/hotlist").json() == {"version": 0, "full": True, "entries": [], "removed": []}
    assert validator.get("/devices/hotlist?since=0").json() == {
        "version": 0,
        "full": False,
        "entries": [],
        "removed": [],
    }

    fake = FakeHotlist()
    world.app.state.onecard.hotlist_source = fake
    full = validator.get("/devices/hotlist").json()
    assert full == {
        "version": 3,
        "full": True,
        "entries": [
            {"card_no": "0310000000000001", "listed_at": "2025-03-01T09:30:00Z", "reason": "lost"},
            {"card_no": "0310000000000002", "listed_at": "2025-03-01T10:30:00Z", "reason": "stolen"},
        ],
        "removed": [],
    }
    assert validator.get("/devices/hotlist?since=2").json() == {
        "version": 3,
        "full": False,
        "entries": [{"card_no": "0310000000000002", "listed_at": "2025-03-01T10:30:00Z", "reason": "stolen"}],
        "removed": ["0310000000000009"],
    }
    assert validator.get("/devices/hotlist?since=3").json()["full"] is False
    # deltas from version 1 are no longer kept, version 7 was never issued: the full list
    assert validator.get("/devices/hotlist?since=1").json() == full
    assert validator.get("/devices/hotlist?since=7").json() == full
    assert fake.asked == [2, 3, 1]

    bad = validator.get("/devices/hotlist?since=-1")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"


def test_the_empty_hotlist_has_only_version_zero() -> None:
    empty = EmptyHotlist()
    assert empty.entries_since(None, 1) is None  # type: ignore[arg-type]
    assert empty.full(None) == HotlistSnapshot(0, ())  # type: ignore[arg-type]


FARES_V1: dict[str, Any] = {
    "format": "onecard-fares/1",
    "daily_cap": 1200,
    "transfer": {"window_minutes": 90, "max_transfers": 2, "discount": 100, "same_line": False},
    "lines": {"12": {"name": "12", "kind": "flat", "fare": 200}},
}
FARES_V2: dict[str, Any] = {"lines": {"12": {"name": "12", "kind": "flat", "fare": 250}}}


def test_fares_serve_the_newest_table_in_force_for_the_devices_operator(world: World) -> None:
    validator = world.device("BUSA-V01")
    missing = validator.get("/devices/fares")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    now = world.clock.now
    with world.uow() as uow:
        publish_fare_table(uow, "OP-BUS-A", "2025-01.1", FARES_V1, effective_from=now - timedelta(days=30), now=now)
    with world.uow() as uow:
        publish_fare_table(uow, "OP-BUS-A", "2025-03.1", FARES_V2, effective_from=now + timedelta(hours=1), now=now)
    with world.uow() as uow:
        publish_fare_table(uow, "OP-WATER", "W-1", {"lines": {}}, effective_from=now - timedelta(days=1), now=now)

    assert validator.get("/devices/fares").json() == {
        "format": "onecard-fares/1",
        "version": "2025-01.1",
        "operator_id": "OP-BUS-A",
        "daily_cap": 1200,
        "transfer": {"window_minutes": 90, "max_transfers": 2, "discount": 100, "same_line": False},
        "lines": {"12": {"name": "12", "kind": "flat", "fare": 200}},
    }
    world.clock.advance(3601)
    assert validator.get("/devices/fares").json() == {
        "version": "2025-03.1",
        "operator_id": "OP-BUS-A",
        "lines": {"12": {"name": "12", "kind": "flat", "fare": 250}},
    }


def test_publishing_fare_tables(world: World) -> None:
    now = world.clock.now
    with world.uow() as uow:
        publish_fare_table(uow, "OP-BUS-A", "v1", FARES_V2, effective_from=now, now=now)
        publish_fare_table(uow, "OP-BUS-A", "v1", {**FARES_V2, "version": "v1"}, effective_from=now, now=now)
        with pytest.raises(Conflict):
            publish_fare_table(uow, "OP-BUS-A", "v1", FARES_V1, effective_from=now, now=now)
        with pytest.raises(InvalidInput, match="unknown fare table keys: colour"):
            publish_fare_table(uow, "OP-BUS-A", "v2", {**FARES_V2, "colour": "red"})
        with pytest.raises(InvalidInput, match="version"):
            publish_fare_table(uow, "OP-BUS-A", "v2", {**FARES_V2, "version": "v3"})
        with pytest.raises(InvalidInput, match="lines"):
            publish_fare_table(uow, "OP-BUS-A", "v2", {"daily_cap": 1})
        with pytest.raises(NotFound):
            publish_fare_table(uow, "OP-NOBODY", "v2", FARES_V2)
