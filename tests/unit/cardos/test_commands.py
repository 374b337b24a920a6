"""Every command of spec §2.4, §2.5 and §3: success and each status word the spec gives it."""

from __future__ import annotations

import pytest
from cardkit import (
    AID_PSAM,
    AID_PURSE,
    AID_SSC,
    CARD_NO,
    EF15_DATA,
    GET_BALANCE,
    KT,
    MF_FCI,
    PIN_PURSE,
    PIN_SSC,
    PURSE_LIMIT,
    SFI_CAPP,
    SFI_LOG,
    SFI_PUBLIC,
    TERM_ID_LOAD,
    TERM_ID_PSAM,
    Harness,
    ScriptedRng,
    apdu,
    authenticate,
    capp_apdu,
    create_df_apdu,
    create_ef_apdu,
    ext_auth_apdu,
    fci,
    get_challenge,
    h,
    hx,
    init_load_apdu,
    init_purchase_apdu,
    log_record,
    personalised,
    proof_apdu,
    put_key_apdu,
    rb,
    rr,
    select_fid,
    select_name,
    suite,
    verify,
)

from cardos import crypto
from cardos.crypto import Alg

pytest.importorskip("cardos.card", reason="cardos/card.py is not there yet")

OK = 0x9000
SFI_ABSENT = 0x14
DATE, TIME_ = h("20250301"), h("120000")
DATE_TIME = DATE + TIME_

# extra files put into ADF 1001 by the ``ext`` fixture (spec §2.5 CREATE EF / WRITE DATA)
EXTRA_FILES = [
    hx(create_ef_apdu(0x0019, 0x19, 0x01, h("0010"), 0x00, 0x01)),  # write needs the PIN (and the MAC)
    "80D6000010" + "000102030405060708090A0B0C0D0E0F",
    hx(create_ef_apdu(0x001A, 0x1A, 0x01, h("0008"), 0x00, 0xFF)),  # never written from outside
    hx(create_ef_apdu(0x001B, 0x1B, 0x01, h("0008"), 0x02, 0x02)),  # read 02: never readable
    hx(create_ef_apdu(0x001C, 0x1C, 0x01, h("0008"), 0xFF, 0x02)),  # read FF: never readable
    hx(create_ef_apdu(0x001D, 0x1D, 0x01, h("0008"), 0x01, 0x02)),  # read needs the PIN
    "80D6000008" + "1122334455667788",
    hx(create_ef_apdu(0x001E, 0x1E, 0x02, h("0802"), 0x00, 0x02)),  # a second linear file, 2 x 8
    hx(create_ef_apdu(0x0012, 0x12, 0x01, h("0008"), 0x00, 0x00)),  # write 00: still the line MAC
    hx(create_ef_apdu(0x0013, 0x13, 0x01, h("012C"), 0x00, 0x02)),  # 300 bytes
    "80D60000FF" + hx(bytes(i % 251 for i in range(255))),
    "80D600FF2D" + hx(bytes(i % 251 for i in range(255, 300))),
]
BIG = bytes(i % 251 for i in range(300))


@pytest.fixture
def ext(alg: Alg) -> Harness:
    """The issued user card with the extra files of EXTRA_FILES, purse selected."""
    hn = personalised("user", alg, ScriptedRng(77), EXTRA_FILES)
    assert hn.select_purse().sw == OK
    return hn


def capp_record(byte: int) -> bytes:
    return bytes((byte,)) * 48


# ======================================================================================================
# §0: APDU format and Le
# ======================================================================================================


@pytest.mark.parametrize("raw", ["", "80", "805C00", "00A4040008A000", "00A40400020000AA00", "805C000204AA"])
def test_malformed_apdu_answers_6700(user: Harness, raw: str) -> None:
    assert user.tx(raw).raw == h("6700")


def test_get_balance_le(user: Harness) -> None:
    for raw in ("805C000204", "805C000200", "805C0002"):
        r = user.tx(raw)
        assert r.sw == OK and r.data == bytes(4), raw
    for raw in ("805C000205", "805C000203", "805C000208"):
        assert user.tx(raw).raw == h("6700"), raw


def test_le_of_commands_with_data(funded: Harness) -> None:
    card = funded
    for le in (None, 0x00, 0x10):
        assert card.tx(init_load_apdu(0, le=le)).sw == OK
    assert card.tx(init_load_apdu(0, le=0x0F)).sw == 0x6700
    assert card.tx(init_load_apdu(0, le=0x11)).sw == 0x6700
    for le in (None, 0x00, 0x0F):
        assert card.tx(init_purchase_apdu(0, le=le)).sw == OK
    assert card.tx(init_purchase_apdu(0, le=0x10)).sw == 0x6700
    for le in (None, 0x00, 0x08):
        assert card.tx(proof_apdu(2, 0, le=le)).sw == OK
    assert card.tx(proof_apdu(2, 0, le=0x04)).sw == 0x6700
    assert card.tx(verify(PIN_PURSE) + b"\x00").sw == OK
    assert card.tx(verify(PIN_PURSE) + b"\x01").sw == 0x6700
    fci_purse = fci(AID_PURSE)
    assert card.tx(select_name(AID_PURSE, le=0)).raw == fci_purse + h("9000")
    assert card.tx(select_name(AID_PURSE, le=len(fci_purse))).raw == fci_purse + h("9000")
    assert card.tx(select_name(AID_PURSE, le=5)).sw == 0x6700


@pytest.mark.parametrize("le", [None, 0x00, 0x04])
def test_credit_for_load_le(funded: Harness, le: int | None) -> None:
    info = funded.init_load(5)
    cmd = funded.credit_apdu(info, 5)[:-1]
    if le is not None:
        cmd += bytes((le,))
    r = funded.tx(cmd)
    assert r.sw == OK and len(r.data) == 4
    assert funded.balance() == 10_005


def test_credit_for_load_wrong_le_is_a_wrong_lc_and_ends_the_load(funded: Harness) -> None:
    info = funded.init_load(5)
    cmd = funded.credit_apdu(info, 5)
    assert funded.tx(cmd[:-1] + b"\x08").raw == h("6700")
    assert funded.tx(cmd).raw == h("6985")
    assert funded.balance() == 10_000


@pytest.mark.parametrize("le", [None, 0x00, 0x08])
def test_debit_le(funded: Harness, le: int | None) -> None:
    info = funded.init_purchase(7)
    cmd = funded.debit_apdu(info, 7)[:-1]
    if le is not None:
        cmd += bytes((le,))
    r = funded.tx(cmd)
    assert r.sw == OK and len(r.data) == 8
    assert funded.balance() == 9_993


def test_get_challenge(user: Harness) -> None:
    a = user.ok(get_challenge(4))
    b = user.ok(get_challenge(8))
    assert len(a) == 4 and len(b) == 8
    assert user.tx("0084000005").raw == h("6700")
    assert user.tx("0084000010").raw == h("6700")
    assert user.tx("0084010004").raw == h("6A86")
    assert user.tx("0084000104").raw == h("6A86")


def test_get_challenge_uses_the_card_rng(user: Harness) -> None:
    assert user.challenge(4, h("DEADBEEF")) == h("DEADBEEF")
    assert user.challenge(8, h("0011223344556677")) == h("0011223344556677")


def test_class_and_instruction(user: Harness) -> None:
    assert user.tx("A0B0950000").raw == h("6E00")
    assert user.tx("FFB0950000").raw == h("6E00")
    assert user.tx("80FE000000").raw == h("6D00")
    assert user.tx("00FE000000").raw == h("6D00")


# ======================================================================================================
# SELECT
# ======================================================================================================


def test_select_by_name(user: Harness) -> None:
    assert user.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("9000")
    assert user.tx(select_name(AID_SSC)).raw == fci(AID_SSC) + h("9000")
    assert user.tx(select_name(h("A000000632010106"))).raw == h("6A82")
    assert user.tx(select_name(AID_PSAM)).raw == h("6A82")


def test_select_by_fid(user: Harness) -> None:
    assert user.tx(select_fid(0x3F00)).raw == MF_FCI + h("9000")
    assert user.tx(select_fid(0x1001)).raw == fci(AID_PURSE) + h("9000")
    assert user.tx(select_fid(0x0015)).raw == h("9000")  # an EF: empty FCI
    assert user.tx(rb(None, 12, 8)).data == CARD_NO  # ... and it is current
    assert user.tx(select_fid(0x0016)).raw == h("9000")  # child of the current DF (EF selected)
    assert user.tx(select_fid(0x1002)).raw == fci(AID_SSC) + h("9000")  # child of the parent
    assert user.tx(select_fid(0x0015)).raw == h("6A82")  # not a child of 1002 nor of the MF
    assert user.tx(select_fid(0x0005)).raw == h("9000")
    assert user.tx(select_fid(0x3F00)).raw == MF_FCI + h("9000")  # 3F00 from anywhere
    assert user.tx(select_fid(0x0005)).raw == h("6A82")
    assert user.tx(select_fid(0x1234)).raw == h("6A82")


def test_select_wrong_p1_p2_and_lc(user: Harness) -> None:
    assert user.tx("00A40500023F00").raw == h("6A86")
    assert user.tx("00A40003023F00").raw == h("6A86")
    assert user.tx("00A40000033F0000").raw == h("6700")
    assert user.tx("00A40000013F").raw == h("6700")


def test_select_forgets_the_pin(user: Harness) -> None:
    assert user.select_ssc().sw == OK
    assert user.tx(rb(0x05)).raw == h("6982")
    assert user.verify_sw(PIN_SSC) == OK
    assert len(user.ok(rb(0x05))) == 64
    assert user.select_ssc().sw == OK
    assert user.tx(rb(0x05)).raw == h("6982")
    assert user.verify_sw(PIN_SSC) == OK
    user.reset()
    user.select_ssc()
    assert user.tx(rb(0x05)).raw == h("6982")


# ======================================================================================================
# READ BINARY / READ RECORD (§2.6)
# ======================================================================================================


