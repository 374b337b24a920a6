"""``onecard keys import FILE`` and ``onecard keys list`` (cli.md; keys of card-protocol.md §1, §2.2).

The keystore is the one ``ONECARD_KEYSTORE`` names (default: the encrypted file ``./onecard-keys.json``, opened
with ``ONECARD_KEYSTORE_PASSPHRASE`` or ``ONECARD_KEYSTORE_KEY``; ``pkcs11:<module>:<token label>`` with
``ONECARD_HSM_PIN`` for an HSM). Only names and KCVs are ever printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from backoffice.errors import OnecardError
from cardos.keyfile import load_key_file
from issuance.keystore import BaseKeystore, open_keystore
from onecard_cli.config import Settings
from onecard_cli.errors import CliError, guarded, stderr

keys_app = typer.Typer(help="Issuer master keys in the keystore.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]


@contextmanager
def _keystore() -> Iterator[BaseKeystore]:
    """The configured keystore; its errors become one-line CLI errors."""
    try:
        with open_keystore(Settings.load().keystore) as store:
            yield store
    except OnecardError as exc:
        raise CliError(exc.message) from None


@keys_app.command("import")
@guarded
def import_command(
    file: Annotated[Path, typer.Argument(help="a key file as a key ceremony hands it over (cli.md)")],
    version: Annotated[int, typer.Option("--key-version", min=0, max=255, help="key version to store them under")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Import issuer master keys from a key file; print each key's name and KCV (cli.md, spec §1).

    A key whose KCV does not match refuses the whole file: nothing is imported.
    """
    keys = load_key_file(file)
    with _keystore() as store:
        kcvs = store.import_keys(keys, version)
    if as_json:
        doc = {
            "alg": f"{keys.alg:02X}",
            "version": version,
            "issuer_id": keys.issuer_id.hex().upper(),
            "keys": [{"name": name, "kcv": kcv} for name, kcv in kcvs.items()],
        }
        typer.echo(json.dumps(doc))
        return
    stderr(f"imported {len(kcvs)} keys, alg {keys.alg:02X}, version {version:02X}")
    for name, kcv in kcvs.items():
        typer.echo(f"{name:6} {kcv}")


@keys_app.command("list")
@guarded
def list_command(as_json: JsonOpt = False) -> None:
    """List the stored keys: alg, version, name and KCV (spec §1), never key bytes."""
    with _keystore() as store:
        infos = store.kcvs()
    if as_json:
        typer.echo(json.dumps({"keys": [info.to_json() for info in infos]}))
        return
    for info in infos:
        typer.echo(f"{info.alg:02X} {info.version:02X} {info.name:6} {info.kcv}")
