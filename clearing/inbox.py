"""The batch inbox: batches uploaded by devices, kept as received (spec §5, docs/device-api.md "Batches").

Every upload is kept: its bytes once per SHA-256 (:class:`~clearing.models.BatchContent`), and either one
:class:`~clearing.models.BatchUpload` per accepted ``(device_id, batch_id)`` (re-sends of the same bytes count up
``duplicate_count`` and change nothing else) or a :class:`~clearing.models.BatchRefusal` with its reason. A refused
``batch_id`` may come again corrected; an accepted one with other bytes is a conflict.

The records are not parsed into the ledger here: clearing's ingest reads accepted uploads later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NoReturn

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, InvalidInput, NotFound
from cardos.batch import Batch, BatchFormatError, parse_batch
from clearing.models import BatchContent, BatchRefusal, BatchUpload, Device
from clearing.registry import DeviceIdentity, load_device_credentials

log = logging.getLogger("onecard.clearing.inbox")

BATCH_ID = re.compile(r"[!-~]{1,64}")
"""A batch_id the inbox keeps: 1 to 64 printable ASCII characters without spaces."""
SIGNATURE_HEX = re.compile(r"[0-9a-fA-F]{64}")
MAX_REASON = 500
MAX_KEPT_SIGNATURE = 128


class BatchRefused(InvalidInput):
    """The batch was refused and kept with the reason (422); the device may send it corrected."""

    code = "batch_refused"


class BatchConflict(Conflict):
    """An accepted ``batch_id`` came again with other bytes (409); kept for inspection."""

    code = "conflict"


@dataclass(frozen=True, slots=True)
class BatchReceipt:
    """The answer to an upload that was accepted now or before."""

    batch_id: str
    status: Literal["accepted", "duplicate"]
    records: int
    amount_total: int


@dataclass(frozen=True, slots=True)
class _Refusal:
    outcome: Literal["refused", "conflict"]
    reason: str


def content_sha256(body: bytes) -> str:
    """Lower-case hex SHA-256 of ``body``: the key the inbox keeps bytes under."""
    return hashlib.sha256(body).hexdigest()


def receive_batch(
    uow: UnitOfWork,
    device: DeviceIdentity,
    body: bytes,
    batch_signature: str | None,
    now: datetime | None = None,
) -> BatchReceipt:
    """Receive one batch uploaded by ``device``; commit once.

    Checks, in order: the batch signature (``hex(HMAC-SHA256(upload_key, body))``); an accepted batch with the
    same ``batch_id`` (same bytes: duplicate acknowledgement; other bytes: :class:`BatchConflict`); the format and
    control totals; the header's ``device_id``, ``operator_id`` and ``term_id`` against the device. A refusal is
    kept (reason and bytes) and committed, then raised as :class:`BatchRefused` or :class:`BatchConflict`.

    Two uploads of the same batch at once (possible on SQLite, whose writers the device row lock does not
    serialise) end as one acceptance and one duplicate (or conflict): the loser starts over after the winner.
    """
    at = now or datetime.now(UTC)
    try:
        return _receive(uow, device, body, batch_signature, at)
    except _LostRace:
        uow.session.rollback()
        log.info("batch of %s: accepted concurrently, starting over", device.device_id)
        return _receive(uow, device, body, batch_signature, at)


class _LostRace(Exception):
    """Another transaction accepted the same ``(device_id, batch_id)`` first."""


def _receive(
    uow: UnitOfWork, device: DeviceIdentity, body: bytes, batch_signature: str | None, at: datetime
) -> BatchReceipt:
    session = uow.session
    _lock_device(session, device.device_id)
    sha256 = content_sha256(body)
    claimed_batch_id = _claimed_batch_id(body)

    def refuse(refusal: _Refusal) -> NoReturn:
        _keep_refusal(uow, device, body, sha256, claimed_batch_id, batch_signature, refusal, at)

    verified_signature = _check_signature(session, device, body, batch_signature)
    if isinstance(verified_signature, _Refusal):
        refuse(verified_signature)
    if claimed_batch_id is not None:
        accepted = _accepted_upload(session, device.device_id, claimed_batch_id)
        if accepted is not None and accepted.content_sha256 == sha256:
            accepted.duplicate_count = BatchUpload.duplicate_count + 1  # atomic in SQL
            accepted.last_duplicate_at = at
            uow.commit()
            log.info("batch %s of %s: duplicate", claimed_batch_id, device.device_id)
            return BatchReceipt(accepted.batch_id, "duplicate", accepted.record_count, accepted.amount_total)
        if accepted is not None:
            refuse(_Refusal("conflict", f"batch {claimed_batch_id} was accepted before with other content"))
    batch = _parse_for(device, body)
    if isinstance(batch, _Refusal):
        refuse(batch)
    return _accept(uow, device, batch, body, sha256, verified_signature, at)


def _keep_refusal(
    uow: UnitOfWork,
    device: DeviceIdentity,
    body: bytes,
    sha256: str,
    claimed_batch_id: str | None,
    batch_signature: str | None,
    refusal: _Refusal,
    at: datetime,
) -> NoReturn:
    """Keep the refused bytes with the reason, commit, and raise the refusal."""
    _keep_content(uow.session, sha256, body, at)
    uow.session.add(
        BatchRefusal(
            device_id=device.device_id,
            batch_id=claimed_batch_id,
            content_sha256=sha256,
            batch_signature=batch_signature[:MAX_KEPT_SIGNATURE] if batch_signature else None,
            outcome=refusal.outcome,
            reason=refusal.reason[:MAX_REASON],
            received_at=at,
        )
    )
    uow.commit()
    log.info("batch %s of %s: %s (%s)", claimed_batch_id, device.device_id, refusal.outcome, refusal.reason)
    if refusal.outcome == "conflict":
        raise BatchConflict(refusal.reason, batch_id=claimed_batch_id)
    raise BatchRefused(refusal.reason, batch_id=claimed_batch_id)


def _accept(
    uow: UnitOfWork, device: DeviceIdentity, batch: Batch, body: bytes, sha256: str, batch_signature: str, at: datetime
) -> BatchReceipt:
    """Keep the bytes and the one acceptance row of ``(device_id, batch_id)``; commit."""
    header = batch.header
    _keep_content(uow.session, sha256, body, at)
    uow.session.add(
        BatchUpload(
            device_id=device.device_id,
            batch_id=header.batch_id,
            content_sha256=sha256,
            batch_signature=batch_signature,
            operator_id=header.operator_id,
            term_id=header.term_id,
            batch_created_at=header.created_at,
            record_count=header.record_count,
            amount_total=header.amount_total,
            received_at=at,
            duplicate_count=0,
        )
    )
    try:
        uow.session.flush()
    except IntegrityError:
        raise _LostRace from None
    uow.commit()
    log.info("batch %s of %s: accepted, %d records", header.batch_id, device.device_id, header.record_count)
    return BatchReceipt(header.batch_id, "accepted", header.record_count, header.amount_total)


def _lock_device(session: Session, device_id: str) -> None:
    """Serialise one device's uploads (PostgreSQL row lock; SQLite serialises writers anyway)."""
    locked = session.scalars(select(Device.device_id).where(Device.device_id == device_id).with_for_update()).first()
    if locked is None:
        raise NotFound(f"no device {device_id}")


