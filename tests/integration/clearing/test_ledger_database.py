"""The database itself keeps the ledger balanced and append-only and closed days closed (SQLite and PostgreSQL),
and the migrations make exactly the tables of clearing.tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

import clearing.tables
from backoffice.db import Base, UnitOfWork, make_engine, session_factory
from backoffice.schema import upgrade
from clearing import ledger
from clearing.rules import FEE_INCOME, FLOAT, Entry, Line, UnbalancedEntry, clearing_account, entry

DAY = date(2025, 3, 3)
TABLES = {
    mapper.local_table.name for mapper in Base.registry.mappers if mapper.class_.__module__ == clearing.tables.__name__
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database with the ledger's accounts and an open day."""
    upgrade(db_url)
    made = make_engine(db_url)
    with UnitOfWork(session_factory(made)) as uow:
        ledger.ensure_accounts(uow.session, ["OP-BUS-A"])
        uow.session.execute(text("INSERT INTO clearing_day (day, status, runs) VALUES (:d, 'open', 0)"), {"d": DAY})
        uow.commit()
    yield made
    made.dispose()


def _uow(engine: Engine) -> UnitOfWork:
    return UnitOfWork(session_factory(engine))


def _line(ref: str, number: int, account: str, debit: int, credit: int) -> dict[str, Any]:
    return {"r": ref, "n": number, "a": account, "d": debit, "c": credit}


INSERT_LINE = text("INSERT INTO ledger_line (entry_ref, line_no, account, debit, credit) VALUES (:r, :n, :a, :d, :c)")
INSERT_ENTRY = text(
    "INSERT INTO ledger_entry (entry_ref, clearing_day, kind, operator_id, line_count, total, memo) "
    "VALUES (:r, :day, 'test', NULL, :n, :t, '')"
)


def test_the_migrations_make_the_tables_of_the_models(db_url: str) -> None:
    upgrade(db_url)
    made = make_engine(db_url)
    try:
        with made.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = [str(d) for d in compare_metadata(context, Base.metadata) if any(t in str(d) for t in TABLES)]
    finally:
        made.dispose()
    assert differences == []


def test_a_balanced_entry_posts_and_counts(engine: Engine) -> None:
    posted = entry("e-1", DAY, "test", None, "", {FLOAT: 1_000, clearing_account("OP-BUS-A"): -985, FEE_INCOME: -15})
    assert posted is not None
    with _uow(engine) as uow:
        ledger.post(uow.session, posted)
        uow.commit()
    with _uow(engine) as uow:
        assert ledger.totals(uow.session) == (1_000, 1_000)
        assert ledger.balance(uow.session, FLOAT) == 1_000
        assert ledger.balances(uow.session)[FEE_INCOME] == -15


def test_an_unbalanced_entry_is_refused_by_the_database(engine: Engine) -> None:
    with _uow(engine) as uow, pytest.raises(DBAPIError, match="balance"):
        uow.session.execute(INSERT_LINE, [_line("bad", 1, FLOAT, 100, 0), _line("bad", 2, FEE_INCOME, 0, 90)])
        uow.session.execute(INSERT_ENTRY, {"r": "bad", "day": DAY, "n": 2, "t": 100})
    with _uow(engine) as uow, pytest.raises(DBAPIError):  # a line missing from the declared count
        uow.session.execute(INSERT_LINE, [_line("short", 1, FLOAT, 100, 0)])
        uow.session.execute(INSERT_ENTRY, {"r": "short", "day": DAY, "n": 2, "t": 100})
    with _uow(engine) as uow, pytest.raises(DBAPIError):  # a line on both sides
        uow.session.execute(INSERT_LINE, [_line("both", 1, FLOAT, 100, 100)])


def test_lines_without_their_entry_cannot_commit(engine: Engine) -> None:
    with _uow(engine) as uow:
        uow.session.execute(INSERT_LINE, [_line("orphan", 1, FLOAT, 100, 0), _line("orphan", 2, FEE_INCOME, 0, 100)])
        with pytest.raises(DBAPIError):
            uow.commit()
    with _uow(engine) as uow:
        assert uow.session.execute(text("SELECT count(*) FROM ledger_line")).scalar_one() == 0


def test_the_ledger_is_append_only(engine: Engine) -> None:
    posted = entry("e-2", DAY, "test", None, "", {FLOAT: 500, FEE_INCOME: -500})
    assert posted is not None
    with _uow(engine) as uow:
        ledger.post(uow.session, posted)
        uow.commit()
    for statement in (
        "UPDATE ledger_line SET debit = 600 WHERE entry_ref = 'e-2' AND line_no = 1",
        "DELETE FROM ledger_line WHERE entry_ref = 'e-2'",
        "UPDATE ledger_entry SET total = 1 WHERE entry_ref = 'e-2'",
        "DELETE FROM ledger_entry WHERE entry_ref = 'e-2'",
    ):
        with _uow(engine) as uow, pytest.raises(DBAPIError):
            uow.session.execute(text(statement))
    with _uow(engine) as uow, pytest.raises(DBAPIError):  # no line joins a posted entry
        uow.session.execute(INSERT_LINE, [_line("e-2", 3, FLOAT, 1, 0)])


A_RECORD = text(
    "INSERT INTO clearing_record (id, ingest_id, line_no, operator_id, role, txn_type, family, card_no, card_type, "
    "card_seq, amount, balance_before, term_id, term_seq, txn_date, txn_time, txn_epoch, tac, alg, key_ver, status, "
    "line_id, station_id, vehicle_id, ref, device_seq, tac_check, digest) VALUES (1, 1, 2, 'OP', 'primary', '06', 1, "
    "'0310000000000001', '01', 0, 100, 1000, '031000000101', 1, '20250303', '080000', 0, '00000000', '00', '01', "
    "'ok', '', '', '', '', 1, 'ok', 'x')"
)


def test_a_closed_day_takes_nothing_and_never_reopens(engine: Engine) -> None:
    with _uow(engine) as uow:
        uow.session.execute(A_RECORD)  # the verdict below is refused for its day, not for its record
        uow.session.execute(text("UPDATE clearing_day SET status = 'closed' WHERE day = :d"), {"d": DAY})
        uow.commit()
    late = entry("late", DAY, "test", None, "", {FLOAT: 1, FEE_INCOME: -1})
    assert late is not None
    with _uow(engine) as uow, pytest.raises(DBAPIError, match="closed"):
        ledger.post(uow.session, late)
    with _uow(engine) as uow, pytest.raises(DBAPIError, match="closed"):
        uow.session.execute(text("UPDATE clearing_day SET status = 'open' WHERE day = :d"), {"d": DAY})
    with _uow(engine) as uow, pytest.raises(DBAPIError, match="closed"):
        uow.session.execute(
            text(
                "INSERT INTO clearing_verdict (record_id, verdict_no, clearing_day, operator_id, class, code, late, "
                "amount) VALUES (1, 1, :d, 'OP', 'settled', 'ok', false, 0)"
            ),
            {"d": DAY},
        )


def test_an_entry_value_cannot_be_unbalanced() -> None:
    with pytest.raises(UnbalancedEntry):
        entry("x", DAY, "test", None, "", {FLOAT: 100, FEE_INCOME: -99})
    with pytest.raises(UnbalancedEntry):
        Entry("x", DAY, "test", None, "", (Line(FLOAT, 100, 0),))
    with pytest.raises(UnbalancedEntry):
        Entry("x", DAY, "test", None, "", (Line(FLOAT, 100, 0), Line(FEE_INCOME, 0, 50)))
    assert entry("x", DAY, "test", None, "", {FLOAT: 0}) is None
