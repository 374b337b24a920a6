"""Kiosk bills: look up, hold, pay exactly once and in full, release; both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from integration.api.devicekit import TERM_IDS, DeviceClient, World, purchase

from backoffice.errors import Conflict, InvalidInput
from cardos.batch import RecordStatus
from clearing.bills import create_bill, hold_bill
from clearing.models import Bill
from clearing.registry import DeviceIdentity, load_device_credentials

BILL_KEYS = {"bill_no", "utility", "account", "period", "amount_due", "status"}


@pytest.fixture
def bills(world: World) -> World:
    """Two water bills and a gas bill of account A100, and a water bill of account A200."""
    for bill_no, utility, operator_id, account, period, amount in (
        ("W-2025-01", "water", "OP-WATER", "A100", "2025-01", 4500),
        ("W-2025-02", "water", "OP-WATER", "A100", "2025-02", 3900),
        ("G-2025-02", "gas", "OP-GAS", "A100", "2025-02", 8800),
        ("W2-2025-02", "water", "OP-WATER", "A200", "2025-02", 1000),
    ):
        with world.uow() as uow:
            create_bill(
                uow,
                bill_no=bill_no,
                utility=utility,
                operator_id=operator_id,
                account=account,
                period=period,
                amount_due=amount,
            )
    return world


def payment(bill_no: str, amount: int, device_id: str = "KIOSK-01", seq: int = 1, **changes: Any) -> dict[str, Any]:
    """The purchase record a kiosk reports for a bill (spec §5 columns as JSON keys)."""
    record = purchase(seq, amount, term_id=TERM_IDS[device_id], ref=bill_no, txn_type="06").to_json()
    record.update(changes)
    return record


def _statuses(kiosk: DeviceClient) -> dict[str, str]:
    found = kiosk.get("/devices/bills?utility=water&account=A100").json()["bills"]
    return {bill["bill_no"]: bill["status"] for bill in found}


def test_look_up_open_bills_of_an_account(bills: World) -> None:
    kiosk = bills.device("KIOSK-01")
    found = kiosk.get("/devices/bills?utility=water&account=A100")
    assert found.status_code == 200, found.text
    assert found.json() == {
        "bills": [
            {"bill_no": "W-2025-01", "utility": "water", "account": "A100", "period": "2025-01", "amount_due": 4500,
             "status": "open"},
            {"bill_no": "W-2025-02", "utility": "water", "account": "A100", "period": "2025-02", "amount_due": 3900,
             "status": "open"},
        ]
    }  # fmt: skip
    assert [b["bill_no"] for b in kiosk.get("/devices/bills?utility=gas&account=A100").json()["bills"]] == ["G-2025-02"]
    assert kiosk.get("/devices/bills?utility=water&account=NOBODY").json() == {"bills": []}
    bad = kiosk.get("/devices/bills?utility=beer&account=A100")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"

    # a utility company's kiosk sees that company's bills only
    water_kiosk = bills.device("WATER-K01")
    assert len(water_kiosk.get("/devices/bills?utility=water&account=A100").json()["bills"]) == 2
    assert water_kiosk.get("/devices/bills?utility=gas&account=A100").json() == {"bills": []}
    assert water_kiosk.post_json("/devices/bills/G-2025-02/hold", {"amount": 8800}).status_code == 404


def test_hold_pay_once_and_in_full(bills: World) -> None:
    kiosk, other = bills.device("KIOSK-01"), bills.device("KIOSK-02")

    partial = kiosk.post_json("/devices/bills/W-2025-01/hold", {"amount": 4000})
    assert partial.status_code == 422
    assert partial.json()["error"]["code"] == "amount_mismatch"
    assert partial.json()["error"]["details"] == {"amount_due": 4500}

    held = kiosk.post_json("/devices/bills/W-2025-01/hold", {"amount": 4500})
    assert held.status_code == 200, held.text
    until = bills.clock.now + timedelta(seconds=120)
    assert held.json() == {
        "bill_no": "W-2025-01",
        "status": "held",
        "amount_due": 4500,
        "held_until": until.isoformat().replace("+00:00", "Z"),
    }
    assert other.post_json("/devices/bills/W-2025-01/hold", {"amount": 4500}).status_code == 409
    assert other.request("DELETE", "/devices/bills/W-2025-01/hold").status_code == 409
    assert (
        other.post_json("/devices/bills/W-2025-01/payment", payment("W-2025-01", 4500, "KIOSK-02")).status_code == 409
    )
    statuses = {
        b["bill_no"]: b["status"] for b in other.get("/devices/bills?utility=water&account=A100").json()["bills"]
    }
    assert statuses == {"W-2025-01": "held", "W-2025-02": "open"}

    short = kiosk.post_json("/devices/bills/W-2025-01/payment", payment("W-2025-01", 4400))
    assert short.status_code == 422 and short.json()["error"]["code"] == "amount_mismatch"

    record = payment("W-2025-01", 4500)
    paid = kiosk.post_json("/devices/bills/W-2025-01/payment", record)
    assert paid.status_code == 200, paid.text
    assert paid.json() == {
        "bill_no": "W-2025-01",
        "status": "paid",
        "amount_paid": 4500,
        "paid_at": bills.clock.now.isoformat().replace("+00:00", "Z"),
    }
    bills.clock.advance(30)
    again = kiosk.post_json("/devices/bills/W-2025-01/payment", record)
    assert again.status_code == 200 and again.json() == paid.json()

    another = kiosk.post_json("/devices/bills/W-2025-01/payment", payment("W-2025-01", 4500, seq=2))
    assert another.status_code == 409 and another.json()["error"]["code"] == "conflict"
    assert other.post_json("/devices/bills/W-2025-01/payment", record).status_code == 409
    assert kiosk.post_json("/devices/bills/W-2025-01/hold", {"amount": 4500}).status_code == 409
    assert kiosk.request("DELETE", "/devices/bills/W-2025-01/hold").status_code == 409
    assert [b["bill_no"] for b in kiosk.get("/devices/bills?utility=water&account=A100").json()["bills"]] == [
        "W-2025-02"
    ]

    [bill] = [b for b in bills.rows(Bill) if b.bill_no == "W-2025-01"]
    assert (bill.status, bill.paid_by_device_id, bill.amount_paid) == ("paid", "KIOSK-01", 4500)
    assert (bill.payment_term_id, bill.payment_term_seq) == (TERM_IDS["KIOSK-01"], 1001)
    assert bill.payment_record == {**record, "status": "ok"}
    assert (bill.held_by_device_id, bill.held_until) == (None, None)


def test_payment_records_are_checked(bills: World) -> None:
    kiosk = bills.device("KIOSK-01")
    path = "/devices/bills/W-2025-02/payment"
    refusals = {
        "ref is another bill": payment("W-2025-01", 3900),
        "a load": payment("W-2025-02", 3900, txn_type="02"),
        "unconfirmed": payment("W-2025-02", 3900, status="unconfirmed", tac=""),
        "another terminal": payment("W-2025-02", 3900, term_id=TERM_IDS["KIOSK-02"]),
        "bad card_no": payment("W-2025-02", 3900, card_no="123"),
        "amount as a string": {**payment("W-2025-02", 3900), "amount": "3900"},
        "an unknown key": {**payment("W-2025-02", 3900), "bonus": 1},
    }
    for case, record in refusals.items():
        response = kiosk.post_json(path, record)
        assert response.status_code == 422, case
        assert response.json()["error"]["code"] == "invalid_input", case
    missing = payment("W-2025-02", 3900)
    del missing["tac"]
    assert kiosk.post_json(path, missing).status_code == 422
    assert kiosk.request("POST", path, b"not json").status_code == 422
    assert kiosk.post_json("/devices/bills/NO-SUCH/payment", payment("NO-SUCH", 1)).status_code == 404
    # a bill that is not held may be paid; a record with the same (term_id, term_seq) cannot pay a second bill
    assert kiosk.post_json(path, payment("W-2025-02", 3900, status=RecordStatus.PROOF.value)).status_code == 200
    reused = kiosk.post_json("/devices/bills/W2-2025-02/payment", payment("W2-2025-02", 1000))
    assert reused.status_code == 409


def test_release_and_expiry_free_the_bill(bills: World) -> None:
    kiosk, other = bills.device("KIOSK-01"), bills.device("KIOSK-02")
    assert kiosk.post_json("/devices/bills/W-2025-02/hold", {"amount": 3900}).status_code == 200
    released = kiosk.request("DELETE", "/devices/bills/W-2025-02/hold")
    assert released.status_code == 200 and released.json() == {"bill_no": "W-2025-02", "status": "open"}
    assert kiosk.request("DELETE", "/devices/bills/W-2025-02/hold").status_code == 200

    assert other.post_json("/devices/bills/W-2025-02/hold", {"amount": 3900}).status_code == 200
    bills.clock.advance(119)
    assert kiosk.post_json("/devices/bills/W-2025-02/hold", {"amount": 3900}).status_code == 409
    bills.clock.advance(2)
    statuses = {
        b["bill_no"]: b["status"] for b in kiosk.get("/devices/bills?utility=water&account=A100").json()["bills"]
    }
    assert statuses["W-2025-02"] == "open"
    assert kiosk.post_json("/devices/bills/W-2025-02/hold", {"amount": 3900}).status_code == 200
    assert kiosk.post_json("/devices/bills/NO-SUCH/hold", {"amount": 1}).status_code == 404
    assert kiosk.post_json("/devices/bills/W-2025-02/hold", {"amount": "3900"}).status_code == 422
    assert kiosk.post_json("/devices/bills/W-2025-02/hold", {}).status_code == 422


def test_creating_bills(world: World) -> None:
    with world.uow() as uow:
        create_bill(uow, bill_no="E-1", utility="electricity", operator_id="OP-WATER", account="A1", period="2025-02",
                    amount_due=100)  # fmt: skip
        with pytest.raises(Conflict):
            create_bill(uow, bill_no="E-1", utility="electricity", operator_id="OP-WATER", account="A1",
                        period="2025-02", amount_due=100)  # fmt: skip
        for bad in (
            {"operator_id": "OP-BUS-A"},
            {"amount_due": 0},
            {"period": "2025-13"},
            {"utility": "beer"},
            {"bill_no": "has space"},
        ):
            fields: dict[str, Any] = {"bill_no": "E-2", "utility": "gas", "operator_id": "OP-GAS", "account": "A1",
                                      "period": "2025-02", "amount_due": 100, **bad}  # fmt: skip
            with pytest.raises(InvalidInput):
                create_bill(uow, **fields)


def test_a_kiosk_acting_on_a_stale_read_never_overwrites_another_kiosks_hold(bills: World) -> None:
    kiosk = _identity(bills, "KIOSK-01")
    with bills.uow() as uow:
        stale = uow.session.get(Bill, "W-2025-02")  # read before the other kiosk's hold
        assert stale is not None and stale.status == "open"
        taken = bills.device("KIOSK-02").post_json("/devices/bills/W-2025-02/hold", {"amount": 3900})
        assert taken.status_code == 200
        with pytest.raises(Conflict, match="changed meanwhile"):
            hold_bill(uow, kiosk, "W-2025-02", 3900, bills.clock.now)
    [bill] = [b for b in bills.rows(Bill) if b.bill_no == "W-2025-02"]
    assert bill.held_by_device_id == "KIOSK-02"


def _identity(world: World, device_id: str) -> DeviceIdentity:
    with world.uow() as uow:
        credentials = load_device_credentials(uow.session, device_id)
    assert credentials is not None
    return credentials.identity
