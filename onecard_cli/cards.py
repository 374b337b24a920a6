"""``onecard card read``, ``onecard card load`` and ``onecard terminal purchase`` (cli.md)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cardos.keyfile import IssuerKeys, load_key_file
from cardos.layout import CardType, LogRecord, PublicData, TransitRecord
from onecard_cli.config import Settings
from onecard_cli.errors import CliError, guarded
from terminal.cards import PsamCard
from terminal.channel import PcscChannel
from terminal.loadhost import KeyFileLoadHost
from terminal.masking import mask_id, mask_name, mask_phone
from terminal.purse import CardSnapshot, PurseTerminal, RecordMeta, bcd_now

card_app = typer.Typer(help="Read and load a card in a PC/SC reader.", no_args_is_help=True)
terminal_app = typer.Typer(help="Terminal transactions.", no_args_is_help=True)

DEFAULT_COUNTER_TERM_ID = "031000009001"
ReaderOpt = Annotated[str, typer.Option("--reader", help="PC/SC reader name, e.g. 'Virtual PCD 00 00'")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]


def now() -> datetime:
    """The local time with its offset."""
    return datetime.now().astimezone()


def _log_json(record: LogRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "amount": record.amount,
        "type": f"{record.txn_type:02X}",
        "term_id": record.term_id.hex(),
        "date": record.date.hex(),
        "time": record.time.hex(),
    }


def _transit_json(transit: TransitRecord | None) -> dict[str, Any] | None:
    if transit is None:
        return None
    return {
        "trip_state": transit.trip_state,
        "line_id": transit.line_id,
        "entry_station": transit.entry_station,
        "entry_term_id": transit.entry_term_id.hex(),
        "entry_date": transit.entry_date.hex(),
        "entry_time": transit.entry_time.hex(),
        "entry_amount": transit.entry_amount,
        "boarding_date": transit.boarding_date.hex(),
        "boarding_time": transit.boarding_time.hex(),
        "boarding_line": transit.boarding_line,
        "transfers": transit.transfers,
        "cap_date": transit.cap_date.hex(),
        "cap_paid": transit.cap_paid,
    }


def _public_json(public: PublicData) -> dict[str, Any]:
    try:
        type_name = CardType(public.card_type).name.lower()
    except ValueError:
        type_name = "unknown"
    return {
        "issuer_id": public.issuer_id.hex().upper(),
        "card_no": public.card_no,
        "city_code": public.city_code,
        "app_type": f"{public.app_type:02X}",
        "app_version": f"{public.app_version:02X}",
        "start_date": public.start_date,
        "expiry_date": public.expiry_date,
        "card_type": f"{public.card_type:02X}",
        "card_type_name": type_name,
        "registered": public.registered,
    }


def snapshot_json(snap: CardSnapshot) -> dict[str, Any]:
    """``card read --json``: personal data masked."""
    return {
        "atr": snap.atr.hex().upper(),
        "public": _public_json(snap.public),
        "holder": {
            "name": mask_name(snap.holder.name),
            "id_type": f"{snap.holder.id_type:02X}",
            "id_number": mask_id(snap.holder.id_number),
            "phone": mask_phone(snap.holder.phone),
        },
        "balance": snap.balance,
        "blocked": snap.blocked,
        "counters": {"online_seq": snap.online_seq, "offline_seq": snap.offline_seq},
        "log": [_log_json(r) for r in snap.log],
        "transit": _transit_json(snap.transit),
    }


def _print_snapshot(doc: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"Card {doc['public']['card_no']}", show_header=False)
    balance = doc["balance"]
    table.add_row("balance", "blocked" if balance is None else f"{balance / 100:.2f} yuan ({balance} fen)")
    table.add_row(
        "type",
        f"{doc['public']['card_type_name']}, {'registered' if doc['public']['registered'] else 'anonymous'}",
    )
    table.add_row("valid", f"{doc['public']['start_date']} – {doc['public']['expiry_date']}")
    table.add_row("holder", f"{doc['holder']['name']} {doc['holder']['id_number']} {doc['holder']['phone']}")
    table.add_row("counters", f"online {doc['counters']['online_seq']}, offline {doc['counters']['offline_seq']}")
    console.print(table)
    log_table = Table(title="Transaction log (newest first)")
    for column in ("seq", "type", "amount", "term_id", "date", "time"):
        log_table.add_column(column)
    for row in doc["log"]:
        log_table.add_row(str(row["seq"]), row["type"], str(row["amount"]), row["term_id"], row["date"], row["time"])
    console.print(log_table)


def _keys(path: Path | None) -> IssuerKeys:
    chosen = str(path) if path is not None else Settings.load().key_file
    if not chosen:
        raise CliError("a load needs the issuer keys: give --keys FILE (or set ONECARD_KEY_FILE)")
    return load_key_file(chosen)


@card_app.command("read")
@guarded
def card_read(reader: ReaderOpt, as_json: JsonOpt = False) -> None:
    """Public data, holder data (masked), balance, counters, log and transit record."""
    with PcscChannel(reader) as channel:
        snap = PurseTerminal(clock=now).read(channel)
    doc = {"reader": reader, **snapshot_json(snap)}
    if as_json:
        typer.echo(json.dumps(doc, ensure_ascii=False))
    else:
        _print_snapshot(doc)


@card_app.command("load")
@guarded
def card_load(
    reader: ReaderOpt,
    amount: Annotated[int, typer.Option("--amount", min=0, help="fen")],
    as_json: JsonOpt = False,
    keys: Annotated[Path | None, typer.Option("--keys", help="issuer key file (cli.md format)")] = None,
    term_id: Annotated[str, typer.Option("--term-id", help="the counter's term_id")] = DEFAULT_COUNTER_TERM_ID,
    request_id: Annotated[str | None, typer.Option("--request-id", help="idempotency id")] = None,
) -> None:
    """An online load: the host verifies MAC1, answers MAC2 and checks the TAC."""
    if len(term_id) != 12 or not term_id.isdigit():
        raise CliError("--term-id must be 12 digits")
    host = KeyFileLoadHost(_keys(keys), now)
    with PcscChannel(reader) as channel:
        result = PurseTerminal(clock=now).load(
            channel, amount, host, term_id=bytes.fromhex(term_id), request_id=request_id or str(uuid.uuid4())
        )
    doc = {**result.record.to_json(), "balance_after": result.balance_after}
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"loaded {amount} fen: balance {result.balance_after} fen, TAC {result.record.tac}")


@terminal_app.command("purchase")
@guarded
def terminal_purchase(
    reader: ReaderOpt,
    psam_reader: Annotated[str, typer.Option("--psam-reader", help="the PSAM's reader")],
    amount: Annotated[int, typer.Option("--amount", min=0, help="fen")],
    capp: Annotated[bool, typer.Option("--capp", help="a CAPP purchase that rewrites the transit record")] = False,
    as_json: JsonOpt = False,
    line: Annotated[int, typer.Option("--line", min=0, max=0xFFFF, help="line id for --capp")] = 0,
    device_seq: Annotated[int, typer.Option("--device-seq", min=1)] = 1,
) -> None:
    """One purchase with the PSAM; prints the batch record (spec §5 columns)."""

    def boarding(public: PublicData, old: bytes) -> bytes:
        date4, time3 = bcd_now(now())
        transit = TransitRecord.decode(old)
        return TransitRecord(
            **{
                **{f: getattr(transit, f) for f in TransitRecord.__dataclass_fields__},
                "boarding_date": date4,
                "boarding_time": time3,
                "boarding_line": line,
            }
        ).encode()

    with PcscChannel(psam_reader) as psam_channel, PcscChannel(reader) as channel:
        psam = PsamCard(psam_channel)
        psam.open()
        result = PurseTerminal(clock=now, psam=psam).purchase(
            channel,
            amount,
            capp_record=boarding if capp else None,
            meta=RecordMeta(line_id=str(line) if capp else ""),
            device_seq=device_seq,
        )
    doc = {**result.record.to_json(), "mac2_ok": result.mac2_ok, "balance_after": result.balance_after}
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"paid {amount} fen: balance {result.balance_after} fen, TAC {result.record.tac}")
