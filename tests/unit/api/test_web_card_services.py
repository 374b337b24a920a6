"""The web pages' card services and exception proposals added for issue #7 (completeness), through a test client
(SQLite, simulated desk readers): block and unblock, unconfirmed loads resolved with the card (confirm, then act),
a supervisor checking exceptions, and an ``adjust`` proposal with its amount."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.api.staffkit import FAST_HASHER, PASSWORD, StaffWorld, staff_world
from support import LeavesAfterCredit

import api.web.pages as pages
from api import finance
from api.staff_auth import Principal, create_staff
from backoffice.errors import Conflict, Forbidden, InvalidInput
from cardos.card import Card
from issuance import services
from issuance.access import Role, Staff
from issuance.lifecycle import LoadStatus
from terminal.channel import InProcessChannel

DAY = date(2025, 3, 3)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[StaffWorld]:
    """Staff, desks and simulated readers over SQLite, with the pages' router."""
    with staff_world(f"sqlite:///{tmp_path / 'web.db'}", clearing=True) as opened:
        if not any(getattr(route, "path", "") == "/web/login" for route in opened.app.routes):
            opened.app.include_router(pages.router)
        with opened.uow() as uow:
            create_staff(uow, "finance-2", PASSWORD, ["finance"], hasher=FAST_HASHER)
        yield opened


