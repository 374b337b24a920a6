"""``Idempotency-Key`` for money-moving requests (issue #7): the first response is replayed on a retry.

A key belongs to one member of staff. The first request with a key *claims* it (a ``pending`` row: the unique
``(staff_id, idem_key)`` constraint lets exactly one concurrent request in), runs, and stores its status and
body bytes (``done``); every retry with the same request is answered with exactly those bytes, and the same key
with a different request is ``409 idempotency_conflict``. Concurrent retries wait (polling, bounded) for the
first one to finish, then replay it.

The money itself is exactly-once further down: the load's request id is derived from (staff, key), and issuance
records one load per request id. So a claim whose request died (its process crashed) may be taken over after
its lease: the rerun finds the load on record and answers from it, without touching the card again.

The fast path of a first request (the key is not on record) takes no transaction of its own: the caller claims
the key with :func:`claim_in` inside the transaction that records the work (for a load, the authorization: the
claim and the authorization commit together, before anything reaches the card) and stores the response with
:func:`store_in` inside the transaction that records the outcome. When :func:`claim_in` finds the key taken (a
concurrent request with the same key got there first), the caller rolls back and goes through :func:`begin`,
which replays or waits as above.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from api.models import IdempotencyRecord
from backoffice.db import UnitOfWork, run_statement
from backoffice.errors import Conflict

UowFactory = Callable[[], UnitOfWork]
LEASE = timedelta(seconds=120)
"""How long a claim is honoured before a retry may take it over (longer than any load with recovery)."""
WAIT_TIMEOUT = 30.0
"""How long a retry waits for the first request to finish before answering ``409 idempotency_in_progress``."""


_RECORDS = cast(Table, IdempotencyRecord.__table__)
_CLAIM = {
    "postgresql": postgresql.insert(_RECORDS)
    .on_conflict_do_nothing(index_elements=["staff_id", "idem_key"])
    .returning(_RECORDS.c.id),
    "sqlite": sqlite.insert(_RECORDS)
    .on_conflict_do_nothing(index_elements=["staff_id", "idem_key"])
    .returning(_RECORDS.c.id),
}
_STORE = update(_RECORDS).where(
    _RECORDS.c.id == bindparam("k_id"), _RECORDS.c.claim_token == bindparam("k_token"), _RECORDS.c.state == "pending"
)


class KeyTaken(Exception):
    """:func:`claim_in` found the key claimed by another request: roll back and go through :func:`begin`."""


class IdempotencyConflict(Conflict):
    """The key was used for a different request (409)."""

    code = "idempotency_conflict"


class IdempotencyInProgress(Conflict):
    """The first request with this key is still running (409): retry later with the same key."""

    code = "idempotency_in_progress"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response exactly as first sent: status and body bytes (JSON)."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key: run it, then :func:`finish` (or :func:`release` if nothing may be stored)."""

    record_id: int
    token: str


