"""Clearing on Celery over Redis (issue #6 "Scale and distribution"), or in-process without Redis.

Tasks are coarse: one per batch (``clearing.ingest``), one per card-number range of the day's records
(``clearing.clear``: a card's chain whole in one task), one per day (``clearing.close``: settlement per operator,
reconciliation) — never one per record. Their state is in the database (:mod:`clearing.runs`), not
in chords, so any number of workers on any number of machines share one PostgreSQL. Every task is idempotent
and acknowledged late (``task_acks_late``), a worker that dies mid-task gives its message back
(``task_reject_on_worker_lost``) and Redis redelivers an unacknowledged message only after a visibility timeout
longer than any task.

Without ``ONECARD_REDIS_URL`` (the embedded default) the same task functions run in this process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

from celery import Celery

from backoffice.errors import OnecardError
from backoffice.settings import Settings
from clearing.intake import ingest_pending
from clearing.runs import ClearingEnv, RunState, begin_run, execute_task, run_in_process, run_state, task_errors

log = logging.getLogger("onecard.clearing.tasks")

QUEUE = "clearing"
VISIBILITY_TIMEOUT = 6 * 3600
"""Seconds before Redis redelivers an unacknowledged task: longer than any clearing task."""
ENV_VISIBILITY_TIMEOUT = "ONECARD_CLEARING_VISIBILITY_TIMEOUT"
RUN_TIMEOUT = 6 * 3600.0


def make_celery(redis_url: str, visibility_timeout: int | None = None) -> Celery:
    """The Celery application of clearing on ``redis_url``."""
    timeout = visibility_timeout or int(os.environ.get(ENV_VISIBILITY_TIMEOUT) or VISIBILITY_TIMEOUT)
    celery = Celery("onecard-clearing", broker=redis_url, set_as_current=False)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": timeout,
            "unacked_restore_interval": max(1, min(10, timeout // 3)),
            "unacked_restore_throttle": 1 if timeout < 600 else 10,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return celery


app = make_celery(Settings.load().redis_url or "redis://127.0.0.1:6379/0")
"""The application workers load (``onecard worker``; ``celery -A clearing.tasks worker``)."""

_env_lock = threading.Lock()
_worker_env: ClearingEnv | None = None


def worker_env() -> ClearingEnv:
    """This worker process's clearing environment (database, keystore, card-key cache)."""
    global _worker_env
    with _env_lock:
        if _worker_env is None:
            _worker_env = ClearingEnv.from_settings(Settings.load())
        return _worker_env


class CeleryDispatcher:
    """Sends tasks to the workers through Redis."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def send(self, stage: str, run_id: int, key: str) -> None:
        """``clearing.<stage>(run_id, key)``."""
        self.celery.send_task(f"clearing.{stage}", args=[run_id, key], queue=QUEUE)


def _ingest(run_id: int, key: str) -> None:
    """A run's ingest of one batch (``key``: the upload id)."""
    execute_task(worker_env(), CeleryDispatcher(app), "ingest", run_id, key)


def _clear(run_id: int, key: str) -> None:
    """A run's clearing of one card-number range (``key``: :attr:`clearing.clear.Shard.key`) for the run's day."""
    execute_task(worker_env(), CeleryDispatcher(app), "clear", run_id, key)


def _close(run_id: int, key: str) -> None:
    """A run's close: duplicates, settlement per operator, the issuance feed, reconciliation, closing the day."""
    execute_task(worker_env(), CeleryDispatcher(app), "close", run_id, key)


def _ingest_pending() -> None:
    """Ingest every accepted batch not ingested yet (sent after an upload commits)."""
    ingest_pending(worker_env())


_options: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}
ingest_task: Any = app.task(name="clearing.ingest", **_options)(_ingest)
clear_task: Any = app.task(name="clearing.clear", **_options)(_clear)
close_task: Any = app.task(name="clearing.close", **_options)(_close)
ingest_pending_task: Any = app.task(name="clearing.ingest_pending", **_options)(_ingest_pending)


# --- runs ----------------------------------------------------------------------------------------------------------


def run_day(settings: Settings, day: date, *, timeout: float = RUN_TIMEOUT, poll: float = 0.2) -> RunState:
    """Run clearing ``day``: on the Celery workers when Redis is configured (waiting for the run to finish),
    else in this process. The run's final state (``stage`` ``done``: the day closed; ``failed``: a check failed)."""
    env = ClearingEnv.from_settings(settings)
    if not settings.redis_url:
        return run_in_process(env, day)
    state = begin_run(env, CeleryDispatcher(make_celery(settings.redis_url)), day)
    deadline = time.monotonic() + timeout
    while not state.finished:
        errors = task_errors(env, state.run_id)
        if errors:
            raise OnecardError(f"the run of {day.isoformat()} stopped: " + "; ".join(errors))
        if time.monotonic() > deadline:
            raise OnecardError(f"the run of {day.isoformat()} did not finish within {timeout:.0f} s (workers up?)")
        time.sleep(poll)
        state = run_state(env, state.run_id)
    return state


def worker_main(argv: Sequence[str] | None = None) -> None:
    """``onecard worker``: a Celery worker for clearing's queue (needs ``ONECARD_REDIS_URL``)."""
    settings = Settings.load()
    if not settings.redis_url:
        raise OnecardError("a worker needs ONECARD_REDIS_URL (without Redis, clearing runs in-process)")
    app.conf.broker_url = settings.redis_url
    app.worker_main(["worker", "--loglevel=INFO", "-Q", QUEUE, *(argv or [])])
