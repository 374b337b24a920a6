"""The fare engine, table-driven: every rule, their combinations, and the midnight and cap-day boundaries."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from cardos.layout import CardType, TransitRecord
from terminal.fares import (
    FareRuleError,
    FareTable,
    FareTableError,
    Tap,
    TapKind,
    decide,
    parse_bcd_date,
    parse_bcd_datetime,
)

TERM_ID = bytes.fromhex("031000000101")
ADULT, STUDENT, SENIOR, DISABLED, STAFF = (int(t) for t in CardType)

TABLE_DOC: dict[str, Any] = {
    "format": "onecard-fares/1",
    "version": "2025-03.1",
    "operator_id": "OP-BUS-A",
    "service_day_starts": "04:00",
    "daily_cap": 1000,
    "transfer": {"window_minutes": 90, "max_transfers": 2, "discount": 100},
    "peak_hours": [["07:00", "09:00"], ["17:00", "19:00"]],
    "concessions": {
        "student": {"percent": 50, "daily_cap": 400},
        "senior": {"percent": 0, "peak_percent": 100},
        "disabled": {"percent": 0},
    },
    "lines": {
        "12": {"name": "12", "kind": "flat", "fare": 200},
        "15": {"name": "15", "kind": "flat", "fare": 300},
        "301": {
            "name": "301",
            "kind": "distance",
            "stations": [1, 2, 3, 4],
            "fares": [[200, 200, 300, 400], [200, 200, 200, 300], [300, 200, 200, 200], [400, 300, 200, 200]],
            "max_trip_minutes": 180,
        },
        "302": {
            "name": "302",
            "kind": "distance",
            "stations": [10, 11, 12],
            "fares": [[100, 150, 250], [150, 100, 150], [250, 150, 100]],
            "max_trip_minutes": 120,
        },
    },
}
TABLE = FareTable.from_json(TABLE_DOC)


@dataclass(frozen=True)
class Step:
    """One tap of a scenario and what the engine must answer."""

    when: str  # "YYYY-MM-DD HH:MM" local; 2025-03-03 is a Monday, 2025-03-08 a Saturday
    line: int
    station: int
    fare: int
    kind: TapKind
    transfer: bool = False
    penalty: int = 0


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M")


def run(card_type: int, steps: list[Step], table: FareTable = TABLE) -> TransitRecord:
    """Apply the steps in order, carrying the card's transit record; check every decision."""
    record = TransitRecord()
    for index, step in enumerate(steps):
        tap = Tap(_at(step.when), step.line, step.station, TERM_ID, card_type)
        decision = decide(table, tap, record)
        got = (decision.fare, decision.kind, decision.transfer, decision.penalty)
        assert got == (step.fare, step.kind, step.transfer, step.penalty), f"step {index}: {step} -> {decision}"
        assert decision.breakdown.charge == decision.fare
        assert decision.table_version == table.version
        record = decision.record
        # The record round-trips through its 48 bytes, as it will on the card.
        assert TransitRecord.decode(record.encode()) == record
    return record


F, IN, OUT = TapKind.FLAT, TapKind.TAP_IN, TapKind.TAP_OUT
MON = "2025-03-03"
TUE = "2025-03-04"
SAT = "2025-03-08"