def login(world: StaffWorld, username: str) -> str:
    """Log in through the page; the session's anti-CSRF token (read from a page's form)."""
    world.client.cookies.clear()
    response = world.client.post("/web/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', response.text)
    assert found, response.text[:2000]
    return found.group(1)


def error_code(response: httpx.Response) -> str | None:
    """The error code a page shows."""
    found = re.search(r'data-testid="error" data-code="([a-z_]+)"', response.text)
    return found.group(1) if found else None


def field(response: httpx.Response, name: str) -> list[str]:
    """Every value of a receipt row."""
    return re.findall(rf'data-field="{re.escape(name)}">([^<]*)<', response.text)


def issued_card(world: StaffWorld) -> tuple[str, Card]:
    """A registered card issued through the API onto a chip on desk A (the page session is not touched)."""
    kept = dict(world.client.cookies.items())
    try:
        return world.new_card(0)
    finally:
        for name, value in kept.items():
            world.client.cookies.set(name, value)


def test_block_and_unblock_confirm_then_act(world: StaffWorld) -> None:
    card_no, _chip = issued_card(world)
    csrf = login(world, "clerk-a")
    page = world.client.get(f"/web/counter/cards/{card_no}")
    assert 'data-testid="block-link"' in page.text and 'data-testid="unblock-link"' not in page.text
    assert 'data-testid="resolve-link"' not in page.text
    confirm = world.client.get(f"/web/counter/cards/{card_no}/block")
    assert confirm.status_code == 200 and 'data-testid="block-permanent"' in confirm.text
    assert f'action="/web/counter/cards/{card_no}/block"' in confirm.text
    # Without the session's form token nothing happens.
    forged = world.client.post(f"/web/counter/cards/{card_no}/block", data={"csrf_token": "0" * 64})
    assert forged.status_code == 403 and error_code(forged) == "form_expired"
    blocked = world.client.post(f"/web/counter/cards/{card_no}/block", data={"csrf_token": csrf})
    assert blocked.status_code == 200 and 'data-testid="receipt"' in blocked.text, blocked.text
    assert field(blocked, "card.state") == ["Blocked"]
    page = world.client.get(f"/web/counter/cards/{card_no}")
    assert 'data-testid="block-link"' not in page.text and 'data-testid="unblock-link"' not in page.text  # a clerk
    refused = world.client.post(f"/web/counter/cards/{card_no}/unblock", data={"csrf_token": csrf})
    assert refused.status_code == 403 and error_code(refused) == "forbidden"

    supervisor = login(world, "super-a")
    page = world.client.get(f"/web/counter/cards/{card_no}")
    assert 'data-testid="unblock-link"' in page.text
    assert world.client.get(f"/web/counter/cards/{card_no}/unblock").status_code == 200
    lifted = world.client.post(f"/web/counter/cards/{card_no}/unblock", data={"csrf_token": supervisor})
    assert lifted.status_code == 200 and field(lifted, "card.state") == ["Active"]
    # For good, in Chinese: locked.
    world.client.cookies.set("onecard_lang", "zh")
    locked = world.client.post(f"/web/counter/cards/{card_no}/block", data={"csrf_token": supervisor, "permanent": "1"})
    assert locked.status_code == 200 and "锁卡成功" in locked.text and field(locked, "card.state") == ["已冻结"]
    again = world.client.post(f"/web/counter/cards/{card_no}/block", data={"csrf_token": supervisor})
    assert again.status_code == 409


def test_resolve_unconfirmed_loads_from_the_card_page(world: StaffWorld) -> None:
    card_no, chip = issued_card(world)
    ctx = world.state.counter
    assert ctx is not None
    outcome = services.load_card(
        world.state.new_uow, Staff("clerk-a", Role.CLERK), ctx.keys,
        InProcessChannel(LeavesAfterCredit(chip)),
        amount=2_000, request_id="lost-answer", term_id="031000009001",
    )  # fmt: skip
    assert outcome.status is LoadStatus.UNCONFIRMED
    csrf = login(world, "clerk-a")
    page = world.client.get(f"/web/counter/cards/{card_no}")
    assert 'data-testid="resolve-link"' in page.text and 'data-testid="unconfirmed-hint"' in page.text
    confirm = world.client.get(f"/web/counter/cards/{card_no}/loads/resolution")
    assert confirm.status_code == 200 and f'action="/web/counter/cards/{card_no}/loads/resolution"' in confirm.text
    world.readers.remove("DESK-A")
    empty = world.client.post(f"/web/counter/cards/{card_no}/loads/resolution", data={"csrf_token": csrf})
    assert empty.status_code == 409 and error_code(empty) == "no_card_in_reader"
    world.readers.place("DESK-A", chip)
    resolved = world.client.post(f"/web/counter/cards/{card_no}/loads/resolution", data={"csrf_token": csrf})
    assert resolved.status_code == 200, resolved.text
    assert field(resolved, "resolve.load") == ["¥20.00 · Loaded (proven)"]
    assert world.chip_balance(chip) == 2_000
    page = world.client.get(f"/web/counter/cards/{card_no}")
    assert 'data-testid="resolve-link"' not in page.text and 'data-testid="card-balance">¥20.00<' in page.text
    nothing = world.client.post(f"/web/counter/cards/{card_no}/loads/resolution", data={"csrf_token": csrf})
    assert field(nothing, "resolve.result") == ["No load awaited resolution."]
    # Finance takes no counter action.
    finance_csrf = login(world, "finance")
    refused = world.client.post(f"/web/counter/cards/{card_no}/loads/resolution", data={"csrf_token": finance_csrf})
    assert refused.status_code == 403


class FakeExceptions:
    """The exception functions of the finance facade, in memory (with ``adjust`` amounts)."""

    def __init__(self) -> None:
        self.items = {
            7: finance.ExceptionView(
                7, DAY, "rejected", "bad_tac", "0310000000000009", 4, "031000000101", 1004, "open", None, None, None,
                amount=250,
            ),
        }  # fmt: skip

    def exceptions(self, uow: Any, *, business_date: date | None, status: str | None) -> list[finance.ExceptionView]:
        return [x for x in self.items.values() if status in (None, x.status)]

    def propose_resolution(
        self, uow: Any, principal: Principal, *, exception_id: int, action: str, note: str, amount: int | None = None
    ) -> finance.ExceptionView:
        item = self.items[exception_id]
        if item.status != "open":
            raise Conflict("already proposed")
        if action == "adjust" and amount is None:
            raise InvalidInput("adjust needs an amount")
        self.items[exception_id] = replace(
            item, status="proposed", proposed_action=action, proposed_by=principal.username, proposed_amount=amount
        )
        return self.items[exception_id]

    def decide_resolution(
        self, uow: Any, principal: Principal, *, exception_id: int, approve: bool, note: str
    ) -> finance.ExceptionView:
        item = self.items[exception_id]
        if item.proposed_by == principal.username:
            raise Forbidden("the maker cannot check their own proposal")
        self.items[exception_id] = replace(
            item, status="resolved" if approve else "open", decided_by=principal.username
        )
        return self.items[exception_id]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeExceptions:
    """Stand the fake in for the facade's exception functions."""
    stand_in = FakeExceptions()
    for name in ("exceptions", "propose_resolution", "decide_resolution"):
        monkeypatch.setattr(finance, name, getattr(stand_in, name))
    return stand_in


def test_adjust_with_an_amount_and_a_supervisor_checks_it(world: StaffWorld, fake: FakeExceptions) -> None:
    csrf = login(world, "finance")
    queue = world.client.get("/web/finance/exceptions")
    assert queue.status_code == 200 and 'data-testid="adjust-amount"' in queue.text
    assert 'data-testid="exception-amount">¥2.50<' in queue.text
    # Adjust needs an amount in yuan; other actions ignore the field.
    for amount in ("", "abc", "1.234"):
        bad = world.client.post(
            "/web/finance/exceptions/7/resolution",
            data={"csrf_token": csrf, "action": "adjust", "note": "half fare", "amount": amount},
        )
        assert bad.status_code == 422 and error_code(bad) == "invalid_input", amount
    assert fake.items[7].status == "open"
    proposed = world.client.post(
        "/web/finance/exceptions/7/resolution",
        data={"csrf_token": csrf, "action": "adjust", "note": "half fare", "amount": "1.25", "back": "proposed"},
    )
    assert proposed.status_code == 200 and "another member of staff approves it" in proposed.text
    assert fake.items[7].proposed_action == "adjust" and fake.items[7].proposed_amount == 125
    assert "¥1.25" in proposed.text

    # The supervisor is a checker: sees the queue and decides (never proposes).
    supervisor = login(world, "super-a")
    queue = world.client.get("/web/finance/exceptions?status=proposed")
    assert queue.status_code == 200 and 'data-testid="decide-form"' in queue.text
    assert 'data-testid="propose-form"' not in queue.text
    home = world.client.get("/web/finance?date=2025-03-03")
    assert home.status_code == 200
    own = world.client.post(
        "/web/finance/exceptions/7/resolution", data={"csrf_token": supervisor, "action": "accept", "note": "x"}
    )
    assert own.status_code == 403
    approved = world.client.post(
        "/web/finance/exceptions/7/decision",
        data={"csrf_token": supervisor, "decision": "approve", "back": "resolved"},
    )
    assert approved.status_code == 200 and "The decision is recorded." in approved.text
    decided = fake.items[7]
    assert decided.status == "resolved" and decided.decided_by == "super-a"
    # Auditors read the queue, take no action.
    login(world, "auditor")
    queue = world.client.get("/web/finance/exceptions?status=resolved")
    assert queue.status_code == 200 and 'data-testid="decide-form"' not in queue.text
    assert world.client.get("/web/finance/exceptions").status_code == 200
    login(world, "clerk-a")
    assert world.client.get("/web/finance/exceptions").status_code == 403
