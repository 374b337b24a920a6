"""``onecard clearing ingest|run|report|exceptions`` (cli.md; issue #6).

The finance staff's commands: batch files go in through the same inbox as device uploads, then are ingested; a
run clears, settles and reconciles a clearing day (on the Celery workers when Redis is configured); a report is
the day's settlement and exceptions as JSON, CSV, XLSX or PDF; exceptions are resolved by one person and approved
by another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.errors import OnecardError
from backoffice.settings import Settings
from onecard_cli.errors import CliError, guarded

clearing_app = typer.Typer(
    help="Clearing: ingest batches, run a clearing day, reports, exceptions.", no_args_is_help=True
)
exceptions_app = typer.Typer(help="Exceptions: resolve (maker) and approve (checker).", no_args_is_help=True)
clearing_app.add_typer(exceptions_app, name="exceptions")

T = TypeVar("T")
FORMATS = ("json", "csv", "xlsx", "pdf")


def _day(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise CliError(f"--date must be YYYY-MM-DD, not {value!r}") from None


def _database_errors(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except OnecardError as exc:
        raise CliError(exc.message) from None
    except (OperationalError, ProgrammingError) as exc:
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise CliError(f"database: {first_line} (has `onecard db upgrade` been run?)") from None


@contextmanager
def _sessions() -> Iterator[Callable[[], UnitOfWork]]:
    engine = make_engine(Settings.load().database_url)
    sessions = session_factory(engine)
    try:
        yield lambda: UnitOfWork(sessions)
    finally:
        engine.dispose()


# --- ingest --------------------------------------------------------------------------------------------------------


def ingest_file(new_uow: Callable[[], UnitOfWork], raw: bytes, verifier: Any) -> dict[str, Any]:
    """Keep one batch file through the inbox (as its device would upload it), then ingest it (spec §5)."""
    from clearing.inbox import BatchConflict, BatchRefused, receive_batch
    from clearing.ingest import ingest_with_retry
    from clearing.models import BatchUpload
    from clearing.registry import load_device_credentials

    try:
        header = json.loads(raw.split(b"\n", 1)[0].decode("utf-8"))
        device_id = str(header["device_id"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return {"status": "refused", "reason": "the first line is not a batch header with a device_id"}
    with new_uow() as uow:
        credentials = load_device_credentials(uow.session, device_id)
    if credentials is None:
        return {"status": "refused", "reason": f"no device {device_id} in the registry"}
    signature = hmac.new(credentials.upload_key, raw, hashlib.sha256).hexdigest()
    try:
        with new_uow() as uow:
            receipt = receive_batch(uow, credentials.identity, raw, signature)
    except (BatchRefused, BatchConflict) as exc:
        return {"status": "refused", "reason": exc.message}
    with new_uow() as uow:
        upload_id = uow.session.scalars(
            select(BatchUpload.id).where(BatchUpload.device_id == device_id, BatchUpload.batch_id == receipt.batch_id)
        ).one()
    result = ingest_with_retry(new_uow, upload_id, verifier)
    return {
        "status": "already ingested" if result.already else receipt.status,
        "batch_id": result.batch_id,
        "device_id": result.device_id,
        "records": result.records,
        "accepted": result.new,
        "duplicate": result.duplicates,
        "conflict": result.conflicts,
        "rejected": result.tac_failures,
        "completions": result.completions,
    }


@clearing_app.command("ingest")
@guarded
def ingest_command(
    files: Annotated[list[Path], typer.Argument(help="batch files (spec §5)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """Ingest batch files: accepted / duplicate / conflict / rejected record counts per file."""
    from clearing.runs import ClearingEnv

    settings = Settings.load()
    env = ClearingEnv.from_settings(settings)
    results: list[dict[str, Any]] = []
    with _sessions() as new_uow:
        verifier = _database_errors(env.verifier)
        for path in files:
            raw = path.read_bytes()
            outcome = _database_errors(lambda raw=raw: ingest_file(new_uow, raw, verifier))  # type: ignore[misc]
            results.append({"file": str(path), **outcome})
    if as_json:
        typer.echo(json.dumps({"files": results}, sort_keys=True))
    else:
        for item in results:
            if item["status"] == "refused":
                typer.echo(f"{item['file']}: refused: {item['reason']}")
            else:
                typer.echo(
                    f"{item['file']}: batch {item['batch_id']} of {item['device_id']} ({item['status']}): "
                    f"{item['records']} records, accepted {item['accepted']}, duplicate {item['duplicate']}, "
                    f"conflict {item['conflict']}, rejected {item['rejected']}"
                )
    refused = [item for item in results if item["status"] == "refused"]
    if refused:
        raise CliError(f"{len(refused)} of {len(results)} files refused")


# --- run -----------------------------------------------------------------------------------------------------------


@clearing_app.command("run")
@guarded
def run_command(
    day: Annotated[str, typer.Option("--date", help="the clearing day, YYYY-MM-DD")],
    as_json: Annotated[bool, typer.Option("--json", help="the run's result as JSON")] = False,
) -> None:
    """Clear and settle a clearing day; it closes only when every reconciliation check holds."""
    from clearing.tasks import run_day

    state = _database_errors(lambda: run_day(Settings.load(), _day(day)))
    result = state.result or {}
    if as_json:
        typer.echo(json.dumps({"run_no": state.run_no, "stage": state.stage, **result}, sort_keys=True))
    else:
        status = "closed" if state.stage == "done" else "still open"
        typer.echo(f"clearing day {state.day.isoformat()} (run {state.run_no}): {status}")
        for check in result.get("checks", []):
            mark = "ok  " if check["ok"] else "FAIL"
            typer.echo(f"  {mark} {check['name']}: expected {check['expected']}, actual {check['actual']}")
    if state.stage == "failed":
        disagree = [c for c in result.get("checks", []) if not c["ok"]]
        detail = "; ".join(
            f"{c['name']} expected {c['expected']} actual {c['actual']} ({c.get('detail', '')})" for c in disagree
        )
        raise CliError(f"reconciliation failed, the day stays open: {detail}")


# --- report --------------------------------------------------------------------------------------------------------


@clearing_app.command("report")
@guarded
def report_command(
    day: Annotated[str, typer.Option("--date", help="the clearing day, YYYY-MM-DD")],
    fmt: Annotated[str, typer.Option("--format", help="json, csv, xlsx or pdf")] = "json",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout)")] = None,
) -> None:
    """The day's settlement and exception report."""
    from clearing.reports import RENDERERS, day_report

    if fmt not in FORMATS:
        raise CliError(f"--format must be one of {', '.join(FORMATS)}")
    clearing_day = _day(day)

    def make() -> bytes:
        with _sessions() as new_uow, new_uow() as uow:
            return RENDERERS[fmt](day_report(uow.session, clearing_day))

    data = _database_errors(make)
    if out is not None:
        out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


