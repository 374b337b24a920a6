"""Application state and request dependencies: one unit of work per request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.errors import OnecardError
from backoffice.settings import Settings

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from api.counter_service import CounterContext
    from api.desks import DeskReaders
    from api.devices import HotlistSource
    from api.observability import ApiMetrics
    from api.ratelimit import RateLimiter, RateLimits


class ServiceUnavailable(OnecardError):
    """A dependency (database, Redis) does not answer (503)."""

    code = "unavailable"
    http_status = 503


def _engine_options(settings: Settings) -> dict[str, Any]:
    """A PostgreSQL pool sized for the thread pool that runs the endpoints (40 threads, at most two connections
    each at a time): 10 kept open, up to 45. No pre-ping round trip per checkout unless the settings ask for it
    (``ONECARD_DB_PRE_PING=1``): after a database restart, a request on a dropped connection fails once and
    the pool replaces its connections; clients retry (money with the same Idempotency-Key)."""
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        pre_ping = settings.db_pre_ping if settings.db_pre_ping is not None else False
        return {"pool_size": 10, "max_overflow": 35, "pool_timeout": 30, "pre_ping": pre_ping}
    return {}


@dataclass
class AppState:
    """What the application holds for its lifetime."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    hotlist_source: HotlistSource | None = None
    """Where ``GET /devices/hotlist`` reads the hotlist (issuance's); ``None``: an empty hotlist."""
    counter: CounterContext | None = None
    """Keys, personal-data vault and issuer profile of the counter; built on first use from the environment
    (:meth:`CounterContext.from_environment`) unless set (tests, the bench)."""
    desk_readers: DeskReaders = field(default=None)  # type: ignore[assignment]
    """How requests reach the card in a desk's reader (PC/SC by default; tests put simulated cards here)."""
    limiter: RateLimiter = field(default=None)  # type: ignore[assignment]
    rate_limits: RateLimits = field(default=None)  # type: ignore[assignment]
    password_hasher: PasswordHasher = field(default=None)  # type: ignore[assignment]
    session_ttl: timedelta = timedelta(hours=8)
    metrics: ApiMetrics = field(default=None)  # type: ignore[assignment]
    _counter_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> AppState:
        """Engine, session factory, and the defaults: issuance's hotlist, PC/SC desk readers, rate limits
        (Redis when configured), argon2id, metrics."""
        from api.desks import PcscDeskReaders
        from api.hotlist import IssuanceHotlist
        from api.observability import ApiMetrics
        from api.ratelimit import RateLimits, limiter_for
        from api.staff_auth import DEFAULT_HASHER, SESSION_TTL

        engine = make_engine(settings.database_url, **_engine_options(settings))
        return cls(
            settings,
            engine,
            session_factory(engine),
            hotlist_source=IssuanceHotlist(),
            desk_readers=PcscDeskReaders(),
            limiter=limiter_for(settings.redis_url),
            rate_limits=RateLimits.from_environment(),
            password_hasher=DEFAULT_HASHER,
            session_ttl=SESSION_TTL,
            metrics=ApiMetrics(engine),
        )

    def new_uow(self) -> UnitOfWork:
        """A new (not yet entered) unit of work on the application's database."""
        return UnitOfWork(self.sessions)

    def counter_context(self) -> CounterContext:
        """The counter's context, built from the environment on first use (503 when it cannot be)."""
        if self.counter is None:
            from api.counter_service import CounterContext

            with self._counter_lock:
                if self.counter is None:
                    self.counter = CounterContext.from_environment(self.settings)
        return self.counter

    def check_database(self) -> None:
        """Raise :class:`ServiceUnavailable` when the database does not answer."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise ServiceUnavailable("the database does not answer") from exc

    def check_redis(self) -> None:
        """Raise :class:`ServiceUnavailable` when Redis is configured and does not answer."""
        ping: Callable[[], bool] | None = getattr(self.limiter, "ping", None)
        if self.settings.redis_url and ping is not None and not ping():
            raise ServiceUnavailable("Redis does not answer")

    def routers(self) -> list[APIRouter]:
        """Every router of the application (modules register here as they are built)."""
        from api import counter, devices, finance_routes, staff
        from api.web import pages as web_pages

        routers: list[APIRouter] = [
            devices.router,
            staff.auth_router,
            staff.admin_router,
            counter.router,
            finance_routes.router,
            web_pages.router,
        ]
        return routers


def get_state(request: Request) -> AppState:
    """The application's state."""
    state: AppState = request.app.state.onecard
    return state


def unit_of_work(request: Request) -> Iterator[UnitOfWork]:
    """One unit of work per request; the endpoint commits (once) through the service it calls."""
    with UnitOfWork(get_state(request).sessions) as uow:
        yield uow
