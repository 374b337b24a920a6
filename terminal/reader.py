"""Card arrival and removal in a PC/SC reader named by the caller.

Built on pyscard's ``SCardGetStatusChange``, the blocking PC/SC event wait that ``smartcard.CardRequest``
and ``smartcard.CardMonitoring`` poll in their own threads: used directly, one call waits for one event in
one reader without a helper thread, and exposes pcsc-lite's per-reader event counter (the high 16 bits of
the event state, incremented at every insertion and removal). The counter tells a new card from the one
already seen even when the first left and the second arrived between two waits.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from terminal.channel import Channel, PcscChannel, pcsc_error, scard_api
from terminal.errors import CardRemoved, ReaderUnavailable, WaitTimeout

_PRESENT = 0x0020
_MUTE = 0x0200
_UNKNOWN = 0x0004
_RETRY = 0.1


def event_count(state: int) -> int:
    """pcsc-lite's insertion/removal counter in a reader event state."""
    return (int(state) >> 16) & 0xFFFF


class _Watch:
    """A PC/SC context watching one reader."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        s = scard_api()
        hresult, context = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "establish a PC/SC context", reader)
        self._context: Any = context

    def state(self, known: int | None, timeout: float) -> int:
        """The reader's event state once it differs from ``known`` (at once if None), or ``known`` after
        ``timeout`` seconds."""
        s = scard_api()
        current = s.SCARD_STATE_UNAWARE if known is None else known & ~s.SCARD_STATE_CHANGED
        millis = max(0, int(timeout * 1000))
        hresult, states = s.SCardGetStatusChange(self._context, millis, [(self.reader, current)])
        if known is not None and hresult == s.SCARD_E_TIMEOUT:
            return known
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "wait for a card event", self.reader)
        event = int(states[0][1]) & 0xFFFFFFFF
        if event & _UNKNOWN:
            raise ReaderUnavailable(f"{self.reader}: no such reader")
        return event

    def close(self) -> None:
        s = scard_api()
        if self._context is not None:
            s.SCardReleaseContext(self._context)
            self._context = None

    def __enter__(self) -> _Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def list_readers() -> list[str]:
    """The names of the PC/SC readers pcscd knows (empty when there is none)."""
    s = scard_api()
    hresult, context = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
    if hresult != s.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, "establish a PC/SC context", "PC/SC")
    try:
        hresult, readers = s.SCardListReaders(context, [])
        if hresult == s.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "list readers", "PC/SC")
        return [str(r) for r in readers]
    finally:
        s.SCardReleaseContext(context)


def card_present(reader_name: str) -> bool:
    """True when a card is in the reader now."""
    with _Watch(reader_name) as watch:
        return bool(watch.state(None, 0) & _PRESENT)


def wait_for_card(
    reader_name: str, timeout: float, *, new_only: bool = False, disposition: str = "unpower"
) -> PcscChannel:
    """Wait up to ``timeout`` seconds for a card in ``reader_name`` and open a channel to it.

    A card already present is taken unless ``new_only``, which waits for one inserted after the call.
    Raises :class:`WaitTimeout` when no card came, :class:`ReaderUnavailable` when the reader is missing.
    """
    deadline = time.monotonic() + timeout
    with _Watch(reader_name) as watch:
        state = watch.state(None, 0)
        start = event_count(state)
        while True:
            usable = state & _PRESENT and not state & _MUTE
            if usable and (not new_only or event_count(state) != start):
                try:
                    return PcscChannel(reader_name, disposition=disposition)
                except CardRemoved:
                    pass  # gone again, or not powered yet: look again shortly
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(_RETRY, remaining))
                state = watch.state(None, 0)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            state = watch.state(state, remaining)
    raise WaitTimeout(f"{reader_name}: no card within {timeout:g} s")


def wait_for_removal(reader_name: str, timeout: float, *, since: int | PcscChannel | None = None) -> None:
    """Wait up to ``timeout`` seconds until the card leaves ``reader_name``.

    ``since`` (an event count, or the :class:`PcscChannel` whose card is meant) also ends the wait when
    that card left and another is already in the reader. Raises :class:`WaitTimeout`.
    """
    known = since.event_count if isinstance(since, PcscChannel) else since
    deadline = time.monotonic() + timeout
    with _Watch(reader_name) as watch:
        state = watch.state(None, 0)
        while True:
            if not state & _PRESENT:
                return
            if known is not None and event_count(state) != known:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            state = watch.state(state, remaining)
    raise WaitTimeout(f"{reader_name}: the card is still there after {timeout:g} s")


class PcscCardSource:
    """Cards arriving in one PC/SC reader: a :class:`terminal.purse.CardSource` for real readers (the
    PC/SC counterpart of :class:`terminal.field.InProcessField`)."""

    def __init__(self, reader_name: str, *, disposition: str = "unpower") -> None:
        self.reader_name = reader_name
        self.disposition = disposition

    def wait_for_card(self, timeout: float) -> PcscChannel:
        """A channel to the next card in the reader (one already there counts); :class:`WaitTimeout`."""
        return wait_for_card(self.reader_name, timeout, disposition=self.disposition)

    def wait_for_removal(self, channel: Channel, timeout: float) -> None:
        """Release the card (close ``channel``) and wait until it has left the reader."""
        since = channel.event_count if isinstance(channel, PcscChannel) else None
        channel.close()
        wait_for_removal(self.reader_name, timeout, since=since)