def test_read_binary(user: Harness) -> None:
    assert user.ok(rb(SFI_PUBLIC, 0, 0x1E)) == EF15_DATA
    assert user.ok(rb(SFI_PUBLIC, 0, 0)) == EF15_DATA  # Le 00: to the end
    assert user.ok(rb(SFI_PUBLIC, 0, None)) == EF15_DATA  # no Le: to the end
    assert user.ok(rb(SFI_PUBLIC, 10, 0)) == EF15_DATA[10:]
    assert user.ok(rb(SFI_PUBLIC, 29, 1)) == EF15_DATA[29:]
    assert user.ok(rb(SFI_PUBLIC, 12, 8)) == CARD_NO
    assert user.tx(rb(SFI_PUBLIC, 30, 1)).raw == h("6B00")  # at the end
    assert user.tx(rb(SFI_PUBLIC, 30, 0)).raw == h("6B00")
    assert user.tx(rb(SFI_PUBLIC, 0x40, 1)).raw == h("6B00")  # past the end
    assert user.tx(rb(SFI_PUBLIC, 16, 15)).raw == h("6700")  # a read past the end
    assert user.tx(rb(SFI_PUBLIC, 0, 31)).raw == h("6700")


def test_read_binary_by_sfi_makes_the_ef_current(user: Harness) -> None:
    assert user.tx(rb(None, 0, 4)).raw == h("6985")  # no current EF after SELECT of the ADF
    user.ok(rb(SFI_PUBLIC, 0, 1))
    assert user.ok(rb(None, 12, 8)) == CARD_NO
    user.ok(rb(0x16, 0, 1))
    assert user.ok(rb(None, 0, 8)) == b"ZHANG SA"


def test_read_binary_errors(user: Harness) -> None:
    assert user.tx(rb(SFI_CAPP)).raw == h("6985")  # record file
    assert user.tx(rb(SFI_LOG)).raw == h("6985")
    assert user.tx(rb(SFI_ABSENT)).raw == h("6A82")
    user.ok(select_fid(0x0017))
    assert user.tx(rb(None, 0, 0)).raw == h("6985")


def test_read_binary_access(ext: Harness) -> None:
    card = ext
    assert card.tx(rb(0x1B)).raw == h("6982")  # 02: never readable
    assert card.tx(rb(0x1C)).raw == h("6982")  # FF: never readable
    assert card.tx(rb(0x1D)).raw == h("6982")  # 01: PIN
    assert card.verify_sw(PIN_PURSE) == OK
    assert card.ok(rb(0x1D)) == h("1122334455667788")
    assert card.tx(rb(0x1B)).raw == h("6982")
    assert card.tx(rb(0x1C)).raw == h("6982")
    assert card.ok(rb(0x19)) == bytes(range(16))


def test_read_record(user: Harness) -> None:
    assert user.ok(rr(1, SFI_CAPP, 0)) == bytes(48)  # linear files start zero-filled
    assert user.ok(rr(4, SFI_CAPP, None)) == bytes(48)
    assert user.ok(rr(2, SFI_CAPP, 0x30)) == bytes(48)
    assert user.tx(rr(1, SFI_CAPP, 0x10)).raw == h("6700")
    assert user.tx(rr(1, SFI_CAPP, 0x31)).raw == h("6700")
    assert user.tx(rr(5, SFI_CAPP)).raw == h("6A83")
    assert user.tx(rr(5, SFI_CAPP, 0x10)).raw == h("6A83")  # record before Le
    assert user.tx(rr(1, SFI_LOG)).raw == h("6A83")  # cyclic: nothing appended yet
    assert user.tx(rr(1, SFI_LOG, 0x05)).raw == h("6A83")
    assert user.tx(rr(0, SFI_CAPP)).raw == h("6A86")
    assert user.tx(apdu(0x00, 0xB2, 1, (SFI_CAPP << 3) | 0, le=0)).raw == h("6A86")
    assert user.tx(apdu(0x00, 0xB2, 1, (SFI_CAPP << 3) | 5, le=0)).raw == h("6A86")
    assert user.tx(apdu(0x00, 0xB2, 1, (SFI_CAPP << 3) | 7, le=0)).raw == h("6A86")
    assert user.tx(rr(1, SFI_ABSENT)).raw == h("6A82")


def test_read_record_sfi_0_is_the_current_ef(user: Harness) -> None:
    assert user.tx(rr(1, 0)).raw == h("6985")  # no current EF
    user.ok(select_fid(0x0017))
    assert user.ok(rr(1, 0)) == bytes(48)
    assert user.tx(rr(5, 0)).raw == h("6A83")


def test_read_record_of_the_log(funded: Harness) -> None:
    funded.load(1, time3=h("130000"))
    log = funded.log()
    assert log[0] == log_record(1, 1, 0x02, TERM_ID_LOAD, h("20250301"), h("130000"))
    assert log[1] == log_record(0, 10_000, 0x02, TERM_ID_LOAD, h("20250301"), h("120000"))
    assert funded.tx(rr(3, SFI_LOG)).raw == h("6A83")
    assert funded.tx(rr(1, SFI_LOG, 0x17)).sw == OK
    assert funded.tx(rr(1, SFI_LOG, 0x18)).raw == h("6700")


def test_log_is_cyclic_newest_first(funded: Harness) -> None:
    for i in range(11):
        funded.purchase(i, term_seq=100 + i, time3=h(f"1400{i:02d}"))
    log = funded.log()
    assert len(log) == 10
    for rec, entry in enumerate(log, start=1):
        i = 11 - rec
        assert entry == log_record(i, i, 0x06, TERM_ID_PSAM, h("20250301"), h(f"1400{i:02d}")), rec
    assert funded.tx(rr(11, SFI_LOG)).raw == h("6A83")


# ======================================================================================================
# UPDATE BINARY (§2.4, §2.6)
# ======================================================================================================


def test_update_binary_vector(alg: Alg, user: Harness) -> None:
    v = suite(alg)["line_mac_update_binary"]
    user.challenge(4, h(v["challenge"]))
    assert user.tx(v["apdu"]).raw == h("9000")
    assert user.ok(rb(0x16, 39, 11)) == b"13912345678"
    v8 = suite(alg)["line_mac_challenge8"]
    user.challenge(8, h(v8["challenge"]))
    assert user.tx(v8["apdu"]).raw == h("9000")


def test_update_binary_writes_and_reads_back(user: Harness) -> None:
    assert user.update_binary(0x80 | 0x16, 0, b"LI SI").sw == OK
    assert user.ok(rb(0x16, 0, 9)) == b"LI SI SAN"
    user.ok(rb(0x16, 0, 1))
    assert user.update_binary(0x00, 50, b"\x01\x02").sw == OK  # offset P1||P2 into the current EF
    assert user.ok(rb(None, 50, 2)) == b"\x01\x02"


def test_update_binary_check_order(ext: Harness) -> None:
    card = ext
    garbage = h("00112233")
    # file, before anything else
    assert card.tx(apdu(0x04, 0xD6, 0x80 | SFI_ABSENT, 0, b"\x00" + garbage)).raw == h("6A82")
    # file type
    assert card.tx(apdu(0x04, 0xD6, 0x80 | SFI_CAPP, 0, b"\x00" + garbage)).raw == h("6985")
    assert card.tx(apdu(0x04, 0xD6, 0x80 | SFI_LOG, 0, b"\x00" + garbage)).raw == h("6985")
    # access (FF never; 01 needs the PIN) before the challenge
    assert card.tx(apdu(0x04, 0xD6, 0x80 | 0x1A, 0, b"\x00" + garbage)).raw == h("6982")
    assert card.tx(apdu(0x04, 0xD6, 0x80 | 0x19, 0, b"\x00" + garbage)).raw == h("6982")
    assert card.update_binary(0x80 | 0x1A, 0, b"\x00").sw == 0x6982
    assert card.update_binary(0x80 | 0x19, 0, b"\x00").sw == 0x6982
    # challenge before MAC
    assert card.tx(apdu(0x04, 0xD6, 0x80 | SFI_PUBLIC, 28, b"\x02" + garbage)).raw == h("6984")
    # MAC before bounds
    assert card.update_binary(0x80 | SFI_PUBLIC, 28, b"\x02", bad=True).sw == 0x6988
    assert card.update_binary(0x80 | SFI_PUBLIC, 30, b"\x02", bad=True).sw == 0x6988
    # bounds
    assert card.update_binary(0x80 | SFI_PUBLIC, 30, b"\x02").sw == 0x6B00
    assert card.update_binary(0x80 | SFI_PUBLIC, 0x50, b"\x02").sw == 0x6B00
    assert card.update_binary(0x80 | SFI_PUBLIC, 25, bytes(10)).sw == 0x6700
    assert card.ok(rb(SFI_PUBLIC)) == EF15_DATA
    # write access 01: PIN and MAC
    assert card.verify_sw(PIN_PURSE) == OK
    assert card.update_binary(0x80 | 0x19, 2, b"\xaa\xbb", bad=True).sw == 0x6988
    assert card.update_binary(0x80 | 0x19, 2, b"\xaa\xbb").sw == OK
    assert card.ok(rb(0x19, 0, 4)) == h("0001AABB")
    assert card.update_binary(0x80 | 0x1A, 0, b"\x00").sw == 0x6982  # FF even with the PIN


@pytest.mark.parametrize(
    "offset,length,sw",
    [
        (28, 2, OK),
        (20, 4, OK),
        (0, 10, OK),
        (8, 2, OK),
        (9, 2, 0x6985),
        (10, 1, 0x6985),
        (19, 1, 0x6985),
        (19, 2, 0x6985),
        (12, 8, 0x6985),
        (0, 30, 0x6985),
    ],
)
def test_update_binary_ef0015_bytes_10_to_19(user: Harness, offset: int, length: int, sw: int) -> None:
    new = EF15_DATA[offset : offset + length]  # "whatever the new bytes": even the same ones
    if sw == OK:
        new = bytes(b ^ 0x01 for b in new)
    assert user.update_binary(0x80 | SFI_PUBLIC, offset, new).sw == sw
    after = user.ok(rb(SFI_PUBLIC))
    if sw == OK:
        assert after == EF15_DATA[:offset] + new + EF15_DATA[offset + length :]
    else:
        assert after == EF15_DATA


