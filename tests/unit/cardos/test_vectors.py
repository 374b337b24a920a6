"""Known-answer vectors: every computation through cardos.crypto, every exchange on the real Card."""

from __future__ import annotations

from typing import Any

import pytest
from cardkit import (
    AID_PSAM,
    AID_PURSE,
    ALG_IDS,
    ALGS,
    CARD_NO,
    KT,
    PIN_PURSE,
    PSAM_SERIAL,
    SFI_CAPP,
    SFI_LOG,
    USER_SERIAL,
    VECTORS,
    Harness,
    ScriptedRng,
    atr_of,
    exchange,
    fci,
    h,
    log_record,
    psam_at,
    replay,
    rr,
    select_name,
    suite,
    user_before_load_exchange,
    user_before_purchase_exchange,
    verify,
)

from cardos import crypto
from cardos.crypto import Alg

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALG_PARAM = pytest.mark.parametrize("alg", ALGS, ids=ALG_IDS)
KEY_NAMES = ("DAMK", "DPK", "DLK", "DTK", "DPUK", "DRPK")


def i4(text: str) -> int:
    return int(text, 16)


# --- primitives ---


def test_sm4_reference() -> None:
    v = VECTORS["primitives"]["sm4_gbt32907"]
    assert crypto.encrypt_ecb(Alg.SM4, h(v["key"]), h(v["plaintext"])) == h(v["ciphertext"])
    assert crypto.decrypt_ecb(Alg.SM4, h(v["key"]), h(v["ciphertext"])) == h(v["plaintext"])


def test_des_reference() -> None:
    v = VECTORS["primitives"]["des"]
    assert crypto.encrypt_ecb(Alg.DES, h(v["key"]), h(v["plaintext"])) == h(v["ciphertext"])
    assert crypto.decrypt_ecb(Alg.DES, h(v["key"]), h(v["ciphertext"])) == h(v["plaintext"])


def test_retail_mac_core() -> None:
    """ISO 9797-1 MAC algorithm 3 core (no padding) built from the single-DES primitives."""
    v = VECTORS["primitives"]["iso9797_1_mac3_no_padding"]
    key = h(v["key"])
    kl, kr = key[:8], key[8:]
    data = v["data_ascii"].encode()
    o = b"\x00" * 8
    for i in range(0, len(data), 8):
        o = crypto.encrypt_ecb(Alg.DES, kl, bytes(a ^ b for a, b in zip(o, data[i : i + 8], strict=True)))
    out = crypto.encrypt_ecb(Alg.DES, kl, crypto.decrypt_ecb(Alg.DES, kr, o))
    assert out == h(v["mac_full_block"])


def test_retail_mac_of_protocol_equals_core_over_padded_data() -> None:
    """crypto.mac with a 16-byte DES key is the MAC3 core over pad(x), truncated to 4 bytes."""
    v = VECTORS["primitives"]["iso9797_1_mac3_no_padding"]
    key = h(v["key"])
    data = v["data_ascii"].encode()
    padded = crypto.pad(data, 8)
    o = b"\x00" * 8
    for i in range(0, len(padded), 8):
        o = crypto.encrypt_ecb(Alg.DES, key[:8], bytes(a ^ b for a, b in zip(o, padded[i : i + 8], strict=True)))
    want = crypto.encrypt_ecb(Alg.DES, key[:8], crypto.decrypt_ecb(Alg.DES, key[8:], o))[:4]
    assert crypto.mac(Alg.DES, key, data) == want


@pytest.mark.parametrize("name,block", [("block_8", 8), ("block_16", 16), ("full_block_8", 8)])
def test_pad(name: str, block: int) -> None:
    v = VECTORS["primitives"]["pad"][name]
    assert crypto.pad(h(v["input"]), block) == h(v["output"])


# --- per-suite computations ---


@ALG_PARAM
def test_suite_header(alg: Alg) -> None:
    s = suite(alg)
    assert s["alg"] == f"{int(alg):02X}"
    assert s["block_size"] == alg.block_size
    assert h(s["card_no"]) == CARD_NO
    assert h(s["mf_fci"]) == fci(h("3F00"))


@ALG_PARAM
def test_kcvs_of_transport_and_master_keys(alg: Alg) -> None:
    s = suite(alg)
    assert h(s["transport_key"]["KT"]) == KT
    assert crypto.kcv(alg, KT) == h(s["transport_key"]["kcv"])
    for name, mk in s["master_keys"].items():
        assert crypto.kcv(alg, h(mk["key"])) == h(mk["kcv"]), name


