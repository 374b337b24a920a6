"""Clearing runs (issue #6 "Scale and distribution"): stages and tasks kept in the database, not in chords.

A run of a clearing day goes through three stages, each a set of tasks (``clearing_task`` rows):

1. ``ingest``: one task per accepted upload not yet ingested;
2. ``clear``: the run first takes in every ingested batch nobody took yet (``batch_ingest.claim_run_id``: the
   records this run sees, fixed), then one task per card-number range (decide and post: :mod:`clearing.clear`);
3. ``close``: one task: duplicates, settlement per operator, the issuance feed, the reconciliation; the day closes
   when every check holds.

A task is one unit of work: it locks its row, does its work, marks itself done and, when it is the last of its
stage (decided under the run row's lock), creates the next stage's tasks and sends them after the commit. A task
delivered twice finds itself done and does nothing; a task killed half way left nothing behind (its transaction
never committed) and runs again. The same functions run in-process (:class:`InProcessDispatcher`, the embedded
default) or on Celery workers (:mod:`clearing.tasks`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.errors import Conflict
from backoffice.settings import Settings
from clearing import bulk
from clearing.clear import SHARD_RECORDS, BalanceMovedOn, RunRef, Shard, clear_shard, plan_shards, settle_day
from clearing.ingest import AlreadyIngested, ingest_in_session, uploads_to_ingest
from clearing.reconcile import Check, day_end, failed, import_feed, reconcile
from clearing.rules import DEFAULT_POLICY, Policy
from clearing.tables import ClearingDay, ClearingRun, ClearingTask
from clearing.tacs import TacVerifier

log = logging.getLogger("onecard.clearing.runs")

INGEST, CLEAR, CLOSE = "ingest", "clear", "close"
ENV_SHARD_RECORDS = "ONECARD_CLEARING_SHARD_RECORDS"


def shard_records() -> int:
    """Records per clear task aimed at (``ONECARD_CLEARING_SHARD_RECORDS``, default
    :data:`clearing.clear.SHARD_RECORDS`): a run's clear stage is split into card ranges of about this size."""
    value = os.environ.get(ENV_SHARD_RECORDS, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else SHARD_RECORDS


TASK_ATTEMPTS = 5


class Dispatcher(Protocol):
    """Where tasks go: Celery, or a queue drained in this process."""

    def send(self, stage: str, run_id: int, key: str) -> None:
        """Queue one task."""
        ...


@dataclass
class ClearingEnv:
    """What clearing tasks need: sessions, the issuer's keys (opened lazily), the policy and a clock."""

    sessions: sessionmaker[Session]
    open_keystore: Callable[[], Any]
    policy: Policy = DEFAULT_POLICY
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _verifier: TacVerifier | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, policy: Policy = DEFAULT_POLICY) -> ClearingEnv:
        """The configured database and keystore (README "Configuration")."""
        return cls.for_engine(make_engine(settings.database_url), settings, policy)

    @classmethod
    def for_engine(cls, engine: Engine, settings: Settings, policy: Policy = DEFAULT_POLICY) -> ClearingEnv:
        """An existing engine (the API's) and the configured keystore."""

        def keystore() -> Any:
            from issuance.keystore import open_keystore

            return open_keystore(settings.keystore)

        return cls(session_factory(engine), keystore, policy)

    def uow(self) -> UnitOfWork:
        """A new unit of work."""
        return UnitOfWork(self.sessions)

    def verifier(self) -> TacVerifier:
        """This process's TAC verifier (its card-key cache lives as long as the environment)."""
        with self._lock:
            if self._verifier is None:
                keystore = self.open_keystore()
                kcvs = getattr(keystore, "kcvs", None)
                if callable(kcvs) and not kcvs():
                    from backoffice.errors import KeystoreError

                    raise KeystoreError("the keystore holds no issuer keys: import them with `onecard keys import`")
                self._verifier = TacVerifier(keystore)
            return self._verifier