def test_update_binary_ef0015_rule_comes_after_bounds(user: Harness) -> None:
    assert user.update_binary(0x80 | SFI_PUBLIC, 15, bytes(16)).sw == 0x6700


def test_update_binary_ssc_file(user: Harness) -> None:
    assert user.select_ssc().sw == OK
    assert user.update_binary(0x80 | 0x05, 60, b"\x01\x02\x03\x04").sw == OK
    assert user.verify_sw(PIN_SSC) == OK
    assert user.ok(rb(0x05, 60, 4)) == h("01020304")


def test_update_binary_is_always_class_04_with_mac(user: Harness) -> None:
    assert user.tx(apdu(0x00, 0xD6, 0x80 | 0x16, 0, b"X")).sw in (0x6E00, 0x6D00, 0x6982)
    assert user.ok(rb(0x16, 0, 1)) == b"Z"


# ======================================================================================================
# Challenge and line MAC (§2.4)
# ======================================================================================================


def test_a_challenge_serves_only_the_next_command(user: Harness) -> None:
    for between in ("805C000204", "80FE000000", "805C00", "00B0950001", "A0B0000000"):
        chal = user.challenge(4)
        user.tx(between)
        cmd = user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", chal)
        assert user.tx(cmd).raw == h("6984"), between
    assert user.balance() == 0  # still not blocked


def test_a_wrong_mac_uses_up_the_challenge(user: Harness) -> None:
    chal = user.challenge(4)
    good = user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", chal)
    assert user.tx(good[:-1] + bytes((good[-1] ^ 1,))).raw == h("6988")
    assert user.tx(good).raw == h("6984")
    assert user.balance() == 0


def test_no_challenge_and_reset(user: Harness) -> None:
    assert user.tx(user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", b"\x00" * 4)).raw == h("6984")
    chal = user.challenge(4)
    user.reset()
    user.select_purse()
    assert user.tx(user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", chal)).raw == h("6984")


def test_a_new_challenge_replaces_the_old(user: Harness) -> None:
    old = user.challenge(4)
    new = user.challenge(4)
    assert old != new
    assert user.tx(user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", old)).sw in (0x6984, 0x6988)
    new = user.challenge(8)
    assert user.tx(user.mac_apdu(0x84, 0x1E, 0x00, 0x00, b"", new)).raw == h("9000")


# ======================================================================================================
# PIN: VERIFY, CHANGE PIN, RELOAD PIN
# ======================================================================================================


def test_verify_tries_and_block(user: Harness) -> None:
    assert user.verify_sw(PIN_PURSE) == OK
    assert user.verify_sw(h("999999")) == 0x63C2
    assert user.verify_sw(PIN_PURSE) == OK  # resets the count
    assert user.verify_sw(h("999999")) == 0x63C2
    assert user.verify_sw(h("999999")) == 0x63C1
    user.reset()  # the count survives a reset
    user.select_purse()
    assert user.verify_sw(h("1234")) == 0x63C0
    assert user.verify_sw(PIN_PURSE) == 0x6983
    assert user.verify_sw(h("999999")) == 0x6983
    user.reset()
    user.select_purse()
    assert user.verify_sw(PIN_PURSE) == 0x6983


def test_pins_of_the_two_applications_are_separate(user: Harness) -> None:
    assert user.verify_sw(PIN_SSC) == 0x63C2
    assert user.select_ssc().sw == OK
    assert user.verify_sw(PIN_PURSE) == 0x63C2
    assert user.verify_sw(PIN_SSC) == OK


def test_verify_lengths_and_format(user: Harness) -> None:
    assert user.tx("00200000").raw == h("6700")
    assert user.tx("0020000000").raw == h("6700")
    for pin in ("12", "12345678901234", "12A456", "F23456", "1F3456", "123FFF", "FFFF", "12FF56"):
        assert user.tx(verify(h(pin))).raw == h("6A80"), pin
        assert user.verify_sw(PIN_PURSE) == OK
    assert user.verify_sw(h("12345F")) == 0x63C2  # a well-formed 5-digit PIN, wrong
    assert user.verify_sw(h("1234")) == 0x63C1  # 4 digits, wrong
    assert user.tx(apdu(0x00, 0x20, 0x01, 0x00, PIN_PURSE)).raw == h("6A86")


def test_change_pin(user: Harness) -> None:
    assert user.tx(apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("24680F"))).raw == h("9000")
    assert user.verify_sw(PIN_PURSE) == 0x63C2
    assert user.verify_sw(h("24680F")) == OK
    # a wrong old PIN counts a try
    assert user.tx(apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("1111"))).raw == h("63C2")
    assert user.verify_sw(h("999999")) == 0x63C1
    assert user.verify_sw(h("24680F")) == OK


def test_change_pin_when_blocked(user: Harness) -> None:
    for sw in (0x63C2, 0x63C1, 0x63C0):
        assert user.verify_sw(h("999999")) == sw
    assert user.tx(apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("1111"))).raw == h("6983")


def test_change_pin_bad_new_pin(user: Harness) -> None:
    assert user.tx(apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("1A"))).raw == h("6A80")
    assert user.verify_sw(PIN_PURSE) == OK


def test_reload_pin(user: Harness) -> None:
    chal = user.challenge(4)
    assert user.tx(user.reload_pin_apdu(h("86420F"), chal)).raw == h("9000")
    assert user.verify_sw(PIN_PURSE) == 0x63C2
    assert user.verify_sw(h("86420F")) == OK


def test_reload_pin_errors(user: Harness) -> None:
    # no challenge
    assert user.tx(user.reload_pin_apdu(h("8642"), b"\x00" * 4)).raw == h("6984")
    # wrong MAC (9302, not 6988), with the wrong key
    chal = user.challenge(4)
    assert user.tx(user.reload_pin_apdu(h("8642"), chal, key=user.keys.damk)).raw == h("9302")
    # the challenge is used up
    assert user.tx(user.reload_pin_apdu(h("8642"), chal)).raw == h("6984")
    chal = user.challenge(4)
    cmd = user.reload_pin_apdu(h("8642"), chal)
    assert user.tx(cmd[:-1] + bytes((cmd[-1] ^ 1,))).raw == h("9302")
    # bad format
    chal = user.challenge(4)
    assert user.tx(user.reload_pin_apdu(h("8A42"), chal)).raw == h("6A80")
    for pin in ("12", "8A", "12345678901234"):  # a PIN of 1 or 7 bytes is a format error too (§2.6)
        chal = user.challenge(4)
        assert user.tx(user.reload_pin_apdu(h(pin), chal)).raw == h("6A80"), pin
    assert user.verify_sw(PIN_PURSE) == OK


def test_reload_pin_replaces_a_blocked_pin(user: Harness) -> None:
    """Reading: RELOAD PIN (PBOC) exists to replace a forgotten, blocked PIN, so it resets the tries."""
    for _ in range(3):
        user.verify_sw(h("999999"))
    assert user.verify_sw(PIN_PURSE) == 0x6983
    chal = user.challenge(4)
    assert user.tx(user.reload_pin_apdu(h("2468"), chal)).raw == h("9000")
    assert user.verify_sw(h("2468")) == OK


# ======================================================================================================
# GET BALANCE, load
# ======================================================================================================


def test_get_balance_p1_p2(user: Harness) -> None:
    assert user.tx("805C010204").raw == h("6A86")
    assert user.tx("805C000104").raw == h("6A86")


def test_load(user: Harness) -> None:
    done = user.load(12_345, rand=h("01020304"))
    assert done.seq == 0 and done.old_balance == 0 and done.new_balance == 12_345
    assert user.balance() == 12_345
    second = user.load(0)  # a 0-fen load is valid
    assert second.seq == 1
    assert user.balance() == 12_345
    assert user.init_load(1).online_seq == 2
    assert user.log()[0][:2] == b"\x00\x01"


def test_load_needs_no_pin_and_no_challenge(user: Harness) -> None:
    user.reset()
    user.select_purse()
    user.load(10)
    assert user.balance() == 10


def test_load_purse_limit(user: Harness) -> None:
    assert user.tx(init_load_apdu(PURSE_LIMIT + 1)).raw == h("6A80")
    user.load(PURSE_LIMIT)  # equal is allowed
    assert user.balance() == PURSE_LIMIT
    assert user.tx(init_load_apdu(1)).raw == h("6A80")
    user.load(0)


def test_load_limit_counts_the_balance(funded: Harness) -> None:
    assert funded.tx(init_load_apdu(PURSE_LIMIT - 10_000 + 1)).raw == h("6A80")
    funded.load(PURSE_LIMIT - 10_000)
    assert funded.balance() == PURSE_LIMIT


def test_credit_with_nothing_pending(user: Harness) -> None:
    assert user.tx(apdu(0x80, 0x52, 0, 0, DATE_TIME + bytes(4), 0x04)).raw == h("6985")


def test_credit_wrong_mac2_cancels(user: Harness) -> None:
    info = user.init_load(100)
    good = user.credit_apdu(info, 100)
    bad = good[:12] + bytes((good[12] ^ 0x10,)) + good[13:]
    assert user.tx(bad).raw == h("9302")
    assert user.tx(good).raw == h("6985")
    assert user.balance() == 0
    assert user.init_load(0).online_seq == 0
    assert user.tx(proof_apdu(2, 0)).raw == h("9406")


def test_credit_mac2_covers_date_and_time(user: Harness) -> None:
    info = user.init_load(100)
    cmd = user.credit_apdu(info, 100, time3=h("120001"))
    assert user.tx(cmd[:5] + DATE_TIME + cmd[12:]).raw == h("9302")
    assert user.balance() == 0


@pytest.mark.parametrize(
    "between",
    ["805C000204", "0084000004", "00B0950001", "00A4040008A000000632010105", "80FE000000", "805C00"],
)
def test_any_other_command_cancels_a_pending_load(user: Harness, between: str) -> None:
    info = user.init_load(100)
    user.tx(between)
    assert user.tx(user.credit_apdu(info, 100)).raw == h("6985")
    assert user.balance() == 0


