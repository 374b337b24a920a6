"""The counter's card maintenance through the API (issue #7, completeness), on SQLite and on PostgreSQL: block and
unblock, cancel, activate, cardholder data, unconfirmed loads resolved with the card, a replacement's transfer
collected onto the new card. Each: the success path, a role that may not (403), another desk or an unknown object
(403 / 404), a bad body (422 with its message)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from integration.api.staffkit import StaffWorld, staff_world
from sqlalchemy import select
from support import LeavesAfterCredit

from cardos.card import Card
from issuance import services
from issuance.access import SYSTEM_CLEARING, Role, Staff
from issuance.lifecycle import LoadStatus
from issuance.models import AuditEntry, Load
from terminal.channel import InProcessChannel

NO_CARD = "0310999999999998"
"""A well-formed card number that is no card of ours."""


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff, desks and simulated readers over a fresh database."""
    with staff_world(db_url) as opened:
        yield opened


def invalid(response: httpx.Response) -> dict[str, Any]:
    """The error of a ``422 invalid_input`` answer (which must name its problems)."""
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_input" and error["message"] and error["details"]["problems"], error
    return error


def code(response: httpx.Response) -> str:
    """The error code of an error answer."""
    return str(response.json()["error"]["code"])


def unconfirmed_load(world: StaffWorld, chip: Card, amount: int, request_id: str) -> None:
    """A load whose card left after CREDIT with nowhere to wait for it: ``unconfirmed`` (issuance directly)."""
    ctx = world.state.counter
    assert ctx is not None
    outcome = services.load_card(
        world.state.new_uow,
        Staff("clerk-a", Role.CLERK),
        ctx.keys,
        InProcessChannel(LeavesAfterCredit(chip)),
        amount=amount,
        request_id=request_id,
        term_id="031000009001",
    )
    assert outcome.status is LoadStatus.UNCONFIRMED


def test_block_and_unblock(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    block = {"desk_id": "DESK-A"}
    # Roles: finance and auditors never touch a card; a clerk blocks but only a supervisor lifts a block.
    for who in ("finance", "auditor", "admin"):
        assert world.call(who, "POST", f"/counter/cards/{card_no}/block", json=block).status_code == 403
    # Another desk's reader, whatever the card.
    refused = world.call("clerk-b", "POST", f"/counter/cards/{card_no}/block", json=block)
    assert refused.status_code == 403 and code(refused) == "forbidden"
    missing = world.call("clerk-a", "POST", f"/counter/cards/{NO_CARD}/block", json=block)
    assert missing.status_code == 404 and code(missing) == "not_found"
    # Bodies: strict types, no extra fields (nothing mass-assigned), the desk required.
    invalid(world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json={**block, "permanent": "yes"}))
    error = invalid(world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json={**block, "state": "x"}))
    assert any("state" in str(p["loc"]) for p in error["details"]["problems"])
    invalid(world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json={}))
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["state"] == "active"

    blocked = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json=block)
    assert blocked.status_code == 200, blocked.text
    assert blocked.json()["state"] == "blocked" and blocked.json()["hotlisted_at"] is None
    # The purse is blocked on the chip: a load is refused by the card (or the host), nothing moves.
    assert world.load(card_no, 100).status_code in (409, 422)
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["shadow_balance"] == 0
    again = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json=block)
    assert again.status_code == 409

    unblock = {"desk_id": "DESK-A"}
    assert world.call("clerk-a", "POST", f"/counter/cards/{card_no}/unblock", json=unblock).status_code == 403
    missing = world.call("super-a", "POST", f"/counter/cards/{NO_CARD}/unblock", json=unblock)
    assert missing.status_code == 404
    invalid(world.call("super-a", "POST", f"/counter/cards/{card_no}/unblock", json={"desk_id": "DESK A"}))
    lifted = world.call("super-a", "POST", f"/counter/cards/{card_no}/unblock", json=unblock)
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["state"] == "active"
    assert world.load(card_no, 100).status_code == 201 and world.chip_balance(chip) == 100
    not_blocked = world.call("super-a", "POST", f"/counter/cards/{card_no}/unblock", json=unblock)
    assert not_blocked.status_code == 409 and code(not_blocked) == "conflict"

    # Another card in the reader than the request names, or none: refused before anything happens.
    other_no, other_chip = world.new_card(1)
    world.readers.place("DESK-A", chip)
    wrong = world.call("clerk-a", "POST", f"/counter/cards/{other_no}/block", json=block)
    assert wrong.status_code == 409 and code(wrong) == "wrong_card_in_reader"
    world.readers.remove("DESK-A")
    empty = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/block", json=block)
    assert empty.status_code == 409 and code(empty) == "no_card_in_reader"
    assert world.call("auditor", "GET", f"/counter/cards/{other_no}").json()["state"] == "active"

    # For good: locked and hotlisted; nobody unblocks it.
    world.readers.place("DESK-A", other_chip)
    locked = world.call("clerk-a", "POST", f"/counter/cards/{other_no}/block", json={**block, "permanent": True})
    assert locked.status_code == 200, locked.text
    assert locked.json()["state"] == "locked" and locked.json()["hotlisted_at"] is not None
    assert world.call("super-a", "POST", f"/counter/cards/{other_no}/unblock", json=unblock).status_code == 409


