"""The finance staff endpoints (issue #7): clearing runs, statements, exceptions (maker-checker), reports,
reconciliation. They call :mod:`api.finance` only; until clearing's run API exists they answer ``501 not_built``
after the role check.

| endpoint | roles |
|---|---|
| ``POST /finance/clearing-runs`` | finance |
| ``GET /finance/clearing-runs``, ``GET /finance/clearing-runs/{id}``, ``…/result`` | finance, supervisor, auditor |
| ``GET /finance/statements``, ``GET /finance/exceptions`` | finance, auditor |
| ``POST /finance/exceptions/{id}/resolution`` (maker) | finance |
| ``POST /finance/exceptions/{id}/decision`` (checker, not the maker) | finance, supervisor |
| ``GET /finance/reports/{date}``, ``GET /finance/reconciliation`` | finance, auditor |
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import Field

from api import finance
from api.auth import CurrentStaff, staff_route
from api.deps import AppState, get_state, unit_of_work
from api.schemas import MAX_ID, SAFE_TEXT, In, Out
from api.staff_auth import ApiRole
from backoffice.db import UnitOfWork

router = APIRouter(prefix="/finance", tags=["finance"])

Work = Annotated[UnitOfWork, Depends(unit_of_work)]
State = Annotated[AppState, Depends(get_state)]
RunId = Annotated[int, Path(ge=1, le=MAX_ID)]
ExceptionId = Annotated[int, Path(ge=1, le=MAX_ID)]
DayQuery = Annotated[date | None, Query(alias="date", description="clearing day, YYYY-MM-DD")]

FINANCE = {ApiRole.FINANCE}
READERS = {ApiRole.FINANCE, ApiRole.SUPERVISOR, ApiRole.AUDITOR}
BOOKS = {ApiRole.FINANCE, ApiRole.AUDITOR}
CHECKERS = {ApiRole.FINANCE, ApiRole.SUPERVISOR}
NOT_BUILT = (501,)


class ClearingRunIn(In):
    """Run the clearing of one day."""

    business_date: Annotated[date, Field(strict=False, description="clearing day, YYYY-MM-DD")]


class ClearingRunOut(Out):
    """A clearing run and its progress."""

    run_id: int
    business_date: date
    status: Literal["queued", "running", "finished", "failed"]
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int | None


class ClearingRunListOut(Out):
    """Clearing runs, newest first."""

    runs: list[ClearingRunOut]


class OperatorTotalsOut(Out):
    """One operator's settled totals (fen): ``payable = amount - fee``."""

    operator_id: str
    count: int
    amount: int
    fee: int
    payable: int


class ClearingResultOut(Out):
    """What a finished run settled."""

    run_id: int
    business_date: date
    operators: list[OperatorTotalsOut]
    records: dict[str, int]


class StatementsOut(Out):
    """The settlement statements of a day."""

    business_date: date
    statements: list[OperatorTotalsOut]


class ExceptionOut(Out):
    """A clearing exception and its resolution."""

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


class ExceptionListOut(Out):
    """Clearing exceptions."""

    exceptions: list[ExceptionOut]


class ResolutionIn(In):
    """The maker's proposal."""

    action: Literal["accept", "reject", "write_off", "recharge"]
    note: Annotated[str, Field(min_length=1, max_length=500, pattern=SAFE_TEXT)]


class DecisionIn(In):
    """The checker's decision."""

    approve: bool
    note: Annotated[str, Field(max_length=500, pattern=SAFE_TEXT)] = ""


class ReconciliationCheckOut(Out):
    """One check."""

    name: str
    ok: bool
    expected: int
    actual: int


class ReconciliationOut(Out):
    """The day's reconciliation."""

    business_date: date
    ok: bool
    checks: list[ReconciliationCheckOut]


def _run(view: finance.ClearingRunView) -> ClearingRunOut:
    return ClearingRunOut(
        run_id=view.run_id,
        business_date=view.business_date,
        status=view.status,
        started_by=view.started_by,
        started_at=view.started_at,
        finished_at=view.finished_at,
        records_done=view.records_done,
        records_total=view.records_total,
    )


def _totals(view: finance.OperatorTotals) -> OperatorTotalsOut:
    return OperatorTotalsOut(
        operator_id=view.operator_id, count=view.count, amount=view.amount, fee=view.fee, payable=view.payable
    )


def _exception(view: finance.ExceptionView) -> ExceptionOut:
    return ExceptionOut(
        exception_id=view.exception_id,
        business_date=view.business_date,
        exception_class=view.exception_class,
        code=view.code,
        card_no=view.card_no,
        card_seq=view.card_seq,
        term_id=view.term_id,
        term_seq=view.term_seq,
        status=view.status,
        proposed_action=view.proposed_action,
        proposed_by=view.proposed_by,
        decided_by=view.decided_by,
    )


@staff_route(
    router, "POST", "/clearing-runs", roles=FINANCE, errors=(409, *NOT_BUILT), response_model=ClearingRunOut,
    status_code=202,
)  # fmt: skip
def start_clearing_run(body: ClearingRunIn, principal: CurrentStaff, state: State, uow: Work) -> ClearingRunOut:
    """Start the clearing run of a day (at most one in progress per day)."""
    view = finance.start_clearing_run(uow, principal, business_date=body.business_date)
    state.metrics.clearing_runs.inc()
    return _run(view)