def test_credit_wrong_lc_ends_the_load(user: Harness) -> None:
    info = user.init_load(100)
    good = user.credit_apdu(info, 100)
    assert user.tx(apdu(0x80, 0x52, 0, 0, good[5:15], 0x04)).raw == h("6700")
    assert user.tx(good).raw == h("6985")


def test_initialize_for_load_errors(user: Harness) -> None:
    assert user.tx(init_load_apdu(1, key_idx=2)).raw == h("9403")
    assert user.tx(init_load_apdu(1, key_idx=0)).raw == h("9403")
    assert user.tx(init_load_apdu(PURSE_LIMIT + 1, key_idx=2)).raw == h("9403")  # key before amount
    cmd = init_load_apdu(1)
    assert user.tx(cmd[:2] + b"\x00\x01" + cmd[4:]).raw == h("6A86")
    assert user.tx(cmd[:2] + b"\x05\x02" + cmd[4:]).raw == h("6A86")
    assert user.tx(apdu(0x80, 0x50, 0x00, 0x02, cmd[5:15], 0x10)).raw == h("6700")
    assert user.tx(apdu(0x80, 0x50, 0x00, 0x02, cmd[5:16] + b"\x00", 0x10)).raw == h("6700")
    assert user.tx(cmd[:2] + b"\x00\x01" + b"\x0a" + cmd[5:15] + b"\x10").raw == h("6A86")  # P1/P2 before Lc


def test_initialize_for_load_mac1(alg: Alg, user: Harness) -> None:
    term_id = h("031000009999")
    r = user.ok(init_load_apdu(77, term_id))
    sk = crypto.load_session_key(alg, user.keys.dlk, r[8:12], 0)
    assert r[:8] == bytes(6) + bytes((1, int(alg)))
    assert r[12:] == crypto.load_mac1(alg, sk, 0, 77, term_id)


# ======================================================================================================
# purchase and CAPP purchase
# ======================================================================================================


def test_purchase(funded: Harness) -> None:
    done = funded.purchase(150, term_seq=0x00ABCDEF)  # the session key takes term_seq[2:4]
    assert done.seq == 0 and done.balance_before == 10_000
    assert funded.balance() == 9_850
    assert funded.log()[0] == log_record(0, 150, 0x06, TERM_ID_PSAM, DATE_TIME[:4], DATE_TIME[4:])
    assert funded.init_purchase(0).offline_seq == 1


def test_purchase_of_the_whole_balance_and_short_balance(funded: Harness) -> None:
    assert funded.tx(init_purchase_apdu(10_001)).raw == h("9401")
    assert funded.tx(init_purchase_apdu(10_001, txn_type=9)).raw == h("9401")
    funded.purchase(10_000)
    assert funded.balance() == 0
    assert funded.tx(init_purchase_apdu(1)).raw == h("9401")
    funded.purchase(0)


def test_zero_purchase_on_empty_purse(user: Harness) -> None:
    done = user.purchase(0, 9)
    assert done.seq == 0
    assert user.init_purchase(0).offline_seq == 1
    assert user.log()[0] == log_record(0, 0, 0x09, TERM_ID_PSAM, DATE_TIME[:4], DATE_TIME[4:])
    assert user.tx(proof_apdu(9, 0)).raw == done.mac2 + done.tac + h("9000")


def test_initialize_for_purchase_errors(funded: Harness) -> None:
    assert funded.tx(init_purchase_apdu(1, key_idx=2)).raw == h("9403")
    assert funded.tx(init_purchase_apdu(20_000, key_idx=3)).raw == h("9403")  # key before balance
    assert funded.tx(init_purchase_apdu(20_000, txn_type=9, key_idx=3)).raw == h("9403")
    cmd = init_purchase_apdu(1)
    assert funded.tx(cmd[:2] + b"\x01\x00" + cmd[4:]).raw == h("6A86")
    assert funded.tx(cmd[:2] + b"\x02\x02" + cmd[4:]).raw == h("6A86")
    assert funded.tx(apdu(0x80, 0x50, 0x01, 0x02, cmd[5:15], 0x0F)).raw == h("6700")


def test_debit_nothing_pending(funded: Harness) -> None:
    info = funded.init_purchase(10)
    cmd = funded.debit_apdu(info, 10)
    assert len(funded.ok(cmd)) == 8
    assert funded.tx(cmd).raw == h("6985")  # DEBIT ended it
    assert funded.balance() == 9_990


def test_debit_wrong_mac1_cancels(funded: Harness) -> None:
    info = funded.init_purchase(10)
    assert funded.tx(funded.debit_apdu(info, 10, bad=True)).raw == h("9302")
    assert funded.tx(funded.debit_apdu(info, 10)).raw == h("6985")
    assert funded.balance() == 10_000
    assert funded.init_purchase(0).offline_seq == 0


def test_debit_mac1_covers_the_pending_data(funded: Harness) -> None:
    info = funded.init_purchase(10)
    # MAC1 computed for another amount, or another type, or another term_seq than sent
    assert funded.tx(funded.debit_apdu(info, 11)).raw == h("9302")
    info = funded.init_purchase(10)
    assert funded.tx(funded.debit_apdu(info, 10, 9)).raw == h("9302")
    info = funded.init_purchase(10)
    cmd = funded.debit_apdu(info, 10, term_seq=5)
    assert funded.tx(cmd[:5] + (6).to_bytes(4, "big") + cmd[9:]).raw == h("9302")
    assert funded.balance() == 10_000


def test_debit_wrong_lc_ends_the_purchase(funded: Harness) -> None:
    info = funded.init_purchase(10)
    good = funded.debit_apdu(info, 10)
    assert funded.tx(apdu(0x80, 0x54, 0x01, 0x00, good[5:19], 0x08)).raw == h("6700")
    assert funded.tx(good).raw == h("6985")
    assert funded.balance() == 10_000


def test_debit_p1_p2(funded: Harness) -> None:
    info = funded.init_purchase(10)
    good = funded.debit_apdu(info, 10)
    assert funded.tx(good[:2] + b"\x00\x00" + good[4:]).raw == h("6A86")


@pytest.mark.parametrize(
    "between",
    [
        "805C000204",
        "0084000004",
        "00B0950001",
        "00B201BC00",
        "00A4040008A000000632010105",
        "0020000003123456",
        "80FE000000",
        "805A000002000008",
    ],
)
def test_any_other_command_cancels_a_pending_purchase(funded: Harness, between: str) -> None:
    info = funded.init_purchase(10)
    funded.tx(between)
    assert funded.tx(funded.debit_apdu(info, 10)).raw == h("6985")
    assert funded.balance() == 10_000


def test_a_refused_initialize_cancels_a_pending_purchase(funded: Harness) -> None:
    info = funded.init_purchase(10)
    assert funded.tx(init_purchase_apdu(20_000)).raw == h("9401")
    assert funded.tx(funded.debit_apdu(info, 10)).raw == h("6985")


def test_initialize_for_load_cancels_a_pending_purchase(funded: Harness) -> None:
    info = funded.init_purchase(10)
    funded.ok(init_load_apdu(1))
    assert funded.tx(funded.debit_apdu(info, 10)).raw == h("6985")


def test_capp_purchase_with_cache(funded: Harness) -> None:
    rec1, rec2, rec1b = capp_record(0x11), capp_record(0x22), capp_record(0x33)
    info = funded.init_purchase(30, 9)
    writes = funded.writes
    assert funded.tx(capp_apdu(1, rec1)).raw == h("9000")
    assert funded.tx(capp_apdu(2, rec2)).raw == h("9000")
    assert funded.tx(capp_apdu(1, rec1b)).raw == h("9000")  # replaces the first
    assert funded.writes == writes, "80DC holds the records, writing nothing yet"
    out = funded.ok(funded.debit_apdu(info, 30, 9, term_seq=9))
    assert out[:4] == crypto.purchase_tac(funded.alg, funded.keys.dtk, 30, 9, TERM_ID_PSAM, 9, DATE, TIME_)
    assert funded.ok(rr(1, SFI_CAPP)) == rec1b
    assert funded.ok(rr(2, SFI_CAPP)) == rec2
    assert funded.ok(rr(3, SFI_CAPP)) == bytes(48)
    assert funded.balance() == 9_970
    assert funded.log()[0][9] == 0x09


def test_capp_cache_is_dropped_when_the_purchase_is_cancelled(funded: Harness) -> None:
    info = funded.init_purchase(30, 9)
    funded.ok(capp_apdu(1, capp_record(0x44)))
    assert funded.balance() == 10_000  # cancels
    assert funded.tx(funded.debit_apdu(info, 30, 9)).raw == h("6985")
    assert funded.ok(rr(1, SFI_CAPP)) == bytes(48)
    # a later purchase does not write the old cache
    funded.purchase(1, 9)
    assert funded.ok(rr(1, SFI_CAPP)) == bytes(48)


def test_capp_cache_is_dropped_on_wrong_mac1(funded: Harness) -> None:
    info = funded.init_purchase(30, 9)
    funded.ok(capp_apdu(1, capp_record(0x44)))
    assert funded.tx(funded.debit_apdu(info, 30, 9, bad=True)).raw == h("9302")
    assert funded.ok(rr(1, SFI_CAPP)) == bytes(48)
    assert funded.balance() == 10_000


def test_80dc_on_another_linear_file_whatever_its_write_access(ext: Harness) -> None:
    ext.load(100)
    info = ext.init_purchase(0, 9)
    assert ext.tx(capp_apdu(2, b"\x5a" * 8, sfi=0x1E)).raw == h("9000")
    ext.ok(ext.debit_apdu(info, 0, 9))
    assert ext.ok(rr(2, 0x1E)) == b"\x5a" * 8


