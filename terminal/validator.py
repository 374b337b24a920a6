"""The bus validator: a tap, its fare, one CAPP purchase, a durable record, one line for the rider.

A tap (spec §2.4, purchase; §2.1, EF 0015 and EF 0017 record 1) goes:

1. refuse at once when the store is full (records wait for acknowledgement, spec §5: never drop one);
2. read EF 0015; settle any intent this card left here before (a crash or a card pulled away: see
   :mod:`terminal.recovery`); an intent that turns out charged within ``recovered_window`` answers "already paid";
3. refuse unknown issuers, hotlisted cards and cards outside their EF 0015 dates, recording each refusal;
4. "already paid" for a second tap of the same card here within ``repeat_window`` (nothing is charged);
5. read the transit record, let the fare engine (:mod:`terminal.fares`) decide, and run the CAPP purchase that
   both charges and rewrites EF 0017 record 1, its intent committed before DEBIT
   (:func:`terminal.recovery.durable_purchase`);
6. commit the record, then show the fare and the new balance.

Times come from a :class:`terminal.clock.ClockGuard` (never backwards, corrected when far from the server's).
:func:`run_validator` drives a validator on PC/SC readers, with a background uplink (batches, hotlist, fares).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any

from cardos.batch import BatchRecord
from cardos.layout import PublicData, TransitRecord
from cardos.sw import SW
from terminal.cards import PsamCard, UserCard
from terminal.channel import Channel
from terminal.clock import ClockGuard, ClockReport
from terminal.errors import CardRemoved, CardStatusError, TerminalError, TransactionRefused, WaitTimeout
from terminal.fares import DistanceLine, FareDecision, FareRuleError, FareTable, Tap, TapKind, decide
from terminal.purse import CardSource, PurseTerminal, RecordMeta
from terminal.recovery import durable_purchase, expire_intents, settle_intents
from terminal.store import DeviceStore, StorageFull

log = logging.getLogger("onecard.terminal.validator")

CST = timezone(timedelta(hours=8), "CST")
"""China Standard Time, the default local time of cards and records."""

_COLUMN = re.compile(r"[0-9A-Za-z_.-]{0,32}")


class TapStatus(StrEnum):
    """What a tap ended in."""

    CHARGED = "charged"
    TAPPED_IN = "tapped-in"
    ALREADY_PAID = "already-paid"
    REFUSED = "refused"
    UNCONFIRMED = "unconfirmed"


class Refusal(StrEnum):
    """Why a tap was refused."""

    STORAGE_FULL = "storage_full"
    UNKNOWN_ISSUER = "unknown_issuer"
    HOTLISTED = "hotlisted"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    CARD_UNREADABLE = "card_unreadable"
    CARD_REMOVED = "card_removed"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    CARD_REFUSED = "card_refused"
    NO_FARE = "no_fare"


def yuan(fen: int) -> str:
    """``¥12.34`` for 1234 fen."""
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


@dataclass(frozen=True, slots=True)
class TapOutcome:
    """The end of one tap: what the rider is shown (``message``, one line) and what was stored."""

    status: TapStatus
    message: str
    at: datetime
    card_no: str | None = None
    fare: int = 0
    balance_after: int | None = None
    record: BatchRecord | None = None
    decision: FareDecision | None = None
    refusal: Refusal | None = None
    recovered: tuple[BatchRecord, ...] = ()
    channel: Channel | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The outcome as a JSON document (one line of ``onecard validator run``)."""
        return {
            "event": "tap",
            "status": str(self.status),
            "message": self.message,
            "at": self.at.isoformat(),
            "card_no": self.card_no,
            "fare": self.fare,
            "balance_after": self.balance_after,
            "refusal": None if self.refusal is None else str(self.refusal),
            "kind": None if self.decision is None else str(self.decision.kind),
            "reason": None if self.decision is None else self.decision.reason,
            "record": None if self.record is None else self.record.to_json(),
            "recovered": [r.to_json() for r in self.recovered],
        }


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    """What a validator is configured with (besides its fare table, PSAM and store)."""

    device_id: str
    operator_id: str
    line_id: int
    vehicle_id: str
    stations: tuple[int, ...]
    issuers: frozenset[str]
    """Accepted issuer_ids (EF 0015 bytes 0-7), upper-case hex."""
    tz: tzinfo = CST
    repeat_window: timedelta = timedelta(seconds=60)
    recovered_window: timedelta = timedelta(minutes=30)
    intent_grace: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not 1 <= self.line_id <= 0xFFFF:
            raise ValueError("line_id must be 1-65535")
        if not self.stations:
            raise ValueError("a validator needs the line's stations")
        if not _COLUMN.fullmatch(self.vehicle_id):
            raise ValueError("vehicle_id must be up to 32 of [0-9A-Za-z_.-] (spec §5 column 17)")


