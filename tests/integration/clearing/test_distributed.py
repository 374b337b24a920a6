"""Clearing on real Celery workers over a real Redis (issue #6 "Scale and distribution"): a worker killed with
SIGKILL in the middle of a run, the run repeated with a new worker — the ledger, the classes, the shadows and the
reports are identical to those of an undisturbed run; the killed task's message comes back and changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from integration.clearing.citykit import DAY, City, open_city, unconfirmed
from services import Postgres, Redis
from sqlalchemy import text

from backoffice.settings import Settings
from clearing.reports import RENDERERS, day_report
from clearing.runs import run_state
from clearing.tasks import run_day

ROOT = Path(__file__).resolve().parents[3]


def a_day(city: City) -> None:
    """Loads, taps on two bus companies, an unconfirmed tap; uploaded (not yet ingested)."""
    cards = [city.new_card(load=8_000) for _ in range(6)]
    city.send_counter()
    for hour in (8, 9, 12, 17):
        city.clock.set(DAY, hour)
        city.send("BUSA-V01", [city.tap("BUSA-V01", card, 200) for card in cards[:3]])
        city.send("BUSB-V01", [city.tap("BUSB-V01", card, 150) for card in cards[3:]])
    city.clock.set(DAY, 18)
    city.send("BUSA-V02", [unconfirmed(city.tap("BUSA-V02", cards[0], 300))])


def outcome(city: City) -> dict[str, Any]:
    """What a run leaves: the ledger, the classes, the shadows, every report format."""
    with city.uow() as uow:
        reports = {name: render(day_report(uow.session, DAY)) for name, render in RENDERERS.items()}
        shadows = uow.session.execute(text("SELECT card_no, shadow_balance FROM cards ORDER BY card_no")).all()
    return {
        "ledger": city.ledger_snapshot(),
        "classes": city.classes(),
        "shadows": [tuple(row) for row in shadows],
        "reports": reports,
    }


@contextmanager
def worker(city: City, redis_url: str, log: Path, *extra_env: tuple[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process (solo pool: SIGKILL takes the task with it)."""
    env = {
        **os.environ,
        "ONECARD_DATABASE_URL": city.url,
        "ONECARD_REDIS_URL": redis_url,
        **city.keystore_env,
        **dict(extra_env),
    }
    code = (
        "from clearing.tasks import worker_main; "
        "worker_main(['--pool=solo', '--without-gossip', '--without-mingle', '--without-heartbeat', '-n', 'w@test'])"
    )
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_worker_killed_mid_run_then_the_run_repeated_gives_the_undisturbed_result(
    db_url: str, tmp_path: Path, redis_server: Redis, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONECARD_CLEARING_SHARD_RECORDS", "4")  # the clear stage in several card ranges (tasks)
    if db_url.startswith("sqlite"):
        calm_url = f"sqlite:///{tmp_path / 'calm.db'}"
    else:
        cluster: Postgres = request.getfixturevalue("postgres")
        calm_url = cluster.create_database(f"calm_{os.getpid()}_{time.monotonic_ns()}")
    (tmp_path / "calm").mkdir()
    (tmp_path / "stormy").mkdir()
    calm = open_city(calm_url, tmp_path / "calm")
    stormy = open_city(db_url, tmp_path / "stormy")
    try:
        a_day(calm)
        a_day(stormy)
        assert calm.run(DAY).stage == "done"
        expected = outcome(calm)

        broker = redis.Redis.from_url(redis_server.url)
        broker.flushall()
        settings = Settings(
            database_url=stormy.url, redis_url=redis_server.url, keystore=stormy.keystore_env["ONECARD_KEYSTORE"]
        )
        log = tmp_path / "worker.log"
        with stormy.engine.connect() as blocker, worker(stormy, redis_server.url, log) as first:
            blocking = blocker.begin()
            postgres = not stormy.url.startswith("sqlite")
            if postgres:  # hold a card: the worker's clearing of its card range waits for it, mid-transaction
                blocker.execute(text("SELECT id FROM cards WHERE card_no = '0310000000000004' FOR UPDATE"))
            abandoned = threading.Thread(target=lambda: _run_quietly(settings), daemon=True)
            abandoned.start()
            # SQLite has no row locks: the worker dies between its tasks, holding the next one unacknowledged.
            _wait(lambda: _stalled(stormy, broker) if postgres else _half_done(stormy), 60, "the run to be half done")
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            assert first.returncode == -signal.SIGKILL
            blocking.rollback()
        with stormy.uow() as uow:
            stage, pending = uow.session.execute(
                text(
                    "SELECT r.stage, (SELECT count(*) FROM clearing_task t WHERE t.run_id = r.id "
                    "AND t.status = 'pending') FROM clearing_run r"
                )
            ).one()
        assert stage in ("ingest", "clear") and pending >= 1  # the run stopped half way

        with worker(stormy, redis_server.url, log, ("ONECARD_CLEARING_VISIBILITY_TIMEOUT", "3")):
            state = run_day(settings, DAY, timeout=120)  # the run, repeated: it resumes where it stopped
            assert state.stage == "done", state.result
            time.sleep(4)  # the killed task's message comes back after the visibility timeout: it changes nothing
            _wait(lambda: not broker.hlen("unacked"), 30, "the redelivered task to be acknowledged")
        assert run_state(stormy.env, state.run_id).stage == "done"
        with stormy.uow() as uow:
            shards = uow.session.execute(text("SELECT count(*) FROM clearing_task WHERE stage = 'clear'")).scalar_one()
        assert shards >= 3
        assert outcome(stormy) == expected
    finally:
        calm.dispose()
        stormy.dispose()


def _run_quietly(settings: Settings) -> None:
    """The first ``clearing run``: its worker is about to die, so its wait is abandoned."""
    with suppress(Exception):
        run_day(settings, DAY, timeout=60)


def _half_done(city: City) -> bool:
    """Some tasks of the run are done, some are not."""
    with city.engine.connect() as connection:
        done, pending = connection.execute(
            text(
                "SELECT coalesce(sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0), "
                "coalesce(sum(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) FROM clearing_task"
            )
        ).one()
    return bool(done) and bool(pending)


def _stalled(city: City, broker: redis.Redis) -> bool:
    """The worker has taken a task and is waiting on the test's lock."""
    if not broker.hlen("unacked"):
        return False
    with city.engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar_one()
    return bool(waiting)


pytestmark = pytest.mark.timeout(300)
