"""The one error hierarchy of the back office; the API turns it into responses in one handler.

Every error has a stable ``code`` and the HTTP status it maps to. Messages never contain key material or
unmasked personal data.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OnecardError(Exception):
    """Base of every back-office error."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, **details: Any) -> None:
        self.message = message
        self.details = details
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        """The error body: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(OnecardError):
    """The request is malformed or breaks a rule (422)."""

    code = "invalid_input"
    http_status = 422


class NotFound(OnecardError):
    """No such object, or not the caller's (404)."""

    code = "not_found"
    http_status = 404


class Conflict(OnecardError):
    """The object's state forbids it, or a replay differs from the original (409)."""

    code = "conflict"
    http_status = 409


class Unauthorized(OnecardError):
    """No valid credentials (401)."""

    code = "unauthorized"
    http_status = 401


class Forbidden(OnecardError):
    """The caller's role may not do this (403)."""

    code = "forbidden"
    http_status = 403


class RateLimited(OnecardError):
    """Too many requests (429)."""

    code = "rate_limited"
    http_status = 429


class CardRefused(OnecardError):
    """The card refused the operation; ``sw`` carries its status word (422)."""

    code = "card_refused"
    http_status = 422


class DeviceUnavailable(OnecardError):
    """A reader, card or PSAM could not be reached (503)."""

    code = "device_unavailable"
    http_status = 503


class KeystoreError(OnecardError):
    """The keystore cannot serve the request (500); never says which key bytes."""

    code = "keystore_error"
    http_status = 500


class ReconciliationFailed(OnecardError):
    """A reconciliation check failed: sign-off is blocked (409)."""

    code = "reconciliation_failed"
    http_status = 409
