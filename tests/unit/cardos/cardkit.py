"""Test kit for the card OS: vectors, a scripted random source, APDU helpers and a terminal-side harness.

Everything here is written from docs/card-protocol.md and vectors.json alone; the only card-side code it uses
is :mod:`cardos.crypto` (terminal and host computations) and the public ``Card`` API.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardos import crypto
from cardos.crypto import Alg
from cardos.memory import Memory

ROOT = Path(__file__).resolve().parents[3]
VECTORS_PATH = ROOT / "tests" / "vectors" / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
ALGS: tuple[Alg, ...] = (Alg.DES, Alg.SM4)
ALG_IDS: tuple[str, ...] = ("des", "sm4")


def h(text: str) -> bytes:
    """Hex (spaces allowed) to bytes."""
    return bytes.fromhex(text.replace(" ", ""))


def hx(data: bytes) -> str:
    """Bytes to upper-case hex."""
    return data.hex().upper()


def suite(alg: Alg) -> dict[str, Any]:
    """The vectors of one algorithm suite."""
    return VECTORS["suites"][f"{int(alg):02X}"]  # type: ignore[no-any-return]


# --- constants of the protocol and of the vectors ---

AID_PURSE = h("A000000632010105")
AID_SSC = h("F04F4E4543415244535343")
AID_PSAM = h("F04F4E45434152445053414D")
CARD_NO = h("0310000000000001")
ISSUER_ID = h("0310000000000000")
TERM_ID_PSAM = h("031000000001")
TERM_ID_LOAD = h("031000009001")
USER_SERIAL = h("C0C1C2C3C4C5C6C7")
PSAM_SERIAL = h("D0D1D2D3D4D5D6D7")
KT = h("F0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF")
PIN_PURSE = h("123456")
PIN_SSC = h("654321")
PURSE_LIMIT = 100_000_000
PERSO_CHALLENGE = h("0102030405060708")
SFI_PUBLIC, SFI_HOLDER, SFI_CAPP, SFI_LOG = 0x15, 0x16, 0x17, 0x18
DATE = h("20250301")
TIME = h("120000")
EF15_DATA = h("031000000000000002010310031000000000000120250101203412310101")

SW_OK = 0x9000


def fci(name: bytes) -> bytes:
    """The FCI of a DF: ``6F L 84 L name A5 03 88 01 15`` (spec §2.4)."""
    body = b"\x84" + bytes((len(name),)) + name + h("A503880115")
    return b"\x6f" + bytes((len(body),)) + body


MF_FCI = fci(h("3F00"))


def atr_of(serial: bytes) -> bytes:
    """``3B 88 80 01 ‖ serial ‖ TCK``, TCK the XOR of T0 .. the last historical byte (spec §0)."""
    body = h("888001") + serial
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes((tck,))


# --- APDUs ---


def apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """A short APDU; ``le`` is the raw Le byte (``0`` for ``00``), ``None`` for none."""
    out = bytes((cla, ins, p1, p2))
    if data:
        out += bytes((len(data),)) + data
    if le is not None:
        out += bytes((le,))
    return out


def sfi_p1(sfi: int) -> int:
    """P1 of READ BINARY / UPDATE BINARY by SFI."""
    return 0x80 | sfi


def rr(rec: int, sfi: int, le: int | None = 0) -> bytes:
    """READ RECORD ``00 B2 rec (SFI<<3)|04 Le``."""
    return apdu(0x00, 0xB2, rec, (sfi << 3) | 4, le=le)


def rb(sfi: int | None, offset: int = 0, le: int | None = 0) -> bytes:
    """READ BINARY by SFI (P2 offset) or of the current EF (offset P1‖P2)."""
    if sfi is None:
        return apdu(0x00, 0xB0, offset >> 8, offset & 0xFF, le=le)
    return apdu(0x00, 0xB0, sfi_p1(sfi), offset, le=le)


def select_name(aid: bytes, le: int | None = None) -> bytes:
    return apdu(0x00, 0xA4, 0x04, 0x00, aid, le)


def select_fid(fid: int, le: int | None = None) -> bytes:
    return apdu(0x00, 0xA4, 0x00, 0x00, fid.to_bytes(2, "big"), le)


GET_BALANCE = h("805C000204")


def get_challenge(n: int = 4) -> bytes:
    return apdu(0x00, 0x84, 0x00, 0x00, le=n)


def verify(pin: bytes) -> bytes:
    return apdu(0x00, 0x20, 0x00, 0x00, pin)


def init_load_apdu(amount: int, term_id: bytes = TERM_ID_LOAD, key_idx: int = 1, le: int | None = 0x10) -> bytes:
    return apdu(0x80, 0x50, 0x00, 0x02, bytes((key_idx,)) + amount.to_bytes(4, "big") + term_id, le)


def init_purchase_apdu(
    amount: int, txn_type: int = 6, term_id: bytes = TERM_ID_PSAM, key_idx: int = 1, le: int | None = 0x0F
) -> bytes:
    p1 = 0x01 if txn_type == 6 else 0x03
    return apdu(0x80, 0x50, p1, 0x02, bytes((key_idx,)) + amount.to_bytes(4, "big") + term_id, le)


def proof_apdu(txn_type: int, seq: int, le: int | None = 0x08) -> bytes:
    return apdu(0x80, 0x5A, 0x00, txn_type, seq.to_bytes(2, "big"), le)


def capp_apdu(rec: int, data: bytes, sfi: int = SFI_CAPP) -> bytes:
    return apdu(0x80, 0xDC, rec, sfi << 3, data)


def log_record(seq: int, amount: int, txn_type: int, term_id: bytes, date4: bytes, time3: bytes) -> bytes:
    """EF 0018 record: ``seq 2 · 000000 · amount 4 · type 1 · term_id 6 · date4 · time3``."""
    return (
        seq.to_bytes(2, "big")
        + b"\x00\x00\x00"
        + amount.to_bytes(4, "big")
        + bytes((txn_type,))
        + (term_id + date4 + time3)
    )


# --- a scripted random source ---


class ScriptedRng:
    """The card's random source: queued bytes first, then a seeded deterministic stream."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._filler = random.Random(seed)
        self._queue = bytearray()
        self.calls: list[int] = []

    def reseed(self, seed: int) -> None:
        """Restart the stream (the queue is emptied)."""
        self.seed = seed
        self._filler = random.Random(seed)
        self._queue.clear()

    def push(self, *chunks: bytes) -> None:
        """Queue bytes that the next draws return."""
        for chunk in chunks:
            self._queue += chunk

    def clear(self) -> None:
        self._queue.clear()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        take = bytes(self._queue[:n])
        del self._queue[:n]
        if len(take) < n:
            take += self._filler.randbytes(n - len(take))
        return take