@dataclass(frozen=True, slots=True)
class RunState:
    """Where a run is."""

    run_id: int
    day: date
    run_no: int
    stage: str
    result: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        """Done (the day closed) or failed (a reconciliation check failed: the day stays open)."""
        return self.stage in ("done", "failed")


def _state(run: ClearingRun) -> RunState:
    return RunState(run.id, run.clearing_day, run.run_no, run.stage, json.loads(run.result) if run.result else None)


def run_state(env: ClearingEnv, run_id: int) -> RunState:
    """The run as it is now."""
    with env.uow() as uow:
        run = uow.session.get(ClearingRun, run_id)
        if run is None:
            raise Conflict(f"no clearing run {run_id}")
        return _state(run)


def _lock(session: Session, statement: Any) -> Any:
    return session.scalars(statement.with_for_update()).one_or_none()


def _add_tasks(session: Session, run_id: int, stage: str, keys: list[str]) -> list[tuple[str, int, str]]:
    bulk.insert_rows(
        session,
        "clearing_task",
        ("run_id", "stage", "task_key", "status", "attempts"),
        [(run_id, stage, key, "pending", 0) for key in keys],
    )
    return [(stage, run_id, key) for key in keys]


def _advance(session: Session, run: ClearingRun) -> list[tuple[str, int, str]]:
    """Move the run to its next stage when its current one has no pending task; the tasks to send."""
    while True:
        pending = session.execute(
            text("SELECT count(*) FROM clearing_task WHERE run_id = :r AND stage = :s AND status = 'pending'"),
            {"r": run.id, "s": run.stage},
        ).scalar_one()
        if pending or run.stage not in (INGEST, CLEAR):
            return []
        if run.stage == INGEST:
            session.execute(text("UPDATE batch_ingest SET claim_run_id = :r WHERE claim_run_id IS NULL"), {"r": run.id})
            run.stage = CLEAR
            shards = plan_shards(session, RunRef(run.id, run.clearing_day, run.run_no), shard_records())
            if shards:
                return _add_tasks(session, run.id, CLEAR, [shard.key for shard in shards])
        else:
            run.stage = CLOSE
            return _add_tasks(session, run.id, CLOSE, ["day"])


def begin_run(env: ClearingEnv, dispatcher: Dispatcher, day: date) -> RunState:
    """Start a run of clearing ``day`` (or resume its unfinished one) and send its tasks.

    A closed day is not run again (its state is returned); days close in order, so a day before the last closed
    one is refused (its late records post into the current day). One run at a time: another day's unfinished run
    must finish first.
    """
    with env.uow() as uow:
        session = uow.session
        now = env.clock()
        insert = "INSERT INTO clearing_day (day, status, runs) VALUES (:day, 'open', 0) ON CONFLICT DO NOTHING"
        session.execute(text(insert), {"day": day})
        clearing_day = _lock(session, select(ClearingDay).where(ClearingDay.day == day))
        assert clearing_day is not None
        if clearing_day.status == "closed":
            closed = session.get(ClearingRun, clearing_day.closed_run_id)
            assert closed is not None
            return _state(closed)
        last_closed = session.execute(text("SELECT max(day) FROM clearing_day WHERE status = 'closed'")).scalar_one()
        if last_closed is not None and _as_date(last_closed) > day:
            raise Conflict(
                f"clearing day {day.isoformat()} is before the last closed day {_as_date(last_closed).isoformat()}: "
                "days close in order, and its late records post into the current day"
            )
        unfinished = session.scalars(
            select(ClearingRun).where(ClearingRun.stage.not_in(("done", "failed"))).order_by(ClearingRun.id)
        ).all()
        for other in unfinished:
            if other.clearing_day != day:
                raise Conflict(f"a run of {other.clearing_day.isoformat()} is unfinished: run that day first")
        if unfinished:
            run = unfinished[0]
            tasks = [
                (stage, run.id, key)
                for stage, key in session.execute(
                    text("SELECT stage, task_key FROM clearing_task WHERE run_id = :r AND status = 'pending'"),
                    {"r": run.id},
                ).all()
            ] + _advance(session, run)
            log.info("resuming run %d of %s at stage %s", run.run_no, day, run.stage)
        else:
            clearing_day.runs += 1
            run = ClearingRun(clearing_day=day, run_no=clearing_day.runs, stage=INGEST, started_at=now)
            session.add(run)
            session.flush()
            tasks = _add_tasks(session, run.id, INGEST, [str(u) for u in uploads_to_ingest(session)])
            tasks += _advance(session, run)
            log.info("run %d of %s started", run.run_no, day)
        for task in tasks:
            uow.after_commit(functools.partial(dispatcher.send, *task))
        state = _state(run)
        uow.commit()
        return state


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def execute_task(env: ClearingEnv, dispatcher: Dispatcher, stage: str, run_id: int, key: str) -> None:
    """Run one task exactly once (spec-free plumbing of issue #6): idempotent, one unit of work, retried when a
    concurrent transaction got in the way."""
    for attempt in range(1, TASK_ATTEMPTS + 1):
        try:
            _execute(env, dispatcher, stage, run_id, key)
            return
        except (AlreadyIngested, BalanceMovedOn, IntegrityError, OperationalError) as exc:
            if attempt < TASK_ATTEMPTS and _retryable(exc):
                log.info("task %s/%s of run %d: starting over after %s", stage, key, run_id, type(exc).__name__)
                continue
            _record_failure(env, stage, run_id, key, exc)
            raise
        except Exception as exc:
            _record_failure(env, stage, run_id, key, exc)
            raise


