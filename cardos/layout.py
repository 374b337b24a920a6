"""Byte layouts and identifiers of the card's files and records (spec §0, §2.1, §3).

Pure codecs shared by the card OS, terminals, issuance and clearing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

MF_FID = 0x3F00
MF_NAME = bytes.fromhex("3F00")
PURSE_ADF_FID = 0x1001
PURSE_AID = bytes.fromhex("A000000632010105")
SOCIAL_ADF_FID = 0x1002
SOCIAL_AID = bytes.fromhex("F04F4E4543415244535343")
PSAM_ADF_FID = 0x1001
PSAM_AID = bytes.fromhex("F04F4E45434152445053414D")

SFI_PUBLIC = 0x15
SFI_HOLDER = 0x16
SFI_CAPP = 0x17
SFI_LOG = 0x18
SFI_SOCIAL = 0x05
SFI_TERM_ID = 0x16  # in the PSAM's ADF

PUBLIC_LEN = 30
HOLDER_LEN = 56
CAPP_RECORD_LEN = 48
CAPP_RECORD_COUNT = 4
LOG_RECORD_LEN = 23
LOG_RECORD_COUNT = 10
SOCIAL_LEN = 64
TERM_ID_LEN = 6

TXN_LOAD = 0x02
TXN_PURCHASE = 0x06
TXN_CAPP = 0x09


class KeyUsage(IntEnum):
    """Key usages (spec §2.2, §3)."""

    DAMK = 0x01
    DPK = 0x02
    DLK = 0x03
    DTK = 0x04
    DPUK = 0x05
    DRPK = 0x06
    KT = 0x10
    MPK = 0x21


class FileKind(IntEnum):
    """EF structures for CREATE EF (spec §2.5)."""

    TRANSPARENT = 0x01
    LINEAR = 0x02
    CYCLIC = 0x03


class Access(IntEnum):
    """Read / write access conditions (spec §2.5)."""

    FREE = 0x00
    PIN = 0x01
    LINE_MAC = 0x02
    NEVER = 0xFF


class CardType(IntEnum):
    """EF 0015 card type (spec §2.1)."""

    ADULT = 0x01
    STUDENT = 0x02
    SENIOR = 0x03
    DISABLED = 0x04
    STAFF = 0x05


def bcd(digits: str) -> bytes:
    """Pack decimal digits (even count) as BCD."""
    if len(digits) % 2 or not digits.isdigit():
        raise ValueError(f"not an even count of decimal digits: {digits!r}")
    return bytes.fromhex(digits)


def unbcd(raw: bytes) -> str:
    """Unpack BCD into decimal digits; raise ValueError for a non-decimal nibble."""
    text = raw.hex()
    if not text.isdigit():
        raise ValueError(f"not BCD: {raw.hex().upper()}")
    return text


def encode_pin(pin: str) -> bytes:
    """A PIN of 4-12 digits as 2-6 bytes BCD, an odd count ending in one ``F`` nibble (spec §2.2)."""
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise ValueError("a PIN is 4 to 12 digits")
    return bytes.fromhex(pin + ("F" if len(pin) % 2 else ""))


def pin_is_well_formed(raw: bytes) -> bool:
    """True for 2-6 bytes of BCD digits where only the last nibble may be ``F`` (spec §2.2)."""
    if not 2 <= len(raw) <= 6:
        return False
    text = raw.hex().upper()
    if text.endswith("F"):
        text = text[:-1]
        if len(text) < 4:
            return False
    return text.isdigit()


@dataclass(frozen=True, slots=True)
class PublicData:
    """EF 0015, public application data (30 bytes, spec §2.1)."""

    issuer_id: bytes
    card_no: str
    start_date: str
    expiry_date: str
    card_type: int
    registered: bool
    app_type: int = 0x02
    app_version: int = 0x01

    def encode(self) -> bytes:
        """The 30 bytes of EF 0015."""
        if len(self.issuer_id) != 8:
            raise ValueError("issuer_id is 8 bytes")
        return (
            self.issuer_id
            + bytes((self.app_type, self.app_version))
            + bcd(self.card_no[:4])
            + bcd(self.card_no)
            + bcd(self.start_date)
            + bcd(self.expiry_date)
            + bytes((self.card_type, 1 if self.registered else 0))
        )

    @classmethod
    def decode(cls, raw: bytes) -> PublicData:
        """Parse EF 0015; raise ValueError if malformed."""
        if len(raw) != PUBLIC_LEN:
            raise ValueError("EF 0015 is 30 bytes")
        return cls(
            issuer_id=raw[0:8],
            app_type=raw[8],
            app_version=raw[9],
            card_no=unbcd(raw[12:20]),
            start_date=unbcd(raw[20:24]),
            expiry_date=unbcd(raw[24:28]),
            card_type=raw[28],
            registered=raw[29] == 1,
        )

    @property
    def city_code(self) -> str:
        """The first four digits of card_no."""
        return self.card_no[:4]


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("utf-8", errors="replace")


def _field(text: str, size: int, encoding: str = "utf-8") -> bytes:
    raw = text.encode(encoding)
    if len(raw) > size:
        raise ValueError(f"{text!r} is longer than {size} bytes")
    return raw.ljust(size, b"\x00")


@dataclass(frozen=True, slots=True)
class HolderData:
    """EF 0016, cardholder data (56 bytes, spec §2.1)."""

    name: str
    id_number: str
    phone: str
    id_type: int = 0x01

    def encode(self) -> bytes:
        """The 56 bytes of EF 0016."""
        return (
            _field(self.name, 20)
            + bytes((self.id_type,))
            + _field(self.id_number, 18, "ascii")
            + _field(self.phone, 11, "ascii")
            + b"\x00" * 6
        )

    @classmethod
    def decode(cls, raw: bytes) -> HolderData:
        """Parse EF 0016."""
        if len(raw) != HOLDER_LEN:
            raise ValueError("EF 0016 is 56 bytes")
        return cls(
            name=_text(raw[0:20]), id_type=raw[20], id_number=_text(raw[21:39]), phone=_text(raw[39:50])
        )


@dataclass(frozen=True, slots=True)
class SocialSecurityData:
    """EF 0005 of ADF 1002 (64 bytes, spec §2.1)."""

    ss_number: str
    name: str
    insurance_flags: int
    agency: str
    issue_date: str

    def encode(self) -> bytes:
        """The 64 bytes of EF 0005."""
        return (
            _field(self.ss_number, 18, "ascii")
            + _field(self.name, 20)
            + bytes((self.insurance_flags,))
            + _field(self.agency, 6, "ascii")
            + bcd(self.issue_date)
            + b"\x00" * 15
        )

    @classmethod
    def decode(cls, raw: bytes) -> SocialSecurityData:
        """Parse EF 0005."""
        if len(raw) != SOCIAL_LEN:
            raise ValueError("EF 0005 is 64 bytes")
        return cls(
            ss_number=_text(raw[0:18]),
            name=_text(raw[18:38]),
            insurance_flags=raw[38],
            agency=_text(raw[39:45]),
            issue_date=unbcd(raw[45:49]),
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """EF 0018 transaction log record (23 bytes, spec §2.1)."""

    seq: int
    amount: int
    txn_type: int
    term_id: bytes
    date: bytes
    time: bytes
    overdraft: int = 0

    def encode(self) -> bytes:
        """The 23 bytes of a log record."""
        return (
            self.seq.to_bytes(2, "big")
            + self.overdraft.to_bytes(3, "big")
            + self.amount.to_bytes(4, "big")
            + bytes((self.txn_type,))
            + self.term_id
            + self.date
            + self.time
        )

    @classmethod
    def decode(cls, raw: bytes) -> LogRecord:
        """Parse a log record."""
        if len(raw) != LOG_RECORD_LEN:
            raise ValueError("a log record is 23 bytes")
        return cls(
            seq=int.from_bytes(raw[0:2], "big"),
            overdraft=int.from_bytes(raw[2:5], "big"),
            amount=int.from_bytes(raw[5:9], "big"),
            txn_type=raw[9],
            term_id=raw[10:16],
            date=raw[16:20],
            time=raw[20:23],
        )


@dataclass(frozen=True, slots=True)
class TransitRecord:
    """EF 0017 record 1, the transit record (48 bytes, spec §2.1). Dates/times are BCD bytes."""

    trip_state: int = 0
    line_id: int = 0
    entry_station: int = 0
    entry_term_id: bytes = b"\x00" * 6
    entry_date: bytes = b"\x00" * 4
    entry_time: bytes = b"\x00" * 3
    entry_amount: int = 0
    boarding_date: bytes = b"\x00" * 4
    boarding_time: bytes = b"\x00" * 3
    boarding_line: int = 0
    transfers: int = 0
    cap_date: bytes = b"\x00" * 4
    cap_paid: int = 0

    TRIP_NONE = 0x00
    TRIP_IN = 0x01
    TRIP_OUT = 0x02

    def encode(self) -> bytes:
        """The 48 bytes of the transit record."""
        return (
            bytes((self.trip_state,))
            + self.line_id.to_bytes(2, "big")
            + self.entry_station.to_bytes(2, "big")
            + self.entry_term_id
            + self.entry_date
            + self.entry_time
            + self.entry_amount.to_bytes(4, "big")
            + self.boarding_date
            + self.boarding_time
            + self.boarding_line.to_bytes(2, "big")
            + bytes((self.transfers,))
            + self.cap_date
            + self.cap_paid.to_bytes(4, "big")
            + b"\x00" * 8
        )

    @classmethod
    def decode(cls, raw: bytes) -> TransitRecord:
        """Parse the transit record."""
        if len(raw) != CAPP_RECORD_LEN:
            raise ValueError("the transit record is 48 bytes")
        return cls(
            trip_state=raw[0],
            line_id=int.from_bytes(raw[1:3], "big"),
            entry_station=int.from_bytes(raw[3:5], "big"),
            entry_term_id=raw[5:11],
            entry_date=raw[11:15],
            entry_time=raw[15:18],
            entry_amount=int.from_bytes(raw[18:22], "big"),
            boarding_date=raw[22:26],
            boarding_time=raw[26:29],
            boarding_line=int.from_bytes(raw[29:31], "big"),
            transfers=raw[31],
            cap_date=raw[32:36],
            cap_paid=int.from_bytes(raw[36:40], "big"),
        )


def atr_for(chip_serial: bytes) -> bytes:
    """``3B 88 80 01 ‖ chip serial ‖ TCK`` with TCK the XOR of T0 .. the last historical byte (spec §0)."""
    body = bytes((0x88, 0x80, 0x01)) + chip_serial
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes((tck,))


def fci(name: bytes) -> bytes:
    """``6F L 84 L name A5 03 88 01 15`` (spec §2.4, SELECT)."""
    inner = bytes((0x84, len(name))) + name + bytes.fromhex("A503880115")
    return bytes((0x6F, len(inner))) + inner
