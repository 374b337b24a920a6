"""Pure parts of the staff API: roles and acting roles, tokens and CSRF, the password hash, rate-limit buckets,
idempotency hashing, JSON logs, request ids, the error format and metrics (no database needed)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import Type
from fastapi.testclient import TestClient

from api.app import create_app
from api.counter_service import CounterContext, CounterUnavailable
from api.idempotency import derived_request_id, request_hash
from api.observability import JsonLogFormatter, request_id_var
from api.ratelimit import MemoryRateLimiter, RateLimits, Rule, enforce
from api.staff_auth import (
    DEFAULT_HASHER,
    ISSUANCE_ROLE,
    ApiRole,
    Principal,
    acting_staff,
    check_csrf,
    csrf_token,
    roles_for,
    token_hash,
)
from backoffice.errors import Forbidden, RateLimited
from backoffice.settings import Settings
from issuance.access import PERMISSIONS, Action, Role


def _principal(*roles: str) -> Principal:
    return Principal(1, "someone", frozenset(ApiRole(r) for r in roles), "DESK-A", 1)


def test_roles_follow_issuance_access() -> None:
    for action, allowed in PERMISSIONS.items():
        assert {ISSUANCE_ROLE[r] for r in roles_for(action)} == allowed - {Role.SYSTEM}
    assert ApiRole.ADMIN not in ISSUANCE_ROLE  # admins take no counter action
    assert roles_for(Action.LOAD) == {ApiRole.COUNTER, ApiRole.SUPERVISOR}
    assert roles_for(Action.REFUND_CARD) == {ApiRole.SUPERVISOR}


def test_acting_staff_picks_a_permitted_role() -> None:
    assert acting_staff(_principal("counter"), Action.LOAD).role is Role.CLERK
    assert acting_staff(_principal("counter", "supervisor"), Action.REFUND_CARD).role is Role.SUPERVISOR
    with pytest.raises(Forbidden):
        acting_staff(_principal("auditor", "finance"), Action.LOAD)
    with pytest.raises(Forbidden):
        acting_staff(_principal("admin"), Action.VIEW_RESIDENT)
    both = _principal("counter", "auditor")
    assert acting_staff(both, Action.VIEW_RESIDENT, unmasked=False).role is Role.CLERK
    assert acting_staff(both, Action.VIEW_RESIDENT, unmasked=True).role is Role.AUDITOR
    with pytest.raises(Forbidden):
        acting_staff(_principal("counter", "finance"), Action.VIEW_RESIDENT, unmasked=True)
    assert acting_staff(_principal("auditor"), Action.VIEW_RESIDENT, unmasked=False).role is Role.AUDITOR


def test_tokens_csrf_and_the_password_hash() -> None:
    token = "oc_" + "A" * 43
    assert len(token_hash(token)) == 64 and token_hash(token) != token
    assert csrf_token(token) != token_hash(token)
    check_csrf(token, csrf_token(token))
    with pytest.raises(Forbidden):
        check_csrf(token, None)
    with pytest.raises(Forbidden):
        check_csrf(token, csrf_token("oc_" + "B" * 43))
    assert DEFAULT_HASHER.type is Type.ID
    assert (DEFAULT_HASHER.time_cost, DEFAULT_HASHER.memory_cost, DEFAULT_HASHER.parallelism) == (3, 65536, 4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_token_bucket() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    rule = Rule("login_user", 3, 0.5)
    assert [limiter.take(rule, "a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(rule, "a") == pytest.approx(2.0)
    assert limiter.take(rule, "b") == 0.0  # buckets are per key
    clock.now += 2.0
    assert limiter.take(rule, "a") == 0.0
    with pytest.raises(RateLimited) as refused:
        enforce(limiter, rule, "a")
    assert refused.value.details["retry_after"] == 2
    assert Rule.parse("x", "10/0.2") == Rule("x", 10, 0.2)
    with pytest.raises(ValueError):
        Rule.parse("x", "ten")
    with pytest.raises(ValueError):
        Rule("x", 0, 1.0)
    limits = RateLimits.from_environment({"ONECARD_RATE_MONEY": "5/1"})
    assert limits.money == Rule("money", 5, 1.0) and limits.login_per_user == RateLimits().login_per_user


def test_idempotency_hashes() -> None:
    first = request_hash("counter.load", {"card_no": "1", "amount": 5, "desk_id": "A"})
    assert first == request_hash("counter.load", {"desk_id": "A", "amount": 5, "card_no": "1"})
    assert first != request_hash("counter.load", {"card_no": "1", "amount": 6, "desk_id": "A"})
    assert first != request_hash("other", {"card_no": "1", "amount": 5, "desk_id": "A"})
    request_id = derived_request_id("api", 7, "k" * 128)
    assert len(request_id) <= 40 and request_id == derived_request_id("api", 7, "k" * 128)
    assert request_id != derived_request_id("api", 8, "k" * 128)


def test_json_log_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("onecard.test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = request_id_var.set("req-123")
    try:
        logger.info("hello %s", "world", extra={"staff": "clerk-a"})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "hello world" and line["request_id"] == "req-123" and line["staff"] == "clerk-a"
    assert line["level"] == "info" and line["logger"] == "onecard.test.jsonlog" and line["ts"].endswith("+00:00")


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(database_url="sqlite://"))
    with TestClient(app) as opened:
        yield opened
    app.state.onecard.engine.dispose()


def test_request_ids_errors_and_metrics(client: TestClient) -> None:
    health = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert health.json() == {"status": "ok"} and health.headers["X-Request-ID"] == "abc-123"
    fresh = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert fresh.headers["X-Request-ID"] != "bad id with spaces" and len(fresh.headers["X-Request-ID"]) == 32
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = client.delete("/health")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    not_json = client.post("/auth/login", content=b"\xff{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["error"]["code"] == "invalid_input"
    anonymous = client.get("/auth/me")
    assert anonymous.status_code == 401 and set(anonymous.json()["error"]) == {"code", "message", "details"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'onecard_http_requests_total{method="GET",route="/health",status="200"} 2.0' in text
    assert 'route="unmatched"' in text and "onecard_http_request_duration_seconds_bucket" in text
    # Another application instance has its own registry.
    other = create_app(Settings(database_url="sqlite://"))
    assert 'route="/health"' not in other.state.onecard.metrics.render().decode()


def test_counter_context_from_the_environment(tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", keystore=str(tmp_path / "keys.json"))
    with pytest.raises(CounterUnavailable):
        CounterContext.from_environment(settings, {})
    with pytest.raises(CounterUnavailable):
        CounterContext.from_environment(settings, {"ONECARD_PII_KEY": "zz", "ONECARD_PII_LOOKUP_KEY": "00" * 32})
    env = {"ONECARD_PII_KEY": "11" * 32, "ONECARD_PII_LOOKUP_KEY": "22" * 32, "ONECARD_KEYSTORE_KEY": "33" * 32}
    ctx = CounterContext.from_environment(settings, env)
    assert ctx.issuer is None and ctx.vault.lookup_hash("110101199003071233") != "110101199003071233"
    issuing = CounterContext.from_environment(settings, {**env, "ONECARD_ISSUER_ID": "0310000000000000"})
    assert issuing.issuer is not None and issuing.issuer.issuer_id == bytes.fromhex("0310000000000000")
