"""Ingest (spec §5; issue #6 "Ingest"): an accepted batch's records into ``clearing_record``, set-wise.

The inbox (:mod:`clearing.inbox`) has kept the raw file under its SHA-256 and checked its format and control
totals. Ingest reads those bytes, verifies every TAC (:class:`clearing.tacs.TacVerifier`), applies spec §5
identity and loads the records in one statement: PostgreSQL ``COPY`` into a staging table then ``INSERT … SELECT …
ON CONFLICT DO NOTHING``; SQLite batched inserts with the same conflict clause. The database's unique indexes
(one primary record per terminal key and per card key) decide what is new; the lines they turn away are
resolved against the record holding the key:

- an identical copy is a **duplicate** (counted in ``clearing_duplicate``, never a record again);
- a ``proof`` / ``ok`` copy of an ``unconfirmed`` record (same columns but ``status`` and ``tac``) **completes** it:
  the unconfirmed one becomes ``superseded``, the completed one the primary record;
- anything else with a held key is a **conflict**: kept with ``role = 'conflict'`` and never settled.

One unit of work per batch; a batch is ingested once (``batch_ingest.upload_id`` is unique).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import InvalidInput, NotFound
from clearing import bulk
from clearing.models import BatchContent, BatchUpload, Device
from clearing.tables import BatchIngest
from clearing.tacs import TacVerifier

log = logging.getLogger("onecard.clearing.ingest")

LOAD = "02"
UNCONFIRMED = "unconfirmed"
RECORD_COLUMNS = (
    "id", "ingest_id", "line_no", "operator_id", "role", "txn_type", "family", "card_no", "card_type", "card_seq",
    "amount", "balance_before", "term_id", "term_seq", "txn_date", "txn_time", "txn_epoch", "tac", "alg", "key_ver",
    "status", "line_id", "station_id", "vehicle_id", "ref", "device_seq", "tac_check", "digest", "conflict_of",
    "prev_term_seq",
)  # fmt: skip
(ID, INGEST_ID, LINE_NO, OPERATOR_ID, ROLE, TXN_TYPE, FAMILY, CARD_NO, CARD_TYPE, CARD_SEQ, AMOUNT, BALANCE_BEFORE,
 TERM_ID, TERM_SEQ, TXN_DATE, TXN_TIME, TXN_EPOCH, TAC, ALG, KEY_VER, STATUS, LINE_ID, STATION_ID, VEHICLE_ID, REF,
 DEVICE_SEQ, TAC_CHECK, DIGEST, CONFLICT_OF, PREV_TERM_SEQ) = range(len(RECORD_COLUMNS))  # fmt: skip
FILE_COLUMNS = (
    "txn_type", "card_no", "card_type", "card_seq", "amount", "balance_before", "term_id", "term_seq", "txn_date",
    "txn_time", "tac", "alg", "key_ver", "status", "line_id", "station_id", "vehicle_id", "ref", "device_seq",
)  # fmt: skip
COPY_COLUMNS = ("id", "ingest_id", "line_no", "operator_id", "role", "family", "txn_epoch", "tac_check", "digest",
                "prev_term_seq", *FILE_COLUMNS)  # fmt: skip
"""The fast path's column order: computed columns, then the batch line as the device wrote it."""
_MAYBE_EMPTY = "tac, line_id, station_id, vehicle_id, ref"
_SKIP_IN_COMPLETION = frozenset({TAC, STATUS, LINE_NO, DIGEST, TAC_CHECK, ID})
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingesting one batch did (per record: new, duplicate, conflict; TACs that failed)."""

    upload_id: int
    device_id: str
    batch_id: str
    records: int
    new: int
    duplicates: int
    conflicts: int
    completions: int
    tac_failures: int
    already: bool = False
    """The batch had been ingested before: nothing changed."""


class AlreadyIngested(Exception):
    """Another transaction ingested the batch first."""


@dataclass
class _Parsed:
    """A batch's records as rows of :data:`RECORD_COLUMNS`, with spec §5 identity inside the batch applied."""

    rows: list[list[Any]] = field(default_factory=list)
    """Candidate primary records."""
    lines: dict[int, str] = field(default_factory=dict)
    """Each record's COPY line (:data:`COPY_COLUMNS`) by line number."""
    superseded: list[list[Any]] = field(default_factory=list)
    """Unconfirmed lines a later line of the same batch completes."""
    conflicts: list[tuple[list[Any], int]] = field(default_factory=list)
    """Lines whose key an earlier line of the batch holds with other content: (row, that line's number)."""
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    """(line_no, line_no of the identical earlier line)."""
    tac_failures: int = 0
    count: int = 0
    amount_total: int = 0
    min_date: str = "99999999"
    max_date: str = "00000000"


