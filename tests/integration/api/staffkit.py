"""The staff API tests' world: a migrated database, the app with the vector keys, simulated desk readers, and
staff of every role (each logged in), with shortcuts for the counter's steps.

Desks: ``DESK-A`` (clerk ``clerk-a``, supervisor ``super-a``) and ``DESK-B`` (clerk ``clerk-b``). Cards sit in
the desks' readers as :class:`cardos.card.Card` objects (:class:`api.desks.SimulatedDeskReaders`).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import vector_keys

from api.app import create_app
from api.counter_service import CounterContext
from api.deps import AppState
from api.desks import SimulatedDeskReaders, put_desk
from api.staff_auth import create_staff
from backoffice.db import UnitOfWork
from backoffice.schema import upgrade
from backoffice.settings import Settings
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from issuance import services
from issuance.keys import InMemoryKeystore
from issuance.keystore import AesGcmSealer
from issuance.pii import PersonalDataVault
from terminal.cards import UserCard
from terminal.channel import InProcessChannel

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
"""argon2id with small parameters: the tests log in hundreds of times (production uses the defaults)."""
ID_NUMBERS = ["11010519491231002X", "110101199003071233", "440304198506153216", "310104200002290049"]
DESKS = {"DESK-A": "031000009001", "DESK-B": "031000009002"}
STAFF: dict[str, tuple[list[str], str | None]] = {
    "admin": (["admin"], None),
    "clerk-a": (["counter"], "DESK-A"),
    "clerk-b": (["counter"], "DESK-B"),
    "super-a": (["supervisor"], "DESK-A"),
    "finance": (["finance"], None),
    "auditor": (["auditor"], None),
}
_chips = itertools.count(0xC0C1C2C3C4C60000)


def migrate(db_url: str, *, clearing: bool = False) -> None:
    """The issuance and api branches (and clearing's when asked) of the schema."""
    upgrade(db_url, "issuance@head")
    upgrade(db_url, "api@head")
    if clearing:
        upgrade(db_url, "clearing@head")


def configure(state: AppState, keys: IssuerKeys) -> SimulatedDeskReaders:
    """Vector keys in memory, a fresh vault, the issuer profile, simulated readers, a fast hasher."""
    state.counter = CounterContext(
        keys=InMemoryKeystore([keys]),
        vault=PersonalDataVault(AesGcmSealer(os.urandom(32)), os.urandom(32)),
        issuer=services.IssuerProfile(keys.issuer_id, keys.alg),
        recovery_timeout=0.5,
    )
    readers = SimulatedDeskReaders()
    state.desk_readers = readers
    state.password_hasher = FAST_HASHER
    return readers


def seed(state: AppState) -> None:
    """The desks and the staff."""
    for desk_id, term_id in DESKS.items():
        with state.new_uow() as uow:
            put_desk(uow, desk_id, reader=f"Virtual {desk_id}", term_id=term_id)
    for username, (roles, desk) in STAFF.items():
        with state.new_uow() as uow:
            create_staff(uow, username, PASSWORD, roles, desk_id=desk, hasher=FAST_HASHER)


@dataclass
class StaffWorld:
    """The app over a migrated database, its simulated readers and a logged-in client per member of staff."""

    db_url: str
    app: FastAPI
    client: TestClient
    keys: IssuerKeys
    readers: SimulatedDeskReaders
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> AppState:
        """The application's state."""
        state: AppState = self.app.state.onecard
        return state

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        """``POST /auth/login``."""
        return self.client.post("/auth/login", json={"username": username, "password": password})

    def token(self, username: str) -> str:
        """A session token of ``username`` (logged in once, then reused)."""
        if username not in self.tokens:
            response = self.login(username)
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["token"]
        return self.tokens[username]

    def headers(self, username: str, **extra: str) -> dict[str, str]:
        """The bearer header of ``username``."""
        return {"Authorization": f"Bearer {self.token(username)}", **extra}

    def call(self, username: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request as ``username`` (``None``: anonymous)."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if username is not None:
            headers.update(self.headers(username))
        self.client.cookies.clear()
        return self.client.request(method, path, headers=headers, **kwargs)

    def uow(self) -> UnitOfWork:
        """A unit of work on the test database."""
        return self.state.new_uow()

    def count(self, model: Any, *where: Any) -> int:
        """Rows of a table (matching ``where``)."""
        with self.uow() as uow:
            return int(uow.session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    # --- the counter's steps through the API ---------------------------------------------------------------------

    def register(self, index: int = 0, as_: str = "clerk-a", name: str = "ZHANG SAN") -> int:
        """Register resident ``ID_NUMBERS[index]``; their id."""
        body = {"name": name, "id_number": ID_NUMBERS[index], "phone": "13800000000", "address": "1 Renmin Road"}
        response = self.call(as_, "POST", "/counter/residents", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["resident_id"])

    def apply(self, resident_id: int | None = None, as_: str = "clerk-a") -> str:
        """Apply for a card; its card_no."""
        body: dict[str, Any] = {"card_type": "adult", "city_code": "0310"}
        if resident_id is not None:
            body["resident_id"] = resident_id
        response = self.call(as_, "POST", "/counter/cards", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["card_no"])

    def factory_chip(self) -> Card:
        """A factory chip with the issuer's KT."""
        return Card.factory(CardKind.USER, self.keys.alg, self.keys.keys["KT"], next(_chips).to_bytes(8, "big"))

    def issue(self, card_no: str, desk: str = "DESK-A", as_: str = "clerk-a", pin: str = "123456") -> Card:
        """Issue ``card_no`` onto a factory chip placed on ``desk``; the chip (left in the reader)."""
        chip = self.factory_chip()
        self.readers.place(desk, chip)
        response = self.call(as_, "POST", f"/counter/cards/{card_no}/issue", json={"desk_id": desk, "pin": pin})
        assert response.status_code == 200, response.text
        return chip

    def new_card(self, index: int = 0, desk: str = "DESK-A", as_: str = "clerk-a") -> tuple[str, Card]:
        """A registered, issued card in ``desk``'s reader."""
        card_no = self.apply(self.register(index, as_=as_), as_=as_)
        return card_no, self.issue(card_no, desk, as_)

    def load(
        self, card_no: str, amount: int, *, desk: str = "DESK-A", as_: str = "clerk-a", key: str | None = None
    ) -> httpx.Response:
        """``POST /counter/cards/{card_no}/loads`` with an Idempotency-Key (a fresh one unless given)."""
        return self.call(
            as_,
            "POST",
            f"/counter/cards/{card_no}/loads",
            json={"desk_id": desk, "amount": amount},
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
        )

    @staticmethod
    def chip_balance(chip: Card) -> int:
        """GET BALANCE of the chip's purse."""
        with InProcessChannel(chip) as channel:
            user = UserCard(channel)
            user.select_purse()
            return user.get_balance()


@contextmanager
def staff_world(db_url: str, *, clearing: bool = False, settings: Settings | None = None) -> Iterator[StaffWorld]:
    """A migrated database with desks and staff, and the app over it (the client entered)."""
    migrate(db_url, clearing=clearing)
    app = create_app(settings or Settings(database_url=db_url))
    state: AppState = app.state.onecard
    keys = vector_keys(Alg.DES)
    readers = configure(state, keys)
    seed(state)
    try:
        with TestClient(app) as client:
            yield StaffWorld(db_url, app, client, keys, readers)
    finally:
        state.engine.dispose()
