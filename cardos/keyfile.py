"""Issuer key files as a key ceremony hands them over (cli.md, "Key file").

Pure parsing and checking: every KCV given must match, or nothing is accepted. Key bytes never appear in
messages or reprs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cardos import crypto

MASTER_KEY_NAMES = ("KT", "MDAMK", "MPK", "MLK", "MTK", "MPUK", "MRPK")
CARD_KEY_MASTERS = {0x01: "MDAMK", 0x02: "MPK", 0x03: "MLK", 0x04: "MTK", 0x05: "MPUK", 0x06: "MRPK"}


class KeyFileError(ValueError):
    """A key file that cannot be accepted (malformed, or a KCV that does not match)."""


@dataclass(frozen=True)
class IssuerKeys:
    """An issuer's master keys for one algorithm and version."""

    issuer_id: bytes
    alg: crypto.Alg
    keys: Mapping[str, bytes] = field(repr=False)
    version: int = 1

    def __repr__(self) -> str:
        names = sorted(self.keys)
        return f"IssuerKeys(issuer_id={self.issuer_id.hex().upper()}, alg={self.alg:02X}, names={names})"

    def kcvs(self) -> dict[str, str]:
        """KCV of every key, as upper-case hex."""
        return {name: crypto.kcv(self.alg, key).hex().upper() for name, key in self.keys.items()}

    def card_key(self, usage: int, card_no: bytes) -> bytes:
        """A card key diversified from its master key with card_no (spec §1, §2.2)."""
        return crypto.diversify(self.alg, self.keys[CARD_KEY_MASTERS[usage]], card_no)

    def to_json(self) -> dict[str, object]:
        """The key file document (with KCVs)."""
        return {
            "format": "onecard-keys/1",
            "issuer_id": self.issuer_id.hex().upper(),
            "alg": f"{self.alg:02X}",
            "keys": {name: key.hex().upper() for name, key in self.keys.items()},
            "kcv": self.kcvs(),
        }

    @classmethod
    def generate(cls, issuer_id: bytes, alg: crypto.Alg) -> IssuerKeys:
        """Fresh random master keys (for demos and tests)."""
        return cls(issuer_id, alg, {name: os.urandom(16) for name in MASTER_KEY_NAMES})


def parse_key_file(doc: Mapping[str, object]) -> IssuerKeys:
    """Check and parse a key-file document; raise :class:`KeyFileError` naming the first problem."""
    if doc.get("format") != "onecard-keys/1":
        raise KeyFileError("not an onecard-keys/1 file")
    try:
        issuer_id = bytes.fromhex(str(doc["issuer_id"]))
        alg = crypto.Alg(int(str(doc["alg"]), 16))
        raw_keys = doc["keys"]
        raw_kcv = doc.get("kcv", {})
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"malformed key file: {exc.__class__.__name__}") from None
    if len(issuer_id) != 8:
        raise KeyFileError("issuer_id must be 8 bytes")
    if not isinstance(raw_keys, dict) or not isinstance(raw_kcv, dict):
        raise KeyFileError("keys and kcv must be objects")
    keys: dict[str, bytes] = {}
    for name, value in raw_keys.items():
        if name not in MASTER_KEY_NAMES:
            raise KeyFileError(f"unknown key name {name}")
        try:
            key = bytes.fromhex(str(value))
        except ValueError:
            raise KeyFileError(f"key {name} is not hex") from None
        if len(key) != 16:
            raise KeyFileError(f"key {name} must be 16 bytes")
        keys[name] = key
    for name, expected in raw_kcv.items():
        if name not in keys:
            raise KeyFileError(f"KCV given for a missing key {name}")
        actual = crypto.kcv(alg, keys[name]).hex().upper()
        if actual != str(expected).upper():
            raise KeyFileError(f"KCV of {name} does not match")
    return IssuerKeys(issuer_id, alg, keys)


def load_key_file(path: str | os.PathLike[str]) -> IssuerKeys:
    """Read and check a key file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.__class__.__name__}") from None
    if not isinstance(doc, dict):
        raise KeyFileError("a key file is a JSON object")
    return parse_key_file(doc)