@ALG_PARAM
@pytest.mark.parametrize("name", KEY_NAMES)
def test_diversified_key(alg: Alg, name: str) -> None:
    s = suite(alg)
    v = s["diversified_keys"][name]
    master = h(s["master_keys"][v["master"]]["key"])
    card_no = h(s["card_no"])
    inverted = bytes(b ^ 0xFF for b in card_no)
    if alg is Alg.DES:
        assert [h(x) for x in v["cipher_inputs"]] == [card_no, inverted]
        halves = [crypto.encrypt_ecb(alg, master, h(x)) for x in v["cipher_inputs"]]
        assert b"".join(halves) == h(v["key"])
    else:
        assert [h(x) for x in v["cipher_inputs"]] == [card_no + inverted]
        assert crypto.encrypt_ecb(alg, master, card_no + inverted) == h(v["key"])
    assert crypto.diversify(alg, master, card_no) == h(v["key"])
    assert crypto.kcv(alg, h(v["key"])) == h(v["kcv"])


@ALG_PARAM
def test_tac_key(alg: Alg) -> None:
    s = suite(alg)
    dtk = h(s["diversified_keys"]["DTK"]["key"])
    tk = crypto.tac_key(alg, dtk)
    assert tk == h(s["tac_key"]["key"])
    assert crypto.kcv(alg, tk) == h(s["tac_key"]["kcv"])
    if alg is Alg.DES:
        assert tk == bytes(a ^ b for a, b in zip(dtk[:8], dtk[8:], strict=True))
    else:
        assert tk == dtk


def _session_cipher_input(alg: Alg, session_input: bytes) -> bytes:
    return session_input if alg is Alg.DES else session_input + h("8000000000000000")


@ALG_PARAM
def test_load(alg: Alg) -> None:
    s = suite(alg)
    v, inp = s["load"], s["load"]["inputs"]
    dlk = h(s["diversified_keys"]["DLK"]["key"])
    dtk = h(s["diversified_keys"]["DTK"]["key"])
    rand, seq, amount = h(inp["rand"]), i4(inp["online_seq"]), i4(inp["amount"])
    old, term_id, date4, time3 = i4(inp["old_balance"]), h(inp["term_id"]), h(inp["date"]), h(inp["time"])
    assert rand + seq.to_bytes(2, "big") + h("8000") == h(v["session_input"])
    assert _session_cipher_input(alg, h(v["session_input"])) == h(v["session_cipher_input"])
    assert crypto.encrypt_ecb(alg, dlk, h(v["session_cipher_input"])) == h(v["session_key"])
    sk = crypto.load_session_key(alg, dlk, rand, seq)
    assert sk == h(v["session_key"])
    assert crypto.session_key(alg, dlk, h(v["session_input"])) == sk
    assert old.to_bytes(4, "big") + amount.to_bytes(4, "big") + b"\x02" + term_id == h(v["mac1_input"])
    assert crypto.mac(alg, sk, h(v["mac1_input"])) == h(v["mac1"])
    assert crypto.load_mac1(alg, sk, old, amount, term_id) == h(v["mac1"])
    assert crypto.load_mac2(alg, sk, amount, term_id, date4, time3) == h(v["mac2"])
    assert crypto.mac(alg, sk, h(v["mac2_input"])) == h(v["mac2"])
    assert old + amount == i4(v["new_balance"])
    tac_input = h(v["new_balance"]) + seq.to_bytes(2, "big") + amount.to_bytes(4, "big") + b"\x02"
    assert tac_input + term_id + date4 + time3 == h(v["tac_input"])
    assert crypto.mac(alg, crypto.tac_key(alg, dtk), h(v["tac_input"])) == h(v["tac"])
    assert crypto.load_tac(alg, dtk, old + amount, seq, amount, term_id, date4, time3) == h(v["tac"])


