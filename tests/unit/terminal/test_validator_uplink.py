"""Store and forward, hotlist and fares over the device API, against a fake server object (docs/device-api.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from cardos.batch import BatchRecord, RecordStatus, parse_batch
from terminal.clock import ClockGuard
from terminal.fares import FareTable
from terminal.hotlist import HotlistError, HotlistUpdate, refresh_hotlist
from terminal.store import DeviceStore, StorageFull
from terminal.uplink import (
    DeviceClient,
    HttpResponse,
    NetworkUnavailable,
    RequestFailed,
    Uploader,
)
from terminal.validator import CST

DEVICE = "BUSA-V01"
KEY = bytes(range(32))
TERM_ID = "031000000101"
NOW = datetime(2025, 3, 3, 10, 0, tzinfo=CST)
FARES = {"version": "F9", "operator_id": "OP-BUS-A", "lines": {"12": {"kind": "flat", "fare": 200}}}


def _hmac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _error(status: int, code: str, message: str = "") -> HttpResponse:
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    return HttpResponse(status, {}, body)


@dataclass
class FakeServer:
    """The back office's device endpoints, checking what a real server must check; scripted failures."""

    now: datetime = NOW
    keys: dict[str, bytes] = field(default_factory=lambda: {DEVICE: KEY})
    accepted: dict[str, bytes] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    failures: list[str | int] = field(default_factory=list)
    hotlists: dict[int, dict[str, str]] = field(default_factory=dict)
    requests: int = 0

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        self.requests += 1
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "network":
                raise NetworkUnavailable("connection refused")
            assert isinstance(failure, int)
            return self._dated(_error(failure, "unavailable"))
        return self._dated(self._handle(method, path, headers, body))

    def _dated(self, response: HttpResponse) -> HttpResponse:
        return HttpResponse(
            response.status, {**response.headers, "date": format_datetime(self.now, usegmt=False)}, response.body
        )

    def _handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        device = headers.get("X-Device-Id", "")
        key = self.keys.get(device)
        if key is None:
            return _error(401, "unauthorized", "unknown device")
        timestamp = headers.get("X-Timestamp", "")
        if abs(int(timestamp) - self.now.timestamp()) > 300:
            return _error(401, "stale_request", "timestamp too far")
        message = f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        if not hmac.compare_digest(headers.get("X-Signature", ""), _hmac(key, message)):
            return _error(401, "unauthorized", "bad signature")
        url = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if (method, url.path) == ("POST", "/devices/batches"):
            return self._batch(device, key, headers, body)
        if (method, url.path) == ("GET", "/devices/hotlist"):
            return self._hotlist(query.get("since"))
        if (method, url.path) == ("GET", "/devices/fares"):
            return HttpResponse(200, {}, json.dumps(FARES).encode())
        return _error(404, "not_found")

    def _batch(self, device: str, key: bytes, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        self.received.append((json.loads(body.split(b"\n", 1)[0])["batch_id"], body))
        if not hmac.compare_digest(headers.get("X-Batch-Signature", ""), _hmac(key, body)):
            return _error(422, "batch_refused", "bad batch signature")
        try:
            batch = parse_batch(body)
        except ValueError as exc:
            return _error(422, "batch_refused", str(exc))
        header = batch.header
        if header.device_id != device or header.term_id != TERM_ID:
            return _error(422, "batch_refused", "not this device's batch")
        known = self.accepted.get(header.batch_id)
        if known is not None:
            if known != body:
                return _error(409, "conflict", "other bytes under this batch_id")
            return HttpResponse(200, {}, json.dumps({"batch_id": header.batch_id, "status": "duplicate"}).encode())
        self.accepted[header.batch_id] = body
        doc = {"batch_id": header.batch_id, "status": "accepted", "records": header.record_count}
        return HttpResponse(200, {}, json.dumps({**doc, "amount_total": header.amount_total}).encode())

    def _hotlist(self, since: str | None) -> HttpResponse:
        latest = max(self.hotlists)
        current = self.hotlists[latest]
        if since is None or int(since) not in self.hotlists:
            entries = [
                {"card_no": c, "listed_at": "2025-03-01T00:00:00+08:00", "reason": r} for c, r in current.items()
            ]
            return HttpResponse(
                200, {}, json.dumps({"version": latest, "full": True, "entries": entries, "removed": []}).encode()
            )
        old = self.hotlists[int(since)]
        added = [
            {"card_no": c, "listed_at": "2025-03-02T00:00:00+08:00", "reason": r}
            for c, r in current.items()
            if c not in old
        ]
        removed = [c for c in old if c not in current]
        doc = {"version": latest, "full": False, "entries": added, "removed": removed}
        return HttpResponse(200, {}, json.dumps(doc).encode())


def record(device_seq_hint: int, amount: int = 200, card_no: str = "0310000000000001") -> BatchRecord:
    return BatchRecord(
        txn_type="09",
        card_no=card_no,
        card_type="01",
        card_seq=device_seq_hint,
        amount=amount,
        balance_before=5_000,
        term_id=TERM_ID,
        term_seq=device_seq_hint + 1,
        txn_date="20250303",
        txn_time="100000",
        tac="0A0B0C0D",
        alg="00",
        key_ver="01",
        status=RecordStatus.OK,
        line_id="12",
        station_id="1",
        vehicle_id="BUS-0012",
        ref="fares=F1;flat",
    )


def store_records(store: DeviceStore, count: int, amount: int = 200) -> list[BatchRecord]:
    made = []
    for n in range(count):
        intent = store.add_intent(
            record(n, amount), tap_time=NOW + timedelta(seconds=n), fare_version="F1", kind="flat"
        )
        made.append(store.record_intent(intent, record(n, amount)))
    return made


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeviceStore]:
    opened = DeviceStore(tmp_path / "device.db", capacity=100)
    yield opened
    opened.close()


