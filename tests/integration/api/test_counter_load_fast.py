"""Counter loads on the fast path (issue #7, performance): a first load commits twice (the key's claim with the
authorization, the stored response with the outcome), a replay commits nothing, and the hand-overs to the
claim-first path keep every answer exactly once. On SQLite, then PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from integration.api.staffkit import StaffWorld, staff_world
from sqlalchemy import event, select

from api import counter_service, idempotency
from api.models import IdempotencyRecord
from issuance.models import Load, PurseMovement


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff and desks over a fresh database (SQLite, then PostgreSQL)."""
    with staff_world(db_url) as opened:
        yield opened


def _commits(world: StaffWorld) -> list[int]:
    counted = [0]

    @event.listens_for(world.state.engine, "commit")
    def _count(_conn: Any) -> None:
        counted[0] += 1

    return counted


def test_a_first_load_commits_twice_and_a_replay_not_at_all(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    commits = _commits(world)
    first = world.load(card_no, 1_234, key="two-commits")
    assert first.status_code == 201 and first.json()["balance_after"] == 1_234
    assert commits[0] == 2
    again = world.load(card_no, 1_234, key="two-commits")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content and commits[0] == 2
    with world.uow() as uow:
        record = uow.session.scalars(select(IdempotencyRecord)).one()
        assert (record.state, record.response_status, record.response_body) == ("done", 201, first.content)
    assert world.chip_balance(chip) == 1_234 and world.count(Load) == 1


def test_a_key_claimed_after_the_look_up_is_replayed(world: StaffWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look-up said "new", but the key is taken by the time the load claims it: the claim-first path answers
    (here with the stored response), and the card is not loaded twice."""
    card_no, chip = world.new_card(0)
    first = world.load(card_no, 2_000, key="raced")
    monkeypatch.setattr(counter_service, "_on_record", lambda *_args: False)
    raced = world.load(card_no, 2_000, key="raced")
    assert raced.status_code == 201 and raced.headers["Idempotent-Replayed"] == "true"
    assert raced.content == first.content
    assert world.chip_balance(chip) == 2_000 and world.count(Load) == 1
    assert world.count(PurseMovement, PurseMovement.kind == "load") == 1
    conflict = world.load(card_no, 2_001, key="raced")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"


def test_a_refusal_before_the_authorization_is_stored_and_replayed(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    assert world.load(card_no, 400_000).status_code == 201
    refused = world.load(card_no, 200_000, key="too-much")  # above the purse limit: the card refuses INITIALIZE
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "card_refused"
    again = world.load(card_no, 200_000, key="too-much")
    assert again.status_code == 422 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == refused.content
    assert world.count(Load) == 1 and world.chip_balance(chip) == 400_000


def test_claim_in_and_store_in_hold_with_the_callers_transaction(world: StaffWorld) -> None:
    hashed = idempotency.request_hash("op", {"a": 1})
    with world.uow() as uow:
        conn = uow.session.connection()
        claim = idempotency.claim_in(conn, 1, "in-tx", "op", hashed)
        with pytest.raises(idempotency.KeyTaken):
            idempotency.claim_in(conn, 1, "in-tx", "op", hashed)
    # Rolled back: the key is free again.
    assert world.count(IdempotencyRecord) == 0
    with world.uow() as uow:
        conn = uow.session.connection()
        claim = idempotency.claim_in(conn, 1, "in-tx", "op", hashed)
        uow.commit()
    response = idempotency.StoredResponse(201, b'{"ok":true}')
    with world.uow() as uow:
        assert idempotency.store_in(uow.session.connection(), claim, response)
        uow.commit()
    with world.uow() as uow:  # a claim whose lease was taken over stores nothing
        stale = idempotency.Claim(claim.record_id, "someone else")
        assert not idempotency.store_in(uow.session.connection(), stale, response)
    assert idempotency.begin(world.state.new_uow, 1, "in-tx", "op", hashed) == response
