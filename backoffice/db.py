"""The database: one declarative base, engines for SQLite and PostgreSQL, and the unit of work.

A unit of work is one transaction per request, command or task; it commits in exactly one place
(:meth:`UnitOfWork.commit`) and runs the work queued with :meth:`UnitOfWork.after_commit` (Celery sends)
only after the commit succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Self

from sqlalchemy import BigInteger, Engine, Integer, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

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


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite with WAL, foreign keys and full sync; PostgreSQL through psycopg 3."""
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
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


class UnitOfWork:
    """One transaction: ``with UnitOfWork(factory) as uow: …; uow.commit()``.

    Leaving the block without :meth:`commit` rolls back. Callbacks queued with :meth:`after_commit`
    run after a successful commit, in order (that is where Celery tasks are sent).
    """

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._factory = session_factory
        self._after: list[Callable[[], None]] = []
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        """The session of this unit of work."""
        if self._session is None:
            raise RuntimeError("the unit of work is not open")
        return self._session

    def __enter__(self) -> Self:
        self._session = self._factory()
        self._after = []
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self.session
        try:
            session.rollback()
        finally:
            session.close()
            self._session = None

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed."""
        self._after.append(callback)

    def commit(self) -> None:
        """Commit the transaction, then run the after-commit callbacks."""
        self.session.commit()
        callbacks, self._after = self._after, []
        for callback in callbacks:
            callback()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that does not expire objects on commit (results outlive their unit of work)."""
    return sessionmaker(engine, expire_on_commit=False)