def test_cancel(world: StaffWorld) -> None:
    card_no, _chip = world.new_card(0)
    assert world.load(card_no, 1_000).status_code == 201
    cancel = {"desk_id": "DESK-A"}
    for who in ("clerk-a", "finance", "auditor", "admin"):
        assert world.call(who, "POST", f"/counter/cards/{card_no}/cancel", json=cancel).status_code == 403
    missing = world.call("super-a", "POST", f"/counter/cards/{NO_CARD}/cancel", json=cancel)
    assert missing.status_code == 404 and code(missing) == "not_found"
    invalid(world.call("super-a", "POST", f"/counter/cards/{card_no}/cancel", json={"desk_id": 7}))
    invalid(world.call("super-a", "POST", f"/counter/cards/{card_no}/cancel", json={"amount": 1_000}))
    # A supervisor of desk A cancels with desk A's reader only.
    assert (
        world.call("super-a", "POST", f"/counter/cards/{card_no}/cancel", json={"desk_id": "DESK-B"}).status_code == 403
    )

    cancelled = world.call("super-a", "POST", f"/counter/cards/{card_no}/cancel", json=cancel)
    assert cancelled.status_code == 200, cancelled.text
    settlement = cancelled.json()
    assert settlement["kind"] == "cancel" and settlement["status"] == "ready" and settlement["amount"] == 1_000
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["state"] == "cancelled"
    assert world.call("super-a", "POST", f"/counter/cards/{card_no}/cancel", json=cancel).status_code == 409
    paid = world.call("finance", "POST", f"/counter/settlements/{settlement['settlement_id']}/payout")
    assert paid.status_code == 200 and paid.json()["status"] == "done"
    # The whole card is blocked: it answers nothing any more.
    assert world.load(card_no, 100).status_code in (409, 422)

    # An applied card (no chip yet) is cancelled without a reader: nothing to settle.
    applied = world.apply(None)
    plain = world.call("super-a", "POST", f"/counter/cards/{applied}/cancel", json={})
    assert plain.status_code == 200, plain.text
    assert plain.json()["status"] == "done" and plain.json()["amount"] == 0


