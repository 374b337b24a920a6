"""``onecard bench city-day``: a generated city day through the real clearing (issue #8, "City scale").

:mod:`simulators.cityday` writes the day (riders' trips with morning and evening peaks, lines, a card-type mix,
transfers, counter loads) as spec §5 batch files, in a child process (its memory is its own and is reported
apart). A throw-away PostgreSQL cluster is started the way ``bench clearing`` starts it; the schema is created,
the registry and the issuer keys imported, and issuance seeded set-wise from the files: the cards with their
opening balances and counters (``opening-cards.csv``), the day's counter loads (the counters' ``02`` records) as
``loads`` rows, the purse movements behind the opening balances and the loads, and the cards' shadows raised by the
day's loads — so that clearing finds every load on record and the float reconciles. Every batch is then received
through the inbox, signed with its device's upload key (timed apart: it happens while devices upload), and the
day is cleared on ``--workers`` real Celery workers, timed from the run's start to the closed day. While it runs
a thread samples the PostgreSQL cluster's memory every second; the workers' peak RSS is read just before they
stop. The raw ``COPY`` of the same rows into a bare table is the baseline.

Nothing here holds the day's records in Python: files are streamed line by line into ``COPY``, and the shadows
and movements are derived in SQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import multiprocessing
import os
import random
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cardos.crypto import Alg
from cardos.keyfile import CARD_KEY_MASTERS, IssuerKeys
from onecard_cli.bench_clearing import (
    DAY,
    _cluster_cpu,
    _Postgres,
    _proc_cpu,
    _redis,
    _stages,
    _start_postgres,
    _timed_run,
    _workers,
)
from simulators.cityday import CST, ISSUER_ID, CityDay, CityPlan, generate

Progress = Callable[[str], None]
PURSE_LIMIT = 100_000
"""An anonymous card's purse limit (1,000 yuan, in fen)."""
ACTOR = "city-day"
RAW_COLUMNS = (
    "txn_type text, card_no text, card_type text, card_seq integer, amount bigint, balance_before bigint, "
    "term_id text, term_seq bigint, txn_date text, txn_time text, tac text, alg text, key_ver text, status text, "
    "line_id text, station_id text, vehicle_id text, ref text, device_seq bigint"
)
LOAD_COLUMNS = (
    "request_id", "card_id", "card_no", "card_type", "term_id", "term_seq", "online_seq", "old_balance", "amount",
    "txn_date", "txn_time", "alg", "key_ver", "tac", "status", "device_seq", "funding_account", "staff_id",
    "created_at", "authorized_at", "completed_at",
)  # fmt: skip
CARD_COLUMNS = (
    "id", "card_no", "city_code", "serial", "card_type", "registered", "state", "purse_limit", "alg", "key_version",
    "social_application", "shadow_balance", "shadow_online_seq", "shadow_offline_seq", "created_at", "row_version",
    "opening_balance", "opening_online_seq", "opening_offline_seq",
)  # fmt: skip
"""Cards as issuance holds them before the day; the opening state is also where clearing starts each card's chain
(clearing holds no record of these cards from before the day: they were taken over with these balances and
counters)."""


def issuer_keys(seed: int, alg: Alg = Alg.DES) -> IssuerKeys:
    """Fresh issuer keys, deterministic for ``seed`` (a benchmark's or simulation's own key ceremony)."""
    rnd = random.Random(f"city-day-keys/{seed}")
    return IssuerKeys(ISSUER_ID, alg, {name: rnd.randbytes(16) for name in ("KT", *CARD_KEY_MASTERS.values())})


@dataclass(frozen=True)
class Generated:
    """What the generator child wrote, with its time and peak memory."""

    day: CityDay
    seconds: float
    peak_rss_mb: float


