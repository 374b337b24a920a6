"""A simulated bus day through real pcscd: the validator in a subprocess, cards tapped into vpcd slot 0.

The validator (``python -m onecard_cli.validator run``) serves ``Virtual PCD 00 00`` with its PSAM in
``Virtual PCD 00 01`` and uploads to a fake device API over real HTTP (hotlist, fares, batches: the first two
batch uploads fail with 503). One bus runs line 301 out and back (15 stops); riders tap in and out, some tap
twice, some forget to tap out, some cards are hotlisted, expired, of an unknown issuer or short of money;
four taps are torn in DEBIT (two riders come back in time, two do not), and the validator is SIGKILLed twice
in the middle of a tap (once right after the card's DEBIT, once at a seeded random command) and restarted.

At the end every card object is read back in-process and compared with the records (the server's accepted
batches plus what is still in the validator's store): each charge on a card has exactly one record with its
TAC, no refused card has any, and device_seq runs 1..N without a gap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import COUNTER_TERM_ID, issue_card, issue_psam, vector_keys

from cardos import crypto, perso
from cardos.batch import BatchRecord, parse_batch
from cardos.card import Card, CardKind
from cardos.crypto import Alg
from cardos.keyfile import IssuerKeys
from cardos.layout import TXN_CAPP, TXN_PURCHASE, CardType, KeyUsage, TransitRecord
from simulators.pcscd import Pcscd
from simulators.vpcd import TearMode, VpcdSlot
from terminal.cards import PsamCard
from terminal.channel import InProcessChannel
from terminal.loadhost import KeyFileLoadHost
from terminal.personalise import personalise
from terminal.purse import PurseTerminal
from terminal.store import DeviceStore

pytestmark = pytest.mark.pcsc

ROOT = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
KEYS = vector_keys(Alg.DES)
ISSUER = KEYS.issuer_id.hex().upper()
DEVICE = "BUSA-V01"
UPLOAD_KEY = bytes(range(7, 39))
TERM_ID = "031000000101"
LINE = 301
STATIONS = list(range(1, 9))
ROUTE = STATIONS + STATIONS[-2::-1]  # 1..8..1
REPEAT_WINDOW = 3.0
RECOVERY_TIMEOUT = 5.0
SEED = 20250303
BOARDINGS_PER_STOP = 5
START_BALANCE = 5_000
PERCENT = {CardType.ADULT: 100, CardType.STUDENT: 50, CardType.SENIOR: 0, CardType.DISABLED: 0}
DEBIT_INS = 0x54


def pair_fare(entry: int, leave: int) -> int:
    return 200 + 50 * abs(entry - leave)


MAX_FARE = pair_fare(STATIONS[0], STATIONS[-1])


def fares(version: str) -> dict[str, Any]:
    return {
        "version": version,
        "operator_id": "OP-BUS-A",
        "service_day_starts": "04:00",
        "daily_cap": 2_000,
        "concessions": {"student": {"percent": 50}, "senior": {"percent": 0}, "disabled": {"percent": 0}},
        "lines": {
            str(LINE): {
                "name": "301",
                "kind": "distance",
                "stations": STATIONS,
                "fares": [[pair_fare(a, b) for b in STATIONS] for a in STATIONS],
                "max_trip_minutes": 180,
            }
        },
    }


# --- the fake device API, over real HTTP ------------------------------------------------------------------


@dataclass
class ApiState:
    hotlist: dict[str, str]
    failing_batch_posts: int = 2
    fares_ready: threading.Event = field(default_factory=threading.Event)
    hotlist_served: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, bytes] = field(default_factory=dict)
    posts: list[tuple[str, bytes, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ApiHandler(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str = "") -> None:
        self._reply(status, {"error": {"code": code, "message": message, "details": {}}})

    def _authenticated(self, body: bytes) -> bool:
        stamp = self.headers.get("X-Timestamp", "0")
        message = f"{self.command}\n{self.path}\n{stamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        expected = hmac.new(UPLOAD_KEY, message, hashlib.sha256).hexdigest()
        if self.headers.get("X-Device-Id") != DEVICE or not hmac.compare_digest(
            self.headers.get("X-Signature", ""), expected
        ):
            self._error(401, "unauthorized")
            return False
        if abs(int(stamp) - time.time()) > 300:
            self._error(401, "stale_request")
            return False
        return True

    def do_GET(self) -> None:
        if not self._authenticated(b""):
            return
        state = self.server.state
        if self.path.startswith("/devices/hotlist"):
            if "since=1" in self.path:
                self._reply(200, {"version": 1, "full": False, "entries": [], "removed": []})
            else:
                entries = [
                    {"card_no": c, "listed_at": "2025-03-01T00:00:00+08:00", "reason": r}
                    for c, r in state.hotlist.items()
                ]
                self._reply(200, {"version": 1, "full": True, "entries": entries, "removed": []})
            state.hotlist_served.set()
        elif self.path == "/devices/fares":
            if state.fares_ready.is_set():
                self._reply(200, fares("2025-03.2"))
            else:
                self._error(503, "unavailable")
        else:
            self._error(404, "not_found")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self._authenticated(body):
            return
        if self.path != "/devices/batches":
            self._error(404, "not_found")
            return
        state = self.server.state
        batch_id = json.loads(body.split(b"\n", 1)[0])["batch_id"]
        with state.lock:
            if state.failing_batch_posts > 0:
                state.failing_batch_posts -= 1
                state.posts.append((batch_id, body, 503))
                self._error(503, "unavailable")
                return
            signature = hmac.new(UPLOAD_KEY, body, hashlib.sha256).hexdigest()
            if self.headers.get("X-Batch-Signature") != signature:
                state.posts.append((batch_id, body, 422))
                self._error(422, "batch_refused", "bad signature")
                return
            batch = parse_batch(body)  # control totals checked here
            assert batch.header.device_id == DEVICE and batch.header.term_id == TERM_ID
            known = state.accepted.get(batch_id)
            if known is not None and known != body:
                state.posts.append((batch_id, body, 409))
                self._error(409, "conflict")
                return
            status = "duplicate" if known is not None else "accepted"
            state.accepted[batch_id] = body
            state.posts.append((batch_id, body, 200))
        self._reply(200, {"batch_id": batch_id, "status": status, "records": batch.header.record_count})


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ApiState) -> None:
        super().__init__(("127.0.0.1", 0), ApiHandler)
        self.state = state


# --- cards -------------------------------------------------------------------------------------------------


def load(card: Card, amount: int) -> None:
    now = datetime.now(CST)
    with InProcessChannel(card) as channel:
        PurseTerminal(clock=lambda: now).load(
            channel, amount, KeyFileLoadHost(KEYS, lambda: now), term_id=bytes.fromhex(COUNTER_TERM_ID), request_id="l"
        )


def new_card(number: int, card_type: int, balance: int, *, keys: IssuerKeys = KEYS, expiry: str | None = None) -> Card:
    card_no = f"{keys.issuer_id.hex()[:4]}{number:012d}"
    serial = (0xA000 + number).to_bytes(8, "big")
    if expiry is None:
        card = issue_card(keys, card_no, serial=serial, card_type=card_type)
    else:
        card = Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], serial)
        profile = perso.user_card_profile(
            keys, card_no=card_no, card_type=card_type, start_date="20200101", expiry_date=expiry
        )
        with InProcessChannel(card) as channel:
            personalise(channel, keys.alg, keys.keys["KT"], perso.user_card_script(profile))
    if balance and keys is KEYS:
        load(card, balance)
    return card


def open_trip_elsewhere(rider: Rider) -> None:
    """The rider tapped in on line 302 (another bus) earlier and never tapped out."""
    now = datetime.now(CST) - timedelta(hours=1)
    other = PsamCard(InProcessChannel(issue_psam(KEYS, "031000000302")))
    tapped_in = TransitRecord(
        trip_state=TransitRecord.TRIP_IN,
        line_id=302,
        entry_station=5,
        entry_term_id=bytes.fromhex("031000000302"),
        entry_date=bytes.fromhex(now.strftime("%Y%m%d")),
        entry_time=bytes.fromhex(now.strftime("%H%M%S")),
    )
    with InProcessChannel(rider.card) as channel:
        PurseTerminal(clock=lambda: now, psam=other).purchase(
            channel, 0, capp_record=lambda public, old: tapped_in.encode()
        )
    rider.open_elsewhere = True
    rider.first_seq = 1


def card_no_of(card: Card) -> str:
    with InProcessChannel(card) as channel:
        return PurseTerminal(clock=lambda: datetime.now(CST)).read(channel, counters=False).public.card_no


@dataclass
class Rider:
    card: Card
    card_no: str
    card_type: int
    balance: int
    entry: int | None = None
    open_elsewhere: bool = False
    first_seq: int = 0
    retired: bool = False
    last_tap: float = -100.0
    trips: int = 0


# --- the validator process and the tapper ------------------------------------------------------------------


class Bus:
    """The validator subprocess, its events, the reader slot riders tap into, and the driver's station file."""

    def __init__(self, tmp: Path, slot: VpcdSlot, psam_slot: VpcdSlot, api_url: str) -> None:
        self.tmp = tmp
        self.slot = slot
        self.station_file = tmp / "station.json"
        self.config = tmp / "validator.json"
        self.stderr_path = tmp / "validator.stderr"
        self.set_station(STATIONS[0])
        doc = {
            "device_id": DEVICE,
            "operator_id": "OP-BUS-A",
            "line_id": LINE,
            "vehicle_id": "BUS-0301",
            "stations": STATIONS,
            "issuers": [ISSUER],
            "reader": slot.reader_name,
            "psam_reader": psam_slot.reader_name,
            "db": "validator.db",
            "station_file": "station.json",
            "fares": fares("2025-03.1"),
            "repeat_window_seconds": REPEAT_WINDOW,
            "recovery_timeout": RECOVERY_TIMEOUT,
            "server": {
                "url": api_url,
                "upload_key": UPLOAD_KEY.hex(),
                "upload_interval_seconds": 0.5,
                "hotlist_interval_seconds": 30,
                "fares_interval_seconds": 3600,
                "batch_max_records": 25,
                "batch_max_age_minutes": 0.5,
            },
        }
        self.config.write_text(json.dumps(doc), encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self.taps = 0
        self.starts = 0

    def set_station(self, station: int) -> None:
        temp = self.station_file.with_suffix(".tmp")
        temp.write_text(json.dumps({"station": station}), encoding="utf-8")
        os.replace(temp, self.station_file)

    def start(self) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        stderr = self.stderr_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onecard_cli.validator", "run", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        self.events = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.events), daemon=True).start()
        self.starts += 1
        ready = self.next_event(20.0)
        assert ready["event"] == "ready", ready
        return ready

    @staticmethod
    def _read(proc: subprocess.Popen[str], events: queue.Queue[dict[str, Any] | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            events.put(json.loads(line))
        events.put(None)

    def next_event(self, timeout: float = 20.0) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the validator in {timeout} s\n{self.stderr_tail()}") from None
        if event is None:
            raise AssertionError(f"the validator exited\n{self.stderr_tail()}")
        self.log.append(event)
        return event

    def stderr_tail(self) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(encoding="utf-8").splitlines()[-30:])
        except OSError:
            return ""

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def _leave(self) -> None:
        """The rider takes the card away once the validator has released it."""
        self.slot.wait_finished(5.0, idle=2.0)
        self.slot.remove()

    def tap(
        self,
        rider: Rider | Card,
        *,
        tear: TearMode | None = None,
        write_index: int | None = None,
        comes_back: bool = True,
    ) -> dict[str, Any]:
        card = rider.card if isinstance(rider, Rider) else rider
        armed = None
        if tear is not None:
            armed = self.slot.tear(
                tear, write_index=write_index, when=lambda apdu: len(apdu) > 1 and apdu[1] == DEBIT_INS
            )
        self.slot.insert(card)
        if armed is not None:
            if armed.wait(10.0) and armed.fired:
                if comes_back:
                    self.slot.insert(card)
            else:
                self.slot.cancel_tear()
        event = self.next_event()
        self._leave()
        self.taps += 1
        if isinstance(rider, Rider):
            rider.last_tap = time.monotonic()
        return event

    def tap_and_die(self, rider: Rider, *, after_debit: bool, at_command: int = 0) -> None:
        """The validator is SIGKILLed in the middle of this tap (after the card's DEBIT, or at a command)."""
        assert self.proc is not None
        pid = self.proc.pid
        if after_debit:
            armed = self.slot.tear(TearMode.DROP_ANSWER, when=lambda apdu: len(apdu) > 1 and apdu[1] == DEBIT_INS)
            self.slot.insert(rider.card)
            assert armed.wait(10.0) and armed.fired
            os.kill(pid, signal.SIGKILL)
        else:
            answered = [0]

            def at(_card: object) -> bool:
                answered[0] += 1
                if answered[0] == at_command:
                    os.kill(pid, signal.SIGKILL)
                return False

            self.slot.insert(rider.card, done=at)
        self.proc.wait(15)
        time.sleep(0.5)  # let pcscd clean up after its dead client
        self.slot.remove()
        self.taps += 1
        rider.last_tap = time.monotonic()


@pytest.fixture
def api() -> Iterator[tuple[ApiState, str]]:
    state = ApiState(hotlist={})
    server = ApiServer(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bus_day(
    pcscd: Pcscd,
    vpcd_slot: VpcdSlot,
    vpcd_slot1: VpcdSlot,
    api: tuple[ApiState, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    state, url = api

    # --- cards ---------------------------------------------------------------------------------------------
    types = [CardType.ADULT] * 22 + [CardType.STUDENT] * 10 + [CardType.SENIOR] * 6 + [CardType.DISABLED] * 6
    riders = [Rider(new_card(n + 1, t, START_BALANCE), "", t, START_BALANCE) for n, t in enumerate(types)]
    poor = [Rider(new_card(101 + n, CardType.ADULT, 150), "", CardType.ADULT, 150) for n in range(2)]
    for rider in riders + poor:
        rider.card_no = card_no_of(rider.card)
    for rider in rng.sample(riders[:30], 4):
        open_trip_elsewhere(rider)
    hotlisted = [new_card(201 + n, CardType.ADULT, START_BALANCE) for n in range(3)]
    expired = [new_card(301 + n, CardType.ADULT, 0, expiry="20240630") for n in range(3)]
    for card in expired:
        load(card, START_BALANCE)
    foreign_keys = IssuerKeys(bytes.fromhex("0420000000000000"), KEYS.alg, dict(KEYS.keys))
    foreign = [new_card(401 + n, CardType.ADULT, 0, keys=foreign_keys) for n in range(2)]
    state.hotlist = {card_no_of(card): "lost" for card in hotlisted}
    refused_cards = hotlisted + expired + foreign

    # --- the PSAM and the validator ----------------------------------------------------------------------------
    psam = issue_psam(KEYS, TERM_ID)
    stop_psam = threading.Event()
    psam_thread = threading.Thread(target=vpcd_slot1.run, args=(psam, stop_psam), daemon=True)
    psam_thread.start()
    bus = Bus(tmp_path, vpcd_slot, vpcd_slot1, url)

    def stop_everything() -> None:
        """Whatever happens, no validator or PSAM is left running to disturb the next tests."""
        bus.stop()
        stop_psam.set()
        psam_thread.join(10)

    request.addfinalizer(stop_everything)
    expectations: list[tuple[str, dict[str, Any], set[str]]] = []

    def expect(
        what: str, event: dict[str, Any], *statuses: str, fare: int | None = None, refusal: str | None = None
    ) -> None:
        expectations.append((what, event, set(statuses)))
        assert event["status"] in statuses, f"{what}: {event}"
        if fare is not None:
            assert event["fare"] == fare, f"{what}: {event}"
        if refusal is not None:
            assert event["refusal"] == refusal, f"{what}: {event}"

    def gap(rider: Rider) -> None:
        """Riders' taps are further apart than the repeat window unless the test means a repeat."""
        wait = rider.last_tap + REPEAT_WINDOW + 0.5 - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def tap_in(rider: Rider, station: int, **tear: Any) -> dict[str, Any]:
        gap(rider)
        event = bus.tap(rider, **tear)
        if rider.open_elsewhere:  # a forgotten tap-out on line 302: the table's maximum first
            rider.open_elsewhere = False
            penalty = MAX_FARE * PERCENT[rider.card_type] // 100
            expect(f"tap-in with open trip {rider.card_no}", event, "tapped-in", fare=penalty)
            rider.balance -= penalty
        elif not tear or tear.get("comes_back", True):
            expect(f"tap-in {rider.card_no}", event, "tapped-in", fare=0)
        rider.entry = station
        return event

    def tap_out(rider: Rider, station: int) -> None:
        assert rider.entry is not None
        gap(rider)
        event = bus.tap(rider)
        fare = pair_fare(rider.entry, station) * PERCENT[rider.card_type] // 100
        if fare > rider.balance:
            expect(f"poor tap-out {rider.card_no}", event, "refused", refusal="insufficient_balance")
            rider.retired = True
            return
        expect(f"tap-out {rider.card_no}", event, "charged", fare=fare)
        rider.balance -= fare
        rider.entry = None
        rider.trips += 1

    bus.start()
    assert state.hotlist_served.wait(10.0)
    time.sleep(0.5)  # the uplink thread stores the list right after fetching it

    # --- the day ---------------------------------------------------------------------------------------------
    on_board: dict[int, int] = {}  # rider index -> destination stop index
    waiting = list(range(len(riders)))
    rng.shuffle(waiting)
    incidents: dict[int, str] = {
        1: "refused",
        3: "tear-comes-back",
        4: "kill-after-debit",
        5: "refused",
        6: "tear-not-charged",
        7: "kill-random",
        8: "tear-charged-gone",
        9: "poor",
        10: "tear-at-write",
        12: "refused",
    }
    refused_queue = list(refused_cards)
    kill_outcome = ""

    def fresh_rider() -> int | None:
        for index in waiting:
            rider = riders[index]
            if not rider.retired and index not in on_board:
                return index
        return None

    for stop_index, station in enumerate(ROUTE):
        bus.set_station(station)
        last_stop = stop_index == len(ROUTE) - 1
        for index, destination in sorted(on_board.items()):
            if destination != stop_index and not last_stop:
                continue
            rider = riders[index]
            del on_board[index]
            waiting.append(index)
            tap_out(rider, station)
        if last_stop:
            break
        boarding: list[int] = []
        for _ in range(BOARDINGS_PER_STOP):
            index = fresh_rider()
            if index is None:
                break
            waiting.remove(index)
            boarding.append(index)
        incident = incidents.get(stop_index)
        for position, index in enumerate(boarding):
            rider = riders[index]
            destination = min(len(ROUTE) - 1, stop_index + rng.randint(1, 4))
            if position == 0 and incident == "tear-comes-back":
                tap_in(rider, station, tear=TearMode.DROP_ANSWER)
            elif position == 0 and incident == "tear-at-write":
                tap_in(rider, station, tear=TearMode.AT_WRITE, write_index=rng.randint(1, 6))
            elif position == 0 and incident in ("tear-not-charged", "tear-charged-gone"):
                mode = TearMode.BEFORE_COMMAND if incident == "tear-not-charged" else TearMode.DROP_ANSWER
                gap(rider)
                first = bus.tap(rider, tear=mode, comes_back=False)
                expect(f"{incident} {rider.card_no}", first, "unconfirmed")
                again = bus.tap(rider)  # the rider taps again at once
                if incident == "tear-not-charged":
                    expect(f"{incident} again {rider.card_no}", again, "tapped-in", fare=0)
                else:
                    expect(f"{incident} again {rider.card_no}", again, "already-paid")
                rider.entry = station
            elif position == 0 and incident in ("kill-after-debit", "kill-random"):
                gap(rider)
                if incident == "kill-after-debit":
                    bus.tap_and_die(rider, after_debit=True)
                else:
                    kill_at = rng.randint(2, 7)
                    bus.tap_and_die(rider, after_debit=False, at_command=kill_at)
                bus.start()
                again = bus.tap(rider)
                if again["status"] == "refused" and again.get("refusal") == "card_removed":
                    again = bus.tap(rider)  # pcscd may still be settling after its killed client: tap again
                if incident == "kill-after-debit":
                    expect(f"{incident} again {rider.card_no}", again, "already-paid")
                else:
                    expect(f"{incident} again {rider.card_no}", again, "tapped-in", "already-paid", "charged")
                    kill_outcome = f"killed after card command {kill_at}, the tap again: {again['status']}"
                rider.retired = True  # its trip state depends on where the kill fell
                continue
            else:
                tap_in(rider, station)
            if position == 1 and stop_index % 4 == 2:
                repeat = bus.tap(rider)  # a second tap at once: nothing charged
                expect(f"repeat {rider.card_no}", repeat, "already-paid")
                assert repeat["message"] == "Already tapped in"
            on_board[index] = destination
        if incident == "refused":
            for card in refused_queue[:3]:
                event = bus.tap(card)
                expect("refused card", event, "refused")
            del refused_queue[:3]
        if incident == "poor":
            for rider in poor:
                tap_in(rider, station)
        if stop_index == 11:
            for rider in poor:
                tap_out(rider, station)
        if stop_index == 6:
            state.fares_ready.set()  # the operator publishes a new fare table version mid-day
    for card in refused_queue:
        expect("refused card", bus.tap(card), "refused")
    for card in hotlisted[:1]:  # refused again after both restarts: the hotlist is kept in the store
        expect("hotlisted again", bus.tap(card), "refused", refusal="hotlisted")

    # let the uplink deliver what it can, then stop the validator
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and len(state.accepted) < 2:
        time.sleep(0.2)
    bus.stop()
    stop_psam.set()
    psam_thread.join(5.0)
    day_seconds = time.monotonic() - started

    # --- every charge has exactly one record ---------------------------------------------------------------------
    records: list[BatchRecord] = []
    for body in state.accepted.values():
        records.extend(parse_batch(body).records)
    with DeviceStore(tmp_path / "validator.db") as store:
        assert store.intents() == [], "every torn or killed tap was settled when its card came back"
        for stored in store.records():
            if stored.batch_id is None or stored.batch_id not in state.accepted:
                records.append(stored.record)
        refusals = store.events("refusal")
    seqs = sorted(r.device_seq for r in records)
    assert seqs == list(range(1, len(records) + 1)), "device_seq runs 1..N: no record lost, none twice"
    by_card: dict[str, list[BatchRecord]] = {}
    for record in records:
        by_card.setdefault(record.card_no, []).append(record)
        assert record.status in ("ok", "proof") and record.term_id == TERM_ID
        dtk = KEYS.card_key(KeyUsage.DTK, bytes.fromhex(record.card_no))
        tac = crypto.purchase_tac(
            Alg.DES,
            dtk,
            record.amount,
            int(record.txn_type, 16),
            bytes.fromhex(record.term_id),
            record.term_seq,
            bytes.fromhex(record.txn_date),
            bytes.fromhex(record.txn_time),
        )
        assert tac.hex().upper() == record.tac, f"the TAC of {record} is the card's"

    charged_cards = 0
    for rider in riders + poor:
        with InProcessChannel(rider.card) as channel:
            snap = PurseTerminal(clock=lambda: datetime.now(CST)).read(channel)
        mine = sorted(by_card.get(rider.card_no, []), key=lambda r: r.card_seq)
        assert [r.card_seq for r in mine] == list(range(rider.first_seq, snap.offline_seq or 0)), (
            f"{rider.card_no}: one record per purchase the card made"
        )
        start = START_BALANCE if rider not in poor else 150
        assert sum(r.amount for r in mine) == start - snap.balance, f"{rider.card_no}: records add up to the debits"
        purchases = [e for e in snap.log if e.txn_type in (TXN_PURCHASE, TXN_CAPP) and e.seq >= rider.first_seq]
        by_seq = {r.card_seq: r for r in mine}
        for entry in purchases:
            record = by_seq[entry.seq]
            assert (record.amount, record.txn_date, record.txn_time) == (
                entry.amount,
                entry.date.hex(),
                entry.time.hex(),
            )
            assert entry.term_id.hex() == TERM_ID
        if not rider.retired:
            assert snap.balance == rider.balance, f"{rider.card_no}: the fares the rider was shown"
        assert snap.transit is not None
        if mine:
            charged_cards += 1
            assert snap.transit.trip_state in (TransitRecord.TRIP_IN, TransitRecord.TRIP_OUT)
    for card in refused_cards:
        with InProcessChannel(card) as channel:
            snap = PurseTerminal(clock=lambda: datetime.now(CST)).read(channel)
        assert snap.offline_seq == 0, "a refused card was never charged"
        assert snap.public.card_no not in by_card, "and has no record"
    assert {e.card_no for e in refusals if e.detail.startswith("hotlisted")} == set(state.hotlist)
    assert sum(1 for e in refusals if e.detail.startswith("expired")) == len(expired)

    # --- what the day covered ---------------------------------------------------------------------------------
    statuses = [e["status"] for e in bus.log if e.get("event") == "tap"]
    assert bus.taps >= 150 and bus.starts == 3
    assert statuses.count("already-paid") >= 3 and statuses.count("unconfirmed") == 2
    assert sum(1 for r in records if r.status == "proof") >= 2, "DEBITs recovered by GET TRANSACTION PROOF"
    assert sum(1 for r in records if "pen=" in r.ref) >= 1, "a forgotten tap-out was charged"
    versions = {r.ref.split(";")[0] for r in records}
    assert versions == {"fares=2025-03.1", "fares=2025-03.2"}, "each record names the fare table it used"
    retried = [batch_id for batch_id, _, status in state.posts if status == 503]
    assert retried and all(b in state.accepted for b in retried), "failed uploads were retried until accepted"
    for batch_id in retried:
        bodies = {body for posted, body, _ in state.posts if posted == batch_id}
        assert len(bodies) == 1, "a retried batch is sent again with the same bytes"
    print(
        f"\nbus day: {bus.taps} taps, {len(records)} records from {charged_cards} cards, "
        f"{len(state.accepted)} batches accepted, {bus.starts} validator starts, {day_seconds:.1f} s; {kill_outcome}"
    )