def test_activate(world: StaffWorld) -> None:
    ctx = world.state.counter
    assert ctx is not None and ctx.issuer is not None
    card_no = world.apply(world.register(0))
    results = services.personalise_batch(
        world.state.new_uow,
        Staff("clerk-a", Role.CLERK),
        ctx.keys,
        ctx.vault,
        ctx.issuer,
        [services.PersonalisationJob(card_no, InProcessChannel(world.factory_chip()), "1234")],
    )
    assert results[0].error is None
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["state"] == "personalised"

    for who in ("finance", "auditor", "admin"):
        assert world.call(who, "POST", f"/counter/cards/{card_no}/activate").status_code == 403
    assert code(world.call("clerk-a", "POST", f"/counter/cards/{NO_CARD}/activate")) == "not_found"
    invalid(world.call("clerk-a", "POST", "/counter/cards/12345/activate"))
    activated = world.call("clerk-b", "POST", f"/counter/cards/{card_no}/activate")  # no reader: any desk
    assert activated.status_code == 200, activated.text
    assert activated.json()["state"] == "active"
    again = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/activate")
    assert again.status_code == 409 and code(again) == "invalid_transition"


def test_change_cardholder_data(world: StaffWorld) -> None:
    card_no, _chip = world.new_card(0)
    path = f"/counter/cards/{card_no}/cardholder"
    change = {"desk_id": "DESK-A", "name": "LI SI", "phone": "13912345678"}
    for who in ("finance", "auditor", "admin"):
        assert world.call(who, "PATCH", path, json=change).status_code == 403
    assert world.call("clerk-b", "PATCH", path, json={**change, "desk_id": "DESK-A"}).status_code == 403
    assert code(world.call("clerk-a", "PATCH", f"/counter/cards/{NO_CARD}/cardholder", json=change)) == "not_found"
    error = invalid(world.call("clerk-a", "PATCH", path, json={"desk_id": "DESK-A"}))
    assert "at least one" in str(error["details"]["problems"])
    invalid(world.call("clerk-a", "PATCH", path, json={**change, "phone": "12"}))
    invalid(world.call("clerk-a", "PATCH", path, json={**change, "id_number": "110101199003071233"}))
    invalid(world.call("clerk-a", "PATCH", path, json={**change, "name": "A\u0000B"}))

    changed = world.call("clerk-a", "PATCH", path, json=change)
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["card_no"] == card_no and body["resident"]["name"] == "LI SI"
    assert body["resident"]["phone"] != "13912345678" and body["resident"]["phone"].endswith("5678")  # masked
    assert not body["resident"]["unmasked"]
    resident = world.call("super-a", "GET", f"/counter/residents/{body['resident']['resident_id']}?unmasked=true")
    assert resident.json()["name"] == "LI SI" and resident.json()["phone"] == "13912345678"
    # Address only: the record changes, the card keeps its files.
    moved = world.call("clerk-a", "PATCH", path, json={"desk_id": "DESK-A", "address": "9 Jiefang Road"})
    assert moved.status_code == 200 and moved.json()["resident"]["address"] == "9 Jiefang Road"
    with world.uow() as uow:
        changes = uow.session.scalars(select(AuditEntry).where(AuditEntry.action == "resident.change")).all()
        assert len(changes) == 2 and {e.actor_id for e in changes} == {"clerk-a"}

    # An anonymous card has no holder.
    anonymous = world.apply(None)
    world.issue(anonymous)
    conflict = world.call(
        "clerk-a", "PATCH", f"/counter/cards/{anonymous}/cardholder", json={"desk_id": "DESK-A", "name": "X"}
    )
    assert conflict.status_code == 409 and code(conflict) == "conflict"