def _header(first_line: str) -> tuple[dict[str, Any], int, int]:
    doc = json.loads(first_line.rstrip("\r"))
    created = datetime.fromisoformat(doc["created_at"])
    offset = created.utcoffset()
    if offset is None:
        raise InvalidInput("the batch header's created_at has no offset")
    return doc, int(created.timestamp()), int(offset.total_seconds())


def _same_but_completion(unconfirmed: list[Any], completed: list[Any]) -> bool:
    """``completed`` is ``unconfirmed`` with its outcome: equal but for ``status`` and ``tac`` (spec §5)."""
    if unconfirmed[STATUS] != UNCONFIRMED or completed[STATUS] == UNCONFIRMED:
        return False
    skip = _SKIP_IN_COMPLETION
    return all(unconfirmed[i] == completed[i] for i in range(TXN_TYPE, CONFLICT_OF) if i not in skip)


def batch_lines(body: bytes) -> tuple[str, list[tuple[int, str]]]:
    """The header line and the non-empty record lines (with their line numbers) of a batch."""
    text_body = body.decode("utf-8")
    head, _, rest = text_body.partition("\n")
    lines = []
    for line_no, line in enumerate(rest.split("\n"), start=2):
        line = line.rstrip("\r")
        if line:
            lines.append((line_no, line))
    return head, lines


