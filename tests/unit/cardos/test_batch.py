"""The spec §5 batch codec: round trip, control totals, strict columns."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cardos.batch import Batch, BatchFormatError, BatchRecord, RecordStatus, parse_batch

CST = timezone(timedelta(hours=8))


def _record(seq: int, amount: int, status: RecordStatus = RecordStatus.OK) -> BatchRecord:
    return BatchRecord(
        txn_type="06",
        card_no="0310000000000001",
        card_type="01",
        card_seq=seq,
        amount=amount,
        balance_before=10_000,
        term_id="031000000001",
        term_seq=seq + 1,
        txn_date="20250301",
        txn_time="081500",
        tac="" if status is RecordStatus.UNCONFIRMED else "8C59C3C4",
        alg="00",
        key_ver="01",
        status=status,
        line_id="12",
        station_id="3",
        vehicle_id="BUS12",
        ref='a "quoted", ref',
        device_seq=seq + 1,
    )


def _batch(records: list[BatchRecord]) -> Batch:
    return Batch.build("B-1", "BUSA-V01", "OP-BUS-A", "031000000001", datetime(2025, 3, 1, 23, tzinfo=CST), records)


def test_round_trip_and_totals() -> None:
    records = [_record(0, 150), _record(1, 0), _record(2, 200, RecordStatus.UNCONFIRMED)]
    raw = _batch(records).encode()
    parsed = parse_batch(raw)
    assert parsed.records == tuple(records)
    assert parsed.header.record_count == 3 and parsed.header.amount_total == 350
    assert raw.splitlines()[0].startswith(b'{"format":"onecard-batch/1"')
    assert parse_batch(raw.replace(b"\n", b"\r\n")).records == tuple(records)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw.replace(b'"record_count":2', b'"record_count":3'), "record_count"),
        (lambda raw: raw.replace(b'"amount_total":150', b'"amount_total":151'), "amount_total"),
        (lambda raw: raw.replace(b"onecard-batch/1", b"onecard-batch/2"), "format"),
        (lambda raw: raw.replace(b",8C59C3C4,", b",8C59C3,"), "tac"),
        (lambda raw: raw.replace(b",00,01,ok,", b",02,01,ok,"), "alg"),
        (lambda raw: raw.replace(b",ok,", b",fine,"), "status"),
        (lambda raw: b"\xff" + raw, "UTF-8"),
        (lambda raw: raw.replace(b"20250301", b"20250231"), "txn_date"),
    ],
)
def test_refusals_name_the_reason(mutate: object, reason: str) -> None:
    raw = _batch([_record(0, 150), _record(1, 0)]).encode()
    with pytest.raises(BatchFormatError, match=reason):
        parse_batch(mutate(raw))  # type: ignore[operator]
