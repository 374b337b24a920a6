"""The supervisor as the checker of clearing exceptions (issue #7, completeness), over real clearing on SQLite and
PostgreSQL: supervisors and auditors list and read exceptions (``GET /finance/exceptions[/{id}]``), a supervisor
decides finance's ``adjust`` proposal, and maker-checker still holds (the maker never decides their own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.api.test_finance_api import Finance, finance_world, seed_day
from integration.clearing.citykit import DAY


@pytest.fixture
def fin(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Finance]:
    """The finance world with clearing in-process (no Redis)."""
    with finance_world(db_url, tmp_path, monkeypatch) as opened:
        yield opened


def test_supervisors_read_and_check_exceptions(fin: Finance) -> None:
    seed_day(fin.city)
    day = DAY.isoformat()
    assert fin.call("finance", "POST", "/finance/clearing-runs", json={"business_date": day}).status_code == 202

    # Supervisors (the checkers) and auditors list the queue; the counter does not.
    listed = fin.call("super-a", "GET", "/finance/exceptions", params={"status": "open"})
    assert listed.status_code == 200, listed.text
    items = listed.json()["exceptions"]
    assert len(items) == 2 and fin.call("auditor", "GET", "/finance/exceptions").status_code == 200
    for who in ("clerk-a", "admin"):
        assert fin.call(who, "GET", "/finance/exceptions").status_code == 403
    first = items[0]["exception_id"]
    path = f"/finance/exceptions/{first}"

    # One exception: the same view as in the list; unknown ids, bad ids and other roles refused.
    for who in ("super-a", "auditor", "finance"):
        shown = fin.call(who, "GET", path)
        assert shown.status_code == 200 and shown.json() == items[0], (who, shown.text)
    assert fin.call("clerk-a", "GET", path).status_code == 403
    missing = fin.call("super-a", "GET", "/finance/exceptions/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = fin.call("super-a", "GET", "/finance/exceptions/zero")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"

    # The maker (finance) proposes an adjustment; a supervisor may not propose; bodies are strict.
    adjust = {"action": "adjust", "amount": 60, "note": "half the fare"}
    assert fin.call("super-a", "POST", f"{path}/resolution", json=adjust).status_code == 403
    sneaky = fin.call("finance", "POST", f"{path}/resolution", json={**adjust, "proposed_by": "finance-2"})
    assert sneaky.status_code == 422 and sneaky.json()["error"]["message"]
    proposed = fin.call("finance", "POST", f"{path}/resolution", json=adjust)
    assert proposed.status_code == 200, proposed.text
    assert proposed.json()["proposed_action"] == "adjust" and proposed.json()["proposed_amount"] == 60
    shown = fin.call("super-a", "GET", path).json()
    assert shown["status"] == "proposed" and shown["proposed_by"] == "finance" and shown["proposed_amount"] == 60

    # Maker-checker: the maker cannot decide; the supervisor can.
    own = fin.call("finance", "POST", f"{path}/decision", json={"approve": True})
    assert own.status_code == 403 and own.json()["error"]["code"] == "forbidden"
    approved = fin.call("super-a", "POST", f"{path}/decision", json={"approve": True, "note": "checked"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "resolved" and approved.json()["decided_by"] == "super-a"
    assert fin.call("auditor", "GET", path).json()["decided_by"] == "super-a"
