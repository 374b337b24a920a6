"""The finance endpoints over real clearing (issues #6 and #7), on SQLite and on PostgreSQL: a clearing day of the
tests' city (genuine bus taps on two companies, forged records), run through ``POST /finance/clearing-runs``
(in-process: no Redis), followed, its result and statements read, its exceptions resolved maker-checker by two
members of finance, its report downloaded in every format, and its reconciliation.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from integration.api.staffkit import FAST_HASHER, PASSWORD, StaffWorld, staff_world
from integration.clearing.citykit import DAY, City, open_city, tampered
from services import Redis

from api.staff_auth import create_staff
from backoffice.settings import Settings
from cardos.batch import BatchRecord
from clearing.runs import run_in_process

A_AMOUNTS = (200, 200, 200, 150, 200, 300, 200, 250)
B_AMOUNTS = (180, 180)


@dataclass
class Finance:
    """The staff world (with ``finance-2``, a second member of finance) over the city's database."""

    world: StaffWorld
    city: City

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> Any:
        """A request as ``who``."""
        return self.world.call(who, method, path, **kwargs)


@contextmanager
def finance_world(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str | None = None
) -> Iterator[Finance]:
    """The city (registry, keystore) and the staff app on one database; clearing on Redis when given."""
    city = open_city(db_url, tmp_path)
    for name, value in city.keystore_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ONECARD_REDIS_URL", raising=False)
    settings = Settings(database_url=db_url, keystore=city.keystore_env["ONECARD_KEYSTORE"], redis_url=redis_url)
    try:
        with staff_world(db_url, clearing=True, settings=settings) as world:
            with world.uow() as uow:
                create_staff(uow, "finance-2", PASSWORD, ["finance"], hasher=FAST_HASHER)
            yield Finance(world, city)
    finally:
        city.dispose()


@pytest.fixture
def fin(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Finance]:
    """The finance world with clearing in-process (no Redis)."""
    with finance_world(db_url, tmp_path, monkeypatch) as opened:
        yield opened


def seed_day(city: City) -> list[BatchRecord]:
    """A day: two loaded cards, bus taps on two companies, two forged records (the exceptions)."""
    city.clock.set(DAY, 6, 30)
    cards = [city.new_card(load=20_000) for _ in range(2)]
    city.send_counter()
    taps_a = []
    for index, amount in enumerate(A_AMOUNTS):
        city.clock.set(DAY, 7 + index, 10)
        taps_a.append(city.tap("BUSA-V01", cards[0], amount))
    taps_b = []
    for hour in (8, 17):
        city.clock.set(DAY, hour, 30)
        taps_b.append(city.tap("BUSB-V01", cards[1], 180))
    city.clock.set(DAY, 19, 0)
    forged = [tampered(city.tap("BUSA-V02", cards[1], 100), tac="00000000") for _ in range(2)]
    assert city.send("BUSA-V01", taps_a) == "accepted"
    assert city.send("BUSB-V01", taps_b) == "accepted"
    assert city.send("BUSA-V02", forged) == "accepted"
    return forged


def test_run_a_day_and_read_its_books(fin: Finance) -> None:
    seed_day(fin.city)
    day = DAY.isoformat()
    # Only finance starts runs.
    for who in ("auditor", "super-a"):
        assert fin.call(who, "POST", "/finance/clearing-runs", json={"business_date": day}).status_code == 403

    started = fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day})
    assert started.status_code == 202, started.text
    run = started.json()
    # Without Redis the run goes to its end within the request.
    assert run["status"] == "finished" and run["stage"] == "done" and run["started_by"] == "finance"
    assert run["business_date"] == day and run["run_no"] == 1 and run["errors"] == []
    assert run["records_total"] and run["records_done"] == run["records_total"]
    run_id = run["run_id"]

    for who in ("finance", "super-a", "auditor"):
        progress = fin.call(who, "GET", f"/finance/clearing-runs/{run_id}")
        assert progress.status_code == 200 and progress.json() == run
    assert fin.call("clerk-a", "GET", f"/finance/clearing-runs/{run_id}").status_code == 403
    assert fin.call("finance", "GET", "/finance/clearing-runs/999999").status_code == 404
    listed = fin.call("auditor", "GET", "/finance/clearing-runs", params={"date": day}).json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    other_day = (DAY + timedelta(days=5)).isoformat()
    assert fin.call("auditor", "GET", "/finance/clearing-runs", params={"date": other_day}).json()["runs"] == []

    result = fin.call("super-a", "GET", f"/finance/clearing-runs/{run_id}/result")
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["reconciled"] is True and body["run_id"] == run_id
    by_operator = {o["operator_id"]: o for o in body["operators"]}
    assert by_operator["OP-BUS-A"]["amount"] == sum(A_AMOUNTS) and by_operator["OP-BUS-A"]["count"] == len(A_AMOUNTS)
    assert by_operator["OP-BUS-B"]["amount"] == sum(B_AMOUNTS)
    assert body["records"]["rejected"] == 2 and body["records"]["settled"] >= len(A_AMOUNTS) + len(B_AMOUNTS)

    statements = fin.call("auditor", "GET", "/finance/statements", params={"date": day})
    assert statements.status_code == 200
    rows = {s["operator_id"]: s for s in statements.json()["statements"]}
    fee = (sum(A_AMOUNTS) * 15 + 500) // 1000  # 1.5 %, half up
    assert rows["OP-BUS-A"] == {
        "operator_id": "OP-BUS-A", "count": len(A_AMOUNTS), "amount": sum(A_AMOUNTS), "fee": fee,
        "payable": sum(A_AMOUNTS) - fee,
    }  # fmt: skip
    one = fin.call("finance", "GET", "/finance/statements", params={"date": day, "operator_id": "OP-BUS-B"}).json()
    assert [s["operator_id"] for s in one["statements"]] == ["OP-BUS-B"]
    assert fin.call("super-a", "GET", "/finance/statements", params={"date": day}).status_code == 403

    recon = fin.call("auditor", "GET", "/finance/reconciliation", params={"date": day})
    assert recon.status_code == 200, recon.text
    assert recon.json()["ok"] is True and recon.json()["business_date"] == day
    names = {c["name"] for c in recon.json()["checks"]}
    assert {"ledger_balanced", "card_shadows_equal_float", "operator_payable:OP-BUS-A"} <= names
    assert all(c["ok"] and c["expected"] == c["actual"] for c in recon.json()["checks"])
    assert fin.call("auditor", "GET", "/finance/reconciliation", params={"date": other_day}).status_code == 404

    # The day is closed: it is not run again; a day before it cannot be run (days close in order).
    again = fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    before = (DAY - timedelta(days=1)).isoformat()
    assert fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": before}).status_code == 409