# --- keys ---


@dataclass(frozen=True)
class Keys:
    """The card keys of the vectors' card (0310000000000001) and the masters a PSAM holds."""

    alg: Alg
    kt: bytes
    damk: bytes
    dpk: bytes
    dlk: bytes
    dtk: bytes
    dpuk: bytes
    drpk: bytes
    mpk: bytes

    @classmethod
    def of(cls, alg: Alg) -> Keys:
        s = suite(alg)
        dk = s["diversified_keys"]
        return cls(
            alg=alg,
            kt=h(s["transport_key"]["KT"]),
            damk=h(dk["DAMK"]["key"]),
            dpk=h(dk["DPK"]["key"]),
            dlk=h(dk["DLK"]["key"]),
            dtk=h(dk["DTK"]["key"]),
            dpuk=h(dk["DPUK"]["key"]),
            drpk=h(dk["DRPK"]["key"]),
            mpk=h(s["master_keys"]["MPK"]["key"]),
        )


# --- responses and the harness ---


@dataclass(frozen=True)
class Resp:
    """A parsed response."""

    data: bytes
    sw: int

    @property
    def raw(self) -> bytes:
        return self.data + self.sw.to_bytes(2, "big")

    def __repr__(self) -> str:
        return f"Resp({hx(self.data)} {self.sw:04X})"


@dataclass(frozen=True)
class LoadInit:
    old_balance: int
    online_seq: int
    key_ver: int
    alg: int
    rand: bytes
    mac1: bytes

    @classmethod
    def parse(cls, data: bytes) -> LoadInit:
        assert len(data) == 16, hx(data)
        return cls(
            int.from_bytes(data[0:4], "big"),
            int.from_bytes(data[4:6], "big"),
            data[6],
            data[7],
            data[8:12],
            data[12:16],
        )


@dataclass(frozen=True)
class PurchaseInit:
    balance: int
    offline_seq: int
    overdraft: bytes
    key_ver: int
    alg: int
    rand: bytes

    @classmethod
    def parse(cls, data: bytes) -> PurchaseInit:
        assert len(data) == 15, hx(data)
        return cls(
            int.from_bytes(data[0:4], "big"),
            int.from_bytes(data[4:6], "big"),
            data[6:9],
            data[9],
            data[10],
            data[11:15],
        )