def test_80dc_checks_in_order(funded: Harness) -> None:
    rec = capp_record(0x55)
    # no purchase pending: every structural check still comes first
    assert funded.tx(apdu(0x80, 0xDC, 1, (SFI_CAPP << 3) | 4, rec)).raw == h("6A86")
    assert funded.tx(apdu(0x80, 0xDC, 1, (SFI_CAPP << 3) | 1, rec[:5])).raw == h("6A86")
    assert funded.tx(capp_apdu(1, rec, sfi=SFI_ABSENT)).raw == h("6A82")
    assert funded.tx(capp_apdu(1, rec, sfi=SFI_PUBLIC)).raw == h("6985")  # transparent
    assert funded.tx(capp_apdu(1, rec[:23], sfi=SFI_LOG)).raw == h("6985")  # cyclic
    assert funded.tx(capp_apdu(5, rec[:10])).raw == h("6A83")
    assert funded.tx(capp_apdu(0, rec)).raw == h("6A83")
    assert funded.tx(capp_apdu(1, rec[:47])).raw == h("6700")
    assert funded.tx(capp_apdu(1, rec + b"\x00")).raw == h("6700")
    assert funded.tx(capp_apdu(1, rec)).raw == h("6985")  # transaction state
    # ... and during a CAPP purchase the same errors keep it pending
    info = funded.init_purchase(5, 9)
    assert funded.tx(capp_apdu(5, rec)).raw == h("6A83")
    assert funded.tx(capp_apdu(1, rec[:47])).raw == h("6700")
    assert funded.tx(capp_apdu(1, rec)).raw == h("9000")
    funded.ok(funded.debit_apdu(info, 5, 9))
    assert funded.ok(rr(1, SFI_CAPP)) == rec


def test_80dc_during_a_plain_purchase(funded: Harness) -> None:
    info = funded.init_purchase(5, 6)
    assert funded.tx(capp_apdu(1, capp_record(0x66))).raw == h("6985")
    funded.ok(funded.debit_apdu(info, 5, 6))  # not cancelled
    assert funded.ok(rr(1, SFI_CAPP)) == bytes(48)
    assert funded.balance() == 9_995


# ======================================================================================================
# GET TRANSACTION PROOF
# ======================================================================================================


def test_proof_on_a_fresh_card(user: Harness) -> None:
    for txn_type in (2, 6, 9):
        assert user.tx(proof_apdu(txn_type, 0)).raw == h("9406")


def test_proof_of_load(user: Harness) -> None:
    done = user.load(500)
    assert user.tx(proof_apdu(2, 0)).raw == bytes(4) + done.tac + h("9000")
    assert user.tx(proof_apdu(2, 1)).raw == h("9406")
    assert user.tx(proof_apdu(6, 0)).raw == h("9406")
    assert user.tx(proof_apdu(9, 0)).raw == h("9406")
    second = user.load(1)
    assert user.tx(proof_apdu(2, 0)).raw == h("9406")  # one proof per counter
    assert user.tx(proof_apdu(2, 1)).raw == bytes(4) + second.tac + h("9000")
    user.reset()
    user.select_purse()
    assert user.tx(proof_apdu(2, 1)).raw == bytes(4) + second.tac + h("9000")


def test_proof_of_purchase(funded: Harness) -> None:
    load_tac = funded.tx(proof_apdu(2, 0)).data[4:]
    done = funded.purchase(20, 6, term_seq=77)
    assert funded.tx(proof_apdu(6, 0)).raw == done.mac2 + done.tac + h("9000")
    assert funded.tx(proof_apdu(9, 0)).raw == h("9406")  # seq and type
    assert funded.tx(proof_apdu(2, 0)).data[4:] == load_tac  # the load proof is kept
    funded.load(1)
    assert funded.tx(proof_apdu(6, 0)).raw == done.mac2 + done.tac + h("9000")
    info = funded.init_purchase(3)
    assert funded.tx(funded.debit_apdu(info, 3, bad=True)).raw == h("9302")
    assert funded.tx(proof_apdu(6, 0)).raw == done.mac2 + done.tac + h("9000")  # a failed debit keeps it
    capp = funded.purchase(4, 9, term_seq=78)
    assert funded.tx(proof_apdu(6, 0)).raw == h("9406")
    assert funded.tx(proof_apdu(9, 1)).raw == capp.mac2 + capp.tac + h("9000")
    assert funded.tx(proof_apdu(6, 1)).raw == h("9406")


def test_proof_errors(funded: Harness) -> None:
    for txn_type in (0, 1, 3, 7, 0x0A):
        assert funded.tx(proof_apdu(txn_type, 0)).raw == h("6A86"), txn_type
    assert funded.tx("805A010202000008").raw == h("6A86")
    assert funded.tx("805A00020300000008").raw == h("6700")
    assert funded.tx("805A0002010008").raw == h("6700")


# ======================================================================================================
# life cycle: application block / unblock, card block (§2.3)
# ======================================================================================================


def _assert_blocked_app_commands(card: Harness, perm: bool) -> None:
    """In a blocked current application: what works and what answers 9303 (spec §2.3)."""
    assert card.ok(rb(SFI_PUBLIC)) == EF15_DATA
    assert card.ok(rr(1, SFI_CAPP)) == bytes(48)
    assert len(card.ok(get_challenge(4))) == 4
    assert card.tx(proof_apdu(2, 0)).sw in (OK, 0x9406)
    for raw in (
        GET_BALANCE,
        verify(PIN_PURSE),
        apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("1111")),
        init_load_apdu(1),
        init_purchase_apdu(0),
        init_purchase_apdu(0, txn_type=9),
        apdu(0x80, 0x52, 0, 0, DATE_TIME + bytes(4), 0x04),
        apdu(0x80, 0x54, 0x01, 0x00, bytes(4) + DATE_TIME + bytes(4), 0x08),
        capp_apdu(1, capp_record(1)),
    ):
        assert card.tx(raw).raw == h("9303"), hx(raw)
    assert card.update_binary(0x80 | 0x16, 0, b"X").sw == 0x9303
    chal = card.challenge(4)
    assert card.tx(card.reload_pin_apdu(h("1234"), chal)).raw == h("9303")
    assert card.verify_sw(PIN_PURSE) == 0x9303


def test_application_block_temporary(alg: Alg, funded: Harness) -> None:
    assert funded.app_block().sw == OK
    _assert_blocked_app_commands(funded, perm=False)
    assert funded.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("6283")
    assert funded.tx(select_fid(0x3F00)).sw == OK
    assert funded.tx(select_fid(0x1001)).raw == fci(AID_PURSE) + h("6283")
    _assert_blocked_app_commands(funded, perm=False)
    funded.reset()
    assert funded.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("6283")
    # the other application is not blocked
    assert funded.select_ssc().sw == OK
    assert funded.verify_sw(PIN_SSC) == OK
    # block again (allowed in a blocked app), then unblock
    funded.select_purse()
    assert funded.app_block().sw == OK
    assert funded.app_unblock().sw == OK
    assert funded.balance() == 10_000
    assert funded.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("9000")


def test_application_unblock_of_an_active_app(user: Harness) -> None:
    assert user.app_unblock().sw == OK
    assert user.balance() == 0


def test_application_block_errors(user: Harness) -> None:
    assert user.send_mac(0x84, 0x1E, 0x00, 0x00, bad=True).sw == 0x6988
    assert user.balance() == 0  # not blocked
    assert user.send_mac(0x84, 0x1E, 0x00, 0x02).sw == 0x6A86
    assert user.send_mac(0x84, 0x1E, 0x01, 0x00).sw == 0x6A86
    assert user.tx("841E0000" + "05" + "00" * 5).raw == h("6700")  # Lc is 04
    assert user.tx("841E000004").sw in (0x6700, 0x6984)  # no MAC at all (a case-2 APDU)
    assert user.send_mac(0x84, 0x18, 0x00, 0x00, bad=True).sw == 0x6988
    assert user.balance() == 0


def test_application_block_permanent(funded: Harness) -> None:
    assert funded.app_block(permanent=True).sw == OK
    _assert_blocked_app_commands(funded, perm=True)
    assert funded.app_unblock().sw == 0x9303
    assert funded.app_block(permanent=False).sw == OK  # stays permanent
    assert funded.app_unblock().sw == 0x9303
    assert funded.tx(select_name(AID_PURSE)).raw == h("6A81")
    assert funded.tx(select_fid(0x3F00)).sw == OK
    assert funded.tx(select_fid(0x1001)).raw == h("6A81")
    funded.reset()
    assert funded.tx(select_name(AID_PURSE)).raw == h("6A81")
    assert funded.select_ssc().sw == OK


def test_card_block(funded: Harness) -> None:
    assert funded.card_block().sw == OK
    well_formed = [
        "00A40000023F00",
        "00A4040008A000000632010105",
        "0084000004",
        "00B0950000",
        "00B201BC00",
        "805C000204",
        "0020000003123456",
        "805A000202000008",
        "80FE000000",
        "A0B0000000",
        "00820010080000000000000000",
        "80E80000",
    ]
    for raw in well_formed:
        assert funded.tx(raw).raw == h("6A81"), raw
    assert funded.tx("805C00").raw == h("6700")
    assert funded.tx("00A4040008A000").raw == h("6700")
    funded.reset()
    for raw in well_formed:
        assert funded.tx(raw).raw == h("6A81"), raw


def test_card_block_from_a_blocked_app(user: Harness) -> None:
    assert user.app_block(permanent=True).sw == OK
    assert user.card_block().sw == OK
    assert user.tx(select_fid(0x3F00)).raw == h("6A81")


def test_card_block_wrong_mac(user: Harness) -> None:
    assert user.send_mac(0x84, 0x16, 0x00, 0x00, bad=True).sw == 0x6988
    assert user.tx(select_fid(0x3F00)).sw == OK


# ======================================================================================================
# error precedence (§2.6)
# ======================================================================================================


def test_precedence_on_a_factory_card(factory_user: Harness) -> None:
    card = factory_user
    assert card.tx("805C00").raw == h("6700")  # malformed first
    assert card.tx("A05C000204").raw == h("6E00")  # class before life cycle
    assert card.tx("80FE000000").raw == h("6D00")  # instruction before life cycle
    assert card.tx("805C000304").raw == h("6985")  # life cycle before P1/P2
    assert card.tx("805C000299").raw == h("6985")  # ... and before Lc
    assert card.tx(init_load_apdu(1, key_idx=9)).raw == h("6985")
    assert card.tx(
        create_df_apdu(0x1001, AID_PURSE)[:2] + b"\x09\x09" + create_df_apdu(0x1001, AID_PURSE)[4:]
    ).raw == h("6982")  # authentication before P1/P2


