"""What a reader slot needs from a card: the interface simulators and in-process channels drive."""

from __future__ import annotations

from typing import Protocol


class ContactlessCard(Protocol):
    """A card (user card or PSAM) as a reader sees it.

    ``transmit`` may raise :class:`cardos.memory.PowerLoss` when a tear was armed: the card then
    answers nothing and must be powered on again (which runs memory recovery).
    """

    @property
    def atr(self) -> bytes:
        """``3B 88 80 01 ‖ chip serial ‖ TCK`` (spec §0)."""
        ...

    def power_on(self) -> None:
        """Field on / reset: recover memory, clear every volatile state."""
        ...

    def power_off(self) -> None:
        """Field off: volatile state is lost."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """One command APDU in, ``data SW1 SW2`` out."""
        ...