@staff_route(router, "GET", "/clearing-runs", roles=READERS, errors=NOT_BUILT, response_model=ClearingRunListOut)
def list_clearing_runs(uow: Work, business_date: DayQuery = None) -> ClearingRunListOut:
    """Clearing runs, newest first."""
    return ClearingRunListOut(runs=[_run(v) for v in finance.list_clearing_runs(uow, business_date=business_date)])


@staff_route(
    router, "GET", "/clearing-runs/{run_id}", roles=READERS, errors=(404, *NOT_BUILT), response_model=ClearingRunOut
)
def clearing_run(run_id: RunId, uow: Work) -> ClearingRunOut:
    """A run's progress."""
    return _run(finance.clearing_run(uow, run_id=run_id))


@staff_route(
    router, "GET", "/clearing-runs/{run_id}/result", roles=READERS, errors=(404, 409, *NOT_BUILT),
    response_model=ClearingResultOut,
)  # fmt: skip
def clearing_result(run_id: RunId, uow: Work) -> ClearingResultOut:
    """A finished run's result (409 while it runs)."""
    view = finance.clearing_result(uow, run_id=run_id)
    return ClearingResultOut(
        run_id=view.run_id,
        business_date=view.business_date,
        operators=[_totals(t) for t in view.operators],
        records=dict(view.records),
    )


@staff_route(router, "GET", "/statements", roles=BOOKS, errors=NOT_BUILT, response_model=StatementsOut)
def statements(
    uow: Work,
    business_date: Annotated[date, Query(alias="date", description="clearing day, YYYY-MM-DD")],
    operator_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")] = None,
) -> StatementsOut:
    """The settlement statements of a day (one operator's when given)."""
    found = finance.statements(uow, business_date=business_date, operator_id=operator_id)
    return StatementsOut(business_date=business_date, statements=[_totals(t) for t in found])


@staff_route(router, "GET", "/exceptions", roles=BOOKS, errors=NOT_BUILT, response_model=ExceptionListOut)
def list_exceptions(
    uow: Work,
    business_date: DayQuery = None,
    status: Annotated[Literal["open", "proposed", "resolved"] | None, Query()] = None,
) -> ExceptionListOut:
    """Clearing exceptions."""
    found = finance.exceptions(uow, business_date=business_date, status=status)
    return ExceptionListOut(exceptions=[_exception(e) for e in found])


@staff_route(
    router, "POST", "/exceptions/{exception_id}/resolution", roles=FINANCE, errors=(404, 409, *NOT_BUILT),
    response_model=ExceptionOut,
)  # fmt: skip
def propose_resolution(
    exception_id: ExceptionId, body: ResolutionIn, principal: CurrentStaff, uow: Work
) -> ExceptionOut:
    """Propose how an exception is resolved (maker)."""
    return _exception(
        finance.propose_resolution(uow, principal, exception_id=exception_id, action=body.action, note=body.note)
    )


@staff_route(
    router, "POST", "/exceptions/{exception_id}/decision", roles=CHECKERS, errors=(404, 409, *NOT_BUILT),
    response_model=ExceptionOut,
)  # fmt: skip
def decide_resolution(exception_id: ExceptionId, body: DecisionIn, principal: CurrentStaff, uow: Work) -> ExceptionOut:
    """Approve or reject a proposed resolution (checker: not the maker)."""
    return _exception(
        finance.decide_resolution(uow, principal, exception_id=exception_id, approve=body.approve, note=body.note)
    )


_REPORT_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}} for media in finance.REPORT_MEDIA_TYPES.values()
}


@staff_route(
    router, "GET", "/reports/{business_date}", roles=BOOKS, errors=(404, *NOT_BUILT), response_class=Response,
    responses={200: {"description": "the report file", "content": _REPORT_CONTENT}},
)  # fmt: skip
def download_report(
    business_date: Annotated[date, Path(description="clearing day, YYYY-MM-DD")],
    uow: Work,
    report_format: Annotated[Literal["json", "csv", "xlsx", "pdf"], Query(alias="format")] = "json",
) -> Response:
    """The day's settlement and exception report, for download."""
    file = finance.report(uow, business_date=business_date, report_format=report_format)
    return Response(
        file.body,
        media_type=file.media_type,
        headers={"Content-Disposition": f'attachment; filename="{file.filename}"'},
    )


@staff_route(router, "GET", "/reconciliation", roles=BOOKS, errors=NOT_BUILT, response_model=ReconciliationOut)
def reconciliation(
    uow: Work, business_date: Annotated[date, Query(alias="date", description="clearing day, YYYY-MM-DD")]
) -> ReconciliationOut:
    """The day's reconciliation checks."""
    ok, checks = finance.reconciliation(uow, business_date=business_date)
    return ReconciliationOut(
        business_date=business_date,
        ok=ok,
        checks=[ReconciliationCheckOut(name=c.name, ok=c.ok, expected=c.expected, actual=c.actual) for c in checks],
    )
