"""Status words (spec §4) and the one card-error type that carries them."""

from __future__ import annotations

from enum import IntEnum


class SW(IntEnum):
    """Every status word the card OS may send (spec §4); no other is ever sent."""

    OK = 0x9000
    APP_BLOCKED_TEMP = 0x6283
    AUTH_FAILED = 0x6300
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    SECURITY_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    NO_CHALLENGE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    LINE_MAC_WRONG = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    WRONG_P1P2 = 0x6A86
    WRONG_OFFSET = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    MAC_WRONG = 0x9302
    APP_LOCKED = 0x9303
    INSUFFICIENT_BALANCE = 0x9401
    COUNTER_AT_MAXIMUM = 0x9402
    KEY_NOT_SUPPORTED = 0x9403
    NO_SUCH_TRANSACTION = 0x9406

    @staticmethod
    def wrong_pin(tries_left: int) -> int:
        """``63Cx``: wrong PIN with x tries left (spec §4)."""
        return 0x63C0 | (tries_left & 0x0F)

    @staticmethod
    def is_known(sw: int) -> bool:
        """True for a status word the spec allows (the table of §4, ``63Cx`` included)."""
        return sw in SW._value2member_map_ or (sw & 0xFFF0) == 0x63C0


class CardError(Exception):
    """A command that ends in a status word other than ``9000`` (spec §4).

    ``data`` is sent before the status word (``6283`` carries the FCI).
    """

    def __init__(self, sw: int, message: str = "", data: bytes = b"") -> None:
        self.sw = int(sw)
        self.data = data
        super().__init__(message or describe(self.sw))


def describe(sw: int) -> str:
    """A short English description of a status word."""
    if (sw & 0xFFF0) == 0x63C0:
        return f"wrong PIN, {sw & 0x0F} tries left"
    try:
        name = SW(sw).name
    except ValueError:
        return f"status {sw:04X}"
    return f"{sw:04X} {name.lower().replace('_', ' ')}"