@dataclass(frozen=True)
class LoadDone:
    seq: int
    old_balance: int
    new_balance: int
    tac: bytes


@dataclass(frozen=True)
class PurchaseDone:
    seq: int
    balance_before: int
    tac: bytes
    mac2: bytes


CardFactory = Callable[..., Any]


def card_module() -> Any:
    """``cardos.card`` (imported lazily: the crypto-only tests run without it)."""
    import cardos.card as mod

    return mod


@dataclass
class Harness:
    """One card (user card or PSAM) plus what a terminal and the host know about it."""

    card: Any
    alg: Alg
    rng: ScriptedRng
    kind: str
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys.of(self.alg)

    # construction ---------------------------------------------------------------------------------------

    @classmethod
    def factory(cls, kind: str, alg: Alg, rng: ScriptedRng | None = None, serial: bytes | None = None) -> Harness:
        mod = card_module()
        rng = rng or ScriptedRng(0)
        card_kind = mod.CardKind.USER if kind == "user" else mod.CardKind.PSAM
        serial = serial or (USER_SERIAL if kind == "user" else PSAM_SERIAL)
        card = mod.Card.factory(kind=card_kind, alg=alg, transport_key=KT, chip_serial=serial, rng=rng)
        card.power_on()
        return cls(card, alg, rng, kind)

    @classmethod
    def from_image(cls, image: dict[str, str], kind: str, alg: Alg, rng: ScriptedRng | None = None) -> Harness:
        mod = card_module()
        rng = rng or ScriptedRng(0)
        card = mod.Card.from_memory(Memory.from_image(image), rng=rng)
        card.power_on()
        return cls(card, alg, rng, kind)

    def image(self) -> dict[str, str]:
        return dict(self.card.memory.to_image())

    def clone(self, seed: int | None = None) -> Harness:
        """A new card from this one's memory (powered on: volatile state is not copied)."""
        return Harness.from_image(
            self.image(), self.kind, self.alg, ScriptedRng(self.rng.seed if seed is None else seed)
        )

    # transport ---------------------------------------------------------------------------------------------

    def tx(self, raw: bytes | str) -> Resp:
        if isinstance(raw, str):
            raw = h(raw)
        out = self.card.transmit(raw)
        assert isinstance(out, bytes | bytearray), type(out)
        assert len(out) >= 2, f"{hx(raw)} -> {hx(bytes(out))}"
        return Resp(bytes(out[:-2]), (out[-2] << 8) | out[-1])

    def sw(self, raw: bytes | str) -> int:
        return self.tx(raw).sw

    def ok(self, raw: bytes | str) -> bytes:
        r = self.tx(raw)
        assert r.sw == SW_OK, f"{raw if isinstance(raw, str) else hx(raw)} -> {r}"
        return r.data

    def reset(self) -> None:
        self.card.power_on()

    @property
    def writes(self) -> int:
        return int(self.card.memory.writes)

    # file system ----------------------------------------------------------------------------------------

    def select_purse(self) -> Resp:
        return self.tx(select_name(AID_PURSE))

    def select_ssc(self) -> Resp:
        return self.tx(select_name(AID_SSC))

    def select_psam(self) -> Resp:
        return self.tx(select_name(AID_PSAM))

    def challenge(self, n: int = 4, value: bytes | None = None) -> bytes:
        if value is not None:
            self.rng.push(value)
        data = self.ok(get_challenge(n))
        assert len(data) == n
        if value is not None:
            assert data == value
        return data

    def mac_apdu(
        self,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes,
        chal: bytes,
        key: bytes | None = None,
        le: int | None = None,
    ) -> bytes:
        """A ``04``/``84``-class command with its line MAC (Lc counts the MAC)."""
        header = bytes((cla, ins, p1, p2, len(data) + 4))
        mac4 = crypto.line_mac(self.alg, key or self.keys.damk, header + data, chal)
        out = header + data + mac4
        return out + bytes((le,)) if le is not None else out

    def send_mac(
        self, cla: int, ins: int, p1: int, p2: int, data: bytes = b"", *, chal_len: int = 4, bad: bool = False
    ) -> Resp:
        """GET CHALLENGE then the command with a right (or, with ``bad``, a wrong) line MAC."""
        chal = self.challenge(chal_len)
        cmd = self.mac_apdu(cla, ins, p1, p2, data, chal)
        if bad:
            cmd = cmd[:-1] + bytes((cmd[-1] ^ 0x01,))
        return self.tx(cmd)

    def update_binary(self, p1: int, p2: int, data: bytes, *, bad: bool = False) -> Resp:
        return self.send_mac(0x04, 0xD6, p1, p2, data, bad=bad)

    def app_block(self, permanent: bool = False) -> Resp:
        return self.send_mac(0x84, 0x1E, 0x00, 0x01 if permanent else 0x00)

    def app_unblock(self) -> Resp:
        return self.send_mac(0x84, 0x18, 0x00, 0x00)

    def card_block(self) -> Resp:
        return self.send_mac(0x84, 0x16, 0x00, 0x00)

    def reload_pin_apdu(self, new_pin: bytes, chal: bytes, key: bytes | None = None) -> bytes:
        mac4 = crypto.mac(self.alg, key or self.keys.drpk, new_pin, chal)
        return apdu(0x80, 0x5E, 0x00, 0x00, new_pin + mac4)

    # purse ------------------------------------------------------------------------------------------------

    def balance(self) -> int:
        data = self.ok(GET_BALANCE)
        assert len(data) == 4
        return int.from_bytes(data, "big")

    def init_load(self, amount: int, *, term_id: bytes = TERM_ID_LOAD, rand: bytes | None = None) -> LoadInit:
        if rand is not None:
            self.rng.push(rand)
        info = LoadInit.parse(self.ok(init_load_apdu(amount, term_id)))
        if rand is not None:
            assert info.rand == rand
        sk = crypto.load_session_key(self.alg, self.keys.dlk, info.rand, info.online_seq)
        assert info.mac1 == crypto.load_mac1(self.alg, sk, info.old_balance, amount, term_id), "MAC1 of the card"
        assert info.key_ver == 1
        assert info.alg == int(self.alg)
        return info

    def credit_apdu(
        self,
        info: LoadInit,
        amount: int,
        *,
        term_id: bytes = TERM_ID_LOAD,
        date4: bytes = DATE,
        time3: bytes = TIME,
    ) -> bytes:
        sk = crypto.load_session_key(self.alg, self.keys.dlk, info.rand, info.online_seq)
        mac2 = crypto.load_mac2(self.alg, sk, amount, term_id, date4, time3)
        return apdu(0x80, 0x52, 0x00, 0x00, date4 + time3 + mac2, 0x04)

    def load(
        self,
        amount: int,
        *,
        term_id: bytes = TERM_ID_LOAD,
        date4: bytes = DATE,
        time3: bytes = TIME,
        rand: bytes | None = None,
    ) -> LoadDone:
        """A whole load as the host does it; checks MAC1 and the TAC."""
        info = self.init_load(amount, term_id=term_id, rand=rand)
        tac = self.ok(self.credit_apdu(info, amount, term_id=term_id, date4=date4, time3=time3))
        new_balance = info.old_balance + amount
        assert tac == crypto.load_tac(
            self.alg, self.keys.dtk, new_balance, info.online_seq, amount, term_id, date4, time3
        ), "load TAC"
        return LoadDone(info.online_seq, info.old_balance, new_balance, tac)

    def init_purchase(
        self,
        amount: int,
        txn_type: int = 6,
        *,
        term_id: bytes = TERM_ID_PSAM,
        rand: bytes | None = None,
    ) -> PurchaseInit:
        if rand is not None:
            self.rng.push(rand)
        info = PurchaseInit.parse(self.ok(init_purchase_apdu(amount, txn_type, term_id)))
        if rand is not None:
            assert info.rand == rand
        assert info.overdraft == b"\x00\x00\x00"
        assert info.key_ver == 1
        assert info.alg == int(self.alg)
        return info

    def purchase_sk(self, info: PurchaseInit, term_seq: int) -> bytes:
        return crypto.purchase_session_key(self.alg, self.keys.dpk, info.rand, info.offline_seq, term_seq)

    def debit_apdu(
        self,
        info: PurchaseInit,
        amount: int,
        txn_type: int = 6,
        *,
        term_seq: int = 1,
        term_id: bytes = TERM_ID_PSAM,
        date4: bytes = DATE,
        time3: bytes = TIME,
        bad: bool = False,
    ) -> bytes:
        sk = self.purchase_sk(info, term_seq)
        mac1 = crypto.purchase_mac1(self.alg, sk, amount, txn_type, term_id, date4, time3)
        if bad:
            mac1 = bytes((mac1[0] ^ 0x80,)) + mac1[1:]
        return apdu(0x80, 0x54, 0x01, 0x00, term_seq.to_bytes(4, "big") + date4 + time3 + mac1, 0x08)

    def purchase(
        self,
        amount: int,
        txn_type: int = 6,
        *,
        term_seq: int = 1,
        term_id: bytes = TERM_ID_PSAM,
        date4: bytes = DATE,
        time3: bytes = TIME,
        rand: bytes | None = None,
        capp: Sequence[tuple[int, bytes]] = (),
    ) -> PurchaseDone:
        """A whole purchase with MAC1 computed as the PSAM does; checks the TAC and MAC2."""
        info = self.init_purchase(amount, txn_type, term_id=term_id, rand=rand)
        for rec, data in capp:
            self.ok(capp_apdu(rec, data))
        out = self.ok(
            self.debit_apdu(info, amount, txn_type, term_seq=term_seq, term_id=term_id, date4=date4, time3=time3)
        )
        assert len(out) == 8
        tac, mac2 = out[:4], out[4:]
        assert mac2 == crypto.purchase_mac2(self.alg, self.purchase_sk(info, term_seq), amount), "MAC2"
        assert tac == crypto.purchase_tac(self.alg, self.keys.dtk, amount, txn_type, term_id, term_seq, date4, time3), (
            "purchase TAC"
        )
        return PurchaseDone(info.offline_seq, info.balance, tac, mac2)

    def verify_sw(self, pin: bytes) -> int:
        return self.sw(verify(pin))

    def log(self) -> list[bytes]:
        """EF 0018 records, newest first, as far as they are written."""
        out = []
        for rec in range(1, 11):
            r = self.tx(rr(rec, SFI_LOG))
            if r.sw != SW_OK:
                break
            out.append(r.data)
        return out

    # PSAM ---

    def init_sam_apdu(
        self,
        rand: bytes,
        offline_seq: int,
        amount: int,
        txn_type: int = 6,
        *,
        date4: bytes = DATE,
        time3: bytes = TIME,
        key_ver: int = 1,
        alg: int | None = None,
        card_no: bytes = CARD_NO,
        issuer_id: bytes = ISSUER_ID,
        le: int | None = 0x08,
    ) -> bytes:
        data = (
            rand
            + offline_seq.to_bytes(2, "big")
            + amount.to_bytes(4, "big")
            + bytes((txn_type,))
            + date4
            + time3
            + bytes((key_ver, int(self.alg) if alg is None else alg))
            + card_no
            + issuer_id
        )
        return apdu(0x80, 0x70, 0x00, 0x00, data, le)

    def init_sam(self, rand: bytes, offline_seq: int, amount: int, txn_type: int = 6, **kw: Any) -> tuple[int, bytes]:
        data = self.ok(self.init_sam_apdu(rand, offline_seq, amount, txn_type, **kw))
        assert len(data) == 8
        return int.from_bytes(data[:4], "big"), data[4:]

    def bump_term_seq(self, count: int) -> int:
        """``count`` INIT SAMs (each uses a term_seq); returns the last term_seq."""
        last = 0
        for i in range(count):
            last, _ = self.init_sam(i.to_bytes(4, "big"), 0, 0)
        return last


