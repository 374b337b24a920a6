"""The finance staff endpoints (issue #7): clearing runs, statements, exceptions (maker-checker), reports,
reconciliation. They call :mod:`api.finance` only, which calls clearing (issue #6). A database without clearing's
schema answers ``501 not_built`` after the role check.

Exceptions are resolved with clearing's own actions: ``accept`` (settle, or acknowledge / write off a suspicious
record), ``reject`` (reject, or reverse a suspicious record's settlement) and ``adjust`` (settle a purchase for
``amount`` fen); the proposer (maker) may not decide their own proposal (``403``).

| endpoint | roles |
|---|---|
| ``POST /finance/clearing-runs`` | finance |
| ``GET /finance/clearing-runs``, ``GET /finance/clearing-runs/{id}``, ``…/result`` | finance, supervisor, auditor |
| ``GET /finance/statements`` | finance, auditor |
| ``GET /finance/exceptions``, ``GET /finance/exceptions/{id}`` | finance, supervisor (the checker), auditor |
| ``POST /finance/exceptions/{id}/resolution`` (maker) | finance |
| ``POST /finance/exceptions/{id}/decision`` (checker, not the maker) | finance, supervisor |
| ``GET /finance/reports/{date}``, ``GET /finance/reconciliation`` | finance, auditor |
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import Field

from api import finance
from api.auth import CurrentStaff, staff_route
from api.deps import AppState, get_state, unit_of_work
from api.schemas import MAX_ID, MAX_LOAD_FEN, SAFE_TEXT, In, Out
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
"""``501 not_built``: clearing's schema is not in this database."""


class ClearingRunIn(In):
    """Run the clearing of one day."""

    business_date: Annotated[date, Field(strict=False, description="clearing day, YYYY-MM-DD")]


class ClearingRunOut(Out):
    """A clearing run and its progress.

    ``status``: ``queued``, ``running``, ``finished`` (the day closed) or ``failed`` (a reconciliation check failed
    and the day stays open, or a task failed: ``errors``; starting the day again resumes the run). ``stage`` is
    clearing's (``ingest``, ``clear``, ``close``, ``done``, ``failed``); ``records_total`` the records the run took
    in (``null`` during ingest), ``records_done`` those of the operators cleared so far.
    """

    run_id: int
    business_date: date
    status: Literal["queued", "running", "finished", "failed"]
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int | None
    run_no: int = Field(description="the run's number within its day (1, 2, …)")
    stage: str
    errors: list[str] = Field(description="why failed tasks failed (they are retried when the day is run again)")


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
    """What a finished run's day settled (statements and records by class, as its report says); ``reconciled``:
    whether every reconciliation check of this run held (``false``: the day stays open)."""

    run_id: int
    business_date: date
    operators: list[OperatorTotalsOut]
    records: dict[str, int]
    reconciled: bool | None


class StatementsOut(Out):
    """The settlement statements of a day."""

    business_date: date
    statements: list[OperatorTotalsOut]


class ExceptionOut(Out):
    """A clearing exception (``exception_id``: the clearing record's id) and its resolution.

    ``exception_class`` and ``code`` are the record's class while it was an exception, ``business_date`` the
    clearing day that decided it; ``proposed_*`` and ``note`` describe the open proposal (``proposed``) or the
    approved one (``resolved``); ``proposed_amount`` is an ``adjust`` proposal's amount (fen).
    """

    exception_id: int
    business_date: date
    exception_class: Literal["rejected", "suspicious", "conflict", "pending"]
    code: str
    card_no: str
    card_seq: int
    term_id: str
    term_seq: int
    status: Literal["open", "proposed", "resolved"]
    proposed_action: ResolutionAction | None
    proposed_by: str | None
    decided_by: str | None
    operator_id: str
    txn_type: str
    amount: int = Field(description="the record's amount, fen")
    proposed_amount: int | None
    note: str | None


class ExceptionListOut(Out):
    """Clearing exceptions."""

    exceptions: list[ExceptionOut]


ResolutionAction = Literal["accept", "reject", "adjust"]


class ResolutionIn(In):
    """The maker's proposal, in clearing's terms.

    - ``accept``: a rejected, conflicting or pending purchase is settled; a suspicious record is acknowledged (one
      posted to suspense is written off);
    - ``reject``: the record is rejected on review; a suspicious record's settlement is reversed;
    - ``adjust``: a purchase that was not settled is settled for ``amount`` fen (1 to the record's amount).

    An approved proposal takes effect in the current clearing day.
    """

    action: ResolutionAction
    note: Annotated[str, Field(min_length=1, max_length=500, pattern=SAFE_TEXT)]
    amount: Annotated[int | None, Field(ge=1, le=MAX_LOAD_FEN, description="adjust only: fen to settle")] = None


class DecisionIn(In):
    """The checker's decision (not the maker's: ``403``); approving applies the proposal, refusing reopens the
    exception. The note is kept in clearing's audit."""

    approve: bool
    note: Annotated[str, Field(max_length=500, pattern=SAFE_TEXT)] = ""


class ReconciliationCheckOut(Out):
    """One check."""

    name: str
    ok: bool
    expected: int
    actual: int
    detail: str


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
        run_no=view.run_no,
        stage=view.stage,
        errors=list(view.errors),
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
        proposed_action=cast(ResolutionAction | None, view.proposed_action),
        proposed_by=view.proposed_by,
        decided_by=view.decided_by,
        operator_id=view.operator_id,
        txn_type=view.txn_type,
        amount=view.amount,
        proposed_amount=view.proposed_amount,
        note=view.note,
    )


