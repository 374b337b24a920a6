"""The registry: operators with their fee schedules, devices with their upload keys, and operators' fare tables.

``onecard registry import FILE`` reads a registry file (cli.md): :func:`parse_registry_file` validates the whole
file, :func:`import_registry` checks it against the database and applies it in one transaction (all or nothing).

Upload keys are HMAC keys the server needs in clear; they are stored as given (lower-case hex) and leave this
module only inside :class:`DeviceCredentials`, whose ``repr`` hides them. They never appear in messages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, InvalidInput, NotFound
from clearing.models import Device, FareTable, Operator, OperatorFee

log = logging.getLogger("onecard.clearing.registry")

REGISTRY_FORMAT = "onecard-registry/1"
REGISTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
TERM_ID = re.compile(r"[0-9]{12}")
UPLOAD_KEY_HEX = re.compile(r"[0-9A-Fa-f]{64}")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
FARE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}")
MAX_PERCENT_PLACES = 4
MAX_PROBLEMS_SHOWN = 5


class RegistryFileError(InvalidInput):
    """A registry file that cannot be imported; nothing of it was imported (422)."""

    code = "invalid_registry"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who an authenticated device is: what the API may show and check (never its key)."""

    device_id: str
    kind: str
    term_id: str
    operator_id: str
    operator_kind: str


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """A device with its status and upload key, for request and batch verification only."""

    identity: DeviceIdentity
    status: str
    upload_key: bytes = field(repr=False)

    @property
    def active(self) -> bool:
        """True unless the device is retired."""
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """What a registry import did."""

    operators_added: int = 0
    operators_updated: int = 0
    operators_unchanged: int = 0
    fees_added: int = 0
    fees_updated: int = 0
    fees_unchanged: int = 0
    devices_added: int = 0
    devices_updated: int = 0
    devices_unchanged: int = 0


@dataclass(frozen=True, slots=True)
class FeeScheduleView:
    """A fee schedule: ``percent`` of the amount plus ``per_txn`` fen per transaction, from ``effective_from``."""

    operator_id: str
    percent: Decimal
    per_txn: int
    effective_from: date


@dataclass(frozen=True, slots=True)
class FareTableView:
    """A published fare table."""

    operator_id: str
    version: str
    document: dict[str, Any]
    """The whole fare table document, ``version`` and ``operator_id`` included."""
    effective_from: datetime


# --- the registry file -------------------------------------------------------------------------------------------