# --- personalisation from the vectors ---


def exchange(alg: Alg, name: str) -> list[dict[str, str]]:
    return suite(alg)["exchanges"][name]  # type: ignore[no-any-return]


def rand_for_step(step: dict[str, str]) -> bytes | None:
    """The bytes the card's random source must give for a vector step (from its expected response)."""
    resp = h(step["response"])
    name = step["name"]
    if name == "GET CHALLENGE":
        return resp[:-2]
    if name == "INITIALIZE FOR LOAD":
        return resp[8:12]
    if name in ("INITIALIZE FOR PURCHASE", "INITIALIZE FOR CAPP PURCHASE"):
        return resp[11:15]
    return None


def replay(steps: Iterable[dict[str, str]], cards: dict[str, Harness]) -> list[tuple[str, str, str]]:
    """Send each step to its card with the scripted random bytes; return (name, expected, got) per step."""
    out = []
    for step in steps:
        target = cards[step["to"]]
        rand = rand_for_step(step)
        target.rng.clear()
        if rand is not None:
            target.rng.push(rand)
        got = target.tx(step["command"]).raw
        target.rng.clear()
        out.append((step["name"], step["response"], hx(got)))
    return out


def personalise_steps(alg: Alg, kind: str, extra_in_purse_adf: Sequence[str] = ()) -> list[dict[str, str]]:
    """The vector personalisation, optionally with extra commands (all answering 9000) in ADF 1001."""
    steps = list(exchange(alg, "personalise_user_card" if kind == "user" else "personalise_psam"))
    if extra_in_purse_adf:
        at = next(i for i, s in enumerate(steps) if s["name"] == ("INIT PURSE" if kind == "user" else "FINISH"))
        extra = [{"to": steps[0]["to"], "name": "EXTRA", "command": c, "response": "9000"} for c in extra_in_purse_adf]
        steps[at:at] = extra
    return steps


