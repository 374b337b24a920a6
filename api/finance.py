"""The finance staff's operations: a facade over clearing (issue #6) for the finance endpoints (issue #7).

The finance endpoints (``api/finance_routes.py``) and the finance web pages call only these functions; each calls
clearing's own (``clearing.runs``, ``clearing.exceptions``, ``clearing.reports``) and turns its shapes into the
views below. The contract the endpoints rely on:

- ``start_clearing_run`` starts the run of one clearing day in the request's unit of work (one transaction:
  :func:`clearing.runs.begin_run` plus who started it, in ``clearing_audit``), and dispatches the run's tasks only
  after that commit: in this process when no Redis is configured (the run then finishes within the request), to
  the Celery workers (:mod:`clearing.tasks`) otherwise. At most one run is unfinished at a time: starting the day
  of the unfinished run resumes it; another day, or a closed day, is ``409``;
- ``clearing_run`` answers a run's progress; ``clearing_result`` the result of a finished run (``409`` before);
- ``statements`` are the per-operator settlement statements of a day;
- exceptions are clearing's records whose class is rejected, suspicious, conflict or pending; ``exception_id`` is
  the record's id. They are resolved maker-checker with clearing's actions ``accept``, ``reject`` and ``adjust``
  (settle a purchase for another amount): ``propose_resolution`` records a finance user's proposal,
  ``decide_resolution`` is the decision of *another* member of staff (the maker cannot check their own proposal:
  ``403``); an approved proposal takes effect in the current clearing day, a refused one reopens the exception;
- ``report`` is the day's report in json, csv, xlsx or pdf (cli.md's ``clearing report``; ``404`` before the day
  was run);
- ``reconciliation`` is the reconciliation of the day's latest finished run (``404`` before there is one).

A database without clearing's schema (``onecard db upgrade`` not run for the clearing branch) answers
``501 not_built``: clearing is not set up there.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal, Self

from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.deps import ServiceUnavailable
from api.staff_auth import Principal
from backoffice.db import UnitOfWork, session_factory
from backoffice.errors import Conflict, InvalidInput, NotFound, OnecardError
from backoffice.settings import Settings
from clearing import exceptions as clearing_exceptions
from clearing import reports as clearing_reports
from clearing.runs import ClearingEnv, InProcessDispatcher, begin_run
from clearing.tables import ClearingAudit, ClearingRun, ClearingStatement

log = logging.getLogger("onecard.api.finance")

ReportFormat = Literal["json", "csv", "xlsx", "pdf"]
REPORT_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
ACTIONS = ("accept", "reject", "adjust")
"""Clearing's resolutions of an exception (clearing/exceptions.py)."""
RUN_LIST_LIMIT = 200
"""``list_clearing_runs`` answers at most this many runs (the newest)."""
CLI_STARTER = "cli"
"""``started_by`` of a run started outside the API (``onecard clearing run``): clearing keeps no starter."""


class NotBuilt(OnecardError):
    """The operation's back end is not set up (501): clearing's schema is not in this database."""

    code = "not_built"
    http_status = 501


@dataclass(frozen=True, slots=True)
class ClearingRunView:
    """A clearing run: which day, where it is, how far.

    ``status``: ``queued`` (no task done yet), ``running``, ``finished`` (the day closed: every reconciliation
    check held) or ``failed`` (a check failed and the day stays open, or a task failed: ``errors``; starting the
    day again resumes the run). ``records_total`` is the records of the batches the run took in (known once its
    ingest stage is over); ``records_done`` those of the operators cleared so far. ``stage`` is clearing's own
    (``ingest``, ``clear``, ``close``, ``done``, ``failed``).
    """

    run_id: int
    business_date: date
    status: Literal["queued", "running", "finished", "failed"]
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    records_done: int
    records_total: int | None
    run_no: int = 1
    stage: str = ""
    errors: tuple[str, ...] = ()


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
    """What a finished run settled: per operator, and the records by class (of its day, as the report says);
    ``reconciled``: whether every check of this run held."""

    run_id: int
    business_date: date
    operators: tuple[OperatorTotals, ...]
    records: dict[str, int] = field(default_factory=dict)
    reconciled: bool | None = None


