"""The batch inbox as a service (clearing.inbox.receive_batch), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from integration.api.devicekit import KEYS, batch_bytes, migrate_and_register
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from backoffice.db import Base, UnitOfWork, make_engine, session_factory
from backoffice.errors import NotFound
from clearing.inbox import BatchConflict, BatchRefused, receive_batch
from clearing.models import BatchContent, BatchRefusal, BatchUpload
from clearing.registry import DeviceIdentity, load_device_credentials

AT = datetime(2025, 3, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database holding the tests' registry."""
    migrate_and_register(db_url)
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def _device(sessions: sessionmaker[Session], device_id: str) -> DeviceIdentity:
    with UnitOfWork(sessions) as uow:
        credentials = load_device_credentials(uow.session, device_id)
    assert credentials is not None
    assert KEYS[device_id] not in repr(credentials)
    return credentials.identity


def _signature(device_id: str, body: bytes) -> str:
    return hmac.new(bytes.fromhex(KEYS[device_id]), body, hashlib.sha256).hexdigest()


def _count(sessions: sessionmaker[Session], model: type[Base]) -> int:
    with UnitOfWork(sessions) as uow:
        return int(uow.session.scalar(select(func.count()).select_from(model)) or 0)


def test_inbox_keeps_every_upload(sessions: sessionmaker[Session]) -> None:
    device = _device(sessions, "BUSA-V01")
    raw = batch_bytes("BUSA-V01", "B-1", [200, 100])
    signature = _signature("BUSA-V01", raw).upper()

    with UnitOfWork(sessions) as uow:
        receipt = receive_batch(uow, device, raw, signature, AT)
    assert (receipt.batch_id, receipt.status, receipt.records, receipt.amount_total) == ("B-1", "accepted", 2, 300)
    with UnitOfWork(sessions) as uow:
        [upload] = uow.session.scalars(select(BatchUpload)).all()
        assert upload.batch_signature == signature.lower()
        assert (upload.operator_id, upload.term_id, upload.batch_created_at) == (
            "OP-BUS-A",
            "031000000101",
            "2025-03-01T23:00:00+00:00",
        )
        assert upload.received_at == AT
        assert uow.session.get(BatchContent, hashlib.sha256(raw).hexdigest()) is not None

    with UnitOfWork(sessions) as uow:
        assert receive_batch(uow, device, raw, signature, AT + timedelta(hours=1)).status == "duplicate"

    garbage = b"this is not a batch"
    for _ in range(2):
        with UnitOfWork(sessions) as uow, pytest.raises(BatchRefused, match="JSON header"):
            receive_batch(uow, device, garbage, _signature("BUSA-V01", garbage), AT)
    with UnitOfWork(sessions) as uow, pytest.raises(BatchConflict):
        other = batch_bytes("BUSA-V01", "B-1", [200])
        receive_batch(uow, device, other, _signature("BUSA-V01", other), AT)

    assert _count(sessions, BatchUpload) == 1
    assert _count(sessions, BatchRefusal) == 3
    assert _count(sessions, BatchContent) == 3  # the accepted bytes, the garbage once, the conflicting bytes
    with UnitOfWork(sessions) as uow:
        outcomes = sorted(r.outcome for r in uow.session.scalars(select(BatchRefusal)))
    assert outcomes == ["conflict", "refused", "refused"]


def test_a_device_that_is_not_registered_cannot_deliver(sessions: sessionmaker[Session]) -> None:
    ghost = DeviceIdentity("GHOST-01", "validator", "031000000999", "OP-BUS-A", "bus")
    with UnitOfWork(sessions) as uow, pytest.raises(NotFound):
        receive_batch(uow, ghost, b"x", "0" * 64, AT)
    assert _count(sessions, BatchContent) == 0
