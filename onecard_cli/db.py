"""``onecard db upgrade`` (cli.md): create or migrate the database schema with Alembic."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from backoffice import schema
from backoffice.settings import Settings
from onecard_cli.errors import CliError, guarded

db_app = typer.Typer(help="The back-office database.", no_args_is_help=True)


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the configured database"


@db_app.command("upgrade")
@guarded
def upgrade() -> None:
    """Create or migrate the database schema (every package's migrations) to the latest revision."""
    url = Settings.load().database_url
    try:
        schema.upgrade(url)
    except ArgumentError:
        raise CliError("ONECARD_DATABASE_URL is not a database URL") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()[0]
        raise CliError(f"cannot upgrade {_shown(url)}: {reason}") from None
    typer.echo(f"database schema up to date: {_shown(url)}")