@dataclass(frozen=True, slots=True)
class ExceptionView:
    """A clearing exception (``exception_id``: the record's id) and where its resolution stands (maker-checker).

    ``exception_class`` and ``code`` are the record's class while it was an exception; ``business_date`` the
    clearing day that decided it. ``proposed_*`` describe the open proposal (``proposed``) or the approved one
    (``resolved``); ``proposed_amount`` is an ``adjust`` proposal's amount.
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
    proposed_action: str | None
    proposed_by: str | None
    decided_by: str | None
    operator_id: str = ""
    txn_type: str = ""
    amount: int = 0
    proposed_amount: int | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ReconciliationCheck:
    """One reconciliation check of a day."""

    name: str
    ok: bool
    expected: int
    actual: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReportFile:
    """A report for download."""

    media_type: str
    filename: str
    body: bytes


# --- clearing's environment ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_envs: weakref.WeakKeyDictionary[Engine, ClearingEnv] = weakref.WeakKeyDictionary()
_ready: weakref.WeakSet[Engine] = weakref.WeakSet()
_celery: dict[str, Any] = {}


def _engine(uow: UnitOfWork) -> Engine:
    bind = uow.session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    return engine


def _require_clearing(uow: UnitOfWork) -> Session:
    """The session, once clearing's schema is known to be in the database (else ``501 not_built``)."""
    session = uow.session
    engine = _engine(uow)
    if engine not in _ready:
        if not inspect(session.connection()).has_table("clearing_run"):
            raise NotBuilt(
                "clearing is not set up in this database: run `onecard db upgrade` (clearing's schema)",
                operation="clearing",
            )
        with _lock:
            _ready.add(engine)
    return session


def clearing_env(uow: UnitOfWork, settings: Settings) -> ClearingEnv:
    """This process's clearing environment on the unit of work's database (one per engine, so the TAC verifier's
    card-key cache lives as long as the application), with the keystore of ``settings``."""
    engine = _engine(uow)
    with _lock:
        env = _envs.get(engine)
        if env is None:
            keystore_path = settings.keystore

            def keystore() -> Any:
                from issuance.keystore import open_keystore

                return open_keystore(keystore_path)

            env = ClearingEnv(session_factory(engine), keystore)
            _envs[engine] = env
        return env


class _Borrowed(UnitOfWork):
    """The request's unit of work lent to clearing: entering and leaving it does nothing, its ``commit`` only
    flushes (the request commits once, then runs the after-commit work: the run's tasks)."""

    def __init__(self, outer: UnitOfWork) -> None:
        super().__init__(sessionmaker())
        self._outer = outer

    @property
    def session(self) -> Session:
        """The request's session."""
        return self._outer.session

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def after_commit(self, callback: Callable[[], None]) -> None:
        """After the request's commit."""
        self._outer.after_commit(callback)

    def commit(self) -> None:
        """Flush only: the request commits."""
        self._outer.session.flush()


class _InRequest(ClearingEnv):
    """A clearing environment whose units of work are the request's (for :func:`clearing.runs.begin_run`)."""

    outer: UnitOfWork

    def uow(self) -> UnitOfWork:
        """The request's unit of work, borrowed."""
        return _Borrowed(self.outer)


