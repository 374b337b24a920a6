"""The staff web pages in a real browser (issue #7, web part): Debian's Chromium, headless, driven by Playwright,
against the app served by uvicorn on 127.0.0.1 over SQLite.

- Counter desk: log in, register a resident, link social security, apply for a card, issue it onto a factory
  chip in the desk's (simulated, in-process) reader, load it with a confirmation and a receipt, report it lost and
  replace it; Chinese labels; a tablet-sized window.
- Finance desk: run a clearing of a day with real records (bus taps with genuine TACs, one forged), watch the run,
  propose a resolution of an exception as one member of finance and approve it as another, download a report.

Screenshots are kept in ``test-artifacts/web/`` (gitignored). Chromium is Debian's (``/usr/bin/chromium``,
installed by ``scripts/setup.sh``); Playwright never downloads a browser.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from integration.api.staffkit import FAST_HASHER, ID_NUMBERS, PASSWORD, configure, migrate, seed
from integration.clearing.citykit import DAY, City, open_city, tampered
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright
from services import require_services
from support import vector_keys
from unit.api.test_web_desks import DAY as FAKE_DAY
from unit.api.test_web_desks import FACADE_FUNCTIONS, FakeFinance

import api.web.pages as pages
from api import finance
from api.app import create_app
from api.deps import AppState
from api.desks import SimulatedDeskReaders
from api.staff_auth import create_staff
from backoffice.settings import Settings
from cardos.batch import BatchRecord
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from terminal.cards import UserCard
from terminal.channel import InProcessChannel

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
TABLET: ViewportSize = {"width": 768, "height": 1024}


@dataclass
class Site:
    """The app served on a local port, its simulated desk readers and the city behind the finance desk."""

    base: str
    state: AppState
    readers: SimulatedDeskReaders
    city: City
    chips: int = 0

    def factory_chip(self) -> Card:
        """A blank chip with the issuer's transport key, as the desk receives it."""
        self.chips += 1
        keys = vector_keys(Alg.DES)
        return Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], (0xE0E1E2E300000000 + self.chips).to_bytes(8))


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A migrated SQLite database with the tests' city (registry, keystore) and staff, served by uvicorn."""
    tmp = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{tmp / 'onecard.db'}"
    city = open_city(url, tmp)
    migrate(url, clearing=True)
    saved = {name: os.environ.get(name) for name in city.keystore_env}
    os.environ.update(city.keystore_env)  # clearing opens the keystore the way the deployment does
    app = create_app(Settings(database_url=url, keystore=city.keystore_env["ONECARD_KEYSTORE"]))
    state: AppState = app.state.onecard
    readers = configure(state, vector_keys(Alg.DES))
    seed(state)
    with state.new_uow() as uow:
        create_staff(uow, "finance-2", PASSWORD, ["finance"], hasher=FAST_HASHER)
    if not any(getattr(route, "path", "") == "/web/login" for route in app.routes):
        app.include_router(pages.router)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Site(f"http://127.0.0.1:{port}", state, readers, city)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        state.engine.dispose()
        city.dispose()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (never a downloaded browser)."""
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (scripts/setup.sh installs it)"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Desk:
    """One browser window of one member of staff; collects the console's errors (a CSP refusal shows there)."""

    def __init__(self, browser: Browser, site: Site, *, viewport: ViewportSize = DESKTOP) -> None:
        self.site = site
        self.context = browser.new_context(viewport=viewport, accept_downloads=True, locale="en-GB")
        self.context.set_default_timeout(15_000)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: self._console(message))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _console(self, message: Any) -> None:
        # A page that shows a refusal answers with the refusal's status (4xx), which Chromium logs: not an error.
        if message.type == "error" and not re.match(r"Failed to load resource: .* status of 4\d\d", message.text):
            self.errors.append(message.text)

    def go(self, path: str) -> Page:
        """Open a page of the site."""
        self.page.goto(self.site.base + path)
        return self.page

    def login(self, username: str) -> None:
        """Log in through the log-in form."""
        self.go("/web/login")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("form[data-testid=login-form] button[type=submit]")
        expect(self.page.locator("header .who")).to_contain_text(username)

    def shot(self, name: str) -> Path:
        """A full-page screenshot into the artefacts."""
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def field(self, name: str) -> str:
        """A receipt line's value."""
        return self.page.locator(f'[data-field="{name}"]').inner_text().strip()

    def close(self) -> None:
        """Close the window; no page may have logged an error."""
        self.context.close()
        assert self.errors == [], self.errors


def _chip_balance(card: Any) -> int:
    with InProcessChannel(card) as channel:
        user = UserCard(channel)
        user.select_purse()
        return user.get_balance()


