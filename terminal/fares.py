"""The fare engine: pure, table-driven fare decisions over the transit record (spec §2.1, EF 0017 record 1).

:func:`decide` takes the fare table, the tap (local time, line, station, term_id, card type) and the card's
transit record, and returns a :class:`FareDecision`: the amount of the CAPP purchase (spec §2.4), the new
transit record the same purchase writes, and why. No clock, no I/O: the validator supplies everything.

Fare table format (JSON; ``GET /devices/fares`` serves it, docs/device-api.md)::

    {
      "format": "onecard-fares/1",                # optional
      "version": "2025-03-01.1",                  # recorded by the validator with every record
      "operator_id": "OP-BUS-A",
      "service_day_starts": "04:00",              # the fare-cap day runs from this local time to the next
      "daily_cap": 1200,                          # fen per service day; null or absent: no cap
      "transfer": {"window_minutes": 90,          # from the boarding that opened the window
                   "max_transfers": 2,            # discounted boardings inside one window
                   "discount": 100,               # fen off the fare, or "discount_percent": 100 (free)
                   "same_line": false},           # a re-boarding of the same line is no transfer
      "peak_hours": [["07:00", "09:00"], ["17:00", "19:00"]],   # [from, to) local time
      "peak_days": [1, 2, 3, 4, 5],               # ISO weekdays the peak hours apply to (default Mon-Fri)
      "concessions": {                            # by card type name (EF 0015 byte 28, cardos.layout.CardType)
        "student":  {"percent": 50},              # pays 50 % of the fare
        "senior":   {"percent": 0, "peak_percent": 100},   # free off-peak, full fare at peak
        "disabled": {"percent": 0, "daily_cap": 0}         # a concession may override the daily cap
      },
      "lines": {                                  # keyed by line id (decimal, 1-65535, as in EF 0017)
        "12":  {"name": "12", "kind": "flat", "fare": 200},
        "301": {"name": "301", "kind": "distance", "stations": [1, 2, 3, 4],
                "fares": [[200, 200, 300, 400],   # fares[i][j]: tap-in at stations[i], tap-out at stations[j]
                          [200, 200, 200, 300],
                          [300, 200, 200, 200],
                          [400, 300, 200, 200]],
                "max_trip_minutes": 180}          # an older open trip counts as a missing tap-out
      }
    }

Rules, in the order they apply to one tap (all amounts integer fen, percentages rounded down, in the rider's
favour):

1. **Missing tap-out.** A card whose record shows a trip tapped in (state ``01``) that this tap does not
   close is first charged the maximum fare of that trip's line (the table's largest fare when the line is not
   in the table), with the card type's concession as it applied at that trip's entry time. The penalty is
   taken by the same purchase as this tap; it opens no transfer window.
2. **Base fare.** A flat line charges its fare at boarding. A distance line charges 0 at tap-in (the 0-fen
   CAPP purchase records the trip) and ``fares[entry][exit]`` at tap-out on the same line within
   ``max_trip_minutes``.
3. **Concession** by card type: ``percent`` of the fare (``peak_percent`` inside peak hours), peak judged at
   the boarding time (tap-in for distance lines).
4. **Transfer.** A boarding within ``window_minutes`` of the boarding that opened the window, on another line
   (unless ``same_line``), with fewer than ``max_transfers`` transfers used, gets the discount. A boarding that
   is not a transfer opens a new window. Transfers and windows are judged at the boarding (tap-in) time.
5. **Daily cap.** What the card paid on the current service day (EF 0017 bytes 32-39) plus this charge is
   limited to the cap; the cap day changes at ``service_day_starts``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from cardos.layout import CardType, TransitRecord

FORMAT = "onecard-fares/1"
_VERSION = re.compile(r"[0-9A-Za-z_.:-]{1,32}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


class FareTableError(ValueError):
    """A fare table that cannot be used, with the reason."""


class FareRuleError(ValueError):
    """A tap the table cannot price (a line or station the table does not know)."""


class TapKind(StrEnum):
    """What a tap does to the trip (spec §2.1, trip state)."""

    FLAT = "flat"
    TAP_IN = "tap-in"
    TAP_OUT = "tap-out"


@dataclass(frozen=True, slots=True)
class FlatLine:
    """A line with one fare, charged at boarding."""

    line_id: int
    fare: int
    name: str = ""

    @property
    def max_fare(self) -> int:
        """The highest fare of the line."""
        return self.fare


@dataclass(frozen=True, slots=True)
class DistanceLine:
    """A line priced by station pair, tap-in and tap-out."""

    line_id: int
    stations: tuple[int, ...]
    fares: tuple[tuple[int, ...], ...]
    max_trip: timedelta = timedelta(minutes=180)
    name: str = ""

    @property
    def max_fare(self) -> int:
        """The highest fare of the line (the missing tap-out charge)."""
        return max(max(row) for row in self.fares)

    def fare(self, entry_station: int, exit_station: int) -> int:
        """The fare from ``entry_station`` to ``exit_station``; FareRuleError for a station not on the line."""
        try:
            entry = self.stations.index(entry_station)
            leave = self.stations.index(exit_station)
        except ValueError:
            raise FareRuleError(f"line {self.line_id} has no station {entry_station} or {exit_station}") from None
        return self.fares[entry][leave]


Line = FlatLine | DistanceLine


@dataclass(frozen=True, slots=True)
class Concession:
    """What one card type pays, in percent of the fare."""

    percent: int = 100
    peak_percent: int | None = None
    daily_cap: int | None = None

    def percent_at(self, peak: bool) -> int:
        """The percentage that applies at a peak (or off-peak) boarding."""
        if peak and self.peak_percent is not None:
            return self.peak_percent
        return self.percent


FULL_FARE = Concession()


@dataclass(frozen=True, slots=True)
class TransferRule:
    """Discounted boardings inside a window that starts at the boarding that opened it."""

    window: timedelta = timedelta(minutes=90)
    max_transfers: int = 1
    discount: int = 0
    discount_percent: int = 0
    same_line: bool = False

    def apply(self, fare: int) -> int:
        """The fare after the transfer discount (never below 0)."""
        if self.discount_percent:
            return fare - fare * self.discount_percent // 100
        return max(0, fare - self.discount)


@dataclass(frozen=True, slots=True)
class FareTable:
    """A versioned fare table (see the module docstring for its JSON form)."""

    version: str
    operator_id: str
    lines: Mapping[int, Line]
    concessions: Mapping[int, Concession] = field(default_factory=dict)
    transfer: TransferRule | None = None
    daily_cap: int | None = None
    service_day_starts: time = time(0, 0)
    peak_hours: tuple[tuple[time, time], ...] = ()
    peak_days: frozenset[int] = frozenset({1, 2, 3, 4, 5})

    # --- lookups ---------------------------------------------------------------------------------------

    def line(self, line_id: int) -> Line:
        """The line; FareRuleError when the table does not have it."""
        try:
            return self.lines[line_id]
        except KeyError:
            raise FareRuleError(f"fare table {self.version} has no line {line_id}") from None

    def concession(self, card_type: int) -> Concession:
        """The concession of a card type (full fare for a type the table does not name)."""
        return self.concessions.get(card_type, FULL_FARE)

    def max_fare(self, line_id: int) -> int:
        """The missing tap-out charge of a line: its highest fare, or the table's highest if unknown."""
        line = self.lines.get(line_id)
        if line is not None:
            return line.max_fare
        return max((known.max_fare for known in self.lines.values()), default=0)

    def is_peak(self, when: datetime) -> bool:
        """True when ``when`` (local time) is inside the peak hours of a peak day."""
        if when.isoweekday() not in self.peak_days:
            return False
        moment = when.time()
        return any(start <= moment < end for start, end in self.peak_hours)

    def service_day(self, when: datetime) -> date:
        """The fare-cap day of a local time (EF 0017 bytes 32-35, spec §2.1): it starts at ``service_day_starts``."""
        day = when.date()
        return day - timedelta(days=1) if when.time() < self.service_day_starts else day

    def cap_for(self, card_type: int) -> int | None:
        """The daily cap of a card type (its concession's, else the table's); None for no cap."""
        concession = self.concessions.get(card_type)
        if concession is not None and concession.daily_cap is not None:
            return concession.daily_cap
        return self.daily_cap

    # --- JSON ------------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> FareTable:
        """Parse and validate a fare table (ids sized for EF 0017, spec §2.1); raise :class:`FareTableError`."""
        if not isinstance(doc, Mapping):
            raise FareTableError("a fare table is a JSON object")
        fmt = _opt(doc, "format", FORMAT)
        if fmt != FORMAT:
            raise FareTableError(f"format must be {FORMAT}")
        version = doc.get("version")
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise FareTableError("version must be 1-32 characters of [0-9A-Za-z_.:-]")
        operator_id = doc.get("operator_id", "")
        if not isinstance(operator_id, str):
            raise FareTableError("operator_id must be a string")
        raw_lines = doc.get("lines")
        if not isinstance(raw_lines, Mapping) or not raw_lines:
            raise FareTableError("lines must be a non-empty object")
        lines: dict[int, Line] = {}
        for key, spec in raw_lines.items():
            line_id = _line_id(key)
            lines[line_id] = _parse_line(line_id, spec)
        concessions: dict[int, Concession] = {}
        raw_concessions = _opt(doc, "concessions", {})
        if not isinstance(raw_concessions, Mapping):
            raise FareTableError("concessions must be an object")
        for name, spec in raw_concessions.items():
            try:
                card_type = CardType[str(name).upper()]
            except KeyError:
                raise FareTableError(f"unknown card type {name!r} in concessions") from None
            concessions[int(card_type)] = _parse_concession(str(name), spec)
        transfer = _parse_transfer(doc["transfer"]) if doc.get("transfer") is not None else None
        daily_cap = doc.get("daily_cap")
        if daily_cap is not None:
            daily_cap = _fen(daily_cap, "daily_cap")
        peak_hours: list[tuple[time, time]] = []
        raw_peaks = _opt(doc, "peak_hours", [])
        if not isinstance(raw_peaks, Sequence) or isinstance(raw_peaks, str):
            raise FareTableError("peak_hours must be a list of [from, to] pairs")
        for pair in raw_peaks:
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise FareTableError("each peak_hours entry is [from, to]")
            start, end = _hhmm(pair[0], "peak_hours"), _hhmm(pair[1], "peak_hours")
            if not start < end:
                raise FareTableError("a peak period must end after it starts (same day)")
            peak_hours.append((start, end))
        raw_days = _opt(doc, "peak_days", [1, 2, 3, 4, 5])
        if not isinstance(raw_days, Sequence) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in raw_days
        ):
            raise FareTableError("peak_days must be ISO weekdays 1-7")
        return cls(
            version=version,
            operator_id=operator_id,
            lines=lines,
            concessions=concessions,
            transfer=transfer,
            daily_cap=daily_cap,
            service_day_starts=_hhmm(_opt(doc, "service_day_starts", "00:00"), "service_day_starts"),
            peak_hours=tuple(peak_hours),
            peak_days=frozenset(int(d) for d in raw_days),
        )

    def to_json(self) -> dict[str, object]:
        """The table as a JSON document (the inverse of :meth:`from_json`)."""
        lines: dict[str, object] = {}
        for line_id, line in sorted(self.lines.items()):
            if isinstance(line, FlatLine):
                lines[str(line_id)] = {"name": line.name, "kind": "flat", "fare": line.fare}
            else:
                lines[str(line_id)] = {
                    "name": line.name,
                    "kind": "distance",
                    "stations": list(line.stations),
                    "fares": [list(row) for row in line.fares],
                    "max_trip_minutes": int(line.max_trip.total_seconds() // 60),
                }
        concessions: dict[str, object] = {}
        for card_type, concession in sorted(self.concessions.items()):
            entry: dict[str, object] = {"percent": concession.percent}
            if concession.peak_percent is not None:
                entry["peak_percent"] = concession.peak_percent
            if concession.daily_cap is not None:
                entry["daily_cap"] = concession.daily_cap
            concessions[CardType(card_type).name.lower()] = entry
        doc: dict[str, object] = {
            "format": FORMAT,
            "version": self.version,
            "operator_id": self.operator_id,
            "service_day_starts": self.service_day_starts.strftime("%H:%M"),
            "daily_cap": self.daily_cap,
            "peak_hours": [[s.strftime("%H:%M"), e.strftime("%H:%M")] for s, e in self.peak_hours],
            "peak_days": sorted(self.peak_days),
            "concessions": concessions,
            "lines": lines,
        }
        if self.transfer is not None:
            rule = self.transfer
            transfer: dict[str, object] = {
                "window_minutes": int(rule.window.total_seconds() // 60),
                "max_transfers": rule.max_transfers,
                "same_line": rule.same_line,
            }
            if rule.discount_percent:
                transfer["discount_percent"] = rule.discount_percent
            else:
                transfer["discount"] = rule.discount
            doc["transfer"] = transfer
        return doc


def _opt(doc: Mapping[str, object], key: str, default: object) -> object:
    """An optional key: absent and ``null`` both mean the default."""
    value = doc.get(key)
    return default if value is None else value


def _line_id(key: object) -> int:
    text = str(key)
    if not text.isdigit() or not 1 <= int(text) <= 0xFFFF:
        raise FareTableError(f"line id {text!r} must be 1-65535 (EF 0017 stores 2 bytes)")
    return int(text)


def _fen(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
        raise FareTableError(f"{what} must be a whole number of fen (0 or more)")
    return value


def _percent(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise FareTableError(f"{what} must be a whole percentage 0-100")
    return value


def _minutes(value: object, what: str) -> timedelta:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FareTableError(f"{what} must be a positive number of minutes")
    return timedelta(minutes=value)


def _hhmm(value: object, what: str) -> time:
    if not isinstance(value, str) or not (match := _HHMM.fullmatch(value)):
        raise FareTableError(f"{what}: times are HH:MM")
    return time(int(match.group(1)), int(match.group(2)))


def _parse_line(line_id: int, spec: object) -> Line:
    if not isinstance(spec, Mapping):
        raise FareTableError(f"line {line_id} must be an object")
    name = spec.get("name", "")
    if not isinstance(name, str):
        raise FareTableError(f"line {line_id}: name must be a string")
    kind = spec.get("kind")
    if kind == "flat":
        return FlatLine(line_id, _fen(spec.get("fare"), f"line {line_id} fare"), name)
    if kind != "distance":
        raise FareTableError(f"line {line_id}: kind must be flat or distance")
    stations = spec.get("stations")
    if (
        not isinstance(stations, Sequence)
        or isinstance(stations, str)
        or not stations
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 0xFFFF for s in stations)
    ):
        raise FareTableError(f"line {line_id}: stations must be a non-empty list of ids 0-65535")
    if len(set(stations)) != len(stations):
        raise FareTableError(f"line {line_id}: a station appears twice")
    fares = spec.get("fares")
    size = len(stations)
    if (
        not isinstance(fares, Sequence)
        or len(fares) != size
        or not all(isinstance(row, Sequence) and not isinstance(row, str) and len(row) == size for row in fares)
    ):
        raise FareTableError(f"line {line_id}: fares must be a {size}x{size} matrix (entry row, exit column)")
    matrix = tuple(tuple(_fen(value, f"line {line_id} fare") for value in row) for row in fares)
    max_trip = _minutes(spec.get("max_trip_minutes", 180), f"line {line_id} max_trip_minutes")
    return DistanceLine(line_id, tuple(int(s) for s in stations), matrix, max_trip, name)


def _parse_concession(name: str, spec: object) -> Concession:
    if not isinstance(spec, Mapping):
        raise FareTableError(f"concession {name} must be an object")
    percent = _percent(spec.get("percent", 100), f"concession {name} percent")
    peak = spec.get("peak_percent")
    cap = spec.get("daily_cap")
    return Concession(
        percent=percent,
        peak_percent=None if peak is None else _percent(peak, f"concession {name} peak_percent"),
        daily_cap=None if cap is None else _fen(cap, f"concession {name} daily_cap"),
    )


def _parse_transfer(spec: object) -> TransferRule:
    if not isinstance(spec, Mapping):
        raise FareTableError("transfer must be an object")
    if "discount" in spec and "discount_percent" in spec:
        raise FareTableError("transfer: give discount (fen) or discount_percent, not both")
    max_transfers = spec.get("max_transfers", 1)
    if not isinstance(max_transfers, int) or isinstance(max_transfers, bool) or not 0 <= max_transfers <= 255:
        raise FareTableError("transfer max_transfers must be 0-255 (EF 0017 stores one byte)")
    same_line = spec.get("same_line", False)
    if not isinstance(same_line, bool):
        raise FareTableError("transfer same_line must be true or false")
    return TransferRule(
        window=_minutes(spec.get("window_minutes", 90), "transfer window_minutes"),
        max_transfers=max_transfers,
        discount=_fen(spec.get("discount", 0), "transfer discount"),
        discount_percent=_percent(spec.get("discount_percent", 0), "transfer discount_percent"),
        same_line=same_line,
    )


# --- the decision ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tap:
    """One tap as the validator sees it: local time, where, which terminal, which card type."""

    when: datetime
    line_id: int
    station_id: int
    term_id: bytes
    card_type: int


@dataclass(frozen=True, slots=True)
class FareBreakdown:
    """How the charge was reached (fen): ``charge = penalty + base - concession - transfer - cap``."""

    base: int = 0
    concession_off: int = 0
    transfer_off: int = 0
    penalty: int = 0
    cap_off: int = 0

    @property
    def charge(self) -> int:
        """The amount the purchase takes."""
        return self.penalty + self.base - self.concession_off - self.transfer_off - self.cap_off


@dataclass(frozen=True, slots=True)
class FareDecision:
    """The fare engine's answer: what to charge, the new transit record, and why (spec §2.1, §2.4)."""

    kind: TapKind
    fare: int
    record: TransitRecord
    breakdown: FareBreakdown
    transfer: bool
    table_version: str
    reason: str

    @property
    def penalty(self) -> int:
        """The missing tap-out charge included in :attr:`fare` (before the cap)."""
        return self.breakdown.penalty


def bcd_date(day: date) -> bytes:
    """date4 (spec §0)."""
    return bytes.fromhex(day.strftime("%Y%m%d"))


def bcd_datetime(when: datetime) -> tuple[bytes, bytes]:
    """``(date4, time3)`` of a local time (spec §0)."""
    return bytes.fromhex(when.strftime("%Y%m%d")), bytes.fromhex(when.strftime("%H%M%S"))


def parse_bcd_datetime(date4: bytes, time3: bytes) -> datetime | None:
    """A date4/time3 pair (spec §0) as a naive local datetime; None when zero or not a valid date."""
    day = parse_bcd_date(date4)
    if day is None:
        return None
    try:
        moment = datetime.strptime(time3.hex(), "%H%M%S").time()
    except ValueError:
        return None
    return datetime.combine(day, moment)


def parse_bcd_date(date4: bytes) -> date | None:
    """A date4 (spec §0) as a date; None when zero or not a valid date."""
    if not any(date4):
        return None
    try:
        return datetime.strptime(date4.hex(), "%Y%m%d").date()
    except ValueError:
        return None


def _local(when: datetime) -> datetime:
    return when.replace(tzinfo=None, microsecond=0)


def decide(table: FareTable, tap: Tap, record: TransitRecord) -> FareDecision:
    """Price one tap from the card's transit record (spec §2.1, EF 0017 record 1) and the fare table.

    ``tap.when`` is the local time of the tap (its wall-clock fields are used as they are). Raises
    :class:`FareRuleError` when the table does not know the tap's line or station.
    """
    now = _local(tap.when)
    line = table.line(tap.line_id)
    concession = table.concession(tap.card_type)
    open_trip = record.trip_state == TransitRecord.TRIP_IN
    entry_time = parse_bcd_datetime(record.entry_date, record.entry_time)

    if isinstance(line, DistanceLine):
        if tap.station_id not in line.stations:
            raise FareRuleError(f"line {line.line_id} has no station {tap.station_id}")
        closes = (
            open_trip
            and record.line_id == line.line_id
            and record.entry_station in line.stations
            and entry_time is not None
            and now - entry_time <= line.max_trip
        )
        if closes:
            assert entry_time is not None
            base = line.fare(record.entry_station, tap.station_id)
            return _charge(
                table,
                tap,
                record,
                now,
                boarding=entry_time,
                base=base,
                penalty=0,
                kind=TapKind.TAP_OUT,
                what=f"line {line.line_id} {record.entry_station}→{tap.station_id}",
            )
        penalty = _penalty(table, concession, record, entry_time, now) if open_trip else 0
        return _tap_in(table, tap, record, now, penalty)

    penalty = _penalty(table, concession, record, entry_time, now) if open_trip else 0
    return _charge(
        table,
        tap,
        record,
        now,
        boarding=now,
        base=line.fare,
        penalty=penalty,
        kind=TapKind.FLAT,
        what=f"line {line.line_id} flat",
    )


def _penalty(
    table: FareTable, concession: Concession, record: TransitRecord, entry_time: datetime | None, now: datetime
) -> int:
    """The missing tap-out charge: the open trip's line's maximum fare, with the concession at its entry."""
    maximum = table.max_fare(record.line_id)
    at = entry_time if entry_time is not None else now
    return maximum * concession.percent_at(table.is_peak(at)) // 100


def _capped(table: FareTable, tap: Tap, record: TransitRecord, now: datetime, amount: int) -> tuple[int, int, date]:
    """``(charge, paid that day after it, service day)`` under the daily cap (spec §2.1 bytes 32-39)."""
    day = table.service_day(now)
    paid = record.cap_paid if parse_bcd_date(record.cap_date) == day else 0
    cap = table.cap_for(tap.card_type)
    charge = amount if cap is None else min(amount, max(0, cap - paid))
    return charge, paid + charge, day


def _tap_in(table: FareTable, tap: Tap, record: TransitRecord, now: datetime, penalty: int) -> FareDecision:
    date4, time3 = bcd_datetime(now)
    charge, paid, day = _capped(table, tap, record, now, penalty)
    new = replace(
        record,
        trip_state=TransitRecord.TRIP_IN,
        line_id=tap.line_id,
        entry_station=tap.station_id,
        entry_term_id=tap.term_id,
        entry_date=date4,
        entry_time=time3,
        entry_amount=charge,
    )
    if penalty:
        new = replace(new, cap_date=bcd_date(day), cap_paid=paid)
    breakdown = FareBreakdown(penalty=penalty, cap_off=penalty - charge)
    reason = f"tap-in line {tap.line_id} station {tap.station_id}"
    if penalty:
        reason = f"missing tap-out on line {record.line_id} charged {penalty}; " + reason
    if breakdown.cap_off:
        reason += f"; daily cap -{breakdown.cap_off}"
    return FareDecision(TapKind.TAP_IN, charge, new, breakdown, False, table.version, reason)


def _charge(
    table: FareTable,
    tap: Tap,
    record: TransitRecord,
    now: datetime,
    *,
    boarding: datetime,
    base: int,
    penalty: int,
    kind: TapKind,
    what: str,
) -> FareDecision:
    """A paid boarding (flat fare now, or a distance fare at tap-out): concession, transfer, cap."""
    concession = table.concession(tap.card_type)
    percent = concession.percent_at(table.is_peak(boarding))
    after_concession = base * percent // 100
    fare = after_concession
    transfer = False
    rule = table.transfer
    window_start = parse_bcd_datetime(record.boarding_date, record.boarding_time)
    if rule is not None and window_start is not None:
        elapsed = boarding - window_start
        other_line = rule.same_line or record.boarding_line != tap.line_id
        if timedelta(0) <= elapsed <= rule.window and other_line and record.transfers < rule.max_transfers:
            transfer = True
            fare = rule.apply(after_concession)
    charge, paid, day = _capped(table, tap, record, now, penalty + fare)
    breakdown = FareBreakdown(
        base=base,
        concession_off=base - after_concession,
        transfer_off=after_concession - fare,
        penalty=penalty,
        cap_off=penalty + fare - charge,
    )
    if transfer:
        boarding_date, boarding_time = record.boarding_date, record.boarding_time
        transfers = record.transfers + 1
    else:
        boarding_date, boarding_time = bcd_datetime(boarding)
        transfers = 0
    new = replace(
        record,
        boarding_date=boarding_date,
        boarding_time=boarding_time,
        boarding_line=tap.line_id,
        transfers=transfers,
        cap_date=bcd_date(day),
        cap_paid=paid,
    )
    if kind is TapKind.TAP_OUT:
        new = replace(new, trip_state=TransitRecord.TRIP_OUT)
    else:
        date4, time3 = bcd_datetime(now)
        new = replace(
            new,
            trip_state=TransitRecord.TRIP_NONE,
            line_id=tap.line_id,
            entry_station=tap.station_id,
            entry_term_id=tap.term_id,
            entry_date=date4,
            entry_time=time3,
            entry_amount=charge,
        )
    parts = [f"{what} {base}"]
    if penalty:
        parts.insert(0, f"missing tap-out on line {record.line_id} {penalty}")
    if breakdown.concession_off:
        parts.append(f"{_type_name(tap.card_type)} {percent}%")
    if transfer:
        parts.append(f"transfer {transfers} -{breakdown.transfer_off}")
    if breakdown.cap_off:
        parts.append(f"daily cap -{breakdown.cap_off}")
    return FareDecision(kind, charge, new, breakdown, transfer, table.version, "; ".join(parts))


def _type_name(card_type: int) -> str:
    try:
        return CardType(card_type).name.lower()
    except ValueError:
        return f"type {card_type:02X}"
