"""Transaction batches, terminal → clearing (spec §5): records, headers and strict parsing.

Pure codec shared by terminals (which write batches) and clearing (which reads them).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import StrEnum

FORMAT = "onecard-batch/1"
TXN_TYPES = ("02", "06", "09")


class RecordStatus(StrEnum):
    """How a record was completed (spec §5, column 14)."""

    OK = "ok"
    PROOF = "proof"
    UNCONFIRMED = "unconfirmed"


class BatchFormatError(ValueError):
    """A batch file that cannot be accepted, with the reason (and the line, when there is one)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One record: the 19 columns of spec §5, in order, as text-friendly typed values."""

    txn_type: str
    card_no: str
    card_type: str
    card_seq: int
    amount: int
    balance_before: int
    term_id: str
    term_seq: int
    txn_date: str
    txn_time: str
    tac: str
    alg: str
    key_ver: str
    status: RecordStatus
    line_id: str = ""
    station_id: str = ""
    vehicle_id: str = ""
    ref: str = ""
    device_seq: int = 0

    def to_row(self) -> list[str]:
        """The CSV row."""
        return [str(getattr(self, f.name)) for f in fields(self)]

    def to_json(self) -> dict[str, object]:
        """Columns as JSON keys (for ``onecard terminal purchase --json``)."""
        doc = asdict(self)
        doc["status"] = str(self.status)
        return doc

    @classmethod
    def from_row(cls, row: list[str], line: int | None = None) -> BatchRecord:
        """Parse and validate one CSV row; raise :class:`BatchFormatError`."""
        if len(row) != len(COLUMNS):
            raise BatchFormatError(f"expected {len(COLUMNS)} columns, got {len(row)}", line)
        value = dict(zip(COLUMNS, row, strict=True))
        for name, pattern in _PATTERNS.items():
            if not pattern.fullmatch(value[name]):
                raise BatchFormatError(f"bad {name}: {value[name]!r}", line)
        if value["txn_type"] not in TXN_TYPES:
            raise BatchFormatError(f"bad txn_type: {value['txn_type']!r}", line)
        try:
            status = RecordStatus(value["status"])
        except ValueError:
            raise BatchFormatError(f"bad status: {value['status']!r}", line) from None
        if status is RecordStatus.UNCONFIRMED and value["tac"]:
            raise BatchFormatError("an unconfirmed record has no TAC", line)
        if status is not RecordStatus.UNCONFIRMED and not value["tac"]:
            raise BatchFormatError("TAC missing", line)
        try:
            datetime.strptime(value["txn_date"] + value["txn_time"], "%Y%m%d%H%M%S")
        except ValueError:
            raise BatchFormatError("bad txn_date/txn_time", line) from None
        return cls(
            txn_type=value["txn_type"],
            card_no=value["card_no"],
            card_type=value["card_type"].upper(),
            card_seq=int(value["card_seq"]),
            amount=int(value["amount"]),
            balance_before=int(value["balance_before"]),
            term_id=value["term_id"],
            term_seq=int(value["term_seq"]),
            txn_date=value["txn_date"],
            txn_time=value["txn_time"],
            tac=value["tac"].upper(),
            alg=value["alg"],
            key_ver=value["key_ver"].upper(),
            status=status,
            line_id=value["line_id"],
            station_id=value["station_id"],
            vehicle_id=value["vehicle_id"],
            ref=value["ref"],
            device_seq=int(value["device_seq"]),
        )


COLUMNS = tuple(f.name for f in fields(BatchRecord))
_DEC = re.compile(r"0|[1-9][0-9]{0,11}")
_PATTERNS = {
    "txn_type": re.compile(r"[0-9]{2}"),
    "card_no": re.compile(r"[0-9]{16}"),
    "card_type": re.compile(r"[0-9A-Fa-f]{2}"),
    "card_seq": re.compile(r"0|[1-9][0-9]{0,4}"),
    "amount": _DEC,
    "balance_before": _DEC,
    "term_id": re.compile(r"[0-9]{12}"),
    "term_seq": _DEC,
    "txn_date": re.compile(r"[0-9]{8}"),
    "txn_time": re.compile(r"[0-9]{6}"),
    "tac": re.compile(r"([0-9A-Fa-f]{8})?"),
    "alg": re.compile(r"00|04"),
    "key_ver": re.compile(r"[0-9A-Fa-f]{2}"),
    "status": re.compile(r"[a-z]+"),
    "line_id": re.compile(r"[0-9A-Za-z_.-]{0,32}"),
    "station_id": re.compile(r"[0-9A-Za-z_.-]{0,32}"),
    "vehicle_id": re.compile(r"[0-9A-Za-z_.-]{0,32}"),
    "ref": re.compile(r"[^\r\n]{0,64}"),
    "device_seq": re.compile(r"[1-9][0-9]{0,11}"),
}


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The JSON header line of a batch (spec §5)."""

    batch_id: str
    device_id: str
    operator_id: str
    term_id: str
    created_at: str
    record_count: int
    amount_total: int
    format: str = FORMAT

    def to_json(self) -> str:
        """The header line (without its line end)."""
        doc = {
            "format": self.format,
            "batch_id": self.batch_id,
            "device_id": self.device_id,
            "operator_id": self.operator_id,
            "term_id": self.term_id,
            "created_at": self.created_at,
            "record_count": self.record_count,
            "amount_total": self.amount_total,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """A whole batch: header and records in the order taken."""

    header: BatchHeader
    records: tuple[BatchRecord, ...]

    @classmethod
    def build(
        cls,
        batch_id: str,
        device_id: str,
        operator_id: str,
        term_id: str,
        created_at: datetime,
        records: list[BatchRecord],
    ) -> Batch:
        """A batch with its control totals computed."""
        if created_at.tzinfo is None:
            raise ValueError("created_at needs an offset")
        header = BatchHeader(
            batch_id=batch_id,
            device_id=device_id,
            operator_id=operator_id,
            term_id=term_id,
            created_at=created_at.isoformat(timespec="seconds"),
            record_count=len(records),
            amount_total=sum(r.amount for r in records),
        )
        return cls(header, tuple(records))

    def encode(self) -> bytes:
        """UTF-8 text: the header line, then one CSV line per record, LF line ends."""
        out = io.StringIO()
        out.write(self.header.to_json() + "\n")
        writer = csv.writer(out, lineterminator="\n")
        for record in self.records:
            writer.writerow(record.to_row())
        return out.getvalue().encode("utf-8")


def parse_batch(raw: bytes) -> Batch:
    """Parse a batch strictly; control totals must agree (spec §5). Raise :class:`BatchFormatError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchFormatError("not UTF-8") from None
    head, _, body = text.partition("\n")
    try:
        doc = json.loads(head.rstrip("\r"))
    except json.JSONDecodeError:
        raise BatchFormatError("the first line is not a JSON header", 1) from None
    if not isinstance(doc, dict):
        raise BatchFormatError("the header is not a JSON object", 1)
    if doc.get("format") != FORMAT:
        raise BatchFormatError(f"format must be {FORMAT}", 1)
    try:
        header = BatchHeader(
            batch_id=_str(doc, "batch_id"),
            device_id=_str(doc, "device_id"),
            operator_id=_str(doc, "operator_id"),
            term_id=_str(doc, "term_id"),
            created_at=_str(doc, "created_at"),
            record_count=_int(doc, "record_count"),
            amount_total=_int(doc, "amount_total"),
        )
        datetime.fromisoformat(header.created_at)
    except (KeyError, TypeError, ValueError) as exc:
        raise BatchFormatError(f"bad header: {exc}", 1) from None
    records: list[BatchRecord] = []
    reader = csv.reader(io.StringIO(body, newline=""), strict=True)
    try:
        for index, row in enumerate(reader, start=2):
            if not row:
                continue
            records.append(BatchRecord.from_row(row, index))
    except csv.Error as exc:
        raise BatchFormatError(f"bad CSV: {exc}") from None
    if len(records) != header.record_count:
        raise BatchFormatError(f"record_count {header.record_count} but {len(records)} records")
    total = sum(r.amount for r in records)
    if total != header.amount_total:
        raise BatchFormatError(f"amount_total {header.amount_total} but the records sum to {total}")
    return Batch(header, tuple(records))


def _str(doc: dict[str, object], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _int(doc: dict[str, object], key: str) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value