def personalised(
    kind: str, alg: Alg, rng: ScriptedRng | None = None, extra_in_purse_adf: Sequence[str] = ()
) -> Harness:
    """A factory card personalised by replaying the vector exchange (every response checked), then reset."""
    hn = Harness.factory(kind, alg, rng)
    for name, want, got in replay(personalise_steps(alg, kind, extra_in_purse_adf), {kind: hn, "card": hn, "psam": hn}):
        assert got == want, f"personalisation {name}: expected {want}, got {got}"
    hn.reset()
    return hn


def put_key_apdu(alg: Alg, usage: int, idx: int, key: bytes, version: int = 1, tries: int = 0x0F) -> bytes:
    """PUT KEY data ``version ‖ alg ‖ tries ‖ E_KT(key) ‖ KCV(key)``."""
    data = bytes((version, int(alg), tries)) + crypto.wrap_key(alg, KT, key) + crypto.kcv(alg, key)
    return apdu(0x80, 0xD4, usage, idx, data)


def create_ef_apdu(fid: int, sfi: int, kind: int, size: bytes, read: int, write: int) -> bytes:
    return apdu(0x80, 0xE0, 0x02, 0x00, fid.to_bytes(2, "big") + bytes((sfi, kind)) + size + bytes((read, write)))


def create_df_apdu(fid: int, aid: bytes) -> bytes:
    return apdu(0x80, 0xE0, 0x01, 0x00, fid.to_bytes(2, "big") + bytes((len(aid),)) + aid)


