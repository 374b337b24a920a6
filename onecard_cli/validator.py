"""``onecard validator run|status``: the bus validator on PC/SC readers (issue #4).

``validator_app`` is meant to be added to ``onecard`` as ``validator``; until then ``python -m
onecard_cli.validator run --config FILE`` runs it directly (the bus-day integration test does).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from onecard_cli.errors import guarded
from terminal.store import DeviceStore
from terminal.validator import ValidatorSettings, run_validator

validator_app = typer.Typer(help="The bus validator.", no_args_is_help=True, add_completion=False)


@validator_app.command("run")
@guarded
def validator_run(
    config: Annotated[Path, typer.Option("--config", help="settings file (JSON, see ValidatorSettings.from_json)")],
) -> None:
    """Run the validator until SIGTERM or Ctrl-C; one JSON line per tap on stdout."""
    doc = json.loads(config.read_text(encoding="utf-8"))
    settings = ValidatorSettings.from_json(doc, base=config.parent)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    run_validator(settings, stop=stop, emit=emit)


@validator_app.command("status")
@guarded
def validator_status(
    db: Annotated[Path, typer.Option("--db", help="the validator's store")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Records, intents and batches waiting in a validator's store, and its reported events."""
    if not db.exists():
        raise FileNotFoundError(f"no store at {db}")
    with DeviceStore(db) as store:
        doc = {
            "pending": store.pending_count(),
            "unbatched": store.unbatched_count(),
            "intents": len(store.intents()),
            "batches": {state: len(store.batches(state)) for state in ("pending", "acked", "refused", "conflict")},
            "hotlist_version": store.hotlist_version(),
            "hotlist_size": store.hotlist_size(),
            "events": {kind: len(store.events(kind)) for kind in sorted({e.kind for e in store.events()})},
        }
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for key, value in doc.items():
            typer.echo(f"{key:16} {value}")


if __name__ == "__main__":
    validator_app()
