"""Typed wrappers over a :class:`~terminal.channel.Channel` for the user card and the PSAM (spec §2.4, §3).

Each method sends one command and returns typed values; a status word other than the expected ones
raises :class:`~terminal.errors.CardStatusError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardos import crypto
from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.layout import (
    CAPP_RECORD_LEN,
    HOLDER_LEN,
    LOG_RECORD_COUNT,
    PSAM_AID,
    PUBLIC_LEN,
    PURSE_AID,
    SFI_CAPP,
    SFI_HOLDER,
    SFI_LOG,
    SFI_PUBLIC,
    SFI_TERM_ID,
    TERM_ID_LEN,
    HolderData,
    LogRecord,
    PublicData,
)
from cardos.sw import SW
from terminal.channel import Channel
from terminal.errors import CardStatusError, check_sw


@dataclass(frozen=True, slots=True)
class InitPurchaseResponse:
    """INITIALIZE FOR (CAPP) PURCHASE response."""

    balance: int
    offline_seq: int
    overdraft: int
    key_version: int
    alg: crypto.Alg
    rand: bytes


@dataclass(frozen=True, slots=True)
class InitLoadResponse:
    """INITIALIZE FOR LOAD response."""

    old_balance: int
    online_seq: int
    key_version: int
    alg: crypto.Alg
    rand: bytes
    mac1: bytes


def _select(channel: Channel, aid: bytes, name: str) -> ResponseAPDU:
    return check_sw(channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, aid, 256)), name)


class UserCard:
    """The purse application of a user card in a channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def _send(self, cmd: CommandAPDU, name: str, accept: tuple[int, ...] = (SW.OK,)) -> ResponseAPDU:
        return check_sw(self.channel.transmit(cmd), name, accept)

    def select_purse(self, *, allow_blocked: bool = False) -> bool:
        """SELECT ADF 1001; returns True when it is temporarily blocked (``6283``), which raises like any other
        refusal unless ``allow_blocked`` (reading a blocked card is allowed, spec §2.3)."""
        accept = (SW.OK, SW.APP_BLOCKED_TEMP) if allow_blocked else (SW.OK,)
        response = check_sw(
            self.channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256)), "SELECT purse", accept
        )
        return response.sw == SW.APP_BLOCKED_TEMP

    def read_binary_sfi(self, sfi: int, length: int, name: str) -> bytes:
        """READ BINARY of a whole small file by SFI."""
        return self._send(CommandAPDU(0x00, 0xB0, 0x80 | sfi, 0x00, b"", length), name).data

    def read_public(self) -> PublicData:
        """EF 0015."""
        return PublicData.decode(self.read_binary_sfi(SFI_PUBLIC, PUBLIC_LEN, "READ BINARY 0015"))

    def read_holder(self) -> HolderData:
        """EF 0016."""
        return HolderData.decode(self.read_binary_sfi(SFI_HOLDER, HOLDER_LEN, "READ BINARY 0016"))

    def read_record(self, sfi: int, number: int, length: int, name: str) -> bytes | None:
        """READ RECORD; ``None`` when the record does not exist (``6A83``)."""
        cmd = CommandAPDU(0x00, 0xB2, number, (sfi << 3) | 0x04, b"", length)
        response = self._send(cmd, name, (SW.OK, SW.RECORD_NOT_FOUND))
        return response.data if response.sw == SW.OK else None

    def read_capp_record(self, number: int = 1) -> bytes:
        """EF 0017 record (record 1 is the transit record)."""
        data = self.read_record(SFI_CAPP, number, CAPP_RECORD_LEN, "READ RECORD 0017")
        if data is None:
            raise CardStatusError(SW.RECORD_NOT_FOUND, "READ RECORD 0017")
        return data

    def read_log(self, limit: int = LOG_RECORD_COUNT) -> list[LogRecord]:
        """EF 0018 records, newest first."""
        records: list[LogRecord] = []
        for number in range(1, limit + 1):
            data = self.read_record(SFI_LOG, number, 23, "READ RECORD 0018")
            if data is None:
                break
            records.append(LogRecord.decode(data))
        return records

    def get_balance(self) -> int:
        """GET BALANCE."""
        return int.from_bytes(self._send(CommandAPDU(0x80, 0x5C, 0x00, 0x02, b"", 4), "GET BALANCE").data, "big")

    def initialize_purchase(
        self, amount: int, term_id: bytes, *, capp: bool, key_index: int = 1
    ) -> InitPurchaseResponse:
        """INITIALIZE FOR (CAPP) PURCHASE."""
        data = bytes((key_index,)) + amount.to_bytes(4, "big") + term_id
        name = "INITIALIZE FOR CAPP PURCHASE" if capp else "INITIALIZE FOR PURCHASE"
        raw = self._send(CommandAPDU(0x80, 0x50, 0x03 if capp else 0x01, 0x02, data, 15), name).data
        return InitPurchaseResponse(
            balance=int.from_bytes(raw[0:4], "big"),
            offline_seq=int.from_bytes(raw[4:6], "big"),
            overdraft=int.from_bytes(raw[6:9], "big"),
            key_version=raw[9],
            alg=crypto.Alg(raw[10]),
            rand=raw[11:15],
        )

    def initialize_load(self, amount: int, term_id: bytes, key_index: int = 1) -> InitLoadResponse:
        """INITIALIZE FOR LOAD."""
        data = bytes((key_index,)) + amount.to_bytes(4, "big") + term_id
        raw = self._send(CommandAPDU(0x80, 0x50, 0x00, 0x02, data, 16), "INITIALIZE FOR LOAD").data
        return InitLoadResponse(
            old_balance=int.from_bytes(raw[0:4], "big"),
            online_seq=int.from_bytes(raw[4:6], "big"),
            key_version=raw[6],
            alg=crypto.Alg(raw[7]),
            rand=raw[8:12],
            mac1=raw[12:16],
        )

    def credit_for_load(self, date4: bytes, time3: bytes, mac2: bytes) -> bytes:
        """CREDIT FOR LOAD; returns the TAC."""
        cmd = CommandAPDU(0x80, 0x52, 0x00, 0x00, date4 + time3 + mac2, 4)
        return self._send(cmd, "CREDIT FOR LOAD").data

    def update_capp_cache(self, record: bytes, number: int = 1, sfi: int = SFI_CAPP) -> None:
        """UPDATE CAPP DATA CACHE (80DC)."""
        self._send(CommandAPDU(0x80, 0xDC, number, sfi << 3, record), "UPDATE CAPP DATA CACHE")

    def debit(self, term_seq: int, date4: bytes, time3: bytes, mac1: bytes) -> tuple[bytes, bytes]:
        """DEBIT FOR (CAPP) PURCHASE; returns ``(TAC, MAC2)``."""
        data = term_seq.to_bytes(4, "big") + date4 + time3 + mac1
        raw = self._send(CommandAPDU(0x80, 0x54, 0x01, 0x00, data, 8), "DEBIT FOR PURCHASE").data
        return raw[0:4], raw[4:8]

    def get_transaction_proof(self, txn_type: int, seq: int) -> tuple[bytes, bytes] | None:
        """GET TRANSACTION PROOF: ``(MAC2, TAC)`` or ``None`` for ``9406``."""
        cmd = CommandAPDU(0x80, 0x5A, 0x00, txn_type, seq.to_bytes(2, "big"), 8)
        response = self._send(cmd, "GET TRANSACTION PROOF", (SW.OK, SW.NO_SUCH_TRANSACTION))
        if response.sw != SW.OK:
            return None
        return response.data[0:4], response.data[4:8]

    def get_challenge(self, length: int = 4) -> bytes:
        """GET CHALLENGE."""
        return self._send(CommandAPDU(0x00, 0x84, 0x00, 0x00, b"", length), "GET CHALLENGE").data

    def line_mac_command(
        self, cla: int, ins: int, p1: int, p2: int, body: bytes, alg: crypto.Alg, damk: bytes, name: str
    ) -> None:
        """A ``04``/``84``-class command with its line MAC under DAMK (spec §2.4, Line MAC)."""
        challenge = self.get_challenge(4)
        header = bytes((cla, ins, p1, p2, len(body) + 4))
        mac = crypto.line_mac(alg, damk, header + body, challenge)
        self._send(CommandAPDU(cla, ins, p1, p2, body + mac), name)

    def verify_pin(self, pin: bytes) -> None:
        """VERIFY."""
        self._send(CommandAPDU(0x00, 0x20, 0x00, 0x00, pin), "VERIFY")


