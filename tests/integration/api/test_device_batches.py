"""``POST /devices/batches``: accepted once, duplicates acknowledged, refusals kept, conflicts; both databases."""

from __future__ import annotations

import hashlib
import hmac
import threading

from integration.api.devicekit import KEYS, World, batch_bytes
from sqlalchemy import func, select

from clearing.models import BatchContent, BatchRefusal, BatchUpload


def _uploads(world: World) -> list[BatchUpload]:
    return world.rows(BatchUpload)


def _refusals(world: World) -> list[BatchRefusal]:
    return world.rows(BatchRefusal)


def _content(world: World, sha256: str) -> bytes | None:
    with world.uow() as uow:
        content = uow.session.get(BatchContent, sha256)
        return None if content is None else content.body


def _content_rows(world: World) -> int:
    with world.uow() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(BatchContent)) or 0)


def test_accepted_once_then_duplicates_change_nothing(world: World) -> None:
    validator = world.device("BUSA-V01")
    raw = batch_bytes("BUSA-V01", "BUSA-V01-20250301-1", [200, 200, 150])

    first = validator.upload(raw)
    assert first.status_code == 200, first.text
    assert first.json() == {"batch_id": "BUSA-V01-20250301-1", "status": "accepted", "records": 3, "amount_total": 550}
    [upload] = _uploads(world)
    assert (upload.device_id, upload.batch_id, upload.record_count, upload.amount_total) == (
        "BUSA-V01",
        "BUSA-V01-20250301-1",
        3,
        550,
    )
    assert upload.content_sha256 == hashlib.sha256(raw).hexdigest()
    assert _content(world, upload.content_sha256) == raw
    assert upload.duplicate_count == 0

    world.clock.advance(60)
    for _ in range(2):
        again = validator.upload(raw)
        assert again.status_code == 200, again.text
        assert again.json() == {
            "batch_id": "BUSA-V01-20250301-1",
            "status": "duplicate",
            "records": 3,
            "amount_total": 550,
        }
    [after] = _uploads(world)
    assert (after.id, after.received_at, after.content_sha256) == (upload.id, upload.received_at, upload.content_sha256)
    assert after.duplicate_count == 2
    assert after.last_duplicate_at == world.clock.now
    assert _refusals(world) == []
    assert _content_rows(world) == 1


def test_refused_batches_are_kept_and_may_be_resent_corrected(world: World) -> None:
    validator = world.device("BUSA-V01")
    good = batch_bytes("BUSA-V01", "B-7", [200, 300])
    bad_totals = good.replace(b'"amount_total":500', b'"amount_total":501', 1)
    assert bad_totals != good

    refused = validator.upload(bad_totals)
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "batch_refused"
    assert "amount_total 501" in error["message"]
    assert error["details"] == {"batch_id": "B-7"}
    [kept] = _refusals(world)
    assert (kept.device_id, kept.batch_id, kept.outcome) == ("BUSA-V01", "B-7", "refused")
    assert "amount_total" in kept.reason
    assert _content(world, kept.content_sha256) == bad_totals
    assert _uploads(world) == []

    corrected = validator.upload(good)
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["status"] == "accepted"
    assert validator.upload(good).json()["status"] == "duplicate"
    assert len(_uploads(world)) == 1
    assert len(_refusals(world)) == 1