@pytest.fixture
def server() -> FakeServer:
    return FakeServer(hotlists={1: {"0310000000000009": "lost"}})


def client_for(
    server: FakeServer, *, key: bytes = KEY, wall: datetime = NOW, clock: ClockGuard | None = None
) -> DeviceClient:
    return DeviceClient(
        server,
        DEVICE,
        key,
        wall=lambda: wall,
        on_server_time=None if clock is None else clock.observe_server_time,
    )


def uploader_for(store: DeviceStore, server: FakeServer, **kwargs: Any) -> tuple[Uploader, list[float]]:
    mono = [0.0]
    uploader = Uploader(
        store,
        client_for(server),
        DEVICE,
        "OP-BUS-A",
        KEY,
        lambda: NOW,
        monotonic=lambda: mono[0],
        **kwargs,
    )
    return uploader, mono


# --- requests --------------------------------------------------------------------------------------------


def test_requests_are_signed_and_a_wrong_key_is_refused(server: FakeServer) -> None:
    assert client_for(server).fares() == FareTable.from_json(FARES)
    with pytest.raises(RequestFailed) as refused:
        client_for(server, key=bytes(32)).fares()
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (401, "unauthorized", False)


def test_stale_timestamp_is_retryable_and_the_server_date_reports_the_skew(server: FakeServer) -> None:
    clock = ClockGuard(lambda: NOW - timedelta(hours=1), tz=CST)
    with pytest.raises(RequestFailed) as stale:
        client_for(server, wall=NOW - timedelta(hours=1), clock=clock).fares()
    assert stale.value.code == "stale_request" and stale.value.retryable
    assert clock.flags["clock_skew"] == 3600  # measured from the Date header of the refusal
    # the corrected clock now signs requests the server accepts
    corrected = DeviceClient(server, DEVICE, KEY, wall=clock.corrected_wall)
    assert corrected.fares().version == "F9"


# --- batches -----------------------------------------------------------------------------------------------


def test_batch_has_control_totals_and_the_device_signature(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 3, amount=150)
    uploader, _ = uploader_for(store, server)
    [batch] = uploader.close_due_batches(force=True)
    assert batch.body is not None
    parsed = parse_batch(batch.body)
    assert (parsed.header.record_count, parsed.header.amount_total) == (3, 450)
    assert (parsed.header.device_id, parsed.header.operator_id, parsed.header.term_id) == (DEVICE, "OP-BUS-A", TERM_ID)
    assert [r.device_seq for r in parsed.records] == [1, 2, 3]
    assert batch.signature == _hmac(KEY, batch.body)
    assert batch.batch_id == f"{DEVICE}-20250303-000001"


def test_upload_is_retried_with_the_same_batch_until_acknowledged(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 2)
    uploader, mono = uploader_for(store, server, retry_base=10.0)
    server.failures = ["network", 503]
    first = uploader.tick(force_close=True)
    assert first.failed and not first.acknowledged
    assert store.pending_count() == 2  # records stay until acknowledged
    assert uploader.tick().failed == [] and server.requests == 1  # backing off: nothing sent
    mono[0] = 10.0
    assert uploader.tick().failed and server.requests == 2  # the 503
    mono[0] = 100.0
    done = uploader.tick()
    assert [a.status for a in done.acknowledged] == ["accepted"]
    [batch] = store.batches()
    assert batch.state == "acked" and batch.attempts == 3 and batch.body is None
    assert store.records() == [] and store.pending_count() == 0
    # every attempt that reached the server carried the same batch_id and bytes
    assert len({(batch_id, body) for batch_id, body in server.received}) == 1


