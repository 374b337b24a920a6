"""The card's file system as cells of :mod:`cardos.memory` (spec §2.1, §2.5).

Cell names: ``mf`` (kind, life cycle, chip serial), ``mf.authfail``, ``kt``, ``dfs`` (FIDs of the DFs),
``df.<FID>`` (status, AID), ``efs.<DF>`` (FIDs of a DF's EFs), ``ef.<DF>.<FID>`` (the CREATE EF data),
``ef.<DF>.<FID>.data``, ``key.<DF>.<usage><index>``, ``pin.<DF>``, ``purse.<DF>``, ``proof.<DF>.<family>``,
``termseq.<DF>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from cardos.layout import MF_FID, FileKind
from cardos.memory import Transaction


class CardKind(IntEnum):
    """What the chip is personalised into."""

    USER = 0x01
    PSAM = 0x02


class LifeCycle(IntEnum):
    """Card life cycle (spec §2.3)."""

    FACTORY = 0x00
    ISSUED = 0x01
    CARD_BLOCKED = 0x02


class AppStatus(IntEnum):
    """Application status (spec §2.3)."""

    ACTIVE = 0x00
    BLOCKED = 0x01
    BLOCKED_PERMANENTLY = 0x02


@dataclass(frozen=True, slots=True)
class DF:
    """A dedicated file: the MF or an application (ADF)."""

    fid: int
    aid: bytes
    status: AppStatus = AppStatus.ACTIVE

    @property
    def is_mf(self) -> bool:
        """True for the MF."""
        return self.fid == MF_FID


@dataclass(frozen=True, slots=True)
class EF:
    """An elementary file as CREATE EF described it."""

    df: int
    fid: int
    sfi: int
    kind: FileKind
    size: int
    read: int
    write: int

    @property
    def record_length(self) -> int:
        """Record length of a record file."""
        return self.size >> 8

    @property
    def record_count(self) -> int:
        """Number of records of a record file."""
        return self.size & 0xFF

    @property
    def byte_size(self) -> int:
        """Size in bytes of a transparent file."""
        return self.size

    def encode(self) -> bytes:
        """The 8 bytes of CREATE EF data."""
        return (
            self.fid.to_bytes(2, "big")
            + bytes((self.sfi, self.kind))
            + self.size.to_bytes(2, "big")
            + bytes((self.read, self.write))
        )

    @classmethod
    def decode(cls, df: int, raw: bytes) -> EF:
        """Parse CREATE EF data stored for a DF."""
        return cls(
            df=df,
            fid=int.from_bytes(raw[0:2], "big"),
            sfi=raw[2],
            kind=FileKind(raw[3]),
            size=int.from_bytes(raw[4:6], "big"),
            read=raw[6],
            write=raw[7],
        )


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A key as PUT KEY stored it."""

    usage: int
    index: int
    version: int
    alg: int
    tries: int
    value: bytes

    def __repr__(self) -> str:  # never show key bytes
        return f"KeyEntry(usage={self.usage:02X}, index={self.index:02X}, version={self.version:02X})"


@dataclass(frozen=True, slots=True)
class PinEntry:
    """A DF's PIN and its try counter."""

    max_tries: int
    tries_left: int
    value: bytes

    def __repr__(self) -> str:
        return f"PinEntry(tries_left={self.tries_left}/{self.max_tries})"


@dataclass(frozen=True, slots=True)
class Purse:
    """The purse of an application (spec §2.1)."""

    balance: int
    online_seq: int
    offline_seq: int
    limit: int

    def encode(self) -> bytes:
        """12 bytes: balance, online_seq, offline_seq, limit."""
        return (
            self.balance.to_bytes(4, "big")
            + self.online_seq.to_bytes(2, "big")
            + self.offline_seq.to_bytes(2, "big")
            + self.limit.to_bytes(4, "big")
        )

    @classmethod
    def decode(cls, raw: bytes) -> Purse:
        """Parse the purse cell."""
        return cls(
            balance=int.from_bytes(raw[0:4], "big"),
            online_seq=int.from_bytes(raw[4:6], "big"),
            offline_seq=int.from_bytes(raw[6:8], "big"),
            limit=int.from_bytes(raw[8:12], "big"),
        )


