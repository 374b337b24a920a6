"""Tearing (spec §2.4, Tearing): a tear before any physical write leaves the whole effect or none of it.

For each command: run it untorn and count its physical writes N; then for every k in 1..N rebuild the same
starting card from its memory image, make the k-th write fail, send the command (PowerLoss), power on, and
check that the card is wholly before or wholly after, both by what it answers (balance, counters, log,
CAPP records, proofs, PIN tries...) and by its committed memory cells.
"""

from __future__ import annotations

import functools
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
    KT,
    PIN_PURSE,
    SFI_CAPP,
    SFI_LOG,
    SFI_PUBLIC,
    Harness,
    ScriptedRng,
    apdu,
    capp_apdu,
    exchange,
    ext_auth_apdu,
    h,
    hx,
    init_load_apdu,
    init_purchase_apdu,
    personalised,
    proof_apdu,
    rb,
    rr,
    select_fid,
    select_name,
    suite,
    verify,
)

from cardos.crypto import Alg
from cardos.memory import PowerLoss

pytest.importorskip("cardos.card", reason="cardos/card.py is not there yet")

ALG_PARAM = pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
N_TABLE: dict[tuple[str, str], int] = {}
PERSO_COMMANDS = {"CREATE DF", "CREATE EF", "PUT KEY", "PUT PIN", "WRITE DATA", "INIT PURSE", "FINISH"}


@pytest.fixture(scope="module", autouse=True)
def _print_table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not N_TABLE:
        return
    reporter.write_line("")
    reporter.write_line("tearing: physical writes N per command (des / sm4)")
    names = list(dict.fromkeys(name for name, _ in N_TABLE))
    for name in names:
        des, sm4 = N_TABLE.get((name, "des"), "-"), N_TABLE.get((name, "sm4"), "-")
        reporter.write_line(f"  {name:<48} {des!s:>4} {sm4!s:>4}")


# --- observation ---


def cells(hn: Harness) -> dict[str, str]:
    """The committed cells (journal cells left out)."""
    return {k: v for k, v in hn.card.memory.to_image().items() if not k.startswith("~")}


def _r(hn: Harness, raw: bytes | str, keep: int | None = None) -> str:
    r = hn.tx(raw)
    data = r.data if keep is None else r.data[:keep]
    return f"{hx(data)}/{r.sw:04X}"


def probe_purse(hn: Harness) -> list[str]:
    """What a terminal can see of the purse application (on a clone: the probe does not disturb)."""
    out = [_r(hn, select_name(AID_PURSE)), _r(hn, GET_BALANCE)]
    out += [_r(hn, rr(rec, SFI_LOG)) for rec in range(1, 11)]
    out += [_r(hn, rr(rec, SFI_CAPP)) for rec in range(1, 5)]
    out += [_r(hn, rb(SFI_PUBLIC)), _r(hn, rb(0x16))]
    out += [_r(hn, proof_apdu(t, seq)) for t in (2, 6, 9) for seq in range(3)]
    out.append(_r(hn, init_load_apdu(0), keep=6))  # balance and online_seq (not rand / MAC1)
    out.append(_r(hn, init_purchase_apdu(0), keep=6))  # balance and offline_seq
    return out


def probe_files(hn: Harness) -> list[str]:
    """What can be seen of a card in any life-cycle state without keys."""
    out = [_r(hn, select_fid(0x3F00))]
    for aid, sfis in ((AID_PURSE, (0x15, 0x16)), (AID_SSC, (0x05,)), (AID_PSAM, (0x16,))):
        out.append(_r(hn, select_name(aid)))
        out += [_r(hn, rb(sfi)) for sfi in sfis]
        if aid == AID_PURSE:
            out += [_r(hn, rr(1, SFI_CAPP)), _r(hn, rr(4, SFI_CAPP)), _r(hn, rr(1, SFI_LOG)), _r(hn, GET_BALANCE)]
    return out