class _Collecting:
    """Collects the tasks ``begin_run`` sends; they go out after the commit."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, int, str]] = []

    def send(self, stage: str, run_id: int, key: str) -> None:
        """Keep one task."""
        self.tasks.append((stage, run_id, key))


def _celery_for(redis_url: str) -> Any:
    from clearing.tasks import make_celery

    with _lock:
        if redis_url not in _celery:
            _celery[redis_url] = make_celery(redis_url)
        return _celery[redis_url]


def _dispatch(env: ClearingEnv, settings: Settings, tasks: list[tuple[str, int, str]]) -> None:
    """Send the run's tasks (after the commit): to the workers with Redis, else run them here to the end."""
    if settings.redis_url:
        from clearing.tasks import CeleryDispatcher

        dispatcher = CeleryDispatcher(_celery_for(settings.redis_url))
        try:
            for task in tasks:
                dispatcher.send(*task)
        except Exception as exc:
            log.exception("sending clearing tasks failed")
            raise ServiceUnavailable(
                "the clearing run is recorded but Redis does not take its tasks: start the day again to resend them"
            ) from exc
        return
    local = InProcessDispatcher(env)
    for task in tasks:
        local.send(*task)
    try:
        local.drain()
    except Exception:
        # The failure is on the task's row (clearing_task.error): the run answers failed, with the error.
        log.exception("an in-process clearing task failed")


# --- runs ---------------------------------------------------------------------------------------------------------


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _starters(session: Session, run_ids: list[int]) -> dict[int, str]:
    if not run_ids:
        return {}
    rows = session.execute(
        select(ClearingAudit.object_id, ClearingAudit.actor_id).where(
            ClearingAudit.object_type == "clearing_run",
            ClearingAudit.action == "clearing.run.start",
            ClearingAudit.object_id.in_([str(r) for r in run_ids]),
        )
    ).all()
    return {int(object_id): str(actor) for object_id, actor in rows}