def _claimed_batch_id(body: bytes) -> str | None:
    """The header's ``batch_id`` if the first line reads as a JSON object with a usable one (best effort)."""
    first_line = body.split(b"\n", 1)[0]
    try:
        header = json.loads(first_line.decode("utf-8").rstrip("\r"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    batch_id = header.get("batch_id") if isinstance(header, dict) else None
    return batch_id if isinstance(batch_id, str) and BATCH_ID.fullmatch(batch_id) else None


def _check_signature(
    session: Session, device: DeviceIdentity, body: bytes, batch_signature: str | None
) -> str | _Refusal:
    """The batch signature, lower-cased, when it verifies; else why not."""
    if not batch_signature:
        return _Refusal("refused", "X-Batch-Signature is missing")
    if not SIGNATURE_HEX.fullmatch(batch_signature):
        return _Refusal("refused", "X-Batch-Signature is not 64 hex digits")
    credentials = load_device_credentials(session, device.device_id)
    if credentials is None:
        raise NotFound(f"no device {device.device_id}")
    expected = hmac.new(credentials.upload_key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, batch_signature.lower()):
        return _Refusal("refused", "the batch signature does not verify")
    return expected


def _accepted_upload(session: Session, device_id: str, batch_id: str) -> BatchUpload | None:
    return session.scalars(
        select(BatchUpload).where(BatchUpload.device_id == device_id, BatchUpload.batch_id == batch_id)
    ).one_or_none()


def _parse_for(device: DeviceIdentity, body: bytes) -> Batch | _Refusal:
    """The batch, or why it is refused: format, control totals, a header that is not the device's own."""
    try:
        batch = parse_batch(body)
    except BatchFormatError as exc:
        return _Refusal("refused", str(exc))
    header = batch.header
    if not BATCH_ID.fullmatch(header.batch_id):
        return _Refusal("refused", "batch_id must be 1 to 64 printable characters without spaces")
    mismatches = [
        f"{name} {value} is not this device's ({own})"
        for name, value, own in (
            ("device_id", header.device_id, device.device_id),
            ("operator_id", header.operator_id, device.operator_id),
            ("term_id", header.term_id, device.term_id),
        )
        if value != own
    ]
    if mismatches:
        return _Refusal("refused", "header: " + "; ".join(mismatches))
    return batch


def _keep_content(session: Session, sha256: str, body: bytes, at: datetime) -> None:
    """Insert the bytes under their hash unless they are there already (race-free on both databases)."""
    values = {"sha256": sha256, "body": body, "size_bytes": len(body), "first_received_at": at}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(BatchContent).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(BatchContent).values(**values).on_conflict_do_nothing())
