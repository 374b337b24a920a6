"""The device endpoints (docs/device-api.md): batch upload, hotlist, fare table, utility bills.

Every endpoint authenticates the device (:func:`api.device_auth.authenticated_device`), runs in one unit of work
that commits at most once (inside the clearing service it calls), reads its input through an explicit schema and
answers through an explicit schema. Which kinds of device may call what:

| endpoint | device kinds |
|---|---|
| ``POST /devices/batches`` | every kind (validators, gates, kiosks, counters) |
| ``GET /devices/hotlist`` | every kind (every device that reads cards refuses hotlisted ones) |
| ``GET /devices/fares`` | validators and gates |
| ``/devices/bills…`` | kiosks |

The hotlist comes from ``AppState.hotlist_source`` (a :class:`HotlistSource`); until issuance's hotlist is wired in
there, :class:`EmptyHotlist` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from sqlalchemy.orm import Session

from api.deps import get_state, unit_of_work
from api.device_auth import authenticated_device, current_time, request_body
from backoffice.db import UnitOfWork
from backoffice.errors import Forbidden, InvalidInput, NotFound
from cardos.batch import COLUMNS, BatchFormatError, BatchRecord
from clearing import bills
from clearing.inbox import receive_batch
from clearing.intake import ingest_after_commit
from clearing.registry import FARE_DOCUMENT_KEYS, DeviceIdentity, fare_table_in_force

router = APIRouter(prefix="/devices", tags=["devices"])

FARE_DEVICE_KINDS = ("validator", "gate")
BILL_NO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"

Device = Annotated[DeviceIdentity, Depends(authenticated_device)]
Work = Annotated[UnitOfWork, Depends(unit_of_work)]
Now = Annotated[datetime, Depends(current_time)]
Body = Annotated[bytes, Depends(request_body)]
BillNo = Annotated[str, Path(pattern=BILL_NO_PATTERN)]


# --- the hotlist source --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HotlistEntry:
    """A hotlisted card: its number, when it was listed, why."""

    card_no: str
    listed_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class HotlistSnapshot:
    """The whole hotlist at ``version``."""

    version: int
    entries: Sequence[HotlistEntry]


@dataclass(frozen=True, slots=True)
class HotlistDelta:
    """What changed from an older version to ``version``: cards added (``entries``) and cards removed."""

    version: int
    entries: Sequence[HotlistEntry]
    removed: Sequence[str]


class HotlistSource(Protocol):
    """Where the device hotlist comes from (issuance's hotlist, wired into ``AppState.hotlist_source``).

    Versions are integers that only grow. All three methods read through the request's session.
    """

    def current_version(self, session: Session) -> int:
        """The newest version."""
        ...

    def full(self, session: Session) -> HotlistSnapshot:
        """The whole list at the newest version."""
        ...

    def entries_since(self, session: Session, version: int) -> HotlistDelta | None:
        """The delta from ``version`` to the newest; ``None`` when the deltas from ``version`` are not kept."""
        ...


class EmptyHotlist:
    """The hotlist until issuance's is wired in: version 0, no cards."""

    def current_version(self, session: Session) -> int:
        """Always 0."""
        return 0

    def full(self, session: Session) -> HotlistSnapshot:
        """No cards, version 0."""
        return HotlistSnapshot(0, ())

    def entries_since(self, session: Session, version: int) -> HotlistDelta | None:
        """An empty delta from version 0; nothing else exists."""
        return HotlistDelta(0, (), ()) if version == 0 else None


def hotlist_source(request: Request) -> HotlistSource:
    """``AppState.hotlist_source``, or :class:`EmptyHotlist` when none is wired in."""
    source: HotlistSource | None = get_state(request).hotlist_source
    return source if source is not None else EmptyHotlist()


# --- schemas ---------------------------------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BatchReceiptOut(_Out):
    """``200`` of ``POST /devices/batches``."""

    batch_id: str
    status: Literal["accepted", "duplicate"]
    records: int
    amount_total: int


class HotlistEntryOut(_Out):
    """One hotlisted card."""

    card_no: str
    listed_at: datetime
    reason: str


class HotlistOut(_Out):
    """``GET /devices/hotlist``: the full list, or the delta from ``since``."""

    version: int
    full: bool
    entries: list[HotlistEntryOut]
    removed: list[str]


class FareTableOut(_Out):
    """``GET /devices/fares``: the fare table in force for the device's operator (format of terminal/fares.py).

    Keys absent from the published document are absent here too.
    """

    format: str | None = None
    version: str
    operator_id: str
    service_day_starts: JsonValue = None
    daily_cap: JsonValue = None
    transfer: JsonValue = None
    peak_hours: JsonValue = None
    peak_days: JsonValue = None
    concessions: JsonValue = None
    lines: dict[str, JsonValue]


class BillOut(_Out):
    """A bill as a kiosk sees it."""

    bill_no: str
    utility: str
    account: str
    period: str
    amount_due: int
    status: Literal["open", "held"]


class BillsOut(_Out):
    """``GET /devices/bills``."""

    bills: list[BillOut]


class HoldIn(_In):
    """Body of ``POST /devices/bills/{bill_no}/hold``: the whole amount due, fen."""

    amount: int


class HoldOut(_Out):
    """``200`` of ``POST /devices/bills/{bill_no}/hold``."""

    bill_no: str
    status: Literal["held"]
    amount_due: int
    held_until: datetime


class ReleaseOut(_Out):
    """``200`` of ``DELETE /devices/bills/{bill_no}/hold``."""

    bill_no: str
    status: Literal["open"]


class PaymentRecordIn(_In):
    """Body of ``POST /devices/bills/{bill_no}/payment``: the purchase record, spec §5 columns as JSON keys."""

    txn_type: str
    card_no: str
    card_type: str
    card_seq: int
    amount: int
    balance_before: int
    term_id: str
    term_seq: int
    txn_date: str
    txn_time: str
    tac: str
    alg: str
    key_ver: str
    status: str
    line_id: str = ""
    station_id: str = ""
    vehicle_id: str = ""
    ref: str
    device_seq: int

    def to_record(self) -> BatchRecord:
        """The record, checked like a batch line (:class:`InvalidInput` when a column is wrong)."""
        try:
            return BatchRecord.from_row([str(getattr(self, column)) for column in COLUMNS])
        except BatchFormatError as exc:
            raise InvalidInput(f"bad record: {exc.reason}") from None


class PaymentOut(_Out):
    """``200`` of ``POST /devices/bills/{bill_no}/payment``."""

    bill_no: str
    status: Literal["paid"]
    amount_paid: int
    paid_at: datetime


InModel = TypeVar("InModel", bound=BaseModel)


def _parse_json(model: type[InModel], body: bytes) -> InModel:
    """Validate a JSON body after authentication, with the app's ``invalid_input`` problems format."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = [
            {"loc": ["body", *(str(part) for part in error["loc"])], "msg": str(error["msg"])}
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise InvalidInput("the request is not valid", problems=problems) from None


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _require_kind(device: DeviceIdentity, kinds: tuple[str, ...], what: str) -> None:
    if device.kind not in kinds:
        raise Forbidden(f"a {device.kind} may not {what}")


# --- endpoints -------------------------------------------------------------------------------------------------------


@router.post(
    "/batches",
    response_model=BatchReceiptOut,
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def upload_batch(request: Request, device: Device, uow: Work, body: Body, now: Now) -> BatchReceiptOut:
    """Upload a batch file (spec §5) signed with ``X-Batch-Signature``; idempotent by ``batch_id``."""
    ingest_after_commit(uow, get_state(request).settings)  # clearing ingests it once the upload has committed
    receipt = receive_batch(uow, device, body, request.headers.get("x-batch-signature"), now)
    return BatchReceiptOut(
        batch_id=receipt.batch_id, status=receipt.status, records=receipt.records, amount_total=receipt.amount_total
    )


@router.get("/hotlist", response_model=HotlistOut)
def download_hotlist(
    device: Device,
    uow: Work,
    source: Annotated[HotlistSource, Depends(hotlist_source)],
    since: Annotated[int | None, Query(ge=0, description="the version the device has")] = None,
) -> HotlistOut:
    """The hotlist: full without ``since`` (or when no delta from it is kept), else the delta from ``since``."""
    session = uow.session
    delta: HotlistDelta | None = None
    if since is not None and since <= source.current_version(session):
        delta = source.entries_since(session, since)
    if delta is not None:
        return HotlistOut(
            version=delta.version,
            full=False,
            entries=[_hotlist_entry(entry) for entry in delta.entries],
            removed=list(delta.removed),
        )
    snapshot = source.full(session)
    return HotlistOut(
        version=snapshot.version, full=True, entries=[_hotlist_entry(e) for e in snapshot.entries], removed=[]
    )


def _hotlist_entry(entry: HotlistEntry) -> HotlistEntryOut:
    return HotlistEntryOut(card_no=entry.card_no, listed_at=entry.listed_at, reason=entry.reason)


@router.get("/fares", response_model=FareTableOut, response_model_exclude_unset=True)
def download_fares(device: Device, uow: Work, now: Now) -> FareTableOut:
    """The newest fare table in force for the device's operator (``404`` when it has none)."""
    _require_kind(device, FARE_DEVICE_KINDS, "download fare tables")
    table = fare_table_in_force(uow.session, device.operator_id, now)
    if table is None:
        raise NotFound(f"no fare table in force for {device.operator_id}")
    published = {key: table.document[key] for key in FARE_DOCUMENT_KEYS if key in table.document}
    return FareTableOut.model_validate(published)


@router.get("/bills", response_model=BillsOut)
def look_up_bills(
    device: Device,
    uow: Work,
    now: Now,
    utility: Annotated[Literal["water", "electricity", "gas"], Query()],
    account: Annotated[str, Query(min_length=1, max_length=32)],
) -> BillsOut:
    """The unpaid bills of an account (kiosks)."""
    found = bills.open_bills(uow.session, device, utility, account, now)
    return BillsOut(
        bills=[
            BillOut(
                bill_no=bill.bill_no,
                utility=bill.utility,
                account=bill.account,
                period=bill.period,
                amount_due=bill.amount_due,
                status="held" if bill.status == "held" else "open",
            )
            for bill in found
        ]
    )


@router.post("/bills/{bill_no}/hold", response_model=HoldOut, openapi_extra=_json_body(HoldIn))
def hold_bill(bill_no: BillNo, device: Device, uow: Work, body: Body, now: Now) -> HoldOut:
    """Reserve an open bill for this kiosk for 120 s; the amount must be the amount due."""
    hold = _parse_json(HoldIn, body)
    bill = bills.hold_bill(uow, device, bill_no, hold.amount, now)
    assert bill.held_until is not None
    return HoldOut(bill_no=bill.bill_no, status="held", amount_due=bill.amount_due, held_until=bill.held_until)


@router.post("/bills/{bill_no}/payment", response_model=PaymentOut, openapi_extra=_json_body(PaymentRecordIn))
def pay_bill(bill_no: BillNo, device: Device, uow: Work, body: Body, now: Now) -> PaymentOut:
    """Mark the bill paid by this purchase record, exactly once."""
    record = _parse_json(PaymentRecordIn, body).to_record()
    payment = bills.pay_bill(uow, device, bill_no, record, now)
    return PaymentOut(bill_no=payment.bill_no, status="paid", amount_paid=payment.amount_paid, paid_at=payment.paid_at)


@router.delete("/bills/{bill_no}/hold", response_model=ReleaseOut)
def release_bill(bill_no: BillNo, device: Device, uow: Work, now: Now) -> ReleaseOut:
    """Release this kiosk's hold (the card refused)."""
    bill = bills.release_hold(uow, device, bill_no, now)
    return ReleaseOut(bill_no=bill.bill_no, status="open")
