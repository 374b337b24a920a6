"""The OpenAPI document is complete: every operation documents its errors in the one error format, staff
operations their roles and security, device operations their signature headers, loads their Idempotency-Key."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_app
from backoffice.settings import Settings

PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("POST", "/auth/login")}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = create_app(Settings(database_url="sqlite://"))
    doc: dict[str, Any] = app.openapi()
    app.state.onecard.engine.dispose()
    return doc


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in document["paths"].items() for m, op in ops.items()]


def test_every_error_is_the_one_error_body(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = document["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error"]
    for method, path, operation in _operations(document):
        assert operation.get("description") or operation.get("summary"), (method, path)
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in operation["responses"], (method, path)


def test_staff_operations_name_their_roles_and_security(document: dict[str, Any]) -> None:
    staff_operations = 0
    for method, path, operation in _operations(document):
        if path.startswith("/devices/") or (method, path) in PUBLIC:
            assert not operation.get("x-roles"), (method, path)
            continue
        staff_operations += 1
        assert operation["x-roles"], (method, path)
        assert set(operation["x-roles"]) <= {"counter", "supervisor", "finance", "auditor", "admin"}
        assert {"bearer", "cookie"} <= {name for entry in operation["security"] for name in entry}, (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
    assert staff_operations >= 34
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["cookie"]["in"] == "cookie"


def test_device_signatures_and_idempotency_keys_are_documented(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        if path.startswith("/devices/"):
            assert {"X-Device-Id", "X-Timestamp", "X-Signature"} <= names, (method, path)
            assert "401" in operation["responses"]
    batches = {p["name"] for p in document["paths"]["/devices/batches"]["post"]["parameters"]}
    assert "X-Batch-Signature" in batches
    load = document["paths"]["/counter/cards/{card_no}/loads"]["post"]
    key = next(p for p in load["parameters"] if p["name"] == "Idempotency-Key")
    assert key["required"] and key["in"] == "header"
    assert load["x-roles"] == ["counter", "supervisor"] and "Idempotent-Replayed" in load["responses"]["201"]["headers"]
    body = document["components"]["schemas"]["LoadIn"]
    assert body["additionalProperties"] is False and body["properties"]["amount"]["maximum"] == 500_000