def test_a_lost_acknowledgement_is_answered_duplicate(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 1)
    uploader, _ = uploader_for(store, server)
    [batch] = uploader.close_due_batches(force=True)
    assert batch.body is not None
    server.accepted[batch.batch_id] = batch.body  # the server took it, but the answer never came back
    report = uploader.upload_pending()
    assert [a.status for a in report.acknowledged] == ["duplicate"] and store.records() == []


def test_refused_batch_is_kept_and_not_resent(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 1)
    uploader = Uploader(store, client_for(server), DEVICE, "OP-BUS-A", bytes(32), lambda: NOW)  # wrong batch key
    report = uploader.tick(force_close=True)
    assert report.stopped and "bad batch signature" in report.stopped[0][1]
    assert store.batches("refused") and len(store.records()) == 1
    assert store.events("batch_refused")
    sent = server.requests
    uploader.tick()
    assert server.requests == sent


def test_conflicting_bytes_under_an_accepted_batch_id(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 1)
    uploader, _ = uploader_for(store, server)
    [batch] = uploader.close_due_batches(force=True)
    server.accepted[batch.batch_id] = b"other bytes"
    report = uploader.upload_pending()
    assert report.stopped and store.batches("conflict")


def test_batches_close_by_size_and_by_age(store: DeviceStore, server: FakeServer) -> None:
    store_records(store, 5)
    uploader, _ = uploader_for(store, server, batch_max_records=2, batch_max_age=timedelta(hours=1))
    closed = uploader.close_due_batches()
    assert [b.record_count for b in closed] == [2, 2, 1]
    store_records(store, 1)
    assert uploader.close_due_batches() == []  # one record, minutes old
    late = Uploader(store, client_for(server), DEVICE, "OP-BUS-A", KEY, lambda: NOW + timedelta(hours=2))
    assert [b.record_count for b in late.close_due_batches()] == [1]


# --- store ----------------------------------------------------------------------------------------------------


def test_device_seq_is_given_at_storage_so_dropped_intents_leave_no_gap(store: DeviceStore) -> None:
    kept = store.add_intent(record(0), tap_time=NOW, fare_version="F1", kind="flat")
    dropped = store.add_intent(record(1), tap_time=NOW, fare_version="F1", kind="flat")
    third = store.add_intent(record(2), tap_time=NOW, fare_version="F1", kind="flat")
    store.drop_intent(dropped, "not charged", at=NOW)
    assert store.record_intent(third, record(2)).device_seq == 1
    assert store.record_intent(kept, record(0)).device_seq == 2


def test_capacity_counts_intents_and_unacknowledged_records(tmp_path: Path) -> None:
    with DeviceStore(tmp_path / "small.db", capacity=2) as small:
        store_records(small, 1)
        small.add_intent(record(1), tap_time=NOW, fare_version="F1", kind="flat")
        assert small.is_full()
        with pytest.raises(StorageFull):
            small.add_intent(record(2), tap_time=NOW, fare_version="F1", kind="flat")


def test_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    with DeviceStore(path) as first:
        store_records(first, 2)
    with DeviceStore(path) as second:
        assert [r.record.device_seq for r in second.records()] == [1, 2]
        assert second.latest_time() == NOW + timedelta(seconds=1)


# --- hotlist ---------------------------------------------------------------------------------------------------


def test_hotlist_full_then_delta(store: DeviceStore, server: FakeServer) -> None:
    client = client_for(server)
    first = refresh_hotlist(store, client)
    assert first.full and store.hotlist_version() == "1"
    assert store.hotlist_entry("0310000000000009") is not None
    server.hotlists[2] = {"0310000000000007": "stolen"}  # 9 found again, 7 stolen
    delta = refresh_hotlist(store, client)
    assert not delta.full and delta.removed == ("0310000000000009",)
    assert store.hotlist_version() == "2" and store.hotlist_size() == 1
    assert store.hotlist_entry("0310000000000009") is None
    entry = store.hotlist_entry("0310000000000007")
    assert entry is not None and entry.reason == "stolen"


def test_hotlist_delta_on_an_unknown_base_falls_back_to_the_full_list(store: DeviceStore, server: FakeServer) -> None:
    server.hotlists[5] = {"0310000000000001": "lost", "0310000000000002": "lost"}
    store.write_hotlist(version="3", full=True, entries=[])  # a version the server no longer has deltas for
    update = refresh_hotlist(store, client_for(server))
    assert update.full and store.hotlist_version() == "5" and store.hotlist_size() == 2


def test_malformed_hotlists_are_refused() -> None:
    with pytest.raises(HotlistError):
        HotlistUpdate.from_json({"version": 1, "full": True, "entries": [{"card_no": "123"}]})
    with pytest.raises(HotlistError):
        HotlistUpdate.from_json({"version": 1, "full": True, "entries": [], "removed": ["0310000000000001"]})
    with pytest.raises(HotlistError):
        HotlistUpdate.from_json({"full": False, "entries": []})