def parse_records(
    head: str, lines: list[tuple[int, str]], first_id: int, ingest_id: int, operator_id: str, verifier: TacVerifier
) -> tuple[dict[str, Any], int, int, _Parsed]:
    """Read a batch the inbox accepted: every record as a row with id ``first_id + i``, its TAC verified
    (spec §2.4, §5), and its COPY line."""
    doc, created_epoch, offset = _header(head)
    parsed = _Parsed()
    by_terminal: dict[tuple[str, int], list[Any]] = {}
    by_card: dict[tuple[str, int, int], list[Any]] = {}
    by_device_seq: dict[tuple[str, int], list[Any]] = {}
    day_seconds: dict[str, int] = {}
    check = verifier.check
    blake2b = hashlib.blake2b
    prefix_tail = f"{ingest_id},"
    quoted_operator = _csv_cell(operator_id)
    for index, (line_no, line) in enumerate(lines):
        simple = '"' not in line
        fields = line.split(",") if simple else next(csv.reader([line], strict=True))
        (txn_type, card_no, card_type, card_seq_s, amount_s, balance_s, term_id, term_seq_s, txn_date, txn_time, tac,
         alg, key_ver, status, line_id, station_id, vehicle_id, ref, device_seq_s) = fields  # fmt: skip
        if not (card_type.isupper() or card_type.isdigit()) or tac != tac.upper() or key_ver != key_ver.upper():
            card_type, tac, key_ver = card_type.upper(), tac.upper(), key_ver.upper()
            fields = [txn_type, card_no, card_type, card_seq_s, amount_s, balance_s, term_id, term_seq_s,
                      txn_date, txn_time, tac, alg, key_ver, status, line_id, station_id, vehicle_id, ref,
                      device_seq_s]  # fmt: skip
            simple = False
        card_seq, amount, balance, term_seq = int(card_seq_s), int(amount_s), int(balance_s), int(term_seq_s)
        midnight = day_seconds.get(txn_date)
        if midnight is None:
            ordinal = date(int(txn_date[:4]), int(txn_date[4:6]), int(txn_date[6:])).toordinal()
            midnight = day_seconds[txn_date] = (ordinal - _EPOCH_ORDINAL) * 86_400 - offset
        epoch = midnight + int(txn_time[:2]) * 3600 + int(txn_time[2:4]) * 60 + int(txn_time[4:])
        joined = line.replace(",", "\x1f") if simple else "\x1f".join(fields)
        digest = blake2b(joined.encode(), digest_size=16).hexdigest()
        if status == UNCONFIRMED:
            tac_check = "none"
        else:
            tac_check = check(
                txn_type, card_no, card_seq, amount, balance, term_id, term_seq, txn_date, txn_time, tac, alg, key_ver
            )
            if tac_check != "ok":
                parsed.tac_failures += 1
        family = 0 if txn_type == LOAD else 1
        record_id = first_id + index
        device_seq = int(device_seq_s)
        before = by_device_seq.get((term_id, device_seq - 1))
        prev_term_seq = before[TERM_SEQ] if before is not None and before[ROLE] == "primary" else None
        row = [
            record_id, ingest_id, line_no, operator_id, "primary", txn_type, family, card_no, card_type, card_seq,
            amount, balance, term_id, term_seq, txn_date, txn_time, epoch, tac, alg, key_ver, status, line_id,
            station_id, vehicle_id, ref, device_seq, tac_check, digest, None, prev_term_seq,
        ]  # fmt: skip
        by_device_seq[(term_id, device_seq)] = row
        body = line if simple else ",".join(_csv_cell(field) for field in fields)
        prev_text = "" if prev_term_seq is None else prev_term_seq
        parsed.lines[line_no] = (
            f"{record_id},{prefix_tail}{line_no},{quoted_operator},primary,{family},{epoch},{tac_check},{digest},"
            f"{prev_text},{body}"
        )
        parsed.count += 1
        parsed.amount_total += amount
        if txn_date < parsed.min_date:
            parsed.min_date = txn_date
        if txn_date > parsed.max_date:
            parsed.max_date = txn_date
        _place(parsed, row, by_terminal, by_card)
    return doc, created_epoch, offset, parsed


def _csv_cell(value: str) -> str:
    if value and not any(c in value for c in ',"\r\n'):
        return value
    return '"' + value.replace('"', '""') + '"'


def _place(
    parsed: _Parsed,
    row: list[Any],
    by_terminal: dict[tuple[str, int], list[Any]],
    by_card: dict[tuple[str, int, int], list[Any]],
) -> None:
    """Spec §5 identity among the lines of one batch."""
    terminal_key = (row[TERM_ID], row[TERM_SEQ])
    card_key = (row[CARD_NO], row[FAMILY], row[CARD_SEQ])
    confirmed = row[STATUS] != UNCONFIRMED
    held = by_terminal.get(terminal_key)
    if held is None and confirmed:
        held = by_card.get(card_key)
    if held is None:
        parsed.rows.append(row)
        by_terminal[terminal_key] = row
        if confirmed:
            by_card[card_key] = row
        return
    if held[DIGEST] == row[DIGEST]:
        parsed.duplicates.append((row[LINE_NO], held[LINE_NO]))
    elif _same_but_completion(held, row) and by_card.get(card_key) is None:
        held[ROLE] = "superseded"
        parsed.rows.remove(held)
        parsed.superseded.append(held)
        parsed.rows.append(row)
        by_terminal[terminal_key] = row
        by_card[card_key] = row
    elif _same_but_completion(row, held):
        parsed.duplicates.append((row[LINE_NO], held[LINE_NO]))  # the stale unconfirmed copy of a completed line
    else:
        row[ROLE] = "conflict"
        parsed.conflicts.append((row, held[LINE_NO]))


