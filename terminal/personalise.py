"""Run a personalisation script (spec §2.5) over a channel: authenticate with KT, then every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cardos import crypto, perso
from cardos.apdu import CommandAPDU
from terminal.channel import Channel
from terminal.errors import check_sw

SELECT_MF = CommandAPDU(0x00, 0xA4, 0x00, 0x00, bytes.fromhex("3F00"))


def personalise(
    channel: Channel,
    alg: crypto.Alg,
    transport_key: bytes,
    steps: Sequence[perso.Step],
    progress: Callable[[int, int, str], None] | None = None,
) -> None:
    """SELECT the MF, GET CHALLENGE, EXTERNAL AUTHENTICATE with KT, then send ``steps`` in order.

    Any status word other than ``9000`` raises :class:`~terminal.errors.CardStatusError` naming the step.
    """
    check_sw(channel.transmit(SELECT_MF), "SELECT MF")
    challenge = check_sw(channel.transmit(perso.get_challenge8()), "GET CHALLENGE").data
    check_sw(
        channel.transmit(perso.external_authenticate(alg, transport_key, challenge)), "EXTERNAL AUTHENTICATE"
    )
    total = len(steps)
    for index, step in enumerate(steps, start=1):
        check_sw(channel.transmit(step.apdu), step.name)
        if progress is not None:
            progress(index, total, step.name)
