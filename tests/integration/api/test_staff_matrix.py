"""Role x endpoint x someone-else's-object: no unauthorised 2xx (SQLite, then PostgreSQL).

Every staff operation of the OpenAPI document is called by every identity (anonymous, and staff of each role,
at their own or another desk) with a real object; whoever's roles are not in the operation's ``x-roles`` must
get 401 (anonymous) or 403. Then the object checks: another desk's reader, another clerk's Idempotency-Key, the
maker-checker and own-session rules.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from integration.api.staffkit import ID_NUMBERS, STAFF, StaffWorld, staff_world

from api.staff_auth import ApiRole

IDENTITIES: list[str | None] = [None, *STAFF]
_names = itertools.count(1)


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff and desks over a fresh database."""
    with staff_world(db_url) as opened:
        yield opened


def _requests(world: StaffWorld, card_no: str, resident_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    """A request for every staff operation, naming real objects (desk A, its card, a resident)."""
    load = {"json": {"desk_id": "DESK-A", "amount": 100}}
    return {
        ("GET", "/auth/me"): {},
        ("POST", "/auth/password"): {"json": {"current_password": "not it at all", "new_password": "x" * 12}},
        ("POST", "/auth/logout"): {},
        ("GET", "/admin/staff"): {},
        ("POST", "/admin/staff"): {
            "json": {"username": f"new-{next(_names)}", "password": "p" * 12, "roles": ["admin"]}
        },
        ("GET", "/admin/staff/{username}"): {"path": {"username": "clerk-a"}},
        ("PATCH", "/admin/staff/{username}"): {"path": {"username": "auditor"}, "json": {"active": True}},
        ("PUT", "/admin/desks/{desk_id}"): {
            "path": {"desk_id": "DESK-A"},
            "json": {"reader": "Evil reader", "term_id": "031000009001"},
        },
        ("GET", "/admin/desks"): {},
        ("POST", "/counter/residents"): {
            "json": {"name": "LI SI", "id_number": ID_NUMBERS[1], "phone": "13900000000", "address": "2 Road"}
        },
        ("POST", "/counter/residents/search"): {"json": {"id_number": ID_NUMBERS[0]}, "query": {"unmasked": "true"}},
        ("GET", "/counter/residents/{resident_id}"): {
            "path": {"resident_id": resident_id},
            "query": {"unmasked": "true"},
        },
        ("PUT", "/counter/residents/{resident_id}/social-security"): {
            "path": {"resident_id": resident_id},
            "json": {"ss_number": ID_NUMBERS[0], "schemes": 1, "agency_code": "310000"},
        },
        ("GET", "/counter/residents/{resident_id}/social-security"): {"path": {"resident_id": resident_id}},
        ("POST", "/counter/cards"): {"json": {"city_code": "0310"}},
        ("GET", "/counter/cards/{card_no}"): {"path": {"card_no": card_no}},
        ("GET", "/counter/desks/{desk_id}/card"): {"path": {"desk_id": "DESK-A"}},
        ("POST", "/counter/cards/{card_no}/issue"): {
            "path": {"card_no": card_no},
            "json": {"desk_id": "DESK-A", "pin": "1234"},
        },
        ("POST", "/counter/cards/{card_no}/loads"): {"path": {"card_no": card_no}, **load, "idempotent": True},
        ("POST", "/counter/cards/{card_no}/loss"): {"path": {"card_no": card_no}, "json": {}},
        ("POST", "/counter/cards/{card_no}/replacement"): {"path": {"card_no": card_no}},
        ("POST", "/counter/cards/{card_no}/pin-reset"): {
            "path": {"card_no": card_no},
            "json": {"desk_id": "DESK-A", "new_pin": "2468"},
        },
        ("POST", "/counter/cards/{card_no}/refund"): {"path": {"card_no": card_no}, "json": {"desk_id": "DESK-A"}},
        ("POST", "/counter/settlements/{settlement_id}/payout"): {"path": {"settlement_id": 1}},
        ("POST", "/counter/cards/{card_no}/block"): {"path": {"card_no": card_no}, "json": {"desk_id": "DESK-A"}},
        ("POST", "/counter/cards/{card_no}/unblock"): {"path": {"card_no": card_no}, "json": {"desk_id": "DESK-A"}},
        ("POST", "/counter/cards/{card_no}/cancel"): {"path": {"card_no": card_no}, "json": {"desk_id": "DESK-A"}},
        ("POST", "/counter/cards/{card_no}/activate"): {"path": {"card_no": card_no}},
        ("PATCH", "/counter/cards/{card_no}/cardholder"): {
            "path": {"card_no": card_no},
            "json": {"desk_id": "DESK-A", "address": "3 Renmin Road"},
        },
        ("POST", "/counter/cards/{card_no}/loads/resolution"): {
            "path": {"card_no": card_no},
            "json": {"desk_id": "DESK-A"},
        },
        ("POST", "/counter/settlements/{settlement_id}/collection"): {
            "path": {"settlement_id": 1},
            "json": {"desk_id": "DESK-A"},
        },
        ("POST", "/finance/clearing-runs"): {"json": {"business_date": "2025-03-01"}},
        ("GET", "/finance/clearing-runs"): {},
        ("GET", "/finance/clearing-runs/{run_id}"): {"path": {"run_id": 1}},
        ("GET", "/finance/clearing-runs/{run_id}/result"): {"path": {"run_id": 1}},
        ("GET", "/finance/statements"): {"query": {"date": "2025-03-01"}},
        ("GET", "/finance/exceptions"): {},
        ("GET", "/finance/exceptions/{exception_id}"): {"path": {"exception_id": 1}},
        ("POST", "/finance/exceptions/{exception_id}/resolution"): {
            "path": {"exception_id": 1},
            "json": {"action": "accept", "note": "ok"},
        },
        ("POST", "/finance/exceptions/{exception_id}/decision"): {
            "path": {"exception_id": 1},
            "json": {"approve": True},
        },
        ("GET", "/finance/reports/{business_date}"): {"path": {"business_date": "2025-03-01"}},
        ("GET", "/finance/reconciliation"): {"query": {"date": "2025-03-01"}},
    }


def _send(world: StaffWorld, who: str | None, method: str, template: str, spec: dict[str, Any]) -> int:
    path = template.format(**spec.get("path", {}))
    headers = {"Idempotency-Key": uuid.uuid4().hex} if spec.get("idempotent") else {}
    response = world.call(who, method, path, params=spec.get("query"), json=spec.get("json"), headers=headers)
    if (method, template) == ("POST", "/auth/logout") and who is not None:
        world.tokens.pop(who, None)  # that session has ended
    return response.status_code


def test_no_unauthorised_2xx(world: StaffWorld) -> None:
    card_no, _chip = world.new_card(0)
    resident_id = world.call("clerk-a", "GET", f"/counter/cards/{card_no}").json()["resident_id"]
    requests = _requests(world, card_no, resident_id)
    operations = {
        (method.upper(), path): op.get("x-roles")
        for path, ops in world.app.openapi()["paths"].items()
        for method, op in ops.items()
        if op.get("x-roles")
    }
    assert set(operations) == set(requests), "every staff operation is in the matrix"
    seen: dict[tuple[str, str], dict[str | None, int]] = {}
    for (method, template), allowed in operations.items():
        for who in IDENTITIES:
            roles = set() if who is None else set(STAFF[who][0])
            status = _send(world, who, method, template, requests[(method, template)])
            seen.setdefault((method, template), {})[who] = status
            if who is None:
                assert status == 401, (method, template, who, status)
            elif roles.isdisjoint(allowed):
                assert status == 403, (method, template, who, status)
            else:
                assert status < 500 or status == 501, (method, template, who, status)
    # Authorised calls do get through (the matrix is not vacuous): a sample of 2xx.
    assert seen[("GET", "/counter/cards/{card_no}")]["auditor"] == 200
    assert seen[("POST", "/counter/cards/{card_no}/loads")]["clerk-a"] == 201
    assert seen[("GET", "/admin/desks")]["admin"] == 200
    assert seen[("POST", "/finance/clearing-runs")]["finance"] == 501
    assert seen[("GET", "/finance/exceptions/{exception_id}")]["super-a"] == 501  # the checker gets through
    assert seen[("POST", "/counter/cards/{card_no}/loads/resolution")]["clerk-a"] == 200


def test_someone_elses_objects(world: StaffWorld) -> None:
    card_a, chip_a = world.new_card(0, "DESK-A", "clerk-a")
    card_b, chip_b = world.new_card(1, "DESK-B", "clerk-b")
    # Another desk's reader: refused for every card operation, even with the right card in it.
    for as_, desk in (("clerk-b", "DESK-A"), ("clerk-a", "DESK-B")):
        card = card_a if desk == "DESK-A" else card_b
        assert world.load(card, 100, desk=desk, as_=as_).status_code == 403
        assert world.call(as_, "GET", f"/counter/desks/{desk}/card").status_code == 403
        reset = {"desk_id": desk, "new_pin": "2468"}
        assert world.call(as_, "POST", f"/counter/cards/{card}/pin-reset", json=reset).status_code == 403
        # The card maintenance operations too (issue #7, completeness).
        for suffix, method, body in (
            ("block", "POST", {"desk_id": desk}),
            ("loads/resolution", "POST", {"desk_id": desk}),
            ("cardholder", "PATCH", {"desk_id": desk, "name": "LI SI"}),
        ):
            assert world.call(as_, method, f"/counter/cards/{card}/{suffix}", json=body).status_code == 403
    fresh = world.apply(None, as_="clerk-b")
    world.readers.place("DESK-A", world.factory_chip())
    issue = {"desk_id": "DESK-A", "pin": "1234"}
    assert world.call("clerk-b", "POST", f"/counter/cards/{fresh}/issue", json=issue).status_code == 403
    # A supervisor of desk A refunds with desk A's reader, not desk B's.
    world.readers.place("DESK-A", chip_a)
    for suffix in ("cancel", "unblock"):
        other_desk = {"desk_id": "DESK-B"}
        assert world.call("super-a", "POST", f"/counter/cards/{card_b}/{suffix}", json=other_desk).status_code == 403
    collect = world.call("clerk-b", "POST", "/counter/settlements/1/collection", json={"desk_id": "DESK-A"})
    assert collect.status_code == 403
    assert (
        world.call("super-a", "POST", f"/counter/cards/{card_b}/refund", json={"desk_id": "DESK-B"}).status_code == 403
    )
    # An unknown desk is someone else's too (no hint whether it exists).
    assert world.load(card_a, 100, desk="DESK-Z").status_code == 403

    # Idempotency keys belong to their clerk: the same key from another clerk is another request.
    first = world.load(card_a, 500, key="shared-key")
    other = world.load(card_b, 700, desk="DESK-B", as_="clerk-b", key="shared-key")
    assert first.status_code == other.status_code == 201
    assert first.json()["card_no"] == card_a and other.json()["card_no"] == card_b
    assert "Idempotent-Replayed" not in other.headers
    assert world.chip_balance(chip_a) == 500 and world.chip_balance(chip_b) == 700

    # Auditors and finance read; they never move money at the counter.
    for who in ("auditor", "finance", "admin"):
        assert world.load(card_a, 100, as_=who).status_code == 403
    # Each session ends only itself.
    other_session = world.login("clerk-a").json()["token"]
    assert world.call("clerk-a", "POST", "/auth/logout").status_code == 200
    world.tokens.pop("clerk-a")
    assert world.client.get("/auth/me", headers={"Authorization": f"Bearer {other_session}"}).status_code == 200
    # Admin alone administers; nobody else reaches an account or a desk.
    for who in ("clerk-a", "super-a", "finance", "auditor"):
        assert world.call(who, "GET", "/admin/staff/admin").status_code == 403
    assert ApiRole.ADMIN not in {ApiRole(r) for r in STAFF["super-a"][0]}
