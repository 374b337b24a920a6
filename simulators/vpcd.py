"""Serve a simulated contactless card in a vsmartcard ``vpcd`` reader slot.

The vpcd driver, loaded by pcscd, listens on TCP port ``35963 + slot`` for reader ``Virtual PCD 00 0<slot>``;
the virtual card is the TCP *client*. Every message in both directions is a 2-byte big-endian length and a
payload. A 1-byte payload from the driver is a control: ``00`` power off, ``01`` power on, ``02`` reset,
``04`` get ATR (answered with the ATR; the driver also uses it to poll for the card's presence). Any longer
payload is a command APDU, answered with ``data SW1 SW2``. Closing the connection is the card leaving the
field: pcscd notices it at its next poll (or at once, if a command was in flight).

:class:`VpcdSlot` inserts, removes and taps cards, and tears them in three ways (:class:`TearMode`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from cardos.interface import ContactlessCard
from cardos.memory import Memory, PowerLoss

log = logging.getLogger("onecard.vpcd")

VPCD_BASE_PORT = 35963
"""The vpcd driver's port for slot 0; slot N listens on ``VPCD_BASE_PORT + N``."""

CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04

_SW_WRONG_LENGTH = bytes.fromhex("6700")
_SW_NO_DIAGNOSIS = bytes.fromhex("6F00")

Done = Callable[[ContactlessCard], bool]
"""A tap's end condition, asked (on the serving thread) after every answered command."""

CommandFilter = Callable[[bytes], bool]
"""Chooses the command a tear applies to."""


def vpcd_port(slot: int) -> int:
    """The TCP port of vpcd slot ``slot``."""
    if not 0 <= slot <= 15:
        raise ValueError(f"vpcd slot out of range: {slot}")
    return VPCD_BASE_PORT + slot


def vpcd_reader_name(slot: int) -> str:
    """The PC/SC reader name pcscd gives vpcd slot ``slot`` (``Virtual PCD 00 00`` for slot 0)."""
    vpcd_port(slot)
    return f"Virtual PCD 00 {slot:02d}"


class VpcdUnavailable(ConnectionError):
    """Nothing listens on the vpcd port: pcscd is not running or has no vpcd driver."""


class TearMode(enum.Enum):
    """How a tear takes the card out of the field during a command."""

    BEFORE_COMMAND = "before-command"
    """(a) The card leaves before the command reaches it: nothing is processed."""
    DROP_ANSWER = "drop-answer"
    """(b) The card processes the command (its commit happens), then leaves before answering."""
    AT_WRITE = "at-write"
    """(c) Power fails before the k-th physical memory write inside the command (``memory.arm_tear(k)``)."""


@dataclass(eq=False)
class Tear:
    """An armed tear: it applies to the next command (that ``when`` accepts), then records what happened."""

    mode: TearMode
    write_index: int | None = None
    when: CommandFilter | None = None
    command: bytes | None = None
    """The command the tear applied to."""
    response: bytes | None = None
    """:attr:`TearMode.DROP_ANSWER`: the answer the card computed and the terminal never got."""
    fired: bool = False
    """True when the card left the field; false for an ``AT_WRITE`` tear whose command made fewer writes."""
    error: str | None = None
    """Why the tear could not be applied (it is then not fired and the command is answered normally)."""
    _applied: threading.Event = field(default_factory=threading.Event, init=False, repr=False, compare=False)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tear met its command; True if it did within ``timeout`` seconds."""
        return self._applied.wait(timeout)

    @property
    def applied(self) -> bool:
        """True once the tear met its command (fired or not)."""
        return self._applied.is_set()


@dataclass(frozen=True)
class TapResult:
    """What happened during one card's stay in the field."""

    card: ContactlessCard
    commands: int
    """Command APDUs the card received."""
    reason: str
    """Why it left: ``done`` (callback), ``power-off`` (the terminal released it), ``idle``, ``timeout``,
    or ``dropped`` (the connection ended on the reader side, or a tear)."""
    seconds: float


