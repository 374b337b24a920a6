"""Small parts of the fast load path (issue #7, performance): the pre-ping setting, the autocommit read,
:func:`backoffice.db.run_statement`, and the image desk readers' reuse of a card nobody else drove."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select

from api.deps import _engine_options
from api.desks import ImageDeskReaders, NoCardInReader
from api.staff_auth import DeskView
from backoffice.db import UnitOfWork, make_engine, run_statement, session_factory
from backoffice.settings import Settings
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from terminal.cards import UserCard

PG_URL = "postgresql+psycopg://user@127.0.0.1:1/db"


def test_pre_ping_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONECARD_DB_PRE_PING", raising=False)
    assert Settings.load().db_pre_ping is None
    for value, expected in (("1", True), ("on", True), ("0", False), ("No", False), ("", None)):
        monkeypatch.setenv("ONECARD_DB_PRE_PING", value)
        assert Settings.load().db_pre_ping is expected
    monkeypatch.setenv("ONECARD_DB_PRE_PING", "maybe")
    with pytest.raises(ValueError, match="yes/no"):
        Settings.load()
    # The API does without it unless asked; everything else keeps it by default.
    assert _engine_options(Settings(database_url=PG_URL))["pre_ping"] is False
    assert _engine_options(Settings(database_url=PG_URL, db_pre_ping=True))["pre_ping"] is True
    assert _engine_options(Settings(database_url="sqlite:///x.db")) == {}
    assert make_engine(PG_URL).pool._pre_ping is True
    assert make_engine(PG_URL, pre_ping=False).pool._pre_ping is False


def test_autocommit_read_and_run_statement(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    metadata = MetaData()
    things = Table("things", metadata, Column("id", Integer, primary_key=True), Column("name", String(10)))
    metadata.create_all(engine)
    add = insert(things).returning(things.c.id)
    named = select(things.c.id, things.c.name).where(things.c.name == bindparam("k_name"))
    sessions = session_factory(engine)
    with UnitOfWork(sessions) as uow:
        conn = uow.session.connection()
        rows, count = run_statement(conn, add, {"name": "a"})
        assert rows == [(1,)] and count == 1
        # Not committed yet: a read outside the unit's transaction does not see it.
        with uow.autocommit() as other:
            assert run_statement(other, named, {"k_name": "a"}) == ([], 0)
        uow.commit()
    with UnitOfWork(sessions) as uow, uow.autocommit() as conn:
        assert run_statement(conn, named, {"k_name": "a"}) == ([(1, "a")], 1)
    engine.dispose()


def _desk(desk_id: str = "D1") -> DeskView:
    return DeskView(desk_id, "simulated", "900000000001", True)


def _balance(readers: ImageDeskReaders, desk: DeskView) -> int:
    with readers.open(desk) as opened:
        card = UserCard(opened.channel)
        card.select_purse()
        return card.get_balance()


def test_image_readers_reuse_the_card_until_another_process_changes_it(tmp_path: Path) -> None:
    readers = ImageDeskReaders(tmp_path)
    desk = _desk()
    with pytest.raises(NoCardInReader):
        _balance(readers, desk)
    chip = Card.factory(CardKind.USER, Alg.DES, bytes(16), bytes(8))
    chip.save_image(readers.image_path("D1"))
    with readers.open(desk) as opened:
        first = opened.channel
    with readers.open(desk) as opened:
        assert opened.channel is not first  # a fresh channel (the card powered on again) …
    cached = readers._cached["D1"][1]
    with readers.open(desk):
        assert readers._cached["D1"][1] is cached  # … on the same card object: the file did not change
    # Another process writes the image: the next operation reads it again.
    other = Card.load_image(readers.image_path("D1"))
    os.utime(readers.image_path("D1"), ns=(1, 1))
    other.save_image(readers.image_path("D1"))
    with readers.open(desk):
        assert readers._cached["D1"][1] is not cached
    readers.image_path("D1").unlink()
    with pytest.raises(NoCardInReader):
        _balance(readers, desk)
    assert "D1" not in readers._cached