def test_counter_desk_issue_and_load(browser: Browser, site: Site) -> None:
    desk = Desk(browser, site)
    page = desk.page
    desk.go("/web/counter")
    expect(page).to_have_url(re.compile(r"/web/login\?next=/web/counter$"))
    desk.shot("01-login")
    desk.login("clerk-a")
    expect(page.locator("h1")).to_have_text("Counter desk")
    expect(page.get_by_test_id("reader-empty")).to_be_visible()
    desk.shot("02-counter-desk")

    # Register a resident; link social security.
    form = page.get_by_test_id("register-resident")
    form.locator("input[name=name]").fill("ZHANG SAN")
    form.locator("input[name=id_number]").fill(ID_NUMBERS[2])
    form.locator("input[name=phone]").fill("13800138000")
    form.locator("input[name=address]").fill("88 Renmin Road, Xuhui")
    form.locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_have_text("The resident is registered.")
    link = page.get_by_test_id("link-ss")
    link.locator("input[name=ss_number]").fill(ID_NUMBERS[2])
    link.locator("input[name=schemes][value='1']").check()
    link.locator("input[name=schemes][value='2']").check()
    link.locator("input[name=agency_code]").fill("310000")
    link.locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_have_text("The social-security record is linked.")
    expect(page.get_by_test_id("social-security")).to_contain_text("Medical")
    desk.shot("03-resident")

    # Apply for a card, then issue it onto the blank chip placed on the desk's reader.
    apply = page.get_by_test_id("apply-card")
    apply.locator("input[name=city_code]").fill("0310")
    apply.locator("button[type=submit]").click()
    expect(page.get_by_test_id("card-state")).to_have_text("Applied")
    card_no = page.get_by_test_id("card-no").inner_text()
    chip = site.factory_chip()
    site.readers.place("DESK-A", chip)
    page.reload()
    expect(page.get_by_test_id("reader-blank")).to_be_visible()
    desk.shot("04-card-applied")
    issue = page.get_by_test_id("issue-form")
    issue.locator("input[name=pin]").fill("246810")
    issue.locator("input[name=pin_again]").fill("246810")
    issue.locator("input[name=social_pin]").fill("135790")
    issue.locator("button[type=submit]").click()
    expect(page.get_by_test_id("receipt")).to_contain_text("Card issued")
    assert desk.field("card.state") == "Active" and desk.field("card.card_no") == card_no
    desk.shot("05-issue-receipt")

    # Load ¥200: the confirmation says what to collect; the receipt has the card's TAC; the chip holds it.
    page.get_by_test_id("back-to-card").click()
    expect(page.get_by_test_id("reader-card")).to_have_text(card_no)
    page.get_by_test_id("load-form").locator("input[name=amount]").fill("200")
    page.get_by_test_id("load-form").locator("button.primary").click()
    expect(page.get_by_test_id("confirm-amount")).to_have_text("¥200.00")
    desk.shot("06-load-confirm")
    confirm = page.get_by_test_id("confirm-form")
    sent: dict[str, str | float | bool] = {
        name: confirm.locator(f"input[name={name}]").input_value()
        for name in ("csrf_token", "amount", "idempotency_key")
    }
    action = site.base + str(confirm.get_attribute("action"))
    confirm.locator("button.primary").click()
    expect(page.get_by_test_id("receipt")).to_contain_text("Load receipt")
    assert desk.field("load.balance_after") == "¥200.00" and desk.field("load.status") == "Loaded"
    assert re.fullmatch(r"[0-9A-F]{8}", desk.field("receipt.tac")) and desk.field("receipt.term_id") == "031000009001"
    desk.shot("07-load-receipt")
    assert _chip_balance(chip) == 20_000
    # The same form sent again (a resend after a lost answer) replays the first load: still one load on the chip.
    resent = desk.context.request.post(action, form=sent)
    assert resent.ok and 'data-testid="receipt-note"' in resent.text() and desk.field("receipt.tac") in resent.text()
    assert _chip_balance(chip) == 20_000

    # Wrong card on the reader: the page shows the error of the one hierarchy.
    page.get_by_test_id("back-to-card").click()
    site.readers.remove("DESK-A")
    page.get_by_test_id("load-form").locator("button[name=quick][value='50']").click()
    page.get_by_test_id("confirm-form").locator("button.primary").click()
    expect(page.get_by_test_id("error")).to_have_attribute("data-code", "no_card_in_reader")
    desk.shot("08-load-no-card")
    site.readers.place("DESK-A", chip)

    # Chinese labels; the tablet-sized window.
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_test_id("card")).to_contain_text("卡类型")
    desk.shot("09-card-zh")
    page.get_by_test_id("lang-switch").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")

    # Report the card lost, then replace it.
    page.get_by_role("link", name="Report loss").click()
    page.get_by_test_id("confirm-form").locator("select[name=reason]").select_option("stolen")
    desk.shot("10-loss-confirm")
    page.get_by_test_id("confirm-form").locator("button.primary").click()
    expect(page.get_by_test_id("receipt")).to_contain_text("Loss reported")
    assert desk.field("loss.reason") == "Stolen"
    page.get_by_test_id("back-to-card").click()
    expect(page.get_by_test_id("card-state")).to_have_text("Lost")
    page.get_by_role("link", name="Replace the card").click()
    page.get_by_test_id("confirm-form").locator("button.primary").click()
    expect(page.get_by_test_id("receipt")).to_contain_text("Replacement")
    new_card = desk.field("replace.new_card")
    assert new_card != card_no and desk.field("settlement.from") == card_no
    desk.shot("11-replacement-receipt")
    desk.close()

    tablet = Desk(browser, site, viewport=TABLET)
    tablet.login("clerk-a")
    tablet.go(f"/web/counter/cards/{new_card}")
    expect(tablet.page.get_by_test_id("issue-form")).to_be_visible()
    width = tablet.page.evaluate("document.documentElement.scrollWidth")
    assert width <= TABLET["width"], f"the tablet page scrolls sideways ({width}px)"
    tablet.shot("12-tablet-card")
    tablet.close()


