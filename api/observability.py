"""Request ids, structured logs and Prometheus metrics (issue #7).

:class:`RequestContextMiddleware` (plain ASGI, cheap) gives every request an id (``X-Request-ID`` from the
client when it is 1 to 64 visible characters, else a new one), echoes it in the response, makes it the
``request_id`` of every log line written while the request runs, times the request into the metrics and writes
one access-log line. :class:`JsonLogFormatter` writes JSON lines; :func:`configure_logging` installs it (the
``serve`` command calls it; tests keep pytest's logging).

:class:`ApiMetrics` holds one Prometheus registry per application instance: requests and latencies by route
template, counter loads by outcome, device batches by outcome; and, read from the database at scrape time, the
batches and taps (validator and gate purchase records) received and the clearing runs by stage. Request metrics
are per process (each uvicorn worker serves its own ``/metrics``); the database figures are global.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("onecard_request_id", default=None)
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")
access_log = logging.getLogger("onecard.api.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def current_request_id() -> str | None:
    """The id of the request being served (``None`` outside requests)."""
    return request_id_var.get()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, process id, and the record's extras."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Send every ``onecard`` and uvicorn log line to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line carries the request id


class ApiMetrics:
    """The application's Prometheus registry and instruments."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "onecard_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "onecard_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "onecard_counter_loads", "Counter loads answered, by outcome", ["outcome"], registry=self.registry
        )
        self.batches = Counter(
            "onecard_device_batches",
            "Device batch uploads answered, by HTTP status",
            ["status"],
            registry=self.registry,
        )
        self.clearing_runs = Counter(
            "onecard_clearing_runs_requested", "Clearing runs requested through the API", registry=self.registry
        )
        if engine is not None:
            self.registry.register(DatabaseCollector(engine))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class DatabaseCollector(Collector):
    """Figures read from the database at scrape time (all workers together): batches and taps received, clearing
    runs by stage. Each figure is read on its own connection; one that cannot be read (a partial schema) is left
    out, never failing the scrape."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        """Nothing up front (the figures may be missing on a partial schema)."""
        return []

    def _rows(self, sql: str) -> list[Any] | None:
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(text(sql)).all())
        except Exception:
            return None

    def collect(self) -> Iterable[Metric]:
        """Accepted batches and their records by device kind (taps: validator and gate records); runs by stage."""
        families: list[Metric] = []
        uploads = self._rows(
            "SELECT d.kind, count(b.id), coalesce(sum(b.record_count), 0) FROM batch_upload b "
            "JOIN device d ON d.device_id = b.device_id GROUP BY d.kind"
        )
        if uploads is not None:
            batches = GaugeMetricFamily("onecard_batches_accepted", "Accepted device batches", labels=["device_kind"])
            records = GaugeMetricFamily(
                "onecard_batch_records_accepted", "Records in accepted batches", labels=["device_kind"]
            )
            taps = 0
            for kind, count, total in uploads:
                batches.add_metric([str(kind)], float(count))
                records.add_metric([str(kind)], float(total))
                if kind in ("validator", "gate"):
                    taps += int(total)
            tap_family = GaugeMetricFamily("onecard_taps_received", "Validator and gate purchase records received")
            tap_family.add_metric([], float(taps))
            families += [batches, records, tap_family]
        runs = self._rows("SELECT stage, count(*) FROM clearing_run GROUP BY stage")
        if runs is not None:
            by_stage = GaugeMetricFamily("onecard_clearing_runs", "Clearing runs by stage", labels=["stage"])
            for stage, count in runs:
                by_stage.add_metric([str(stage)], float(count))
            families.append(by_stage)
        return families


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestContextMiddleware:
    """Request id, metrics and the access-log line for every HTTP request (plain ASGI)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, on_response: Callable[[Scope, int], None] | None = None):
        self.app = app
        self.metrics = metrics
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                presented = value.decode("latin-1")
                break
        rid = presented if presented is not None and REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            if self.on_response is not None:
                self.on_response(scope, status)
            principal = scope.get("state", {}).get("principal")
            access_log.info(
                "%s %s %s",
                method,
                scope.get("path", ""),
                status,
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "staff": getattr(principal, "username", None),
                },
            )
            request_id_var.reset(token)