def _copy_fast(session: Session, parsed: _Parsed, rows: Sequence[list[Any]]) -> bool:
    """PostgreSQL: ``COPY`` the candidate records straight into ``clearing_record`` inside a savepoint; False when a
    unique index refused one (the savepoint is rolled back and nothing went in)."""
    chunk: list[str] = []
    lines = parsed.lines

    def chunks() -> Iterator[str]:
        for row in rows:
            chunk.append(lines[row[LINE_NO]])
            if len(chunk) >= 20_000:
                yield "\n".join(chunk) + "\n"
                chunk.clear()
        if chunk:
            yield "\n".join(chunk) + "\n"

    raw = bulk.driver_connection(session)
    with raw.cursor() as cursor:
        cursor.execute("SAVEPOINT clearing_copy")
        try:
            with cursor.copy(
                f"COPY clearing_record ({', '.join(COPY_COLUMNS)}) FROM STDIN "
                f"(FORMAT csv, FORCE_NOT_NULL ({_MAYBE_EMPTY}))"
            ) as copy:
                for text_chunk in chunks():
                    copy.write(text_chunk)
        except Exception as exc:
            cursor.execute("ROLLBACK TO SAVEPOINT clearing_copy")
            if getattr(exc, "sqlstate", None) == "23505":  # unique_violation: some key is held already
                return False
            raise
        cursor.execute("RELEASE SAVEPOINT clearing_copy")
    return True


def _insert_new(session: Session, parsed: _Parsed, rows: Sequence[list[Any]]) -> set[int]:
    """Insert candidate primary records; the ids that went in. The unique indexes turn away the lines whose key a
    record holds (fast path: one ``COPY``; when it is refused, or on SQLite: insert … on conflict do nothing)."""
    if not rows:
        return set()
    if bulk.is_postgres(session) and _copy_fast(session, parsed, rows):
        return {row[ID] for row in rows}
    columns = ", ".join(RECORD_COLUMNS)
    if bulk.is_postgres(session):
        bulk.temp_table(session, "clearing_stage", _stage_columns())
        bulk.insert_rows(session, "clearing_stage", RECORD_COLUMNS, rows)
        session.execute(
            text(f"INSERT INTO clearing_record ({columns}) SELECT {columns} FROM clearing_stage ON CONFLICT DO NOTHING")
        )
        bulk.drop_temp_table(session, "clearing_stage")
    else:
        marks = ", ".join("?" for _ in RECORD_COLUMNS)
        cursor = bulk.driver_connection(session).cursor()
        try:
            statement = f"INSERT INTO clearing_record ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
            for start in range(0, len(rows), bulk.SQLITE_CHUNK):
                cursor.executemany(statement, rows[start : start + bulk.SQLITE_CHUNK])
        finally:
            cursor.close()
    low, high = min(row[ID] for row in rows), max(row[ID] for row in rows)
    present = bulk.fetch_rows(
        session, "SELECT id FROM clearing_record WHERE id BETWEEN :low AND :high", {"low": low, "high": high}
    )
    return {int(row[0]) for row in present}


def _stage_columns() -> str:
    types = {
        "id": "bigint", "ingest_id": "bigint", "line_no": "integer", "family": "smallint", "card_seq": "integer",
        "amount": "bigint", "balance_before": "bigint", "term_seq": "bigint", "txn_epoch": "bigint",
        "device_seq": "bigint", "conflict_of": "bigint", "prev_term_seq": "bigint",
    }  # fmt: skip
    return ", ".join(f"{name} {types.get(name, 'text')}" for name in RECORD_COLUMNS)


