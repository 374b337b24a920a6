"""A device's durable local store: SQLite in WAL mode with ``synchronous=FULL`` (spec §5, store and forward).

One file per device (validator or kiosk) holds:

- ``intent``: a purchase about to be sent to the card (written and committed *before* DEBIT), until the
  outcome is known; then it becomes a record, or is dropped when the card proves no money moved;
- ``record``: the spec §5 records, numbered by ``device_seq`` (contiguous from 1: a number is given only
  when a record is stored, in the same transaction), kept until the clearing service acknowledged their batch;
- ``batch``: closed batches (the exact bytes and their signature, re-sent unchanged until acknowledged);
- ``hotlist`` (with its version), ``last_tap`` (repeat-tap detection), ``event`` (refusals, clock reports,
  upload problems) and ``outbox`` (kiosk payment notices still to deliver).

Every change is one ``BEGIN IMMEDIATE`` transaction. Each thread opens its own :class:`DeviceStore`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cardos.batch import Batch, BatchRecord, RecordStatus
from terminal.errors import TerminalError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intent (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    card_no TEXT NOT NULL,
    card_seq INTEGER NOT NULL,
    tap_time TEXT NOT NULL,
    fare_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    draft TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intent_card ON intent (card_no);
CREATE TABLE IF NOT EXISTS batch (
    batch_id TEXT PRIMARY KEY,
    term_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    amount_total INTEGER NOT NULL,
    body BLOB,
    signature TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'acked', 'refused', 'conflict')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    acked_at TEXT
);
CREATE TABLE IF NOT EXISTS record (
    device_seq INTEGER PRIMARY KEY,
    card_no TEXT NOT NULL,
    card_seq INTEGER NOT NULL,
    txn_type TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    term_id TEXT NOT NULL,
    term_seq INTEGER NOT NULL,
    tap_time TEXT NOT NULL,
    fare_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    batch_id TEXT REFERENCES batch (batch_id)
);
CREATE INDEX IF NOT EXISTS record_card ON record (card_no);
CREATE INDEX IF NOT EXISTS record_batch ON record (batch_id);
CREATE TABLE IF NOT EXISTS last_tap (card_no TEXT PRIMARY KEY, tap_time TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hotlist (card_no TEXT PRIMARY KEY, listed_at TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    card_no TEXT,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


class StorageFull(TerminalError):
    """The store holds ``capacity`` records and intents not yet acknowledged: no new transaction may start."""


class StoreError(TerminalError):
    """The local store cannot do what was asked (a missing intent, a hotlist out of sequence…)."""


@dataclass(frozen=True, slots=True)
class Intent:
    """A purchase stored before its DEBIT: the record as it will be, without TAC or device_seq."""

    intent_id: int
    draft: BatchRecord
    tap_time: datetime
    fare_version: str
    kind: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A spec §5 record on the device, with what the device knows about it."""

    record: BatchRecord
    tap_time: datetime
    fare_version: str
    kind: str
    batch_id: str | None


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A closed batch: its exact bytes and signature, and where its upload stands."""

    batch_id: str
    term_id: str
    created_at: str
    record_count: int
    amount_total: int
    body: bytes | None
    signature: str
    state: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class HotlistEntry:
    """A listed card."""

    card_no: str
    listed_at: str
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """Something the device reports: a refusal, a clock anomaly, an upload problem."""

    event_id: int
    at: str
    kind: str
    card_no: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message still to deliver to the back office (a kiosk's bill payment notice)."""

    item_id: int
    kind: str
    key: str
    body: str
    attempts: int


def record_to_json(record: BatchRecord) -> str:
    """A record as stored (its spec §5 columns as JSON keys)."""
    return json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False)


def record_from_json(text: str) -> BatchRecord:
    """The inverse of :func:`record_to_json`."""
    doc = json.loads(text)
    doc["status"] = RecordStatus(doc["status"])
    return BatchRecord(**doc)