def _generate_child(plan: CityPlan, out_dir: Path, keys: IssuerKeys, conn: Any) -> None:
    def tick(produced: int) -> None:
        conn.send(("progress", produced))

    try:
        day = generate(plan, out_dir, keys, tick)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(("done", (day, peak)))
    except BaseException as exc:  # report anything to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def generate_day(
    plan: CityPlan, out_dir: Path, keys: IssuerKeys, progress: Callable[[int], None] | None = None
) -> Generated:
    """Run :func:`simulators.cityday.generate` in a child process (fork): its memory is freed when it ends and
    measured apart. ``progress`` receives the records produced so far, about every 100,000."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    started = time.perf_counter()
    process = context.Process(target=_generate_child, args=(plan, out_dir, keys, child), daemon=True)
    process.start()
    child.close()
    outcome: tuple[str, Any] | None = None
    try:
        while outcome is None:
            try:
                kind, value = parent.recv()
            except EOFError:
                break
            if kind == "progress":
                if progress is not None:
                    progress(int(value))
            else:
                outcome = (kind, value)
    finally:
        process.join()
        parent.close()
    seconds = time.perf_counter() - started
    if outcome is None:
        raise RuntimeError(f"the city-day generator ended without a result (exit code {process.exitcode})")
    if outcome[0] == "error":
        raise RuntimeError(f"the city-day generator failed: {outcome[1]}")
    day, peak = outcome[1]
    return Generated(day, seconds, float(peak))


# --- reading the files (streamed) ----------------------------------------------------------------------------------


def existing_day(out_dir: Path) -> CityDay:
    """A day ``onecard sim city-day`` wrote earlier into ``out_dir``: its files and totals (from the batch headers;
    the loads counted in the counters' batches)."""
    registry_file, key_file, opening_file = (
        out_dir / "registry.json",
        out_dir / "keys.json",
        out_dir / "opening-cards.csv",
    )
    for needed in (registry_file, key_file, opening_file):
        if not needed.exists():
            raise FileNotFoundError(f"{out_dir} holds no city day ({needed.name} is missing)")
    registry = json.loads(registry_file.read_text(encoding="utf-8"))
    counters = {d["device_id"] for d in registry["devices"] if d["kind"] == "counter"}
    files = sorted(p for p in out_dir.glob("*.csv") if p.name != opening_file.name)
    records = amount_total = loads = 0
    for path in files:
        with path.open("r", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
        records += int(header["record_count"])
        amount_total += int(header["amount_total"])
        if header["device_id"] in counters:
            loads += sum(1 for fields in _batch_lines(path) if fields[0] == "02")
    with opening_file.open("r", encoding="utf-8") as fh:
        cards = sum(1 for _ in fh) - 1
    return CityDay(out_dir, files, registry_file, key_file, opening_file, records, records - loads, loads,
                   amount_total, cards)  # fmt: skip


def _batch_device(path: Path) -> str:
    with path.open("r", encoding="utf-8") as fh:
        return str(json.loads(fh.readline())["device_id"])


def _batch_lines(path: Path) -> Iterator[list[str]]:
    """The records of a batch file as lists of column texts (spec §5 order), one at a time."""
    with path.open("r", encoding="utf-8") as fh:
        fh.readline()
        for line in fh:
            line = line.rstrip("\r\n")
            if line:
                yield line.split(",")


def _at(txn_date: str, txn_time: str) -> datetime:
    return datetime(
        int(txn_date[:4]), int(txn_date[4:6]), int(txn_date[6:8]),
        int(txn_time[:2]), int(txn_time[2:4]), int(txn_time[4:6]), tzinfo=CST,
    )  # fmt: skip


def _card_rows(opening: Path, alg: int, at: datetime) -> Iterator[tuple[Any, ...]]:
    from issuance.lifecycle import CardType

    types = {f"{member.code:02X}": member.value for member in CardType}
    with opening.open("r", encoding="utf-8") as fh:
        fh.readline()
        for line in fh:
            card_no, code, balance, online_seq, offline_seq = line.rstrip("\r\n").split(",")
            serial = int(card_no[4:])
            yield (serial, card_no, card_no[:4], serial, types[code], False, "active", PURSE_LIMIT, alg, 1, False,
                   int(balance), int(online_seq), int(offline_seq), at, 1,
                   int(balance), int(online_seq), int(offline_seq))  # fmt: skip


def _load_rows(counter_files: list[Path]) -> Iterator[tuple[Any, ...]]:
    for path in counter_files:
        for f in _batch_lines(path):
            if f[0] != "02":
                continue
            at = _at(f[8], f[9])
            yield (f"{ACTOR}-{f[6]}-{f[7]}", int(f[1][4:]), f[1], f[2], f[6], int(f[7]), int(f[3]), int(f[5]),
                   int(f[4]), f[8], f[9], f[11], f[12], f[10], "ok", int(f[18]), "counter_cash", ACTOR,
                   at, at, at)  # fmt: skip


# --- seeding and receipt -------------------------------------------------------------------------------------------


@dataclass
class Seeded:
    """What was seeded."""

    cards: int
    loads: int
    opening_float: int
    """The opening balances' total (the float before the day's loads)."""


def seed_issuance(url: str, day: CityDay, day_of: date, alg: int, say: Progress) -> Seeded:
    """Registry, cards (opening state), the day's loads, the purse movements behind both, and the shadows after
    the loads — all set-wise (COPY from generators, then SQL)."""
    from sqlalchemy import text

    from backoffice.db import UnitOfWork, make_engine, session_factory
    from clearing import bulk
    from clearing.registry import import_registry, parse_registry_file

    engine = make_engine(url)
    sessions = session_factory(engine)
    registry = json.loads(day.registry_file.read_text(encoding="utf-8"))
    kinds = {d["device_id"]: d["kind"] for d in registry["devices"]}
    counter_files = [p for p in day.batch_files if kinds.get(_batch_device(p)) == "counter"]
    opened = datetime.combine(day_of - timedelta(days=1), datetime.min.time(), CST).replace(hour=12)
    try:
        with UnitOfWork(sessions) as uow:
            import_registry(uow, parse_registry_file(day.registry_file.read_bytes()))
        say("seeding cards (opening balances and counters) …")
        with UnitOfWork(sessions) as uow:
            bulk.insert_rows(uow.session, "cards", CARD_COLUMNS, _card_rows(day.opening_file, alg, opened))
            uow.commit()
        say(f"seeding the day's loads from {len(counter_files)} counter batch file(s) …")
        with UnitOfWork(sessions) as uow:
            session = uow.session
            bulk.insert_rows(session, "loads", LOAD_COLUMNS, _load_rows(counter_files))
            # The money behind the opening balances (loaded before the day), then the day's loads.
            session.execute(
                text(
                    "INSERT INTO purse_movements (kind, from_account, to_account, amount, reference, at, actor_id) "
                    "SELECT 'load', 'counter_cash', 'card:' || card_no, shadow_balance, 'opening:' || card_no, "
                    ":at, :actor FROM cards WHERE shadow_balance > 0 ORDER BY id"
                ),
                {"at": opened, "actor": ACTOR},
            )
            session.execute(
                text(
                    "INSERT INTO purse_movements (kind, from_account, to_account, amount, reference, at, actor_id) "
                    "SELECT 'load', funding_account, 'card:' || card_no, amount, 'load:' || request_id, "
                    "completed_at, staff_id FROM loads ORDER BY completed_at, id"
                )
            )
            opening_float = int(
                session.execute(text("SELECT coalesce(sum(shadow_balance), 0) FROM cards")).scalar_one()
            )
            # What the load host does at each load: the shadow follows the card (balance up, online counter on).
            session.execute(
                text(
                    "UPDATE cards c SET shadow_balance = c.shadow_balance + l.amount, "
                    "shadow_online_seq = c.shadow_online_seq + l.n, shadow_updated_at = l.last_at "
                    "FROM (SELECT card_id, sum(amount) AS amount, count(*) AS n, max(completed_at) AS last_at "
                    "FROM loads GROUP BY card_id) l WHERE c.id = l.card_id"
                )
            )
            cards = int(session.execute(text("SELECT count(*) FROM cards")).scalar_one())
            loads = int(session.execute(text("SELECT count(*) FROM loads")).scalar_one())
            uow.commit()
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        return Seeded(cards, loads, opening_float)
    finally:
        engine.dispose()


def receive(url: str, files: list[Path], say: Progress) -> int:
    """Every batch through the inbox, signed with its device's upload key; the number of batches accepted."""
    from backoffice.db import UnitOfWork, make_engine, session_factory
    from clearing.inbox import receive_batch
    from clearing.registry import DeviceCredentials, load_device_credentials

    engine = make_engine(url)
    sessions = session_factory(engine)
    credentials: dict[str, DeviceCredentials] = {}
    accepted = 0
    next_say = time.monotonic() + 10
    try:
        for index, path in enumerate(files, start=1):
            raw = path.read_bytes()
            device_id = str(json.loads(raw.split(b"\n", 1)[0])["device_id"])
            found = credentials.get(device_id)
            if found is None:
                with UnitOfWork(sessions) as uow:
                    loaded = load_device_credentials(uow.session, device_id)
                if loaded is None:
                    raise RuntimeError(f"{path.name}: device {device_id} is not registered")
                found = credentials[device_id] = loaded
            signature = hmac.new(found.upload_key, raw, hashlib.sha256).hexdigest()
            with UnitOfWork(sessions) as uow:
                receive_batch(uow, found.identity, raw, signature, datetime.now(UTC))
            accepted += 1
            if time.monotonic() >= next_say:
                say(f"  received {index:,} of {len(files):,} batches")
                next_say = time.monotonic() + 10
        return accepted
    finally:
        engine.dispose()


def raw_copy(postgres: _Postgres, files: list[Path]) -> float:
    """Seconds to COPY the same rows (the batches' CSV lines, streamed from the files) into a bare table of a
    database of its own (dropped afterwards)."""
    import psycopg

    postgres.psql("CREATE DATABASE city_raw_copy")
    dsn = postgres.url("city_raw_copy").replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(dsn) as connection:
            connection.execute(f"CREATE TABLE bench_raw_copy ({RAW_COLUMNS})")
            connection.commit()
            started = time.perf_counter()
            with connection.cursor() as cursor, cursor.copy("COPY bench_raw_copy FROM STDIN (FORMAT csv)") as copy:
                for path in files:
                    with path.open("rb") as fh:
                        fh.readline()
                        while chunk := fh.read(1 << 20):
                            copy.write(chunk)
            connection.commit()
            return time.perf_counter() - started
    finally:
        postgres.psql("DROP DATABASE IF EXISTS city_raw_copy")


def verdict_codes(url: str) -> dict[str, int]:
    """The day's verdicts by ``class:code``."""
    from sqlalchemy import text

    from backoffice.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT class, code, count(*) FROM clearing_verdict GROUP BY class, code ORDER BY 1, 2")
            ).all()
    finally:
        engine.dispose()
    return {f"{klass}:{code}": int(count) for klass, code, count in rows}


# --- memory --------------------------------------------------------------------------------------------------------


def _status_kb(pid: int, *names: str) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` in kB (missing: 0)."""
    found = dict.fromkeys(names, 0)
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value.split()[0])
    return found


def _cluster_pids(postgres: _Postgres) -> list[int]:
    """The postmaster and its live children (backends, background workers)."""
    try:
        postmaster = int((postgres.root / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return pids


class ClusterMemory:
    """Samples the PostgreSQL cluster's processes every ``interval`` seconds on a thread: the highest VmHWM (peak
    RSS, shared buffers included) of any of them, and the highest sum of private memory (RssAnon) at one time;
    and the largest worker's RSS at each sample with the run's stage then (to tell which stage holds the memory)."""

    def __init__(self, postgres: _Postgres, url: str, workers: list[int], interval: float = 1.0) -> None:
        self._postgres = postgres
        self._dsn = url.replace("postgresql+psycopg://", "postgresql://")
        self._workers = workers
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-memory", daemon=True)
        self.peak_hwm_kb = 0
        self.peak_anon_sum_kb = 0
        self.samples = 0
        self._connection: Any = None
        self.worker_peak_by_stage: dict[str, int] = {}
        """The run's stage (``clearing_run.stage``) → the largest worker VmRSS (kB) sampled in it."""

    def _sample(self) -> None:
        anon = 0
        for pid in _cluster_pids(self._postgres):
            status = _status_kb(pid, "VmHWM", "RssAnon")
            self.peak_hwm_kb = max(self.peak_hwm_kb, status["VmHWM"])
            anon += status["RssAnon"]
        self.peak_anon_sum_kb = max(self.peak_anon_sum_kb, anon)
        rss = max((_status_kb(pid, "VmRSS")["VmRSS"] for pid in self._workers), default=0)
        stage = self._stage()
        self.worker_peak_by_stage[stage] = max(self.worker_peak_by_stage.get(stage, 0), rss)
        self.samples += 1

    def _stage(self) -> str:
        if self._connection is None:
            return "?"
        try:
            row = self._connection.execute("SELECT stage FROM clearing_run ORDER BY id DESC LIMIT 1").fetchone()
        except Exception:  # the sampler must not stop the benchmark
            return "?"
        return str(row[0]) if row else "before"

    def _run(self) -> None:
        import psycopg

        try:
            self._connection = psycopg.connect(self._dsn, autocommit=True)
        except psycopg.Error:
            self._connection = None
        try:
            while not self._stop.is_set():
                self._sample()
                self._stop.wait(self._interval)
        finally:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> ClusterMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mb(kb: int | float) -> float:
    return round(kb / 1024, 1)


# --- the benchmark -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bench_cityday(
    records: int,
    *,
    workers: int = 2,
    keep: Path | None = None,
    day: date = DAY,
    seed: int = 1,
    progress: Progress | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """Generate a city day of ``records`` records, seed issuance, receive the batches and clear the day on
    ``workers`` Celery workers on PostgreSQL; the figures (time, records/s, peak memory, the raw COPY baseline)."""
    say = progress or (lambda message: None)
    from backoffice.schema import upgrade
    from cardos.keyfile import load_key_file
    from issuance.keystore import SoftwareKeystore

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="city-day-", dir=keep))
    else:
        root = Path(tempfile.mkdtemp(prefix="onecard-bench-cityday-"))
    out = root / "batches"
    postgres: _Postgres | None = None
    try:
        plan = CityPlan(records=records, day=day, seed=seed)
        if source is None:
            say(f"generating a city day of {records:,} records ({plan.resolved_lines()} lines) into {out} …")
        step = max(100_000, records // 20 // 100_000 * 100_000)
        shown = [0]

        def generated_so_far(produced: int) -> None:
            if produced // step > shown[0]:
                shown[0] = produced // step
                say(f"  generated {produced:,} records")

        if source is None:
            generated = generate_day(plan, out, issuer_keys(seed), generated_so_far)
        else:  # a day generated earlier (`onecard sim city-day`): only read here
            say(f"reading the city day in {source} …")
            generated = Generated(existing_day(source), 0.0, 0.0)
        city = generated.day
        say(f"  {city.records:,} records, {len(city.batch_files):,} batch files in {generated.seconds:.1f} s")

        postgres = _start_postgres()
        postgres.psql("CREATE DATABASE city")
        url = postgres.url("city")
        say("creating the schema …")
        upgrade(url)
        keys = load_key_file(city.key_file)
        raw_key = os.urandom(32)
        keystore_path = root / "keystore.json"
        SoftwareKeystore(keystore_path, raw_key=raw_key).import_keys(keys)
        keystore = {"ONECARD_KEYSTORE": str(keystore_path), "ONECARD_KEYSTORE_KEY": raw_key.hex()}

        started = time.perf_counter()
        seeded = seed_issuance(url, city, day, int(keys.alg), say)
        seed_seconds = time.perf_counter() - started
        say(f"  {seeded.cards:,} cards, {seeded.loads:,} loads in {seed_seconds:.1f} s")
        if (seeded.cards, seeded.loads) != (city.cards, city.loads):
            raise RuntimeError(f"seeded {seeded.cards} cards and {seeded.loads} loads of {city.cards} and {city.loads}")

        say(f"receiving {len(city.batch_files):,} batches through the inbox …")
        started = time.perf_counter()
        batches = receive(url, city.batch_files, say)
        receipt_seconds = time.perf_counter() - started
        say(f"  {batches:,} batches in {receipt_seconds:.1f} s")

        say("raw COPY baseline of the same rows …")
        copy_seconds = raw_copy(postgres, city.batch_files)
        baseline = city.records / copy_seconds

        say(f"clearing {day.isoformat()} with {workers} Celery worker(s) …")
        timeout = max(3600.0, city.records / 200)
        with (
            _environ(keystore),
            _redis() as redis_url,
            _workers(workers, url, redis_url, keystore, root) as processes,
        ):
            worker_pids = [p.pid for p in processes]
            before = sum(_proc_cpu(pid) for pid in worker_pids) + _cluster_cpu(postgres)
            with ClusterMemory(postgres, url, worker_pids) as cluster_memory:
                elapsed, result = _timed_run(url, redis_url, str(keystore_path), day=day, timeout=timeout)
            cpu = sum(_proc_cpu(pid) for pid in worker_pids) + _cluster_cpu(postgres) - before
            worker_peaks = [_status_kb(pid, "VmHWM")["VmHWM"] for pid in worker_pids]
        say(f"  closed in {elapsed:.1f} s")
        stages: dict[str, Any] = dict(_stages(url))
        classes = {str(k): int(v) for k, v in stages.pop("classes").items()}
        classified = sum(classes.values())
        checks = result.get("checks") or []
        failed = [c.get("name") for c in checks if isinstance(c, dict) and not c.get("ok")]
        value = round(city.records / elapsed)
        driver_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "bench": "city-day",
            "value": value,
            "unit": "records/s",
            "baseline": round(baseline),
            "baseline_what": "raw COPY of the same rows into a bare table, same PostgreSQL, same run (rows/s)",
            "ratio": round(value / baseline, 4),
            "records": city.records,
            "purchases": city.purchases,
            "loads": city.loads,
            "cards": city.cards,
            "batch_files": len(city.batch_files),
            "opening_float_fen": seeded.opening_float,
            "date": day.isoformat(),
            "seed": seed,
            "workers": workers,
            "generate_s": round(generated.seconds, 2),
            "seed_s": round(seed_seconds, 2),
            "receipt_s": round(receipt_seconds, 2),
            "receipt_records_per_s": round(city.records / receipt_seconds),
            "clear_s": round(elapsed, 2),
            "stages": stages,
            "records_per_s": value,
            "cpu_s": round(cpu, 2),
            "cpu_us_per_record": round(1e6 * cpu / city.records, 1),
            "reconciliation_ok": bool(result.get("ok")),
            "reconciliation_failed": failed,
            "classes": classes,
            "codes": verdict_codes(url),
            "classified": classified,
            "every_record_classified": classified == city.records,
            "memory_mb": {
                "workers_peak_rss": [_mb(kb) for kb in worker_peaks],
                "largest_worker_rss_by_stage": {
                    stage: _mb(kb) for stage, kb in cluster_memory.worker_peak_by_stage.items()
                },
                "postgres_backend_peak_rss": _mb(cluster_memory.peak_hwm_kb),
                "postgres_private_sum_peak": _mb(cluster_memory.peak_anon_sum_kb),
                "postgres_samples": cluster_memory.samples,
                "driver_peak_rss": _mb(driver_peak_kb),
                "generator_peak_rss": round(generated.peak_rss_mb, 1),
            },
            "raw_copy_s": round(copy_seconds, 3),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "files": str(root) if keep is not None else None,
        }
    finally:
        if postgres is not None:
            postgres.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
