"""The hotlist on a device: versioned full lists and deltas (docs/device-api.md, ``GET /devices/hotlist``).

A validator refuses a listed card (and records the refusal); clearing rejects a listed card's records taken
after its listing time (spec §5). The device keeps the list and its version in its store and asks for the delta
from the version it holds; the server answers a full list when it has no delta from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from terminal.store import DeviceStore, HotlistEntry, StoreError

_CARD_NO = re.compile(r"[0-9]{16}")


class HotlistError(ValueError):
    """A hotlist document that cannot be applied."""


@dataclass(frozen=True, slots=True)
class HotlistUpdate:
    """A full list (``full``) or the delta to ``version`` from the version asked for."""

    version: str
    full: bool
    entries: tuple[HotlistEntry, ...]
    removed: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> HotlistUpdate:
        """Parse ``{"version", "full", "entries": [{"card_no", "listed_at", "reason"}], "removed": [...]}``."""
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int | str) or str(version) == "":
            raise HotlistError("version must be a number or a non-empty string")
        full = doc.get("full")
        if not isinstance(full, bool):
            raise HotlistError("full must be true or false")
        raw_entries = doc.get("entries", [])
        raw_removed = doc.get("removed", [])
        if not isinstance(raw_entries, Sequence) or not isinstance(raw_removed, Sequence):
            raise HotlistError("entries and removed must be lists")
        entries: list[HotlistEntry] = []
        for item in raw_entries:
            if not isinstance(item, Mapping):
                raise HotlistError("an entry must be an object")
            card_no = item.get("card_no")
            if not isinstance(card_no, str) or not _CARD_NO.fullmatch(card_no):
                raise HotlistError(f"bad card_no in the hotlist: {card_no!r}")
            entries.append(HotlistEntry(card_no, str(item.get("listed_at", "")), str(item.get("reason", ""))))
        removed: list[str] = []
        for card_no in raw_removed:
            if not isinstance(card_no, str) or not _CARD_NO.fullmatch(card_no):
                raise HotlistError(f"bad card_no in removed: {card_no!r}")
            removed.append(card_no)
        if full and removed:
            raise HotlistError("a full list removes nothing")
        return cls(str(version), full, tuple(entries), tuple(removed))


def apply_update(store: DeviceStore, update: HotlistUpdate, *, asked_since: str | None) -> None:
    """Apply a full list, or a delta from ``asked_since`` (which must be the version held), in one transaction."""
    store.write_hotlist(
        version=update.version,
        full=update.full,
        entries=update.entries,
        removed=update.removed,
        based_on=asked_since,
    )


class HotlistSource(Protocol):
    """Where a device gets its hotlist (``terminal.uplink.DeviceClient``)."""

    def hotlist(self, since: str | None) -> HotlistUpdate:
        """The delta from ``since`` (or a full list)."""
        ...


def refresh_hotlist(store: DeviceStore, source: HotlistSource) -> HotlistUpdate:
    """Bring the store's hotlist up to date: ask for the delta from the version held, or a full list when the
    delta does not apply."""
    since = store.hotlist_version()
    update = source.hotlist(since)
    try:
        apply_update(store, update, asked_since=since)
    except StoreError:
        update = source.hotlist(None)
        if not update.full:
            raise HotlistError("asked for a full hotlist, got a delta") from None
        apply_update(store, update, asked_since=None)
    return update