class DeviceStore:
    """The device's SQLite store (see the module docstring)."""

    def __init__(self, path: str | Path, *, capacity: int = 100_000, busy_timeout: float = 10.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = Path(path)
        self.capacity = capacity
        self._db = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_device_seq', '1')")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_batch_no', '1')")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def pragma(self, name: str) -> str:
        """A PRAGMA's value (``journal_mode``, ``synchronous``)."""
        row = self._db.execute(f"PRAGMA {name}").fetchone()
        return str(row[0])

    # --- meta ----------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A stored setting or counter."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @staticmethod
    def _bump_time(db: sqlite3.Connection, when: datetime) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_time'").fetchone()
        if row is None or datetime.fromisoformat(str(row[0])) < when:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_time', ?)", (when.isoformat(),))

    def latest_time(self) -> datetime | None:
        """The latest tap time stored (intent or record): the floor of the device clock after a restart."""
        value = self.meta("last_time")
        return None if value is None else datetime.fromisoformat(value)

    # --- capacity ------------------------------------------------------------------------------------

    def pending_count(self) -> int:
        """Records not yet acknowledged plus open intents."""
        row = self._db.execute("SELECT (SELECT count(*) FROM record) + (SELECT count(*) FROM intent)").fetchone()
        return int(row[0])

    def is_full(self) -> bool:
        """True when no new transaction may start (``pending_count() >= capacity``)."""
        return self.pending_count() >= self.capacity

    # --- intents and records -------------------------------------------------------------------------

    def add_intent(self, draft: BatchRecord, *, tap_time: datetime, fare_version: str, kind: str) -> int:
        """Store a purchase before its DEBIT (spec §2.4 step 3); raise :class:`StorageFull` when there is no room."""
        with self._tx() as db:
            used = db.execute("SELECT (SELECT count(*) FROM record) + (SELECT count(*) FROM intent)").fetchone()
            if int(used[0]) >= self.capacity:
                raise StorageFull(f"the device holds {used[0]} unacknowledged records (capacity {self.capacity})")
            cursor = db.execute(
                "INSERT INTO intent (card_no, card_seq, tap_time, fare_version, kind, draft, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    draft.card_no,
                    draft.card_seq,
                    tap_time.isoformat(),
                    fare_version,
                    kind,
                    record_to_json(draft),
                    tap_time.isoformat(),
                ),
            )
            self._bump_time(db, tap_time)
            intent_id = cursor.lastrowid
        assert intent_id is not None
        return intent_id

    def update_intent(self, intent_id: int, draft: BatchRecord) -> None:
        """Replace an intent's draft (a purchase attempted again after the card proved the first did not happen)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE intent SET draft = ?, card_seq = ? WHERE id = ?",
                (record_to_json(draft), draft.card_seq, intent_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no intent {intent_id}")

    def intents(self, card_no: str | None = None) -> list[Intent]:
        """Open intents (of one card), oldest first."""
        sql = "SELECT id, draft, tap_time, fare_version, kind FROM intent"
        args: tuple[str, ...] = ()
        if card_no is not None:
            sql += " WHERE card_no = ?"
            args = (card_no,)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            Intent(int(r[0]), record_from_json(str(r[1])), datetime.fromisoformat(str(r[2])), str(r[3]), str(r[4]))
            for r in rows
        ]

    def record_intent(self, intent_id: int, record: BatchRecord) -> BatchRecord:
        """Turn an intent into a spec §5 record (one transaction): number it (column 19), store it, forget the intent.

        Returns the record with its ``device_seq``.
        """
        with self._tx() as db:
            row = db.execute("SELECT tap_time, fare_version, kind FROM intent WHERE id = ?", (intent_id,)).fetchone()
            if row is None:
                raise StoreError(f"no intent {intent_id}")
            tap_time = datetime.fromisoformat(str(row[0]))
            numbered = self._insert_record(db, record, tap_time, str(row[1]), str(row[2]))
            db.execute("DELETE FROM intent WHERE id = ?", (intent_id,))
        return numbered

    def _insert_record(
        self, db: sqlite3.Connection, record: BatchRecord, tap_time: datetime, fare_version: str, kind: str
    ) -> BatchRecord:
        seq_row = db.execute("SELECT value FROM meta WHERE key = 'next_device_seq'").fetchone()
        device_seq = int(seq_row[0])
        numbered = replace(record, device_seq=device_seq)
        db.execute(
            "INSERT INTO record (device_seq, card_no, card_seq, txn_type, amount, status, term_id, term_seq,"
            " tap_time, fare_version, kind, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device_seq,
                numbered.card_no,
                numbered.card_seq,
                numbered.txn_type,
                numbered.amount,
                str(numbered.status),
                numbered.term_id,
                numbered.term_seq,
                tap_time.isoformat(),
                fare_version,
                kind,
                record_to_json(numbered),
            ),
        )
        db.execute("UPDATE meta SET value = ? WHERE key = 'next_device_seq'", (str(device_seq + 1),))
        db.execute("INSERT OR REPLACE INTO last_tap VALUES (?, ?, ?)", (numbered.card_no, tap_time.isoformat(), kind))
        self._bump_time(db, tap_time)
        return numbered

    def drop_intent(self, intent_id: int, reason: str, *, at: datetime) -> None:
        """Forget an intent whose DEBIT the card proved did not happen (spec §2.4, proof); the reason is logged."""
        with self._tx() as db:
            row = db.execute("SELECT card_no, draft FROM intent WHERE id = ?", (intent_id,)).fetchone()
            if row is None:
                raise StoreError(f"no intent {intent_id}")
            db.execute("DELETE FROM intent WHERE id = ?", (intent_id,))
            db.execute(
                "INSERT INTO event (at, kind, card_no, detail) VALUES (?, 'intent_dropped', ?, ?)",
                (at.isoformat(), str(row[0]), f"{reason}: {row[1]}"),
            )

    def records(self, *, batch_id: str | None = None, unbatched: bool = False) -> list[StoredRecord]:
        """Spec §5 records still on the device (of one batch, or not yet in a batch), by device_seq."""
        sql = "SELECT body, tap_time, fare_version, kind, batch_id FROM record"
        args: tuple[str, ...] = ()
        if batch_id is not None:
            sql += " WHERE batch_id = ?"
            args = (batch_id,)
        elif unbatched:
            sql += " WHERE batch_id IS NULL"
        rows = self._db.execute(sql + " ORDER BY device_seq", args).fetchall()
        return [
            StoredRecord(
                record_from_json(str(r[0])),
                datetime.fromisoformat(str(r[1])),
                str(r[2]),
                str(r[3]),
                None if r[4] is None else str(r[4]),
            )
            for r in rows
        ]

    def last_tap(self, card_no: str) -> tuple[datetime, str] | None:
        """When this card was last charged (or tapped in) here, and the kind of tap."""
        row = self._db.execute("SELECT tap_time, kind FROM last_tap WHERE card_no = ?", (card_no,)).fetchone()
        return None if row is None else (datetime.fromisoformat(str(row[0])), str(row[1]))

    def forget_taps_before(self, when: datetime) -> int:
        """Drop repeat-tap memory older than ``when``; returns how many were dropped."""
        rows = self._db.execute("SELECT card_no, tap_time FROM last_tap").fetchall()
        old = [str(r[0]) for r in rows if datetime.fromisoformat(str(r[1])) < when]
        if not old:
            return 0
        with self._tx() as db:
            db.executemany("DELETE FROM last_tap WHERE card_no = ?", [(c,) for c in old])
        return len(old)

    # --- hotlist -------------------------------------------------------------------------------------

    def hotlist_version(self) -> str | None:
        """The version of the hotlist held (docs/device-api.md, Hotlist), or None before the first one."""
        return self.meta("hotlist_version")

    def hotlist_entry(self, card_no: str) -> HotlistEntry | None:
        """The hotlist entry of a card, or None when it is not listed."""
        row = self._db.execute(
            "SELECT card_no, listed_at, reason FROM hotlist WHERE card_no = ?", (card_no,)
        ).fetchone()
        return None if row is None else HotlistEntry(str(row[0]), str(row[1]), str(row[2]))

    def hotlist_size(self) -> int:
        """How many cards are listed."""
        return int(self._db.execute("SELECT count(*) FROM hotlist").fetchone()[0])

    def write_hotlist(
        self,
        *,
        version: str,
        full: bool,
        entries: Iterable[HotlistEntry],
        removed: Iterable[str] = (),
        based_on: str | None = None,
    ) -> None:
        """Apply a full list (replacing everything) or a delta from ``based_on``, in one transaction.

        A delta whose base is not the version held raises :class:`StoreError` and changes nothing.
        """
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'hotlist_version'").fetchone()
            held = None if row is None else str(row[0])
            if not full and held != based_on:
                raise StoreError(f"a hotlist delta from version {based_on} does not apply to version {held}")
            if full:
                db.execute("DELETE FROM hotlist")
            db.executemany(
                "INSERT OR REPLACE INTO hotlist VALUES (?, ?, ?)", [(e.card_no, e.listed_at, e.reason) for e in entries]
            )
            db.executemany("DELETE FROM hotlist WHERE card_no = ?", [(card_no,) for card_no in removed])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('hotlist_version', ?)", (version,))

    # --- events --------------------------------------------------------------------------------------

    def add_event(self, kind: str, detail: str, *, at: datetime, card_no: str | None = None) -> None:
        """Log something the device reports (a refusal, a clock anomaly…)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO event (at, kind, card_no, detail) VALUES (?, ?, ?, ?)",
                (at.isoformat(), kind, card_no, detail),
            )

    def events(self, kind: str | None = None) -> list[Event]:
        """Reported events (of one kind), oldest first."""
        sql = "SELECT id, at, kind, card_no, detail FROM event"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [Event(int(r[0]), str(r[1]), str(r[2]), None if r[3] is None else str(r[3]), str(r[4])) for r in rows]

    # --- batches -------------------------------------------------------------------------------------

    def close_batches(
        self,
        *,
        device_id: str,
        operator_id: str,
        created_at: datetime,
        sign: Callable[[bytes], str],
        max_records: int | None = None,
    ) -> list[StoredBatch]:
        """Put the records not yet in a batch into new batches (spec §5), one per term_id, in one transaction.

        Each batch gets a fresh ``batch_id`` (``<device_id>-<YYYYMMDD>-<n>``), its control totals, its
        exact bytes and ``sign(bytes)``; its records are marked with it. Returns the new batches.
        """
        made: list[StoredBatch] = []
        with self._tx() as db:
            rows = db.execute("SELECT body, term_id FROM record WHERE batch_id IS NULL ORDER BY device_seq").fetchall()
            by_term: dict[str, list[BatchRecord]] = {}
            for body, term_id in rows:
                by_term.setdefault(str(term_id), []).append(record_from_json(str(body)))
            for term_id, records in by_term.items():
                chunks = [records] if max_records is None else _chunks(records, max_records)
                for chunk in chunks:
                    number_row = db.execute("SELECT value FROM meta WHERE key = 'next_batch_no'").fetchone()
                    number = int(number_row[0])
                    db.execute("UPDATE meta SET value = ? WHERE key = 'next_batch_no'", (str(number + 1),))
                    batch_id = f"{device_id}-{created_at:%Y%m%d}-{number:06d}"
                    batch = Batch.build(batch_id, device_id, operator_id, term_id, created_at, chunk)
                    body_bytes = batch.encode()
                    signature = sign(body_bytes)
                    db.execute(
                        "INSERT INTO batch (batch_id, term_id, created_at, record_count, amount_total, body,"
                        " signature, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                        (
                            batch_id,
                            term_id,
                            batch.header.created_at,
                            batch.header.record_count,
                            batch.header.amount_total,
                            body_bytes,
                            signature,
                        ),
                    )
                    db.executemany(
                        "UPDATE record SET batch_id = ? WHERE device_seq = ?",
                        [(batch_id, r.device_seq) for r in chunk],
                    )
                    made.append(
                        StoredBatch(
                            batch_id,
                            term_id,
                            batch.header.created_at,
                            batch.header.record_count,
                            batch.header.amount_total,
                            body_bytes,
                            signature,
                            "pending",
                            0,
                            None,
                        )
                    )
        return made

    def unbatched_count(self) -> int:
        """Records not yet in a batch."""
        return int(self._db.execute("SELECT count(*) FROM record WHERE batch_id IS NULL").fetchone()[0])

    def oldest_unbatched_time(self) -> datetime | None:
        """The tap time of the oldest record not yet in a batch."""
        row = self._db.execute("SELECT min(device_seq) FROM record WHERE batch_id IS NULL").fetchone()
        if row is None or row[0] is None:
            return None
        tap = self._db.execute("SELECT tap_time FROM record WHERE device_seq = ?", (row[0],)).fetchone()
        return datetime.fromisoformat(str(tap[0]))

    def batches(self, state: str | None = None) -> list[StoredBatch]:
        """Batches (in one state), oldest first."""
        sql = (
            "SELECT batch_id, term_id, created_at, record_count, amount_total, body, signature, state, attempts,"
            " last_error FROM batch"
        )
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [
            StoredBatch(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                int(r[3]),
                int(r[4]),
                None if r[5] is None else bytes(r[5]),
                str(r[6]),
                str(r[7]),
                int(r[8]),
                None if r[9] is None else str(r[9]),
            )
            for r in rows
        ]

    def batch_attempt_failed(self, batch_id: str, error: str) -> None:
        """Count a failed upload attempt: the batch stays pending and is sent again unchanged (spec §5)."""
        with self._tx() as db:
            db.execute("UPDATE batch SET attempts = attempts + 1, last_error = ? WHERE batch_id = ?", (error, batch_id))

    def batch_acknowledged(self, batch_id: str, *, at: datetime) -> int:
        """Clearing acknowledged the batch (spec §5): drop its records in one transaction; returns how many."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM record WHERE batch_id = ?", (batch_id,))
            db.execute(
                "UPDATE batch SET state = 'acked', attempts = attempts + 1, acked_at = ?, body = NULL,"
                " last_error = NULL WHERE batch_id = ?",
                (at.isoformat(), batch_id),
            )
            return cursor.rowcount

    def batch_stopped(self, batch_id: str, state: str, reason: str, *, at: datetime) -> None:
        """The server refused the batch (``refused``) or holds other bytes under its id (``conflict``): the
        batch and its records stay for inspection and are not sent again automatically."""
        if state not in ("refused", "conflict"):
            raise ValueError(f"not a stopping state: {state}")
        with self._tx() as db:
            db.execute(
                "UPDATE batch SET state = ?, attempts = attempts + 1, last_error = ? WHERE batch_id = ?",
                (state, reason, batch_id),
            )
            db.execute(
                "INSERT INTO event (at, kind, card_no, detail) VALUES (?, ?, NULL, ?)",
                (at.isoformat(), f"batch_{state}", f"{batch_id}: {reason}"),
            )

    # --- outbox --------------------------------------------------------------------------------------

    def add_outbox(self, kind: str, key: str, body: str, *, at: datetime) -> int:
        """Queue a message for the back office."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO outbox (kind, key, body, created_at) VALUES (?, ?, ?, ?)",
                (kind, key, body, at.isoformat()),
            )
            item_id = cursor.lastrowid
        assert item_id is not None
        return item_id

    def outbox(self, kind: str | None = None) -> list[OutboxItem]:
        """Messages still to deliver, oldest first."""
        sql = "SELECT id, kind, key, body, attempts FROM outbox"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows]

    def outbox_done(self, item_id: int) -> None:
        """A message was delivered."""
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def outbox_failed(self, item_id: int, error: str) -> None:
        """A delivery attempt failed; the message stays."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, item_id))


def _chunks(records: list[BatchRecord], size: int) -> list[list[BatchRecord]]:
    if size < 1:
        raise ValueError("max_records must be at least 1")
    return [records[i : i + size] for i in range(0, len(records), size)]