@dataclass(frozen=True, slots=True)
class Proof:
    """The last completed transaction of one counter, for GET TRANSACTION PROOF (spec §2.4)."""

    seq: int
    txn_type: int
    mac2: bytes
    tac: bytes

    def encode(self) -> bytes:
        """11 bytes: seq, type, MAC2, TAC."""
        return self.seq.to_bytes(2, "big") + bytes((self.txn_type,)) + self.mac2 + self.tac

    @classmethod
    def decode(cls, raw: bytes) -> Proof:
        """Parse a proof cell."""
        return cls(int.from_bytes(raw[0:2], "big"), raw[2], raw[3:7], raw[7:11])


def _h(fid: int) -> str:
    return f"{fid:04X}"


class FileSystem:
    """Typed access to the card's cells through one transaction."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    # --- card ----------------------------------------------------------------------------------------

    def card_header(self) -> tuple[CardKind, LifeCycle, bytes]:
        """Kind, life cycle and chip serial."""
        raw = self.tx.get("mf")
        if raw is None:
            raise RuntimeError("card memory has no MF")
        return CardKind(raw[0]), LifeCycle(raw[1]), raw[2:10]

    def set_life_cycle(self, state: LifeCycle) -> None:
        """Move the card's life cycle."""
        kind, _, serial = self.card_header()
        self.tx.put("mf", bytes((kind, state)) + serial)

    def auth_failures(self) -> int:
        """Consecutive failed EXTERNAL AUTHENTICATE attempts."""
        raw = self.tx.get("mf.authfail")
        return raw[0] if raw else 0

    def set_auth_failures(self, count: int) -> None:
        """Store the failure count."""
        self.tx.put("mf.authfail", bytes((min(count, 255),)))

    def transport_key(self) -> tuple[int, bytes] | None:
        """``(alg, KT)`` while the card has one."""
        raw = self.tx.get("kt")
        return None if raw is None else (raw[0], raw[1:])

    # --- DFs -----------------------------------------------------------------------------------------

    def df_fids(self) -> list[int]:
        """FIDs of the applications, in creation order."""
        raw = self.tx.get("dfs") or b""
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]

    def df(self, fid: int) -> DF | None:
        """The MF or an application by FID."""
        if fid == MF_FID:
            return DF(MF_FID, bytes.fromhex("3F00"))
        raw = self.tx.get(f"df.{_h(fid)}")
        return None if raw is None else DF(fid, raw[1:], AppStatus(raw[0]))

    def dfs(self) -> list[DF]:
        """Every application."""
        return [df for fid in self.df_fids() if (df := self.df(fid)) is not None]

    def create_df(self, fid: int, aid: bytes) -> None:
        """Add an application under the MF."""
        self.tx.put(f"df.{_h(fid)}", bytes((AppStatus.ACTIVE,)) + aid)
        self.tx.put("dfs", (self.tx.get("dfs") or b"") + fid.to_bytes(2, "big"))

    def set_df_status(self, fid: int, status: AppStatus) -> None:
        """Block or unblock an application."""
        df = self.df(fid)
        if df is None or df.is_mf:
            raise RuntimeError("no such application")
        self.tx.put(f"df.{_h(fid)}", bytes((status,)) + df.aid)

    # --- EFs -----------------------------------------------------------------------------------------

    def ef_fids(self, df: int) -> list[int]:
        """FIDs of a DF's EFs."""
        raw = self.tx.get(f"efs.{_h(df)}") or b""
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]

    def ef(self, df: int, fid: int) -> EF | None:
        """An EF of a DF by FID."""
        raw = self.tx.get(f"ef.{_h(df)}.{_h(fid)}")
        return None if raw is None else EF.decode(df, raw)

    def efs(self, df: int) -> list[EF]:
        """Every EF of a DF."""
        return [ef for fid in self.ef_fids(df) if (ef := self.ef(df, fid)) is not None]

    def ef_by_sfi(self, df: int, sfi: int) -> EF | None:
        """An EF of a DF by SFI."""
        for ef in self.efs(df):
            if ef.sfi == sfi:
                return ef
        return None

    def create_ef(self, ef: EF) -> None:
        """Add an EF with its initial contents (spec §2.5)."""
        self.tx.put(f"ef.{_h(ef.df)}.{_h(ef.fid)}", ef.encode())
        self.tx.put(f"efs.{_h(ef.df)}", (self.tx.get(f"efs.{_h(ef.df)}") or b"") + ef.fid.to_bytes(2, "big"))
        if ef.kind is FileKind.TRANSPARENT:
            initial = b"\x00" * ef.byte_size
        elif ef.kind is FileKind.LINEAR:
            initial = b"\x00" * (ef.record_length * ef.record_count)
        else:
            initial = b"\x00"
        self.tx.put(f"ef.{_h(ef.df)}.{_h(ef.fid)}.data", initial)

    def contents(self, ef: EF) -> bytes:
        """The raw data cell of an EF."""
        return self.tx.get(f"ef.{_h(ef.df)}.{_h(ef.fid)}.data") or b""

    def set_contents(self, ef: EF, data: bytes) -> None:
        """Replace the raw data cell of an EF."""
        self.tx.put(f"ef.{_h(ef.df)}.{_h(ef.fid)}.data", data)

    def records(self, ef: EF) -> list[bytes]:
        """Records of a record file; for a cyclic file, newest first and only those written."""
        raw = self.contents(ef)
        size = ef.record_length
        if ef.kind is FileKind.CYCLIC:
            count, raw = raw[0], raw[1:]
        else:
            count = ef.record_count
        return [raw[i * size : (i + 1) * size] for i in range(count)]

    def write_record(self, ef: EF, number: int, data: bytes) -> None:
        """Replace record ``number`` (1-based) of a record file."""
        records = self.records(ef)
        records[number - 1] = data
        self._store_records(ef, records)

    def append_record(self, ef: EF, data: bytes) -> None:
        """Append to a cyclic file: the new record is record 1, the oldest falls off."""
        records = [data, *self.records(ef)][: ef.record_count]
        self._store_records(ef, records)

    def _store_records(self, ef: EF, records: list[bytes]) -> None:
        body = b"".join(records)
        if ef.kind is FileKind.CYCLIC:
            body = bytes((len(records),)) + body
        self.set_contents(ef, body)

    # --- keys, PINs, purse, proofs, term_seq ----------------------------------------------------------

    def key(self, df: int, usage: int, index: int) -> KeyEntry | None:
        """A key of a DF."""
        raw = self.tx.get(f"key.{_h(df)}.{usage:02X}{index:02X}")
        if raw is None:
            return None
        return KeyEntry(usage, index, raw[0], raw[1], raw[2], raw[3:])

    def put_key(self, df: int, entry: KeyEntry) -> None:
        """Store (or replace) a key."""
        self.tx.put(
            f"key.{_h(df)}.{entry.usage:02X}{entry.index:02X}",
            bytes((entry.version, entry.alg, entry.tries)) + entry.value,
        )

    def pin(self, df: int) -> PinEntry | None:
        """A DF's PIN."""
        raw = self.tx.get(f"pin.{_h(df)}")
        return None if raw is None else PinEntry(raw[0], raw[1], raw[2:])

    def put_pin(self, df: int, entry: PinEntry) -> None:
        """Store a DF's PIN and try counter."""
        self.tx.put(f"pin.{_h(df)}", bytes((entry.max_tries, entry.tries_left)) + entry.value)

    def purse(self, df: int) -> Purse | None:
        """A DF's purse."""
        raw = self.tx.get(f"purse.{_h(df)}")
        return None if raw is None else Purse.decode(raw)

    def put_purse(self, df: int, purse: Purse) -> None:
        """Store a DF's purse."""
        self.tx.put(f"purse.{_h(df)}", purse.encode())

    def proof(self, df: int, family: str) -> Proof | None:
        """The proof of the last transaction of a counter family (``load`` or ``purchase``)."""
        raw = self.tx.get(f"proof.{_h(df)}.{family}")
        return None if raw is None else Proof.decode(raw)

    def put_proof(self, df: int, family: str, proof: Proof) -> None:
        """Store a proof."""
        self.tx.put(f"proof.{_h(df)}.{family}", proof.encode())

    def term_seq(self, df: int) -> int:
        """The PSAM's term_seq (0 at issue)."""
        raw = self.tx.get(f"termseq.{_h(df)}")
        return int.from_bytes(raw, "big") if raw else 0

    def put_term_seq(self, df: int, value: int) -> None:
        """Store the PSAM's term_seq."""
        self.tx.put(f"termseq.{_h(df)}", value.to_bytes(4, "big"))
