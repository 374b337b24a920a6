"""Schemas every staff router shares: the one error body, strict input bases, field patterns, documented errors.

Inputs are explicit (``extra="forbid"``: an unknown field is refused, so nothing can be mass-assigned), strict
(no ``"100"`` for 100) and bounded (every integer and string has limits the database can hold). Free text
refuses control characters. Amounts are integer fen.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SAFE_TEXT = r"^[^\x00-\x1f\x7f]*$"
"""Printable text: no control characters (NUL never reaches the database)."""
DESK_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
CARD_NO = r"^[0-9]{16}$"
USERNAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ID_NUMBER = r"^[0-9]{17}[0-9Xx]$"
PIN = r"^[0-9]{4,12}$"
TERM_ID = r"^[0-9]{12}$"
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,128}$"
MAX_ID = 2**63 - 1
MAX_LOAD_FEN = 500_000
"""A registered card holds at most 5,000 yuan: no single load can be larger."""


class In(BaseModel):
    """Base of every request body: unknown fields refused, no coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Out(BaseModel):
    """Base of every response body."""

    model_config = ConfigDict(frozen=True)


class ErrorDetail(Out):
    """What went wrong: a stable ``code``, a message for people, and machine-readable ``details``."""

    code: str = Field(description="stable error code, e.g. not_found, forbidden, invalid_input, conflict")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(Out):
    """The one error body: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Not logged in, or the session is expired or revoked (`unauthorized`)",
    403: "The caller's role or desk may not do this (`forbidden`)",
    404: "No such object (`not_found`)",
    409: "The object's state forbids it, or a replay differs (`conflict` and its refinements)",
    413: "The request body is too large",
    422: "The request is not valid (`invalid_input`) or the card refused (`card_refused`)",
    429: "Too many requests (`rate_limited`); see `Retry-After`",
    500: "A stored document no longer matches its checksum (`report_changed`)",
    501: "Not built or not set up here (`not_built`: e.g. clearing's schema is not in this database)",
    503: "A dependency (database, keystore, desk reader) is unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries with the error body for each status."""
    return {status: {"model": ErrorOut, "description": _DESCRIPTIONS.get(status, "Error")} for status in statuses}


STAFF_ERRORS = (401, 403, 422, 429)
"""What any authenticated staff endpoint may answer besides its success (429: log-in and money limits)."""


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """``{"error": {"code", "message", "details"}}``: the one error format."""
    return {"error": {"code": code, "message": message, "details": details or {}}}
