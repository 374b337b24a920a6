"""The device side of the device API (docs/device-api.md): signed requests, batch upload, hotlist, fares, bills.

- :class:`Transport` is the one HTTP interface: :class:`HttpxTransport` speaks real HTTP with httpx; tests
  pass any object with the same ``send`` (a fake server).
- :class:`DeviceClient` signs every request (``X-Device-Id``, ``X-Timestamp``, ``X-Signature`` =
  HMAC-SHA256 under the device's upload key), reports the server's ``Date`` to the clock guard, and maps
  answers to results and errors.
- :class:`Uploader` closes batches (spec §5: control totals, ``X-Batch-Signature`` = HMAC-SHA256 of the bytes)
  and sends each until acknowledged, always with the same ``batch_id`` and bytes; records stay in the store
  until then.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from terminal.errors import TerminalError
from terminal.fares import FareTable
from terminal.hotlist import HotlistUpdate
from terminal.store import DeviceStore, StoredBatch

log = logging.getLogger("onecard.terminal.uplink")


class UplinkError(TerminalError):
    """The back office could not be reached or did not accept a request."""


class NetworkUnavailable(UplinkError):
    """No answer: connection refused, DNS, timeout. Retry later; never guess."""


class RequestFailed(UplinkError):
    """The server answered with an error (the one error body of docs/device-api.md)."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, object] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        super().__init__(f"HTTP {status} {code}: {message}")

    @property
    def retryable(self) -> bool:
        """True for answers that may change by themselves (server errors, throttling, a stale timestamp)."""
        return self.status >= 500 or self.status == 429 or self.code == "stale_request"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response: status, headers (lower-case names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (``None`` when empty or not JSON)."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Transport(Protocol):
    """Sends one HTTP request of the device API; raises :class:`NetworkUnavailable` when no answer came."""

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        """``path`` includes the query string exactly as signed."""
        ...


class HttpxTransport:
    """:class:`Transport` over httpx (HTTP/1.1, a timeout per request)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def send(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> HttpResponse:
        """Send the request; connection problems and timeouts raise :class:`NetworkUnavailable`."""
        try:
            response = self._client.request(method, self.base_url + path, headers=dict(headers), content=body)
        except httpx.TransportError as exc:
            raise NetworkUnavailable(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        return HttpResponse(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def request_signature(upload_key: bytes, method: str, path_and_query: str, timestamp: str, body: bytes) -> str:
    """``hex(HMAC-SHA256(upload_key, METHOD "\\n" PATH_AND_QUERY "\\n" TIMESTAMP "\\n" hex(SHA-256(body))))``."""
    message = "\n".join((method.upper(), path_and_query, timestamp, hashlib.sha256(body).hexdigest()))
    return hmac.new(upload_key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def batch_signature(upload_key: bytes, body: bytes) -> str:
    """``X-Batch-Signature``: ``hex(HMAC-SHA256(upload_key, body))`` (docs/device-api.md, Batches)."""
    return hmac.new(upload_key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class BatchAck:
    """The clearing service's acknowledgement of a batch."""

    batch_id: str
    status: str
    records: int | None
    amount_total: int | None


@dataclass(frozen=True, slots=True)
class Bill:
    """An open utility bill (docs/device-api.md, Bills)."""

    bill_no: str
    utility: str
    account: str
    period: str
    amount_due: int
    status: str

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Bill:
        """Parse one bill; raise UplinkError when malformed."""
        try:
            amount = doc["amount_due"]
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
                raise ValueError("amount_due must be whole fen")
            return cls(
                bill_no=str(doc["bill_no"]),
                utility=str(doc["utility"]),
                account=str(doc["account"]),
                period=str(doc.get("period", "")),
                amount_due=amount,
                status=str(doc.get("status", "open")),
            )
        except (KeyError, ValueError) as exc:
            raise UplinkError(f"malformed bill: {exc}") from exc


class DeviceClient:
    """Signed requests of one device (docs/device-api.md, Authentication)."""

    def __init__(
        self,
        transport: Transport,
        device_id: str,
        upload_key: bytes,
        *,
        wall: Callable[[], datetime],
        on_server_time: Callable[[datetime, datetime], object] | None = None,
    ) -> None:
        if len(upload_key) != 32:
            raise ValueError("the upload key is 32 bytes")
        self.transport = transport
        self.device_id = device_id
        self._key = upload_key
        self.wall = wall
        self.on_server_time = on_server_time

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send a request signed as docs/device-api.md, Authentication; return a 2xx response or raise
        :class:`RequestFailed` / :class:`NetworkUnavailable`."""
        path_and_query = path + ("?" + urllib.parse.urlencode(query) if query else "")
        timestamp = str(int(self.wall().timestamp()))
        signed = {
            "X-Device-Id": self.device_id,
            "X-Timestamp": timestamp,
            "X-Signature": request_signature(self._key, method, path_and_query, timestamp, body),
            **(headers or {}),
        }
        response = self.transport.send(method, path_and_query, signed, body)
        self._server_time(response)
        if 200 <= response.status < 300:
            return response
        doc = response.json()
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict):
            details = error.get("details")
            raise RequestFailed(
                response.status,
                str(error.get("code", "error")),
                str(error.get("message", "")),
                details if isinstance(details, dict) else None,
            )
        raise RequestFailed(response.status, "http_error", response.body[:200].decode("utf-8", "replace"))

    def _server_time(self, response: HttpResponse) -> None:
        value = response.headers.get("date")
        if value is None or self.on_server_time is None:
            return
        try:
            server = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            log.warning("unparsable Date header %r", value)
            return
        if server.tzinfo is None:
            return
        self.on_server_time(server, self.wall())

    def _json(self, response: HttpResponse) -> dict[str, Any]:
        doc = response.json()
        if not isinstance(doc, dict):
            raise UplinkError(f"the server's answer is not a JSON object (HTTP {response.status})")
        return doc

    # --- batches, hotlist, fares ------------------------------------------------------------------------

    def upload_batch(self, batch_id: str, body: bytes, signature: str) -> BatchAck:
        """``POST /devices/batches``: a spec §5 batch with ``X-Batch-Signature``; ``accepted`` or ``duplicate``."""
        response = self.request(
            "POST",
            "/devices/batches",
            body=body,
            headers={"Content-Type": "text/csv", "X-Batch-Signature": signature},
        )
        doc = self._json(response)
        status = str(doc.get("status", ""))
        if status not in ("accepted", "duplicate"):
            raise UplinkError(f"batch {batch_id}: unexpected status {status!r}")
        records, amount = doc.get("records"), doc.get("amount_total")
        return BatchAck(
            str(doc.get("batch_id", batch_id)),
            status,
            records if isinstance(records, int) else None,
            amount if isinstance(amount, int) else None,
        )

    def hotlist(self, since: str | None) -> HotlistUpdate:
        """``GET /devices/hotlist?since=V`` (docs/device-api.md, Hotlist)."""
        response = self.request("GET", "/devices/hotlist", query={"since": since} if since is not None else None)
        return HotlistUpdate.from_json(self._json(response))

    def fares(self) -> FareTable:
        """``GET /devices/fares``: the operator's fare table in force (format: :mod:`terminal.fares`)."""
        return FareTable.from_json(self._json(self.request("GET", "/devices/fares")))

    # --- bills (kiosks) -------------------------------------------------------------------------------

    def bills(self, utility: str, account: str) -> list[Bill]:
        """``GET /devices/bills?utility=&account=``: the account's open bills."""
        doc = self._json(self.request("GET", "/devices/bills", query={"utility": utility, "account": account}))
        bills = doc.get("bills")
        if not isinstance(bills, list):
            raise UplinkError("the bills answer has no bills list")
        return [Bill.from_json(item) for item in bills if isinstance(item, dict)]

    def hold_bill(self, bill_no: str, amount: int) -> None:
        """``POST /devices/bills/{bill_no}/hold`` with the full amount due."""
        body = json.dumps({"amount": amount}).encode()
        self.request("POST", f"/devices/bills/{_segment(bill_no)}/hold", body=body, headers=_JSON)

    def pay_bill(self, bill_no: str, record: Mapping[str, object]) -> None:
        """``POST /devices/bills/{bill_no}/payment`` with the purchase record (spec §5 columns as keys)."""
        body = json.dumps(dict(record), separators=(",", ":")).encode()
        self.request("POST", f"/devices/bills/{_segment(bill_no)}/payment", body=body, headers=_JSON)

    def release_bill(self, bill_no: str) -> None:
        """``DELETE /devices/bills/{bill_no}/hold``."""
        self.request("DELETE", f"/devices/bills/{_segment(bill_no)}/hold")


_JSON = {"Content-Type": "application/json"}


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --- store and forward -------------------------------------------------------------------------------------


@dataclass
class UploadReport:
    """What one :meth:`Uploader.upload_pending` did."""

    acknowledged: list[BatchAck] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[tuple[str, str]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


@dataclass
class Uploader:
    """Closes batches and sends them until acknowledged (spec §5; docs/device-api.md, Batches).

    Batches go in order; the first that cannot be delivered (no network, server error, stale timestamp) stops
    the round and is retried after a back-off that doubles up to ``retry_max``, with the same bytes. A batch the
    server refuses (``422``) or holds other bytes for (``409``) is kept, reported, and not sent again by itself.
    """

    store: DeviceStore
    client: DeviceClient
    device_id: str
    operator_id: str
    upload_key: bytes
    clock: Callable[[], datetime]
    batch_max_records: int = 500
    batch_max_age: timedelta = timedelta(minutes=15)
    retry_base: float = 2.0
    retry_max: float = 300.0
    monotonic: Callable[[], float] = time.monotonic
    _failures: int = 0
    _next_attempt: float = 0.0

    def close_due_batches(self, *, force: bool = False) -> list[StoredBatch]:
        """Close a batch when ``batch_max_records`` records wait, the oldest waits ``batch_max_age``, or
        ``force``."""
        waiting = self.store.unbatched_count()
        if not waiting:
            return []
        oldest = self.store.oldest_unbatched_time()
        now = self.clock()
        due = force or waiting >= self.batch_max_records
        if oldest is not None and now - oldest >= self.batch_max_age:
            due = True
        if not due:
            return []
        return self.store.close_batches(
            device_id=self.device_id,
            operator_id=self.operator_id,
            created_at=now,
            sign=lambda body: batch_signature(self.upload_key, body),
            max_records=self.batch_max_records,
        )

    def upload_pending(self, *, ignore_backoff: bool = False) -> UploadReport:
        """Send every pending batch (spec §5), oldest first, the same bytes each time, until one cannot be delivered."""
        report = UploadReport()
        if not ignore_backoff and self.monotonic() < self._next_attempt:
            return report
        for batch in self.store.batches("pending"):
            if batch.body is None:
                continue
            try:
                ack = self.client.upload_batch(batch.batch_id, batch.body, batch.signature)
            except NetworkUnavailable as exc:
                self._failed(batch, str(exc), report)
                break
            except RequestFailed as exc:
                if exc.retryable:
                    self._failed(batch, str(exc), report)
                    break
                state = "conflict" if exc.status == 409 else "refused"
                log.error("batch %s %s by the server: %s", batch.batch_id, state, exc)
                self.store.batch_stopped(batch.batch_id, state, str(exc), at=self.clock())
                report.stopped.append((batch.batch_id, str(exc)))
                continue
            except UplinkError as exc:
                self._failed(batch, str(exc), report)
                break
            self.store.batch_acknowledged(batch.batch_id, at=self.clock())
            report.acknowledged.append(ack)
            self._failures = 0
            self._next_attempt = 0.0
        return report

    def _failed(self, batch: StoredBatch, error: str, report: UploadReport) -> None:
        log.warning("batch %s not delivered (will retry): %s", batch.batch_id, error)
        self.store.batch_attempt_failed(batch.batch_id, error)
        report.failed.append((batch.batch_id, error))
        self._failures += 1
        delay = min(self.retry_max, self.retry_base * 2 ** (self._failures - 1))
        self._next_attempt = self.monotonic() + delay

    def tick(self, *, force_close: bool = False) -> UploadReport:
        """Close due batches, then upload what is pending (spec §5)."""
        closed = self.close_due_batches(force=force_close)
        report = self.upload_pending()
        report.closed = [b.batch_id for b in closed]
        return report