def test_precedence_in_a_blocked_app(funded: Harness) -> None:
    funded.app_block()
    assert funded.tx("805C000304").raw == h("9303")  # app blocked before P1/P2
    assert funded.tx("805C000299").raw == h("9303")  # ... and Lc
    assert funded.tx(init_load_apdu(PURSE_LIMIT, key_idx=7)).raw == h("9303")
    assert funded.tx("A05C000204").raw == h("6E00")
    assert funded.tx("80FE000000").raw == h("6D00")
    assert funded.tx(create_df_apdu(0x1003, h("A0000006320199"))).raw == h("6985")  # life cycle first
    assert funded.tx("0082001008" + "00" * 8).raw == h("6985")


def test_precedence_in_transactions(funded: Harness) -> None:
    # P1/P2 before Lc
    assert funded.tx(apdu(0x80, 0x52, 0x01, 0x00, bytes(3), 0x04)).raw == h("6A86")
    # Lc before transaction state
    assert funded.tx(apdu(0x80, 0x52, 0x00, 0x00, bytes(3), 0x04)).raw == h("6700")
    assert funded.tx(apdu(0x80, 0x54, 0x01, 0x00, bytes(3), 0x08)).raw == h("6700")
    # transaction state before MAC
    assert funded.tx(apdu(0x80, 0x52, 0x00, 0x00, DATE_TIME + bytes(4), 0x04)).raw == h("6985")
    assert funded.tx(apdu(0x80, 0x54, 0x01, 0x00, bytes(4) + DATE_TIME + bytes(4), 0x08)).raw == h("6985")
    # key before amount / balance
    assert funded.tx(init_load_apdu(PURSE_LIMIT, key_idx=2)).raw == h("9403")
    assert funded.tx(init_purchase_apdu(PURSE_LIMIT, key_idx=2)).raw == h("9403")
    # P1/P2 and Lc before key
    bad_key = init_load_apdu(1, key_idx=2)
    assert funded.tx(bad_key[:3] + b"\x01" + bad_key[4:]).raw == h("6A86")
    assert funded.tx(apdu(0x80, 0x50, 0x00, 0x02, bad_key[5:15], 0x10)).raw == h("6700")


# ======================================================================================================
# factory state and personalisation (§2.5)
# ======================================================================================================