def _record_failure(env: ClearingEnv, stage: str, run_id: int, key: str, exc: Exception) -> None:
    """Keep why a task failed on its row (it stays pending: running the day again retries it)."""
    message = f"{type(exc).__name__}: {exc}".splitlines()[0][:1000]
    log.error("task %s/%s of run %d failed: %s", stage, key, run_id, message)
    try:
        with env.uow() as uow:
            uow.session.execute(
                text(
                    "UPDATE clearing_task SET error = :e, attempts = attempts + 1 "
                    "WHERE run_id = :r AND stage = :s AND task_key = :k"
                ),
                {"e": message, "r": run_id, "s": stage, "k": key},
            )
            uow.commit()
    except Exception:
        log.exception("could not record the failure of task %s/%s", stage, key)


def task_errors(env: ClearingEnv, run_id: int) -> list[str]:
    """The errors of the run's tasks that failed and are still pending."""
    with env.uow() as uow:
        rows = uow.session.execute(
            text(
                "SELECT stage, task_key, error FROM clearing_task WHERE run_id = :r AND status = 'pending' "
                "AND error IS NOT NULL ORDER BY stage, task_key"
            ),
            {"r": run_id},
        ).all()
    return [f"{stage} {key}: {error}" for stage, key, error in rows]


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, AlreadyIngested | BalanceMovedOn | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        message = str(exc.orig).lower()
        return any(word in message for word in ("deadlock", "serializ", "locked", "could not obtain lock", "busy"))
    return False


def _execute(env: ClearingEnv, dispatcher: Dispatcher, stage: str, run_id: int, key: str) -> None:
    with env.uow() as uow:
        session = uow.session
        bulk.tune_transaction(session)
        task = _lock(
            session,
            select(ClearingTask).where(
                ClearingTask.run_id == run_id, ClearingTask.stage == stage, ClearingTask.task_key == key
            ),
        )
        if task is None or task.status == "done":
            return
        run = session.get(ClearingRun, run_id)
        assert run is not None
        ref = RunRef(run.id, run.clearing_day, run.run_no)
        now = env.clock()
        closed = False
        if stage == INGEST:
            ingest_in_session(session, int(key), env.verifier(), now)
        elif stage == CLEAR:
            clear_shard(session, ref, Shard.parse(key), env.policy)
        elif stage == CLOSE:
            closed = close_day(session, ref, env.policy, now)
        task.status, task.attempts, task.finished_at, task.error = "done", task.attempts + 1, env.clock(), None
        session.flush()
        run = _lock(session, select(ClearingRun).where(ClearingRun.id == run_id))
        assert run is not None
        for follow in _advance(session, run):
            uow.after_commit(functools.partial(dispatcher.send, *follow))
        if closed:
            uow.after_commit(lambda: complete_transfers(env, ref.day))
        uow.commit()


