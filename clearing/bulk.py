"""Set-wise database I/O for clearing: PostgreSQL COPY, SQLite batched inserts, temporary tables.

Clearing never inserts one ORM object per record: rows go in through these helpers, inside the unit of work's
transaction (the DBAPI connection of the session).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

Row = Sequence[Any]
SQLITE_CHUNK = 5_000


def dialect(session: Session) -> str:
    """``postgresql`` or ``sqlite``."""
    return session.get_bind().dialect.name


def is_postgres(session: Session) -> bool:
    """Whether the session talks to PostgreSQL."""
    return dialect(session) == "postgresql"


def driver_connection(session: Session) -> Any:
    """The DBAPI connection under the session's transaction (psycopg or sqlite3)."""
    return session.connection().connection.driver_connection


def insert_rows(session: Session, table: str, columns: Sequence[str], rows: Iterable[Row]) -> None:
    """Insert rows: ``COPY … FROM STDIN`` on PostgreSQL, ``executemany`` in chunks on SQLite."""
    names = ", ".join(columns)
    raw = driver_connection(session)
    if is_postgres(session):
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    statement = f"INSERT INTO {table} ({names}) VALUES ({marks})"
    cursor = raw.cursor()
    try:
        chunk: list[Row] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= SQLITE_CHUNK:
                cursor.executemany(statement, chunk)
                chunk = []
        if chunk:
            cursor.executemany(statement, chunk)
    finally:
        cursor.close()


def copy_csv(session: Session, table: str, columns: Sequence[str], chunks: Iterable[str]) -> None:
    """PostgreSQL only: ``COPY … FROM STDIN (FORMAT csv)`` of ready-made CSV text (the fastest path)."""
    raw = driver_connection(session)
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
        for chunk in chunks:
            copy.write(chunk)


_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def fetch_rows(session: Session, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Every row of a query as plain tuples, straight from the DBAPI cursor (no Row objects): ``:name`` params."""
    session.flush()
    raw = driver_connection(session)
    if is_postgres(session):
        statement = _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        with raw.cursor() as cursor:
            cursor.execute(statement, params or {})
            return cursor.fetchall() if cursor.description is not None else []
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params or {})
        return cursor.fetchall() if cursor.description is not None else []
    finally:
        cursor.close()


def temp_table(session: Session, name: str, columns: str) -> None:
    """A temporary table for this transaction (PostgreSQL: dropped at commit; SQLite: replaced when reused)."""
    if is_postgres(session):
        session.execute(text(f"CREATE TEMPORARY TABLE {name} ({columns}) ON COMMIT DROP"))
    else:
        session.execute(text(f"DROP TABLE IF EXISTS temp.{name}"))
        session.execute(text(f"CREATE TEMPORARY TABLE {name} ({columns})"))


def analyze(session: Session, table: str) -> None:
    """PostgreSQL: refresh the planner's statistics of a table just filled (temporary tables have none)."""
    if is_postgres(session):
        session.execute(text(f"ANALYZE {table}"))


def tune_transaction(session: Session) -> None:
    """PostgreSQL: no JIT for this transaction (its compile time exceeds the gain on clearing's queries)."""
    if is_postgres(session):
        session.execute(text("SET LOCAL jit = off"))


def drop_temp_table(session: Session, name: str) -> None:
    """Drop a temporary table now (PostgreSQL drops them at commit anyway)."""
    if is_postgres(session):
        session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    else:
        session.execute(text(f"DROP TABLE IF EXISTS temp.{name}"))
