"""``onecard sim card|psam``: serve a simulated card or PSAM in a vpcd slot until stopped (cli.md)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import load_key_file
from onecard_cli.errors import CliError, guarded, stderr
from simulators.pcscd import ensure_pcscd
from simulators.vpcd import VpcdSlot

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