@ALG_PARAM
@pytest.mark.parametrize("which", ["purchase", "capp_purchase"])
def test_purchase(alg: Alg, which: str) -> None:
    s = suite(alg)
    v, inp = s[which], s[which]["inputs"]
    dpk = h(s["diversified_keys"]["DPK"]["key"])
    dtk = h(s["diversified_keys"]["DTK"]["key"])
    rand, seq, term_seq = h(inp["rand"]), i4(inp["offline_seq"]), i4(inp["term_seq"])
    amount, txn_type, term_id = i4(inp["amount"]), i4(inp["type"]), h(inp["term_id"])
    date4, time3 = h(inp["date"]), h(inp["time"])
    assert txn_type == (6 if which == "purchase" else 9)
    assert rand + seq.to_bytes(2, "big") + term_seq.to_bytes(4, "big")[2:4] == h(v["session_input"])
    assert _session_cipher_input(alg, h(v["session_input"])) == h(v["session_cipher_input"])
    assert crypto.encrypt_ecb(alg, dpk, h(v["session_cipher_input"])) == h(v["session_key"])
    sk = crypto.purchase_session_key(alg, dpk, rand, seq, term_seq)
    assert sk == h(v["session_key"])
    mac1_input = amount.to_bytes(4, "big") + bytes((txn_type,)) + term_id + date4 + time3
    assert mac1_input == h(v["mac1_input"])
    assert crypto.purchase_mac1(alg, sk, amount, txn_type, term_id, date4, time3) == h(v["mac1"])
    assert amount.to_bytes(4, "big") == h(v["mac2_input"])
    assert crypto.purchase_mac2(alg, sk, amount) == h(v["mac2"])
    tac_input = amount.to_bytes(4, "big") + bytes((txn_type,)) + term_id + term_seq.to_bytes(4, "big") + date4 + time3
    assert tac_input == h(v["tac_input"])
    assert crypto.mac(alg, crypto.tac_key(alg, dtk), tac_input) == h(v["tac"])
    assert crypto.purchase_tac(alg, dtk, amount, txn_type, term_id, term_seq, date4, time3) == h(v["tac"])
    assert i4(inp["balance"]) - amount == i4(v["new_balance"])
    # the PSAM's view: DPK diversified from MPK gives the same MAC1
    mpk = h(s["master_keys"]["MPK"]["key"])
    psam_sk = crypto.purchase_session_key(alg, crypto.diversify(alg, mpk, CARD_NO), rand, seq, term_seq)
    assert crypto.purchase_mac1(alg, psam_sk, amount, txn_type, term_id, date4, time3) == h(v["mac1"])


@ALG_PARAM
def test_capp_record(alg: Alg) -> None:
    v = suite(alg)["capp_purchase"]["capp_record"]
    data = h(v["data"])
    assert len(data) == 48
    sfi, rec = i4(v["sfi"]), i4(v["record"])
    assert h(v["apdu"]) == bytes((0x80, 0xDC, rec, sfi << 3, len(data))) + data
    inp = suite(alg)["capp_purchase"]["inputs"]
    assert data[0] == 0x01  # tapped in
    assert data[5:11] == h(inp["term_id"])
    assert data[11:18] == h(inp["date"]) + h(inp["time"])


def _line_mac_case(alg: Alg, v: dict[str, Any]) -> None:
    s = suite(alg)
    damk = h(s["diversified_keys"][v["key"]]["key"])
    chal = h(v["challenge"])
    assert chal.ljust(alg.block_size, b"\x00") == h(v["iv"])
    if "padded_input" in v:
        assert crypto.pad(h(v["mac_input"]), alg.block_size) == h(v["padded_input"])
    assert crypto.mac(alg, damk, h(v["mac_input"]), h(v["iv"])) == h(v["mac"])
    assert crypto.line_mac(alg, damk, h(v["mac_input"]), chal) == h(v["mac"])
    assert h(v["apdu"]) == h(v["mac_input"]) + h(v["mac"])
    # Lc (5th byte) counts the 4 MAC bytes
    assert h(v["apdu"])[4] == len(h(v["apdu"])) - 5


@ALG_PARAM
@pytest.mark.parametrize("which", ["line_mac", "line_mac_update_binary", "line_mac_challenge8"])
def test_line_mac(alg: Alg, which: str) -> None:
    _line_mac_case(alg, suite(alg)[which])


@ALG_PARAM
def test_external_authenticate(alg: Alg) -> None:
    v = suite(alg)["external_authenticate"]
    chal = h(v["challenge"])
    assert chal.ljust(alg.block_size, b"\x00") == h(v["cipher_input"])
    assert crypto.encrypt_ecb(alg, KT, h(v["cipher_input"]))[:8] == h(v["cryptogram"])
    assert crypto.external_auth_cryptogram(alg, KT, chal) == h(v["cryptogram"])
    assert h(v["apdu"]) == h("0082001008") + h(v["cryptogram"])