class Validator:
    """One bus validator (see the module docstring). Not thread-safe: one reader drives it."""

    def __init__(
        self,
        config: ValidatorConfig,
        fares: FareTable,
        store: DeviceStore,
        psam: PsamCard,
        clock: ClockGuard,
        *,
        card_source: CardSource | None = None,
        recovery_timeout: float = 10.0,
        station: int | None = None,
        display: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._check_table(fares)
        self.fares = fares
        self._offered: FareTable | None = None
        self.store = store
        self.psam = psam
        self.clock = clock
        self.display = display or (lambda line: log.info("display: %s", line))
        self.station = config.stations[0] if station is None else station
        self.set_station(self.station)
        self._tap_time: datetime | None = None
        self.terminal = PurseTerminal(
            clock=self._tap_clock,
            psam=psam,
            card_source=card_source,
            recovery_timeout=recovery_timeout,
            notify=self.display,
        )

    # --- configuration -------------------------------------------------------------------------------

    def _check_table(self, table: FareTable) -> None:
        line = table.line(self.config.line_id)
        if isinstance(line, DistanceLine):
            missing = [s for s in self.config.stations if s not in line.stations]
            if missing:
                raise FareRuleError(f"fare table {table.version} has no fare for stations {missing}")

    def set_station(self, station: int) -> None:
        """The stop the bus is at (distance fares are by station pair)."""
        if station not in self.config.stations:
            raise ValueError(f"station {station} is not on line {self.config.line_id}")
        self.station = station

    def offer_fares(self, table: FareTable) -> None:
        """A new fare table, taken at the start of the next tap (safe to call from another thread)."""
        self._check_table(table)
        self._offered = table

    def _tap_clock(self) -> datetime:
        return self._tap_time if self._tap_time is not None else self.clock.now()

    def status(self) -> dict[str, object]:
        """What the validator reports: configuration, fare and hotlist versions, storage (spec §5), clock flags."""
        return {
            "device_id": self.config.device_id,
            "line_id": self.config.line_id,
            "station": self.station,
            "fare_version": self.fares.version,
            "hotlist_version": self.store.hotlist_version(),
            "pending": self.store.pending_count(),
            "capacity": self.store.capacity,
            "storage_full": self.store.is_full(),
            "intents": len(self.store.intents()),
            "batches_pending": len(self.store.batches("pending")),
            **self.clock.flags,
        }

    # --- the tap -------------------------------------------------------------------------------------

    def tap(self, channel: Channel) -> TapOutcome:
        """Handle one card in the field (spec §2.4 purchase, §2.1 transit record); the message is displayed."""
        if self._offered is not None:
            self.fares, self._offered = self._offered, None
        now = self.clock.now()
        self._tap_time = now
        try:
            outcome = self._tap(channel, now)
        finally:
            self._tap_time = None
        self.display(outcome.message)
        return outcome

    def _refuse(
        self, now: datetime, refusal: Refusal, message: str, card_no: str | None = None, *, record: bool = False
    ) -> TapOutcome:
        if record:
            try:
                self.store.add_event("refusal", f"{refusal}: {message}", at=now, card_no=card_no)
            except sqlite3.Error as exc:
                log.error("refusal of %s not recorded: %s", card_no, exc)
        return TapOutcome(TapStatus.REFUSED, message, now, card_no, refusal=refusal)

    def _tap(self, channel: Channel, now: datetime) -> TapOutcome:
        if self.store.is_full():
            return self._refuse(
                now,
                Refusal.STORAGE_FULL,
                "Tap refused: validator storage full (records awaiting upload) - please tell the driver",
            )
        card = UserCard(channel)
        try:
            card.select_purse()
            public = card.read_public()
        except CardRemoved:
            return self._refuse(now, Refusal.CARD_REMOVED, "Card moved away - tap again")
        except CardStatusError as exc:
            blocked = exc.sw in (SW.APP_BLOCKED_TEMP, SW.APP_LOCKED, SW.FUNCTION_NOT_SUPPORTED)
            text = "Card blocked - please visit a service counter" if blocked else "Card not readable here"
            return self._refuse(now, Refusal.CARD_UNREADABLE, text)
        except ValueError:
            return self._refuse(now, Refusal.CARD_UNREADABLE, "Card not readable here")
        card_no = public.card_no

        recovered: tuple[BatchRecord, ...] = ()
        if self.store.intents(card_no):
            try:
                settled = settle_intents(self.store, card, card_no, at=now)
            except CardRemoved:
                return self._refuse(now, Refusal.CARD_REMOVED, "Card moved away - tap again", card_no)
            except CardStatusError as exc:
                log.warning("card %s: cannot settle its intents: %s", card_no, exc)
                settled = []
            recovered = tuple(s.record for s in settled if s.record is not None)
            recent = [s for s in settled if s.charged and now - s.intent.tap_time < self.config.recovered_window]
            if recent:
                balance = _balance_or_none(card)
                paid = recent[-1].intent.draft.amount
                text = f"Already paid {yuan(paid)} (earlier tap confirmed)"
                if balance is not None:
                    text += f" - balance {yuan(balance)}"
                return TapOutcome(
                    TapStatus.ALREADY_PAID, text, now, card_no, balance_after=balance, recovered=recovered
                )

        refused = self._check_card(public, now)
        if refused is not None:
            return refused

        last = self.store.last_tap(card_no)
        if last is not None and timedelta(0) <= now - last[0] < self.config.repeat_window:
            text = "Already tapped in" if last[1] == TapKind.TAP_IN else "Already paid"
            return TapOutcome(TapStatus.ALREADY_PAID, text, now, card_no, recovered=recovered)

        try:
            transit_raw = card.read_capp_record(1)
            transit = TransitRecord.decode(transit_raw)
        except CardRemoved:
            return self._refuse(now, Refusal.CARD_REMOVED, "Card moved away - tap again", card_no)
        except (CardStatusError, ValueError):
            return self._refuse(now, Refusal.CARD_UNREADABLE, "Card has no transit record - not valid here", card_no)
        tap = Tap(now, self.config.line_id, self.station, self.psam.term_id, public.card_type)
        try:
            decision = decide(self.fares, tap, transit)
        except FareRuleError as exc:
            log.error("no fare: %s", exc)
            return self._refuse(now, Refusal.NO_FARE, "Out of service: no fare for this stop", card_no, record=True)
        return self._charge(channel, public, transit_raw, decision, now, recovered)

    def _check_card(self, public: PublicData, now: datetime) -> TapOutcome | None:
        refused = card_refusal(public, issuers=self.config.issuers, store=self.store, today=now.strftime("%Y%m%d"))
        if refused is None:
            return None
        refusal, message = refused
        return self._refuse(now, refusal, message, public.card_no, record=refusal is not Refusal.CARD_UNREADABLE)

    def _charge(
        self,
        channel: Channel,
        public: PublicData,
        transit_raw: bytes,
        decision: FareDecision,
        now: datetime,
        recovered: tuple[BatchRecord, ...],
    ) -> TapOutcome:
        card_no = public.card_no
        new_record = decision.record.encode()

        def capp_record(_public: PublicData, old: bytes) -> bytes:
            if old != transit_raw:
                raise TransactionRefused("the card's transit record changed during the tap: tap again")
            return new_record

        ref = f"fares={decision.table_version};{decision.kind}"
        if decision.penalty:
            ref += f";pen={decision.penalty}"
        meta = RecordMeta(
            line_id=str(self.config.line_id),
            station_id=str(self.station),
            vehicle_id=self.config.vehicle_id,
            ref=ref,
        )
        try:
            result = durable_purchase(
                self.terminal,
                self.store,
                channel,
                decision.fare,
                public=public,
                tap_time=now,
                kind=str(decision.kind),
                fare_version=decision.table_version,
                meta=meta,
                capp_record=capp_record,
            )
        except StorageFull:
            return self._refuse(
                now, Refusal.STORAGE_FULL, "Tap refused: validator storage full - please tell the driver", card_no
            )
        except sqlite3.Error as exc:
            log.error("the store failed during the tap of %s: %s", card_no, exc)
            if self._has_intent(card_no):
                return TapOutcome(
                    TapStatus.UNCONFIRMED, "Fare not confirmed - tap the card again", now, card_no, recovered=recovered
                )
            return self._refuse(now, Refusal.STORAGE_FULL, "Tap refused: validator storage error", card_no)
        except TransactionRefused as exc:
            if exc.sw == SW.INSUFFICIENT_BALANCE:
                return self._refuse(
                    now, Refusal.INSUFFICIENT_BALANCE, f"Insufficient balance: fare {yuan(decision.fare)}", card_no
                )
            return self._refuse(now, Refusal.CARD_REFUSED, f"Tap refused: {exc.reason}", card_no)
        except CardRemoved:
            if self._has_intent(card_no):
                return TapOutcome(
                    TapStatus.UNCONFIRMED, "Fare not confirmed - tap the card again", now, card_no, recovered=recovered
                )
            return self._refuse(now, Refusal.CARD_REMOVED, "Card moved away - tap again", card_no)
        except TerminalError as exc:
            log.warning("tap of %s failed: %s", card_no, exc)
            if self._has_intent(card_no):
                return TapOutcome(
                    TapStatus.UNCONFIRMED, "Fare not confirmed - tap the card again", now, card_no, recovered=recovered
                )
            return self._refuse(now, Refusal.CARD_REFUSED, "Tap failed - tap again", card_no)
        if result.record is None:
            return TapOutcome(
                TapStatus.UNCONFIRMED,
                "Fare not confirmed - tap the card again",
                now,
                card_no,
                decision=decision,
                recovered=recovered,
                channel=result.purchase.channel,
            )
        balance = result.purchase.balance_after
        balance_text = f"balance {yuan(balance)}" if balance is not None else "balance unknown"
        if decision.kind is TapKind.TAP_IN:
            status = TapStatus.TAPPED_IN
            text = f"Tapped in at stop {self.station} - {balance_text}"
            if decision.fare:
                text = f"Unfinished trip charged {yuan(decision.fare)} - " + text
        else:
            status = TapStatus.CHARGED
            text = f"Fare {yuan(decision.fare)} - {balance_text}"
            if decision.transfer:
                text += " (transfer)"
        return TapOutcome(
            status,
            text,
            now,
            card_no,
            fare=decision.fare,
            balance_after=balance,
            record=result.record,
            decision=decision,
            recovered=recovered,
            channel=result.purchase.channel,
        )

    # --- upkeep --------------------------------------------------------------------------------------

    def _has_intent(self, card_no: str) -> bool:
        try:
            return bool(self.store.intents(card_no))
        except sqlite3.Error:
            return True  # cannot tell: do not claim that nothing happened

    def housekeeping(self) -> list[BatchRecord]:
        """Between taps: intents older than ``intent_grace`` become ``unconfirmed`` records (clearing settles
        them from the card's counters); old repeat-tap memory is dropped. Returns the records made."""
        now = self.clock.now()
        made = expire_intents(self.store, older_than=now - self.config.intent_grace)
        self.store.forget_taps_before(now - self.config.repeat_window - timedelta(hours=1))
        return made


def card_refusal(
    public: PublicData, *, issuers: frozenset[str], store: DeviceStore, today: str
) -> tuple[Refusal, str] | None:
    """Why a card may not pay here, from EF 0015 (spec §2.1): unknown issuer, hotlisted, outside its dates."""
    if public.issuer_id.hex().upper() not in issuers:
        return Refusal.UNKNOWN_ISSUER, "Card not accepted here"
    if store.hotlist_entry(public.card_no) is not None:
        return Refusal.HOTLISTED, "Card reported lost or blocked - please visit a service counter"
    if not (_is_date(public.start_date) and _is_date(public.expiry_date)):
        return Refusal.CARD_UNREADABLE, "Card data invalid - visit a service counter"
    if today > public.expiry_date:
        return Refusal.EXPIRED, "Card expired - please renew it"
    if today < public.start_date:
        return Refusal.NOT_YET_VALID, "Card not valid yet"
    return None


def _is_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _balance_or_none(card: UserCard) -> int | None:
    try:
        return card.get_balance()
    except TerminalError:
        return None


# --- running on PC/SC readers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedWall:
    """A wall clock that runs ``speed`` times real time from ``start`` at the Unix time ``anchor``
    (demos and tests; the same anchor across restarts keeps the simulated time continuous)."""

    start: datetime
    anchor: float
    speed: float = 1.0

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.speed)


