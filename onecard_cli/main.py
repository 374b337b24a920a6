"""The ``onecard`` command (spec cli.md)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Citizen one-card system", no_args_is_help=True)


@app.command()
def demo() -> None:
    """Run a simulated city day on the embedded default."""
    typer.echo("demo: not built yet")