def probe_pin_tries(hn: Harness) -> list[str]:
    hn.ok(select_name(AID_PURSE))
    return [_r(hn, verify(h("999999")))]


def probe_term_seq(hn: Harness) -> list[str]:
    hn.ok(select_name(AID_PSAM))
    return [_r(hn, hn.init_sam_apdu(h("01020304"), 1, 0), keep=4)]


def probe_ext_auth_left(hn: Harness) -> list[str]:
    """How many failed EXTERNAL AUTHENTICATEs the card still takes before it answers 6983."""
    left = 0
    for _ in range(6):
        chal = hn.challenge(8)
        sw = hn.sw(ext_auth_apdu(hn.alg, chal, key=h("55" * 16)))
        if sw != 0x6300:
            return [f"{left}/{sw:04X}"]
        left += 1
    return [f"{left}/-"]


# --- scenarios ---


@dataclass
class Scenario:
    name: str
    kind: str
    image: dict[str, str]
    setup: Callable[[Harness], bytes]
    probe: Callable[[Harness], list[str]]
    expect: int = 0x9000
    check_cells: bool = True
    must_differ: bool = True


def run_scenario(s: Scenario, alg: Alg) -> int:
    def start() -> tuple[Harness, bytes]:
        hn = Harness.from_image(s.image, s.kind, alg, ScriptedRng(99))
        return hn, s.setup(hn)

    hn, _ = start()
    hn.reset()
    before = (cells(hn), s.probe(hn.clone()))

    hn, cmd = start()
    w0 = hn.writes
    r = hn.tx(cmd)
    n = hn.writes - w0
    assert r.sw == s.expect, f"{s.name}: untorn answer {r}"
    hn.reset()
    after = (cells(hn), s.probe(hn.clone()))
    assert n > 0, f"{s.name}: no physical write"
    assert before[0] != after[0]
    if s.must_differ:
        assert before[1] != after[1], f"{s.name}: the probe cannot tell before from after"
    hn, cmd = start()
    w0 = hn.writes
    assert hn.tx(cmd).sw == s.expect
    assert hn.writes - w0 == n, "the command is deterministic"

    for k in range(1, n + 1):
        hn, cmd = start()
        hn.card.memory.arm_tear(k)
        with pytest.raises(PowerLoss):
            hn.card.transmit(cmd)
        hn.reset()
        got_cells = cells(hn)
        got_probe = s.probe(hn.clone())
        where = f"{s.name}: tear before write {k} of {n}"
        assert got_probe in (before[1], after[1]), f"{where}: neither before nor after:\n{got_probe}"
        if s.check_cells:
            assert (got_cells, got_probe) in (before, after), f"{where}: memory neither before nor after"
    return n


@functools.cache
def issued_image(alg: Alg) -> dict[str, str]:
    """Personalised, 10000 fen loaded (online 0), 100 fen spent (offline 0), a CAPP record written."""
    hn = personalised("user", alg, ScriptedRng(11))
    hn.select_purse()
    hn.load(10_000)
    hn.purchase(100, term_seq=1)
    hn.purchase(0, 9, term_seq=2, capp=[(1, b"\x01" * 48)])
    return hn.image()


@functools.cache
def psam_image(alg: Alg) -> dict[str, str]:
    ps = personalised("psam", alg, ScriptedRng(12))
    ps.ok(select_name(AID_PSAM))
    ps.bump_term_seq(5)
    return ps.image()


@functools.cache
def factory_image(alg: Alg) -> dict[str, str]:
    hn = Harness.factory("user", alg, ScriptedRng(13))
    chal = hn.challenge(8)
    assert hn.sw(ext_auth_apdu(alg, chal, key=h("55" * 16))) == 0x6300  # one failure already counted
    return hn.image()


def _select_purse(hn: Harness) -> None:
    hn.ok(select_name(AID_PURSE))


