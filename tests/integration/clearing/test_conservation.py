"""Money conservation (issue #6), as a Hypothesis state machine over random days of a city: loads, taps, tears
(unconfirmed records), losses, replacements with their balance transfer, refunds paid out, late uploads and
clearing runs. After every step the reconciliation identities hold; every run closes its day with every check
holding; no record is settled twice. On SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from integration.clearing.citykit import DAY, City, open_city, prepare, unconfirmed
from sqlalchemy import create_engine, text

from cardos.batch import BatchRecord
from clearing.clear import RunRef
from clearing.reconcile import reconcile
from clearing.rules import Policy
from issuance import services
from issuance.lifecycle import SettlementStatus
from issuance.models import Card
from terminal.channel import InProcessChannel
from terminal.errors import TransactionRefused

POLICY = Policy(pending_days=2, settlement_grace_days=0)
VALIDATORS = ("BUSA-V01", "BUSA-V02", "BUSB-V01")
_examples = itertools.count()


@dataclass
class Template:
    """A prepared database each example copies."""

    url: str
    copy: Callable[[int], str]


@pytest.fixture
def template(db_url: str, tmp_path: Path) -> Template:
    prepare(db_url)
    if db_url.startswith("sqlite"):
        source = Path(db_url.removeprefix("sqlite:///"))

        def copy_sqlite(number: int) -> str:
            target = tmp_path / f"example-{number}.db"
            shutil.copy(source, target)
            return f"sqlite:///{target}"

        return Template(db_url, copy_sqlite)
    base, _, name = db_url.rpartition("/")
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")

    def copy_postgres(number: int) -> str:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}_x{number}" TEMPLATE "{name}"'))
        return f"{base}/{name}_x{number}"

    return Template(db_url, copy_postgres)


def test_money_is_conserved_through_random_days(template: Template, tmp_path: Path) -> None:
    class CityDays(RuleBasedStateMachine):
        """A city living through days, cleared at the end of each."""

        def __init__(self) -> None:
            super().__init__()
            number = next(_examples)
            folder = tmp_path / f"keys-{number}"
            folder.mkdir()
            self.city: City = open_city(template.copy(number), folder, POLICY, prepared=True)
            self.day = DAY
            self.active: list[str] = []
            self.waiting: dict[str, list[BatchRecord]] = {device: [] for device in VALIDATORS}
            self.settled_runs = 0
            self.steps = 0

        def teardown(self) -> None:
            STATS.append((self.settled_runs, self.steps))
            self.city.dispose()

        # --- issuance -------------------------------------------------------------------------------------

        @initialize(loads=st.lists(st.sampled_from([2_000, 5_000, 10_000]), min_size=2, max_size=4))
        def cards(self, loads: list[int]) -> None:
            self.active += [self.city.new_card(load=amount) for amount in loads]

        @rule(amount=st.sampled_from([500, 3_000]), which=st.integers(0, 10))
        @precondition(lambda self: bool(self.active))
        def load(self, amount: int, which: int) -> None:
            self.city.load(self.active[which % len(self.active)], amount)

        @rule(
            amount=st.sampled_from([0, 150, 200, 1_200]), which=st.integers(0, 10), device=st.sampled_from(VALIDATORS)
        )
        @precondition(lambda self: bool(self.active))
        def tap(self, amount: int, which: int, device: str) -> None:
            with contextlib.suppress(TransactionRefused):  # not enough on the card
                self.waiting[device].append(self.city.tap(device, self.active[which % len(self.active)], amount))

        @rule(which=st.integers(0, 10), device=st.sampled_from(VALIDATORS))
        @precondition(lambda self: bool(self.active))
        def tear(self, which: int, device: str) -> None:
            """The card leaves during DEBIT: the debit happened, the terminal writes the record unconfirmed."""
            with contextlib.suppress(TransactionRefused):
                self.waiting[device].append(
                    unconfirmed(self.city.tap(device, self.active[which % len(self.active)], 100))
                )

        @rule(which=st.integers(0, 10), replace=st.booleans())
        @precondition(lambda self: len(self.active) > 1)
        def lose(self, which: int, replace: bool) -> None:
            card_no = self.active.pop(which % len(self.active))
            self.city.report_loss(card_no)
            if replace:
                with self.city.uow() as uow:
                    view = services.replace_card(uow, self.city.clerk, old_card_no=card_no, clock=self.city.clock)
                new_no = view.new_card.card_no
                self.city.issue_applied(new_no)
                self.active.append(new_no)

        @rule(which=st.integers(0, 10))
        @precondition(lambda self: len(self.active) > 1)
        def refund(self, which: int) -> None:
            card_no = self.active.pop(which % len(self.active))
            with self.city.uow() as uow:
                services.refund_card(
                    uow, self.city.supervisor, self.city.keystore, card_no=card_no, clock=self.city.clock
                )

        @rule()
        def settle_closed_cards(self) -> None:
            """Ready balances go where they belong: onto the replacement card, or paid out."""
            with self.city.uow() as uow:
                ready = uow.session.execute(
                    text("SELECT id, kind, to_card_id FROM balance_settlements WHERE status = 'ready'")
                ).all()
                cards = {
                    row.id: (row.card_no, row.state) for row in uow.session.query(Card.id, Card.card_no, Card.state)
                }
            for settlement_id, kind, to_card_id in ready:
                if kind == "transfer" and cards[to_card_id][1] == "active":
                    numbers = {card_id: number for card_id, (number, _) in cards.items()}
                    with InProcessChannel(self.city.chips[numbers[to_card_id]]) as channel:
                        services.collect_transfer(
                            lambda: self.city.uow(), self.city.clerk, self.city.keystore, channel,
                            settlement_id=settlement_id, term_id="031000009001", clock=self.city.clock,
                        )  # fmt: skip
                elif kind != "transfer":
                    with self.city.uow() as uow:
                        services.pay_out_refund(
                            uow, self.city.supervisor, settlement_id=settlement_id, clock=self.city.clock
                        )

        # --- uploads and clearing ------------------------------------------------------------------------

        @rule(device=st.sampled_from(VALIDATORS))
        def upload(self, device: str) -> None:
            """A validator uploads what it holds (possibly days late)."""
            if self.waiting[device]:
                self.city.send(device, self.waiting[device])
                self.waiting[device] = []

        @rule()
        def counter_uploads(self) -> None:
            self.city.send_counter()

        @rule()
        def end_of_day(self) -> None:
            self.city.send_counter()
            state = self.city.run(self.day)
            assert state.stage == "done", state.result
            assert all(check["ok"] for check in (state.result or {})["checks"])
            self.day += timedelta(days=1)
            self.city.clock.set(self.day, 7)
            self.settled_runs += 1

        # --- the identities ----------------------------------------------------------------------------------

        @invariant()
        def money_is_conserved(self) -> None:
            self.steps += 1
            with self.city.uow() as uow:
                checks = {
                    c.name: c for c in reconcile(uow.session, RunRef(0, self.day, 0), POLICY) if c.name in IDENTITIES
                }
                posted_twice = uow.session.execute(
                    text(
                        "SELECT count(*) FROM (SELECT record_id FROM clearing_verdict WHERE posting IN "
                        "('float', 'suspense') GROUP BY record_id HAVING count(*) > 1) twice"
                    )
                ).scalar_one()
                closed_balances = uow.session.execute(
                    text("SELECT coalesce(sum(amount), 0) FROM balance_settlements WHERE status = :s"),
                    {"s": str(SettlementStatus.READY)},
                ).scalar_one()
            for name in IDENTITIES:
                assert checks[name].ok, checks[name]
            assert posted_twice == 0
            assert closed_balances >= 0

    STATS.clear()
    run_state_machine_as_test(
        CityDays,
        settings=settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each step touches a database: no slow shrinking
        ),
    )
    assert sum(runs for runs, _ in STATS) >= len(STATS), STATS  # days were cleared, not just lived


STATS: list[tuple[int, int]] = []
"""(clearing runs, steps) of each example, to see the days were lived."""
IDENTITIES = ("ledger_balanced", "card_shadows_equal_float", "suspense_open_items")
"""The identities that hold at any moment; the others (the day's float movement, payables, drained clearing
accounts, every record decided) are checked by each run, which must close its day."""