@dataclass(frozen=True)
class ServerSettings:
    """The back office a validator reports to."""

    url: str
    upload_key: bytes
    upload_interval: float = 5.0
    hotlist_interval: float = 300.0
    fares_interval: float = 3600.0
    batch_max_records: int = 500
    batch_max_age: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class ValidatorSettings:
    """Everything :func:`run_validator` needs, from a JSON settings file (``onecard validator run``)."""

    config: ValidatorConfig
    fares: FareTable
    reader: str
    psam_reader: str
    db: Path
    capacity: int = 100_000
    recovery_timeout: float = 10.0
    station_file: Path | None = None
    server: ServerSettings | None = None
    wall: Callable[[], datetime] | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], base: Path | None = None) -> ValidatorSettings:
        """Parse a settings document.

        Keys: ``device_id``, ``operator_id``, ``line_id``, ``vehicle_id``, ``stations``, ``issuers`` (hex
        issuer_ids), ``reader``, ``psam_reader``, ``db``, ``fares`` (a table) or ``fares_file``; optional
        ``tz_offset_minutes`` (480), ``repeat_window_seconds`` (60), ``recovered_window_minutes`` (30),
        ``intent_grace_hours`` (24), ``capacity`` (100000), ``recovery_timeout`` (10), ``station_file`` (JSON
        ``{"station": id}`` kept by the driver console), ``server`` (``url``, ``upload_key`` hex,
        ``upload_interval_seconds``, ``hotlist_interval_seconds``, ``fares_interval_seconds``,
        ``batch_max_records``, ``batch_max_age_minutes``) and ``clock`` (``start``, ``anchor_unix``, ``speed``:
        a simulated wall clock). Relative paths are taken from ``base``.
        """
        root = base or Path.cwd()
        tz = timezone(timedelta(minutes=int(doc.get("tz_offset_minutes", 480))))
        config = ValidatorConfig(
            device_id=str(doc["device_id"]),
            operator_id=str(doc["operator_id"]),
            line_id=int(doc["line_id"]),
            vehicle_id=str(doc.get("vehicle_id", "")),
            stations=tuple(int(s) for s in doc["stations"]),
            issuers=frozenset(str(i).upper() for i in doc["issuers"]),
            tz=tz,
            repeat_window=timedelta(seconds=float(doc.get("repeat_window_seconds", 60))),
            recovered_window=timedelta(minutes=float(doc.get("recovered_window_minutes", 30))),
            intent_grace=timedelta(hours=float(doc.get("intent_grace_hours", 24))),
        )
        if "fares" in doc:
            fares = FareTable.from_json(doc["fares"])
        else:
            fares = FareTable.from_json(json.loads((root / str(doc["fares_file"])).read_text(encoding="utf-8")))
        server = None
        if doc.get("server"):
            raw = doc["server"]
            server = ServerSettings(
                url=str(raw["url"]),
                upload_key=bytes.fromhex(str(raw["upload_key"])),
                upload_interval=float(raw.get("upload_interval_seconds", 5.0)),
                hotlist_interval=float(raw.get("hotlist_interval_seconds", 300.0)),
                fares_interval=float(raw.get("fares_interval_seconds", 3600.0)),
                batch_max_records=int(raw.get("batch_max_records", 500)),
                batch_max_age=timedelta(minutes=float(raw.get("batch_max_age_minutes", 15))),
            )
        wall: Callable[[], datetime] | None = None
        if doc.get("clock"):
            sim = doc["clock"]
            wall = SimulatedWall(
                datetime.fromisoformat(str(sim["start"])), float(sim["anchor_unix"]), float(sim.get("speed", 1.0))
            )
        station_file = doc.get("station_file")
        return cls(
            config=config,
            fares=fares,
            reader=str(doc["reader"]),
            psam_reader=str(doc["psam_reader"]),
            db=root / str(doc["db"]),
            capacity=int(doc.get("capacity", 100_000)),
            recovery_timeout=float(doc.get("recovery_timeout", 10.0)),
            station_file=None if station_file is None else root / str(station_file),
            server=server,
            wall=wall,
        )