def allocate_ids(session: Session, count: int) -> int:
    """The first of ``count`` consecutive ``clearing_record`` ids reserved for one batch.

    PostgreSQL: the id sequence advanced by ``count`` under a short advisory lock (released at once, not held to
    commit, so concurrent ingests only queue for that instant); SQLite: after the highest id (writers are serial).
    """
    if count <= 0:
        return 0
    if bulk.is_postgres(session):
        raw = bulk.driver_connection(session)
        with raw.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (ID_LOCK,))
            try:
                cursor.execute("SELECT nextval(pg_get_serial_sequence('clearing_record', 'id'))")
                row = cursor.fetchone()
                assert row is not None
                first = int(row[0])
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence('clearing_record', 'id'), %s)", (first + count - 1,)
                )
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (ID_LOCK,))
        return first
    highest = session.execute(text("SELECT coalesce(max(id), 0) FROM clearing_record")).scalar_one()
    return int(highest) + 1


ID_LOCK = 0x0C1EA41D
"""Advisory lock key of the record id allocation."""


@dataclass(frozen=True, slots=True)
class _Held:
    record_id: int
    row: list[Any]
    ingest_id: int


def _holders(session: Session, rows: Sequence[list[Any]]) -> tuple[dict[tuple[str, int], _Held], dict[Any, _Held]]:
    """The primary records holding the terminal or card keys of ``rows``."""
    if not rows:
        return {}, {}
    bulk.temp_table(session, "clearing_keys", "term_id text, term_seq bigint, card_no text, family smallint, seq int")
    bulk.insert_rows(
        session,
        "clearing_keys",
        ("term_id", "term_seq", "card_no", "family", "seq"),
        [(r[TERM_ID], r[TERM_SEQ], r[CARD_NO], r[FAMILY], r[CARD_SEQ]) for r in rows],
    )
    columns = ", ".join(f"r.{name}" for name in RECORD_COLUMNS)
    by_terminal = bulk.fetch_rows(
        session,
        f"SELECT DISTINCT {columns} FROM clearing_record r JOIN clearing_keys k "
        "ON r.term_id = k.term_id AND r.term_seq = k.term_seq WHERE r.role = 'primary'",
    )
    by_card = bulk.fetch_rows(
        session,
        f"SELECT DISTINCT {columns} FROM clearing_record r JOIN clearing_keys k "
        "ON r.card_no = k.card_no AND r.family = k.family AND r.card_seq = k.seq "
        "WHERE r.role = 'primary' AND r.status <> 'unconfirmed'",
    )
    bulk.drop_temp_table(session, "clearing_keys")
    terminal = {
        (str(row[TERM_ID]), int(row[TERM_SEQ])): _Held(int(row[ID]), list(row), int(row[INGEST_ID]))
        for row in by_terminal
    }
    card = {
        (str(row[CARD_NO]), int(row[FAMILY]), int(row[CARD_SEQ])): _Held(int(row[ID]), list(row), int(row[INGEST_ID]))
        for row in by_card
    }
    return terminal, card


@dataclass
class _Outcome:
    completions: list[tuple[list[Any], _Held]] = field(default_factory=list)
    conflicts: list[tuple[list[Any], int]] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)


def _resolve_turned_away(session: Session, turned_away: Sequence[list[Any]]) -> _Outcome:
    """Each line whose key a record holds: duplicate, completion or conflict (spec §5)."""
    outcome = _Outcome()
    terminal, card = _holders(session, turned_away)
    for row in turned_away:
        held = terminal.get((row[TERM_ID], row[TERM_SEQ]))
        if held is None and row[STATUS] != UNCONFIRMED:
            held = card.get((row[CARD_NO], row[FAMILY], row[CARD_SEQ]))
        if held is None:
            raise AlreadyIngested  # the key holder is not visible yet: start over
        if held.row[DIGEST] == row[DIGEST] or _same_but_completion(row, held.row):
            outcome.duplicates.append((row[LINE_NO], held.record_id))
        elif _same_but_completion(held.row, row):
            outcome.completions.append((row, held))
        else:
            outcome.conflicts.append((row, held.record_id))
    return outcome


