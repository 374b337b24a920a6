"""Staff log-in, sessions, cookies and CSRF, accounts, rate limits on log-in (memory and Redis), the API schema;
SQLite, then PostgreSQL (the Redis test runs once)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from integration.api.staffkit import FAST_HASHER, PASSWORD, StaffWorld, staff_world
from services import Redis
from sqlalchemy import inspect, update

import api.models
from api.models import StaffAccount, StaffSession
from api.ratelimit import RateLimits, RedisRateLimiter, Rule
from api.staff_auth import create_staff, token_hash
from backoffice.db import Base, make_engine
from backoffice.errors import Conflict, InvalidInput
from backoffice.schema import alembic_config, upgrade

API_TABLES = {"api_staff", "api_sessions", "api_desks", "api_idempotency"}


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff and desks over a fresh database."""
    with staff_world(db_url) as opened:
        yield opened


def _table_of(diff: Any) -> str | None:
    if isinstance(diff, list):
        diff = diff[0]
    subject = diff[1]
    table = getattr(subject, "table", None)
    if table is not None:
        return str(table.name)
    name = getattr(subject, "name", None)
    return str(name) if name and hasattr(subject, "columns") else (str(diff[2]) if len(diff) > 2 else None)


def test_api_migrations_match_the_models_and_go_down_and_up(db_url: str) -> None:
    mapped = {m.local_table.name for m in Base.registry.mappers if m.class_.__module__ == api.models.__name__}
    assert mapped == API_TABLES
    upgrade(db_url, "api@head")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= API_TABLES
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [d for d in compare_metadata(context, Base.metadata) if _table_of(d) in API_TABLES]
        assert diffs == []
        command.downgrade(alembic_config(db_url), "api@base")
        with engine.connect() as conn:
            assert not API_TABLES & set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_login_me_logout(world: StaffWorld) -> None:
    response = world.login("clerk-a")
    assert response.status_code == 200
    body = response.json()
    assert body["token"].startswith("oc_") and body["token_type"] == "bearer"
    assert body["staff"] == {**body["staff"], "username": "clerk-a", "roles": ["counter"], "desk_id": "DESK-A"}
    assert "password_hash" not in body["staff"]
    cookie = response.headers["set-cookie"]
    assert (
        "onecard_session=" in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    # Only the token's SHA-256 is stored.
    with world.uow() as uow:
        stored = {row.token_hash for row in uow.session.query(StaffSession)}
    assert token_hash(body["token"]) in stored and body["token"] not in stored

    auth = {"Authorization": f"Bearer {body['token']}"}
    assert world.client.get("/auth/me", headers=auth).json()["username"] == "clerk-a"
    assert world.client.post("/auth/logout", headers=auth).json() == {"status": "logged_out"}
    after = world.client.get("/auth/me", headers=auth)
    assert after.status_code == 401 and after.json()["error"]["code"] == "unauthorized"

    wrong = world.login("clerk-a", "wrong password!!")
    unknown = world.login("nobody", "wrong password!!")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()  # no hint which part was wrong
    world.client.cookies.clear()
    assert world.client.get("/auth/me").status_code == 401
    assert world.client.get("/auth/me", headers={"Authorization": "Bearer oc_" + "A" * 43}).status_code == 401
    assert world.client.get("/auth/me", headers={"Authorization": "Bearer not-a-token"}).status_code == 401


def test_expiry_disabled_accounts_and_password_change(world: StaffWorld) -> None:
    token = world.token("clerk-a")
    with world.uow() as uow:
        uow.session.execute(
            update(StaffSession)
            .where(StaffSession.token_hash == token_hash(token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        uow.commit()
    expired = world.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    world.tokens.pop("clerk-a")

    # An admin disables clerk-b: their session stops at once, and they cannot log in.
    assert world.call("clerk-b", "GET", "/auth/me").status_code == 200
    disabled = world.call("admin", "PATCH", "/admin/staff/clerk-b", json={"active": False})
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    assert world.call("clerk-b", "GET", "/auth/me").status_code == 401
    assert world.login("clerk-b").status_code == 401
    # Admins cannot lock themselves out.
    assert world.call("admin", "PATCH", "/admin/staff/admin", json={"active": False}).status_code == 409

    # A password change ends the other sessions of the account, not this one.
    other = world.login("auditor").json()["token"]
    changed = world.call(
        "auditor", "POST", "/auth/password", json={"current_password": PASSWORD, "new_password": "a new long password"}
    )
    assert changed.status_code == 200
    assert world.call("auditor", "GET", "/auth/me").status_code == 200
    assert world.client.get("/auth/me", headers={"Authorization": f"Bearer {other}"}).status_code == 401
    assert world.login("auditor", "a new long password").status_code == 200
    bad = world.call(
        "auditor", "POST", "/auth/password", json={"current_password": "nope", "new_password": "another long one"}
    )
    assert bad.status_code == 403


def test_cookie_sessions_need_the_csrf_token_for_changes(world: StaffWorld) -> None:
    world.client.cookies.clear()
    login = world.login("clerk-a")
    csrf = login.json()["csrf_token"]
    assert world.client.get("/auth/me").status_code == 200  # the cookie alone reads
    refused = world.client.post("/auth/logout")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    assert world.client.post("/auth/logout", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert world.client.post("/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    world.client.cookies.clear()


def test_admin_manages_accounts_and_desks(world: StaffWorld) -> None:
    new = {"username": "clerk-c", "password": "long enough password", "roles": ["counter"], "desk_id": "DESK-C"}
    created = world.call("admin", "POST", "/admin/staff", json=new)
    assert created.status_code == 201 and created.json()["roles"] == ["counter"]
    assert world.call("admin", "POST", "/admin/staff", json=new).status_code == 409
    # Mass assignment: fields the schema does not name are refused (no "active", no "password_hash").
    for extra in ({"active": False}, {"password_hash": "x"}, {"staff_id": 1}):
        sneaky = world.call("admin", "POST", "/admin/staff", json={**new, "username": "clerk-d", **extra})
        assert sneaky.status_code == 422, extra
    short = world.call("admin", "POST", "/admin/staff", json={**new, "username": "clerk-e", "password": "short"})
    assert short.status_code == 422
    assert (
        world.call("admin", "POST", "/admin/staff", json={**new, "username": "x", "roles": ["root"]}).status_code == 422
    )

    desk = world.call(
        "admin", "PUT", "/admin/desks/DESK-C", json={"reader": "Virtual PCD 00 00", "term_id": "031000009003"}
    )
    assert desk.status_code == 200 and desk.json()["term_id"] == "031000009003"
    clash = world.call("admin", "PUT", "/admin/desks/DESK-D", json={"reader": "r", "term_id": "031000009003"})
    assert clash.status_code == 409
    assert [d["desk_id"] for d in world.call("admin", "GET", "/admin/desks").json()["desks"]] == [
        "DESK-A",
        "DESK-B",
        "DESK-C",
    ]
    moved = world.call(
        "admin", "PATCH", "/admin/staff/clerk-c", json={"desk_id": None, "roles": ["counter", "auditor"]}
    )
    assert moved.json()["desk_id"] is None and moved.json()["roles"] == ["auditor", "counter"]
    assert world.call("admin", "GET", "/admin/staff/clerk-c").json()["desk_id"] is None
    assert world.call("admin", "GET", "/admin/staff/nobody").status_code == 404
    assert len(world.call("admin", "GET", "/admin/staff").json()["staff"]) == 7
    assert world.login("clerk-c", "long enough password").status_code == 200

    with world.uow() as uow, pytest.raises(InvalidInput):
        create_staff(uow, "Bad Name", PASSWORD, ["counter"], hasher=FAST_HASHER)
    with world.uow() as uow, pytest.raises(Conflict):
        create_staff(uow, "admin", PASSWORD, ["admin"], hasher=FAST_HASHER)
    with world.uow() as uow:
        hashes = [a.password_hash for a in uow.session.query(StaffAccount)]
    assert all(h.startswith("$argon2id$") for h in hashes)


def test_login_is_rate_limited(world: StaffWorld) -> None:
    world.state.rate_limits = RateLimits(login_per_user=Rule("login_user", 3, 0.01))
    for _ in range(3):
        assert world.login("finance", "wrong password!!").status_code == 401
    limited = world.login("finance")  # even the right password waits now
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert world.login("auditor").status_code == 200  # another account is not affected
    world.state.rate_limits = RateLimits(login_per_client=Rule("login_client", 1, 0.01))
    assert world.login("admin").status_code == 200
    assert world.login("admin").status_code == 429  # one client address, whatever the account


def test_login_rate_limit_in_redis(tmp_path: Any, redis_server: Redis) -> None:
    with staff_world(f"sqlite:///{tmp_path / 'r.db'}") as world:
        world.state.limiter = RedisRateLimiter(redis_server.url, prefix=f"test:{tmp_path.name}:")
        world.state.rate_limits = RateLimits(login_per_user=Rule("login_user", 2, 0.01))
        assert world.login("finance").status_code == 200
        assert world.login("finance").status_code == 200
        assert world.login("finance").status_code == 429
        # A second application instance (another worker) shares the bucket through Redis.
        other = RedisRateLimiter(redis_server.url, prefix=f"test:{tmp_path.name}:")
        assert other.take(Rule("login_user", 2, 0.01), "finance") > 0
        assert world.client.get("/ready").json() == {"status": "ready"}
    down = RedisRateLimiter("redis://127.0.0.1:1/0")
    assert down.take(Rule("x", 1, 1.0), "k") == 0.0 and down.take(Rule("x", 1, 1.0), "k") > 0  # memory fallback
    assert not down.ping()