class _Session:
    """One stay of one card in the slot: its socket, serving thread and what the terminal did.

    Every card call and every answer happens with ``lock`` held, so that :meth:`VpcdSlot.remove` takes
    the card out between two commands, never inside one.
    """

    def __init__(
        self,
        card: ContactlessCard,
        sock: socket.socket,
        image: str | os.PathLike[str] | None,
        done_callback: Done | None,
    ) -> None:
        self.card = card
        self.sock = sock
        self.image = image
        self.done_callback = done_callback
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.inserted_at = time.monotonic()
        self.powered = False
        self.commands = 0
        self.last_activity = self.inserted_at
        self.released = False
        """The terminal powered the card off after at least one command."""
        self.done = False
        """The tap's done callback said so."""
        self.left = False
        """The card is out of the field (the slot no longer calls it)."""
        self.unanswered = False
        """The card left with a message of the driver unanswered (a tear)."""
        self.after_leaving: int | None = None
        """The first message the driver sent after the card left: -1 for a command APDU, else the control."""
        self.closed = False
        """The driver has noticed the card's absence and the connection is closed."""


_port_lock = threading.Lock()
_port_ready_at: dict[tuple[str, int], float] = {}
"""When the next card may connect to a vpcd port, shared by every slot object of this process."""


class VpcdSlot:
    """One vpcd reader slot, seen from the card's side.

    ``insert`` connects a card to the driver and serves it on a background thread until ``remove`` (or
    until the reader side closes the connection). Every card call runs on that serving thread. When a card
    was inserted with an ``image`` path, its ``memory`` (a :class:`cardos.memory.Memory`) is saved to that
    file whenever it is dirty after a message.

    pcscd sees a card leave only when a presence poll (every 0.4 s) finds the slot empty. When the driver
    notices the absence inside a command instead (a tear, or a removal racing a command), its next poll
    would accept the next card's connection at once and pcscd would miss both the removal and the
    insertion; so the next card then connects only ``poll_gap`` seconds later.
    """

    def __init__(
        self,
        slot: int = 0,
        host: str = "127.0.0.1",
        *,
        port: int | None = None,
        connect_timeout: float = 10.0,
        poll_gap: float = 0.6,
    ) -> None:
        self.slot = slot
        self.host = host
        self.port = vpcd_port(slot) if port is None else port
        self.connect_timeout = connect_timeout
        self.poll_gap = poll_gap
        self._cond = threading.Condition()
        self._session: _Session | None = None
        self._tear: Tear | None = None

    # --- public API --------------------------------------------------------------------------------

    @property
    def reader_name(self) -> str:
        """The PC/SC name of this slot's reader."""
        return vpcd_reader_name(self.slot)

    @property
    def card(self) -> ContactlessCard | None:
        """The card in the field, if any."""
        with self._cond:
            session = self._session
            return session.card if session is not None and not session.left else None

    @property
    def commands(self) -> int:
        """Command APDUs received by the card last inserted (0 when there was none)."""
        with self._cond:
            return self._session.commands if self._session is not None else 0

    def insert(
        self,
        card: ContactlessCard,
        *,
        image: str | os.PathLike[str] | None = None,
        done: Done | None = None,
    ) -> None:
        """Bring ``card`` into the field: connect to the driver and serve it on a background thread.

        ``image``: save ``card.memory`` there whenever it changed. ``done``: asked after every answered
        command; once it returns True :meth:`wait_finished` returns. Waits for the previous card's exit to
        be seen by the driver first. Raises :class:`VpcdUnavailable` when the driver cannot be reached
        within ``connect_timeout``.
        """
        with self._cond:
            previous = self._session
            if previous is not None and not previous.left:
                raise RuntimeError(f"{self.reader_name}: a card is already in the slot")
        if previous is not None:
            self._join(previous)
        self._wait_port_ready()
        sock = self._connect()
        session = _Session(card, sock, image, done)
        thread = threading.Thread(target=self._serve, args=(session,), name=f"vpcd-slot{self.slot}", daemon=True)
        session.thread = thread
        with self._cond:
            self._session = session
        thread.start()

    def remove(self) -> None:
        """Take the card out of the field, between two commands; the card is powered off at once."""
        with self._cond:
            session = self._session
        if session is None:
            return
        with session.lock:
            if not session.left:
                self._leave(session, unanswered=False)

    def wait_removed(self, timeout: float | None = None) -> bool:
        """Wait until the card is out of the field (removed, torn, or dropped by the reader)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._session is not None and not self._session.left:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_finished(self, timeout: float = 30.0, *, idle: float | None = None) -> str:
        """Wait until the terminal is done with the card in the field; returns why (see :class:`TapResult`).

        Finished means: the ``done`` callback said so, or the terminal powered the card off after at least
        one command, or (with ``idle``) no command came for ``idle`` seconds after the last one, or the
        card left. ``timeout`` bounds the whole stay (``timeout`` is then returned).
        """
        with self._cond:
            session = self._session
            if session is None:
                return "dropped"
            deadline = session.inserted_at + timeout
            while True:
                now = time.monotonic()
                if session.done:
                    return "done"
                if session.released:
                    return "power-off"
                if session.left:
                    return "dropped"
                wake = deadline
                if idle is not None and session.commands:
                    idle_end = session.last_activity + idle
                    if now >= idle_end:
                        return "idle"
                    wake = min(wake, idle_end)
                if now >= deadline:
                    return "timeout"
                self._cond.wait(wake - now)

    def tap(
        self,
        cards: Iterable[ContactlessCard],
        *,
        done: Done | None = None,
        idle: float | None = None,
        dwell: float = 30.0,
        gap: float = 0.0,
        images: Iterable[str | os.PathLike[str] | None] | None = None,
    ) -> list[TapResult]:
        """Tap each card in turn: insert it, wait until the terminal is finished with it, remove it.

        ``done``, ``idle`` and ``dwell`` (the longest stay) are as in :meth:`wait_finished`; ``gap`` is a
        pause between a removal and the next insertion; ``images`` gives each card's image path.
        """
        results: list[TapResult] = []
        image_iter = iter(images) if images is not None else None
        for index, card in enumerate(cards):
            if index and gap > 0:
                time.sleep(gap)
            image = next(image_iter, None) if image_iter is not None else None
            self.insert(card, image=image, done=done)
            started = time.monotonic()
            reason = self.wait_finished(dwell, idle=idle)
            commands = self.commands
            self.remove()
            results.append(TapResult(card, commands, reason, time.monotonic() - started))
            log.debug("%s: tap %d: %s after %d commands", self.reader_name, index + 1, reason, commands)
        return results

    def tear(
        self,
        mode: TearMode,
        *,
        write_index: int | None = None,
        when: CommandFilter | None = None,
    ) -> Tear:
        """Arm a tear for the next command APDU (the next one ``when`` accepts) of the card in the slot.

        ``write_index`` (1-based) is required for :attr:`TearMode.AT_WRITE`. Replaces an unapplied tear.
        """
        if mode is TearMode.AT_WRITE:
            if write_index is None or write_index < 1:
                raise ValueError("an AT_WRITE tear needs write_index >= 1")
        elif write_index is not None:
            raise ValueError(f"write_index only applies to {TearMode.AT_WRITE}")
        tear = Tear(mode, write_index, when)
        with self._cond:
            self._tear = tear
        return tear

    def cancel_tear(self) -> None:
        """Disarm a tear that has not met its command yet."""
        with self._cond:
            self._tear = None

    def run(
        self,
        card: ContactlessCard,
        stop: threading.Event,
        *,
        image: str | os.PathLike[str] | None = None,
    ) -> None:
        """Keep ``card`` in the slot until ``stop`` is set, inserting it again whenever it leaves."""
        while not stop.is_set():
            self.insert(card, image=image)
            while not stop.is_set() and not self.wait_removed(0.1):
                pass
            if not stop.is_set():
                log.info("%s: the card left the field; inserting it again", self.reader_name)
        self.remove()

    def close(self, timeout: float = 2.0) -> None:
        """Remove any card, disarm any tear, and wait (up to ``timeout``) until the driver saw the exit."""
        self.cancel_tear()
        self.remove()
        with self._cond:
            session = self._session
        if session is not None:
            self._join(session, timeout)

    def __enter__(self) -> VpcdSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- connection ----------------------------------------------------------------------------------

    def _join(self, session: _Session, timeout: float = 2.0) -> None:
        thread = session.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: the driver did not notice the card's exit in %.1f s", self.reader_name, timeout)

    def _wait_port_ready(self) -> None:
        with _port_lock:
            ready_at = _port_ready_at.get((self.host, self.port), 0.0)
        delay = ready_at - time.monotonic()
        if delay > 0:
            log.debug("%s: waiting %.2f s for a presence poll of the empty slot", self.reader_name, delay)
            time.sleep(delay)

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        last_error: OSError | None = None
        logged = False
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as exc:
                last_error = exc
                if not logged:
                    log.info("%s: waiting for the vpcd driver on %s:%d", self.reader_name, self.host, self.port)
                    logged = True
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise VpcdUnavailable(
            f"cannot reach the vpcd driver for reader '{self.reader_name}' at {self.host}:{self.port} "
            f"after {self.connect_timeout:g} s ({last_error}); is pcscd running with the vsmartcard "
            "vpcd driver (package vsmartcard-vpcd, /etc/reader.conf.d/vpcd)? See simulators.pcscd."
        )

    # --- serving -------------------------------------------------------------------------------------

    def _serve(self, session: _Session) -> None:
        """The serving thread: answer the driver while the card is in the field, then watch how the driver
        notices its absence (we half-closed the connection) until the driver closes it."""
        drain_deadline: float | None = None
        try:
            while True:
                if drain_deadline is None and session.left:
                    drain_deadline = time.monotonic() + 2.0
                if drain_deadline is not None:
                    remaining = drain_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    session.sock.settimeout(remaining)
                message = _recv_message(session.sock)
                if message is None:
                    break
                with session.lock:
                    if session.left:
                        if session.after_leaving is None:
                            session.after_leaving = message[0] if len(message) == 1 else -1
                        continue
                    if not self._handle(session, message):
                        self._leave(session, unanswered=True)
        except OSError:
            pass  # reset by the driver, or the drain timed out
        except Exception:  # a bug in the card must not take the slot down silently
            log.exception("%s: the simulated card failed", self.reader_name)
        finally:
            self._closed(session)

    def _leave(self, session: _Session, *, unanswered: bool) -> None:
        """The card leaves the field (``session.lock`` held): power it off, keep its image, half-close."""
        session.left = True
        session.unanswered = unanswered
        if session.powered:
            session.powered = False
            try:
                session.card.power_off()
            except Exception:
                log.exception("%s: power_off failed", self.reader_name)
        self._save_image(session)
        with contextlib.suppress(OSError):
            session.sock.shutdown(socket.SHUT_WR)
        log.debug("%s: card out of the field%s", self.reader_name, " (tear)" if unanswered else "")
        with self._cond:
            self._cond.notify_all()

    def _closed(self, session: _Session) -> None:
        with session.lock:
            by_reader = not session.left
            if by_reader:
                self._leave(session, unanswered=False)
        with contextlib.suppress(OSError):
            session.sock.close()
        # Clean only if the driver found the card gone in a presence poll (a GET ATR after we left): its
        # next poll will then see the empty slot. Otherwise it may accept the next card at once.
        clean = not by_reader and not session.unanswered and session.after_leaving == CTRL_GET_ATR
        if not clean:
            with _port_lock:
                _port_ready_at[(self.host, self.port)] = time.monotonic() + self.poll_gap
        log.debug("%s: connection closed (%s)", self.reader_name, "clean" if clean else "needs a poll gap")
        with self._cond:
            session.closed = True
            self._cond.notify_all()

    def _handle(self, session: _Session, message: bytes) -> bool:
        """Act on one message from the driver; False when the card leaves the field without answering."""
        if not message:
            log.warning("%s: empty message from the driver ignored", self.reader_name)
            return True
        control = len(message) == 1
        keep = self._control(session, message[0]) if control else self._command(session, message)
        self._save_image(session)
        return keep

    def _control(self, session: _Session, code: int) -> bool:
        card = session.card
        if code == CTRL_GET_ATR:
            _send_message(session.sock, card.atr)
            return True
        if code == CTRL_POWER_OFF:
            if session.powered:
                session.powered = False
                card.power_off()
            with self._cond:
                if session.commands:
                    session.released = True
                self._cond.notify_all()
            return True
        if code in (CTRL_POWER_ON, CTRL_RESET):
            return self._power_on(session)
        log.warning("%s: unknown vpcd control %02X ignored", self.reader_name, code)
        return True

    def _power_on(self, session: _Session) -> bool:
        try:
            session.card.power_on()
        except PowerLoss:
            log.info("%s: power lost during power-on", self.reader_name)
            return False
        session.powered = True
        return True

    def _command(self, session: _Session, apdu: bytes) -> bool:
        if not session.powered and not self._power_on(session):
            return False
        with self._cond:
            tear = self._tear
            if tear is not None and tear.when is not None and not _accepts(tear.when, apdu):
                tear = None
            if tear is not None:
                self._tear = None
        if tear is not None:
            return self._torn_command(session, apdu, tear)
        try:
            response = self._process(session, apdu)
        except PowerLoss:
            log.info("%s: power lost during %s", self.reader_name, apdu[:4].hex().upper())
            session.powered = False
            return False
        self._answer(session, response)
        return True

    def _torn_command(self, session: _Session, apdu: bytes, tear: Tear) -> bool:
        tear.command = apdu
        try:
            if tear.mode is TearMode.BEFORE_COMMAND:
                tear.fired = True
                return False
            if tear.mode is TearMode.DROP_ANSWER:
                with contextlib.suppress(PowerLoss):
                    tear.response = self._process(session, apdu)
                tear.fired = True
                return False
            memory = _memory_of(session.card)
            if memory is None:
                tear.error = "the card has no cardos.memory.Memory"
                log.error("%s: cannot tear at a write: %s", self.reader_name, tear.error)
                self._answer(session, self._process(session, apdu))
                return True
            assert tear.write_index is not None
            memory.arm_tear(tear.write_index)
            try:
                response = self._process(session, apdu)
            except PowerLoss:
                session.powered = False
                tear.fired = True
                return False
            finally:
                memory.arm_tear(None)
            self._answer(session, response)
            return True
        finally:
            tear._applied.set()
            log.debug("%s: tear %s on %s: fired=%s", self.reader_name, tear.mode.value, apdu[:4].hex(), tear.fired)

    def _process(self, session: _Session, apdu: bytes) -> bytes:
        """Run one command on the card; ``PowerLoss`` propagates, other failures become a status word."""
        with self._cond:
            session.commands += 1
            session.last_activity = time.monotonic()
        if len(apdu) < 4:
            return _SW_WRONG_LENGTH
        try:
            response = session.card.transmit(apdu)
        except PowerLoss:
            raise
        except Exception:
            log.exception("%s: card.transmit failed on %s", self.reader_name, apdu.hex().upper())
            return _SW_NO_DIAGNOSIS
        if not isinstance(response, bytes | bytearray) or not 2 <= len(response) <= 0xFFFF:
            log.error("%s: card answered %r to %s", self.reader_name, response, apdu.hex().upper())
            return _SW_NO_DIAGNOSIS
        return bytes(response)

    def _answer(self, session: _Session, response: bytes) -> None:
        _send_message(session.sock, response)
        callback = session.done_callback
        finished = False
        if callback is not None:
            try:
                finished = bool(callback(session.card))
            except Exception:
                log.exception("%s: the tap's done callback failed", self.reader_name)
        with self._cond:
            session.last_activity = time.monotonic()
            if finished:
                session.done = True
            self._cond.notify_all()

    def _save_image(self, session: _Session) -> None:
        if session.image is None:
            return
        memory = _memory_of(session.card)
        if memory is None or not memory.dirty:
            return
        try:
            memory.save(session.image)
        except OSError:
            log.exception("%s: cannot save the card image to %s", self.reader_name, session.image)


def _accepts(when: CommandFilter, apdu: bytes) -> bool:
    try:
        return bool(when(apdu))
    except Exception:
        log.exception("tear filter failed")
        return False


def _memory_of(card: ContactlessCard) -> Memory | None:
    memory = getattr(card, "memory", None)
    return memory if isinstance(memory, Memory) else None


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly ``size`` bytes; None at end of stream.

    ``TCP_QUICKACK`` is set again before every ``recv``: the driver writes the length and the body
    separately, and a delayed ACK of the first write would hold the second back by ~40 ms (Nagle).
    """
    chunks = bytearray()
    while len(chunks) < size:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _recv_message(sock: socket.socket) -> bytes | None:
    header = _recv_exact(sock, 2)
    if header is None:
        return None
    (size,) = struct.unpack(">H", header)
    if size == 0:
        return b""
    return _recv_exact(sock, size)


def _send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)
