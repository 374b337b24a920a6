"""Schemas every staff router shares: the one error body, strict input bases, field patterns, documented errors.

Inputs are explicit (``extra="forbid"``: an unknown field is refused, so nothing can be mass-assigned), strict
(no ``"100"`` for 100) and bounded (every integer and string has limits the database can hold). Free text
refuses control characters. Amounts are integer fen.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


# --- counter request bodies: card maintenance, cancellation, unconfirmed loads, transfers (issue #7) ----------------

DeskField = Annotated[str, Field(pattern=DESK_ID, max_length=32, description="your desk, whose reader holds the card")]
"""A ``desk_id`` in a request body: one's own desk (another desk is ``403``)."""
PHONE = r"^[0-9]{11}$"


class BlockIn(In):
    """Block the purse of the card in your desk's reader (APPLICATION BLOCK with line MAC): temporarily
    (``blocked``; a supervisor lifts it) or, with ``permanent``, for good (``locked``, and hotlisted)."""

    desk_id: DeskField
    permanent: bool = False


class UnblockIn(In):
    """Lift the temporary block of the card in your desk's reader (APPLICATION UNBLOCK with line MAC)."""

    desk_id: DeskField


class CancelIn(In):
    """Cancel a card; with ``desk_id`` the card in your desk's reader is blocked as a whole first (CARD BLOCK)."""

    desk_id: Annotated[str | None, Field(pattern=DESK_ID, max_length=32)] = None


class CardholderChangeIn(In):
    """New holder data for the card in your desk's reader; fields left out stay as they are (at least one).
    A new name or phone is written to the card too (UPDATE BINARY with line MAC)."""

    desk_id: DeskField
    name: Annotated[str | None, Field(min_length=1, max_length=20, pattern=SAFE_TEXT)] = None
    phone: Annotated[str | None, Field(pattern=PHONE)] = None
    address: Annotated[str | None, Field(min_length=1, max_length=200, pattern=SAFE_TEXT)] = None

    @model_validator(mode="after")
    def _something_changes(self) -> Self:
        if self.name is None and self.phone is None and self.address is None:
            raise ValueError("give at least one of name, phone, address")
        return self


class LoadResolutionIn(In):
    """Settle the card's ``unconfirmed`` loads with the card in your desk's reader (GET TRANSACTION PROOF)."""

    desk_id: DeskField


class TransferCollectionIn(In):
    """Load a replacement's ready balance transfer onto the new card in your desk's reader."""

    desk_id: DeskField
