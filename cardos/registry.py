"""The instruction table: which handler answers which CLA/INS, and in which states (spec §2.3–§2.6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cardos.fs import CardKind

if TYPE_CHECKING:
    from cardos.apdu import CommandAPDU
    from cardos.card import Card


@dataclass(frozen=True, slots=True)
class Command:
    """One entry of the instruction table."""

    name: str
    cla: int
    ins: int
    handler: Callable[[Card, CommandAPDU], bytes]
    kinds: frozenset[CardKind]
    in_factory: bool
    """Allowed in the factory state (spec §2.5: SELECT, READ BINARY, READ RECORD, GET CHALLENGE, perso)."""
    personalisation: bool
    """A §2.5 command: factory state only, and (but EXTERNAL AUTHENTICATE) needs authentication."""
    needs_auth: bool
    in_blocked_app: bool
    """Allowed while the current application is blocked (spec §2.3)."""


COMMANDS: dict[tuple[int, int], Command] = {}
KNOWN_CLASSES = frozenset({0x00, 0x04, 0x80, 0x84})

BOTH = frozenset({CardKind.USER, CardKind.PSAM})
USER = frozenset({CardKind.USER})
PSAM = frozenset({CardKind.PSAM})


def command(
    name: str,
    cla: int,
    ins: int,
    *,
    kinds: frozenset[CardKind] = BOTH,
    in_factory: bool = False,
    personalisation: bool = False,
    needs_auth: bool = True,
    in_blocked_app: bool = False,
) -> Callable[[Callable[[Card, CommandAPDU], bytes]], Callable[[Card, CommandAPDU], bytes]]:
    """Register a handler for ``(cla, ins)``."""

    def register(fn: Callable[[Card, CommandAPDU], bytes]) -> Callable[[Card, CommandAPDU], bytes]:
        if (cla, ins) in COMMANDS:
            raise RuntimeError(f"{cla:02X} {ins:02X} registered twice")
        COMMANDS[(cla, ins)] = Command(
            name=name,
            cla=cla,
            ins=ins,
            handler=fn,
            kinds=kinds,
            in_factory=in_factory or personalisation,
            personalisation=personalisation,
            needs_auth=personalisation and needs_auth,
            in_blocked_app=in_blocked_app,
        )
        return fn

    return register


def lookup(kind: CardKind, cla: int, ins: int) -> Command | int:
    """The command for ``(cla, ins)`` on a card of ``kind``, or the status word refusing it (§2.6)."""
    entry = COMMANDS.get((cla, ins))
    if entry is not None and kind in entry.kinds:
        return entry
    if cla not in KNOWN_CLASSES:
        return 0x6E00
    known_ins = any(c.ins == ins and kind in c.kinds for c in COMMANDS.values())
    return 0x6E00 if known_ins else 0x6D00