def test_resolve_unconfirmed_loads(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    unconfirmed_load(world, chip, 4_000, "lost-answer")
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["shadow_balance"] == 0
    path = f"/counter/cards/{card_no}/loads/resolution"
    for who in ("finance", "auditor", "admin"):
        assert world.call(who, "POST", path, json={"desk_id": "DESK-A"}).status_code == 403
    assert world.call("clerk-b", "POST", path, json={"desk_id": "DESK-A"}).status_code == 403
    missing = world.call("clerk-a", "POST", f"/counter/cards/{NO_CARD}/loads/resolution", json={"desk_id": "DESK-A"})
    assert missing.status_code == 404
    invalid(world.call("clerk-a", "POST", path, json={}))
    invalid(world.call("clerk-a", "POST", path, json={"desk_id": "DESK-A", "request_id": "lost-answer"}))

    resolved = world.call("clerk-a", "POST", path, json={"desk_id": "DESK-A"})
    assert resolved.status_code == 200, resolved.text
    loads = resolved.json()["loads"]
    assert [(x["status"], x["amount"], x["balance_after"]) for x in loads] == [("proof", 4_000, 4_000)]
    assert loads[0]["term_id"] == "031000009001" and len(loads[0]["tac"]) == 8
    assert world.chip_balance(chip) == 4_000
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["shadow_balance"] == 4_000
    # Nothing left to resolve.
    again = world.call("super-a", "POST", path, json={"desk_id": "DESK-A"})
    assert again.status_code == 200 and again.json() == {"card_no": card_no, "loads": []}
    assert world.count(Load, Load.status == LoadStatus.PROOF) == 1


def test_collect_a_replacements_transfer(world: StaffWorld) -> None:
    card_no, _old_chip = world.new_card(0)
    assert world.load(card_no, 5_000).status_code == 201
    assert world.call("clerk-a", "POST", f"/counter/cards/{card_no}/loss", json={}).status_code == 200
    replacement = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/replacement").json()
    new_no, transfer_id = replacement["new_card"]["card_no"], replacement["transfer"]["settlement_id"]
    new_chip = world.issue(new_no)
    path = f"/counter/settlements/{transfer_id}/collection"
    collect = {"desk_id": "DESK-A"}
    # Pending until clearing has seen the old card's purchases.
    pending = world.call("clerk-a", "POST", path, json=collect)
    assert pending.status_code == 409 and code(pending) == "conflict"
    with world.uow() as uow:
        ready = services.complete_pending_transfers(uow, datetime.now(UTC) + timedelta(hours=1), actor=SYSTEM_CLEARING)
    assert [(s.settlement_id, s.amount) for s in ready] == [(transfer_id, 5_000)]

    for who in ("finance", "auditor", "admin"):
        assert world.call(who, "POST", path, json=collect).status_code == 403
    assert world.call("clerk-b", "POST", path, json=collect).status_code == 403
    missing = world.call("clerk-a", "POST", "/counter/settlements/999999/collection", json=collect)
    assert missing.status_code == 404 and code(missing) == "not_found"
    invalid(world.call("clerk-a", "POST", path, json={"desk_id": "DESK-A", "amount": 9_000}))
    invalid(world.call("clerk-a", "POST", "/counter/settlements/0/collection", json=collect))
    # The old card (or any other) in the reader is not where the balance goes.
    world.readers.place("DESK-A", _old_chip)
    wrong = world.call("clerk-a", "POST", path, json=collect)
    assert wrong.status_code == 409 and code(wrong) == "wrong_card_in_reader"

    world.readers.place("DESK-A", new_chip)
    collected = world.call("clerk-a", "POST", path, json=collect)
    assert collected.status_code == 200, collected.text
    body = collected.json()
    assert body["card_no"] == new_no and body["status"] == "ok" and body["amount"] == 5_000
    assert body["balance_after"] == 5_000 and world.chip_balance(new_chip) == 5_000
    # Once: a second call answers the same load.
    again = world.call("super-a", "POST", path, json=collect)
    assert again.status_code == 200 and again.json()["tac"] == body["tac"] and world.chip_balance(new_chip) == 5_000
    shown = world.call("auditor", "GET", f"/counter/cards/{new_no}").json()
    assert shown["shadow_balance"] == 5_000
    # A refund's settlement is no transfer.
    world.readers.place("DESK-A", new_chip)
    refund = world.call("super-a", "POST", f"/counter/cards/{new_no}/refund", json={"desk_id": "DESK-A"}).json()
    other = world.call("clerk-a", "POST", f"/counter/settlements/{refund['settlement_id']}/collection", json=collect)
    assert other.status_code == 404
