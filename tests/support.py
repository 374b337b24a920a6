"""Helpers shared by the tests: issuer keys from the vectors, issued cards and PSAMs, a fixed clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cardos import perso
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from cardos.layout import HolderData
from cardos.memory import PowerLoss
from terminal.channel import InProcessChannel
from terminal.personalise import personalise

VECTORS_PATH = Path(__file__).parent / "vectors" / "vectors.json"
VECTORS = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
PSAM_TERM_ID = "031000000001"
COUNTER_TERM_ID = "031000009001"


def vector_keys(alg: Alg) -> IssuerKeys:
    """The issuer master keys of a vector suite (with KT)."""
    suite = VECTORS["suites"][f"{alg:02X}"]
    keys = {name: bytes.fromhex(entry["key"]) for name, entry in suite["master_keys"].items()}
    keys["KT"] = bytes.fromhex(suite["transport_key"]["KT"])
    return IssuerKeys(bytes.fromhex(suite["issuer_id"]), alg, keys)


def issue_card(
    keys: IssuerKeys,
    card_no: str = "0310000000000001",
    *,
    registered: bool = True,
    serial: bytes = bytes.fromhex("C0C1C2C3C4C5C6C7"),
    card_type: int = 0x01,
) -> Card:
    """A factory chip personalised in-process into an issued user card."""
    card = Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], serial)
    holder = HolderData("ZHANG SAN", "110101199003071234", "13800000000") if registered else None
    profile = perso.user_card_profile(keys, card_no=card_no, holder=holder, card_type=card_type)
    with InProcessChannel(card) as channel:
        personalise(channel, keys.alg, keys.keys["KT"], perso.user_card_script(profile))
    return card


def issue_psam(keys: IssuerKeys, term_id: str = PSAM_TERM_ID) -> Card:
    """A factory chip personalised in-process into a PSAM."""
    psam = Card.factory(CardKind.PSAM, keys.alg, keys.keys["KT"], bytes.fromhex("D0D1D2D3D4D5D6D7"))
    with InProcessChannel(psam) as channel:
        personalise(channel, keys.alg, keys.keys["KT"], perso.psam_script_from_keys(keys, term_id))
    return psam


class StepClock:
    """A clock that advances one second per call, from 2025-03-01 08:00:00 +08:00."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC) + timedelta(hours=0)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class ForwardingCard:
    """A test double in front of a card: forwards everything to it; subclasses change :meth:`transmit`."""

    def __init__(self, inner: Card) -> None:
        self.inner = inner

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def power_on(self) -> None:
        self.inner.power_on()

    def power_off(self) -> None:
        self.inner.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        return self.inner.transmit(apdu)


class LeavesAfterCredit(ForwardingCard):
    """Forwards every command; after forwarding CREDIT FOR LOAD the card leaves: its answer is lost."""

    def transmit(self, apdu: bytes) -> bytes:
        response = self.inner.transmit(apdu)
        if apdu[:2] == b"\x80\x52":
            raise PowerLoss("the card left after CREDIT FOR LOAD")
        return response


class LeavesBeforeCredit(ForwardingCard):
    """Forwards every command but CREDIT FOR LOAD: the card leaves before it (nothing was credited)."""

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[:2] == b"\x80\x52":
            raise PowerLoss("the card left before CREDIT FOR LOAD")
        return self.inner.transmit(apdu)