def test_reports_in_every_format(fin: Finance) -> None:
    seed_day(fin.city)
    day = DAY.isoformat()
    assert fin.call("auditor", "GET", f"/finance/reports/{day}").status_code == 404  # not run yet
    assert fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day}).status_code == 202
    files: dict[str, bytes] = {}
    for fmt, media in (
        ("json", "application/json"),
        ("csv", "text/csv"),
        ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("pdf", "application/pdf"),
    ):
        response = fin.call("auditor", "GET", f"/finance/reports/{day}", params={"format": fmt})
        assert response.status_code == 200, (fmt, response.text)
        assert response.headers["content-type"].startswith(media)
        assert response.headers["content-disposition"] == f'attachment; filename="clearing-{day}.{fmt}"'
        files[fmt] = response.content
    document = json.loads(files["json"])
    assert document["date"] == day and document["status"] == "closed" and document["reconciliation"]["ok"]
    assert {o["operator_id"] for o in document["operators"]} == {"OP-BUS-A", "OP-BUS-B"}
    assert b"OP-BUS-A" in files["csv"] and files["csv"].startswith(b"report,date," + day.encode())
    with zipfile.ZipFile(io.BytesIO(files["xlsx"])) as book:
        assert any(name.startswith("xl/worksheets/") for name in book.namelist())
    assert files["pdf"].startswith(b"%PDF")
    # A closed day's report is the same document every time.
    assert fin.call("finance", "GET", f"/finance/reports/{day}").content == files["json"]
    assert fin.call("super-a", "GET", f"/finance/reports/{day}").status_code == 403
    assert fin.call("auditor", "GET", f"/finance/reports/{day}", params={"format": "doc"}).status_code == 422