def transaction_scenarios(alg: Alg) -> list[Scenario]:
    img = issued_image(alg)

    def load(hn: Harness) -> bytes:
        _select_purse(hn)
        info = hn.init_load(500, rand=h("0A0B0C0D"))
        return hn.credit_apdu(info, 500, time3=h("153000"))

    def purchase(hn: Harness) -> bytes:
        _select_purse(hn)
        info = hn.init_purchase(250, rand=h("0E0F1011"))
        return hn.debit_apdu(info, 250, term_seq=7, time3=h("153100"))

    def capp(hn: Harness) -> bytes:
        _select_purse(hn)
        info = hn.init_purchase(40, 9, rand=h("12131415"))
        hn.ok(capp_apdu(1, b"\x02" * 48))
        hn.ok(capp_apdu(3, b"\x03" * 48))
        return hn.debit_apdu(info, 40, 9, term_seq=8, time3=h("153200"))

    def capp_zero(hn: Harness) -> bytes:
        _select_purse(hn)
        info = hn.init_purchase(0, 9, rand=h("16171819"))
        hn.ok(capp_apdu(1, b"\x04" * 48))
        return hn.debit_apdu(info, 0, 9, term_seq=9, time3=h("153300"))

    def wrong_verify(hn: Harness) -> bytes:
        _select_purse(hn)
        return verify(h("999999"))

    def update_binary(hn: Harness) -> bytes:
        _select_purse(hn)
        v = suite(alg)["line_mac_update_binary"]
        hn.challenge(4, h(v["challenge"]))
        return h(v["apdu"])

    def app_block(hn: Harness) -> bytes:
        _select_purse(hn)
        v = suite(alg)["line_mac"]
        hn.challenge(4, h(v["challenge"]))
        return h(v["apdu"])

    def app_block_perm(hn: Harness) -> bytes:
        _select_purse(hn)
        return hn.mac_apdu(0x84, 0x1E, 0x00, 0x01, b"", hn.challenge(4))

    def card_block(hn: Harness) -> bytes:
        _select_purse(hn)
        return hn.mac_apdu(0x84, 0x16, 0x00, 0x00, b"", hn.challenge(4))

    def change_pin_wrong(hn: Harness) -> bytes:
        _select_purse(hn)
        return apdu(0x80, 0x5E, 0x01, 0x00, h("111111FF222222"))

    def reload_pin(hn: Harness) -> bytes:
        _select_purse(hn)
        return hn.reload_pin_apdu(h("2468"), hn.challenge(4))

    def probe_reload(hn: Harness) -> list[str]:
        hn.ok(select_name(AID_PURSE))
        return [_r(hn, verify(h("2468")))]

    return [
        Scenario("CREDIT FOR LOAD", "user", img, load, probe_purse),
        Scenario("DEBIT FOR PURCHASE", "user", img, purchase, probe_purse),
        Scenario("DEBIT FOR CAPP PURCHASE (2 records)", "user", img, capp, probe_purse),
        Scenario("DEBIT FOR CAPP PURCHASE (0 fen)", "user", img, capp_zero, probe_purse),
        Scenario("VERIFY (wrong PIN)", "user", img, wrong_verify, probe_pin_tries, expect=0x63C2),
        Scenario("CHANGE PIN (wrong old PIN)", "user", img, change_pin_wrong, probe_pin_tries, expect=0x63C2),
        Scenario("UPDATE BINARY", "user", img, update_binary, probe_purse),
        Scenario("APPLICATION BLOCK", "user", img, app_block, probe_purse),
        Scenario("APPLICATION BLOCK (permanent)", "user", img, app_block_perm, probe_purse),
        Scenario("CARD BLOCK", "user", img, card_block, probe_purse),
        Scenario("RELOAD PIN", "user", img, reload_pin, probe_reload),
    ]


