"""``Idempotency-Key`` for money-moving requests (issue #7): the first response is replayed on a retry.

A key belongs to one member of staff. The first request with a key *claims* it (a ``pending`` row: the unique
``(staff_id, idem_key)`` constraint lets exactly one concurrent request in), runs, and stores its status and
body bytes (``done``); every retry with the same request is answered with exactly those bytes, and the same key
with a different request is ``409 idempotency_conflict``. Concurrent retries wait (polling, bounded) for the
first one to finish, then replay it.

The money itself is exactly-once further down: the load's request id is derived from (staff, key), and issuance
records one load per request id. So a claim whose request died (its process crashed) may be taken over after
its lease: the rerun finds the load on record and answers from it, without touching the card again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from api.models import IdempotencyRecord
from backoffice.db import UnitOfWork
from backoffice.errors import Conflict

UowFactory = Callable[[], UnitOfWork]
LEASE = timedelta(seconds=120)
"""How long a claim is honoured before a retry may take it over (longer than any load with recovery)."""
WAIT_TIMEOUT = 30.0
"""How long a retry waits for the first request to finish before answering ``409 idempotency_in_progress``."""


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
