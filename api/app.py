"""The application factory and the one error handler (every failure has the same body).

Besides the routers (devices, ``/auth``, ``/admin``, ``/counter``, ``/finance``): ``/health`` (liveness),
``/ready`` (database and, when configured, Redis), ``/metrics`` (Prometheus); every response carries
``X-Request-ID``; every error is ``{"error": {"code", "message", "details"}}`` and documented as such.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from api.deps import AppState
from api.observability import RequestContextMiddleware
from api.schemas import Out, error_body, error_responses
from backoffice.errors import OnecardError, RateLimited
from backoffice.settings import Settings

__all__ = ["create_app", "error_body"]

log = logging.getLogger("onecard.api")

DEVICE_ERRORS = (401, 403, 404, 409, 413, 422)
DESCRIPTION = """Citizen one-card system: devices, counters, finance.

* **Devices** (validators, kiosks, counter readers) sign every request with their key (docs/device-api.md).
* **Staff** log in (`POST /auth/login`) and send `Authorization: Bearer <token>` (or the session cookie with
  `X-CSRF-Token` on changes). Each staff operation lists the roles that may call it as `x-roles`.
* Every failure is `{"error": {"code", "message", "details"}}`. Amounts are integer fen.
"""


class HealthOut(Out):
    """Liveness or readiness."""

    status: str


def _retry_after(exc: OnecardError) -> dict[str, str]:
    if isinstance(exc, RateLimited) and "retry_after" in exc.details:
        return {"Retry-After": str(exc.details["retry_after"])}
    return {}


def _request_id_header(request: Request) -> dict[str, str]:
    rid = getattr(request.state, "request_id", None)
    return {"X-Request-ID": rid} if isinstance(rid, str) else {}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: from the environment)."""
    state = AppState.create(settings or Settings.load())
    app = FastAPI(title="onecard", version="1", description=DESCRIPTION)
    app.state.onecard = state

    def count_batches(scope: Scope, status: int) -> None:
        if scope.get("path") == "/devices/batches" and scope.get("method") == "POST":
            state.metrics.batches.labels(str(status)).inc()

    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, on_response=count_batches)

    @app.exception_handler(OnecardError)
    async def onecard_error(request: Request, exc: OnecardError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.http_status, headers=_retry_after(exc)
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        return JSONResponse(error_body("invalid_input", "the request is not valid", {"problems": problems}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": a body that is not JSON is invalid input
            return JSONResponse(error_body("invalid_input", "the request body is not valid JSON"), 422)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "internal error"), status_code=500, headers=_request_id_header(request)
        )

    @app.get("/health", tags=["ops"], response_model=HealthOut)
    def health() -> HealthOut:
        """Liveness."""
        return HealthOut(status="ok")

    @app.get("/ready", tags=["ops"], response_model=HealthOut, responses=error_responses(503))
    def ready() -> HealthOut:
        """Readiness: the database (and Redis, when configured) answers."""
        state.check_database()
        state.check_redis()
        return HealthOut(status="ready")

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    def metrics() -> Response:
        """Prometheus metrics: requests and latencies by route, loads, batches, taps, clearing runs."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    from api import devices

    for router in state.routers():
        extra: dict[int | str, dict[str, Any]] = error_responses(*DEVICE_ERRORS) if router is devices.router else {}
        app.include_router(router, responses=extra)
    setattr(app, "openapi", _with_device_headers(app))  # noqa: B010  (FastAPI's documented way to extend it)
    return app


DEVICE_HEADERS = [
    ("X-Device-Id", "the device id of the registry", {"type": "string", "minLength": 1, "maxLength": 64}),
    ("X-Timestamp", "Unix time in whole seconds", {"type": "string", "pattern": "^[0-9]{1,12}$"}),
    (
        "X-Signature",
        "hex HMAC-SHA256(upload_key, METHOD \\n PATH_AND_QUERY \\n TIMESTAMP \\n hex(SHA-256(body)))",
        {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
    ),
]
BATCH_SIGNATURE = ("X-Batch-Signature", "hex HMAC-SHA256(upload_key, body)", {"type": "string"})


def _with_device_headers(app: FastAPI) -> Any:
    """``app.openapi`` documenting the device authentication headers (docs/device-api.md) on ``/devices``."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = base()
        for path, operations in document.get("paths", {}).items():
            if not path.startswith("/devices/"):
                continue
            for method, operation in operations.items():
                headers = list(DEVICE_HEADERS)
                if path == "/devices/batches" and method == "post":
                    headers.append(BATCH_SIGNATURE)
                documented = [
                    {"name": name, "in": "header", "required": True, "description": text, "schema": schema}
                    for name, text, schema in headers
                ]
                operation["parameters"] = documented + list(operation.get("parameters", []))
        app.openapi_schema = document
        return document

    return openapi
