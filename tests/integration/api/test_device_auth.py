"""Device request authentication (docs/device-api.md, "Authentication"), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging

import pytest
from integration.api.devicekit import KEYS, World, sign


def _error(response_json: dict[str, object]) -> dict[str, object]:
    assert set(response_json) == {"error"}
    error = response_json["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}
    return error


def test_a_signed_request_is_served_and_every_bad_one_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ok = world.device("BUSA-V01").get("/devices/hotlist")
    assert ok.status_code == 200, ok.text

    refusals = {
        "unknown device": world.device("NOBODY-01", "11" * 32).get("/devices/hotlist"),
        "retired device": world.device("BUSA-V09").get("/devices/hotlist"),
        "another device's key": world.device("BUSA-V01", KEYS["BUSA-V02"]).get("/devices/hotlist"),
        "malformed timestamp": world.device("BUSA-V01").request("GET", "/devices/hotlist", timestamp="17e8"),
        "no headers": world.client.get("/devices/hotlist"),
    }
    for case, response in refusals.items():
        assert response.status_code == 401, case
        assert _error(response.json())["code"] == "unauthorized", case
    # The same answer whether the device is unknown, retired or the signature wrong.
    messages = {
        _error(refusals[c].json())["message"] for c in ("unknown device", "retired device", "another device's key")
    }
    assert messages == {"device authentication failed"}
    for key in KEYS.values():
        assert key not in caplog.text
        assert all(key not in r.text for r in refusals.values())


def test_signature_covers_method_path_query_timestamp_and_body(world: World) -> None:
    client = world.device("BUSA-V01")
    stamp = str(int(world.clock.now.timestamp()))
    good = sign(KEYS["BUSA-V01"], "GET", "/devices/hotlist?since=0", stamp, b"")
    base = {"X-Device-Id": "BUSA-V01", "X-Timestamp": stamp}

    assert world.client.get("/devices/hotlist?since=0", headers={**base, "X-Signature": good}).status_code == 200
    assert (
        world.client.get("/devices/hotlist?since=0", headers={**base, "X-Signature": good.upper()}).status_code == 200
    )
    assert world.client.get("/devices/hotlist?since=1", headers={**base, "X-Signature": good}).status_code == 401
    assert world.client.get("/devices/hotlist", headers={**base, "X-Signature": good}).status_code == 401
    later = {**base, "X-Timestamp": str(int(stamp) + 1), "X-Signature": good}
    assert world.client.get("/devices/hotlist?since=0", headers=later).status_code == 401
    assert world.client.delete("/devices/hotlist?since=0", headers={**base, "X-Signature": good}).status_code in (
        401,
        405,
    )

    tampered = client.request(
        "POST",
        "/devices/bills/B1/hold",
        json.dumps({"amount": 1}).encode(),
        sign_body=json.dumps({"amount": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert tampered.status_code == 401
    batch = b'{"format":"onecard-batch/1"}\n'
    tampered_batch = client.request("POST", "/devices/batches", batch, sign_body=batch + b"x")
    assert tampered_batch.status_code == 401


def test_timestamps_more_than_300_seconds_away_are_stale(world: World) -> None:
    client = world.device("BUSA-V01")
    now = int(world.clock.now.timestamp())
    for offset in (-300, 0, 300):
        response = client.request("GET", "/devices/hotlist", timestamp=str(now + offset))
        assert response.status_code == 200, (offset, response.text)
    for offset in (-301, 301, -100_000):
        response = client.request("GET", "/devices/hotlist", timestamp=str(now + offset))
        assert response.status_code == 401
        error = _error(response.json())
        assert error["code"] == "stale_request"
        assert error["details"] == {"server_time": now}


def test_a_device_only_uses_the_endpoints_of_its_kind(world: World) -> None:
    kiosk = world.device("KIOSK-01")
    validator = world.device("BUSA-V01")
    assert kiosk.get("/devices/fares").status_code == 403
    assert _error(kiosk.get("/devices/fares").json())["code"] == "forbidden"
    assert validator.get("/devices/bills?utility=water&account=A1").status_code == 403
    assert validator.post_json("/devices/bills/B1/hold", {"amount": 100}).status_code == 403
    assert world.device("COUNTER-01").get("/devices/hotlist").status_code == 200
