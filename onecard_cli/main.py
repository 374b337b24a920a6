"""The ``onecard`` command (cli.md)."""

from __future__ import annotations

import json
from pathlib import Path
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
    pcsc: Annotated[
        bool,
        typer.Option(
            "--pcsc",
            help="real PC/SC: every card the day issues, loads, taps on a validator or pays with at a kiosk (the "
            "tear too) goes into vpcd reader 'Virtual PCD 00 00' under pcscd (started if none runs; machine-wide "
            "vpcd lock held) and is taken out afterwards; the PSAMs are personalised in 'Virtual PCD 00 01', then "
            "stay in-process (a PSAM swap on almost every tap would double the day). Same reports as without it, "
            "slower: about 0.8 s per card presented, two pcscd presence polls (the default day takes minutes). "
            "Needs the Debian packages pcscd and vsmartcard-vpcd.",
        ),
    ] = False,
) -> None:
    """The main job: a simulated city day on the embedded default (in-process readers unless --pcsc)."""
    from onecard_cli.demo import run_demo

    run_demo(cards=cards, riders=riders, date=date, seed=seed, pcsc=pcsc)


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
    workers: Annotated[str, typer.Option("--workers", help="worker counts to run, comma-separated")] = "1,2",
) -> None:
    """Ingest, verify, classify, post and settle N generated records on PostgreSQL, against raw COPY of them."""
    from onecard_cli.bench_clearing import bench_clearing as run

    try:
        counts = tuple(sorted({int(part) for part in workers.split(",") if part.strip()}))
    except ValueError as exc:
        raise CliError(f"--workers must be numbers separated by commas: {workers}") from exc
    if not counts or min(counts) < 1:
        raise CliError(f"--workers must be numbers separated by commas: {workers}")
    doc = run(records, counts, progress=stderr)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:28} {value}")


@bench_app.command("city-day")
@guarded
def bench_city_day(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    records: Annotated[int, typer.Option("--records", min=1)] = 1_000_000,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    keep: Annotated[Path | None, typer.Option("--keep", help="keep the generated files under this directory")] = None,
    date: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD (default 2025-03-03)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    source: Annotated[
        Path | None,
        typer.Option("--from", help="a day `onecard sim city-day` wrote earlier (its --date must be given too)"),
    ] = None,
) -> None:
    """A generated city day of N records through issuance seeding, the inbox and clearing on Celery workers on
    PostgreSQL: time, records/s, peak memory, against raw COPY of the same rows."""
    from datetime import date as Date

    from onecard_cli.bench_cityday import bench_cityday as run
    from onecard_cli.bench_clearing import DAY

    try:
        day = Date.fromisoformat(date) if date else DAY
    except ValueError as exc:
        raise CliError(f"--date must be YYYY-MM-DD: {date}") from exc
    if source is not None and not (source / "registry.json").exists():
        raise CliError(f"--from {source}: no city day there (run `onecard sim city-day --out {source}` first)")
    doc = run(records, workers=workers, keep=keep, day=day, seed=seed, progress=stderr, source=source)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:28} {value}")


@bench_app.command("api")
@guarded
def bench_api(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    clients: Annotated[int, typer.Option("--clients", min=1)] = 8,
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