@staff_route(
    router, "POST", "/clearing-runs", roles=FINANCE, errors=(409, *NOT_BUILT, 503), response_model=ClearingRunOut,
    status_code=202,
)  # fmt: skip
def start_clearing_run(body: ClearingRunIn, principal: CurrentStaff, state: State, uow: Work) -> ClearingRunOut:
    """Start the clearing run of a day, or resume its unfinished run (one unfinished run at a time: another day's
    unfinished run, a closed day or a day before the last closed one is ``409``).

    The run's tasks are sent after the commit: to the Celery workers when Redis is configured (``503`` when Redis
    does not take them: the run stands, start it again), else run in this process, the run then being finished when
    this answers. Follow it with ``GET /finance/clearing-runs/{run_id}``."""
    view = finance.start_clearing_run(uow, principal, business_date=body.business_date, settings=state.settings)
    state.metrics.clearing_runs.inc()
    return _run(view)


@staff_route(router, "GET", "/clearing-runs", roles=READERS, errors=NOT_BUILT, response_model=ClearingRunListOut)
def list_clearing_runs(uow: Work, business_date: DayQuery = None) -> ClearingRunListOut:
    """Clearing runs, newest first (at most 200)."""
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
        reconciled=view.reconciled,
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


@staff_route(router, "GET", "/exceptions", roles=READERS, errors=NOT_BUILT, response_model=ExceptionListOut)
def list_exceptions(
    uow: Work,
    business_date: DayQuery = None,
    status: Annotated[Literal["open", "proposed", "resolved"] | None, Query()] = None,
) -> ExceptionListOut:
    """Clearing exceptions (``date``: of the clearing day that decided them)."""
    found = finance.exceptions(uow, business_date=business_date, status=status)
    return ExceptionListOut(exceptions=[_exception(e) for e in found])


@staff_route(
    router, "GET", "/exceptions/{exception_id}", roles=READERS, errors=(404, *NOT_BUILT), response_model=ExceptionOut
)
def show_exception(exception_id: ExceptionId, uow: Work) -> ExceptionOut:
    """One exception and its resolution (the checker reads what they are asked to decide)."""
    return _exception(finance.exception(uow, exception_id=exception_id))


@staff_route(
    router, "POST", "/exceptions/{exception_id}/resolution", roles=FINANCE, errors=(404, 409, *NOT_BUILT),
    response_model=ExceptionOut,
)  # fmt: skip
def propose_resolution(
    exception_id: ExceptionId, body: ResolutionIn, principal: CurrentStaff, uow: Work
) -> ExceptionOut:
    """Propose how an exception is resolved (maker): 409 when it has an open proposal or is resolved, 422 when
    the action does not fit the record (e.g. ``adjust`` of a suspicious record, or without ``amount``)."""
    return _exception(
        finance.propose_resolution(
            uow, principal, exception_id=exception_id, action=body.action, note=body.note, amount=body.amount
        )
    )


@staff_route(
    router, "POST", "/exceptions/{exception_id}/decision", roles=CHECKERS, errors=(404, 409, *NOT_BUILT),
    response_model=ExceptionOut,
)  # fmt: skip
def decide_resolution(exception_id: ExceptionId, body: DecisionIn, principal: CurrentStaff, uow: Work) -> ExceptionOut:
    """Approve or refuse the open proposal (checker: not the maker, 403); 409 when nothing is proposed."""
    return _exception(
        finance.decide_resolution(uow, principal, exception_id=exception_id, approve=body.approve, note=body.note)
    )


_REPORT_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}} for media in finance.REPORT_MEDIA_TYPES.values()
}


@staff_route(
    router, "GET", "/reports/{business_date}", roles=BOOKS, errors=(404, *NOT_BUILT, 500), response_class=Response,
    responses={200: {"description": "the report file", "content": _REPORT_CONTENT}},
)  # fmt: skip
def download_report(
    business_date: Annotated[date, Path(description="clearing day, YYYY-MM-DD")],
    uow: Work,
    report_format: Annotated[Literal["json", "csv", "xlsx", "pdf"], Query(alias="format")] = "json",
) -> Response:
    """The day's settlement and exception report, for download (404 before the day was run; 500
    ``report_changed`` when a closed day's report no longer matches the SHA-256 stored when it closed)."""
    file = finance.report(uow, business_date=business_date, report_format=report_format)
    return Response(
        file.body,
        media_type=file.media_type,
        headers={"Content-Disposition": f'attachment; filename="{file.filename}"'},
    )


@staff_route(router, "GET", "/reconciliation", roles=BOOKS, errors=(404, *NOT_BUILT), response_model=ReconciliationOut)
def reconciliation(
    uow: Work, business_date: Annotated[date, Query(alias="date", description="clearing day, YYYY-MM-DD")]
) -> ReconciliationOut:
    """The reconciliation checks of the day's latest finished run (404 before there is one)."""
    ok, checks = finance.reconciliation(uow, business_date=business_date)
    return ReconciliationOut(
        business_date=business_date,
        ok=ok,
        checks=[
            ReconciliationCheckOut(name=c.name, ok=c.ok, expected=c.expected, actual=c.actual, detail=c.detail)
            for c in checks
        ],
    )
