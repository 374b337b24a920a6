"""The counter through the API (SQLite, then PostgreSQL): residents, social security, issue, idempotent loads,
loss, replacement, refund, PIN reset, look-ups; desks; masking and its audit; the devices' hotlist."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from integration.api.devicekit import KEYS, registry_document, sign
from integration.api.staffkit import ID_NUMBERS, StaffWorld, staff_world
from sqlalchemy import select

from clearing.registry import import_registry, parse_registry_file
from issuance.bookkeeping import COUNTER_CASH, account_balance
from issuance.models import AuditEntry, Load, PurseMovement


@pytest.fixture
def world(db_url: str) -> Iterator[StaffWorld]:
    """Staff, desks and simulated readers over a fresh database (with the clearing schema for the devices)."""
    with staff_world(db_url, clearing=True) as opened:
        yield opened


def test_residents_social_security_and_masking(world: StaffWorld) -> None:
    resident_id = world.register(0)
    clerk_view = world.call("clerk-a", "GET", f"/counter/residents/{resident_id}").json()
    assert clerk_view["unmasked"] is False and clerk_view["id_number"] != ID_NUMBERS[0]
    assert clerk_view["id_number"].startswith(ID_NUMBERS[0][:3]) and clerk_view["id_number"].endswith(
        ID_NUMBERS[0][-4:]
    )
    # A clerk may not ask for unmasked data; an auditor may, and the read is audited.
    assert world.call("clerk-a", "GET", f"/counter/residents/{resident_id}?unmasked=true").status_code == 403
    audited = world.call("auditor", "GET", f"/counter/residents/{resident_id}?unmasked=true").json()
    assert audited["unmasked"] is True and audited["id_number"] == ID_NUMBERS[0]
    with world.uow() as uow:
        reads = uow.session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "personal_data.unmasked_read", AuditEntry.actor_id == "auditor"
            )
        ).all()
        assert len(reads) == 1 and reads[0].object_id == str(resident_id)
    found = world.call("finance", "POST", "/counter/residents/search", json={"id_number": ID_NUMBERS[0]})
    assert found.status_code == 200 and found.json()["resident_id"] == resident_id and not found.json()["unmasked"]
    missing = world.call("clerk-a", "POST", "/counter/residents/search", json={"id_number": ID_NUMBERS[1]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    duplicate = world.call(
        "clerk-b",
        "POST",
        "/counter/residents",
        json={"name": "LI SI", "id_number": ID_NUMBERS[0], "phone": "13800000001", "address": "2 Renmin Road"},
    )
    assert duplicate.status_code == 409
    # Mass assignment: an unknown field is refused, nothing is created.
    sneaky = world.call(
        "clerk-a",
        "POST",
        "/counter/residents",
        json={"name": "WANG WU", "id_number": ID_NUMBERS[2], "phone": "13800000002", "address": "x", "id": 1},
    )
    assert sneaky.status_code == 422 and sneaky.json()["error"]["code"] == "invalid_input"

    link = {"ss_number": ID_NUMBERS[0], "schemes": 3, "agency_code": "310000"}
    linked = world.call("clerk-a", "PUT", f"/counter/residents/{resident_id}/social-security", json=link)
    assert linked.status_code == 200, linked.text
    assert linked.json()["schemes"] == 3 and linked.json()["status"] == "active" and not linked.json()["unmasked"]
    wrong = world.call(
        "clerk-a", "PUT", f"/counter/residents/{resident_id}/social-security", json={**link, "ss_number": ID_NUMBERS[1]}
    )
    assert wrong.status_code == 422
    shown = world.call("super-a", "GET", f"/counter/residents/{resident_id}/social-security?unmasked=true")
    assert shown.json()["ss_number"] == ID_NUMBERS[0] and shown.json()["unmasked"] is True


def test_issue_load_loss_replacement(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    card = world.call("auditor", "GET", f"/counter/cards/{card_no}").json()
    assert card["state"] == "active" and card["registered"] and card["purse_limit"] == 500_000
    in_reader = world.call("clerk-a", "GET", "/counter/desks/DESK-A/card").json()
    assert in_reader["card_no"] == card_no and in_reader["card"]["state"] == "active"

    first = world.load(card_no, 20_000, key="load-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "ok" and body["balance_after"] == 20_000 and body["term_id"] == "031000009001"
    assert body["desk_id"] == "DESK-A" and body["device_seq"] == 1 and len(body["tac"]) == 8
    again = world.load(card_no, 20_000, key="load-1")
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    other_body = world.load(card_no, 30_000, key="load-1")
    assert other_body.status_code == 409 and other_body.json()["error"]["code"] == "idempotency_conflict"
    assert world.chip_balance(chip) == 20_000
    assert world.count(Load) == 1

    # A refusal by the card is stored and replayed too: a second key cannot go above the purse limit.
    over = world.load(card_no, 490_000, key="load-2")
    assert over.status_code == 422 and over.json()["error"]["code"] == "card_refused"
    assert world.load(card_no, 490_000, key="load-2").content == over.content

    # Another card in the reader than the request names: refused before anything happens, the key stays free.
    other_no, other_chip = world.new_card(1)
    world.readers.place("DESK-A", chip)
    wrong = world.load(other_no, 100, key="load-3")
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "wrong_card_in_reader"
    world.readers.place("DESK-A", other_chip)
    assert world.load(other_no, 100, key="load-3").status_code == 201
    world.readers.remove("DESK-A")
    assert world.load(other_no, 100).json()["error"]["code"] == "no_card_in_reader"

    # Loss: hotlisted at once, and the validators' hotlist (issuance's) has it.
    loss = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/loss", json={"reason": "stolen"})
    assert loss.status_code == 200 and loss.json()["reason"] == "stolen" and loss.json()["version"] == 1
    with world.uow() as uow:
        import_registry(uow, parse_registry_file(json.dumps(registry_document()).encode()))
    stamp = str(int(__import__("time").time()))
    signature = sign(KEYS["BUSA-V01"], "GET", "/devices/hotlist", stamp, b"")
    hotlist = world.client.get(
        "/devices/hotlist", headers={"X-Device-Id": "BUSA-V01", "X-Timestamp": stamp, "X-Signature": signature}
    ).json()
    assert hotlist["version"] == 1 and [e["card_no"] for e in hotlist["entries"]] == [card_no]

    replacement = world.call("clerk-a", "POST", f"/counter/cards/{card_no}/replacement")
    assert replacement.status_code == 201, replacement.text
    new_card = replacement.json()["new_card"]
    assert new_card["state"] == "applied" and replacement.json()["transfer"]["status"] == "pending"
    world.issue(new_card["card_no"])
    assert world.call("clerk-a", "GET", f"/counter/cards/{new_card['card_no']}").json()["state"] == "active"

    with world.uow() as uow:
        assert account_balance(uow.session, COUNTER_CASH) == -20_100

    metrics = world.client.get("/metrics").text
    assert 'onecard_counter_loads_total{outcome="201"} 2.0' in metrics
    assert 'onecard_counter_loads_total{outcome="replayed"} 2.0' in metrics
    assert "onecard_taps_received 0.0" in metrics  # the registry's devices have uploaded nothing yet


def test_desks_refund_and_pin_reset(world: StaffWorld) -> None:
    card_no, chip = world.new_card(0)
    # Clerk B's desk is B: desk A's reader is not theirs, whatever the card.
    foreign = world.load(card_no, 100, desk="DESK-A", as_="clerk-b")
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "forbidden"
    assert world.call("clerk-b", "GET", "/counter/desks/DESK-A/card").status_code == 403
    pin = world.call(
        "clerk-b", "POST", f"/counter/cards/{card_no}/pin-reset", json={"desk_id": "DESK-A", "new_pin": "4321"}
    )
    assert pin.status_code == 403
    world.readers.place("DESK-B", chip)
    assert world.load(card_no, 1_000, desk="DESK-B", as_="clerk-b").status_code == 201
    reset = world.call(
        "clerk-b", "POST", f"/counter/cards/{card_no}/pin-reset", json={"desk_id": "DESK-B", "new_pin": "4321"}
    )
    assert reset.status_code == 200, reset.text

    # Refunds are the supervisor's; with the card present the chip agrees with the shadow: settled now.
    assert world.call("clerk-a", "POST", f"/counter/cards/{card_no}/refund", json={}).status_code == 403
    world.readers.place("DESK-A", chip)
    refund = world.call("super-a", "POST", f"/counter/cards/{card_no}/refund", json={"desk_id": "DESK-A"})
    assert refund.status_code == 200, refund.text
    settlement = refund.json()
    assert settlement["kind"] == "refund" and settlement["status"] == "ready" and settlement["amount"] == 1_000
    path = f"/counter/settlements/{settlement['settlement_id']}/payout"
    assert world.call("clerk-a", "POST", path).status_code == 403
    paid = world.call("finance", "POST", path)
    assert paid.status_code == 200 and paid.json()["status"] == "done"
    assert world.call("finance", "POST", path).status_code == 409
    assert world.call("auditor", "GET", f"/counter/cards/{card_no}").json()["state"] == "refunded"
    with world.uow() as uow:
        movements = uow.session.scalars(select(PurseMovement).order_by(PurseMovement.id)).all()
        assert [m.kind for m in movements] == ["load", "settlement", "payout"]
