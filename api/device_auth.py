"""Device request authentication (docs/device-api.md, "Authentication"): an HMAC per request, per device.

``X-Signature`` is ``hex(HMAC-SHA256(upload_key, METHOD "\\n" PATH_AND_QUERY "\\n" TIMESTAMP "\\n"
hex(SHA-256(body))))``. :func:`authenticated_device` is the FastAPI dependency every device endpoint uses: it reads
the raw body (at most :data:`MAX_DEVICE_REQUEST_BYTES`), checks the timestamp window, looks the device up, and
compares signatures in constant time. Unknown device, retired device and wrong signature all answer the same
``401 unauthorized`` (the log line says which); a timestamp outside the window answers ``401 stale_request``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from api.deps import unit_of_work
from backoffice.db import UnitOfWork
from backoffice.errors import OnecardError, Unauthorized
from clearing.registry import REGISTRY_ID, DeviceIdentity, load_device_credentials

log = logging.getLogger("onecard.api.devices")

TIMESTAMP_WINDOW_SECONDS = 300
MAX_DEVICE_REQUEST_BYTES = 16 * 1024 * 1024
UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
SIGNATURE_HEX = re.compile(r"[0-9a-fA-F]{64}")
_NO_KEY = bytes(32)
"""Signs for unknown devices so that every refusal costs the same work."""


class StaleRequest(Unauthorized):
    """``X-Timestamp`` is too far from the server's clock (401)."""

    code = "stale_request"


class PayloadTooLarge(OnecardError):
    """The request body is larger than a device may send (413)."""

    code = "payload_too_large"
    http_status = 413


def current_time() -> datetime:
    """The server's clock (a dependency, so tests can move it)."""
    return datetime.now(UTC)


async def request_body(request: Request) -> bytes:
    """The raw request body, refused (413) beyond :data:`MAX_DEVICE_REQUEST_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DEVICE_REQUEST_BYTES:
        raise PayloadTooLarge(f"a device request body is at most {MAX_DEVICE_REQUEST_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_DEVICE_REQUEST_BYTES:
            raise PayloadTooLarge(f"a device request body is at most {MAX_DEVICE_REQUEST_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def path_and_query(request: Request) -> str:
    """The path as the device sent it (still percent-encoded) and the query string after ``?``, if any."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) and raw_path else request.url.path
    path = path.split("?", 1)[0]
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def signing_input(method: str, path_and_query: str, timestamp: str, body: bytes) -> bytes:
    """``METHOD "\\n" PATH_AND_QUERY "\\n" TIMESTAMP "\\n" hex(SHA-256(body))``, UTF-8."""
    return f"{method.upper()}\n{path_and_query}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def request_signature(upload_key: bytes, method: str, path_and_query: str, timestamp: str, body: bytes) -> str:
    """Lower-case hex ``HMAC-SHA256(upload_key, signing_input(…))``."""
    return hmac.new(upload_key, signing_input(method, path_and_query, timestamp, body), hashlib.sha256).hexdigest()


def authenticated_device(
    request: Request,
    body: Annotated[bytes, Depends(request_body)],
    uow: Annotated[UnitOfWork, Depends(unit_of_work)],
    now: Annotated[datetime, Depends(current_time)],
) -> DeviceIdentity:
    """The device that signed this request (with its operator), or :class:`Unauthorized` / :class:`StaleRequest`."""
    device_id = request.headers.get("x-device-id", "")
    timestamp = request.headers.get("x-timestamp", "")
    signature = request.headers.get("x-signature", "")
    if not (device_id and timestamp and signature):
        raise Unauthorized("X-Device-Id, X-Timestamp and X-Signature are required")
    if not UNIX_SECONDS.fullmatch(timestamp):
        raise Unauthorized("X-Timestamp must be Unix time in whole seconds")
    if abs(int(timestamp) - now.timestamp()) > TIMESTAMP_WINDOW_SECONDS:
        raise StaleRequest(
            f"X-Timestamp is more than {TIMESTAMP_WINDOW_SECONDS} s from the server's clock",
            server_time=int(now.timestamp()),
        )
    credentials = load_device_credentials(uow.session, device_id) if REGISTRY_ID.fullmatch(device_id) else None
    key = credentials.upload_key if credentials is not None else _NO_KEY
    expected = request_signature(key, request.method, path_and_query(request), timestamp, body)
    well_formed = SIGNATURE_HEX.fullmatch(signature) is not None
    signature_ok = hmac.compare_digest(expected, signature.lower() if well_formed else "")
    if credentials is None or not credentials.active or not signature_ok:
        why = "unknown device" if credentials is None else ("retired" if not credentials.active else "bad signature")
        log.warning("device request refused: %s (%r, %s %s)", why, device_id[:40], request.method, request.url.path)
        raise Unauthorized("device authentication failed")
    return credentials.identity
