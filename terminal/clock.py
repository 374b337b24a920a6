"""The time a device writes into cards and records: never earlier than the last one, and reported when wrong.

Cards and batches carry local wall-clock times (spec §0 date4/time3, §5 ``txn_date``/``txn_time``), and the
fare rules compare them (transfer windows, trip durations, the fare-cap day, spec §2.1). A device clock that
jumps backwards would open free transfer windows and roll the cap day back; one that is far off would date
every record wrongly. :class:`ClockGuard` therefore hands out *sane* times:

- never earlier than the last time it issued or the floor it was given (the last time stored on the device,
  so that holds across restarts): while the wall clock is behind, the issued time advances from the last one
  by the elapsed monotonic time. The event is reported (logged, and the ``clock_backwards`` flag set);
- when a server's ``Date`` header (docs/device-api.md) shows the wall clock off by more than ``max_skew``, the
  skew is reported (the ``clock_skew`` flag) and corrected: issued times are the wall clock plus the measured
  offset, until a later measurement finds the clock within ``max_skew`` again. The correction is not kept
  across restarts, because the usual cure of a wrong clock (NTP at boot) would make a stored one wrong.

Times are whole seconds, as the card stores them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

log = logging.getLogger("onecard.terminal.clock")

WallClock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class ClockReport:
    """One clock anomaly: ``kind`` is ``backwards`` or ``skew``."""

    kind: str
    detail: str
    wall: datetime
    issued: datetime


class ClockGuard:
    """Sane, non-decreasing device time (see the module docstring)."""

    def __init__(
        self,
        wall: WallClock,
        *,
        tz: tzinfo,
        floor: datetime | None = None,
        max_skew: timedelta = timedelta(seconds=300),
        monotonic: Callable[[], float] = time.monotonic,
        report: Callable[[ClockReport], None] | None = None,
    ) -> None:
        self.wall = wall
        self.tz = tz
        self.max_skew = max_skew
        self.monotonic = monotonic
        self.report = report
        self.correction = timedelta(0)
        """The offset added to the wall clock (non-zero only while the server says the clock is far off)."""
        self.skew: timedelta | None = None
        """The last measured ``server − wall`` difference."""
        self.backwards = 0
        """How many issued times had to be held back because the wall clock was behind."""
        self._last: datetime | None = floor.astimezone(tz).replace(microsecond=0) if floor is not None else None
        self._last_mono = monotonic()
        self._lock = threading.Lock()

    @property
    def flags(self) -> dict[str, object]:
        """Status flags: ``clock_backwards`` (count), ``clock_skew`` (seconds, or None when fine)."""
        skewed = self.skew is not None and abs(self.skew) > self.max_skew
        return {
            "clock_backwards": self.backwards,
            "clock_skew": None if not skewed or self.skew is None else int(self.skew.total_seconds()),
        }

    def corrected_wall(self) -> datetime:
        """The wall clock with the server correction, without the never-backwards rule (request timestamps)."""
        return (self.wall() + self.correction).astimezone(self.tz)

    def now(self) -> datetime:
        """The time to use now: aware, in ``tz``, whole seconds, never before the previous one."""
        with self._lock:
            return self._now()

    def _now(self) -> datetime:
        wall = self.wall()
        if wall.tzinfo is None:
            raise ValueError("the wall clock must return aware datetimes")
        candidate = (wall + self.correction).astimezone(self.tz).replace(microsecond=0)
        mono = self.monotonic()
        last = self._last
        if last is not None and candidate < last:
            held = last + timedelta(seconds=max(0, int(mono - self._last_mono)))
            issued = max(held, last)
            self.backwards += 1
            self._emit(
                ClockReport(
                    "backwards",
                    f"the clock says {candidate.isoformat()}, before {last.isoformat()}: using {issued.isoformat()}",
                    wall,
                    issued,
                )
            )
            if issued > last:
                self._last_mono = mono
            self._last = issued
            return issued
        self._last = candidate
        self._last_mono = mono
        return candidate

    def observe_server_time(self, server: datetime, wall: datetime | None = None) -> timedelta:
        """Take a server's time (an HTTP ``Date``); report and correct a skew beyond ``max_skew``."""
        with self._lock:
            return self._observe(server, wall if wall is not None else self.wall())

    def _observe(self, server: datetime, local: datetime) -> timedelta:
        skew = server - local
        self.skew = skew
        if abs(skew) > self.max_skew:
            if not self.correction:
                self._emit(
                    ClockReport(
                        "skew",
                        f"the clock is {skew.total_seconds():+.0f} s from the server's: correcting",
                        local,
                        (local + skew).astimezone(self.tz),
                    )
                )
            self.correction = skew
        else:
            if self.correction:
                log.info("clock back within %s of the server's: correction removed", self.max_skew)
            self.correction = timedelta(0)
        return skew

    def _emit(self, event: ClockReport) -> None:
        log.warning("clock %s: %s", event.kind, event.detail)
        if self.report is not None:
            self.report(event)
