"""Counter desks: which reader is on which desk, who may use it, and how a request reaches the card in it.

A desk (table ``api_desks``) has a PC/SC reader name and the 12-digit counter ``term_id`` its loads are recorded
under. A member of staff works at one desk (``api_staff.desk_id``) and may drive only that desk's reader: a
clerk of desk A cannot load, issue or reset a PIN through desk B (``403``). One operation at a time runs on a
desk's reader.

:class:`DeskReaders` opens the card in a desk's reader. :class:`PcscDeskReaders` is production (pyscard);
:class:`SimulatedDeskReaders` holds :class:`cardos.card.Card` objects in memory (tests);
:class:`ImageDeskReaders` keeps simulated cards as image files under a lock, so several API processes share
them (``onecard bench api``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.models import CounterDesk
from api.staff_auth import DeskView, Principal
from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, DeviceUnavailable, Forbidden, InvalidInput, NotFound
from cardos.card import Card
from cardos.interface import ContactlessCard
from terminal.channel import Channel, InProcessChannel
from terminal.errors import CardRemoved, ReaderUnavailable, TerminalError
from terminal.field import InProcessField
from terminal.purse import CardSource

DESK_LOCK_TIMEOUT = 30.0
TERM_ID = re.compile(r"[0-9]{12}")


class NoCardInReader(Conflict):
    """The desk's reader holds no card (409): present the card and try again."""

    code = "no_card_in_reader"


class DeskBusy(Conflict):
    """Another operation is using the desk's reader (409)."""

    code = "desk_busy"


@dataclass(frozen=True, slots=True)
class DeskSession:
    """The card in a desk's reader, and where to wait for it should it leave mid-transaction."""

    channel: Channel
    card_source: CardSource | None


class DeskReaders(Protocol):
    """Opens the card in a desk's reader for one operation (the desk is locked meanwhile)."""

    def open(self, desk: DeskView) -> AbstractContextManager[DeskSession]:
        """The card in ``desk``'s reader; :class:`NoCardInReader`, :class:`DeskBusy` or
        :class:`~backoffice.errors.DeviceUnavailable` otherwise."""
        ...