def test_exceptions_maker_checker(fin: Finance) -> None:
    forged = seed_day(fin.city)
    day = DAY.isoformat()
    assert fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day}).status_code == 202

    listed = fin.call("auditor", "GET", "/finance/exceptions", params={"status": "open"})
    assert listed.status_code == 200, listed.text
    items = listed.json()["exceptions"]
    assert [(x["exception_class"], x["code"], x["status"]) for x in items] == [("rejected", "bad_tac", "open")] * 2
    assert {(x["card_no"], x["card_seq"], x["term_seq"]) for x in items} == {
        (r.card_no, r.card_seq, r.term_seq) for r in forged
    }
    assert all(x["business_date"] == day and x["operator_id"] == "OP-BUS-A" and x["amount"] == 100 for x in items)
    first, second = (x["exception_id"] for x in items)
    by_day = fin.call("finance", "GET", "/finance/exceptions", params={"date": day}).json()["exceptions"]
    assert {x["exception_id"] for x in by_day} == {first, second}
    assert fin.call("finance", "GET", "/finance/exceptions", params={"date": "2025-01-01"}).json() == {"exceptions": []}

    # Maker: finance proposes to reject the first forged record.
    path = f"/finance/exceptions/{first}"
    proposal = {"action": "reject", "note": "TAC does not verify: forged"}
    assert fin.call("auditor", "POST", f"{path}/resolution", json=proposal).status_code == 403
    assert (
        fin.call("finance", "POST", f"{path}/resolution", json={"action": "write_off", "note": "x"}).status_code == 422
    )
    proposed = fin.call("finance", "POST", f"{path}/resolution", json=proposal)
    assert proposed.status_code == 200, proposed.text
    assert proposed.json()["status"] == "proposed" and proposed.json()["proposed_by"] == "finance"
    assert proposed.json()["proposed_action"] == "reject" and proposed.json()["note"] == proposal["note"]
    assert fin.call("finance-2", "POST", f"{path}/resolution", json=proposal).status_code == 409  # one open proposal
    waiting = fin.call("finance", "GET", "/finance/exceptions", params={"status": "proposed"}).json()["exceptions"]
    assert [x["exception_id"] for x in waiting] == [first]

    # The maker cannot check their own proposal; an auditor is no checker; a supervisor or another finance user is.
    own = fin.call("finance", "POST", f"{path}/decision", json={"approve": True})
    assert own.status_code == 403 and own.json()["error"]["code"] == "forbidden"
    assert fin.call("auditor", "POST", f"{path}/decision", json={"approve": True}).status_code == 403
    approved = fin.call("finance-2", "POST", f"{path}/decision", json={"approve": True, "note": "agreed"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "resolved" and approved.json()["decided_by"] == "finance-2"
    assert approved.json()["exception_class"] == "rejected" and approved.json()["code"] == "bad_tac"
    assert fin.call("super-a", "POST", f"{path}/decision", json={"approve": True}).status_code == 409  # decided
    assert fin.call("finance", "POST", f"{path}/resolution", json=proposal).status_code == 409  # resolved
    resolved = fin.call("auditor", "GET", "/finance/exceptions", params={"status": "resolved"}).json()["exceptions"]
    assert [(x["exception_id"], x["proposed_by"], x["decided_by"]) for x in resolved] == [
        (first, "finance", "finance-2")
    ]

    # Refused: the exception is open again. An adjust needs an amount; a record that was not proposed is 409.
    other = f"/finance/exceptions/{second}"
    assert fin.call("super-a", "POST", f"{other}/decision", json={"approve": False}).status_code == 409
    assert (
        fin.call("finance-2", "POST", f"{other}/resolution", json={"action": "accept", "note": "n"}).status_code == 200
    )
    refused = fin.call("super-a", "POST", f"{other}/decision", json={"approve": False, "note": "no"})
    assert refused.status_code == 200 and refused.json()["status"] == "open" and refused.json()["proposed_by"] is None
    adjust = fin.call("finance", "POST", f"{other}/resolution", json={"action": "adjust", "note": "half"})
    assert adjust.status_code == 422 and adjust.json()["error"]["code"] == "invalid_input"
    assert fin.call("finance", "POST", "/finance/exceptions/999999/resolution", json=proposal).status_code == 404
    assert fin.call("finance", "POST", "/finance/exceptions/999999/decision", json={"approve": True}).status_code == 404

    # The approval took effect in the next clearing day, which runs and reconciles.
    later = (DAY + timedelta(days=1)).isoformat()
    next_run = fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": later})
    assert next_run.status_code == 202 and next_run.json()["status"] == "finished", next_run.text
    assert fin.call("auditor", "GET", "/finance/reconciliation", params={"date": later}).json()["ok"] is True


def test_with_redis_the_run_is_queued_for_the_workers_and_followed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: Redis
) -> None:
    broker_url = redis_server.url.rsplit("/", 1)[0] + "/9"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    with finance_world(db_url, tmp_path, monkeypatch, redis_url=broker_url) as fin:
        seed_day(fin.city)
        day = DAY.isoformat()
        started = fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day})
        assert started.status_code == 202, started.text
        run = started.json()
        # Sent to the workers after the commit (one ingest task per uploaded batch), nothing done yet.
        assert run["status"] == "queued" and run["stage"] == "ingest" and run["records_total"] is None
        assert broker.llen("clearing") == 4  # the counter's loads, two buses, the forged records
        progress = fin.call("auditor", "GET", f"/finance/clearing-runs/{run['run_id']}").json()
        assert progress["status"] == "queued" and progress["records_done"] == 0
        assert fin.call("auditor", "GET", f"/finance/clearing-runs/{run['run_id']}/result").status_code == 409
        # Starting it again resumes the same run (at most one unfinished run); another day waits for it.
        again = fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day})
        assert again.status_code == 202 and again.json()["run_id"] == run["run_id"]
        later = (DAY + timedelta(days=1)).isoformat()
        assert fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": later}).status_code == 409

        # A worker (here: this process) does the tasks; the run is followed to its end.
        assert run_in_process(fin.city.env, DAY).stage == "done"
        done = fin.call("auditor", "GET", f"/finance/clearing-runs/{run['run_id']}").json()
        assert done["status"] == "finished" and done["started_by"] == "finance"
        assert done["records_total"] and done["records_done"] == done["records_total"]
        assert fin.call("super-a", "GET", f"/finance/clearing-runs/{run['run_id']}/result").json()["reconciled"]
    broker.flushdb()