def ext_auth_apdu(alg: Alg, chal: bytes, key: bytes = KT) -> bytes:
    return apdu(0x00, 0x82, 0x00, 0x10, crypto.external_auth_cryptogram(alg, key, chal))


def authenticate(hn: Harness) -> None:
    """GET CHALLENGE (8) and EXTERNAL AUTHENTICATE with KT."""
    chal = hn.challenge(8)
    hn.ok(ext_auth_apdu(hn.alg, chal))


def log_seq(record: bytes) -> int:
    return int.from_bytes(record[:2], "big")


# --- states the vector exchanges start from ---


def user_before_load_exchange(alg: Alg, rng: ScriptedRng | None = None) -> Harness:
    """Personalised, then 5 loads of 200 fen: balance 1000 and online_seq 5, as the load exchange needs."""
    hn = personalised("user", alg, rng)
    hn.select_purse()
    for i in range(5):
        hn.load(200, rand=bytes((0xA0 + i,)) * 4, time3=h(f"0900{i:02d}"))
    assert hn.balance() == 1000
    hn.reset()
    return hn


def run_exchange(alg: Alg, name: str, cards: dict[str, Harness]) -> None:
    for step_name, want, got in replay(exchange(alg, name), cards):
        assert got == want, f"{name} / {step_name}: expected {want}, got {got}"


def user_before_purchase_exchange(alg: Alg, prior_purchases: int, rng: ScriptedRng | None = None) -> Harness:
    """After the load exchange (balance 11000), then ``prior_purchases`` 0-fen purchases (the offline_seq)."""
    hn = user_before_load_exchange(alg, rng)
    run_exchange(alg, "load", {"card": hn})
    for i in range(prior_purchases):
        hn.purchase(0, term_seq=0x10 + i, rand=bytes((0xB0 + i,)) * 4, time3=h(f"0800{i:02d}"))
    assert hn.balance() == 11000
    hn.reset()
    return hn


def psam_at(alg: Alg, term_seq: int, rng: ScriptedRng | None = None) -> Harness:
    """A personalised PSAM whose term_seq is ``term_seq`` (so the next INIT SAM returns term_seq + 1)."""
    ps = personalised("psam", alg, rng)
    ps.ok(select_name(AID_PSAM))
    if term_seq:
        assert ps.bump_term_seq(term_seq) == term_seq
    ps.reset()
    return ps
