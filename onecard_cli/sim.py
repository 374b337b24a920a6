"""``onecard sim card|psam``: serve a simulated card or PSAM in a vpcd slot until stopped (cli.md);
``onecard sim city-day``: a city's day as batch files (issue #8)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import load_key_file
from onecard_cli.errors import CliError, guarded, stderr
from simulators.pcscd import ensure_pcscd
from simulators.vpcd import VpcdSlot

if TYPE_CHECKING:
    from rich.console import Console

sim_app = typer.Typer(help="Serve simulated cards in vpcd reader slots.", no_args_is_help=True)

SlotOpt = Annotated[int, typer.Option("--reader", min=0, max=1, help="vpcd slot: 0 or 1")]
AlgOpt = Annotated[str | None, typer.Option("--alg", help="00 (DES family) or 04 (SM4)")]
FactoryOpt = Annotated[bool, typer.Option("--factory", help="a chip in factory state")]
KeysOpt = Annotated[Path | None, typer.Option("--keys", help="key file whose KT the factory chip holds")]
ImageOpt = Annotated[Path | None, typer.Option("--image", help="keep the card's memory in this file")]


def build_card(kind: CardKind, alg: str | None, factory: bool, keys: Path | None, image: Path | None) -> Card:
    """The card to serve: loaded from ``image`` if it exists, else a factory chip with KT from ``keys``."""
    if alg is not None and alg not in ("00", "04"):
        raise CliError("--alg must be 00 or 04")
    if image is not None and image.exists():
        card = Card.load_image(image)
        if card.kind is not kind:
            raise CliError(f"{image} holds a {card.kind.name.lower()}, not a {kind.name.lower()}")
        return card
    if not factory:
        if image is not None:
            raise CliError(f"{image} does not exist: add --factory --keys FILE to start a new chip there")
        raise CliError("give --factory --keys FILE, or --image PATH")
    if keys is None:
        raise CliError("--factory needs --keys FILE (its KT becomes the chip's transport key)")
    issuer_keys = load_key_file(keys)
    if "KT" not in issuer_keys.keys:
        raise CliError(f"{keys} has no KT")
    chosen = Alg(int(alg, 16)) if alg is not None else issuer_keys.alg
    card = Card.factory(kind, chosen, issuer_keys.keys["KT"], os.urandom(8))
    if image is not None:
        card.save_image(image)
    return card


def serve(
    kind: CardKind, slot_number: int, alg: str | None, factory: bool, keys: Path | None, image: Path | None
) -> None:
    """Serve until SIGINT / SIGTERM, re-inserting the card if the reader drops it."""
    card = build_card(kind, alg, factory, keys, image)
    pcscd = ensure_pcscd()
    slot = VpcdSlot(slot_number)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    stderr(
        f"serving a {'factory ' if card.life_cycle.name == 'FACTORY' else ''}{kind.name.lower()} "
        f"(ATR {card.atr.hex().upper()}) in '{slot.reader_name}'"
        + (f", memory in {image}" if image else "")
        + "; Ctrl-C to stop"
    )
    try:
        slot.run(card, stop, image=str(image) if image else None)
    finally:
        slot.close()
        if image is not None:
            card.save_image(image)
        pcscd.stop()


@sim_app.command("card")
@guarded
def sim_card(
    reader: SlotOpt,
    alg: AlgOpt = None,
    factory: FactoryOpt = False,
    keys: KeysOpt = None,
    image: ImageOpt = None,
) -> None:
    """Serve one simulated user card on vpcd slot N until stopped."""
    serve(CardKind.USER, reader, alg, factory, keys, image)


@sim_app.command("psam")
@guarded
def sim_psam(
    reader: SlotOpt,
    alg: AlgOpt = None,
    factory: FactoryOpt = False,
    keys: KeysOpt = None,
    image: ImageOpt = None,
) -> None:
    """Serve one simulated PSAM on vpcd slot N until stopped."""
    serve(CardKind.PSAM, reader, alg, factory, keys, image)


@sim_app.command("city-day")
@guarded
def sim_city_day(
    records: Annotated[int, typer.Option("--records", min=1, help="records in the day (purchases and loads)")],
    out: Annotated[Path, typer.Option("--out", help="directory for the batch files, registry.json, keys.json")],
    date_text: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD (default: today)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 1,
) -> None:
    """Generate a city day as spec §5 batch files (trips by hour with peaks, lines, card types, transfers, loads)."""
    import time
    from datetime import date

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onecard_cli.bench_cityday import issuer_keys
    from simulators.cityday import CityPlan, generate

    try:
        day = date.fromisoformat(date_text) if date_text else date.today()
    except ValueError as exc:
        raise CliError(f"--date must be YYYY-MM-DD: {date_text}") from exc
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} is not a directory")
    plan = CityPlan(records=records, day=day, seed=seed)
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_stderr_console(), transient=False) as bar:
        task = bar.add_task("generating records", total=records)
        city = generate(plan, out, issuer_keys(seed), lambda produced: bar.update(task, completed=produced))
        bar.update(task, completed=city.records, description="records generated, batches written")
    seconds = time.perf_counter() - started
    typer.echo(
        f"{city.records:,} records ({city.purchases:,} purchases, {city.loads:,} loads), {city.cards:,} cards, "
        f"{len(city.batch_files):,} batch files in {seconds:.1f} s → {out}"
    )
    typer.echo(
        f"registry {city.registry_file.name}, issuer keys {city.key_file.name}, opening {city.opening_file.name}"
    )


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)