@ALG_PARAM
@pytest.mark.parametrize("index", range(11))
def test_tearing_transactions(alg: Alg, index: int) -> None:
    s = transaction_scenarios(alg)[index]
    N_TABLE[(s.name, ALG_IDS[ALGS.index(alg)])] = run_scenario(s, alg)


@ALG_PARAM
def test_tearing_psam_init_sam(alg: Alg) -> None:
    def init_sam(hn: Harness) -> bytes:
        hn.ok(select_name(AID_PSAM))
        return hn.init_sam_apdu(h("0A0B0C0D"), 3, 99)

    s = Scenario("INIT SAM FOR PURCHASE (PSAM)", "psam", psam_image(alg), init_sam, probe_term_seq)
    N_TABLE[(s.name, ALG_IDS[ALGS.index(alg)])] = run_scenario(s, alg)


@ALG_PARAM
def test_tearing_external_authenticate_failure(alg: Alg) -> None:
    def wrong(hn: Harness) -> bytes:
        return ext_auth_apdu(alg, hn.challenge(8), key=h("66" * 16))

    s = Scenario("EXTERNAL AUTHENTICATE (wrong)", "user", factory_image(alg), wrong, probe_ext_auth_left, expect=0x6300)
    N_TABLE[(s.name, ALG_IDS[ALGS.index(alg)])] = run_scenario(s, alg)


# --- no free guess: a try is written before the comparison, whatever the PIN ---


@ALG_PARAM
def test_no_free_pin_guess(alg: Alg) -> None:
    """A right VERIFY makes the same first writes as a wrong one: a tear cannot tell them apart."""
    img = issued_image(alg)

    def start(pin: bytes) -> tuple[Harness, bytes]:
        hn = Harness.from_image(img, "user", alg, ScriptedRng(5))
        _select_purse(hn)
        return hn, verify(pin)

    hn, cmd = start(h("999999"))
    w0 = hn.writes
    assert hn.tx(cmd).sw == 0x63C2
    n_wrong = hn.writes - w0
    assert n_wrong > 0
    hn, cmd = start(PIN_PURSE)
    w0 = hn.writes
    assert hn.tx(cmd).sw == 0x9000
    assert hn.writes - w0 >= n_wrong, "a right VERIFY writes the try first too"
    for pin in (PIN_PURSE, h("999999")):
        for k in range(1, n_wrong + 1):
            hn, cmd = start(pin)
            hn.card.memory.arm_tear(k)
            with pytest.raises(PowerLoss):
                hn.card.transmit(cmd)
            hn.reset()
            tries = probe_pin_tries(hn.clone())
            assert tries in (["/63C2"], ["/63C1"]), (hx(pin), k, tries)  # never a try regained


@ALG_PARAM
def test_no_free_guess_after_a_wrong_try(alg: Alg) -> None:
    """With 1 try left, a torn VERIFY never leaves more than 1 try nor unblocks anything."""
    base = Harness.from_image(issued_image(alg), "user", alg, ScriptedRng(6))
    _select_purse(base)
    assert base.sw(verify(h("999999"))) == 0x63C2
    assert base.sw(verify(h("999999"))) == 0x63C1
    img = base.image()
    for pin in (PIN_PURSE, h("999999")):
        for k in range(1, 7):
            hn = Harness.from_image(img, "user", alg, ScriptedRng(7))
            _select_purse(hn)
            hn.card.memory.arm_tear(k)
            try:
                r = hn.tx(verify(pin))
            except PowerLoss:
                hn.reset()
                assert probe_pin_tries(hn.clone()) in (["/63C0"], ["/6983"]), (hx(pin), k)
                continue
            hn.card.memory.arm_tear(None)
            assert r.sw in (0x9000, 0x63C0), (hx(pin), k, r)  # answered before the k-th write
            break


