"""The card OS: one chip that is a user card or a PSAM, driven one APDU at a time (spec §2, §3).

:meth:`Card.transmit` is the only place that turns an exception into a response. Handlers live in
:mod:`cardos.commands` and are found through :mod:`cardos.registry`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.fs import DF, EF, AppStatus, CardKind, FileSystem, LifeCycle
from cardos.layout import MF_FID, atr_for
from cardos.memory import Memory, PowerLoss, Transaction
from cardos.registry import lookup
from cardos.session import PendingLoad, PendingPurchase, PsamSession
from cardos.sw import SW, CardError

__all__ = ["Card", "CardKind", "LifeCycle", "PendingLoad", "PendingPurchase", "PsamSession"]

log = logging.getLogger("onecard.cardos")

Rng = Callable[[int], bytes]


class Card:
    """A card OS instance over a :class:`Memory`. Not thread-safe: one reader drives it."""

    def __init__(self, memory: Memory, rng: Rng | None = None) -> None:
        self.memory = memory
        self.rng: Rng = rng or os.urandom
        self._tx: Transaction = memory.begin()
        self.fs = FileSystem(self._tx)
        self.powered = False
        self._reset_volatile()

    # --- construction --------------------------------------------------------------------------------

    @classmethod
    def factory(
        cls,
        kind: CardKind,
        alg: crypto.Alg,
        transport_key: bytes,
        chip_serial: bytes,
        rng: Rng | None = None,
    ) -> Card:
        """A chip as it leaves the factory: an MF, a chip serial and KT (spec §2.5)."""
        if len(transport_key) != 16 or len(chip_serial) != 8:
            raise ValueError("KT is 16 bytes and the chip serial 8")
        memory = Memory(
            {
                "mf": bytes((CardKind(kind), LifeCycle.FACTORY)) + chip_serial,
                "kt": bytes((crypto.Alg(alg),)) + transport_key,
            }
        )
        return cls(memory, rng)

    @classmethod
    def from_memory(cls, memory: Memory, rng: Rng | None = None) -> Card:
        """A card from a memory image (power it on before use)."""
        return cls(memory, rng)

    # --- identity ------------------------------------------------------------------------------------

    @property
    def kind(self) -> CardKind:
        """User card or PSAM."""
        return self.fs.card_header()[0]

    @property
    def life_cycle(self) -> LifeCycle:
        """Factory, issued or card-blocked."""
        return self.fs.card_header()[1]

    @property
    def chip_serial(self) -> bytes:
        """The 8-byte chip serial."""
        return self.fs.card_header()[2]

    @property
    def atr(self) -> bytes:
        """``3B 88 80 01 ‖ chip serial ‖ TCK`` (spec §0)."""
        return atr_for(self.chip_serial)

    # --- power -----------------------------------------------------------------------------------------

    def _reset_volatile(self) -> None:
        self.current_df = MF_FID
        self.current_ef: int | None = None
        self.challenge: bytes | None = None
        self.pin_verified = False
        self.authenticated = False
        self.pending: PendingLoad | PendingPurchase | None = None
        self.psam_session: PsamSession | None = None
        self._challenge_in: bytes | None = None

    def power_on(self) -> None:
        """Field on or reset: finish or forget an interrupted commit, clear every volatile state."""
        self.memory.recover()
        self._tx = self.memory.begin()
        self.fs = FileSystem(self._tx)
        self._reset_volatile()
        self.powered = True

    def power_off(self) -> None:
        """Field off: volatile state is lost."""
        self._tx.discard()
        self._reset_volatile()
        self.powered = False

    # --- the one place that turns exceptions into responses --------------------------------------------

    def transmit(self, raw: bytes) -> bytes:
        """Process one command APDU and return ``data SW1 SW2``.

        Raises only :class:`PowerLoss` (an armed tear): the card then answers nothing until powered on.
        """
        if not self.powered:
            self.power_on()
        try:
            data, sw = self._process(bytes(raw)), int(SW.OK)
            self._tx.commit()
        except CardError as err:
            self._tx.discard()
            data, sw = err.data, err.sw
        except PowerLoss:
            self._tx.discard()
            self._reset_volatile()
            self.powered = False
            raise
        except Exception:  # a bug must not escape the card OS: answer "memory failure"
            log.exception("card OS internal error")
            self._tx.discard()
            data, sw = b"", int(SW.MEMORY_FAILURE)
        return data + sw.to_bytes(2, "big")

    def _process(self, raw: bytes) -> bytes:
        challenge, self.challenge = self.challenge, None
        pending = self.pending
        if pending is not None:
            continuation = (
                {(0x80, 0x52)} if isinstance(pending, PendingLoad) else {(0x80, 0xDC), (0x80, 0x54)}
            )
            if tuple(raw[:2]) not in continuation:
                self.pending = None
        self._challenge_in = challenge
        cmd = CommandAPDU.parse(raw)
        kind, state, _ = self.fs.card_header()
        if state is LifeCycle.CARD_BLOCKED:
            raise CardError(SW.FUNCTION_NOT_SUPPORTED, "card blocked")
        entry = lookup(kind, cmd.cla, cmd.ins)
        if isinstance(entry, int):
            raise CardError(entry)
        if state is LifeCycle.FACTORY:
            if not entry.in_factory:
                raise CardError(SW.CONDITIONS_NOT_SATISFIED, "factory state")
            if entry.needs_auth and not self.authenticated:
                raise CardError(SW.SECURITY_NOT_SATISFIED, "not authenticated")
        elif entry.personalisation:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "card already issued")
        df = self.fs.df(self.current_df)
        if df is not None and df.status is not AppStatus.ACTIVE:
            allowed = entry.in_blocked_app
            if entry.name == "APPLICATION UNBLOCK" and df.status is AppStatus.BLOCKED_PERMANENTLY:
                allowed = False
            if not allowed:
                raise CardError(SW.APP_LOCKED, "application blocked")
        return entry.handler(self, cmd)

    # --- helpers for handlers ------------------------------------------------------------------------

    def command_challenge(self) -> bytes | None:
        """The challenge that the command being processed may use (already used up)."""
        return self._challenge_in

    def commit(self) -> None:
        """Commit the writes staged so far (for a try counted before a comparison)."""
        self._tx.commit()

    def current_dir(self) -> DF:
        """The current DF."""
        df = self.fs.df(self.current_df)
        if df is None:  # the DF vanished: cannot happen, files are never deleted
            raise CardError(SW.CONDITIONS_NOT_SATISFIED)
        return df

    def current_adf(self) -> DF:
        """The current DF, which must be an application (``6985`` otherwise)."""
        df = self.current_dir()
        if df.is_mf:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no application selected")
        return df

    def current_file(self) -> EF:
        """The current EF (``6985`` when there is none)."""
        if self.current_ef is None:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no current EF")
        ef = self.fs.ef(self.current_df, self.current_ef)
        if ef is None:
            raise CardError(SW.CONDITIONS_NOT_SATISFIED, "no current EF")
        return ef

    def select_df(self, fid: int) -> None:
        """Make a DF current (a verified PIN is forgotten)."""
        self.current_df = fid
        self.current_ef = None
        self.pin_verified = False

    def select_ef(self, ef: EF) -> None:
        """Make an EF current (and its DF)."""
        if ef.df != self.current_df:
            self.select_df(ef.df)
        self.current_ef = ef.fid

    def random(self, size: int) -> bytes:
        """Random bytes from the card's generator."""
        value = self.rng(size)
        if len(value) != size:
            raise RuntimeError("random source returned the wrong length")
        return value

    def save_image(self, path: str | os.PathLike[str]) -> None:
        """Save the card's memory to a file."""
        self.memory.save(path)

    @classmethod
    def load_image(cls, path: str | os.PathLike[str], rng: Rng | None = None) -> Card:
        """Load a card saved by :meth:`save_image`."""
        return cls(Memory.load(path), rng)


# Register the handlers (imported for their side effect on the instruction table).
import cardos.commands  # noqa: E402, F401
