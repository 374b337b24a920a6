"""Issuance's hotlist as the devices' :class:`~api.devices.HotlistSource` (``GET /devices/hotlist``).

Issuance numbers hotlist entries with versions that only grow, and a card never leaves the list (its life cycle
has no way back), so every delta is kept: the delta from ``V`` is the entries above ``V`` and nothing is ever
``removed``. The delta from 0 is the whole list. A database without the issuance schema (a clearing-only
deployment) has an empty hotlist at version 0.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from api.devices import HotlistDelta, HotlistEntry, HotlistSnapshot
from issuance.models import HotlistEntry as HotlistRow
from issuance.services import HotlistView, read_hotlist

log = logging.getLogger("onecard.api.hotlist")


class IssuanceHotlist:
    """A :class:`~api.devices.HotlistSource` over :func:`issuance.services.read_hotlist`."""

    def __init__(self) -> None:
        self._schema_seen = False

    def _available(self, session: Session) -> bool:
        if not self._schema_seen:
            self._schema_seen = inspect(session.connection()).has_table("hotlist_entries")
            if not self._schema_seen:
                log.warning("the issuance schema is missing: serving an empty hotlist")
        return self._schema_seen

    def current_version(self, session: Session) -> int:
        """The newest hotlist version (0: empty)."""
        if not self._available(session):
            return 0
        return int(session.scalar(select(func.coalesce(func.max(HotlistRow.version), 0))) or 0)

    def full(self, session: Session) -> HotlistSnapshot:
        """Every hotlisted card at the newest version."""
        if not self._available(session):
            return HotlistSnapshot(0, ())
        download = read_hotlist(session, 0)
        return HotlistSnapshot(download.version, tuple(_entry(view) for view in download.entries))

    def entries_since(self, session: Session, version: int) -> HotlistDelta | None:
        """The cards listed after ``version`` (every delta is kept; nothing is ever removed)."""
        if not self._available(session):
            return HotlistDelta(0, (), ()) if version == 0 else None
        download = read_hotlist(session, version)
        if version > download.version:
            return None
        return HotlistDelta(download.version, tuple(_entry(v) for v in download.entries if v.version > version), ())


def _entry(view: HotlistView) -> HotlistEntry:
    return HotlistEntry(view.card_no, view.listed_at, view.reason)
