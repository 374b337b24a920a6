"""The errors a terminal sees when it talks to a card, whatever the channel (PC/SC or in-process)."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from cardos.sw import SW, describe

if TYPE_CHECKING:
    from cardos.apdu import ResponseAPDU


class TerminalError(Exception):
    """Base of every error raised by the terminal's card channels."""


class CardRemoved(TerminalError):
    """No card, or the card left the field (or stopped answering): the last command's answer is lost."""


class ReaderUnavailable(TerminalError):
    """The reader does not exist, is in exclusive use, or the PC/SC service is not running."""


class WaitTimeout(TerminalError, TimeoutError):
    """A wait for a card's arrival or removal ran out of time."""


class CardStatusError(TerminalError):
    """A command ended in a status word the caller did not accept."""

    def __init__(self, sw: int, command_name: str, data: bytes = b"") -> None:
        self.sw = int(sw)
        self.command_name = command_name
        self.data = data
        super().__init__(f"{command_name}: {describe(self.sw)}")

    @property
    def status(self) -> SW | None:
        """The status word as an :class:`SW` member, or ``None`` (``63Cx``, or one outside the spec)."""
        try:
            return SW(self.sw)
        except ValueError:
            return None


def check_sw(response: ResponseAPDU, command_name: str, accept: Container[int] = (SW.OK,)) -> ResponseAPDU:
    """Return ``response`` if its status word is in ``accept``; raise :class:`CardStatusError` otherwise."""
    if response.sw not in accept:
        raise CardStatusError(response.sw, command_name, response.data)
    return response


class TransactionRefused(TerminalError):
    """The card refused the transaction before any money moved (balance, limit, blocked, expired…)."""

    def __init__(self, reason: str, sw: int | None = None) -> None:
        self.reason = reason
        self.sw = sw
        super().__init__(reason)


class HostRefused(TerminalError):
    """The load host refused (bad MAC1, unknown card, limit, no network…)."""