class _DeskLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def held(self, desk_id: str, timeout: float) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(desk_id, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise DeskBusy("the desk's reader is busy with another operation", desk_id=desk_id)
        try:
            yield
        finally:
            lock.release()


class PcscDeskReaders:
    """The desks' PC/SC readers (pyscard): one exclusive operation per desk in this process."""

    def __init__(self, lock_timeout: float = DESK_LOCK_TIMEOUT) -> None:
        self._locks = _DeskLocks()
        self._timeout = lock_timeout

    @contextlib.contextmanager
    def open(self, desk: DeskView) -> Iterator[DeskSession]:
        """Connect to the card in the desk's reader."""
        try:
            from terminal.channel import PcscChannel
            from terminal.reader import PcscCardSource
        except ImportError as exc:  # pyscard missing on this host
            raise DeviceUnavailable(f"PC/SC is not available here: {exc}", desk_id=desk.desk_id) from None

        with self._locks.held(desk.desk_id, self._timeout):
            try:
                channel = PcscChannel(desk.reader)
            except CardRemoved:
                raise NoCardInReader("there is no card in the desk's reader", desk_id=desk.desk_id) from None
            except (ReaderUnavailable, TerminalError) as exc:
                raise DeviceUnavailable(f"the desk's reader is unavailable: {exc}", desk_id=desk.desk_id) from None
            try:
                yield DeskSession(channel, PcscCardSource(desk.reader))
            finally:
                channel.close()


class SimulatedDeskReaders:
    """In-memory cards on the desks (tests): :meth:`place` a card on a desk, the API drives it."""

    def __init__(self) -> None:
        self._cards: dict[str, ContactlessCard] = {}
        self._locks = _DeskLocks()

    def place(self, desk_id: str, card: ContactlessCard) -> None:
        """Put ``card`` into the desk's reader (replacing what was there)."""
        self._cards[desk_id] = card

    def remove(self, desk_id: str) -> ContactlessCard | None:
        """Take the card out of the desk's reader."""
        return self._cards.pop(desk_id, None)

    def card_at(self, desk_id: str) -> ContactlessCard | None:
        """The card in the desk's reader."""
        return self._cards.get(desk_id)

    @contextlib.contextmanager
    def open(self, desk: DeskView) -> Iterator[DeskSession]:
        """A channel to the card placed on the desk."""
        with self._locks.held(desk.desk_id, DESK_LOCK_TIMEOUT):
            card = self._cards.get(desk.desk_id)
            if card is None:
                raise NoCardInReader("there is no card in the desk's reader", desk_id=desk.desk_id)
            with InProcessChannel(card, name=f"desk {desk.desk_id}") as channel:
                yield DeskSession(channel, InProcessField([card]))


class ImageDeskReaders:
    """Simulated cards kept as image files ``<directory>/<desk_id>.card``, one process at a time per desk
    (``flock`` on ``<desk_id>.lock``): every worker process of the API sees the same card.

    Each process keeps the card it last loaded or saved, with the file's identity (inode, modification time,
    size) at that moment: while the file is unchanged (no other process drove the card since), the next
    operation reuses it instead of parsing the image again. The image is still written back, under the lock,
    whenever an operation changed the card.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._locks = _DeskLocks()
        self._cached: dict[str, tuple[tuple[int, int, int], Card]] = {}

    def image_path(self, desk_id: str) -> Path:
        """Where the desk's card image is."""
        return self.directory / f"{desk_id}.card"

    @staticmethod
    def _identity(path: Path) -> tuple[int, int, int]:
        status = os.stat(path)
        return status.st_ino, status.st_mtime_ns, status.st_size

    def _card(self, desk_id: str, path: Path) -> Card:
        identity = self._identity(path)
        cached = self._cached.get(desk_id)
        if cached is not None and cached[0] == identity:
            return cached[1]
        self._cached.pop(desk_id, None)
        card = Card.load_image(path)
        self._cached[desk_id] = (identity, card)
        return card

    @contextlib.contextmanager
    def open(self, desk: DeskView) -> Iterator[DeskSession]:
        """Load the desk's card image (or reuse this process's copy of it), drive it, save it back if it
        changed."""
        path = self.image_path(desk.desk_id)
        with self._locks.held(desk.desk_id, DESK_LOCK_TIMEOUT):
            fd = os.open(self.directory / f"{desk.desk_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    card = self._card(desk.desk_id, path)
                except FileNotFoundError:
                    self._cached.pop(desk.desk_id, None)
                    raise NoCardInReader("there is no card in the desk's reader", desk_id=desk.desk_id) from None
                try:
                    with InProcessChannel(card, name=f"desk {desk.desk_id}") as channel:
                        yield DeskSession(channel, InProcessField([card]))
                finally:
                    if card.memory.dirty:
                        self._cached.pop(desk.desk_id, None)
                        card.save_image(path)
                        self._cached[desk.desk_id] = (self._identity(path), card)
            finally:
                os.close(fd)


# --- desk records ----------------------------------------------------------------------------------------------


def _view(desk: CounterDesk) -> DeskView:
    return DeskView(desk.desk_id, desk.reader, desk.term_id, desk.active)


def put_desk(
    uow: UnitOfWork, desk_id: str, *, reader: str, term_id: str, active: bool = True, now: datetime | None = None
) -> DeskView:
    """Create or change a desk (admins; commits). ``term_id`` is 12 digits, one desk each."""
    if not TERM_ID.fullmatch(term_id):
        raise InvalidInput("a term_id is 12 digits")
    at = now or datetime.now(UTC)
    session = uow.session
    desk = session.get(CounterDesk, desk_id, with_for_update=True)
    if desk is None:
        desk = CounterDesk(desk_id=desk_id, created_at=at)
        session.add(desk)
    desk.reader = reader
    desk.term_id = term_id
    desk.active = active
    desk.updated_at = at
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("another desk has this term_id", term_id=term_id) from None
    view = _view(desk)
    uow.commit()
    return view


def list_desks(uow: UnitOfWork) -> list[DeskView]:
    """Every desk, by id."""
    return [_view(d) for d in uow.session.scalars(select(CounterDesk).order_by(CounterDesk.desk_id))]


def desk_for(principal: Principal, desk_id: str) -> DeskView:
    """The desk ``principal`` may drive: their own, in service (``403`` for another desk, ``404`` if none).

    The desk's record came with the principal (read with the session), so this asks the database nothing.
    """
    if principal.desk_id != desk_id:
        raise Forbidden("you may only use the reader of your own desk", desk_id=desk_id)
    if principal.desk is None or not principal.desk.active:
        raise NotFound("no such desk in service", desk_id=desk_id)
    return principal.desk
