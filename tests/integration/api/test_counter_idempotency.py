"""Idempotent loads under 50 concurrent retries, against a real uvicorn on PostgreSQL: one load, one ledger
entry, the same response bytes for everyone. Then the claim's life on both databases: wait, conflict, release,
lease takeover."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn
from integration.api.staffkit import StaffWorld, staff_world
from services import Postgres, free_port
from sqlalchemy import select

from api import idempotency
from api.models import IdempotencyRecord
from issuance.bookkeeping import COUNTER_CASH, account_balance
from issuance.models import Load, PurseMovement

RETRIES = 50


@pytest.fixture
def served(postgres: Postgres) -> Iterator[tuple[StaffWorld, str]]:
    """The staff world on a fresh PostgreSQL database, served by uvicorn in a thread; its base URL."""
    with staff_world(postgres.create_database(f"idem{free_port()}")) as world:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(world.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        try:
            yield world, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def test_fifty_concurrent_retries_load_once(served: tuple[StaffWorld, str]) -> None:
    world, base = served
    card_no, chip = world.new_card(0)
    headers = world.headers("clerk-a", **{"Idempotency-Key": "retry-storm-1"})
    body = {"desk_id": "DESK-A", "amount": 12_345}
    start = threading.Barrier(RETRIES)

    def attempt(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=60) as client:
            start.wait()
            return client.post(f"/counter/cards/{card_no}/loads", json=body, headers=headers)

    with ThreadPoolExecutor(RETRIES) as pool:
        responses = list(pool.map(attempt, range(RETRIES)))

    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201][:3]
    assert len({r.content for r in responses}) == 1  # byte for byte
    assert sum(1 for r in responses if r.headers.get("Idempotent-Replayed") != "true") == 1
    assert responses[0].json()["balance_after"] == 12_345
    assert world.chip_balance(chip) == 12_345
    with world.uow() as uow:
        loads = uow.session.scalars(select(Load)).all()
        assert len(loads) == 1 and loads[0].amount == 12_345
        ledger = uow.session.scalars(select(PurseMovement).where(PurseMovement.kind == "load")).all()
        assert len(ledger) == 1 and ledger[0].reference == f"load:{loads[0].request_id}"
        assert account_balance(uow.session, COUNTER_CASH) == -12_345
        records = uow.session.scalars(select(IdempotencyRecord)).all()
        assert len(records) == 1 and records[0].state == "done" and records[0].response_body == responses[0].content

    # The same key with another body is a conflict, even now.
    with httpx.Client(base_url=base) as client:
        clash = client.post(f"/counter/cards/{card_no}/loads", json={**body, "amount": 1}, headers=headers)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_conflict"


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff and desks over a fresh database (SQLite, then PostgreSQL)."""
    with staff_world(db_url) as opened:
        yield opened


def test_claims_release_and_takeover(world: StaffWorld) -> None:
    new_uow, staff_id = world.state.new_uow, 1
    hashed = idempotency.request_hash("op", {"a": 1})
    claim = idempotency.begin(new_uow, staff_id, "k1", "op", hashed)
    assert isinstance(claim, idempotency.Claim)
    # While it runs, a retry waits, then gives up with a retryable 409.
    with pytest.raises(idempotency.IdempotencyInProgress):
        idempotency.begin(new_uow, staff_id, "k1", "op", hashed, wait_timeout=0.05)
    with pytest.raises(idempotency.IdempotencyConflict):
        idempotency.begin(new_uow, staff_id, "k1", "op", idempotency.request_hash("op", {"a": 2}))
    # Released (nothing happened): the key is free again.
    idempotency.release(new_uow, claim)
    again = idempotency.begin(new_uow, staff_id, "k1", "op", hashed)
    assert isinstance(again, idempotency.Claim) and again.token != claim.token
    # A claim whose holder died is taken over after its lease; the late holder's answer does not overwrite.
    later = datetime.now(UTC) + timedelta(minutes=5)
    taken = idempotency.begin(new_uow, staff_id, "k1", "op", hashed, clock=lambda: later)
    assert isinstance(taken, idempotency.Claim) and taken.token != again.token
    winner = idempotency.finish(new_uow, taken, idempotency.StoredResponse(201, b'{"first":true}'))
    assert winner.body == b'{"first":true}'
    late = idempotency.finish(new_uow, again, idempotency.StoredResponse(201, b'{"late":true}'))
    assert late.body == b'{"first":true}'
    assert idempotency.begin(new_uow, staff_id, "k1", "op", hashed) == winner


def test_a_load_that_never_reached_a_card_leaves_the_key_free(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    world.readers.remove("DESK-A")
    assert world.load(card_no, 500, key="k").json()["error"]["code"] == "no_card_in_reader"
    assert world.count(IdempotencyRecord) == 0
    world.readers.place("DESK-A", chip)
    done = world.load(card_no, 500, key="k")
    assert done.status_code == 201 and "Idempotent-Replayed" not in done.headers
    assert world.chip_balance(chip) == 500