def test_factory_state_commands(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    assert card.tx(select_fid(0x3F00)).raw == MF_FCI + h("9000")
    assert len(card.ok(get_challenge(8))) == 8
    assert len(card.ok(get_challenge(4))) == 4
    assert card.tx(rb(None, 0, 1)).raw == h("6985")  # no current EF
    for raw in (
        GET_BALANCE,
        verify(PIN_PURSE),
        init_load_apdu(1),
        init_purchase_apdu(0),
        init_purchase_apdu(0, txn_type=9),
        apdu(0x80, 0x52, 0, 0, DATE_TIME + bytes(4), 0x04),
        apdu(0x80, 0x54, 0x01, 0x00, bytes(4) + DATE_TIME + bytes(4), 0x08),
        capp_apdu(1, capp_record(1)),
        proof_apdu(2, 0),
        apdu(0x80, 0x5E, 0x01, 0x00, PIN_PURSE + b"\xff" + h("1111")),
        apdu(0x80, 0x5E, 0x00, 0x00, PIN_PURSE + bytes(4)),
        apdu(0x84, 0x1E, 0x00, 0x00, bytes(4)),
        apdu(0x84, 0x18, 0x00, 0x00, bytes(4)),
        apdu(0x84, 0x16, 0x00, 0x00, bytes(4)),
        apdu(0x04, 0xD6, 0x95, 0x00, bytes(5)),
    ):
        assert card.tx(raw).raw == h("6985"), hx(raw)
    # SELECT / READ BINARY / READ RECORD work on files made during personalisation
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    card.ok(create_ef_apdu(0x0015, 0x15, 0x01, h("001E"), 0x00, 0x02))
    card.ok(apdu(0x80, 0xD6, 0x00, 0x00, EF15_DATA))
    card.ok(create_ef_apdu(0x0017, 0x17, 0x02, h("3004"), 0x00, 0xFF))
    card.ok(create_ef_apdu(0x0018, 0x18, 0x03, h("170A"), 0x00, 0xFF))
    card.ok(create_ef_apdu(0x001B, 0x1B, 0x01, h("0008"), 0x02, 0x02))
    card.reset()
    assert card.tx(select_name(AID_PURSE)).raw == fci(AID_PURSE) + h("9000")
    assert card.ok(rb(SFI_PUBLIC)) == EF15_DATA
    assert card.ok(rr(4, SFI_CAPP)) == bytes(48)
    assert card.tx(rr(1, SFI_LOG)).raw == h("6A83")
    assert card.tx(rb(0x1B)).raw == h("6982")
    assert card.tx(GET_BALANCE).raw == h("6985")


def test_external_authenticate(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    v = suite(alg)["external_authenticate"]
    card.challenge(8, h(v["challenge"]))
    assert card.tx(v["apdu"]).raw == h("9000")
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    card.reset()  # the authenticated state lasts until a reset
    assert card.tx(create_ef_apdu(0x0015, 0x15, 0x01, h("001E"), 0x00, 0x02)).raw == h("6982")


def test_external_authenticate_wrong_ends_authentication(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    chal = card.challenge(8)
    assert card.tx(ext_auth_apdu(alg, chal, key=h("00" * 16))).raw == h("6300")
    assert card.tx(create_df_apdu(0x1001, AID_PURSE)).raw == h("6982")


def test_external_authenticate_needs_a_challenge(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    assert card.tx(ext_auth_apdu(alg, h("0102030405060708"))).raw == h("6984")
    chal = card.challenge(8)
    card.ok(select_fid(0x3F00))  # uses the challenge up
    assert card.tx(ext_auth_apdu(alg, chal)).raw == h("6984")


def test_external_authenticate_failures_block_after_5(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    for i in range(5):
        chal = card.challenge(8)
        assert card.tx(ext_auth_apdu(alg, bytes(8) if i % 2 else chal, key=h("11" * 16))).raw == h("6300"), i
        if i in (1, 3):
            card.reset()  # counted across resets
    chal = card.challenge(8)
    assert card.tx(ext_auth_apdu(alg, chal)).raw == h("6983")  # even a right one
    card.reset()
    chal = card.challenge(8)
    assert card.tx(ext_auth_apdu(alg, chal)).raw == h("6983")
    assert card.tx(create_df_apdu(0x1001, AID_PURSE)).raw == h("6982")


def test_external_authenticate_success_resets_the_count(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    for _round in range(3):
        for _ in range(4):
            chal = card.challenge(8)
            assert card.tx(ext_auth_apdu(alg, chal, key=h("22" * 16))).raw == h("6300")
        card.reset()
        authenticate(card)


def test_personalisation_needs_authentication(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    for raw in (
        create_df_apdu(0x1001, AID_PURSE),
        create_ef_apdu(0x0015, 0x15, 0x01, h("001E"), 0x00, 0x02),
        put_key_apdu(alg, 1, 1, card.keys.damk),
        h("80D420000403123456"),
        apdu(0x80, 0xD6, 0x00, 0x00, b"\x01"),
        h("80D800000805F5E10000000000"),
        h("80E80000"),
    ):
        assert card.tx(raw).raw == h("6982"), hx(raw)


def test_create_df_only_from_the_mf(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    assert card.tx(create_df_apdu(0x1003, h("A0000006320101FF"))).raw == h("6985")
    card.ok(select_fid(0x3F00))
    card.ok(create_df_apdu(0x1003, h("A0000006320101FF")))


def test_create_duplicates_and_bad_data(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    card.ok(create_ef_apdu(0x0015, 0x15, 0x01, h("001E"), 0x00, 0x02))
    assert card.tx(create_ef_apdu(0x0015, 0x16, 0x01, h("0010"), 0x00, 0x02)).raw == h("6985")  # FID
    assert card.tx(create_ef_apdu(0x0016, 0x15, 0x01, h("0010"), 0x00, 0x02)).raw == h("6985")  # SFI
    assert card.tx(create_ef_apdu(0x0016, 0x16, 0x04, h("0010"), 0x00, 0x02)).raw == h("6A80")  # kind
    assert card.tx(create_ef_apdu(0x0016, 0x16, 0x00, h("0010"), 0x00, 0x02)).raw == h("6A80")
    assert card.tx(create_ef_apdu(0x0016, 0x16, 0x01, h("0010"), 0x03, 0x02)).raw == h("6A80")  # access
    assert card.tx(create_ef_apdu(0x0016, 0x16, 0x01, h("0010"), 0x00, 0x10)).raw == h("6A80")
    assert card.tx(create_ef_apdu(0x0016, 0x1F, 0x01, h("0010"), 0x00, 0x02)).raw == h("6A80")  # SFI > 1E
    card.ok(create_ef_apdu(0x0016, 0x00, 0x01, h("0010"), 0x00, 0x02))  # SFI 00: none
    card.ok(create_ef_apdu(0x0019, 0x00, 0x01, h("0010"), 0x00, 0x02))  # two files without SFI
    card.ok(select_fid(0x3F00))
    assert card.tx(create_df_apdu(0x1001, h("A0000006320101FF"))).raw == h("6985")  # FID
    assert card.tx(create_df_apdu(0x1003, AID_PURSE)).raw == h("6985")  # AID
    assert card.tx(create_df_apdu(0x1003, h("A000000632"))).sw == OK  # 5 bytes is allowed
    card.ok(select_fid(0x3F00))
    assert card.tx(create_df_apdu(0x1004, h("A0000006"))).raw == h("6A80")  # AID of 4 bytes
    assert card.tx(create_df_apdu(0x1004, bytes(range(17)))).raw == h("6A80")  # AID of 17 bytes


def test_put_key_kcv_and_replacement(alg: Alg, factory_psam: Harness) -> None:
    ps = factory_psam
    authenticate(ps)
    ps.ok(create_df_apdu(0x1001, AID_PSAM))
    ps.ok(create_ef_apdu(0x0016, 0x16, 0x01, h("0006"), 0x00, 0xFF))
    ps.ok(apdu(0x80, 0xD6, 0x00, 0x00, TERM_ID_PSAM))
    bad = put_key_apdu(alg, 0x21, 1, ps.keys.mpk)
    assert ps.tx(bad[:-1] + bytes((bad[-1] ^ 1,))).raw == h("6A80")
    other = h("0F1E2D3C4B5A69788796A5B4C3D2E1F0")
    ps.ok(put_key_apdu(alg, 0x21, 1, other))
    ps.ok(put_key_apdu(alg, 0x21, 1, ps.keys.mpk))  # replaces
    mpk2 = h("606162636465666768696A6B6C6D6E6F")
    ps.ok(put_key_apdu(alg, 0x21, 2, mpk2, version=2))
    ps.ok(h("80E80000"))
    ps.reset()
    ps.ok(select_name(AID_PSAM))
    for key_ver, master in ((1, ps.keys.mpk), (2, mpk2)):
        rand = h("0A0B0C0D")
        seq, mac1 = ps.init_sam(rand, 3, 40, 6, key_ver=key_ver)
        assert seq == key_ver  # one term_seq shared by all keys
        sk = crypto.purchase_session_key(alg, crypto.diversify(alg, master, CARD_NO), rand, 3, seq)
        assert mac1 == crypto.purchase_mac1(alg, sk, 40, 6, TERM_ID_PSAM, DATE, TIME_)
    assert ps.tx(ps.init_sam_apdu(h("0A0B0C0D"), 3, 40, 6, key_ver=3)).raw == h("9403")


def test_write_data_records_and_init_purse(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    assert card.tx(h("80D800000805F5E10000000000")).raw == h("6985")  # INIT PURSE needs an ADF
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    card.ok(create_ef_apdu(0x0017, 0x17, 0x02, h("3004"), 0x00, 0xFF))
    card.ok(apdu(0x80, 0xD6, 0x02, 0x04, capp_record(0x77)))  # record 2
    card.ok(create_ef_apdu(0x0015, 0x15, 0x01, h("001E"), 0x00, 0x02))
    card.ok(apdu(0x80, 0xD6, 0x00, 0x0A, b"\x03\x10"))  # at offset 10
    card.ok(h("80D800000805F5E10000000000"))
    card.ok(h("80E8000000"))  # FINISH with Le 00
    card.reset()
    card.ok(select_name(AID_PURSE))
    assert card.ok(rr(2, SFI_CAPP)) == capp_record(0x77)
    assert card.ok(rr(1, SFI_CAPP)) == bytes(48)
    assert card.ok(rb(SFI_PUBLIC, 10, 2)) == h("0310")
    assert card.balance() == 0


def test_after_finish(alg: Alg, user: Harness) -> None:
    for raw in (
        create_df_apdu(0x1003, h("A0000006320101FF")),
        create_ef_apdu(0x0019, 0x19, 0x01, h("0010"), 0x00, 0x02),
        put_key_apdu(alg, 1, 1, user.keys.damk),
        h("80D420000403123456"),
        apdu(0x80, 0xD6, 0x00, 0x00, b"\x01"),
        h("80D800000805F5E10000000000"),
        h("80E80000"),
    ):
        assert user.tx(raw).raw == h("6985"), hx(raw)
    chal = user.challenge(8)
    assert user.tx(ext_auth_apdu(alg, chal)).raw == h("6985")
    user.ok(select_fid(0x3F00))
    chal = user.challenge(8)
    assert user.tx(ext_auth_apdu(alg, chal)).raw == h("6985")
    assert user.tx(create_df_apdu(0x1003, h("A0000006320101FF"))).raw == h("6985")


# ======================================================================================================
# PSAM (§3)
# ======================================================================================================


def test_psam_term_seq_and_mac1(alg: Alg, psam: Harness) -> None:
    assert psam.ok(rb(0x16)) == TERM_ID_PSAM
    rand = h("55667788")
    seq, mac1 = psam.init_sam(rand, 7, 150, 6)
    assert seq == 1
    sk = crypto.purchase_session_key(alg, psam.keys.dpk, rand, 7, seq)
    assert mac1 == crypto.purchase_mac1(alg, sk, 150, 6, TERM_ID_PSAM, DATE, TIME_)
    assert psam.init_sam(rand, 7, 150, 9)[0] == 2
    # refused ones use no term_seq
    assert psam.tx(psam.init_sam_apdu(rand, 7, 150, 6, key_ver=2)).raw == h("9403")
    other_alg = 0x04 if alg is Alg.DES else 0x00
    assert psam.tx(psam.init_sam_apdu(rand, 7, 150, 6, alg=other_alg)).raw == h("9403")
    assert psam.tx(psam.init_sam_apdu(rand, 7, 150, 2)).raw == h("6A80")
    assert psam.tx(psam.init_sam_apdu(rand, 7, 150, 0x07)).raw == h("6A80")
    assert psam.tx(psam.init_sam_apdu(rand, 7, 150, 2, key_ver=2)).raw == h("9403")  # key before data
    assert psam.init_sam(rand, 7, 150, 6)[0] == 3
    psam.reset()
    psam.ok(select_name(AID_PSAM))
    assert psam.init_sam(rand, 7, 150, 6)[0] == 4  # persisted


def test_psam_credit_sam(alg: Alg, psam: Harness) -> None:
    rand = h("01020304")
    assert psam.tx("807200000400000000").raw == h("6985")  # no session
    seq, _ = psam.init_sam(rand, 1, 10, 6)
    sk = crypto.purchase_session_key(alg, psam.keys.dpk, rand, 1, seq)
    mac2 = crypto.purchase_mac2(alg, sk, 10)
    assert psam.tx(h("80720000 04") + mac2).raw == h("9000")
    assert psam.tx(h("80720000 04") + mac2).raw == h("6985")  # the session ended
    seq, _ = psam.init_sam(rand, 1, 10, 6)
    mac2 = crypto.purchase_mac2(alg, crypto.purchase_session_key(alg, psam.keys.dpk, rand, 1, seq), 10)
    assert psam.tx(h("80720000 04") + bytes(4)).raw == h("9302")
    assert psam.tx(h("80720000 04") + mac2).raw == h("6985")  # either way the session ends


def test_psam_session_ends_at_reset_and_next_init(alg: Alg, psam: Harness) -> None:
    rand = h("01020304")
    seq, _ = psam.init_sam(rand, 1, 10, 6)
    mac2 = crypto.purchase_mac2(alg, crypto.purchase_session_key(alg, psam.keys.dpk, rand, 1, seq), 10)
    psam.reset()
    psam.ok(select_name(AID_PSAM))
    assert psam.tx(h("80720000 04") + mac2).raw == h("6985")
    seq, _ = psam.init_sam(rand, 1, 10, 6)
    mac2 = crypto.purchase_mac2(alg, crypto.purchase_session_key(alg, psam.keys.dpk, rand, 1, seq), 10)
    psam.init_sam(rand, 1, 11, 6)
    assert psam.tx(h("80720000 04") + mac2).raw == h("9302")  # a new session replaced it


def test_psam_credit_sam_wrong_lc_ends_the_session(alg: Alg, psam: Harness) -> None:
    rand = h("01020304")
    seq, _ = psam.init_sam(rand, 1, 10, 6)
    mac2 = crypto.purchase_mac2(alg, crypto.purchase_session_key(alg, psam.keys.dpk, rand, 1, seq), 10)
    assert psam.tx(h("80720000 03") + mac2[:3]).raw == h("6700")
    assert psam.tx(h("80720000 04") + mac2).raw == h("6985")


def test_psam_format_errors(psam: Harness) -> None:
    good = psam.init_sam_apdu(h("01020304"), 1, 10, 6)
    assert psam.tx(good[:2] + b"\x01\x00" + good[4:]).raw == h("6A86")
    assert psam.tx(good[:2] + b"\x00\x01" + good[4:]).raw == h("6A86")
    assert psam.tx(apdu(0x80, 0x70, 0, 0, good[5:40], 0x08)).raw == h("6700")
    assert psam.tx(good[:-1] + b"\x04").raw == h("6700")
    assert psam.tx(good[:-1] + b"\x00").sw == OK
    assert psam.tx(good[:-1]).sw == OK
    assert psam.tx("807201000400000000").raw == h("6A86")


def test_psam_in_factory_state(factory_psam: Harness) -> None:
    ps = factory_psam
    assert ps.tx(ps.init_sam_apdu(h("01020304"), 1, 10, 6)).raw == h("6985")
    assert ps.tx("807200000400000000").raw == h("6985")


def test_full_purchase_with_psam(alg: Alg, funded: Harness, psam: Harness) -> None:
    card = funded
    card.ok(rb(SFI_PUBLIC))
    info = card.init_purchase(250)
    seq, mac1 = psam.init_sam(info.rand, info.offline_seq, 250, 6)
    out = card.ok(apdu(0x80, 0x54, 0x01, 0x00, seq.to_bytes(4, "big") + DATE + TIME_ + mac1, 0x08))
    assert psam.tx(h("80720000 04") + out[4:]).raw == h("9000")
    assert card.balance() == 9_750
    assert out[:4] == crypto.purchase_tac(alg, card.keys.dtk, 250, 6, TERM_ID_PSAM, seq, DATE, TIME_)


def test_psam_init_sam_after_many(psam: Harness) -> None:
    assert psam.bump_term_seq(300) == 300
    assert psam.init_sam(h("01020304"), 1, 10, 6)[0] == 301


def test_psam_keeps_term_id_write_never(psam: Harness) -> None:
    assert psam.tx(psam.mac_apdu(0x04, 0xD6, 0x96, 0x00, b"\x00", bytes(4))).sw in (0x6982, 0x6984, 0x6D00)
    assert psam.ok(rb(0x16)) == TERM_ID_PSAM


def test_ext_auth_on_issued_psam(alg: Alg, psam: Harness) -> None:
    chal = psam.challenge(8)
    assert psam.tx(ext_auth_apdu(alg, chal)).raw == h("6985")
    assert psam.tx(put_key_apdu(alg, 0x21, 3, KT)).raw == h("6985")


# ======================================================================================================
# counters at FFFF (§2.6): reached by real transactions, one counter per suite to keep the time down
# ======================================================================================================


@pytest.mark.slow
@pytest.mark.parametrize("alg,counter", [(Alg.DES, "online"), (Alg.SM4, "offline")], ids=["des-online", "sm4-offline"])
def test_counter_at_ffff(alg: Alg, counter: str) -> None:
    hn = personalised("user", alg, ScriptedRng(88))
    hn.select_purse()
    hn.load(1_000)
    card, keys = hn.card, hn.keys
    start = 1 if counter == "online" else 0
    ok = b"\x90\x00"
    if counter == "online":
        init = init_load_apdu(0)
        for seq in range(start, 0xFFFF):
            r = card.transmit(init)
            assert r[-2:] == ok and int.from_bytes(r[4:6], "big") == seq, (seq, hx(r))
            sk = crypto.load_session_key(alg, keys.dlk, r[8:12], seq)
            mac2 = crypto.load_mac2(alg, sk, 0, TERM_ID_LOAD, DATE, TIME_)
            assert card.transmit(b"\x80\x52\x00\x00\x0b" + DATE_TIME + mac2)[-2:] == ok, seq
        assert hn.tx(init_load_apdu(0)).raw == h("9402")
        assert hn.tx(init_load_apdu(0, key_idx=2)).raw == h("9403")  # key before counter
        assert hn.tx(init_load_apdu(PURSE_LIMIT)).raw == h("9402")  # counter before amount
        assert hn.log()[0][:2] == b"\xff\xfe"  # FFFE was used, FFFF never
        assert hn.tx(proof_apdu(2, 0xFFFE)).sw == OK
        hn.purchase(10)  # the other counter is not affected
    else:
        init = init_purchase_apdu(0)
        for seq in range(start, 0xFFFF):
            r = card.transmit(init)
            assert r[-2:] == ok and int.from_bytes(r[4:6], "big") == seq, (seq, hx(r))
            sk = crypto.purchase_session_key(alg, keys.dpk, r[11:15], seq, 1)
            mac1 = crypto.purchase_mac1(alg, sk, 0, 6, TERM_ID_PSAM, DATE, TIME_)
            debit = b"\x80\x54\x01\x00\x0f" + (1).to_bytes(4, "big") + DATE_TIME + mac1
            assert card.transmit(debit)[-2:] == ok, seq
        assert hn.tx(init_purchase_apdu(0)).raw == h("9402")
        assert hn.tx(init_purchase_apdu(0, txn_type=9)).raw == h("9402")
        assert hn.tx(init_purchase_apdu(0, key_idx=2)).raw == h("9403")
        assert hn.tx(init_purchase_apdu(5_000)).raw == h("9402")  # counter before balance
        assert hn.log()[0][:2] == b"\xff\xfe"
        assert hn.tx(proof_apdu(6, 0xFFFE)).sw == OK
        hn.load(10)
    assert hn.balance() in (1_000 - 10, 1_000 + 10)


# ======================================================================================================
# more of §2.2, §2.5, §2.6
# ======================================================================================================


def test_read_binary_at_most_256(ext: Harness) -> None:
    assert ext.ok(rb(0x13, 0, 0)) == BIG[:256]
    assert ext.ok(rb(0x13, 0, None)) == BIG[:256]
    ext.ok(rb(0x13, 0, 1))
    assert ext.ok(rb(None, 100, 0)) == BIG[100:]
    assert ext.ok(rb(None, 0x0120, 0)) == BIG[0x120:]
    assert ext.tx(rb(None, 300, 0)).raw == h("6B00")
    assert ext.tx(rb(None, 290, 11)).raw == h("6700")


def test_update_binary_write_access_00_still_needs_the_line_mac(ext: Harness) -> None:
    assert ext.tx(apdu(0x04, 0xD6, 0x92, 0x00, b"\x01" + bytes(4))).raw == h("6984")
    assert ext.update_binary(0x92, 0, b"\x01", bad=True).sw == 0x6988
    assert ext.update_binary(0x92, 0, b"\x01\x02").sw == OK
    assert ext.ok(rb(0x12, 0, 2)) == h("0102")


def test_update_binary_le(user: Harness) -> None:
    chal = user.challenge(4)
    assert user.tx(user.mac_apdu(0x04, 0xD6, 0x96, 0x00, b"AB", chal, le=0x00)).raw == h("9000")
    chal = user.challenge(4)
    assert user.tx(user.mac_apdu(0x04, 0xD6, 0x96, 0x00, b"CD", chal, le=0x01)).raw == h("6700")
    assert user.ok(rb(0x16, 0, 2)) == b"AB"


def test_update_binary_ef0015_rule_by_current_ef(user: Harness) -> None:
    user.ok(rb(SFI_PUBLIC, 0, 1))
    assert user.update_binary(0x00, 12, b"\x00").sw == 0x6985
    assert user.update_binary(0x00, 28, b"\x03").sw == OK
    assert user.ok(rb(SFI_PUBLIC, 28, 1)) == b"\x03"


def test_pin_survives_select_of_an_ef_not_power_off(user: Harness) -> None:
    assert user.select_ssc().sw == OK
    assert user.verify_sw(PIN_SSC) == OK
    assert user.tx(select_fid(0x0005)).raw == h("9000")
    assert len(user.ok(rb(None, 0, 0))) == 64
    user.card.power_off()
    user.card.power_on()
    user.select_ssc()
    assert user.tx(rb(0x05)).raw == h("6982")


def test_change_pin_in_the_second_application(user: Harness) -> None:
    user.select_ssc()
    assert user.tx(apdu(0x80, 0x5E, 0x01, 0x00, PIN_SSC + b"\xff" + h("1357"))).raw == h("9000")
    assert user.verify_sw(h("1357")) == OK
    user.select_purse()
    assert user.verify_sw(PIN_PURSE) == OK


def test_reload_pin_after_an_8_byte_challenge(user: Harness) -> None:
    chal = user.challenge(8)
    assert user.tx(user.reload_pin_apdu(h("97531F"), chal)).raw == h("9000")
    assert user.verify_sw(h("97531F")) == OK


def test_create_ef_bad_sizes(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    assert card.tx(create_ef_apdu(0x0015, 0x15, 0x01, h("0000"), 0x00, 0x02)).raw == h("6A80")
    assert card.tx(create_ef_apdu(0x0017, 0x17, 0x02, h("3000"), 0x00, 0xFF)).raw == h("6A80")
    assert card.tx(create_ef_apdu(0x0017, 0x17, 0x02, h("0004"), 0x00, 0xFF)).raw == h("6A80")
    assert card.tx(create_ef_apdu(0x0018, 0x18, 0x03, h("000A"), 0x00, 0xFF)).raw == h("6A80")
    card.ok(create_ef_apdu(0x0017, 0x17, 0x02, h("3004"), 0x00, 0xFF))


def test_put_pin_bad_format(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    assert card.tx(h("80D420000403 12A456")).raw == h("6A80")
    assert card.tx(h("80D420000203 12")).raw == h("6A80")
    card.ok(h("80D420000403123456"))


def test_failed_80dc_keeps_a_capp_purchase(funded: Harness) -> None:
    rec = capp_record(0x5C)
    info = funded.init_purchase(5, 9)
    assert funded.tx(apdu(0x80, 0xDC, 1, (SFI_CAPP << 3) | 4, rec)).raw == h("6A86")
    assert funded.tx(capp_apdu(1, rec, sfi=SFI_ABSENT)).raw == h("6A82")
    assert funded.tx(capp_apdu(1, rec, sfi=SFI_PUBLIC)).raw == h("6985")
    assert funded.tx(capp_apdu(1, rec)).raw == h("9000")
    funded.ok(funded.debit_apdu(info, 5, 9))
    assert funded.ok(rr(1, SFI_CAPP)) == rec


def test_transaction_commands_cross_cancel(funded: Harness) -> None:
    # 80DC cancels a pending load
    info = funded.init_load(10)
    assert funded.tx(capp_apdu(1, capp_record(1))).raw == h("6985")
    assert funded.tx(funded.credit_apdu(info, 10)).raw == h("6985")
    # DEBIT ends a pending load
    info = funded.init_load(10)
    assert funded.tx(apdu(0x80, 0x54, 0x01, 0x00, bytes(4) + DATE_TIME + bytes(4), 0x08)).raw == h("6985")
    assert funded.tx(funded.credit_apdu(info, 10)).raw == h("6985")
    # CREDIT ends a pending purchase
    pinfo = funded.init_purchase(10)
    assert funded.tx(apdu(0x80, 0x52, 0, 0, DATE_TIME + bytes(4), 0x04)).raw == h("6985")
    assert funded.tx(funded.debit_apdu(pinfo, 10)).raw == h("6985")
    assert funded.balance() == 10_000


def test_key_versions_come_from_put_key(alg: Alg) -> None:
    keys = Harness.factory("user", alg).keys
    extra = [hx(put_key_apdu(alg, 3, 1, keys.dlk, version=5)), hx(put_key_apdu(alg, 2, 1, keys.dpk, version=7))]
    hn = personalised("user", alg, ScriptedRng(78), extra)
    hn.select_purse()
    r = hn.ok(init_load_apdu(0))
    assert r[6:8] == bytes((5, int(alg)))
    r = hn.ok(init_purchase_apdu(0))
    assert r[9:11] == bytes((7, int(alg)))


def test_read_record_of_a_transparent_file(user: Harness) -> None:
    assert user.tx(rr(1, SFI_PUBLIC)).raw == h("6985")


def test_write_data_needs_a_current_ef(alg: Alg, factory_user: Harness) -> None:
    card = factory_user
    authenticate(card)
    card.ok(create_df_apdu(0x1001, AID_PURSE))
    assert card.tx(apdu(0x80, 0xD6, 0x00, 0x00, b"\x01")).raw == h("6985")