def _registry_id(value: str) -> str:
    if not REGISTRY_ID.fullmatch(value):
        raise ValueError("must be 1 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _term_id(value: str) -> str:
    if not TERM_ID.fullmatch(value):
        raise ValueError("must be 12 digits")
    return value


def _upload_key(value: str) -> str:
    if not UPLOAD_KEY_HEX.fullmatch(value):
        raise ValueError("must be 64 hex digits (a 32-byte key)")
    return value.lower()


def _percent(value: str) -> str:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError('must be a decimal number in a string, e.g. "1.5"') from None
    if not number.is_finite() or number < 0 or number > 100:
        raise ValueError("must be between 0 and 100")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_PERCENT_PLACES:
        raise ValueError(f"at most {MAX_PERCENT_PLACES} decimal places")
    return format(number.normalize(), "f")


def _iso_date(value: Any) -> Any:
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not ISO_DATE.fullmatch(value):
        raise ValueError("must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date YYYY-MM-DD") from None


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value.strip()


RegistryId = Annotated[str, AfterValidator(_registry_id)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FeeEntry(_Strict):
    """``{"percent": "1.5", "per_txn": 0, "from": "2025-01-01"}``."""

    percent: Annotated[str, AfterValidator(_percent)]
    per_txn: int = Field(ge=0)
    effective_from: Annotated[date, BeforeValidator(_iso_date)] = Field(alias="from")


class OperatorEntry(_Strict):
    """An operator of the registry file; ``fee`` is one schedule or a list of them (each with its own date)."""

    operator_id: RegistryId
    name: Annotated[str, AfterValidator(_non_blank)] = Field(max_length=100)
    kind: Literal["bus", "metro", "utility", "issuer"]
    fees: Annotated[list[FeeEntry], BeforeValidator(_one_or_many)] = Field(default_factory=list, alias="fee")


class DeviceEntry(_Strict):
    """A device of the registry file; ``status`` (``active`` unless given) retires a device."""

    device_id: RegistryId
    operator_id: RegistryId
    kind: Literal["validator", "kiosk", "counter", "gate"]
    term_id: Annotated[str, AfterValidator(_term_id)]
    upload_key: Annotated[str, AfterValidator(_upload_key)] = Field(repr=False)
    status: Literal["active", "retired"] = "active"


class RegistryDocument(_Strict):
    """A whole registry file (cli.md, "Registry file")."""

    format: Literal["onecard-registry/1"]
    operators: list[OperatorEntry] = Field(default_factory=list)
    devices: list[DeviceEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_keys(self) -> RegistryDocument:
        _refuse_repeats("operator_id", [op.operator_id for op in self.operators])
        _refuse_repeats("device_id", [dev.device_id for dev in self.devices])
        _refuse_repeats("term_id", [dev.term_id for dev in self.devices])
        for op in self.operators:
            _refuse_repeats(f"fee date of {op.operator_id}", [str(fee.effective_from) for fee in op.fees])
        return self


def _refuse_repeats(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value} appears more than once")
        seen.add(value)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = _location(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return problems


def parse_registry_file(raw: bytes) -> RegistryDocument:
    """Validate a whole registry file; raise :class:`RegistryFileError` naming the problems (never key bytes)."""
    try:
        return RegistryDocument.model_validate_json(raw)
    except ValidationError as exc:
        raise _bad_file(_problems(exc)) from None


def _bad_file(problems: list[str]) -> RegistryFileError:
    """One error line naming the first problems; all of them in ``details``."""
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    suffix = f" (and {more} more)" if more > 0 else ""
    return RegistryFileError(f"bad registry file: {shown}{suffix}", problems=problems)


# --- import --------------------------------------------------------------------------------------------------------


def import_registry(uow: UnitOfWork, document: RegistryDocument, now: datetime | None = None) -> ImportCounts:
    """Add or update the operators, fee schedules and devices of ``document``: all of it, or nothing.

    Checks against the database first (every device's operator exists in the file or the database; no term_id
    belongs to another device), then applies and commits once.
    """
    session = uow.session
    at = now or datetime.now(UTC)
    _check_against_database(session, document)
    counts: dict[str, int] = dict.fromkeys(ImportCounts.__dataclass_fields__, 0)

    for entry in document.operators:
        operator = session.get(Operator, entry.operator_id)
        if operator is None:
            session.add(
                Operator(operator_id=entry.operator_id, name=entry.name, kind=entry.kind, created_at=at, updated_at=at)
            )
            counts["operators_added"] += 1
        elif (operator.name, operator.kind) != (entry.name, entry.kind):
            operator.name, operator.kind, operator.updated_at = entry.name, entry.kind, at
            counts["operators_updated"] += 1
        else:
            counts["operators_unchanged"] += 1
        for fee_entry in entry.fees:
            counts[f"fees_{_upsert_fee(session, entry.operator_id, fee_entry)}"] += 1
    session.flush()

    for device_entry in document.devices:
        counts[f"devices_{_upsert_device(session, device_entry, at)}"] += 1
    try:
        session.flush()
    except IntegrityError:
        raise RegistryFileError("the registry file conflicts with the database (term_id already in use?)") from None
    uow.commit()
    result = ImportCounts(**counts)
    log.info("registry import: %s", result)
    return result


def _check_against_database(session: Session, document: RegistryDocument) -> None:
    problems: list[str] = []
    in_file = {op.operator_id for op in document.operators}
    referenced = {dev.operator_id for dev in document.devices} - in_file
    known = set(session.scalars(select(Operator.operator_id).where(Operator.operator_id.in_(referenced))))
    for index, dev in enumerate(document.devices):
        if dev.operator_id not in in_file and dev.operator_id not in known:
            problems.append(f"devices[{index}].operator_id: no operator {dev.operator_id} in the file or the registry")
    devices_in_file = {dev.device_id for dev in document.devices}
    holders = session.execute(
        select(Device.term_id, Device.device_id).where(Device.term_id.in_([dev.term_id for dev in document.devices]))
    ).all()
    for term_id, holder in holders:
        if holder not in devices_in_file:
            problems.append(f"term_id {term_id} belongs to device {holder}")
    if problems:
        raise _bad_file(problems)


def _upsert_fee(session: Session, operator_id: str, entry: FeeEntry) -> str:
    fee = session.scalars(
        select(OperatorFee).where(
            OperatorFee.operator_id == operator_id, OperatorFee.effective_from == entry.effective_from
        )
    ).one_or_none()
    if fee is None:
        session.add(
            OperatorFee(
                operator_id=operator_id,
                percent=entry.percent,
                per_txn=entry.per_txn,
                effective_from=entry.effective_from,
            )
        )
        return "added"
    if (fee.percent, fee.per_txn) == (entry.percent, entry.per_txn):
        return "unchanged"
    fee.percent, fee.per_txn = entry.percent, entry.per_txn
    return "updated"


def _upsert_device(session: Session, entry: DeviceEntry, at: datetime) -> str:
    device = session.get(Device, entry.device_id)
    wanted = (entry.operator_id, entry.kind, entry.term_id, entry.upload_key, entry.status)
    if device is None:
        session.add(
            Device(
                device_id=entry.device_id,
                operator_id=entry.operator_id,
                kind=entry.kind,
                term_id=entry.term_id,
                upload_key=entry.upload_key,
                status=entry.status,
                created_at=at,
                updated_at=at,
            )
        )
        return "added"
    if (device.operator_id, device.kind, device.term_id, device.upload_key, device.status) == wanted:
        return "unchanged"
    device.operator_id, device.kind, device.term_id, device.upload_key, device.status = wanted
    device.updated_at = at
    return "updated"


# --- reading the registry ------------------------------------------------------------------------------------------


def load_device_credentials(session: Session, device_id: str) -> DeviceCredentials | None:
    """The device ``device_id`` with its operator, status and upload key; ``None`` when unknown."""
    row = session.execute(
        select(Device, Operator.kind)
        .join(Operator, Device.operator_id == Operator.operator_id)
        .where(Device.device_id == device_id)
    ).one_or_none()
    if row is None:
        return None
    device, operator_kind = row
    identity = DeviceIdentity(
        device_id=device.device_id,
        kind=device.kind,
        term_id=device.term_id,
        operator_id=device.operator_id,
        operator_kind=operator_kind,
    )
    return DeviceCredentials(identity=identity, status=device.status, upload_key=bytes.fromhex(device.upload_key))


def fee_schedule_on(session: Session, operator_id: str, day: date) -> FeeScheduleView | None:
    """The fee schedule of ``operator_id`` in force on ``day`` (the latest one from that day or before)."""
    fee = session.scalars(
        select(OperatorFee)
        .where(OperatorFee.operator_id == operator_id, OperatorFee.effective_from <= day)
        .order_by(OperatorFee.effective_from.desc())
        .limit(1)
    ).one_or_none()
    if fee is None:
        return None
    return FeeScheduleView(fee.operator_id, Decimal(fee.percent), fee.per_txn, fee.effective_from)


# --- fare tables ---------------------------------------------------------------------------------------------------

FARE_FORMAT = "onecard-fares/1"
FARE_DOCUMENT_KEYS = (
    "format",
    "version",
    "operator_id",
    "service_day_starts",
    "daily_cap",
    "transfer",
    "peak_hours",
    "peak_days",
    "concessions",
    "lines",
)
"""The top-level keys of a fare table document (the format of ``terminal/fares.py``)."""


def _fare_document(operator_id: str, version: str, document: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(document) - set(FARE_DOCUMENT_KEYS)
    if unknown:
        raise InvalidInput(f"unknown fare table keys: {', '.join(sorted(unknown))}")
    if document.get("format", FARE_FORMAT) != FARE_FORMAT:
        raise InvalidInput(f"a fare table's format is {FARE_FORMAT}")
    if document.get("version", version) != version:
        raise InvalidInput("the document's version is not the version published")
    if document.get("operator_id", operator_id) != operator_id:
        raise InvalidInput("the document's operator_id is not the operator published for")
    if not isinstance(document.get("lines"), dict):
        raise InvalidInput('a fare table needs a "lines" object')
    try:
        normalised: dict[str, Any] = json.loads(json.dumps(dict(document), allow_nan=False))
    except (TypeError, ValueError):
        raise InvalidInput("the fare table is not JSON") from None
    normalised["version"] = version
    normalised["operator_id"] = operator_id
    return normalised


def publish_fare_table(
    uow: UnitOfWork,
    operator_id: str,
    version: str,
    document: Mapping[str, Any],
    *,
    effective_from: datetime | None = None,
    now: datetime | None = None,
) -> FareTableView:
    """Publish fare table ``version`` of ``operator_id``, in force from ``effective_from`` (default: now).

    ``document`` is a fare table in the format of ``terminal/fares.py`` (a JSON object with ``lines``; only the
    keys of :data:`FARE_DOCUMENT_KEYS`); its ``version`` and ``operator_id``, when present, must agree with the
    arguments. Publishing the same version again with the same content changes nothing; with other content it is
    a :class:`Conflict`. Commits.
    """
    at = now or datetime.now(UTC)
    starts = effective_from or at
    if starts.tzinfo is None:
        raise InvalidInput("effective_from needs a timezone")
    if not FARE_VERSION.fullmatch(version):
        raise InvalidInput("a fare table version is 1 to 32 letters, digits, '_', '.', ':' or '-'")
    stored = _fare_document(operator_id, version, document)
    session = uow.session
    if session.get(Operator, operator_id) is None:
        raise NotFound(f"no operator {operator_id}")
    existing = session.scalars(
        select(FareTable).where(FareTable.operator_id == operator_id, FareTable.version == version)
    ).one_or_none()
    if existing is not None:
        if existing.document != stored or existing.effective_from != starts.astimezone(UTC):
            raise Conflict(f"fare table {version} of {operator_id} was published with other content")
        return FareTableView(operator_id, version, stored, existing.effective_from)
    session.add(
        FareTable(operator_id=operator_id, version=version, document=stored, effective_from=starts, published_at=at)
    )
    uow.commit()
    return FareTableView(operator_id, version, stored, starts.astimezone(UTC))


def fare_table_in_force(session: Session, operator_id: str, at: datetime) -> FareTableView | None:
    """The newest fare table of ``operator_id`` whose ``effective_from`` is not after ``at``."""
    table = session.scalars(
        select(FareTable)
        .where(FareTable.operator_id == operator_id, FareTable.effective_from <= at)
        .order_by(FareTable.effective_from.desc(), FareTable.id.desc())
        .limit(1)
    ).one_or_none()
    if table is None:
        return None
    return FareTableView(table.operator_id, table.version, dict(table.document), table.effective_from)
