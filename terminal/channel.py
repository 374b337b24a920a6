"""One interface for sending APDUs to a card: :class:`Channel`, over PC/SC or in-process.

Every channel answers ``61xx`` with GET RESPONSE (``00 C0 00 00 xx``, data concatenated) and ``6Cxx`` by
sending the command again with ``Le = xx``, and traces every exchange in hex on the ``onecard.apdu`` logger at
DEBUG level. The data of commands carrying keys, cryptograms or PINs is never logged (:func:`redact`).
Failures below the card (no card, card gone, reader gone) surface as :mod:`terminal.errors` types.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.interface import ContactlessCard
from cardos.memory import PowerLoss
from terminal.errors import CardRemoved, ReaderUnavailable, TerminalError

apdu_log = logging.getLogger("onecard.apdu")

MAX_GET_RESPONSE = 64
"""The longest ``61xx`` chain a channel follows before giving up."""

NOOP_COMMAND = CommandAPDU(0x00, 0x00, 0x00, 0x00)
"""A command every card rejects (``6D00``, instruction not supported) without touching its memory."""


class Channel(Protocol):
    """A session with one card in one reader."""

    @property
    def atr(self) -> bytes:
        """The card's answer to reset."""
        ...

    def transmit(self, cmd: CommandAPDU) -> ResponseAPDU:
        """Send one command and return its complete response (``61xx`` and ``6Cxx`` already handled).

        Raises :class:`~terminal.errors.CardRemoved` when the card is gone or the answer was lost, and
        :class:`~terminal.errors.ReaderUnavailable` when the reader or the PC/SC service is.
        """
        ...

    def close(self) -> None:
        """End the session (idempotent)."""
        ...


# --- naming and redaction --------------------------------------------------------------------------------

_NAMES: dict[tuple[int, int], str] = {
    (0x00, 0xA4): "SELECT",
    (0x00, 0xB0): "READ BINARY",
    (0x00, 0xB2): "READ RECORD",
    (0x04, 0xD6): "UPDATE BINARY",
    (0x00, 0x84): "GET CHALLENGE",
    (0x00, 0x20): "VERIFY",
    (0x00, 0x82): "EXTERNAL AUTHENTICATE",
    (0x00, 0xC0): "GET RESPONSE",
    (0x80, 0x5C): "GET BALANCE",
    (0x80, 0x52): "CREDIT FOR LOAD",
    (0x80, 0xDC): "UPDATE CAPP DATA CACHE",
    (0x80, 0x54): "DEBIT FOR PURCHASE",
    (0x80, 0x5A): "GET TRANSACTION PROOF",
    (0x84, 0x1E): "APPLICATION BLOCK",
    (0x84, 0x18): "APPLICATION UNBLOCK",
    (0x84, 0x16): "CARD BLOCK",
    (0x80, 0xD6): "WRITE DATA",
    (0x80, 0xD8): "INIT PURSE",
    (0x80, 0xE8): "FINISH",
    (0x80, 0x70): "INIT SAM FOR PURCHASE",
    (0x80, 0x72): "CREDIT SAM FOR PURCHASE",
}
_BY_P1: dict[tuple[int, int], dict[int, str]] = {
    (0x80, 0x50): {
        0x00: "INITIALIZE FOR LOAD",
        0x01: "INITIALIZE FOR PURCHASE",
        0x03: "INITIALIZE FOR CAPP PURCHASE",
    },
    (0x80, 0x5E): {0x00: "RELOAD PIN", 0x01: "CHANGE PIN"},
    (0x80, 0xE0): {0x01: "CREATE DF", 0x02: "CREATE EF"},
}


def command_name(cmd: CommandAPDU) -> str:
    """The spec's name of a command (``SELECT``, ``DEBIT FOR PURCHASE``…), or ``CLA xx INS yy``."""
    key = (cmd.cla, cmd.ins)
    if key == (0x80, 0xD4):
        return "PUT PIN" if cmd.p1 == 0x20 else "PUT KEY"
    by_p1 = _BY_P1.get(key)
    if by_p1 is not None and cmd.p1 in by_p1:
        return by_p1[cmd.p1]
    name = _NAMES.get(key)
    return name if name is not None else f"CLA {cmd.cla:02X} INS {cmd.ins:02X}"