def _progress(session: Session, run: ClearingRun) -> tuple[int, int | None]:
    if run.stage == "ingest":
        return 0, None
    total = int(
        session.execute(
            text("SELECT coalesce(sum(record_count), 0) FROM batch_ingest WHERE claim_run_id = :r"), {"r": run.id}
        ).scalar_one()
    )
    if run.stage != "clear":
        return total, total
    tasks, finished = session.execute(
        text(
            "SELECT count(*), coalesce(sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0) FROM clearing_task "
            "WHERE run_id = :r AND stage = 'clear'"
        ),
        {"r": run.id},
    ).one()
    return (total * int(finished) // int(tasks) if tasks else total), total


def _run_view(session: Session, run: ClearingRun, starter: str | None, errors: list[str]) -> ClearingRunView:
    status: Literal["queued", "running", "finished", "failed"]
    if run.stage == "done":
        status = "finished"
    elif run.stage == "failed" or errors:
        status = "failed"
    else:
        started = session.execute(
            text("SELECT count(*) FROM clearing_task WHERE run_id = :r AND status = 'done'"), {"r": run.id}
        ).scalar_one()
        status = "running" if started or run.stage != "ingest" else "queued"
    done, total = _progress(session, run)
    return ClearingRunView(
        run_id=run.id,
        business_date=_day(run.clearing_day),
        status=status,
        started_by=starter or CLI_STARTER,
        started_at=run.started_at,
        finished_at=run.finished_at,
        records_done=done,
        records_total=total,
        run_no=run.run_no,
        stage=run.stage,
        errors=tuple(errors),
    )


def _errors(session: Session, run: ClearingRun) -> list[str]:
    if run.stage in ("done", "failed"):
        return []
    rows = session.execute(
        text(
            "SELECT stage, task_key, error FROM clearing_task WHERE run_id = :r AND status = 'pending' "
            "AND error IS NOT NULL ORDER BY stage, task_key"
        ),
        {"r": run.id},
    ).all()
    return [f"{stage} {key}: {error}" for stage, key, error in rows]


def _view_of(session: Session, run_id: int) -> ClearingRunView:
    run = session.get(ClearingRun, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"no clearing run {run_id}")
    return _run_view(session, run, _starters(session, [run.id]).get(run.id), _errors(session, run))


def start_clearing_run(
    uow: UnitOfWork, principal: Principal, *, business_date: date, settings: Settings | None = None
) -> ClearingRunView:
    """Start (or resume) the clearing run of ``business_date``; its tasks go out after the commit.

    ``settings`` (the application's) say where the keystore and Redis are; without them, the environment's
    (:meth:`Settings.load`). Without Redis the run goes to its end in this process before this returns.
    """
    _require_clearing(uow)
    settings = settings or Settings.load()
    env = clearing_env(uow, settings)
    in_request = _InRequest(env.sessions, env.open_keystore, env.policy, env.clock)
    in_request.outer = uow
    collected = _Collecting()
    state = begin_run(in_request, collected, business_date)
    if state.finished:
        raise Conflict(
            f"clearing day {business_date.isoformat()} is closed (run {state.run_no}): its report stands",
            run_id=state.run_id,
        )
    session = uow.session
    if not _starters(session, [state.run_id]):
        session.add(
            ClearingAudit(
                at=datetime.now(UTC),
                actor_id=principal.username,
                action="clearing.run.start",
                object_type="clearing_run",
                object_id=str(state.run_id),
                detail=json.dumps({"day": business_date.isoformat(), "run_no": state.run_no}, sort_keys=True),
            )
        )
    uow.after_commit(functools.partial(_dispatch, env, settings, collected.tasks))
    uow.commit()
    return _view_of(session, state.run_id)


def list_clearing_runs(uow: UnitOfWork, *, business_date: date | None) -> list[ClearingRunView]:
    """Clearing runs, newest first (of one day when given; at most :data:`RUN_LIST_LIMIT`)."""
    session = _require_clearing(uow)
    query = select(ClearingRun).order_by(ClearingRun.id.desc()).limit(RUN_LIST_LIMIT)
    if business_date is not None:
        query = query.where(ClearingRun.clearing_day == business_date)
    runs = list(session.scalars(query).all())
    starters = _starters(session, [run.id for run in runs])
    return [_run_view(session, run, starters.get(run.id), _errors(session, run)) for run in runs]


def clearing_run(uow: UnitOfWork, *, run_id: int) -> ClearingRunView:
    """A run's progress."""
    return _view_of(_require_clearing(uow), run_id)


def clearing_result(uow: UnitOfWork, *, run_id: int) -> ClearingResultView:
    """A finished run's result: its day's statements and records by class, and whether its checks held."""
    session = _require_clearing(uow)
    run = session.get(ClearingRun, run_id)
    if run is None:
        raise NotFound(f"no clearing run {run_id}")
    if run.stage not in ("done", "failed"):
        raise Conflict(f"clearing run {run_id} is still running (stage {run.stage})")
    day = _day(run.clearing_day)
    document = clearing_reports.build_report(session, day)
    outcome = json.loads(run.result) if run.result else {}
    return ClearingResultView(
        run_id=run.id,
        business_date=day,
        operators=tuple(_totals(session, day, None)),
        records={str(k): int(v) for k, v in document["records"].items()},
        reconciled=bool(outcome["ok"]) if "ok" in outcome else None,
    )


# --- statements, reports, reconciliation --------------------------------------------------------------------------


def _totals(session: Session, day: date, operator_id: str | None) -> list[OperatorTotals]:
    query = select(ClearingStatement).where(ClearingStatement.clearing_day == day)
    if operator_id is not None:
        query = query.where(ClearingStatement.operator_id == operator_id)
    return [
        OperatorTotals(s.operator_id, s.record_count, s.amount, s.fee, s.payable)
        for s in session.scalars(query.order_by(ClearingStatement.operator_id)).all()
    ]


def statements(uow: UnitOfWork, *, business_date: date, operator_id: str | None) -> list[OperatorTotals]:
    """The settlement statements of a day (cumulative over its runs), by operator."""
    return _totals(_require_clearing(uow), business_date, operator_id)


def report(uow: UnitOfWork, *, business_date: date, report_format: ReportFormat) -> ReportFile:
    """The day's settlement and exception report (a closed day's is checked against its stored SHA-256)."""
    session = _require_clearing(uow)
    if report_format not in REPORT_MEDIA_TYPES:
        raise NotFound(f"no report format {report_format}")
    document = clearing_reports.day_report(session, business_date)
    body = clearing_reports.RENDERERS[report_format](document)
    return ReportFile(REPORT_MEDIA_TYPES[report_format], f"clearing-{business_date.isoformat()}.{report_format}", body)


def reconciliation(uow: UnitOfWork, *, business_date: date) -> tuple[bool, list[ReconciliationCheck]]:
    """The reconciliation of the day's latest finished run (the closing run of a closed day)."""
    session = _require_clearing(uow)
    row = session.execute(
        text(
            "SELECT d.closed_run_id, (SELECT max(r.id) FROM clearing_run r WHERE r.clearing_day = d.day "
            "AND r.result IS NOT NULL) FROM clearing_day d WHERE d.day = :day"
        ),
        {"day": business_date},
    ).one_or_none()
    run_id = None if row is None else (row[0] if row[0] is not None else row[1])
    run = session.get(ClearingRun, int(run_id)) if run_id is not None else None
    if run is None or not run.result:
        raise NotFound(f"clearing day {business_date.isoformat()} has no finished run yet")
    result = json.loads(run.result)
    checks = [
        ReconciliationCheck(
            str(c["name"]), bool(c["ok"]), int(c["expected"]), int(c["actual"]), str(c.get("detail", ""))
        )
        for c in result.get("checks", [])
    ]
    return bool(result.get("ok")), checks


# --- exceptions ---------------------------------------------------------------------------------------------------

_OPEN_PROPOSALS = (
    "SELECT record_id, action, amount, note, proposed_by FROM clearing_exception_action WHERE status = 'proposed'"
)
_RESOLVED_SQL = (
    "SELECT r.id, p.clearing_day, p.class, p.code, p.operator_id, r.card_no, r.card_seq, r.term_id, r.term_seq, "
    "r.txn_type, r.amount, a.action, a.amount, a.note, a.proposed_by, a.decided_by "
    "FROM clearing_exception_action a JOIN clearing_record r ON r.id = a.record_id "
    "JOIN clearing_verdict v ON v.record_id = a.record_id AND v.action_id = a.id "
    "JOIN clearing_verdict p ON p.record_id = a.record_id AND p.verdict_no = v.verdict_no - 1 "
    "WHERE a.status = 'approved'"
)


def _open_views(session: Session, day: date | None, record_id: int | None = None) -> list[ExceptionView]:
    items = clearing_exceptions.open_exceptions(session, day)
    if record_id is not None:
        items = [item for item in items if item.record_id == record_id]
    params: dict[str, Any] = {}
    sql = _OPEN_PROPOSALS
    if record_id is not None:
        sql += " AND record_id = :id"
        params["id"] = record_id
    proposals = {int(row[0]): row for row in session.execute(text(sql), params).all()}
    views = []
    for item in items:
        proposal = proposals.get(item.record_id)
        views.append(
            ExceptionView(
                exception_id=item.record_id,
                business_date=item.clearing_day,
                exception_class=item.klass,  # type: ignore[arg-type]
                code=item.code,
                card_no=item.card_no,
                card_seq=item.card_seq,
                term_id=item.term_id,
                term_seq=item.term_seq,
                status="proposed" if proposal is not None else "open",
                proposed_action=None if proposal is None else str(proposal[1]),
                proposed_by=None if proposal is None else str(proposal[4]),
                decided_by=None,
                operator_id=item.operator_id,
                txn_type=item.txn_type,
                amount=item.amount,
                proposed_amount=None if proposal is None or proposal[2] is None else int(proposal[2]),
                note=None if proposal is None else str(proposal[3]),
            )
        )
    return views


def _resolved_views(session: Session, day: date | None, record_id: int | None = None) -> list[ExceptionView]:
    sql = _RESOLVED_SQL
    params: dict[str, Any] = {}
    if day is not None:
        sql += " AND p.clearing_day = :day"
        params["day"] = day
    if record_id is not None:
        sql += " AND r.id = :id"
        params["id"] = record_id
    return [
        ExceptionView(
            exception_id=int(row[0]),
            business_date=_day(row[1]),
            exception_class=str(row[2]),  # type: ignore[arg-type]
            code=str(row[3]),
            card_no=str(row[5]),
            card_seq=int(row[6]),
            term_id=str(row[7]),
            term_seq=int(row[8]),
            status="resolved",
            proposed_action=str(row[11]),
            proposed_by=str(row[14]),
            decided_by=str(row[15]),
            operator_id=str(row[4]),
            txn_type=str(row[9]),
            amount=int(row[10]),
            proposed_amount=None if row[12] is None else int(row[12]),
            note=str(row[13]),
        )
        for row in session.execute(text(sql + " ORDER BY r.id, a.id"), params).all()
    ]


def exceptions(
    uow: UnitOfWork, *, business_date: date | None, status: Literal["open", "proposed", "resolved"] | None
) -> list[ExceptionView]:
    """Clearing exceptions (of the day that decided them, when given), by id."""
    session = _require_clearing(uow)
    found: list[ExceptionView] = []
    if status in (None, "open", "proposed"):
        found += [v for v in _open_views(session, business_date) if status in (None, v.status)]
    if status in (None, "resolved"):
        found += _resolved_views(session, business_date)
    return sorted(found, key=lambda v: (v.exception_id, v.status))


def _exception(session: Session, exception_id: int) -> ExceptionView:
    found = _open_views(session, None, exception_id) or _resolved_views(session, None, exception_id)
    if not found:
        raise NotFound(f"no exception {exception_id}")
    return found[-1]


def exception(uow: UnitOfWork, *, exception_id: int) -> ExceptionView:
    """One clearing exception and its resolution (its latest state: open, proposed or resolved)."""
    return _exception(_require_clearing(uow), exception_id)


def propose_resolution(
    uow: UnitOfWork, principal: Principal, *, exception_id: int, action: str, note: str, amount: int | None = None
) -> ExceptionView:
    """The maker's proposed resolution of an exception: ``accept``, ``reject`` or ``adjust`` (``amount``)."""
    session = _require_clearing(uow)
    if action not in ACTIONS:
        raise InvalidInput(f"the action is one of {', '.join(ACTIONS)}")
    current = _exception(session, exception_id)
    if current.status != "open":
        raise Conflict(f"exception {exception_id} is {current.status}")
    clearing_exceptions.propose(
        uow, record_id=exception_id, action=action, note=note, maker=principal.username, amount=amount
    )
    return _exception(uow.session, exception_id)


def decide_resolution(
    uow: UnitOfWork, principal: Principal, *, exception_id: int, approve: bool, note: str
) -> ExceptionView:
    """The checker's decision on the open proposal (not the maker's own: ``403``); the note goes to the audit."""
    session = _require_clearing(uow)
    current = _exception(session, exception_id)
    proposal_id = session.execute(
        text("SELECT id FROM clearing_exception_action WHERE record_id = :r AND status = 'proposed'"),
        {"r": exception_id},
    ).scalar_one_or_none()
    if proposal_id is None:
        raise Conflict(f"exception {exception_id} is {current.status}: nothing proposed to decide")
    if note.strip():
        session.add(
            ClearingAudit(
                at=datetime.now(UTC),
                actor_id=principal.username,
                action="exception.decision_note",
                object_type="exception_action",
                object_id=str(proposal_id),
                detail=json.dumps({"approve": approve, "note": note.strip()}, sort_keys=True),
            )
        )
    decide = clearing_exceptions.approve if approve else clearing_exceptions.refuse
    decide(uow, action_id=int(proposal_id), checker=principal.username)
    return _exception(uow.session, exception_id)