def test_tampered_batches_are_refused_with_their_reason(world: World) -> None:
    validator = world.device("BUSA-V01")
    raw = batch_bytes("BUSA-V01", "B-1", [200, 300])
    signature_of_original = validator.upload(raw, batch_signature="0" * 64)
    cases = {
        "signed by another key": validator.upload(
            raw, batch_signature=_hmac(KEYS["BUSA-V02"], raw)
        ),
        "bytes changed after the batch was signed": validator.upload(
            raw.replace(b",200,", b",250,", 1), batch_signature=_hmac(KEYS["BUSA-V01"], raw)
        ),
        "no batch signature": validator.request("POST", "/devices/batches", raw),
        "a record changed, totals not": validator.upload(raw.replace(b",300,", b",301,", 1)),
        "not a batch": validator.upload(b"\xff\xfe not a batch"),
    }  # fmt: skip
    assert signature_of_original.status_code == 422
    for case, response in cases.items():
        assert response.status_code == 422, case
        assert response.json()["error"]["code"] == "batch_refused", case
    reasons = [refusal.reason for refusal in _refusals(world)]
    assert len(reasons) == 1 + len(cases)
    assert sum("signature" in reason.lower() for reason in reasons) == 4
    assert any("amount_total 500 but the records sum to 501" in reason for reason in reasons)
    assert any("not UTF-8" in reason for reason in reasons)
    assert _refusals(world)[-1].batch_id is None
    assert _uploads(world) == []
    # the refused bytes are there for inspection
    assert all(_content(world, refusal.content_sha256) is not None for refusal in _refusals(world))


def test_an_accepted_batch_id_with_other_bytes_is_a_conflict(world: World) -> None:
    validator = world.device("BUSA-V01")
    assert validator.upload(batch_bytes("BUSA-V01", "B-9", [200])).status_code == 200
    other = batch_bytes("BUSA-V01", "B-9", [200, 100])

    response = validator.upload(other)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    [upload] = _uploads(world)
    assert (upload.record_count, upload.amount_total, upload.duplicate_count) == (1, 200, 0)
    [kept] = _refusals(world)
    assert (kept.outcome, kept.batch_id) == ("conflict", "B-9")
    assert _content(world, kept.content_sha256) == other


def test_a_device_may_not_upload_another_devices_batch(world: World) -> None:
    theirs = batch_bytes("BUSA-V01", "B-1", [200])
    # BUSA-V02 signs BUSA-V01's batch with its own key: authenticated, but the header is not its own
    response = world.device("BUSA-V02").upload(theirs)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "device_id BUSA-V01 is not this device's" in message and "term_id" in message

    wrong_term = batch_bytes("BUSA-V02", "B-2", [200], term_id="031000000101")
    assert "term_id 031000000101" in world.device("BUSA-V02").upload(wrong_term).json()["error"]["message"]
    wrong_operator = batch_bytes("BUSA-V02", "B-3", [200], operator_id="OP-WATER")
    assert "operator_id OP-WATER" in world.device("BUSA-V02").upload(wrong_operator).json()["error"]["message"]
    assert _uploads(world) == []
    assert {refusal.device_id for refusal in _refusals(world)} == {"BUSA-V02"}

    # batch ids are per device: the same batch_id from two devices is two batches
    assert world.device("BUSA-V01").upload(theirs).json()["status"] == "accepted"
    assert world.device("BUSA-V02").upload(batch_bytes("BUSA-V02", "B-1", [200])).json()["status"] == "accepted"
    assert {(u.device_id, u.batch_id) for u in _uploads(world)} == {("BUSA-V01", "B-1"), ("BUSA-V02", "B-1")}


def test_kiosks_and_counters_upload_their_batches_too(world: World) -> None:
    for device_id in ("KIOSK-01", "COUNTER-01"):
        response = world.device(device_id).upload(batch_bytes(device_id, f"{device_id}-1", [100]))
        assert response.status_code == 200, response.text


def _hmac(key_hex: str, body: bytes) -> str:
    return hmac.new(bytes.fromhex(key_hex), body, hashlib.sha256).hexdigest()


def test_the_same_batch_uploaded_at_once_is_accepted_once(world: World) -> None:
    raw = batch_bytes("BUSA-V01", "C-1", [100, 200])
    answers: list[tuple[int, str]] = []

    def upload() -> None:
        response = world.device("BUSA-V01").upload(raw)
        answers.append((response.status_code, response.json().get("status", "")))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [(200, "accepted")] + [(200, "duplicate")] * 5
    [upload_row] = _uploads(world)
    assert upload_row.duplicate_count == 5