def is_secret(cmd: CommandAPDU) -> bool:
    """True when the command's data must not be logged: PUT KEY / PUT PIN (``80 D4``), EXTERNAL
    AUTHENTICATE (INS ``82``), and the PIN commands VERIFY (``00 20``) and CHANGE / RELOAD PIN (``80 5E``)."""
    proprietary = cmd.cla & 0xF0 == 0x80
    return (
        cmd.ins == 0x82
        or (proprietary and cmd.ins == 0xD4)
        or (proprietary and cmd.ins == 0x5E)
        or (cmd.cla & 0xF0 == 0x00 and cmd.ins == 0x20)
    )


def redact(cmd: CommandAPDU) -> str:
    """The command in hex for a log, its data replaced by ``<n bytes redacted>`` when :func:`is_secret`."""
    if not cmd.data or not is_secret(cmd):
        return cmd.to_bytes().hex().upper()
    header = bytes((cmd.cla, cmd.ins, cmd.p1, cmd.p2, len(cmd.data))).hex().upper()
    trailer = f" {cmd.le & 0xFF:02X}" if cmd.le is not None else ""
    return f"{header} <{len(cmd.data)} bytes redacted>{trailer}"


# --- the shared transmit logic ---------------------------------------------------------------------------


class BaseChannel(ABC):
    """Chaining (``61xx``, ``6Cxx``), tracing and life cycle shared by every channel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = False

    @property
    @abstractmethod
    def atr(self) -> bytes:
        """The card's answer to reset."""

    @abstractmethod
    def transmit_raw(self, apdu: bytes) -> bytes:
        """Exchange raw bytes with the card, no chaining and no tracing; at least ``SW1 SW2`` comes back."""

    @abstractmethod
    def _release(self) -> None:
        """Release what the channel holds (called once by :meth:`close`)."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def transmit(self, cmd: CommandAPDU) -> ResponseAPDU:
        """Send ``cmd`` and return its whole response (see :class:`Channel`)."""
        if self._closed:
            raise CardRemoved(f"{self.name}: the channel is closed")
        response = self._exchange(cmd)
        if response.sw >> 8 == 0x6C:
            response = self._exchange(dataclasses.replace(cmd, le=(response.sw & 0xFF) or 256))
        if response.sw >> 8 != 0x61:
            return response
        data = bytearray()
        for _ in range(MAX_GET_RESPONSE):
            data += response.data
            response = self._exchange(CommandAPDU(0x00, 0xC0, 0x00, 0x00, le=(response.sw & 0xFF) or 256))
            if response.sw >> 8 != 0x61:
                return ResponseAPDU(bytes(data) + response.data, response.sw)
        raise TerminalError(f"{self.name}: {command_name(cmd)}: more than {MAX_GET_RESPONSE} GET RESPONSE")

    def _exchange(self, cmd: CommandAPDU) -> ResponseAPDU:
        tracing = apdu_log.isEnabledFor(logging.DEBUG)
        if tracing:
            apdu_log.debug("%s > %s  %s", self.name, redact(cmd), command_name(cmd))
        started = time.perf_counter()
        try:
            raw = self.transmit_raw(cmd.to_bytes())
        except TerminalError as exc:
            if tracing:
                apdu_log.debug("%s ! %s", self.name, exc)
            raise
        if tracing:
            elapsed = (time.perf_counter() - started) * 1000
            apdu_log.debug("%s < %s  (%.2f ms)", self.name, raw.hex().upper(), elapsed)
        if len(raw) < 2:
            raise CardRemoved(f"{self.name}: {command_name(cmd)}: no answer from the card")
        return ResponseAPDU.parse(raw)

    def close(self) -> None:
        """End the session; later transmits raise :class:`CardRemoved`."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- in-process ------------------------------------------------------------------------------------------


