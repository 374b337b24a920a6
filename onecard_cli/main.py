"""The ``onecard`` command (cli.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cardos.crypto import Alg
from onecard_cli.cards import card_app, terminal_app
from onecard_cli.clearing import clearing_app
from onecard_cli.db import db_app
from onecard_cli.errors import CliError, guarded, stderr
from onecard_cli.keys import keys_app
from onecard_cli.registry import registry_app
from onecard_cli.sim import sim_app
from onecard_cli.validator import validator_app

app = typer.Typer(
    help="Citizen one-card system: cards, terminals, issuance, clearing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(sim_app, name="sim")
app.add_typer(card_app, name="card")
app.add_typer(terminal_app, name="terminal")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(clearing_app, name="clearing")
app.add_typer(validator_app, name="validator")
app.add_typer(registry_app, name="registry")
bench_app = typer.Typer(help="Benchmarks, each against a baseline measured in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
@guarded
def demo(
    cards: Annotated[int, typer.Option("--cards", min=1, help="cards to issue")] = 20,
    riders: Annotated[int, typer.Option("--riders", min=0, help="bus taps")] = 200,
    date: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 1,
) -> None:
    """The main job: a simulated city day on the embedded default."""
    from onecard_cli.demo import run_demo

    run_demo(cards=cards, riders=riders, date=date, seed=seed)


@bench_app.command("tap")
@guarded
def bench_tap(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    records: Annotated[int, typer.Option("--records", min=10, help="purchases to time")] = 300,
    alg: Annotated[str, typer.Option("--alg", help="00 or 04")] = "00",
) -> None:
    """Median and p99 of a full purchase through pcscd, with the raw round trip of the same run."""
    from onecard_cli.bench import bench_tap as run

    if alg not in ("00", "04"):
        raise CliError("--alg must be 00 or 04")
    doc = run(Alg(int(alg, 16)), records, stderr)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:28} {value}")


@bench_app.command("clearing")
@guarded
def bench_clearing(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    records: Annotated[int, typer.Option("--records", min=1)] = 1_000_000,
) -> None:
    """Ingest, verify, classify, post and settle N generated records on PostgreSQL, against raw COPY of them."""
    from onecard_cli.bench_clearing import bench_clearing as run

    doc = run(records, progress=stderr)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:28} {value}")


@bench_app.command("api")
@guarded
def bench_api(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    clients: Annotated[int, typer.Option("--clients", min=1)] = 16,
    seconds: Annotated[float, typer.Option("--seconds", min=1.0)] = 10.0,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
) -> None:
    """API loads per second and p50 / p99 under concurrent clients, against the no-op endpoint of the same run."""
    from onecard_cli.bench_api import bench_api as run

    doc = run(stderr, clients=clients, seconds=seconds, workers=workers)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:28} {value}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def worker(ctx: typer.Context) -> None:
    """A Celery worker for clearing (needs ONECARD_REDIS_URL); extra options go to Celery."""
    from clearing.tasks import worker_main

    worker_main(list(ctx.args))


@app.command()
@guarded
def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 1,
) -> None:
    """The API and the web pages."""
    from onecard_cli.serve import serve as run

    run(host, port, workers=workers)


if __name__ == "__main__":
    app()
