"""Personalisation scripts (spec §2.5): the APDUs that turn a factory chip into an issued card or PSAM.

Pure builders: they return the commands to send after ``GET CHALLENGE`` + ``EXTERNAL AUTHENTICATE``
(see :func:`external_authenticate`). Terminals run them over a channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cardos import crypto
from cardos.apdu import CommandAPDU
from cardos.keyfile import CARD_KEY_MASTERS, IssuerKeys
from cardos.layout import (
    CAPP_RECORD_COUNT,
    CAPP_RECORD_LEN,
    HOLDER_LEN,
    LOG_RECORD_COUNT,
    LOG_RECORD_LEN,
    PSAM_ADF_FID,
    PSAM_AID,
    PUBLIC_LEN,
    PURSE_ADF_FID,
    PURSE_AID,
    SFI_CAPP,
    SFI_HOLDER,
    SFI_LOG,
    SFI_PUBLIC,
    SFI_SOCIAL,
    SFI_TERM_ID,
    SOCIAL_ADF_FID,
    SOCIAL_AID,
    SOCIAL_LEN,
    Access,
    FileKind,
    HolderData,
    KeyUsage,
    PublicData,
    SocialSecurityData,
    encode_pin,
)

KEY_TRIES = 0x0F
PIN_TRIES = 0x03
SELECT_MF = CommandAPDU(0x00, 0xA4, 0x00, 0x00, bytes.fromhex("3F00"))


@dataclass(frozen=True)
class Step:
    """One command of a script, named for logs and progress bars."""

    name: str
    apdu: CommandAPDU


def get_challenge8() -> CommandAPDU:
    """GET CHALLENGE of 8 bytes, before EXTERNAL AUTHENTICATE."""
    return CommandAPDU(0x00, 0x84, 0x00, 0x00, b"", 8)


def external_authenticate(alg: crypto.Alg, transport_key: bytes, challenge: bytes) -> CommandAPDU:
    """``00 82 00 10 08 E_KT(challenge)`` (spec §2.5)."""
    return CommandAPDU(0x00, 0x82, 0x00, 0x10, crypto.external_auth_cryptogram(alg, transport_key, challenge))


def create_df(fid: int, aid: bytes) -> Step:
    """CREATE DF."""
    return Step("CREATE DF", CommandAPDU(0x80, 0xE0, 0x01, 0x00, fid.to_bytes(2, "big") + bytes((len(aid),)) + aid))


def create_ef(fid: int, sfi: int, kind: FileKind, size: int, read: Access, write: Access) -> Step:
    """CREATE EF."""
    data = fid.to_bytes(2, "big") + bytes((sfi, kind)) + size.to_bytes(2, "big") + bytes((read, write))
    return Step("CREATE EF", CommandAPDU(0x80, 0xE0, 0x02, 0x00, data))


PUT_KEY_DATA_LENGTH = 22
"""``version 1 ‖ alg 1 ‖ tries 1 ‖ E_KT(key) 16 ‖ KCV 3``."""

PutKeyData = Callable[[int], bytes]
"""Gives the PUT KEY data of a card key by usage (from clear keys here, from a keystore in the back office)."""


def put_key_data(alg: crypto.Alg, transport_key: bytes, version: int, key: bytes) -> bytes:
    """PUT KEY data from a clear key: ``version ‖ alg ‖ tries ‖ E_KT(key) ‖ KCV(key)`` (spec §2.5)."""
    return bytes((version, alg, KEY_TRIES)) + crypto.wrap_key(alg, transport_key, key) + crypto.kcv(alg, key)


def put_key_step(data: bytes, usage: int, index: int = 0x01) -> Step:
    """PUT KEY with ready-made data (22 bytes)."""
    if len(data) != PUT_KEY_DATA_LENGTH:
        raise ValueError("PUT KEY data is 22 bytes")
    return Step("PUT KEY", CommandAPDU(0x80, 0xD4, usage, index, data))


def put_key(alg: crypto.Alg, transport_key: bytes, usage: int, index: int, version: int, key: bytes) -> Step:
    """PUT KEY of a clear key."""
    return put_key_step(put_key_data(alg, transport_key, version, key), usage, index)


def put_pin(pin: bytes, tries: int = PIN_TRIES) -> Step:
    """PUT PIN."""
    return Step("PUT PIN", CommandAPDU(0x80, 0xD4, 0x20, 0x00, bytes((tries,)) + pin))


def write_data(data: bytes, offset: int = 0) -> Step:
    """WRITE DATA into the current transparent EF."""
    return Step("WRITE DATA", CommandAPDU(0x80, 0xD6, offset >> 8, offset & 0xFF, data))


def init_purse(limit: int) -> Step:
    """INIT PURSE."""
    return Step("INIT PURSE", CommandAPDU(0x80, 0xD8, 0x00, 0x00, limit.to_bytes(4, "big") + b"\x00" * 4))


def finish() -> Step:
    """FINISH."""
    return Step("FINISH", CommandAPDU(0x80, 0xE8, 0x00, 0x00))


@dataclass(frozen=True)
class CardContents:
    """What is written onto a user card besides its keys (encoded files, BCD PINs, the purse limit)."""

    public_data: bytes
    holder_data: bytes
    purse_pin: bytes
    purse_limit: int
    social_data: bytes | None = None
    social_pin: bytes | None = None

    def __repr__(self) -> str:
        return f"CardContents(limit={self.purse_limit}, social={self.social_data is not None})"


@dataclass(frozen=True)
class UserCardProfile:
    """A user card with its clear diversified keys by usage (tests, demos, the embedded default)."""

    alg: crypto.Alg
    transport_key: bytes
    card_keys: dict[int, bytes]
    key_version: int
    public_data: bytes
    holder_data: bytes
    purse_pin: bytes
    purse_limit: int
    social_data: bytes | None = None
    social_pin: bytes | None = None

    def __repr__(self) -> str:
        return f"UserCardProfile(alg={self.alg:02X}, key_version={self.key_version})"

    @property
    def contents(self) -> CardContents:
        """The profile without its keys."""
        return CardContents(
            self.public_data, self.holder_data, self.purse_pin, self.purse_limit, self.social_data, self.social_pin
        )

    def key_data(self, usage: int) -> bytes:
        """PUT KEY data of the card key of ``usage``."""
        return put_key_data(self.alg, self.transport_key, self.key_version, self.card_keys[usage])


PURSE_KEY_USAGES = (KeyUsage.DAMK, KeyUsage.DPK, KeyUsage.DLK, KeyUsage.DTK, KeyUsage.DPUK, KeyUsage.DRPK)
SOCIAL_KEY_USAGES = (KeyUsage.DAMK, KeyUsage.DPUK, KeyUsage.DRPK)


def user_card_steps(contents: CardContents, key_data: PutKeyData) -> list[Step]:
    """Personalise a user card (spec §2.5): ADF 1001 with keys, PIN, EF 0015–0018 and the purse; ADF 1002; FINISH.

    The order is that of the vector exchange ``personalise_user_card``; ``key_data`` gives each PUT KEY's data.
    """
    if len(contents.public_data) != PUBLIC_LEN or len(contents.holder_data) != HOLDER_LEN:
        raise ValueError("EF 0015 is 30 bytes and EF 0016 56")
    steps = [create_df(PURSE_ADF_FID, PURSE_AID)]
    steps += [put_key_step(key_data(usage), usage) for usage in PURSE_KEY_USAGES]
    steps += [
        put_pin(contents.purse_pin),
        create_ef(0x0015, SFI_PUBLIC, FileKind.TRANSPARENT, PUBLIC_LEN, Access.FREE, Access.LINE_MAC),
        write_data(contents.public_data),
        create_ef(0x0016, SFI_HOLDER, FileKind.TRANSPARENT, HOLDER_LEN, Access.FREE, Access.LINE_MAC),
        write_data(contents.holder_data),
        create_ef(
            0x0017, SFI_CAPP, FileKind.LINEAR, (CAPP_RECORD_LEN << 8) | CAPP_RECORD_COUNT, Access.FREE, Access.NEVER
        ),
        create_ef(
            0x0018, SFI_LOG, FileKind.CYCLIC, (LOG_RECORD_LEN << 8) | LOG_RECORD_COUNT, Access.FREE, Access.NEVER
        ),
        init_purse(contents.purse_limit),
    ]
    if contents.social_data is not None:
        if len(contents.social_data) != SOCIAL_LEN or contents.social_pin is None:
            raise ValueError("EF 0005 is 64 bytes and ADF 1002 needs a PIN")
        steps += [
            Step("SELECT", SELECT_MF),
            create_df(SOCIAL_ADF_FID, SOCIAL_AID),
            *(put_key_step(key_data(usage), usage) for usage in SOCIAL_KEY_USAGES),
            put_pin(contents.social_pin),
            create_ef(0x0005, SFI_SOCIAL, FileKind.TRANSPARENT, SOCIAL_LEN, Access.PIN, Access.LINE_MAC),
            write_data(contents.social_data),
        ]
    steps.append(finish())
    return steps


def user_card_script(profile: UserCardProfile) -> list[Step]:
    """:func:`user_card_steps` with the profile's clear keys."""
    return user_card_steps(profile.contents, profile.key_data)


