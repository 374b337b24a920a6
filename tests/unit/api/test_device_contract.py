"""Pure parts of the device contract: the signing string, the registry file, payment records, the schema."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from starlette.requests import Request

from api.device_auth import path_and_query, request_signature, signing_input
from api.devices import PaymentRecordIn
from backoffice.errors import InvalidInput
from cardos.batch import BatchRecord, RecordStatus
from clearing.registry import RegistryFileError, parse_registry_file


def _request(raw_path: bytes, query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": raw_path.decode(), "raw_path": raw_path,
                    "query_string": query, "headers": []})  # fmt: skip


def test_the_signing_string_is_the_documented_one() -> None:
    body = b'{"amount": 4500}'
    expected_input = b"POST\n/devices/bills/W-1/hold\n1740787200\n" + hashlib.sha256(body).hexdigest().encode()
    assert signing_input("POST", "/devices/bills/W-1/hold", "1740787200", body) == expected_input
    key = bytes(range(32))
    assert request_signature(key, "POST", "/devices/bills/W-1/hold", "1740787200", body) == (
        hmac.new(key, expected_input, hashlib.sha256).hexdigest()
    )
    empty = signing_input("GET", "/devices/hotlist", "1", b"")
    assert empty.endswith(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_path_and_query_is_what_the_device_sent() -> None:
    assert path_and_query(_request(b"/devices/hotlist", b"")) == "/devices/hotlist"
    assert path_and_query(_request(b"/devices/hotlist", b"since=3")) == "/devices/hotlist?since=3"
    assert path_and_query(_request(b"/devices/bills/A%20B/hold", b"")) == "/devices/bills/A%20B/hold"


GOOD = {
    "format": "onecard-registry/1",
    "operators": [{"operator_id": "OP-BUS-A", "name": "Bus company A", "kind": "bus",
                   "fee": {"percent": "1.50", "per_txn": 0, "from": "2025-01-01"}}],
    "devices": [{"device_id": "BUSA-V01", "operator_id": "OP-BUS-A", "kind": "validator",
                 "term_id": "031000000101", "upload_key": "AB" * 32}],
}  # fmt: skip


def _with(path: tuple[Any, ...], value: Any) -> bytes:
    doc = json.loads(json.dumps(GOOD))
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return json.dumps(doc).encode()


def test_a_registry_file_is_read_strictly() -> None:
    document = parse_registry_file(json.dumps(GOOD).encode())
    assert document.operators[0].fees[0].percent == "1.5"
    assert document.devices[0].upload_key == "ab" * 32
    assert document.devices[0].status == "active"
    assert "ab" * 32 not in repr(document)

    cases = [
        (("format",), "onecard-registry/2", "format"),
        (("operators", 0, "kind"), "tram", "operators[0].kind"),
        (("operators", 0, "fee", "percent"), "101", "must be between 0 and 100"),
        (("operators", 0, "fee", "percent"), "1.23456", "at most 4 decimal places"),
        (("operators", 0, "fee", "percent"), 1.5, "operators[0].fee[0].percent"),
        (("operators", 0, "fee", "per_txn"), -1, "operators[0].fee[0].per_txn"),
        (("operators", 0, "fee", "per_txn"), True, "operators[0].fee[0].per_txn"),
        (("operators", 0, "fee", "from"), "2025-02-30", "must be a date YYYY-MM-DD"),
        (("devices", 0, "term_id"), "03100000010A", "devices[0].term_id: must be 12 digits"),
        (("devices", 0, "upload_key"), "AB" * 31, "devices[0].upload_key: must be 64 hex digits"),
        (("devices", 0, "device_id"), "has space", "devices[0].device_id"),
        (("devices", 0, "status"), "lost", "devices[0].status"),
    ]
    for path, value, message in cases:
        with pytest.raises(RegistryFileError) as refused:
            parse_registry_file(_with(path, value))
        assert message in refused.value.message, (path, refused.value.message)
        assert "AB" * 31 not in refused.value.message
    with pytest.raises(RegistryFileError, match="term_id 031000000101 appears more than once"):
        doc = json.loads(json.dumps(GOOD))
        doc["devices"].append({**doc["devices"][0], "device_id": "BUSA-V02"})
        parse_registry_file(json.dumps(doc).encode())


def test_a_payment_record_is_checked_like_a_batch_line() -> None:
    record = BatchRecord(txn_type="06", card_no="0310000000000001", card_type="01", card_seq=3, amount=4500,
                         balance_before=10000, term_id="031000000201", term_seq=77, txn_date="20250301",
                         txn_time="101500", tac="a1b2c3d4", alg="00", key_ver="01", status=RecordStatus.OK,
                         ref="W-1", device_seq=9)  # fmt: skip
    parsed = PaymentRecordIn.model_validate_json(json.dumps(record.to_json())).to_record()
    assert parsed == BatchRecord.from_row(record.to_row())
    with pytest.raises(InvalidInput, match="bad record: bad txn_date/txn_time"):
        PaymentRecordIn.model_validate_json(json.dumps({**record.to_json(), "txn_date": "20250230"})).to_record()