SCENARIOS: dict[str, tuple[int, list[Step]]] = {
    # flat fares and concessions by card type
    "flat adult": (ADULT, [Step(f"{MON} 10:00", 12, 1, 200, F)]),
    "flat student half": (STUDENT, [Step(f"{MON} 10:00", 15, 1, 150, F)]),
    "senior free off-peak": (SENIOR, [Step(f"{MON} 10:00", 12, 1, 0, F)]),
    "senior full fare at peak": (SENIOR, [Step(f"{MON} 08:10", 12, 1, 200, F)]),
    "senior free at peak time on a weekend": (SENIOR, [Step(f"{SAT} 08:10", 12, 1, 0, F)]),
    "disabled free": (DISABLED, [Step(f"{MON} 08:10", 15, 1, 0, F)]),
    "staff has no concession in the table": (STAFF, [Step(f"{MON} 10:00", 12, 1, 200, F)]),
    "unknown card type pays full": (0x09, [Step(f"{MON} 10:00", 12, 1, 200, F)]),
    # transfers
    "two transfers then a new window": (
        ADULT,
        [
            Step(f"{MON} 10:00", 12, 1, 200, F),
            Step(f"{MON} 11:00", 15, 1, 200, F, transfer=True),
            Step(f"{MON} 11:20", 12, 1, 100, F, transfer=True),
            Step(f"{MON} 11:25", 15, 1, 300, F),
        ],
    ),
    "transfer window measured from the boarding that opened it": (
        ADULT,
        [
            Step(f"{MON} 10:00", 12, 1, 200, F),
            Step(f"{MON} 11:00", 15, 1, 200, F, transfer=True),
            Step(f"{MON} 11:31", 12, 1, 200, F),
        ],
    ),
    "re-boarding the same line is no transfer": (
        ADULT,
        [Step(f"{MON} 10:00", 12, 1, 200, F), Step(f"{MON} 10:30", 12, 1, 200, F)],
    ),
    # distance fares
    "tap-in is free, tap-out pays the station pair": (
        ADULT,
        [Step(f"{MON} 10:00", 301, 1, 0, IN), Step(f"{MON} 10:40", 301, 4, 400, OUT)],
    ),
    "tap-out at the entry station pays the table's fare for that pair": (
        ADULT,
        [Step(f"{MON} 10:00", 301, 2, 0, IN), Step(f"{MON} 10:05", 301, 2, 200, OUT)],
    ),
    "missing tap-out: next tap-in first pays that line's maximum": (
        ADULT,
        [
            Step(f"{MON} 10:00", 301, 1, 0, IN),
            Step(f"{MON} 14:00", 302, 10, 400, IN, penalty=400),
            Step(f"{MON} 14:30", 302, 12, 250, OUT),
        ],
    ),
    "missing tap-out before a flat boarding": (
        ADULT,
        [Step(f"{MON} 10:00", 301, 1, 0, IN), Step(f"{MON} 11:00", 12, 1, 600, F, penalty=400)],
    ),
    "an open trip older than max_trip_minutes on the same line is a missing tap-out": (
        ADULT,
        [Step(f"{MON} 06:00", 301, 1, 0, IN), Step(f"{MON} 10:00", 301, 2, 400, IN, penalty=400)],
    ),
    "missing tap-out penalty with the student concession": (
        STUDENT,
        [Step(f"{MON} 10:00", 301, 1, 0, IN), Step(f"{MON} 12:00", 302, 10, 200, IN, penalty=200)],
    ),
    "missing tap-out is free for a disabled card": (
        DISABLED,
        [Step(f"{MON} 10:00", 301, 1, 0, IN), Step(f"{MON} 12:00", 302, 10, 0, IN)],
    ),
    "senior peak judged at tap-in": (
        SENIOR,
        [Step(f"{MON} 08:50", 301, 1, 0, IN), Step(f"{MON} 09:20", 301, 3, 300, OUT)],
    ),
    "transfer judged at tap-in time": (
        ADULT,
        [
            Step(f"{MON} 10:00", 12, 1, 200, F),
            Step(f"{MON} 11:29", 301, 1, 0, IN),
            Step(f"{MON} 12:10", 301, 3, 200, OUT, transfer=True),
        ],
    ),
    # combinations
    "adult reaches the daily cap through transfers": (
        ADULT,
        [
            Step(f"{MON} 07:30", 12, 1, 200, F),
            Step(f"{MON} 08:00", 15, 1, 200, F, transfer=True),
            Step(f"{MON} 08:30", 15, 1, 300, F),
            Step(f"{MON} 09:00", 12, 1, 100, F, transfer=True),
            Step(f"{MON} 12:00", 15, 1, 200, F),  # 300 capped to the 200 left
            Step(f"{MON} 13:00", 12, 1, 0, F, transfer=True),  # still counted as a transfer, and capped
            Step(f"{MON} 14:00", 301, 1, 0, IN),
            Step(f"{MON} 14:30", 301, 4, 0, OUT),
        ],
    ),
    "transfer + concession + cap (student, own cap 400)": (
        STUDENT,
        [
            Step(f"{MON} 10:00", 15, 1, 150, F),
            Step(f"{MON} 10:30", 12, 1, 0, F, transfer=True),  # 100 half fare - 100 transfer discount
            Step(f"{MON} 12:00", 15, 1, 150, F),
            Step(f"{MON} 14:00", 15, 1, 100, F),  # 150 capped to the 100 left
            Step(f"{MON} 15:00", 12, 1, 0, F, transfer=True),
        ],
    ),
    "missing tap-out penalty counts toward the cap and is capped": (
        ADULT,
        [
            Step(f"{MON} 07:30", 15, 1, 300, F),
            Step(f"{MON} 09:30", 15, 1, 300, F),
            Step(f"{MON} 11:30", 15, 1, 300, F),
            Step(f"{MON} 13:30", 301, 1, 0, IN),
            Step(f"{MON} 18:00", 302, 10, 100, IN, penalty=400),  # 400 capped to the 100 left
        ],
    ),
    # midnight and cap-day boundaries (the service day starts at 04:00)
    "transfer across midnight": (
        ADULT,
        [Step(f"{MON} 23:30", 12, 1, 200, F), Step(f"{TUE} 00:40", 15, 1, 200, F, transfer=True)],
    ),
    "trip across midnight is a tap-out, not a missing one": (
        ADULT,
        [Step(f"{MON} 23:50", 301, 1, 0, IN), Step(f"{TUE} 00:20", 301, 3, 300, OUT)],
    ),
    "the cap day runs past midnight until 04:00": (
        ADULT,
        [
            Step(f"{MON} 10:00", 15, 1, 300, F),
            Step(f"{MON} 14:00", 15, 1, 300, F),
            Step(f"{MON} 18:00", 15, 1, 300, F),
            Step(f"{MON} 22:00", 15, 1, 100, F),
            Step(f"{TUE} 02:00", 15, 1, 0, F),  # still Monday's service day: capped
            Step(f"{TUE} 03:59", 15, 1, 0, F),
            Step(f"{TUE} 04:00", 15, 1, 300, F),  # a new cap day
        ],
    ),
    "a trip tapped out after 04:00 counts on the new cap day": (
        ADULT,
        [
            Step(f"{MON} 10:00", 15, 1, 300, F),
            Step(f"{MON} 14:00", 15, 1, 300, F),
            Step(f"{MON} 18:00", 15, 1, 300, F),
            Step(f"{TUE} 03:30", 301, 1, 0, IN),
            Step(f"{TUE} 04:10", 301, 4, 400, OUT),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    card_type, steps = SCENARIOS[name]
    run(card_type, steps)


def test_tap_in_and_tap_out_write_the_transit_record() -> None:
    tap_in = decide(TABLE, Tap(_at(f"{MON} 10:00"), 301, 2, TERM_ID, ADULT), TransitRecord())
    record = tap_in.record
    assert record.trip_state == TransitRecord.TRIP_IN
    assert (record.line_id, record.entry_station, record.entry_term_id) == (301, 2, TERM_ID)
    assert parse_bcd_datetime(record.entry_date, record.entry_time) == _at(f"{MON} 10:00")
    assert record.entry_amount == 0 and record.cap_paid == 0
    out = decide(TABLE, Tap(_at(f"{MON} 10:30"), 301, 4, TERM_ID, ADULT), record).record
    assert out.trip_state == TransitRecord.TRIP_OUT
    assert (out.line_id, out.entry_station) == (301, 2)  # the trip's entry stays
    assert parse_bcd_datetime(out.boarding_date, out.boarding_time) == _at(f"{MON} 10:00")  # boarding = tap-in
    assert (out.boarding_line, out.transfers) == (301, 0)
    assert parse_bcd_date(out.cap_date) == _at(MON + " 00:00").date() and out.cap_paid == 300


def test_transfer_keeps_the_window_start_and_counts() -> None:
    record = run(ADULT, [Step(f"{MON} 10:00", 12, 1, 200, F), Step(f"{MON} 10:45", 15, 1, 200, F, transfer=True)])
    assert parse_bcd_datetime(record.boarding_date, record.boarding_time) == _at(f"{MON} 10:00")
    assert (record.boarding_line, record.transfers, record.cap_paid) == (15, 1, 400)


def test_breakdown_and_reason_say_why() -> None:
    record = run(STUDENT, [Step(f"{MON} 10:00", 12, 1, 100, F)])
    decision = decide(TABLE, Tap(_at(f"{MON} 10:30"), 15, 1, TERM_ID, STUDENT), record)
    parts = decision.breakdown
    assert (parts.base, parts.concession_off, parts.transfer_off, parts.cap_off) == (300, 150, 100, 0)
    assert decision.fare == 50
    assert "student 50%" in decision.reason and "transfer 1" in decision.reason


def test_free_transfer_by_percent_and_same_line_allowed() -> None:
    doc = copy.deepcopy(TABLE_DOC)
    doc["transfer"] = {"window_minutes": 60, "max_transfers": 1, "discount_percent": 100, "same_line": True}
    table = FareTable.from_json(doc)
    run(
        ADULT,
        [
            Step(f"{MON} 10:00", 12, 1, 200, F),
            Step(f"{MON} 10:20", 12, 1, 0, F, transfer=True),
            Step(f"{MON} 10:40", 12, 1, 200, F),
        ],
        table,
    )


def test_no_cap_and_midnight_service_day() -> None:
    doc = copy.deepcopy(TABLE_DOC)
    doc["daily_cap"] = None
    doc["service_day_starts"] = "00:00"
    doc["concessions"] = {}
    table = FareTable.from_json(doc)
    steps = [Step(f"{MON} {hour:02d}:00", 15, 1, 300, F) for hour in range(6, 23, 2)]
    record = run(ADULT, steps, table)
    assert record.cap_paid == 300 * len(steps) and parse_bcd_date(record.cap_date) == _at(MON + " 00:00").date()
    after_midnight = decide(table, Tap(_at(f"{TUE} 00:30"), 15, 1, TERM_ID, ADULT), record)
    assert after_midnight.record.cap_paid == 300  # midnight opened a new day


def test_missing_tap_out_on_a_line_the_table_does_not_know() -> None:
    foreign = TransitRecord(
        trip_state=TransitRecord.TRIP_IN,
        line_id=999,
        entry_station=5,
        entry_date=bytes.fromhex("20250303"),
        entry_time=bytes.fromhex("100000"),
    )
    decision = decide(TABLE, Tap(_at(f"{MON} 11:00"), 12, 1, TERM_ID, ADULT), foreign)
    assert decision.penalty == 400  # the table's highest fare
    assert decision.fare == 600 and decision.record.trip_state == TransitRecord.TRIP_NONE


def test_a_corrupt_open_trip_is_a_missing_tap_out() -> None:
    corrupt = TransitRecord(trip_state=TransitRecord.TRIP_IN, line_id=301, entry_station=1, entry_date=b"\x99" * 4)
    decision = decide(TABLE, Tap(_at(f"{MON} 11:00"), 301, 2, TERM_ID, ADULT), corrupt)
    assert decision.kind is TapKind.TAP_IN and decision.penalty == 400


def test_unknown_line_or_station_is_an_error() -> None:
    with pytest.raises(FareRuleError):
        decide(TABLE, Tap(_at(f"{MON} 10:00"), 77, 1, TERM_ID, ADULT), TransitRecord())
    with pytest.raises(FareRuleError):
        decide(TABLE, Tap(_at(f"{MON} 10:00"), 301, 9, TERM_ID, ADULT), TransitRecord())


def test_decide_is_pure() -> None:
    record = TransitRecord()
    tap = Tap(_at(f"{MON} 10:00"), 12, 1, TERM_ID, ADULT)
    assert decide(TABLE, tap, record) == decide(TABLE, tap, record)
    assert record == TransitRecord()


def test_optional_keys_may_be_null() -> None:
    doc = {"version": "N1", "operator_id": "OP", "lines": {"12": {"kind": "flat", "fare": 200}}}
    nulls = dict.fromkeys(("format", "service_day_starts", "daily_cap", "transfer", "peak_hours", "peak_days"))
    table = FareTable.from_json({**doc, **nulls, "concessions": None})
    assert table == FareTable.from_json(doc)
    assert table.daily_cap is None and table.transfer is None and table.concessions == {}


def test_table_round_trips_through_json() -> None:
    again = FareTable.from_json(TABLE.to_json())
    assert again == TABLE


def _broken(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TABLE_DOC)
    for key, value in changes.items():
        doc[key] = value
    return doc


@pytest.mark.parametrize(
    "doc",
    [
        _broken(version=""),
        _broken(version="has space"),
        _broken(format="other/1"),
        _broken(lines={}),
        _broken(lines={"0": {"kind": "flat", "fare": 100}}),
        _broken(lines={"70000": {"kind": "flat", "fare": 100}}),
        _broken(lines={"1": {"kind": "flat", "fare": -1}}),
        _broken(lines={"1": {"kind": "zone", "fare": 100}}),
        _broken(lines={"1": {"kind": "distance", "stations": [1, 2], "fares": [[1, 2]]}}),
        _broken(lines={"1": {"kind": "distance", "stations": [1, 1], "fares": [[1, 2], [2, 1]]}}),
        _broken(concessions={"child": {"percent": 50}}),
        _broken(concessions={"student": {"percent": 150}}),
        _broken(transfer={"window_minutes": 90, "discount": 100, "discount_percent": 50}),
        _broken(transfer={"window_minutes": 0}),
        _broken(transfer={"max_transfers": 300}),
        _broken(peak_hours=[["09:00", "07:00"]]),
        _broken(peak_hours=[["7:00", "09:00"]]),
        _broken(service_day_starts="25:00"),
        _broken(daily_cap="1000"),
        _broken(peak_days=[0]),
    ],
)
def test_bad_tables_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(FareTableError):
        FareTable.from_json(doc)