class PsamCard:
    """The PSAM application in a channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._term_id: bytes | None = None

    def open(self) -> bytes:
        """SELECT the PSAM ADF and read its term_id (EF 0016)."""
        _select(self.channel, PSAM_AID, "SELECT PSAM")
        cmd = CommandAPDU(0x00, 0xB0, 0x80 | SFI_TERM_ID, 0x00, b"", TERM_ID_LEN)
        self._term_id = check_sw(self.channel.transmit(cmd), "READ BINARY PSAM 0016").data
        return self._term_id

    @property
    def term_id(self) -> bytes:
        """The PSAM's term_id (after :meth:`open`)."""
        if self._term_id is None:
            return self.open()
        return self._term_id

    def init_sam_for_purchase(
        self,
        *,
        rand: bytes,
        offline_seq: int,
        amount: int,
        txn_type: int,
        date4: bytes,
        time3: bytes,
        key_version: int,
        alg: crypto.Alg,
        card_no: bytes,
        issuer_id: bytes,
    ) -> tuple[int, bytes]:
        """INIT SAM FOR PURCHASE: ``(term_seq, MAC1)``."""
        data = (
            rand
            + offline_seq.to_bytes(2, "big")
            + amount.to_bytes(4, "big")
            + bytes((txn_type,))
            + date4
            + time3
            + bytes((key_version, alg))
            + card_no
            + issuer_id
        )
        raw = check_sw(
            self.channel.transmit(CommandAPDU(0x80, 0x70, 0x00, 0x00, data, 8)), "INIT SAM FOR PURCHASE"
        ).data
        return int.from_bytes(raw[0:4], "big"), raw[4:8]

    def credit_sam_for_purchase(self, mac2: bytes) -> bool:
        """CREDIT SAM FOR PURCHASE: True if the PSAM accepted MAC2, False on ``9302``."""
        response = check_sw(
            self.channel.transmit(CommandAPDU(0x80, 0x72, 0x00, 0x00, mac2)),
            "CREDIT SAM FOR PURCHASE",
            (SW.OK, SW.MAC_WRONG),
        )
        return response.sw == SW.OK
