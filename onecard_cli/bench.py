"""``onecard bench tap``: a full purchase through pcscd, against the raw PC/SC round trip of the same run.

The figure of merit is the median purchase (card in the field → MAC2 checked by the PSAM). Its baseline is
what the purchase cannot avoid: ``APDU count × raw no-op round trip + the card's, PSAM's and terminal's own
processing`` (the same purchases run in-process on copies of the same cards). ``ratio = value / baseline``.
Storing the record durably (SQLite WAL, synchronous=FULL) is timed separately.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cardos import perso
from cardos.apdu import CommandAPDU, ResponseAPDU
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from cardos.layout import HolderData
from cardos.memory import Memory
from simulators.pcscd import ensure_pcscd, vpcd_lock
from simulators.vpcd import VpcdSlot
from terminal.cards import PsamCard, UserCard
from terminal.channel import Channel, InProcessChannel, measure_round_trip
from terminal.loadhost import KeyFileLoadHost
from terminal.personalise import personalise
from terminal.purse import PurseTerminal
from terminal.reader import wait_for_card

CARD_NO = "0310000000000001"
TERM_ID = "031000000101"


class CountingChannel:
    """Counts the APDUs that go through a channel."""

    def __init__(self, inner: Channel) -> None:
        self.inner = inner
        self.count = 0

    @property
    def atr(self) -> bytes:
        """The inner channel's ATR."""
        return self.inner.atr

    def transmit(self, cmd: CommandAPDU) -> ResponseAPDU:
        """Count and pass on."""
        self.count += 1
        return self.inner.transmit(cmd)

    def close(self) -> None:
        """Close the inner channel."""
        self.inner.close()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time_purchases(term: PurseTerminal, channel: Channel, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        term.purchase(channel, 1)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        term.purchase(channel, 1)
        samples.append(time.perf_counter() - started)
    return samples


def _durable_store(n: int) -> list[float]:
    """Insert ``n`` records one transaction each into SQLite (WAL, synchronous=FULL)."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "validator.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE record (device_seq INTEGER PRIMARY KEY, line TEXT NOT NULL)")
        for seq in range(1, n + 1):
            row = f"06,{CARD_NO},01,{seq},1,500000,{TERM_ID},{seq},20251122,080000,0A0B0C0D,00,01,ok,,,,,{seq}"
            started = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO record VALUES (?, ?)", (seq, row))
            db.execute("COMMIT")
            samples.append(time.perf_counter() - started)
        db.close()
    return samples


def bench_tap(alg: Alg, n: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run the tap benchmark; return its JSON document."""
    keys = IssuerKeys.generate(bytes.fromhex("0310000000000000"), alg)
    card = Card.factory(CardKind.USER, alg, keys.keys["KT"], os.urandom(8))
    psam = Card.factory(CardKind.PSAM, alg, keys.keys["KT"], os.urandom(8))
    clock = datetime.now().astimezone
    with vpcd_lock():
        return _bench_tap_locked(alg, n, progress, keys, card, psam, clock)


def _bench_tap_locked(
    alg: Alg,
    n: int,
    progress: Callable[[str], None],
    keys: IssuerKeys,
    card: Card,
    psam: Card,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    pcscd = ensure_pcscd()
    card_slot, psam_slot = VpcdSlot(0), VpcdSlot(1)
    try:
        card_slot.insert(card)
        psam_slot.insert(psam)
        channel = wait_for_card(card_slot.reader_name, 10.0)
        psam_channel = wait_for_card(psam_slot.reader_name, 10.0)
        progress("personalising the card and the PSAM through PC/SC")
        holder = HolderData("BENCH", "110101199003071234", "13800000000")
        profile = perso.user_card_profile(keys, card_no=CARD_NO, holder=holder)
        personalise(channel, alg, keys.keys["KT"], perso.user_card_script(profile))
        personalise(psam_channel, alg, keys.keys["KT"], perso.psam_script_from_keys(keys, TERM_ID))
        psam_card = PsamCard(psam_channel)
        psam_card.open()
        term = PurseTerminal(clock=clock, psam=psam_card)
        host = KeyFileLoadHost(keys, clock)
        term.load(channel, perso.REGISTERED_LIMIT_FEN, host, term_id=bytes.fromhex("031000009001"), request_id="b")
        card_image, psam_image = card.memory.to_image(), psam.memory.to_image()

        progress("measuring the raw PC/SC round trip")
        raw = measure_round_trip(card_slot.reader_name, max(200, n))

        progress(f"timing {n} purchases through pcscd")
        counting = CountingChannel(channel)
        term.purchase(counting, 1)
        apdus_card = counting.count
        psam_counting = CountingChannel(psam_channel)
        psam_card.channel = psam_counting
        term.purchase(channel, 1)
        apdus_psam = psam_counting.count
        psam_card.channel = psam_channel
        samples = _time_purchases(term, channel, n, warmup=10)
        balance = UserCard(channel).get_balance()
        channel.close()
        psam_channel.close()
    finally:
        card_slot.close()
        psam_slot.close()
        pcscd.stop()

    progress("timing the same purchases in-process (processing without transport)")
    local_card = Card.from_memory(Memory.from_image(card_image))
    local_psam = Card.from_memory(Memory.from_image(psam_image))
    local_psam_card = PsamCard(InProcessChannel(local_psam))
    local_psam_card.open()
    local_term = PurseTerminal(clock=clock, psam=local_psam_card)
    local_samples = _time_purchases(local_term, InProcessChannel(local_card), n, warmup=10)

    progress("timing durable record storage")
    store = _durable_store(min(n, 500))
    apdus = apdus_card + apdus_psam
    median = statistics.median(samples)
    processing = statistics.median(local_samples)
    baseline = apdus * raw.median + processing
    return {
        "bench": "tap",
        "value": round(median * 1000, 4),
        "unit": "ms",
        "baseline": round(baseline * 1000, 4),
        "ratio": round(median / baseline, 3),
        "alg": f"{alg:02X}",
        "purchases": n,
        "median_ms": round(median * 1000, 4),
        "p99_ms": round(_percentile(samples, 0.99) * 1000, 4),
        "apdu_count": apdus,
        "apdu_count_card": apdus_card,
        "apdu_count_psam": apdus_psam,
        "raw_round_trip_median_ms": round(raw.median * 1000, 4),
        "raw_round_trip_p95_ms": round(raw.p95 * 1000, 4),
        "processing_median_ms": round(processing * 1000, 4),
        "store_durable_median_ms": round(statistics.median(store) * 1000, 4),
        "store_durable_p99_ms": round(_percentile(store, 0.99) * 1000, 4),
        "target_median_ms": 3.0,
        "target_ratio": 2.0,
        "balance_after": balance,
    }