def _seed_clearing_day(city: City) -> None:
    """A day of the city: a card loaded at the counter, bus taps through the day on two companies, one record
    whose TAC was forged (a rejected exception), uploaded as the devices do."""
    city.clock.set(DAY, 6, 30)
    cards = [city.new_card(load=20_000) for _ in range(2)]
    city.send_counter()
    taps_a: list[BatchRecord] = []
    taps_b: list[BatchRecord] = []
    for hour, amount in ((7, 200), (7, 200), (8, 200), (8, 150), (9, 200), (12, 300), (17, 200), (18, 250)):
        city.clock.set(DAY, hour, 10 + len(taps_a))
        taps_a.append(city.tap("BUSA-V01", cards[0], amount))
    for hour in (8, 17):
        city.clock.set(DAY, hour, 30)
        taps_b.append(city.tap("BUSB-V01", cards[1], 180))
    city.clock.set(DAY, 19, 0)
    forged = tampered(city.tap("BUSA-V02", cards[1], 100), tac="00000000")
    assert city.send("BUSA-V01", taps_a) == "accepted"
    assert city.send("BUSB-V01", taps_b) == "accepted"
    assert city.send("BUSA-V02", [forged]) == "accepted"


def test_finance_desk_run_resolve_approve_download(browser: Browser, site: Site) -> None:
    desk = Desk(browser, site)
    page = desk.page
    desk.login("finance")
    expect(page.locator("h1")).to_contain_text("Finance desk")
    desk.shot("20-finance-desk-today")
    expect(page.locator('[data-code="not_built"]')).to_have_count(0)  # the facade calls clearing

    _seed_clearing_day(site.city)
    day = DAY.isoformat()
    desk.go(f"/web/finance?date={day}")
    form = page.get_by_test_id("run-form")
    form.locator("input[name=business_date]").fill(day)
    form.locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_have_text("Clearing run started.")
    desk.shot("21-clearing-run-started")
    expect(page.get_by_test_id("run-progress")).to_have_attribute(
        "data-status", re.compile("finished|failed"), timeout=60_000
    )
    expect(page.get_by_test_id("run-result")).to_be_visible()
    desk.shot("22-clearing-run-finished")

    desk.go(f"/web/finance?date={day}")
    expect(page.get_by_test_id("total-count")).not_to_have_text("0")
    expect(page.get_by_test_id("chart-hours").locator("svg rect").first).to_be_visible()
    desk.shot("23-finance-day-at-a-glance")

    # Maker: propose to reject the forged record.
    desk.go("/web/finance/exceptions?status=open")
    item = page.get_by_test_id("exception").filter(has_text="bad_tac").first
    exception_id = item.get_attribute("data-exception-id")
    propose = item.get_by_test_id("propose-form")
    actions = propose.locator("select[name=action] option").evaluate_all("options => options.map(o => o.value)")
    propose.locator("select[name=action]").select_option("reject" if "reject" in actions else actions[0])
    propose.locator("input[name=note]").fill("TAC does not verify: forged record")
    desk.shot("24-exception-open")
    propose.locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_contain_text("The proposal is recorded")
    desk.go("/web/finance/exceptions?status=proposed")
    expect(page.locator(f'[data-exception-id="{exception_id}"]').get_by_test_id("four-eyes")).to_be_visible()
    desk.shot("25-exception-proposed")
    desk.close()

    # Checker: another member of finance approves.
    checker = Desk(browser, site)
    checker.login("finance-2")
    checker.go("/web/finance/exceptions?status=proposed")
    decide = checker.page.locator(f'[data-exception-id="{exception_id}"]').get_by_test_id("decide-form")
    decide.locator("input[name=note]").fill("agreed")
    decide.locator("button[value=approve]").click()
    expect(checker.page.get_by_test_id("flash")).to_have_text("The decision is recorded.")
    checker.go("/web/finance/exceptions?status=resolved")
    expect(checker.page.locator(f'[data-exception-id="{exception_id}"]')).to_be_visible()
    checker.shot("26-exception-approved")

    # Statements and a report download.
    checker.go(f"/web/finance/statements?date={day}")
    expect(checker.page.get_by_test_id("statements")).to_contain_text("OP-BUS-A")
    checker.shot("27-statements")
    with checker.page.expect_download() as downloading:
        checker.page.get_by_test_id("downloads").locator("a[data-format=csv]").click()
    download = downloading.value
    saved = ARTIFACTS / f"report-{day}.csv"
    download.save_as(str(saved))
    assert saved.stat().st_size > 0 and b"OP-BUS-A" in saved.read_bytes()
    checker.go(f"/web/finance/reconciliation?date={day}")
    expect(checker.page.get_by_test_id("recon-banner")).to_be_visible()
    checker.shot("28-reconciliation")
    checker.close()