@ALG_PARAM
def test_no_free_external_authenticate_guess(alg: Alg) -> None:
    img = factory_image(alg)

    def start(key: bytes) -> tuple[Harness, bytes]:
        hn = Harness.from_image(img, "user", alg, ScriptedRng(8))
        return hn, ext_auth_apdu(alg, hn.challenge(8), key=key)

    hn, cmd = start(h("66" * 16))
    w0 = hn.writes
    assert hn.tx(cmd).sw == 0x6300
    n_wrong = hn.writes - w0
    assert n_wrong > 0
    for k in range(1, n_wrong + 1):
        hn, cmd = start(KT)
        hn.card.memory.arm_tear(k)
        with pytest.raises(PowerLoss):
            hn.card.transmit(cmd)
        hn.reset()
        assert probe_ext_auth_left(hn.clone()) in (["4/6983"], ["3/6983"]), k


# --- personalisation, every command of §2.5 ---


@dataclass
class PersoStep:
    index: int
    name: str
    image: dict[str, str]
    df: int
    ef: int | None
    command: str


@functools.cache
def perso_steps(alg: Alg, kind: str) -> tuple[PersoStep, ...]:
    """The vector personalisation with the image and current DF/EF before each step."""
    steps = exchange(alg, "personalise_user_card" if kind == "user" else "personalise_psam")
    hn = Harness.factory(kind, alg, ScriptedRng(14))
    df, ef = 0x3F00, None
    out = []
    for i, step in enumerate(steps):
        cmd = h(step["command"])
        out.append(PersoStep(i, step["name"], hn.image(), df, ef, step["command"]))
        if step["name"] == "GET CHALLENGE":
            hn.rng.push(h(step["response"])[:-2])
        assert hn.tx(cmd).raw == h(step["response"]), step["name"]
        if step["name"] == "SELECT" or step["name"] == "CREATE DF":
            df, ef = int.from_bytes(cmd[5:7], "big"), None
        elif step["name"] == "CREATE EF":
            ef = int.from_bytes(cmd[5:7], "big")
    return tuple(s for s in out if s.name in PERSO_COMMANDS)


def _perso_ids(kind: str) -> list[str]:
    return [f"{s.index:02d}-{s.name.replace(' ', '_')}" for s in perso_steps(Alg.DES, kind)]


def _perso_case(alg: Alg, kind: str, step: PersoStep) -> None:
    def setup(hn: Harness) -> bytes:
        hn.ok(select_fid(0x3F00))
        chal = hn.challenge(8)
        hn.ok(ext_auth_apdu(alg, chal))
        if step.df != 0x3F00:
            hn.ok(select_fid(step.df))
        if step.ef is not None:
            hn.ok(select_fid(step.ef))
        return h(step.command)

    name = f"{kind} perso {step.index:02d} {step.name}"
    s = Scenario(name, kind, step.image, setup, probe_files, must_differ=False)
    N_TABLE[(name, ALG_IDS[ALGS.index(alg)])] = run_scenario(s, alg)


@ALG_PARAM
@pytest.mark.parametrize("pos", range(len(_perso_ids("user"))), ids=_perso_ids("user"))
def test_tearing_personalise_user_card(alg: Alg, pos: int) -> None:
    _perso_case(alg, "user", perso_steps(alg, "user")[pos])


@ALG_PARAM
@pytest.mark.parametrize("pos", range(len(_perso_ids("psam"))), ids=_perso_ids("psam"))
def test_tearing_personalise_psam(alg: Alg, pos: int) -> None:
    _perso_case(alg, "psam", perso_steps(alg, "psam")[pos])


def test_80dc_and_initialize_write_nothing() -> None:
    """80DC holds its record in the cache: no physical write (spec §2.4, step 2)."""
    for alg in ALGS:
        hn = Harness.from_image(issued_image(alg), "user", alg, ScriptedRng(3))
        _select_purse(hn)
        hn.init_purchase(0, 9)
        w0 = hn.writes
        hn.ok(capp_apdu(1, b"\x09" * 48))
        hn.ok(capp_apdu(2, b"\x0a" * 48))
        assert hn.writes == w0