@ALG_PARAM
@pytest.mark.parametrize("which", ["put_key", "put_key_psam"])
def test_put_key(alg: Alg, which: str) -> None:
    v = suite(alg)[which]
    key = h(v["key"])
    wrapped = crypto.wrap_key(alg, KT, key)
    if "wrapped_key" in v:
        assert wrapped == h(v["wrapped_key"])
    assert crypto.kcv(alg, key) == h(v["kcv"])
    data = h(v["version"]) + h(v["alg"]) + h(v["tries"]) + wrapped + h(v["kcv"])
    assert data == h(v["data"])
    idx = h(v["index"].split()[0])
    assert h(v["apdu"]) == h("80D4") + h(v["usage"]) + idx + bytes((len(data),)) + data
    assert crypto.unwrap_key(alg, KT, wrapped, h(v["kcv"])) == key
    with pytest.raises(crypto.MacError):
        crypto.unwrap_key(alg, KT, wrapped, bytes(3))


@ALG_PARAM
def test_reload_pin(alg: Alg) -> None:
    s = suite(alg)
    v = s["reload_pin"]
    drpk = h(s["diversified_keys"]["DRPK"]["key"])
    assert h(v["challenge"]).ljust(alg.block_size, b"\x00") == h(v["iv"])
    assert h(v["mac_input"]) == h(v["new_pin"])
    assert crypto.mac(alg, drpk, h(v["new_pin"]), h(v["iv"])) == h(v["mac"])
    new = h(v["new_pin"])
    assert h(v["apdu"]) == h("805E0000") + bytes((len(new) + 4,)) + new + h(v["mac"])


@ALG_PARAM
def test_atr_rule(alg: Alg) -> None:
    a = suite(alg)["atr"]
    for which, serial in (("user_card", USER_SERIAL), ("psam", PSAM_SERIAL)):
        assert h(a[which]["chip_serial"]) == serial
        assert atr_of(serial) == h(a[which]["atr"])


@ALG_PARAM
def test_exchange_put_keys_are_the_diversified_keys_wrapped(alg: Alg) -> None:
    """Every PUT KEY of the user personalisation wraps the diversified key of its usage, with its KCV."""
    s = suite(alg)
    by_usage = {int(v["usage"], 16): h(v["key"]) for v in s["diversified_keys"].values()}
    for step in exchange(alg, "personalise_user_card"):
        if step["name"] != "PUT KEY":
            continue
        cmd = h(step["command"])
        usage, data = cmd[2], cmd[5:]
        key = by_usage[usage]
        assert data == bytes((1, int(alg), 0x0F)) + crypto.wrap_key(alg, KT, key) + crypto.kcv(alg, key)
    psam_put = [st for st in exchange(alg, "personalise_psam") if st["name"] == "PUT KEY"]
    assert [h(st["command"]) for st in psam_put] == [h(s["put_key_psam"]["apdu"])]


@ALG_PARAM
def test_exchanges_agree_with_the_computations(alg: Alg) -> None:
    s = suite(alg)
    ea = [st for st in exchange(alg, "personalise_user_card") if st["name"] == "EXTERNAL AUTHENTICATE"]
    assert h(ea[0]["command"]) == h(s["external_authenticate"]["apdu"])
    load = {st["name"]: st for st in exchange(alg, "load")}
    assert h(load["INITIALIZE FOR LOAD"]["response"])[12:16] == h(s["load"]["mac1"])
    assert h(load["CREDIT FOR LOAD"]["command"])[12:16] == h(s["load"]["mac2"])
    assert h(load["CREDIT FOR LOAD"]["response"])[:4] == h(s["load"]["tac"])
    for which in ("purchase", "capp_purchase"):
        steps = {st["name"]: st for st in exchange(alg, which)}
        assert h(steps["INIT SAM FOR PURCHASE"]["response"])[4:8] == h(s[which]["mac1"])
        debit = h(steps["DEBIT FOR PURCHASE"]["response"])
        assert debit == h(s[which]["tac"]) + h(s[which]["mac2"]) + h("9000")
    assert h(exchange(alg, "application_block")[-1]["command"]) == h(s["line_mac"]["apdu"])
    assert h(exchange(alg, "reload_pin")[-1]["command"]) == h(s["reload_pin"]["apdu"])


# --- the exchanges on the real card ---


@pytest.fixture
def _card_api() -> None:
    pytest.importorskip("cardos.card", reason="cardos/card.py is not there yet")