def close_day(session: Session, run: RunRef, policy: Policy, now: datetime) -> bool:
    """The close stage: count the duplicates in, take in the issuance feed, reconcile, and close the day when
    every check holds (storing the report's SHA-256). Returns whether the day closed."""
    from clearing.reports import build_report, render_json

    session.execute(
        text(
            "UPDATE clearing_duplicate SET clearing_day = :day WHERE clearing_day IS NULL AND ingest_id IN "
            "(SELECT id FROM batch_ingest WHERE claim_run_id IS NOT NULL AND claim_run_id <= :run)"
        ),
        {"day": run.day, "run": run.run_id},
    )
    settle_day(session, run)
    feed = import_feed(session, run, policy)
    checks = reconcile(session, run, policy)
    disagree = failed(checks)
    result = {
        "day": run.day.isoformat(),
        "run_no": run.run_no,
        "ok": not disagree,
        "checks": [check.to_json() for check in checks],
        "feed": {"movements": feed.movements, "loads": feed.loads, "refunds": feed.refunds},
    }
    stored = session.get(ClearingRun, run.run_id)
    assert stored is not None
    stored.result = json.dumps(result, sort_keys=True)
    stored.stage = "failed" if disagree else "done"
    stored.finished_at = now
    session.flush()
    if disagree:
        log.warning("clearing day %s stays open: %s", run.day, "; ".join(_describe(c) for c in disagree))
        return False
    document = build_report(session, run.day, closing_run=run.run_id)
    digest = _sha256(render_json(document))
    session.execute(
        text("UPDATE clearing_day SET status = 'closed', closed_run_id = :r, report_sha256 = :h WHERE day = :day"),
        {"r": run.run_id, "h": digest, "day": run.day},
    )
    log.info("clearing day %s closed (run %d)", run.day, run.run_no)
    return True


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _describe(check: Check) -> str:
    return f"{check.name}: expected {check.expected}, actual {check.actual} ({check.detail})"


def complete_transfers(env: ClearingEnv, day: date) -> None:
    """After a day closed: issuance settles closed cards whose hotlist time is a grace period before the end of
    the day (their offline purchases have had the time to arrive); the movements are dated the day's end."""
    from issuance.services import complete_pending_transfers

    end = day_end(day, env.policy)
    try:
        with env.uow() as uow:
            complete_pending_transfers(uow, end - timedelta(days=env.policy.settlement_grace_days), clock=lambda: end)
    except Exception:
        log.exception("completing pending balance transfers after %s failed; the next close tries again", day)


class InProcessDispatcher:
    """Runs tasks in this process, one after another, until none is left (the embedded default)."""

    def __init__(self, env: ClearingEnv) -> None:
        self.env = env
        self.queue: deque[tuple[str, int, str]] = deque()

    def send(self, stage: str, run_id: int, key: str) -> None:
        """Queue a task (it runs in :meth:`drain`, never inside another task's transaction)."""
        self.queue.append((stage, run_id, key))

    def drain(self) -> None:
        """Run queued tasks until the queue is empty."""
        while self.queue:
            stage, run_id, key = self.queue.popleft()
            execute_task(self.env, self, stage, run_id, key)


def run_in_process(env: ClearingEnv, day: date) -> RunState:
    """Run clearing ``day`` to the end in this process; the run's final state."""
    dispatcher = InProcessDispatcher(env)
    state = begin_run(env, dispatcher, day)
    dispatcher.drain()
    return run_state(env, state.run_id)
