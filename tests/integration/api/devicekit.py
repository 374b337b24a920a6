"""The tests' small city (registry, keys), device clients that sign like docs/device-api.md, batch builders.

The signing here is written from the document, not taken from ``api.device_auth``, so the tests check the
contract the device side implements.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select

from api.app import create_app
from api.device_auth import current_time
from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from backoffice.settings import Settings
from cardos.batch import Batch, BatchRecord, RecordStatus
from clearing.registry import import_registry, parse_registry_file

KEYS = {
    "BUSA-V01": "11" * 32,
    "BUSA-V02": "22" * 32,
    "BUSA-V09": "99" * 32,
    "KIOSK-01": "33" * 32,
    "KIOSK-02": "44" * 32,
    "WATER-K01": "55" * 32,
    "COUNTER-01": "66" * 32,
}
TERM_IDS = {
    "BUSA-V01": "031000000101",
    "BUSA-V02": "031000000102",
    "BUSA-V09": "031000000109",
    "KIOSK-01": "031000000201",
    "KIOSK-02": "031000000202",
    "WATER-K01": "031000000301",
    "COUNTER-01": "031000009001",
}
OPERATOR_OF = {
    "BUSA-V01": "OP-BUS-A",
    "BUSA-V02": "OP-BUS-A",
    "BUSA-V09": "OP-BUS-A",
    "KIOSK-01": "OP-ISSUER",
    "KIOSK-02": "OP-ISSUER",
    "WATER-K01": "OP-WATER",
    "COUNTER-01": "OP-ISSUER",
}
KIND_OF = {
    "BUSA-V01": "validator",
    "BUSA-V02": "validator",
    "BUSA-V09": "validator",
    "KIOSK-01": "kiosk",
    "KIOSK-02": "kiosk",
    "WATER-K01": "kiosk",
    "COUNTER-01": "counter",
}


def registry_document() -> dict[str, Any]:
    """The registry file of the tests' small city."""
    return {
        "format": "onecard-registry/1",
        "operators": [
            {"operator_id": "OP-BUS-A", "name": "Bus company A", "kind": "bus",
             "fee": {"percent": "1.5", "per_txn": 0, "from": "2025-01-01"}},
            {"operator_id": "OP-WATER", "name": "Water company", "kind": "utility",
             "fee": {"percent": "0.5", "per_txn": 10, "from": "2025-01-01"}},
            {"operator_id": "OP-GAS", "name": "Gas company", "kind": "utility"},
            {"operator_id": "OP-ISSUER", "name": "Card issuer", "kind": "issuer"},
        ],
        "devices": [
            {"device_id": device_id, "operator_id": OPERATOR_OF[device_id], "kind": KIND_OF[device_id],
             "term_id": TERM_IDS[device_id], "upload_key": key,
             **({"status": "retired"} if device_id == "BUSA-V09" else {})}
            for device_id, key in KEYS.items()
        ],
    }  # fmt: skip


T = TypeVar("T")