def _assert_replay(results: list[tuple[str, str, str]]) -> None:
    bad = [f"{name}: expected {want}, got {got}" for name, want, got in results if want != got]
    assert not bad, "\n".join(bad)


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_atr_of_cards(alg: Alg) -> None:
    a = suite(alg)["atr"]
    assert Harness.factory("user", alg).card.atr == h(a["user_card"]["atr"])
    assert Harness.factory("psam", alg).card.atr == h(a["psam"]["atr"])


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_personalise_user_card(alg: Alg) -> None:
    card = Harness.factory("user", alg, ScriptedRng(1))
    _assert_replay(replay(exchange(alg, "personalise_user_card"), {"card": card}))
    card.reset()
    assert card.card.atr == h(suite(alg)["atr"]["user_card"]["atr"])
    assert card.select_purse().raw == fci(AID_PURSE) + h("9000")
    assert card.ok("00B095001E") == h(exchange(alg, "load")[1]["response"])[:-2]
    assert card.balance() == 0


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_personalise_psam(alg: Alg) -> None:
    ps = Harness.factory("psam", alg, ScriptedRng(2))
    _assert_replay(replay(exchange(alg, "personalise_psam"), {"psam": ps}))
    ps.reset()
    assert ps.select_psam().raw == fci(AID_PSAM) + h("9000")
    # the first INIT SAM returns term_seq 00000001 (spec §3)
    seq, _ = ps.init_sam(h("01020304"), 0, 0)
    assert seq == 1


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_load_and_proof(alg: Alg) -> None:
    card = user_before_load_exchange(alg, ScriptedRng(3))
    _assert_replay(replay(exchange(alg, "load"), {"card": card}))
    _assert_replay(replay(exchange(alg, "load_proof"), {"card": card}))
    v = suite(alg)["load"]
    inp = v["inputs"]
    assert card.balance() == i4(v["new_balance"])
    assert card.tx(rr(1, SFI_LOG)).data == log_record(
        5, i4(inp["amount"]), 2, h(inp["term_id"]), h(inp["date"]), h(inp["time"])
    )
    # the next load uses online_seq 6
    assert card.init_load(0).online_seq == 6


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_purchase_and_proof(alg: Alg) -> None:
    card = user_before_purchase_exchange(alg, 7, ScriptedRng(4))
    ps = psam_at(alg, 0x101, ScriptedRng(5))
    _assert_replay(replay(exchange(alg, "purchase"), {"card": card, "psam": ps}))
    _assert_replay(replay(exchange(alg, "purchase_proof"), {"card": card}))
    v = suite(alg)["purchase"]
    inp = v["inputs"]
    assert card.balance() == i4(v["new_balance"])
    assert card.tx(rr(1, SFI_LOG)).data == log_record(
        7, i4(inp["amount"]), 6, h(inp["term_id"]), h(inp["date"]), h(inp["time"])
    )
    assert card.init_purchase(0).offline_seq == 8


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_capp_purchase_and_proof(alg: Alg) -> None:
    card = user_before_purchase_exchange(alg, 8, ScriptedRng(6))
    ps = psam_at(alg, 0x102, ScriptedRng(7))
    _assert_replay(replay(exchange(alg, "capp_purchase"), {"card": card, "psam": ps}))
    _assert_replay(replay(exchange(alg, "capp_purchase_proof"), {"card": card}))
    v = suite(alg)["capp_purchase"]
    inp = v["inputs"]
    assert card.balance() == i4(v["new_balance"])
    assert card.tx(rr(1, SFI_CAPP)).data == h(v["capp_record"]["data"])
    assert card.tx(rr(1, SFI_LOG)).data == log_record(8, 0, 9, h(inp["term_id"]), h(inp["date"]), h(inp["time"]))


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_reload_pin(alg: Alg) -> None:
    from cardkit import personalised

    card = personalised("user", alg, ScriptedRng(8))
    _assert_replay(replay(exchange(alg, "reload_pin"), {"card": card}))
    assert card.tx(verify(PIN_PURSE)).sw == 0x9000
    assert card.tx(verify(h("999999"))).sw == 0x63C2


@ALG_PARAM
@pytest.mark.usefixtures("_card_api")
def test_exchange_application_block(alg: Alg) -> None:
    from cardkit import personalised

    card = personalised("user", alg, ScriptedRng(9))
    _assert_replay(replay(exchange(alg, "application_block"), {"card": card}))
    card.reset()
    assert card.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("6283")
