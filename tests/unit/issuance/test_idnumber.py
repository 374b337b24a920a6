"""GB 11643 resident ID numbers: check character, region, birth date."""

from __future__ import annotations

from datetime import date

import pytest

from issuance.idnumber import IdNumberError, check_character, parse_id_number

TODAY = date(2025, 3, 1)

# Check characters computed by hand from the weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2:
# 11010519491231002 → Σ = 167, 167 mod 11 = 2, (12 − 2) mod 11 = 10 → "X".
VALID = [
    "11010519491231002X",
    "110101199003071233",
    "440304198506153216",
    "310104200002290049",  # born on 29 February 2000
    "110101201001010015",
    "810000199501010015",  # Hong Kong residents' permit region
]


@pytest.mark.parametrize("number", VALID)
def test_valid_numbers(number: str) -> None:
    parsed = parse_id_number(number, TODAY)
    assert parsed.number == number
    assert parsed.region_code == number[:6]
    assert parsed.birth_date.strftime("%Y%m%d") == number[6:14]
    assert number not in repr(parsed)


def test_lower_case_x_and_blanks_are_normalised() -> None:
    assert parse_id_number(" 11010519491231002x ", TODAY).number == "11010519491231002X"
    assert parse_id_number("11010519491231002X", TODAY).male is False  # 17th digit 2: even


def test_check_character() -> None:
    assert check_character("11010519491231002") == "X"
    assert check_character("11010119900307123") == "3"


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("110101199003071234", "check character"),  # the spec's example holder: check is 3, not 4
        ("110105194912310021", "check character"),
        ("11010519491231002", "18 characters"),
        ("1101051949123100200", "18 characters"),
        ("11010519491231002Y", "check character"),
        ("A1010519491231002X", "17 digits"),
        ("990101199003071234"[:17] + check_character("99010119900307123"), "province"),
        ("110000199003071234"[:17] + check_character("11000019900307123"), "whole province"),
        ("110101199002301234"[:17] + check_character("11010119900230123"), "not a date"),
        ("110101189912311234"[:17] + check_character("11010118991231123"), "out of range"),
        ("110101203001011234"[:17] + check_character("11010120300101123"), "out of range"),
    ],
)
def test_invalid_numbers(number: str, reason: str) -> None:
    with pytest.raises(IdNumberError, match=reason) as caught:
        parse_id_number(number, TODAY)
    assert number not in str(caught.value)
    assert caught.value.code == "invalid_id_number" and caught.value.http_status == 422