class Clock:
    """The server's clock for a test: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    """The app over a migrated database with the small registry."""

    db_url: str
    app: FastAPI
    client: TestClient
    clock: Clock

    def uow(self) -> UnitOfWork:
        """A unit of work on the test database (the caller enters it)."""
        return UnitOfWork(self.app.state.onecard.sessions)

    def rows(self, model: type[T]) -> list[T]:
        """Every row of a table, loaded and detached (in primary-key order)."""
        with self.uow() as uow:
            found = list(uow.session.scalars(select(model).order_by(*inspect(model).primary_key)))
            uow.session.expunge_all()
        return found

    def device(self, device_id: str, key_hex: str | None = None) -> DeviceClient:
        """A client that signs as ``device_id`` (with its registry key unless another is given)."""
        return DeviceClient(self, device_id, key_hex or KEYS[device_id])


def sign(key_hex: str, method: str, path_and_query: str, timestamp: str, body: bytes) -> str:
    """docs/device-api.md: hex(HMAC-SHA256(key, METHOD \\n PATH_AND_QUERY \\n TIMESTAMP \\n hex(SHA-256(body))))."""
    message = "\n".join([method, path_and_query, timestamp, hashlib.sha256(body).hexdigest()]).encode()
    return hmac.new(bytes.fromhex(key_hex), message, hashlib.sha256).hexdigest()


@dataclass
class DeviceClient:
    """Signed requests of one device."""

    world: World
    device_id: str
    key_hex: str

    def request(
        self,
        method: str,
        path_and_query: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timestamp: str | None = None,
        sign_body: bytes | None = None,
    ) -> httpx.Response:
        """Send a signed request; ``sign_body`` signs other bytes than those sent (tampering)."""
        stamp = timestamp if timestamp is not None else str(int(self.world.clock.now.timestamp()))
        signed = sign(self.key_hex, method, path_and_query, stamp, body if sign_body is None else sign_body)
        all_headers = {"X-Device-Id": self.device_id, "X-Timestamp": stamp, "X-Signature": signed}
        all_headers.update(headers or {})
        return self.world.client.request(method, path_and_query, content=body, headers=all_headers)

    def get(self, path_and_query: str) -> httpx.Response:
        """A signed GET."""
        return self.request("GET", path_and_query)

    def post_json(self, path: str, doc: Any) -> httpx.Response:
        """A signed POST of a JSON document."""
        body = json.dumps(doc).encode()
        return self.request("POST", path, body, headers={"Content-Type": "application/json"})

    def upload(self, batch: bytes, *, batch_signature: str | None = None) -> httpx.Response:
        """``POST /devices/batches`` with the batch signed by this device's key (unless given)."""
        signature = batch_signature
        if signature is None:
            signature = hmac.new(bytes.fromhex(self.key_hex), batch, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "text/csv", "X-Batch-Signature": signature}
        return self.request("POST", "/devices/batches", batch, headers=headers)


def purchase(
    seq: int,
    amount: int,
    *,
    term_id: str = "031000000101",
    card_no: str = "0310000000000001",
    ref: str = "",
    status: RecordStatus = RecordStatus.OK,
    txn_type: str = "09",
) -> BatchRecord:
    """A purchase record of spec §5."""
    return BatchRecord(
        txn_type=txn_type, card_no=card_no, card_type="01", card_seq=seq, amount=amount,
        balance_before=100_000 - seq * amount, term_id=term_id, term_seq=1000 + seq, txn_date="20250301",
        txn_time="080000", tac="" if status is RecordStatus.UNCONFIRMED else "A1B2C3D4", alg="00", key_ver="01",
        status=status, line_id="12", ref=ref, device_seq=seq,
    )  # fmt: skip


def batch_bytes(device_id: str, batch_id: str, amounts: list[int], **header: str) -> bytes:
    """An encoded batch of ``device_id`` with one purchase per amount; header fields can be overridden."""
    term_id = header.get("term_id", TERM_IDS[device_id])
    records = [purchase(i + 1, amount, term_id=term_id) for i, amount in enumerate(amounts)]
    batch = Batch.build(
        batch_id=batch_id,
        device_id=header.get("device_id", device_id),
        operator_id=header.get("operator_id", OPERATOR_OF[device_id]),
        term_id=term_id,
        created_at=datetime(2025, 3, 1, 23, 0, tzinfo=UTC),
        records=records,
    )
    return batch.encode()


def migrate_and_register(db_url: str) -> None:
    """The clearing schema and the small registry in the database at ``db_url``."""
    upgrade(db_url, "clearing@head")
    engine = make_engine(db_url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            import_registry(uow, parse_registry_file(json.dumps(registry_document()).encode()))
    finally:
        engine.dispose()


def open_world(db_url: str) -> tuple[World, TestClient]:
    """The app over ``db_url`` with a movable clock (enter the returned client)."""
    app = create_app(Settings(database_url=db_url))
    clock = Clock()
    app.dependency_overrides[current_time] = lambda: clock.now
    client = TestClient(app)
    return World(db_url, app, client, clock), client