def request_hash(operation: str, request: dict[str, Any]) -> str:
    """SHA-256 of the operation and its canonical JSON request (what "the same request" means)."""
    canonical = json.dumps({"op": operation, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derived_request_id(prefix: str, staff_id: int, key: str) -> str:
    """A stable id for the work behind a key (e.g. issuance's load request id): ``prefix-`` and 32 hex digits
    (128 bits of SHA-256), so that ids stay within the audit log's 40 characters."""
    digest = hashlib.sha256(f"{staff_id}\x00{key}".encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def _now() -> datetime:
    return datetime.now(UTC)


def claim_in(
    conn: Connection,
    staff_id: int,
    key: str,
    operation: str,
    hashed: str,
    *,
    clock: Callable[[], datetime] = _now,
) -> Claim:
    """Claim ``key`` inside the caller's transaction (one ``INSERT … ON CONFLICT DO NOTHING RETURNING``): the
    claim holds once that transaction commits. :class:`KeyTaken` when another request has it (PostgreSQL waits
    for a concurrent claimant's transaction to end first)."""
    token = secrets.token_hex(16)
    rows, _ = run_statement(
        conn,
        _CLAIM[conn.dialect.name],
        {
            "staff_id": staff_id,
            "idem_key": key,
            "operation": operation,
            "request_hash": hashed,
            "state": "pending",
            "claim_token": token,
            "claimed_at": clock(),
        },
    )
    if not rows:
        raise KeyTaken(key)
    return Claim(int(rows[0][0]), token)


def store_in(conn: Connection, claim: Claim, response: StoredResponse, *, clock: Callable[[], datetime] = _now) -> bool:
    """Store the response of a claimed key inside the caller's transaction; ``False`` when the claim is no longer
    this request's (its lease was taken over): then :func:`finish` after the commit tells what retries see."""
    _, count = run_statement(
        conn,
        _STORE,
        {
            "k_id": claim.record_id,
            "k_token": claim.token,
            "state": "done",
            "response_status": response.status,
            "response_body": response.body,
            "completed_at": clock(),
        },
    )
    return count == 1


def key_exists(staff_id: Any, key: Any) -> Any:
    """``EXISTS`` (a SQL expression) of a record for ``key`` of ``staff_id`` (values or bound parameters): to be
    read with other look-ups in one statement."""
    return exists().where(_RECORDS.c.staff_id == staff_id, _RECORDS.c.idem_key == key)


def begin(
    new_uow: UowFactory,
    staff_id: int,
    key: str,
    operation: str,
    hashed: str,
    *,
    wait_timeout: float = WAIT_TIMEOUT,
    lease: timedelta = LEASE,
    clock: Callable[[], datetime] = _now,
) -> StoredResponse | Claim:
    """Claim ``key`` for this request, or the stored response to replay.

    :class:`IdempotencyConflict` when the key was used for another request; :class:`IdempotencyInProgress`
    when the first request is still running after ``wait_timeout`` seconds.
    """
    deadline = time.monotonic() + wait_timeout
    pause = 0.005
    while True:
        with new_uow() as uow:
            session = uow.session
            token = secrets.token_hex(16)
            dialect = session.get_bind().dialect.name
            insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
            claimed = session.execute(
                insert_fn(IdempotencyRecord)
                .values(
                    staff_id=staff_id,
                    idem_key=key,
                    operation=operation,
                    request_hash=hashed,
                    state="pending",
                    claim_token=token,
                    claimed_at=clock(),
                )
                .on_conflict_do_nothing(index_elements=["staff_id", "idem_key"])
                .returning(IdempotencyRecord.id)
            ).scalar_one_or_none()
            if claimed is not None:
                uow.commit()
                return Claim(int(claimed), token)
            # The key is taken (a concurrent claimant's insert has committed by now: PostgreSQL waited for it).
            record = session.scalars(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.staff_id == staff_id, IdempotencyRecord.idem_key == key
                )
            ).one_or_none()
            if record is None:
                continue  # released meanwhile: claim it again
            if record.operation != operation or record.request_hash != hashed:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used for a different request", operation=record.operation
                )
            if record.state == "done" and record.response_status is not None and record.response_body is not None:
                return StoredResponse(record.response_status, record.response_body)
            if clock() - record.claimed_at > lease:
                token = secrets.token_hex(16)
                taken = session.execute(
                    update(IdempotencyRecord)
                    .where(IdempotencyRecord.id == record.id, IdempotencyRecord.claim_token == record.claim_token)
                    .where(IdempotencyRecord.state == "pending")
                    .values(claim_token=token, claimed_at=clock())
                )
                uow.commit()
                if getattr(taken, "rowcount", 0) == 1:
                    return Claim(record.id, token)
                continue
        if time.monotonic() > deadline:
            raise IdempotencyInProgress("the first request with this Idempotency-Key is still running; retry later")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.05)


def finish(
    new_uow: UowFactory, claim: Claim, response: StoredResponse, *, clock: Callable[[], datetime] = _now
) -> StoredResponse:
    """Store the response of a claimed key; returns what retries will see (the taker-over's, if the lease was
    lost meanwhile and it finished first)."""
    with new_uow() as uow:
        stored = uow.session.execute(
            update(IdempotencyRecord)
            .where(
                IdempotencyRecord.id == claim.record_id,
                IdempotencyRecord.claim_token == claim.token,
                IdempotencyRecord.state == "pending",
            )
            .values(state="done", response_status=response.status, response_body=response.body, completed_at=clock())
        )
        uow.commit()
        if getattr(stored, "rowcount", 0) == 1:
            return response
        record = uow.session.get(IdempotencyRecord, claim.record_id)
        if record is not None and record.state == "done" and record.response_status is not None:
            assert record.response_body is not None
            return StoredResponse(record.response_status, record.response_body)
        return response


def release(new_uow: UowFactory, claim: Claim) -> None:
    """Give a claim back without a response (nothing happened that a retry must see): the key is free again."""
    with new_uow() as uow:
        uow.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.id == claim.record_id,
                IdempotencyRecord.claim_token == claim.token,
                IdempotencyRecord.state == "pending",
            )
        )
        uow.commit()