class InProcessChannel(BaseChannel):
    """A card object driven directly: for unit tests and the embedded demo.

    The card is powered on when the channel opens (it enters the field) and off when it closes. A
    :class:`~cardos.memory.PowerLoss` inside the card (an armed tear) closes the channel and raises
    :class:`CardRemoved`, as a card leaving a real reader's field would.
    """

    def __init__(self, card: ContactlessCard, *, name: str = "in-process", power_on: bool = True) -> None:
        super().__init__(name)
        self.card = card
        self._powered = False
        if power_on:
            try:
                card.power_on()
            except PowerLoss as exc:
                self._closed = True
                raise CardRemoved(f"{name}: power lost during power-on") from exc
            self._powered = True

    @property
    def atr(self) -> bytes:
        """The card's ATR."""
        return self.card.atr

    def transmit_raw(self, apdu: bytes) -> bytes:
        """Hand the bytes to the card."""
        if self._closed:
            raise CardRemoved(f"{self.name}: the channel is closed")
        try:
            return bytes(self.card.transmit(apdu))
        except PowerLoss as exc:
            self._powered = False  # the card already lost power: no power_off
            self.close()
            raise CardRemoved(f"{self.name}: the card lost power ({exc})") from exc

    def _release(self) -> None:
        if self._powered:
            self._powered = False
            self.card.power_off()


# --- PC/SC -----------------------------------------------------------------------------------------------


@functools.cache
def scard_api() -> Any:
    """pyscard's PC/SC binding, imported on first use (it loads libpcsclite)."""
    from smartcard import scard

    return scard


def _u32(value: int) -> int:
    return int(value) & 0xFFFFFFFF


def pcsc_error(hresult: int, action: str, reader: str) -> TerminalError:
    """Translate a failed PC/SC call into the terminal's error types."""
    s = scard_api()
    code = _u32(hresult)
    removed = {
        _u32(c)
        for c in (
            s.SCARD_W_REMOVED_CARD,
            s.SCARD_E_NO_SMARTCARD,
            s.SCARD_W_RESET_CARD,
            s.SCARD_W_UNPOWERED_CARD,
            s.SCARD_W_UNRESPONSIVE_CARD,
            s.SCARD_E_NOT_TRANSACTED,
            s.SCARD_F_COMM_ERROR,
        )
    }
    unavailable = {
        _u32(c)
        for c in (
            s.SCARD_E_UNKNOWN_READER,
            s.SCARD_E_READER_UNAVAILABLE,
            s.SCARD_E_NO_READERS_AVAILABLE,
            s.SCARD_E_NO_SERVICE,
            s.SCARD_E_SERVICE_STOPPED,
            s.SCARD_E_SHARING_VIOLATION,
            s.SCARD_E_INVALID_HANDLE,
        )
    }
    try:
        text = str(s.SCardGetErrorMessage(hresult))
    except Exception:
        text = "PC/SC error"
    message = f"{reader}: {action}: {text} (0x{code:08X})"
    if code in removed:
        return CardRemoved(message)
    if code in unavailable:
        return ReaderUnavailable(message)
    return TerminalError(message)


def _pyscard_failure(exc: Exception, action: str, reader: str) -> TerminalError:
    hresult = getattr(exc, "hresult", None)
    if isinstance(hresult, int) and hresult != 0:
        return pcsc_error(hresult, action, reader)
    return TerminalError(f"{reader}: {action}: {exc}")


