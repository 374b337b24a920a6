"""The database: one declarative base, engines for SQLite and PostgreSQL, and the unit of work.

A unit of work is one transaction per request, command or task; it commits in exactly one place
(:meth:`UnitOfWork.commit`) and runs the work queued with :meth:`UnitOfWork.after_commit` (Celery sends)
only after the commit succeeded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar, Self

from sqlalchemy import BigInteger, Connection, Engine, Integer, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.expression import ClauseElement, Executable

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """The declarative base of every back-office table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {int: BigInteger().with_variant(Integer, "sqlite")}


def make_engine(url: str, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite with WAL, foreign keys and full sync; PostgreSQL through psycopg 3.

    ``pre_ping`` (PostgreSQL) tests each pooled connection with a round trip when it is checked out, so that a
    connection the server dropped (restart, idle timeout) is replaced before use. It costs one round trip per
    checkout; a caller whose requests may simply fail once after a database restart (the API: clients retry, with
    the same Idempotency-Key for money) turns it off (setting ``ONECARD_DB_PRE_PING``). A dropped connection is
    then noticed by the statement that fails on it, and the pool replaces every connection of that generation.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(parsed, pool_pre_ping=pre_ping, **kwargs)


class UnitOfWork:
    """One transaction: ``with UnitOfWork(factory) as uow: …; uow.commit()``.

    Leaving the block without :meth:`commit` rolls back. Callbacks queued with :meth:`after_commit`
    run after a successful commit, in order (that is where Celery tasks are sent).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._factory = session_factory
        self._after: list[Callable[[], None]] = []
        self._session: Session | None = None
        self._open = False

    @property
    def session(self) -> Session:
        """The session of this unit of work (made on first use: a unit that only reads through
        :meth:`autocommit` never makes one)."""
        if not self._open:
            raise RuntimeError("the unit of work is not open")
        if self._session is None:
            self._session = self._factory()
        return self._session

    def __enter__(self) -> Self:
        self._open = True
        self._session = None
        self._after = []
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session, self._open = self._session, None, False
        if session is None:
            return
        try:
            session.rollback()
        finally:
            session.close()

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection of this unit's engine outside its transaction, each statement on its own (autocommit):
        for a single read that needs no transaction (one round trip: no ``BEGIN`` / ``ROLLBACK`` around it).
        What it reads is not part of the unit's transaction. A unit whose session factory is not bound to an engine
        (bound to a connection, say) reads in its own transaction instead."""
        bind = self._factory.kw.get("bind")
        if not isinstance(bind, Engine):
            yield self.session.connection()
            return
        with bind.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed."""
        self._after.append(callback)

    def commit(self) -> None:
        """Commit the transaction, then run the after-commit callbacks."""
        self.session.commit()
        callbacks, self._after = self._after, []
        for callback in callbacks:
            callback()


_PSYCOPG_SQL: dict[tuple[int, tuple[str, ...]], tuple[Executable, Compiled]] = {}


def run_statement(conn: Connection, statement: Executable, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    """Run a statement built once (a module constant) on ``conn``: its rows (as tuples) and its row count.

    On PostgreSQL through psycopg the statement is compiled once per set of parameter names and sent straight
    to the driver's cursor, skipping SQLAlchemy's per-execution work (execution context, result set-up), which
    costs more than the round trip on the hot paths that use this. Values go to the driver as given (psycopg
    adapts timezone-aware datetimes and ``str`` enumerations), and rows come back as the driver's tuples: the
    caller converts what its column types would have (enumerations). Elsewhere (SQLite) this is
    ``conn.execute``. Only for statements whose SQL does not depend on the values (no ``IN`` lists, no
    ``None`` comparisons), and only inside the transaction ``conn`` has begun.
    """
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
        result = conn.execute(statement, params)
        rows = [tuple(row) for row in result] if result.returns_rows else []
        return rows, result.rowcount if not result.returns_rows else len(rows)
    key = (id(statement), tuple(sorted(params)))
    cached = _PSYCOPG_SQL.get(key)
    if cached is None or cached[0] is not statement:
        if not isinstance(statement, ClauseElement):
            raise TypeError("run_statement runs SQL expression statements")
        cached = (statement, statement.compile(dialect=conn.dialect, column_keys=sorted(params)))
        _PSYCOPG_SQL[key] = cached
    compiled = cached[1]
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(compiled.string, compiled.construct_params(params))
        rows = [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []
        return rows, cursor.rowcount
    finally:
        cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that does not expire objects on commit (results outlive their unit of work)."""
    return sessionmaker(engine, expire_on_commit=False)