# --- exceptions ----------------------------------------------------------------------------------------------------


@exceptions_app.command("list")
@guarded
def exceptions_list(
    day: Annotated[str | None, typer.Option("--date", help="only this clearing day")] = None,
) -> None:
    """Open exceptions (rejected, suspicious, conflict, pending) with their record ids, as JSON."""
    from clearing.exceptions import open_exceptions

    def read() -> list[dict[str, Any]]:
        with _sessions() as new_uow, new_uow() as uow:
            return [asdict(item) for item in open_exceptions(uow.session, _day(day) if day else None)]

    typer.echo(json.dumps({"exceptions": _database_errors(read)}, sort_keys=True, default=str))


@exceptions_app.command("propose")
@guarded
def exceptions_propose(
    record_id: Annotated[int, typer.Argument(help="the record")],
    action: Annotated[str, typer.Option("--action", help="accept, reject or adjust")],
    by: Annotated[str, typer.Option("--by", help="who proposes (maker)")],
    note: Annotated[str, typer.Option("--note", help="why")],
    amount: Annotated[int | None, typer.Option("--amount", help="adjust: the amount to settle, fen")] = None,
) -> None:
    """Propose how an exception is resolved (the maker)."""
    from clearing.exceptions import propose

    def act() -> dict[str, Any]:
        with _sessions() as new_uow, new_uow() as uow:
            return asdict(propose(uow, record_id=record_id, action=action, amount=amount, note=note, maker=by))

    typer.echo(json.dumps(_database_errors(act), sort_keys=True, default=str))


@exceptions_app.command("approve")
@guarded
def exceptions_approve(
    action_id: Annotated[int, typer.Argument(help="the proposal")],
    by: Annotated[str, typer.Option("--by", help="who approves (checker, not the maker)")],
) -> None:
    """Approve a proposal (the checker): it takes effect in the current clearing day."""
    from clearing.exceptions import approve

    def act() -> dict[str, Any]:
        with _sessions() as new_uow, new_uow() as uow:
            return asdict(approve(uow, action_id=action_id, checker=by))

    typer.echo(json.dumps(_database_errors(act), sort_keys=True, default=str))


@exceptions_app.command("refuse")
@guarded
def exceptions_refuse(
    action_id: Annotated[int, typer.Argument(help="the proposal")],
    by: Annotated[str, typer.Option("--by", help="who refuses (checker, not the maker)")],
) -> None:
    """Refuse a proposal (the checker): nothing changes."""
    from clearing.exceptions import refuse

    def act() -> dict[str, Any]:
        with _sessions() as new_uow, new_uow() as uow:
            return asdict(refuse(uow, action_id=action_id, checker=by))

    typer.echo(json.dumps(_database_errors(act), sort_keys=True, default=str))
