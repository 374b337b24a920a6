"""``onecard registry import FILE``: operators, fee schedules and devices from a registry file (cli.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError

from backoffice.db import UnitOfWork, make_engine, session_factory
from backoffice.errors import OnecardError
from backoffice.settings import Settings
from clearing.registry import ImportCounts, RegistryDocument, import_registry, parse_registry_file
from onecard_cli.errors import CliError, guarded

registry_app = typer.Typer(help="The registry: operators, fee schedules and devices.", no_args_is_help=True)


@registry_app.command("import")
@guarded
def import_command(
    file: Annotated[Path, typer.Argument(help="registry file (JSON, format onecard-registry/1)")],
) -> None:
    """Add or update operators (with fee schedules) and devices; the whole file is checked first, all or nothing."""
    document = _parse(file.read_bytes())
    engine = make_engine(Settings.load().database_url)
    try:
        with UnitOfWork(session_factory(engine)) as uow:
            counts = import_registry(uow, document)
    except OnecardError as exc:
        raise CliError(exc.message) from None
    except (OperationalError, ProgrammingError) as exc:
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise CliError(f"database: {first_line} (has `onecard db upgrade` been run?)") from None
    finally:
        engine.dispose()
    for line in summary_lines(counts):
        typer.echo(line)


def _parse(raw: bytes) -> RegistryDocument:
    try:
        return parse_registry_file(raw)
    except OnecardError as exc:
        raise CliError(exc.message) from None


def summary_lines(counts: ImportCounts) -> list[str]:
    """``operators: 1 added, 0 updated, 0 unchanged`` and the same for fee schedules and devices."""
    return [
        f"operators: {counts.operators_added} added, {counts.operators_updated} updated, "
        f"{counts.operators_unchanged} unchanged",
        f"fee schedules: {counts.fees_added} added, {counts.fees_updated} updated, {counts.fees_unchanged} unchanged",
        f"devices: {counts.devices_added} added, {counts.devices_updated} updated, "
        f"{counts.devices_unchanged} unchanged",
    ]
