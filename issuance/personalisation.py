"""Personalisation through the keystore (spec §2.5, §3): the scripts and running them over a channel.

The scripts are those of :mod:`cardos.perso`, in the same order as the vector exchange
``personalise_user_card``, except that every PUT KEY carries data the keystore made (the card key wrapped
under KT), so no clear key ever reaches this process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cardos import crypto, perso
from cardos.apdu import CommandAPDU
from cardos.layout import (
    PUBLIC_LEN,
    PURSE_AID,
    SFI_PUBLIC,
    HolderData,
    KeyUsage,
    PublicData,
    SocialSecurityData,
)
from cardos.sw import SW
from issuance.keys import Keystore
from terminal.channel import Channel
from terminal.errors import check_sw

Progress = Callable[[int, int, str], None]
"""``progress(done, total, step_name)``."""

PURSE_KEY_USAGES = (KeyUsage.DAMK, KeyUsage.DPK, KeyUsage.DLK, KeyUsage.DTK, KeyUsage.DPUK, KeyUsage.DRPK)
SOCIAL_KEY_USAGES = (KeyUsage.DAMK, KeyUsage.DPUK, KeyUsage.DRPK)
KEY_INDEX = 0x01


@dataclass(frozen=True)
class UserCardContents:
    """Everything written onto a user card. PINs are BCD (:func:`cardos.layout.encode_pin`); never logged."""

    alg: crypto.Alg
    key_version: int
    public: PublicData
    holder: HolderData
    purse_limit: int
    purse_pin: bytes
    social: SocialSecurityData | None = None
    social_pin: bytes | None = None

    def __repr__(self) -> str:
        return f"UserCardContents(card_no={self.public.card_no}, alg={self.alg:02X}, social={self.social is not None})"


def user_card_steps(keys: Keystore, contents: UserCardContents) -> list[perso.Step]:
    """The personalisation script of a user card (spec §2.5), after EXTERNAL AUTHENTICATE; every PUT KEY's
    data comes from the keystore (:func:`cardos.perso.user_card_steps`)."""
    card_no = bytes.fromhex(contents.public.card_no)
    alg, version = contents.alg, contents.key_version
    encoded = perso.CardContents(
        public_data=contents.public.encode(),
        holder_data=contents.holder.encode(),
        purse_pin=contents.purse_pin,
        purse_limit=contents.purse_limit,
        social_data=contents.social.encode() if contents.social is not None else None,
        social_pin=contents.social_pin,
    )
    return perso.user_card_steps(encoded, lambda usage: keys.put_key_data(alg, version, usage, card_no))


def psam_steps(keys: Keystore, alg: crypto.Alg, key_version: int, term_id: str) -> list[perso.Step]:
    """The personalisation script of a PSAM (spec §3): EF 0016 = term_id, MPK of ``key_version``, FINISH."""
    return perso.psam_steps(bytes.fromhex(term_id), {key_version: keys.psam_put_key_data(alg, key_version)})


def run_script(
    channel: Channel,
    keys: Keystore,
    alg: crypto.Alg,
    transport_version: int,
    steps: Sequence[perso.Step],
    progress: Progress | None = None,
) -> None:
    """SELECT MF, GET CHALLENGE, EXTERNAL AUTHENTICATE with the keystore's cryptogram, then every step.

    Any status word but ``9000`` raises :class:`terminal.errors.CardStatusError` naming the step.
    """
    check_sw(channel.transmit(perso.SELECT_MF), "SELECT MF")
    challenge = check_sw(channel.transmit(perso.get_challenge8()), "GET CHALLENGE").data
    cryptogram = keys.external_authenticate(alg, transport_version, challenge)
    check_sw(channel.transmit(CommandAPDU(0x00, 0x82, 0x00, 0x10, cryptogram)), "EXTERNAL AUTHENTICATE")
    total = len(steps)
    for done, step in enumerate(steps, start=1):
        check_sw(channel.transmit(step.apdu), step.name)
        if progress is not None:
            progress(done, total, step.name)


def chip_serial(atr: bytes) -> str:
    """The chip serial from an ATR ``3B 88 80 01 ‖ serial 8 ‖ TCK`` (spec §0), as 16 hex digits."""
    if len(atr) != 13 or atr[:4] != bytes.fromhex("3B888001"):
        raise ValueError("not a one-card ATR")
    return atr[4:12].hex().upper()


def issued_card_no(channel: Channel) -> str | None:
    """The card_no of an issued card's EF 0015, or ``None`` for a chip without the purse application."""
    response = channel.transmit(CommandAPDU(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 256))
    if response.sw == SW.FILE_NOT_FOUND:
        return None
    check_sw(response, "SELECT purse", (SW.OK, SW.APP_BLOCKED_TEMP))
    raw = check_sw(channel.transmit(CommandAPDU(0x00, 0xB0, 0x80 | SFI_PUBLIC, 0x00, b"", PUBLIC_LEN)), "READ 0015")
    return PublicData.decode(raw.data).card_no