def ingest_upload(uow: UnitOfWork, upload_id: int, verifier: TacVerifier, now: datetime | None = None) -> IngestResult:
    """Ingest one accepted upload (spec §5) in the unit of work; commit once. Ingesting it again changes nothing."""
    result = ingest_in_session(uow.session, upload_id, verifier, now)
    if not result.already:
        uow.commit()
        log.info("ingested batch %s of %s: %s", result.batch_id, result.device_id, result)
    return result


def ingest_in_session(
    session: Session, upload_id: int, verifier: TacVerifier, now: datetime | None = None
) -> IngestResult:
    """Ingest one accepted upload (spec §5) in ``session``'s transaction (does not commit)."""
    existing = session.scalars(select(BatchIngest).where(BatchIngest.upload_id == upload_id)).one_or_none()
    upload = session.get(BatchUpload, upload_id)
    if upload is None:
        raise NotFound(f"no accepted upload {upload_id}")
    if existing is not None:
        return _result(upload, existing, already=True)
    content = session.get(BatchContent, upload.content_sha256)
    device = session.get(Device, upload.device_id)
    if content is None or device is None:
        raise NotFound(f"upload {upload_id} has lost its bytes or its device")
    ingest = BatchIngest(
        upload_id=upload_id, device_id=upload.device_id, device_kind=device.kind, operator_id=upload.operator_id,
        term_id=upload.term_id, created_epoch=0, utc_offset=0, record_count=0, new_records=0, duplicates=0,
        conflicts=0, completions=0, tac_failures=0, open_records=0, min_txn_date="", max_txn_date="",
        ingested_at=now or datetime.now(UTC),
    )  # fmt: skip
    session.add(ingest)
    try:
        session.flush()
    except IntegrityError:
        raise AlreadyIngested from None
    head, lines = batch_lines(content.body)
    first_id = allocate_ids(session, len(lines))
    doc, created_epoch, offset, parsed = parse_records(head, lines, first_id, ingest.id, upload.operator_id, verifier)
    if parsed.count != doc["record_count"] or parsed.amount_total != doc["amount_total"]:
        raise InvalidInput(f"batch {upload.batch_id} of {upload.device_id}: the control totals do not agree")

    inserted = _insert_new(session, parsed, parsed.rows)
    turned_away = [row for row in parsed.rows if row[ID] not in inserted]
    outcome = _resolve_turned_away(session, turned_away)
    inserted |= _complete(session, parsed, outcome.completions)
    id_of_line = {row[LINE_NO]: row[ID] for row in parsed.rows}

    def holder(line_no: int) -> int | None:
        record_id = id_of_line.get(line_no)
        return record_id if record_id in inserted else _holder_of_line(outcome, line_no)

    for row, holder_line in parsed.conflicts:
        row[CONFLICT_OF] = holder(holder_line)
    for row, held_id in outcome.conflicts:
        row[ROLE], row[CONFLICT_OF] = "conflict", held_id
    extra = [row for row, _ in outcome.conflicts] + [row for row, _ in parsed.conflicts] + parsed.superseded
    if extra:
        bulk.insert_rows(session, "clearing_record", RECORD_COLUMNS, extra)
    duplicates = list(outcome.duplicates) + [(line, holder(first)) for line, first in parsed.duplicates]
    if duplicates:
        bulk.insert_rows(
            session,
            "clearing_duplicate",
            ("ingest_id", "line_no", "record_id", "operator_id"),
            [(ingest.id, line, record_id, upload.operator_id) for line, record_id in duplicates],
        )
    completed = sum(1 for row, _ in outcome.completions if row[ID] in inserted)
    new = len(parsed.rows) - len(turned_away) + completed
    ingest.created_epoch, ingest.utc_offset = created_epoch, offset
    ingest.first_record_id, ingest.last_record_id = first_id, first_id + max(len(lines), 1) - 1
    ingest.record_count = parsed.count
    ingest.new_records = new
    ingest.duplicates = len(duplicates)
    ingest.conflicts = len(parsed.conflicts) + len(outcome.conflicts) + (len(outcome.completions) - completed)
    ingest.completions = len(outcome.completions) + len(parsed.superseded)
    ingest.tac_failures = parsed.tac_failures
    ingest.open_records = new + ingest.conflicts
    ingest.min_txn_date = parsed.min_date if parsed.count else ""
    ingest.max_txn_date = parsed.max_date if parsed.count else ""
    return _result(upload, ingest)


