"""The finance staff's operations, as a facade over clearing (issue #6), which is being built separately.

The finance endpoints (``api/finance_routes.py``) call only these functions. Clearing has no clearing-run API yet
(``clearing/`` holds the registry, the batch inbox and bills), so each function answers ``501 not_built`` in the
one error format; the endpoints' roles, inputs, outputs and documentation are final. When clearing's functions
exist, each function here becomes a call to its counterpart; the contract the endpoints rely on is:

- ``start_clearing_run`` queues the run of one clearing day (at most one run per day in progress), returns it;
- ``clearing_run`` answers a run's progress; ``clearing_result`` the result of a finished run;
- ``statements`` are the per-operator settlement statements of a day;
- exceptions are resolved maker-checker: ``propose_resolution`` records a finance user's proposal,
  ``decide_resolution`` is the decision of *another* member of staff (the maker cannot check their own
  proposal: ``403``);
- ``report`` is the day's report in json, csv, xlsx or pdf (cli.md's ``clearing report``);
- ``reconciliation`` is the day's reconciliation checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from api.staff_auth import Principal
from backoffice.db import UnitOfWork
from backoffice.errors import OnecardError

ReportFormat = Literal["json", "csv", "xlsx", "pdf"]
REPORT_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}


class NotBuilt(OnecardError):
    """The operation's back end is not built yet (501)."""

    code = "not_built"
    http_status = 501


@dataclass(frozen=True, slots=True)
class ClearingRunView:
    """A clearing run: which day, where it is, how far."""

    run_id: int
    business_date: date
    status: Literal["queued", "running", "finished", "failed"]
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int | None


@dataclass(frozen=True, slots=True)
class OperatorTotals:
    """One operator's settled totals of a day (fen)."""

    operator_id: str
    count: int
    amount: int
    fee: int
    payable: int


@dataclass(frozen=True, slots=True)
class ClearingResultView:
    """What a finished run settled: per operator, and the records by class."""

    run_id: int
    business_date: date
    operators: tuple[OperatorTotals, ...]
    records: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExceptionView:
    """A clearing exception and where its resolution stands (maker-checker)."""

    exception_id: int
    business_date: date
    exception_class: Literal["rejected", "suspicious", "conflict", "pending"]
    code: str
    card_no: str
    card_seq: int
    term_id: str
    term_seq: int
    status: Literal["open", "proposed", "resolved"]
    proposed_action: str | None
    proposed_by: str | None
    decided_by: str | None


@dataclass(frozen=True, slots=True)
class ReconciliationCheck:
    """One reconciliation check of a day."""

    name: str
    ok: bool
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class ReportFile:
    """A report for download."""

    media_type: str
    filename: str
    body: bytes


def _not_built(what: str) -> NotBuilt:
    return NotBuilt(f"{what} is not built yet (clearing, issue #6)", operation=what)


def start_clearing_run(uow: UnitOfWork, principal: Principal, *, business_date: date) -> ClearingRunView:
    """Queue the clearing run of ``business_date``."""
    raise _not_built("starting a clearing run")


def list_clearing_runs(uow: UnitOfWork, *, business_date: date | None) -> list[ClearingRunView]:
    """Clearing runs, newest first (of one day when given)."""
    raise _not_built("listing clearing runs")


def clearing_run(uow: UnitOfWork, *, run_id: int) -> ClearingRunView:
    """A run's progress."""
    raise _not_built("clearing run progress")


def clearing_result(uow: UnitOfWork, *, run_id: int) -> ClearingResultView:
    """A finished run's result."""
    raise _not_built("clearing run results")


def statements(uow: UnitOfWork, *, business_date: date, operator_id: str | None) -> list[OperatorTotals]:
    """The settlement statements of a day."""
    raise _not_built("settlement statements")


def exceptions(
    uow: UnitOfWork, *, business_date: date | None, status: Literal["open", "proposed", "resolved"] | None
) -> list[ExceptionView]:
    """Clearing exceptions."""
    raise _not_built("clearing exceptions")


def propose_resolution(
    uow: UnitOfWork, principal: Principal, *, exception_id: int, action: str, note: str
) -> ExceptionView:
    """The maker's proposed resolution of an exception."""
    raise _not_built("exception resolution")


def decide_resolution(
    uow: UnitOfWork, principal: Principal, *, exception_id: int, approve: bool, note: str
) -> ExceptionView:
    """The checker's decision on a proposed resolution (not the maker's own)."""
    raise _not_built("exception resolution")


def report(uow: UnitOfWork, *, business_date: date, report_format: ReportFormat) -> ReportFile:
    """The day's settlement and exception report."""
    raise _not_built("clearing reports")


def reconciliation(uow: UnitOfWork, *, business_date: date) -> tuple[bool, list[ReconciliationCheck]]:
    """The day's reconciliation: whether every check passed, and the checks."""
    raise _not_built("reconciliation")
