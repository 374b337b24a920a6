"""Fixtures for the issuance services on a real database (every test runs on SQLite and on PostgreSQL).

:class:`Desk` is a service counter: a migrated database, the vector issuer keys in an in-memory keystore, a
personal-data vault, staff of each role and a stepping clock, with shortcuts for the common steps.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, func, select
from support import COUNTER_TERM_ID, StepClock, vector_keys

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from issuance import services
from issuance.access import Role, Staff
from issuance.bookkeeping import account_balance
from issuance.keys import InMemoryKeystore
from issuance.lifecycle import CardType, InsuredScheme
from issuance.models import AuditEntry
from issuance.pii import PersonalDataVault
from terminal.cards import UserCard
from terminal.channel import InProcessChannel

ID_NUMBERS = ["11010519491231002X", "110101199003071233", "440304198506153216", "310104200002290049"]
"""Valid GB 11643 numbers (check characters computed in tests/unit/issuance/test_idnumber.py)."""


class AesGcmSealer:
    """AES-256-GCM, ``nonce ‖ ciphertext ‖ tag`` (the keystore will provide this in production)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open_sealed(self, sealed: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], aad)


_chip_serials = itertools.count(0xC0C1C2C3C4C50000)


def factory_chip(keys: IssuerKeys, kind: CardKind = CardKind.USER) -> Card:
    """A chip as it leaves the factory, with a fresh chip serial and the issuer's KT."""
    return Card.factory(kind, keys.alg, keys.keys["KT"], next(_chip_serials).to_bytes(8, "big"))


@dataclass
class Desk:
    """A service counter on one database."""

    engine: Engine
    issuer_keys: IssuerKeys
    keys: InMemoryKeystore
    vault: PersonalDataVault
    issuer: services.IssuerProfile
    clock: StepClock
    clerk: Staff = field(default_factory=lambda: Staff("clerk-1", Role.CLERK))
    supervisor: Staff = field(default_factory=lambda: Staff("super-1", Role.SUPERVISOR))
    auditor: Staff = field(default_factory=lambda: Staff("audit-1", Role.AUDITOR))
    term_id: str = COUNTER_TERM_ID
    id_numbers: tuple[str, ...] = tuple(ID_NUMBERS)

    def uow(self) -> UnitOfWork:
        """A new unit of work."""
        return UnitOfWork(session_factory(self.engine))

    def run(self, service: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a unit-of-work service in a fresh unit of work, with the desk's clock."""
        with self.uow() as uow:
            return service(uow, *args, clock=self.clock, **kwargs)

    def register(self, index: int = 0, name: str = "ZHANG SAN", link: bool = True) -> int:
        """Register resident ``ID_NUMBERS[index]`` (and link the social-security record); their id."""
        view = self.run(
            services.register_resident,
            self.clerk,
            self.vault,
            name=name,
            id_number=ID_NUMBERS[index],
            phone="13800000000",
            address="1 Renmin Road",
        )
        if link:
            self.run(
                services.link_social_security,
                self.clerk,
                self.vault,
                resident_id=view.resident_id,
                ss_number=ID_NUMBERS[index],
                schemes=InsuredScheme.PENSION | InsuredScheme.MEDICAL,
                agency_code="310000",
            )
        return int(view.resident_id)

    def apply(self, resident_id: int | None = None, card_type: CardType = CardType.ADULT) -> str:
        """Apply for a card; its card_no."""
        view = self.run(
            services.apply_for_card, self.clerk, card_type=card_type, city_code="0310", resident_id=resident_id
        )
        return str(view.card_no)

    def issue(self, card_no: str, pin: str = "123456") -> Card:
        """Issue ``card_no`` onto a fresh factory chip; the chip."""
        chip = factory_chip(self.issuer_keys)
        with InProcessChannel(chip) as channel:
            self.run(
                services.issue_card, self.clerk, self.keys, self.vault, self.issuer, channel, card_no=card_no, pin=pin
            )
        return chip

    def new_card(self, index: int = 0, registered: bool = True) -> tuple[str, Card]:
        """A registered (or anonymous) active card and its chip."""
        resident = self.register(index) if registered else None
        card_no = self.apply(resident)
        return card_no, self.issue(card_no)

    def load(self, chip: Any, amount: int, request_id: str, **kwargs: Any) -> services.LoadOutcome:
        """A counter load of ``amount`` onto the chip in a fresh channel."""
        channel = InProcessChannel(chip)
        try:
            outcome: services.LoadOutcome = services.load_card(
                self.uow,
                self.clerk,
                self.keys,
                channel,
                amount=amount,
                request_id=request_id,
                term_id=self.term_id,
                clock=self.clock,
                **kwargs,
            )
        finally:
            channel.close()
        return outcome

    def card(self, card_no: str) -> services.CardView:
        """The card's record."""
        with self.uow() as uow:
            return services.show_card(uow, card_no=card_no)

    def balance(self, account: str) -> int:
        """Money moved into ``account`` minus money moved out."""
        with self.uow() as uow:
            return account_balance(uow.session, account)

    def audit_actions(self, action: str) -> list[AuditEntry]:
        """Audit entries of one action, oldest first."""
        with self.uow() as uow:
            entries = uow.session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
            found = list(entries)
            uow.session.expunge_all()  # keep them readable after the unit of work rolls back
            return found

    def factory_chip(self, kind: CardKind = CardKind.USER) -> Card:
        """A fresh factory chip with the issuer's KT."""
        return factory_chip(self.issuer_keys, kind)

    @staticmethod
    def chip_balance(chip: Any) -> int:
        """GET BALANCE of the purse."""
        with InProcessChannel(chip) as channel:
            user = UserCard(channel)
            user.select_purse()
            return user.get_balance()

    @staticmethod
    def send(chip: Any, *commands: CommandAPDU) -> list[ResponseAPDU]:
        """Send commands in one session; every response."""
        with InProcessChannel(chip) as channel:
            return [channel.transmit(command) for command in commands]

    def count(self, model: Any) -> int:
        """Rows of a table."""
        with self.uow() as uow:
            return int(uow.session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def desk(db_url: str) -> Iterator[Desk]:
    """A migrated database (SQLite, then PostgreSQL) and a service counter on it (DES vector keys)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    issuer_keys = vector_keys(Alg.DES)
    yield Desk(
        engine=engine,
        issuer_keys=issuer_keys,
        keys=InMemoryKeystore([issuer_keys]),
        vault=PersonalDataVault(AesGcmSealer(os.urandom(32)), os.urandom(32)),
        issuer=services.IssuerProfile(issuer_keys.issuer_id, Alg.DES),
        clock=StepClock(),
    )
    engine.dispose()
