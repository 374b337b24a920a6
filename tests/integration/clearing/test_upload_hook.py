"""``POST /devices/batches`` hands the batch to clearing once the upload has committed: without Redis (the embedded
default) it is ingested in-process right after; a duplicate upload changes nothing; a refused one leaves nothing to
ingest. The exceptions commands work through the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from fastapi.testclient import TestClient
from integration.clearing.citykit import DAY, City, tampered, upload_key
from sqlalchemy import text
from typer.testing import CliRunner

from api.app import create_app
from backoffice.settings import Settings
from onecard_cli.clearing import clearing_app


def _signed_upload(client: TestClient, device_id: str, body: bytes) -> int:
    key = bytes.fromhex(upload_key(device_id))
    stamp = str(int(time.time()))
    message = "\n".join(["POST", "/devices/batches", stamp, hashlib.sha256(body).hexdigest()]).encode()
    headers = {
        "X-Device-Id": device_id,
        "X-Timestamp": stamp,
        "X-Signature": hmac.new(key, message, hashlib.sha256).hexdigest(),
        "X-Batch-Signature": hmac.new(key, body, hashlib.sha256).hexdigest(),
        "Content-Type": "text/csv",
    }
    return client.post("/devices/batches", content=body, headers=headers).status_code


def _ingested(city: City) -> list[tuple[str, int, int]]:
    with city.uow() as uow:
        rows = uow.session.execute(
            text("SELECT device_id, record_count, new_records FROM batch_ingest ORDER BY id")
        ).all()
    return [(str(device), int(count), int(new)) for device, count, new in rows]


def test_an_upload_is_ingested_after_its_commit(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONECARD_KEYSTORE_KEY", city.keystore_env["ONECARD_KEYSTORE_KEY"])
    card = city.new_card(load=5_000)
    city.clock.set(DAY, 8)
    body = city.batch("BUSA-V01", [city.tap("BUSA-V01", card, 200), city.tap("BUSA-V01", card, 300)])
    wrong = city.batch("BUSA-V01", [tampered(city.tap("BUSA-V01", card, 100), amount=5)]).replace(
        b'"amount_total":5', b'"amount_total":6'
    )
    settings = Settings(database_url=city.url, keystore=city.keystore_env["ONECARD_KEYSTORE"])
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            assert _signed_upload(client, "BUSA-V01", body) == 200
            assert _ingested(city) == [("BUSA-V01", 2, 2)]
            assert _signed_upload(client, "BUSA-V01", body) == 200  # the same batch again: nothing new
            assert _signed_upload(client, "BUSA-V01", wrong) == 422  # refused whole: control totals
    finally:
        app.state.onecard.engine.dispose()
    assert _ingested(city) == [("BUSA-V01", 2, 2)]
    assert city.run(DAY).stage == "done"


def test_exceptions_through_the_commands(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ONECARD_DATABASE_URL": city.url, **city.keystore_env}.items():
        monkeypatch.setenv(name, value)
    card = city.new_card(load=5_000)
    city.send_counter()
    city.clock.set(DAY, 8)
    city.send("BUSA-V01", [tampered(city.tap("BUSA-V01", card, 200), tac="00000000")])
    assert city.run(DAY).stage == "done"
    runner = CliRunner()
    listed = json.loads(runner.invoke(clearing_app, ["exceptions", "list"]).stdout)["exceptions"]
    assert [(e["klass"], e["code"]) for e in listed] == [("rejected", "bad_tac")]
    record_id = str(listed[0]["record_id"])
    proposed = runner.invoke(
        clearing_app, ["exceptions", "propose", record_id, "--action", "accept", "--by", "fin-1", "--note", "seen"]
    )
    action_id = str(json.loads(proposed.stdout)["action_id"])
    same = runner.invoke(clearing_app, ["exceptions", "approve", action_id, "--by", "fin-1"])
    assert same.exit_code == 1 and "checker must be another person" in same.stderr
    approved = runner.invoke(clearing_app, ["exceptions", "approve", action_id, "--by", "fin-2"])
    assert approved.exit_code == 0 and json.loads(approved.stdout)["status"] == "approved"
    assert json.loads(runner.invoke(clearing_app, ["exceptions", "list"]).stdout)["exceptions"] == []