class PcscChannel(BaseChannel):
    """A card in a PC/SC reader, through pyscard.

    Connects in shared mode with T=1 (any protocol if the card refuses T=1). ``disposition`` is what
    :meth:`close` does to the card: ``unpower`` (default: the card leaves a tap terminal's field),
    ``reset`` or ``leave``.
    """

    def __init__(self, reader: str, *, disposition: str = "unpower") -> None:
        super().__init__(reader)
        s = scard_api()
        dispositions = {
            "unpower": s.SCARD_UNPOWER_CARD,
            "reset": s.SCARD_RESET_CARD,
            "leave": s.SCARD_LEAVE_CARD,
        }
        if disposition not in dispositions:
            raise ValueError(f"unknown disposition {disposition!r}")
        self.reader = reader
        self._disposition = dispositions[disposition]
        self._context: Any = None
        self._card: Any = None
        self._atr = b""
        self.protocol = 0
        """The PC/SC protocol in use (``SCARD_PROTOCOL_T1`` = 2)."""
        self.event_count = 0
        """pcsc-lite's count of card insertions and removals in this reader when the channel opened."""
        try:
            self._connect(s)
        except TerminalError:
            self._closed = True
            self._release()
            raise
        except Exception as exc:
            self._closed = True
            self._release()
            raise _pyscard_failure(exc, "connect", reader) from exc

    def _connect(self, s: Any) -> None:
        hresult, context = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "establish a PC/SC context", self.reader)
        self._context = context
        hresult, state = s.SCardGetStatusChange(context, 0, [(self.reader, s.SCARD_STATE_UNAWARE)])
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "read the reader state", self.reader)
        self.event_count = (_u32(state[0][1]) >> 16) & 0xFFFF
        hresult, card, protocol = s.SCardConnect(context, self.reader, s.SCARD_SHARE_SHARED, s.SCARD_PROTOCOL_T1)
        if _u32(hresult) == _u32(s.SCARD_E_PROTO_MISMATCH):
            hresult, card, protocol = s.SCardConnect(
                context, self.reader, s.SCARD_SHARE_SHARED, s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1
            )
        if hresult != s.SCARD_S_SUCCESS:
            raise pcsc_error(hresult, "connect", self.reader)
        self._card = card
        self.protocol = int(protocol)
        result = s.SCardStatus(card)
        if result[0] != s.SCARD_S_SUCCESS:
            raise pcsc_error(result[0], "read the ATR", self.reader)
        self._atr = bytes(result[4])

    @property
    def atr(self) -> bytes:
        """The ATR pcscd read when the card was powered."""
        return self._atr

    def transmit_raw(self, apdu: bytes) -> bytes:
        """One ``SCardTransmit``; an empty answer (the card left mid-command) raises :class:`CardRemoved`."""
        if self._closed:
            raise CardRemoved(f"{self.reader}: the channel is closed")
        s = scard_api()
        try:
            hresult, response = s.SCardTransmit(self._card, self.protocol, list(apdu))
        except Exception as exc:
            raise _pyscard_failure(exc, "transmit", self.reader) from exc
        if hresult != s.SCARD_S_SUCCESS:
            error = pcsc_error(hresult, "transmit", self.reader)
            if isinstance(error, CardRemoved):
                self._card_gone()
            raise error
        raw = bytes(response)
        if len(raw) < 2:
            self._card_gone()
            raise CardRemoved(f"{self.reader}: the card left the field before answering")
        return raw

    def _card_gone(self) -> None:
        """The card left: release the handle and the context now (nothing to power off)."""
        self._disposition = scard_api().SCARD_LEAVE_CARD
        self.close()

    def _release(self) -> None:
        s = scard_api()
        if self._card is not None:
            try:
                s.SCardDisconnect(self._card, self._disposition)
            except Exception:
                apdu_log.debug("%s: SCardDisconnect failed", self.reader, exc_info=True)
            self._card = None
        if self._context is not None:
            try:
                s.SCardReleaseContext(self._context)
            except Exception:
                apdu_log.debug("%s: SCardReleaseContext failed", self.reader, exc_info=True)
            self._context = None


# --- benchmark baseline ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    """Timings (seconds) of repeated exchanges of one command."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median round trip in seconds."""
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        """Mean round trip in seconds."""
        return statistics.fmean(self.samples)

    @property
    def p95(self) -> float:
        """95th percentile in seconds."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    def as_dict(self) -> dict[str, float | int]:
        """Figures in milliseconds, for JSON output."""
        return {
            "n": len(self.samples),
            "median_ms": self.median * 1000,
            "mean_ms": self.mean * 1000,
            "p95_ms": self.p95 * 1000,
            "min_ms": min(self.samples) * 1000,
            "max_ms": max(self.samples) * 1000,
        }


def measure_round_trip(
    reader: str, n: int = 200, *, command: CommandAPDU = NOOP_COMMAND, warmup: int = 10
) -> RoundTrip:
    """Time ``n`` raw PC/SC exchanges of a no-op command with the card in ``reader`` (the baseline of the
    tap benchmark): one ``SCardTransmit`` each, no chaining and no tracing, after ``warmup`` untimed ones."""
    if n < 1:
        raise ValueError("n must be at least 1")
    raw = command.to_bytes()
    samples: list[float] = []
    with PcscChannel(reader, disposition="leave") as channel:
        for _ in range(warmup):
            channel.transmit_raw(raw)
        clock = time.perf_counter
        for _ in range(n):
            started = clock()
            channel.transmit_raw(raw)
            samples.append(clock() - started)
    return RoundTrip(tuple(samples))