def psam_steps(term_id: bytes, mpk_data_by_version: dict[int, bytes]) -> list[Step]:
    """Personalise a PSAM (spec §3): ADF with EF 0016 = term_id, one MPK per version (ready PUT KEY data); FINISH."""
    if len(term_id) != 6:
        raise ValueError("term_id is 6 bytes")
    steps = [
        create_df(PSAM_ADF_FID, PSAM_AID),
        create_ef(0x0016, SFI_TERM_ID, FileKind.TRANSPARENT, 6, Access.FREE, Access.NEVER),
        write_data(term_id),
    ]
    for version, data in sorted(mpk_data_by_version.items()):
        steps.append(put_key_step(data, KeyUsage.MPK, version))
    steps.append(finish())
    return steps


def psam_script(alg: crypto.Alg, transport_key: bytes, term_id: bytes, mpk_by_version: dict[int, bytes]) -> list[Step]:
    """:func:`psam_steps` with clear MPKs."""
    data = {version: put_key_data(alg, transport_key, version, mpk) for version, mpk in mpk_by_version.items()}
    return psam_steps(term_id, data)


ANONYMOUS_LIMIT_FEN = 100_000
"""An anonymous card holds at most 1,000 yuan."""
REGISTERED_LIMIT_FEN = 500_000
"""A registered card holds at most 5,000 yuan."""


