"""The web pages through a test client (SQLite; simulated desk readers): log-in and sessions, CSRF, language,
the counter's forms calling the counter services, and the finance pages over a stand-in for the finance facade
(whatever ``api/finance.py`` answers today, the pages' own behaviour is pinned here)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from integration.api.staffkit import FAST_HASHER, ID_NUMBERS, PASSWORD, StaffWorld, staff_world

import api.web.pages as pages
from api import finance
from api.staff_auth import Principal, create_staff
from backoffice.errors import Conflict, Forbidden, NotFound
from issuance.models import Load

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
    """Log in through the page; the anti-CSRF token of the session (read from a page's form)."""
    world.client.cookies.clear()
    response = world.client.post("/web/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return csrf_of(response)


def csrf_of(response: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', response.text)
    assert found, response.text[:2000]
    return found.group(1)


def field(response: httpx.Response, name: str) -> str:
    found = re.search(rf'data-field="{re.escape(name)}">([^<]*)<', response.text)
    assert found, response.text[:3000]
    return found.group(1)


def api(world: StaffWorld, username: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A JSON API call as ``username`` that leaves the page session's cookies in place."""
    kept = dict(world.client.cookies.items())
    try:
        return world.call(username, method, path, **kwargs)
    finally:
        for name, value in kept.items():
            world.client.cookies.set(name, value)


def api_load(world: StaffWorld, card_no: str, amount: int, key: str | None = None) -> httpx.Response:
    """A load through the JSON API (clerk-a at DESK-A), the page session kept."""
    headers = {"Idempotency-Key": key or f"test-{amount}-{card_no}"}
    body = {"desk_id": "DESK-A", "amount": amount}
    return api(world, "clerk-a", "POST", f"/counter/cards/{card_no}/loads", json=body, headers=headers)


def error_code(response: httpx.Response) -> str | None:
    found = re.search(r'data-testid="error" data-code="([a-z_]+)"', response.text)
    return found.group(1) if found else None


# --- log-in, sessions, CSRF, language ------------------------------------------------------------------------------


def test_pages_need_a_session_and_login_sets_the_api_cookie(world: StaffWorld) -> None:
    client = world.client
    away = client.get("/web/counter", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/web/login?next=/web/counter"
    page = client.get("/web/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]

    wrong = client.post("/web/login", data={"username": "clerk-a", "password": "not the password"})
    assert wrong.status_code == 401 and error_code(wrong) == "unauthorized"
    assert "onecard_session" not in client.cookies

    done = client.post(
        "/web/login", data={"username": "clerk-a", "password": PASSWORD, "next": "/web/counter"}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == "/web/counter"
    cookie = done.headers["set-cookie"]
    assert "onecard_session=oc_" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    # The same session works on the JSON API (cookie sessions are the API's).
    me = client.get("/auth/me")
    assert me.status_code == 200 and me.json()["username"] == "clerk-a"
    home = client.get("/web/counter")
    assert home.status_code == 200 and "clerk-a" in home.text and "DESK-A" in home.text


def test_login_goes_to_the_desk_of_ones_roles_and_never_off_site(world: StaffWorld) -> None:
    for username, target in (("clerk-a", "/web/counter"), ("finance", "/web/finance"), ("admin", "/web/home")):
        world.client.cookies.clear()
        response = world.client.post(
            "/web/login",
            data={"username": username, "password": PASSWORD, "next": "https://evil.example/"},
            follow_redirects=False,
        )
        assert response.headers["location"] == target, username


def test_forms_without_the_sessions_token_change_nothing(world: StaffWorld) -> None:
    login(world, "clerk-a")
    body = {"name": "ZHANG SAN", "id_number": ID_NUMBERS[0], "phone": "13800000000", "address": "1 Renmin Road"}
    refused = world.client.post("/web/counter/residents", data={**body, "csrf_token": "0" * 64})
    assert refused.status_code == 403 and error_code(refused) == "form_expired"
    missing = world.client.post("/web/counter/residents", data=body)
    assert missing.status_code == 403
    found = api(world, "clerk-a", "POST", "/counter/residents/search", json={"id_number": ID_NUMBERS[0]})
    assert found.status_code == 404


def test_logout_ends_the_session(world: StaffWorld) -> None:
    csrf = login(world, "clerk-a")
    token = world.client.cookies["onecard_session"]
    out = world.client.post("/web/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"].startswith("/web/login")
    world.client.cookies.set("onecard_session", token)
    assert world.client.get("/web/counter", follow_redirects=False).status_code == 303
    assert world.client.get("/auth/me").status_code == 401


def test_language_switch(world: StaffWorld) -> None:
    login(world, "clerk-a")
    switched = world.client.get("/web/lang/zh?next=/web/counter", follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/web/counter"
    page = world.client.get("/web/counter")
    assert '<html lang="zh-CN">' in page.text and "柜台业务" in page.text and "登记居民" in page.text
    world.client.get("/web/lang/en?next=https://evil.example/")
    page = world.client.get("/web/counter")
    assert "Register a resident" in page.text
    # Without a cookie, Accept-Language decides.
    world.client.cookies.delete("onecard_lang")
    assert "柜台业务" in world.client.get("/web/counter", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).text


def test_static_files(world: StaffWorld) -> None:
    css = world.client.get("/web/static/onecard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = world.client.get("/web/static/onecard.js")
    assert js.status_code == 200 and "data-poll" in js.text
    assert world.client.get("/web/static/..%2Fpages.py").status_code == 404
    assert world.client.get("/web/static/pages.py").status_code == 404


def test_pages_stay_out_of_the_openapi_document(world: StaffWorld) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith("/web") for path in paths)


# --- the counter desk ------------------------------------------------------------------------------------------------


def _register_and_apply(world: StaffWorld, csrf: str, index: int = 0) -> tuple[int, str]:
    body = {"name": "ZHANG SAN", "id_number": ID_NUMBERS[index], "phone": "13800000000", "address": "1 Renmin Road"}
    page = world.client.post("/web/counter/residents", data={**body, "csrf_token": csrf})
    assert page.status_code == 200 and "The resident is registered." in page.text
    resident_id = int(str(page.url).rsplit("/", 1)[1].split("?")[0])
    applied = world.client.post(
        "/web/counter/cards",
        data={"csrf_token": csrf, "card_type": "adult", "city_code": "0310", "resident_id": str(resident_id)},
    )
    assert applied.status_code == 200 and 'data-testid="issue-form"' in applied.text
    card_no = re.search(r'data-testid="card-no">([0-9]{16})<', applied.text)
    assert card_no
    return resident_id, card_no.group(1)


def test_counter_register_link_issue_load(world: StaffWorld) -> None:
    csrf = login(world, "clerk-a")
    resident_id, card_no = _register_and_apply(world, csrf)
    # Masked for a clerk.
    resident = world.client.get(f"/web/counter/residents/{resident_id}")
    assert ID_NUMBERS[0] not in resident.text and ID_NUMBERS[0][-4:] in resident.text
    assert f"/web/counter/residents/{resident_id}?unmasked=true" not in resident.text

    wrong = world.client.post(
        f"/web/counter/residents/{resident_id}/social-security",
        data={"csrf_token": csrf, "ss_number": ID_NUMBERS[1], "schemes": ["1", "2"], "agency_code": "310000"},
    )
    assert wrong.status_code == 422 and error_code(wrong) == "invalid_input"
    linked = world.client.post(
        f"/web/counter/residents/{resident_id}/social-security",
        data={"csrf_token": csrf, "ss_number": ID_NUMBERS[0], "schemes": ["1", "2"], "agency_code": "310000"},
    )
    assert linked.status_code == 200 and "The social-security record is linked." in linked.text
    assert "Pension" in linked.text and "Medical" in linked.text
    ss = api(world, "clerk-a", "GET", f"/counter/residents/{resident_id}/social-security").json()
    assert ss["schemes"] == 3 and ss["agency_code"] == "310000"

    # Issue: the PINs must agree; no card on the reader is the reader's error, shown on the card's page.
    differ = world.client.post(
        f"/web/counter/cards/{card_no}/issue", data={"csrf_token": csrf, "pin": "123456", "pin_again": "654321"}
    )
    assert differ.status_code == 422 and "The two PINs differ." in differ.text
    empty = world.client.post(
        f"/web/counter/cards/{card_no}/issue", data={"csrf_token": csrf, "pin": "123456", "pin_again": "123456"}
    )
    assert empty.status_code == 409 and error_code(empty) == "no_card_in_reader"
    chip = world.factory_chip()
    world.readers.place("DESK-A", chip)
    assert 'data-testid="reader-blank"' in world.client.get("/web/counter").text
    issued = world.client.post(
        f"/web/counter/cards/{card_no}/issue", data={"csrf_token": csrf, "pin": "123456", "pin_again": "123456"}
    )
    assert issued.status_code == 200 and 'data-testid="receipt"' in issued.text
    assert field(issued, "card.state") == "Active"
    assert card_no in world.client.get("/web/counter").text  # the reader now shows the card

    # Load: amount checked, confirmation with a fresh key, the receipt; the same form again loads nothing more.
    bad = world.client.post(f"/web/counter/cards/{card_no}/load-confirm", data={"csrf_token": csrf, "amount": "1.234"})
    assert bad.status_code == 422 and "Enter an amount in yuan" in bad.text
    confirm = world.client.post(f"/web/counter/cards/{card_no}/load-confirm", data={"csrf_token": csrf, "quick": "50"})
    assert confirm.status_code == 200 and "¥50.00" in confirm.text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', confirm.text)
    assert key
    form = {"csrf_token": csrf, "amount": "5000", "idempotency_key": key.group(1)}
    receipt = world.client.post(f"/web/counter/cards/{card_no}/loads", data=form)
    assert receipt.status_code == 200, receipt.text
    assert field(receipt, "load.balance_after") == "¥50.00" and field(receipt, "receipt.term_id") == "031000009001"
    assert re.fullmatch(r"[0-9A-F]{8}", field(receipt, "receipt.tac"))
    again = world.client.post(f"/web/counter/cards/{card_no}/loads", data=form)
    assert 'data-testid="receipt-note"' in again.text and field(again, "receipt.tac") == field(receipt, "receipt.tac")
    assert world.chip_balance(chip) == 5000 and world.count(Load) == 1
    # The page's key is the API's Idempotency-Key: the API replays the page's load.
    replay = api_load(world, card_no, 5000, key=key.group(1))
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"

    # Over the purse limit: the card's refusal is shown on the card page.
    confirm = world.client.post(
        f"/web/counter/cards/{card_no}/load-confirm", data={"csrf_token": csrf, "amount": "4990"}
    )
    key = re.search(r'name="idempotency_key" value="([^"]+)"', confirm.text)
    assert key
    over = world.client.post(
        f"/web/counter/cards/{card_no}/loads",
        data={"csrf_token": csrf, "amount": "499000", "idempotency_key": key.group(1)},
    )
    assert over.status_code == 422 and error_code(over) == "card_refused"
    assert 'data-testid="card-balance">¥50.00<' in over.text


def test_counter_find_loss_replace_refund_payout(world: StaffWorld) -> None:
    csrf = login(world, "clerk-a")
    resident_id, card_no = _register_and_apply(world, csrf)
    world.readers.place("DESK-A", world.factory_chip())
    world.client.post(
        f"/web/counter/cards/{card_no}/issue", data={"csrf_token": csrf, "pin": "1234", "pin_again": "1234"}
    )
    found = world.client.post("/web/counter/residents/search", data={"csrf_token": csrf, "id_number": ID_NUMBERS[0]})
    assert str(found.url).endswith(f"/web/counter/residents/{resident_id}")
    missing = world.client.post("/web/counter/residents/search", data={"csrf_token": csrf, "id_number": ID_NUMBERS[1]})
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    looked = world.client.get(f"/web/counter/cards?card_no={card_no}")
    assert str(looked.url).endswith(f"/web/counter/cards/{card_no}")
    assert world.client.get("/web/counter/cards?card_no=12").status_code == 422

    # A clerk sees no refund button; loss needs its confirmation page first.
    card_page = world.client.get(f"/web/counter/cards/{card_no}")
    assert f"/web/counter/cards/{card_no}/loss" in card_page.text and "/refund" not in card_page.text
    confirm = world.client.get(f"/web/counter/cards/{card_no}/loss")
    assert 'name="reason"' in confirm.text and 'value="stolen"' in confirm.text
    lost = world.client.post(f"/web/counter/cards/{card_no}/loss", data={"csrf_token": csrf, "reason": "stolen"})
    assert lost.status_code == 200 and field(lost, "loss.reason") == "Stolen" and field(lost, "loss.version") == "1"
    twice = world.client.post(f"/web/counter/cards/{card_no}/loss", data={"csrf_token": csrf, "reason": "lost"})
    assert twice.status_code == 409 and 'data-testid="card-state">Lost<' in twice.text

    replaced = world.client.post(f"/web/counter/cards/{card_no}/replacement", data={"csrf_token": csrf})
    assert replaced.status_code == 200 and field(replaced, "settlement.from") == card_no
    new_no = field(replaced, "replace.new_card")
    assert new_no != card_no and f"/web/counter/cards/{new_no}" in replaced.text

    # A refund is a supervisor's; with the card present it is blocked for good and paid out at once.
    other_csrf = login(world, "clerk-a")
    _, other_no = _register_and_apply(world, other_csrf, index=1)
    chip = world.factory_chip()
    world.readers.place("DESK-A", chip)
    world.client.post(
        f"/web/counter/cards/{other_no}/issue", data={"csrf_token": other_csrf, "pin": "1234", "pin_again": "1234"}
    )
    assert api_load(world, other_no, 3000).status_code == 201
    refused = world.client.post(f"/web/counter/cards/{other_no}/refund", data={"csrf_token": other_csrf})
    assert refused.status_code == 403 and error_code(refused) == "forbidden"
    super_csrf = login(world, "super-a")
    assert f"/web/counter/cards/{other_no}/refund" in world.client.get(f"/web/counter/cards/{other_no}").text
    refund = world.client.post(f"/web/counter/cards/{other_no}/refund", data={"csrf_token": super_csrf, "present": "1"})
    assert refund.status_code == 200, refund.text
    assert field(refund, "settlement.kind") == "Refund"
    assert field(refund, "common.status") == "Ready to pay out" and field(refund, "common.amount") == "¥30.00"
    settlement_id = field(refund, "settlement.id")
    paid = world.client.post(f"/web/counter/settlements/{settlement_id}/payout", data={"csrf_token": super_csrf})
    assert paid.status_code == 200 and field(paid, "common.status") == "Done"
    again = world.client.post(f"/web/counter/settlements/{settlement_id}/payout", data={"csrf_token": super_csrf})
    assert again.status_code == 409
    # A supervisor may see numbers unmasked (audited).
    unmasked = world.client.get(f"/web/counter/residents/{resident_id}?unmasked=true")
    assert ID_NUMBERS[0] in unmasked.text


def test_register_errors_keep_the_form(world: StaffWorld) -> None:
    csrf = login(world, "clerk-a")
    bad = world.client.post(
        "/web/counter/residents",
        data={"csrf_token": csrf, "name": "LI SI", "id_number": "123", "phone": "138", "address": "2 Road"},
    )
    assert bad.status_code == 422 and error_code(bad) == "invalid_input"
    assert "id_number" in bad.text and 'value="LI SI"' in bad.text and 'value="2 Road"' in bad.text


def test_finance_cannot_register_and_admin_sees_no_desk(world: StaffWorld) -> None:
    login(world, "finance")
    page = world.client.get("/web/counter")
    assert page.status_code == 200 and 'data-testid="register-resident"' not in page.text
    login(world, "admin")
    assert world.client.get("/web/counter").status_code == 403
    assert world.client.get("/web/finance").status_code == 403


# --- the finance desk over a stand-in facade -----------------------------------------------------------------------


class FakeFinance:
    """The finance facade's contract (api/finance.py docstring), in memory."""

    def __init__(self) -> None:
        self.runs: dict[int, finance.ClearingRunView] = {}
        self.polls = 0
        self.items = {
            7: finance.ExceptionView(
                7, DAY, "rejected", "bad_tac", "0310000000000009", 4, "031000000101", 1004, "open", None, None, None
            ),
            8: finance.ExceptionView(
                8, DAY, "suspicious", "counter_gap", "0310000000000010", 2, "031000000102", 77, "open", None, None, None
            ),
        }
        self.operators = (
            finance.OperatorTotals("OP-BUS-A", 120, 24_000, 360, 23_640),
            finance.OperatorTotals("OP-WATER", 3, 15_000, 105, 14_895),
        )

    def start_clearing_run(self, uow: Any, principal: Principal, *, business_date: date) -> finance.ClearingRunView:
        run = finance.ClearingRunView(
            len(self.runs) + 1, business_date, "queued", principal.username, datetime.now(UTC), None, 0, 123
        )
        self.runs[run.run_id] = run
        return run

    def list_clearing_runs(self, uow: Any, *, business_date: date | None) -> list[finance.ClearingRunView]:
        return [r for r in self.runs.values() if business_date in (None, r.business_date)]

    def clearing_run(self, uow: Any, *, run_id: int) -> finance.ClearingRunView:
        if run_id not in self.runs:
            raise NotFound("no such run")
        self.polls += 1
        run = self.runs[run_id]
        if self.polls >= 2 and run.status != "finished":
            run = replace(run, status="finished", records_done=123, finished_at=datetime.now(UTC))
            self.runs[run_id] = run
        elif run.status == "queued":
            run = replace(run, status="running", records_done=61)
            self.runs[run_id] = run
        return run

    def clearing_result(self, uow: Any, *, run_id: int) -> finance.ClearingResultView:
        run = self.runs[run_id]
        if run.status != "finished":
            raise Conflict("still running")
        return finance.ClearingResultView(run_id, run.business_date, self.operators, {"settled": 121, "rejected": 2})

    def statements(self, uow: Any, *, business_date: date, operator_id: str | None) -> list[finance.OperatorTotals]:
        if business_date != DAY:
            return []
        return [o for o in self.operators if operator_id in (None, o.operator_id)]

    def exceptions(self, uow: Any, *, business_date: date | None, status: str | None) -> list[finance.ExceptionView]:
        return [x for x in self.items.values() if status in (None, x.status)]

    def propose_resolution(
        self, uow: Any, principal: Principal, *, exception_id: int, action: str, note: str
    ) -> finance.ExceptionView:
        item = self.items[exception_id]
        if item.status != "open":
            raise Conflict("already proposed")
        self.items[exception_id] = replace(
            item, status="proposed", proposed_action=action, proposed_by=principal.username
        )
        return self.items[exception_id]

    def decide_resolution(
        self, uow: Any, principal: Principal, *, exception_id: int, approve: bool, note: str
    ) -> finance.ExceptionView:
        item = self.items[exception_id]
        if item.proposed_by == principal.username:
            raise Forbidden("the maker cannot check their own proposal")
        decided: Literal["open", "resolved"] = "resolved" if approve else "open"
        self.items[exception_id] = replace(item, status=decided, decided_by=principal.username)
        return self.items[exception_id]

    def report(self, uow: Any, *, business_date: date, report_format: str) -> finance.ReportFile:
        if business_date != DAY:
            raise NotFound("clearing day has not been run")
        if report_format == "json":
            body = (
                b'{"volume_by_hour": [{"operator_id": "OP-BUS-A", "hour": 7, "count": 40, "amount": 8000},'
                b' {"operator_id": "OP-BUS-A", "hour": 8, "count": 80, "amount": 16000},'
                b' {"operator_id": "OP-WATER", "hour": 8, "count": 3, "amount": 15000}]}'
            )
        else:
            body = b"operator_id,count\r\nOP-BUS-A,120\r\n"
        return finance.ReportFile(
            finance.REPORT_MEDIA_TYPES[report_format], f"clearing-{business_date}.{report_format}", body
        )

    def reconciliation(self, uow: Any, *, business_date: date) -> tuple[bool, list[finance.ReconciliationCheck]]:
        checks = [
            finance.ReconciliationCheck("ledger_balanced", True, 0, 0),
            finance.ReconciliationCheck("operator_payable:OP-BUS-A", False, 23_640, 23_600),
        ]
        return False, checks


FACADE_FUNCTIONS = (
    "start_clearing_run", "list_clearing_runs", "clearing_run", "clearing_result", "statements", "exceptions",
    "propose_resolution", "decide_resolution", "report", "reconciliation",
)  # fmt: skip
"""Every function of api/finance.py the pages call."""


@pytest.fixture
def fake_finance(monkeypatch: pytest.MonkeyPatch) -> FakeFinance:
    """Stand the fake in for every facade function the pages call."""
    fake = FakeFinance()
    for name in FACADE_FUNCTIONS:
        monkeypatch.setattr(finance, name, getattr(fake, name))
    return fake


def test_finance_dashboard_charts_and_sections(world: StaffWorld, fake_finance: FakeFinance) -> None:
    login(world, "finance")
    page = world.client.get("/web/finance?date=2025-03-03")
    assert page.status_code == 200, page.text
    assert 'data-testid="total-count">123<' in page.text and "¥390.00" in page.text
    assert 'data-testid="open-exceptions">2<' in page.text and 'data-testid="recon-status">Failed<' in page.text
    hours = page.text.split('data-testid="chart-hours"')[1].split("</section>")[0]
    assert hours.count("<rect") >= 3 and "OP-WATER" in hours and "<svg" in hours
    assert 'data-testid="chart-operators"' in page.text
    assert "/web/finance/reports/2025-03-03?format=xlsx" in page.text
    # A day without data says so; a bad date is an input error.
    assert "Nothing cleared for this day yet." in world.client.get("/web/finance?date=2025-03-04").text
    assert world.client.get("/web/finance?date=yesterday").status_code == 422


def test_finance_sections_show_their_own_errors(world: StaffWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_built(*args: Any, **kwargs: Any) -> Any:
        raise finance.NotBuilt("clearing reports are not built yet", operation="x")

    fake = FakeFinance()
    monkeypatch.setattr(finance, "statements", fake.statements)
    monkeypatch.setattr(finance, "report", not_built)
    login(world, "finance")
    page = world.client.get("/web/finance?date=2025-03-03")
    assert page.status_code == 200
    assert 'data-code="not_built"' in page.text and 'data-testid="total-count">123<' in page.text


def test_supervisor_sees_runs_but_not_the_books(world: StaffWorld, fake_finance: FakeFinance) -> None:
    login(world, "super-a")
    page = world.client.get("/web/finance?date=2025-03-03")
    assert page.status_code == 200 and 'data-testid="runs"' in page.text
    assert 'data-testid="operators"' not in page.text and 'data-testid="run-form"' not in page.text
    assert world.client.get("/web/finance/statements?date=2025-03-03").status_code == 403


def test_run_clearing_and_watch_it(world: StaffWorld, fake_finance: FakeFinance) -> None:
    csrf = login(world, "finance")
    started = world.client.post("/web/finance/runs", data={"csrf_token": csrf, "business_date": "2025-03-03"})
    assert started.status_code == 200 and "Clearing run started." in started.text
    assert str(started.url).endswith("/web/finance/runs/1?msg=finance.run_started")
    assert 'data-poll="/web/finance/runs/1"' in started.text and '<meta http-equiv="refresh"' in started.text
    fragment = world.client.get("/web/finance/runs/1", headers={"X-Fragment": "1"})
    assert fragment.text.lstrip().startswith('<div class="run-progress"') and "<html" not in fragment.text
    assert 'data-status="finished"' in fragment.text and "data-poll" not in fragment.text
    assert 'data-testid="run-result"' in fragment.text and "¥148.95" in fragment.text
    bad = world.client.post("/web/finance/runs", data={"csrf_token": csrf, "business_date": "3 March"})
    assert bad.status_code == 422 and error_code(bad) == "invalid_input"
    assert world.client.get("/web/finance/runs/99").status_code == 404


def test_exceptions_maker_checker(world: StaffWorld, fake_finance: FakeFinance) -> None:
    csrf = login(world, "finance")
    queue = world.client.get("/web/finance/exceptions")
    assert queue.status_code == 200 and queue.text.count('data-testid="propose-form"') == 2
    assert 'value="write_off"' in queue.text or 'value="adjust"' in queue.text  # the API's own action list
    empty_note = world.client.post(
        "/web/finance/exceptions/7/resolution", data={"csrf_token": csrf, "action": "reject", "note": ""}
    )
    assert empty_note.status_code == 422
    proposed = world.client.post(
        "/web/finance/exceptions/7/resolution",
        data={"csrf_token": csrf, "action": "reject", "note": "TAC does not verify", "back": "proposed"},
    )
    assert proposed.status_code == 200 and "another member of staff approves it" in proposed.text
    assert 'data-testid="four-eyes"' in proposed.text and 'data-testid="decide-form"' not in proposed.text
    own = world.client.post("/web/finance/exceptions/7/decision", data={"csrf_token": csrf, "decision": "approve"})
    assert own.status_code == 403 and error_code(own) == "forbidden"

    checker = login(world, "finance-2")
    queue = world.client.get("/web/finance/exceptions?status=proposed")
    assert 'data-testid="decide-form"' in queue.text
    approved = world.client.post(
        "/web/finance/exceptions/7/decision",
        data={"csrf_token": checker, "decision": "approve", "note": "agreed", "back": "resolved"},
    )
    assert approved.status_code == 200 and "The decision is recorded." in approved.text
    assert fake_finance.items[7].status == "resolved" and fake_finance.items[7].decided_by == "finance-2"


def test_statements_reports_and_reconciliation(world: StaffWorld, fake_finance: FakeFinance) -> None:
    login(world, "auditor")
    statements = world.client.get("/web/finance/statements?date=2025-03-03&operator=OP-WATER")
    assert statements.status_code == 200 and "OP-WATER" in statements.text and "OP-BUS-A</td>" not in statements.text
    download = world.client.get("/web/finance/reports/2025-03-03?format=csv")
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"] == 'attachment; filename="clearing-2025-03-03.csv"'
    assert download.content.startswith(b"operator_id,count")
    missing = world.client.get("/web/finance/reports/2025-03-09?format=pdf")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    assert world.client.get("/web/finance/reports/2025-03-03?format=exe").status_code == 422
    recon = world.client.get("/web/finance/reconciliation?date=2025-03-03")
    assert 'data-testid="recon-banner">Some checks disagree.<' in recon.text
    assert "operator_payable:OP-BUS-A" in recon.text and "23640" in recon.text
    # Auditors read the books but take no action.
    assert world.client.post("/web/finance/runs", data={"business_date": "2025-03-03"}).status_code == 403
