"""Application state and request dependencies: one unit of work per request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.errors import OnecardError
from backoffice.settings import Settings

if TYPE_CHECKING:
    from api.devices import HotlistSource


class ServiceUnavailable(OnecardError):
    """A dependency (database, Redis) does not answer (503)."""

    code = "unavailable"
    http_status = 503


@dataclass
class AppState:
    """What the application holds for its lifetime."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    hotlist_source: HotlistSource | None = None
    """Where ``GET /devices/hotlist`` reads the hotlist (issuance's); ``None``: an empty hotlist."""

    @classmethod
    def create(cls, settings: Settings) -> AppState:
        """Engine and session factory for the configured database."""
        engine = make_engine(settings.database_url)
        return cls(settings, engine, session_factory(engine))

    def check_database(self) -> None:
        """Raise :class:`ServiceUnavailable` when the database does not answer."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise ServiceUnavailable("the database does not answer") from exc

    def routers(self) -> list[APIRouter]:
        """Every router of the application (modules register here as they are built)."""
        from api import devices

        routers: list[APIRouter] = [devices.router]
        return routers


def get_state(request: Request) -> AppState:
    """The application's state."""
    state: AppState = request.app.state.onecard
    return state


def unit_of_work(request: Request) -> Iterator[UnitOfWork]:
    """One unit of work per request; the endpoint commits (once) through the service it calls."""
    with UnitOfWork(get_state(request).sessions) as uow:
        yield uow