def _holder_of_line(outcome: _Outcome, line_no: int) -> int | None:
    """The record an in-batch line turned out to copy (it was itself a duplicate of an older record)."""
    for line, record_id in outcome.duplicates:
        if line == line_no:
            return record_id
    for row, held in outcome.conflicts:
        if row[LINE_NO] == line_no:
            return held
    return None


def _complete(session: Session, parsed: _Parsed, completions: Sequence[tuple[list[Any], _Held]]) -> set[int]:
    """Supersede the unconfirmed records these lines complete and insert the completed ones; the ids that went in.

    A completion whose card key another record holds is a conflict after all.
    """
    if not completions:
        return set()
    superseded = [held.record_id for _, held in completions]
    session.execute(
        text("UPDATE clearing_record SET role = 'superseded' WHERE id IN (" + ",".join(map(str, superseded)) + ")")
    )
    _release_open(session, superseded)
    rows = [row for row, _ in completions]
    inserted = _insert_new(session, parsed, rows)
    for row, held in completions:
        if row[ID] not in inserted:
            row[ROLE], row[CONFLICT_OF] = "conflict", held.record_id
            bulk.insert_rows(session, "clearing_record", RECORD_COLUMNS, [row])
    return inserted


def _release_open(session: Session, record_ids: Sequence[int]) -> None:
    """Superseded records that never had a verdict no longer count as open in their batch."""
    listed = ",".join(map(str, record_ids))
    for ingest_id, count in bulk.fetch_rows(
        session,
        f"SELECT r.ingest_id, count(*) FROM clearing_record r WHERE r.id IN ({listed}) "
        "AND NOT EXISTS (SELECT 1 FROM clearing_verdict v WHERE v.record_id = r.id) GROUP BY r.ingest_id",
    ):
        session.execute(
            text("UPDATE batch_ingest SET open_records = open_records - :n WHERE id = :i"),
            {"n": int(count), "i": int(ingest_id)},
        )


def _result(upload: BatchUpload, ingest: BatchIngest, *, already: bool = False) -> IngestResult:
    return IngestResult(
        upload_id=upload.id,
        device_id=upload.device_id,
        batch_id=upload.batch_id,
        records=ingest.record_count,
        new=ingest.new_records,
        duplicates=ingest.duplicates,
        conflicts=ingest.conflicts,
        completions=ingest.completions,
        tac_failures=ingest.tac_failures,
        already=already,
    )


def uploads_to_ingest(session: Session) -> list[int]:
    """Accepted uploads not ingested yet, oldest first."""
    rows = bulk.fetch_rows(
        session,
        "SELECT u.id FROM batch_upload u WHERE NOT EXISTS (SELECT 1 FROM batch_ingest i WHERE i.upload_id = u.id) "
        "ORDER BY u.received_at, u.id",
    )
    return [int(row[0]) for row in rows]


def ingest_with_retry(
    new_uow: Any, upload_id: int, verifier: TacVerifier, now: datetime | None = None, attempts: int = 3
) -> IngestResult:
    """:func:`ingest_upload` in its own unit of work, starting over when a concurrent ingest got in the way."""
    for attempt in range(attempts):
        try:
            with new_uow() as uow:
                return ingest_upload(uow, upload_id, verifier, now)
        except (AlreadyIngested, IntegrityError):
            if attempt == attempts - 1:
                raise
            log.info("upload %s: ingest raced another, starting over", upload_id)
    raise AssertionError("unreachable")
