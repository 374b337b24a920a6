"""Random and mutated APDUs against cards and PSAMs in many states (seeded, so every run is the same).

Invariants: every answer is ``data SW1 SW2`` with a status word of spec §4 (and never 6581 "memory failure",
since no tear is armed), errors carry no data, the card never raises, and the balance, the log and the
counters never change, since no fuzzed command can carry a valid MAC.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from cardkit import (
    AID_PSAM,
    AID_PURSE,
    AID_SSC,
    ALG_IDS,
    ALGS,
    GET_BALANCE,
    PIN_PURSE,
    PIN_SSC,
    SFI_LOG,
    VECTORS,
    Harness,
    ScriptedRng,
    capp_apdu,
    ext_auth_apdu,
    h,
    hx,
    init_load_apdu,
    init_purchase_apdu,
    personalise_steps,
    personalised,
    replay,
    rr,
    select_name,
    verify,
)

from cardos.crypto import Alg
from cardos.sw import SW

pytest.importorskip("cardos.card", reason="cardos/card.py is not there yet")

APDUS_PER_CASE = 8_000
ROUND = 30
STATS: dict[str, float] = {"apdus": 0, "seconds": 0.0}

KNOWN_INS = {
    0x00: (0xA4, 0xB0, 0xB2, 0x84, 0x20, 0x82),
    0x04: (0xD6,),
    0x80: (0x5E, 0x5C, 0x50, 0x52, 0xDC, 0x54, 0x5A, 0xE0, 0xD4, 0xD6, 0xD8, 0xE8, 0x70, 0x72),
    0x84: (0x1E, 0x18, 0x16),
}
INTERESTING_P = (
    *(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x09, 0x0A, 0x10, 0x15, 0x16, 0x17, 0x18, 0x20, 0x21),
    *(0x7F, 0x80, 0x81, 0x85, 0x95, 0x96, 0x97, 0x98, 0x9F, 0xA8, 0xB8, 0xBC, 0xC0, 0xC4, 0xFE, 0xFF),
)
INTERESTING_LEN = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x0B, 0x0F, 0x10, 0x16, 0x17, 0x1E, 0x24, 0x30, 0x40, 0xFF)


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and STATS["apdus"]:
        reporter.write_line(f"\nfuzz: {int(STATS['apdus'])} fuzzed APDUs in {STATS['seconds']:.1f} s")


def corpus() -> list[bytes]:
    """Valid commands of every kind (their MACs belong to other sessions and challenges)."""
    out: list[bytes] = []
    for s in VECTORS["suites"].values():
        for steps in s["exchanges"].values():
            out += [h(st["command"]) for st in steps]
    out += [
        GET_BALANCE,
        init_load_apdu(100),
        init_purchase_apdu(100),
        init_purchase_apdu(0, 9),
        verify(PIN_PURSE),
        verify(PIN_SSC),
        h("805E0100071234 56FF654321".replace(" ", "")),
        capp_apdu(1, bytes(48)),
        h("805A000202000008"),
        h("805A000602000008"),
        h("00B201C400"),
        h("00B201BC00"),
        h("00B0950000"),
        h("00B0850000"),
        h("00A40000021001"),
        h("00A40000020015"),
        h("0084000008"),
        h("80E8000000"),
        h("807200000400000000"),
        h("805200000B" + "20250301120000" + "00000000"),
        h("805401000F" + "00000001" + "20250301120000" + "00000000"),
        h("841800000400000000"),
        h("8416000004" + "00000000"),
        h("841E000104" + "00000000"),
        h("04D6950000"),
    ]
    return out


CORPUS = corpus()
CHALLENGE = h("0084000004")


def structured(rnd: random.Random) -> bytes:
    if rnd.random() < 0.9:
        cla = rnd.choice(tuple(KNOWN_INS))
        ins = rnd.choice(KNOWN_INS[cla])
    else:
        cla, ins = rnd.randrange(256), rnd.randrange(256)
    p1 = rnd.choice(INTERESTING_P) if rnd.random() < 0.7 else rnd.randrange(256)
    p2 = rnd.choice(INTERESTING_P) if rnd.random() < 0.7 else rnd.randrange(256)
    out = bytes((cla, ins, p1, p2))
    case = rnd.randrange(4)
    if case in (2, 3):
        n = rnd.choice(INTERESTING_LEN) if rnd.random() < 0.7 else rnd.randrange(256)
        n = max(n, 1)
        out += bytes((n,)) + rnd.randbytes(n)
    if case in (1, 3):
        out += bytes((rnd.choice((0x00, 0x04, 0x08, 0x0F, 0x10, 0x1E, 0x30, rnd.randrange(256))),))
    return out


def mutated(rnd: random.Random) -> bytes:
    raw = bytearray(rnd.choice(CORPUS))
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(8)
        if op == 0 and raw:
            i = rnd.randrange(len(raw))
            raw[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and raw:
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        elif op == 2:
            raw.insert(rnd.randrange(len(raw) + 1), rnd.randrange(256))
        elif op == 3 and raw:
            del raw[rnd.randrange(len(raw))]
        elif op == 4:
            del raw[rnd.randrange(len(raw) + 1) :]
        elif op == 5:
            raw += rnd.randbytes(rnd.randint(1, 6))
        elif op == 6 and len(raw) > 4:
            raw[4] = rnd.randrange(256)
        elif op == 7 and len(raw) > 5:
            raw[-1] = rnd.choice((0x00, rnd.randrange(256)))
    return bytes(raw)


def pure_random(rnd: random.Random) -> bytes:
    n = rnd.choice((0, 1, 2, 3, 4, 5, 6, 7, 9, 13)) if rnd.random() < 0.7 else rnd.randrange(300)
    return rnd.randbytes(n)


def payload_mutated(rnd: random.Random) -> bytes:
    """A corpus command with its length structure kept: only data bytes change (reaches MAC checks)."""
    raw = bytearray(rnd.choice(CORPUS))
    if len(raw) <= 5:
        return bytes(raw)
    end = 5 + raw[4] if len(raw) >= 5 + raw[4] else len(raw)
    for _ in range(rnd.randint(1, 4)):
        if end > 5:
            raw[rnd.randrange(5, end)] = rnd.randrange(256)
    return bytes(raw)


def header_mutated(rnd: random.Random) -> bytes:
    raw = bytearray(rnd.choice(CORPUS))
    raw[rnd.choice((2, 3))] = rnd.choice(INTERESTING_P)
    return bytes(raw)


def fuzz_apdu(rnd: random.Random) -> bytes:
    x = rnd.random()
    if x < 0.10:
        return pure_random(rnd)
    if x < 0.40:
        return structured(rnd)
    if x < 0.65:
        return mutated(rnd)
    if x < 0.90:
        return payload_mutated(rnd)
    return header_mutated(rnd)


# --- states ---


@dataclass
class State:
    name: str
    kind: str
    image: Callable[[Alg], dict[str, str]]
    setup: Callable[[Harness], None]
    money: bool  # balance / log / counters must be unchanged (readable after the round)


@functools.cache
def issued_image(alg: Alg) -> dict[str, str]:
    hn = personalised("user", alg, ScriptedRng(21))
    hn.select_purse()
    hn.load(10_000)
    hn.purchase(100)
    return hn.image()


@functools.cache
def blocked_image(alg: Alg, which: str) -> dict[str, str]:
    hn = Harness.from_image(issued_image(alg), "user", alg, ScriptedRng(22))
    hn.select_purse()
    r = hn.app_block() if which == "temp" else hn.card_block()
    assert r.sw == 0x9000
    return hn.image()


@functools.cache
def factory_image(alg: Alg, kind: str) -> dict[str, str]:
    return Harness.factory(kind, alg, ScriptedRng(23)).image()


@functools.cache
def mid_perso_image(alg: Alg) -> dict[str, str]:
    """The user personalisation up to INIT PURSE (purse application made, ADF 1002 not yet)."""
    hn = Harness.factory("user", alg, ScriptedRng(24))
    steps = personalise_steps(alg, "user")
    upto = next(i for i, s in enumerate(steps) if s["name"] == "INIT PURSE") + 1
    for name, want, got in replay(steps[:upto], {"card": hn}):
        assert want == got, name
    return hn.image()


@functools.cache
def psam_image(alg: Alg) -> dict[str, str]:
    ps = personalised("psam", alg, ScriptedRng(25))
    ps.ok(select_name(AID_PSAM))
    ps.bump_term_seq(3)
    return ps.image()


def _sel(hn: Harness) -> None:
    hn.tx(select_name(AID_PURSE))


def _pending_purchase(hn: Harness) -> None:
    _sel(hn)
    hn.init_purchase(100)


def _pending_capp(hn: Harness) -> None:
    _sel(hn)
    hn.init_purchase(50, 9)
    hn.ok(capp_apdu(1, b"\x01" * 48))


def _pending_load(hn: Harness) -> None:
    _sel(hn)
    hn.init_load(100)


def _pin_verified(hn: Harness) -> None:
    _sel(hn)
    hn.ok(verify(PIN_PURSE))


def _ssc(hn: Harness) -> None:
    hn.ok(select_name(AID_SSC))
    hn.ok(verify(PIN_SSC))


def _perm_blocked_current(hn: Harness) -> None:
    _sel(hn)
    assert hn.app_block(permanent=True).sw == 0x9000


def _auth(hn: Harness) -> None:
    hn.ok(ext_auth_apdu(hn.alg, hn.challenge(8)))


def _auth_in_adf(hn: Harness) -> None:
    _auth(hn)
    hn.ok(select_name(AID_PURSE))


def _psam_sel(hn: Harness) -> None:
    hn.ok(select_name(AID_PSAM))


def _psam_session(hn: Harness) -> None:
    _psam_sel(hn)
    hn.init_sam(h("01020304"), 1, 10)


def _nothing(hn: Harness) -> None:
    pass


STATES = [
    State("issued", "user", issued_image, _sel, True),
    State("pending-purchase", "user", issued_image, _pending_purchase, True),
    State("pending-capp", "user", issued_image, _pending_capp, True),
    State("pending-load", "user", issued_image, _pending_load, True),
    State("pin-verified", "user", issued_image, _pin_verified, True),
    State("ssc-app", "user", issued_image, _ssc, True),
    State("blocked-app", "user", lambda a: blocked_image(a, "temp"), _sel, True),
    State("perm-blocked-current", "user", issued_image, _perm_blocked_current, False),
    State("card-blocked", "user", lambda a: blocked_image(a, "card"), _sel, False),
    State("factory", "user", lambda a: factory_image(a, "user"), _nothing, False),
    State("factory-authenticated", "user", lambda a: factory_image(a, "user"), _auth, False),
    State("mid-personalisation", "user", mid_perso_image, _auth_in_adf, False),
    State("psam", "psam", psam_image, _psam_sel, False),
    State("psam-session", "psam", psam_image, _psam_session, False),
    State("psam-factory", "psam", lambda a: factory_image(a, "psam"), _nothing, False),
]


def money_view(image: dict[str, str], alg: Alg) -> tuple[str, ...]:
    """Balance, newest log record and both counters, read from a copy (unblocking it if needed)."""
    hn = Harness.from_image(image, "user", alg, ScriptedRng(0))
    r = hn.tx(select_name(AID_PURSE))
    if r.sw == 0x6283:
        assert hn.app_unblock().sw == 0x9000
    out = [hn.tx(GET_BALANCE).raw, hn.tx(rr(1, SFI_LOG)).raw]
    out.append(hn.tx(init_load_apdu(0)).raw[:6])
    out.append(hn.tx(init_purchase_apdu(0)).raw[:6])
    return tuple(hx(x) for x in out)


def check_response(raw: bytes, out: bytes) -> None:
    assert isinstance(out, bytes | bytearray), (hx(raw), type(out))
    assert len(out) >= 2, f"{hx(raw)} -> {hx(out)}"
    sw = (out[-2] << 8) | out[-1]
    assert SW.is_known(sw), f"{hx(raw)} -> unknown status {sw:04X}"
    assert sw != 0x6581, f"{hx(raw)} -> 6581 with no tear armed (an internal error)"
    if sw not in (0x9000, 0x6283):
        assert len(out) == 2, f"{hx(raw)} -> data with an error status: {hx(out)}"


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
@pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
def test_fuzz(alg: Alg, state: State) -> None:
    rnd = random.Random(f"{state.name}/{int(alg)}")
    image = state.image(alg)
    want = money_view(image, alg) if state.money else None
    sent = 0
    t0 = time.perf_counter()
    while sent < APDUS_PER_CASE:
        hn = Harness.from_image(image, state.kind, alg, ScriptedRng(rnd.randrange(1 << 30)))
        state.setup(hn)
        card = hn.card
        for _ in range(ROUND):
            if rnd.random() < 0.08:  # a fresh challenge first, so that line MACs are checked
                check_response(CHALLENGE, card.transmit(CHALLENGE))
            raw = fuzz_apdu(rnd)
            out = card.transmit(raw)
            check_response(raw, out)
            sent += 1
        if want is not None:
            assert money_view(hn.image(), alg) == want, f"{state.name}: money moved"
    STATS["apdus"] += sent
    STATS["seconds"] += time.perf_counter() - t0


def test_fuzz_volume() -> None:
    assert APDUS_PER_CASE * len(STATES) * len(ALGS) >= 100_000
