"""Resident ID numbers (GB 11643-1999): check character, region and birth date. Pure.

The resident ID number is also the social-security number (issue #5). An 18-character number is
``region 6 ‖ birth date 8 (YYYYMMDD) ‖ sequence 3 ‖ check 1``; the 17th character is odd for men, even for
women; the check character is ``(12 − Σ dᵢ·wᵢ mod 11) mod 11`` with ``wᵢ = 2^(17−i) mod 11``, ``10`` written ``X``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from backoffice.errors import InvalidInput

ID_NUMBER_LENGTH = 18
WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
"""The weights of the first 17 digits: 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2."""
CHECK_CHARACTERS = "0123456789X"

PROVINCE_CODES = frozenset(
    {
        "11", "12", "13", "14", "15",
        "21", "22", "23",
        "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46",
        "50", "51", "52", "53", "54",
        "61", "62", "63", "64", "65",
        "71", "81", "82", "83",
    }
)  # fmt: skip
"""First two digits of a region code (GB/T 2260 provinces; 81–83 are the residence permits of Hong Kong,
Macao and Taiwan residents, whose region is ``810000`` / ``820000`` / ``830000``)."""
PERMIT_PROVINCES = frozenset({"81", "82", "83"})
EARLIEST_BIRTH_DATE = date(1900, 1, 1)


class IdNumberError(InvalidInput):
    """An ID number that is malformed, fails its check character, or names an impossible region or birth date."""

    code = "invalid_id_number"


@dataclass(frozen=True, slots=True)
class ResidentIdNumber:
    """A checked 18-character resident ID number. ``repr`` never shows the number."""

    number: str
    region_code: str
    birth_date: date
    male: bool

    def __repr__(self) -> str:
        return "ResidentIdNumber(<redacted>)"


def check_character(first17: str) -> str:
    """The GB 11643 check character of 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise IdNumberError("an ID number starts with 17 digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARACTERS[(12 - total % 11) % 11]


def normalise(number: str) -> str:
    """Strip surrounding blanks and upper-case a trailing ``x``."""
    return number.strip().upper()


def parse_id_number(number: str, today: date) -> ResidentIdNumber:
    """Check an ID number (issue #5: checksum per GB 11643, region and birth date sane) and return its parts.

    Raises :class:`IdNumberError`; the message never repeats the number.
    """
    text = normalise(number)
    if len(text) != ID_NUMBER_LENGTH:
        raise IdNumberError("an ID number has 18 characters")
    first17, check = text[:17], text[17]
    if check_character(first17) != check:
        raise IdNumberError("the ID number's check character is wrong")
    region = text[:6]
    province = region[:2]
    if province not in PROVINCE_CODES:
        raise IdNumberError("the ID number's region code names no province")
    if province in PERMIT_PROVINCES:
        if region[2:] != "0000":
            raise IdNumberError("the ID number's region code is not a residence-permit region")
    elif region[2:] == "0000":
        raise IdNumberError("the ID number's region code is a whole province, not a city or county")
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        raise IdNumberError("the ID number's birth date is not a date") from None
    if born < EARLIEST_BIRTH_DATE or born > today:
        raise IdNumberError("the ID number's birth date is out of range")
    return ResidentIdNumber(text, region, born, int(text[16]) % 2 == 1)