def _read_station(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["station"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


HOUSEKEEPING_INTERVAL = 60.0
"""Seconds between two :meth:`Validator.housekeeping` runs while no card is in the field."""
FAILED_REFRESH_RETRY = 5.0
"""Seconds before a failed hotlist or fare-table refresh is tried again."""


def _uplink_loop(
    settings: ValidatorSettings, server: ServerSettings, clock: ClockGuard, validator: Validator, stop: threading.Event
) -> None:
    from terminal.hotlist import refresh_hotlist
    from terminal.uplink import DeviceClient, HttpxTransport, UplinkError, Uploader

    config = settings.config
    store = DeviceStore(settings.db, capacity=settings.capacity)
    transport = HttpxTransport(server.url)
    client = DeviceClient(
        transport,
        config.device_id,
        server.upload_key,
        wall=clock.corrected_wall,
        on_server_time=clock.observe_server_time,
    )
    uploader = Uploader(
        store,
        client,
        config.device_id,
        config.operator_id,
        server.upload_key,
        clock.corrected_wall,
        batch_max_records=server.batch_max_records,
        batch_max_age=server.batch_max_age,
    )
    next_hotlist = next_fares = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_hotlist:
                try:
                    refresh_hotlist(store, client)
                    next_hotlist = now + server.hotlist_interval
                except (UplinkError, ValueError) as exc:
                    log.warning("hotlist not refreshed: %s", exc)
                    next_hotlist = now + min(server.hotlist_interval, FAILED_REFRESH_RETRY)
            if now >= next_fares:
                try:
                    validator.offer_fares(client.fares())
                    next_fares = now + server.fares_interval
                except (UplinkError, ValueError) as exc:
                    log.warning("fare table not refreshed: %s", exc)
                    next_fares = now + min(server.fares_interval, FAILED_REFRESH_RETRY)
            try:
                uploader.tick()
            except TerminalError as exc:
                log.warning("upload round failed: %s", exc)
            stop.wait(server.upload_interval)
    finally:
        transport.close()
        store.close()


def run_validator(
    settings: ValidatorSettings, *, stop: threading.Event, emit: Callable[[dict[str, Any]], None]
) -> None:
    """Run a validator on PC/SC readers until ``stop`` is set: one tap at a time, each outcome to ``emit``."""
    from terminal.reader import PcscCardSource, wait_for_card

    config = settings.config
    store = DeviceStore(settings.db, capacity=settings.capacity)

    def report(event: ClockReport) -> None:
        with DeviceStore(settings.db, capacity=settings.capacity) as events:
            events.add_event(f"clock_{event.kind}", event.detail, at=event.issued)

    wall = settings.wall or (lambda: datetime.now(config.tz))
    clock = ClockGuard(wall, tz=config.tz, floor=store.latest_time(), report=report)
    psam_channel = wait_for_card(settings.psam_reader, 10.0, disposition="leave")
    psam = PsamCard(psam_channel)
    psam.open()
    source = PcscCardSource(settings.reader)
    validator = Validator(
        config,
        settings.fares,
        store,
        psam,
        clock,
        card_source=source,
        recovery_timeout=settings.recovery_timeout,
        station=station if (station := _read_station(settings.station_file)) in config.stations else None,
    )
    next_housekeeping = 0.0
    uplink: threading.Thread | None = None
    if settings.server is not None:
        uplink = threading.Thread(
            target=_uplink_loop, args=(settings, settings.server, clock, validator, stop), name="uplink", daemon=True
        )
        uplink.start()
    emit({"event": "ready", "term_id": psam.term_id.hex(), **validator.status()})
    try:
        while not stop.is_set():
            station = _read_station(settings.station_file)
            if station is not None and station != validator.station:
                with contextlib.suppress(ValueError):
                    validator.set_station(station)
            try:
                channel = source.wait_for_card(0.5)
            except WaitTimeout:
                if time.monotonic() >= next_housekeeping:
                    validator.housekeeping()
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
                continue
            outcome = validator.tap(channel)
            emit(outcome.to_json())
            for used in {id(c): c for c in (channel, outcome.channel) if c is not None}.values():
                while not stop.is_set():
                    try:
                        source.wait_for_removal(used, 0.5)
                        break
                    except WaitTimeout:
                        log.debug("waiting for the card to leave")
                        continue
            log.debug("card gone")
    finally:
        stop.set()
        if uplink is not None:
            uplink.join(10.0)
        psam_channel.close()
        store.close()
