"""ISO 7816-4 short APDUs as immutable typed values, parsed strictly (spec §0)."""

from __future__ import annotations

from dataclasses import dataclass

from cardos.sw import SW, CardError


@dataclass(frozen=True, slots=True)
class CommandAPDU:
    """A short command APDU ``CLA INS P1 P2 [Lc data] [Le]`` (spec §0).

    ``le`` is ``None`` when absent, else 1..256 (a ``00`` byte means 256).
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFF:
                raise ValueError(f"{name} out of range: {value}")
        if len(self.data) > 255:
            raise ValueError("short APDU data is at most 255 bytes")
        if self.le is not None and not 1 <= self.le <= 256:
            raise ValueError(f"Le out of range: {self.le}")

    @classmethod
    def parse(cls, raw: bytes) -> CommandAPDU:
        """Parse a short APDU of ISO case 1-4; anything else (extended, inconsistent) raises ``6700``."""
        n = len(raw)
        if n < 4:
            raise CardError(SW.WRONG_LENGTH, "APDU shorter than 4 bytes")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        if n == 4:
            return cls(cla, ins, p1, p2)
        if n == 5:
            return cls(cla, ins, p1, p2, b"", raw[4] or 256)
        lc = raw[4]
        if lc == 0:
            raise CardError(SW.WRONG_LENGTH, "extended APDUs are not supported")
        if n == 5 + lc:
            return cls(cla, ins, p1, p2, bytes(raw[5:]))
        if n == 6 + lc:
            return cls(cla, ins, p1, p2, bytes(raw[5 : 5 + lc]), raw[5 + lc] or 256)
        raise CardError(SW.WRONG_LENGTH, "Lc disagrees with the APDU length")

    def to_bytes(self) -> bytes:
        """Encode as a short APDU."""
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out.append(len(self.data))
            out += self.data
        if self.le is not None:
            out.append(self.le & 0xFF)
        return bytes(out)

    @property
    def lc(self) -> int:
        """Number of data bytes (0 when there is no data field)."""
        return len(self.data)

    def __str__(self) -> str:
        return self.to_bytes().hex().upper()


@dataclass(frozen=True, slots=True)
class ResponseAPDU:
    """A response ``data SW1 SW2``."""

    data: bytes
    sw: int

    @classmethod
    def parse(cls, raw: bytes) -> ResponseAPDU:
        """Split a raw response into its data and status word."""
        if len(raw) < 2:
            raise ValueError("a response has at least SW1 SW2")
        return cls(bytes(raw[:-2]), (raw[-2] << 8) | raw[-1])

    def to_bytes(self) -> bytes:
        """Encode as ``data SW1 SW2``."""
        return self.data + self.sw.to_bytes(2, "big")

    @property
    def ok(self) -> bool:
        """True for ``9000`` (and ``6283``, a successful SELECT of a blocked application, is not ok)."""
        return self.sw == SW.OK

    def __str__(self) -> str:
        return self.to_bytes().hex().upper()