def purse_limit(registered: bool) -> int:
    """The purse limit set at personalisation: 5,000 yuan registered, 1,000 yuan anonymous."""
    return REGISTERED_LIMIT_FEN if registered else ANONYMOUS_LIMIT_FEN


def user_card_profile(
    keys: IssuerKeys,
    *,
    card_no: str,
    holder: HolderData | None = None,
    card_type: int = 0x01,
    pin: str = "123456",
    start_date: str = "20250101",
    expiry_date: str = "20341231",
    social: SocialSecurityData | None = None,
    social_pin: str = "654321",
    key_version: int = 1,
) -> UserCardProfile:
    """A user card profile from issuer master keys: diversified keys, EF 0015/0016, PIN and purse limit.

    A card with a holder is registered (limit 5,000 yuan); one without is anonymous (1,000 yuan).
    """
    if "KT" not in keys.keys:
        raise ValueError("the key set has no transport key KT")
    card_no_bytes = bytes.fromhex(card_no)
    registered = holder is not None
    public = PublicData(
        issuer_id=keys.issuer_id,
        card_no=card_no,
        start_date=start_date,
        expiry_date=expiry_date,
        card_type=card_type,
        registered=registered,
    )
    card_keys = {usage: keys.card_key(usage, card_no_bytes) for usage in CARD_KEY_MASTERS}
    return UserCardProfile(
        alg=keys.alg,
        transport_key=keys.keys["KT"],
        card_keys=card_keys,
        key_version=key_version,
        public_data=public.encode(),
        holder_data=(holder or HolderData("", "", "")).encode(),
        purse_pin=encode_pin(pin),
        purse_limit=purse_limit(registered),
        social_data=social.encode() if social is not None else None,
        social_pin=encode_pin(social_pin) if social is not None else None,
    )


def psam_script_from_keys(keys: IssuerKeys, term_id: str, key_version: int = 1) -> list[Step]:
    """A PSAM personalisation script for ``term_id`` (12 digits) with the issuer's MPK."""
    return psam_script(keys.alg, keys.keys["KT"], bytes.fromhex(term_id), {key_version: keys.keys["MPK"]})
