"""An in-process card field: cards presented to a terminal one after another, without PC/SC.

Implements :class:`~terminal.purse.CardSource` for unit tests and the embedded demo.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from cardos.interface import ContactlessCard
from terminal.channel import Channel, InProcessChannel
from terminal.errors import WaitTimeout


class InProcessField:
    """Cards queued to enter the field; each :meth:`wait_for_card` takes the next one."""

    def __init__(self, cards: Iterable[ContactlessCard] = ()) -> None:
        self._queue: collections.deque[ContactlessCard] = collections.deque(cards)

    def present(self, card: ContactlessCard) -> None:
        """Queue a card to enter the field."""
        self._queue.append(card)

    def wait_for_card(self, timeout: float) -> Channel:
        """The next queued card, powered on; :class:`WaitTimeout` when none is queued."""
        if not self._queue:
            raise WaitTimeout("no card presented")
        return InProcessChannel(self._queue.popleft())

    def wait_for_removal(self, channel: Channel, timeout: float) -> None:
        """The card leaves at once."""
        channel.close()