def test_finance_pages_in_the_browser_over_a_stand_in_facade(
    browser: Browser, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finance pages' own behaviour in Chromium (the run followed in place by the page's script, the
    maker-checker forms, a download), over the in-memory stand-in of the facade's contract that the unit tests use
    (tests/unit/api/test_web_desks.py). Screenshots are named ``standin-*``: their figures are the stand-in's."""
    fake = FakeFinance()
    for name in FACADE_FUNCTIONS:
        monkeypatch.setattr(finance, name, getattr(fake, name))
    day = FAKE_DAY.isoformat()
    desk = Desk(browser, site)
    page = desk.page
    desk.login("finance")
    desk.go(f"/web/finance?date={day}")
    expect(page.get_by_test_id("total-count")).to_have_text("123")
    expect(page.get_by_test_id("chart-hours").locator("svg rect").first).to_be_visible()
    desk.shot("standin-30-finance-day")
    page.get_by_test_id("run-form").locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_have_text("Clearing run started.")
    # The script follows the run in place (no reload): the progress block is replaced until it is finished.
    expect(page.get_by_test_id("run-progress")).to_have_attribute("data-status", "finished", timeout=10_000)
    expect(page.get_by_test_id("flash")).to_be_visible()  # still the same document
    expect(page.get_by_test_id("run-result")).to_contain_text("OP-WATER")
    desk.shot("standin-31-run-finished")

    desk.go("/web/finance/exceptions?status=open")
    item = page.locator('[data-exception-id="7"]')
    item.locator("select[name=action]").select_option("reject")
    item.locator("input[name=note]").fill("TAC does not verify")
    item.locator("button[type=submit]").click()
    expect(page.get_by_test_id("flash")).to_contain_text("The proposal is recorded")
    desk.go("/web/finance/exceptions?status=proposed")
    expect(page.locator('[data-exception-id="7"]').get_by_test_id("four-eyes")).to_be_visible()
    desk.shot("standin-32-exception-proposed")
    desk.close()

    checker = Desk(browser, site)
    checker.login("finance-2")
    checker.go("/web/finance/exceptions?status=proposed")
    checker.page.locator('[data-exception-id="7"]').locator("button[value=approve]").click()
    expect(checker.page.get_by_test_id("flash")).to_have_text("The decision is recorded.")
    assert fake.items[7].status == "resolved" and fake.items[7].decided_by == "finance-2"
    checker.go(f"/web/finance/statements?date={day}")
    with checker.page.expect_download() as downloading:
        checker.page.get_by_test_id("downloads").locator("a[data-format=csv]").click()
    assert downloading.value.suggested_filename == f"clearing-{day}.csv"
    checker.shot("standin-33-statements")
    checker.go(f"/web/finance/reconciliation?date={day}")
    expect(checker.page.get_by_test_id("recon-banner")).to_have_text("Some checks disagree.")
    checker.page.get_by_test_id("lang-switch").click()
    expect(checker.page.get_by_test_id("recon-banner")).to_have_text("部分核对不一致。")
    checker.shot("standin-34-reconciliation-zh")
    checker.go(f"/web/finance?date={day}")
    checker.shot("standin-35-finance-day-zh")
    checker.close()

    tablet = Desk(browser, site, viewport=TABLET)
    tablet.login("finance")
    tablet.go(f"/web/finance?date={day}")
    expect(tablet.page.get_by_test_id("chart-operators").locator("svg")).to_be_visible()
    width = tablet.page.evaluate("document.documentElement.scrollWidth")
    assert width <= TABLET["width"], f"the tablet page scrolls sideways ({width}px)"
    tablet.shot("standin-36-finance-day-tablet")
    tablet.close()
