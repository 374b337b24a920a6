"""``onecard bench clearing --json`` (cli.md; issue #6 "Scale and distribution").

A throw-away PostgreSQL cluster and Redis are started the way the tests start them. A city day of ``--records``
records is generated with valid TACs under fresh issuer keys (each card loaded at a counter, then taking buses of
several companies), issuance's cards, loads and purse movements are seeded, and the batches are accepted through
the inbox (the device API's receipt, timed apart: it happens as devices upload during the day). Then, for each
worker count, on a copy of that database: clearing's run — ingest (TACs verified, records loaded set-wise),
classify, post, settle, reconcile, close — on real Celery workers, timed from the run's start to the closed day.
The raw ``COPY`` of the same rows into a bare table is the baseline, measured in the same run.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cardos import crypto
from cardos.batch import Batch, BatchRecord, RecordStatus
from cardos.crypto import Alg
from cardos.keyfile import CARD_KEY_MASTERS, IssuerKeys

CST = timezone(timedelta(hours=8))
DAY = date(2025, 3, 3)
OPERATORS = 8
DEVICES_PER_OPERATOR = 4
COUNTERS = 4
RECORDS_PER_CARD = 10
BATCH_RECORDS = 25_000
LOAD_AMOUNT = 20_000
ISSUER_ID = bytes.fromhex("0310000000000000")
Progress = Callable[[str], None]


# --- services (as tests/services.py starts them) -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Postgres:
    port: int
    root: Path
    bin_dir: Path
    as_user: list[str]

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _start_postgres() -> _Postgres:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql; run scripts/setup.sh)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="onecard-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o755)
    port = _free_port()
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c max_connections=200 -c shared_buffers=512MB -c work_mem=64MB "
        "-c maintenance_work_mem=256MB -c max_wal_size=4GB"
    )
    subprocess.run(
        [*as_user, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-o", options, "-w",
         "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    return _Postgres(port, root, bin_dir, as_user)


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if process.poll() is None:
            process.kill()


# --- the city day --------------------------------------------------------------------------------------------------


@dataclass
class _Device:
    device_id: str
    operator_id: str
    kind: str
    term_id: str
    records: list[list[Any]] = field(default_factory=list)


@dataclass
class _Day:
    keys: IssuerKeys
    registry: dict[str, Any]
    batches: list[tuple[str, Path]]
    cards: list[tuple[str, int]]
    """(card_no, loaded amount)."""
    loads: list[BatchRecord]
    records: int


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def generate(records: int, out: Path, seed: int = 6) -> _Day:
    """A city day of about ``records`` records with genuine TACs, written as spec §5 batch files."""
    rnd = random.Random(seed)
    keys = IssuerKeys(ISSUER_ID, Alg.DES, {name: rnd.randbytes(16) for name in ("KT", *CARD_KEY_MASTERS.values())})
    mtk = keys.keys["MTK"]
    operators = [f"OP-BUS-{chr(ord('A') + i)}" for i in range(OPERATORS)]
    validators = [
        _Device(f"{operator}-V{d:02d}", operator, "validator", f"0310{1000 + i * DEVICES_PER_OPERATOR + d:08d}")
        for i, operator in enumerate(operators)
        for d in range(DEVICES_PER_OPERATOR)
    ]
    counters = [_Device(f"COUNTER-{c:02d}", "OP-ISSUER", "counter", f"0310{9000 + c:08d}") for c in range(COUNTERS)]
    taps_per_card = RECORDS_PER_CARD - 1
    day_text = DAY.strftime("%Y%m%d")
    loads: list[BatchRecord] = []
    calculators: dict[str, crypto.TacCalculator] = {}
    card_list: list[tuple[str, int]] = []
    remaining = records
    while remaining > 0:
        index = len(card_list)
        card_no = f"0310{index + 1:012d}"
        calculators[card_no] = crypto.TacCalculator(Alg.DES, crypto.diversify(Alg.DES, mtk, bytes.fromhex(card_no)))
        counters[index % COUNTERS].records.append(["02", card_no, 0, LOAD_AMOUNT, 0, 5 * 3600 + rnd.randrange(3600)])
        remaining -= 1
        balance = LOAD_AMOUNT
        home = rnd.randrange(OPERATORS)
        taps = min(taps_per_card, remaining)
        for seq, second in enumerate(sorted(rnd.sample(range(6 * 3600 + 60, 23 * 3600), taps))):
            operator = home if rnd.random() < 0.8 else rnd.randrange(OPERATORS)
            device = validators[operator * DEVICES_PER_OPERATOR + rnd.randrange(DEVICES_PER_OPERATOR)]
            fare = rnd.choice((100, 150, 200, 250))
            device.records.append(["06", card_no, seq, fare, balance, second])
            balance -= fare
        remaining -= taps
        card_list.append((card_no, LOAD_AMOUNT))
    total = 0
    batches: list[tuple[str, Path]] = []
    created = datetime(DAY.year, DAY.month, DAY.day, 23, 30, tzinfo=CST)
    for device in [*counters, *validators]:
        device.records.sort(key=lambda r: (r[5], r[1]))
        out_records: list[BatchRecord] = []
        tid = bytes.fromhex(device.term_id)
        date4 = bytes.fromhex(day_text)
        for device_seq, (txn_type, card_no, seq, amount, before, second) in enumerate(device.records, start=1):
            time_text = _hhmmss(second)
            time3 = bytes.fromhex(time_text)
            term_seq = device_seq  # the PSAM's (or the host's) sequence: one per transaction here
            calculator = calculators[card_no]
            if txn_type == "02":
                tac = calculator.load(before + amount, seq, amount, tid, date4, time3)
            else:
                tac = calculator.purchase(amount, 0x06, tid, term_seq, date4, time3)
            record = BatchRecord(
                txn_type, card_no, "01", seq, amount, before, device.term_id, term_seq, day_text, time_text,
                tac.hex().upper(), "00", "01", RecordStatus.OK, "10" if txn_type == "06" else "", "", "", "",
                device_seq,
            )  # fmt: skip
            out_records.append(record)
            if txn_type == "02":
                loads.append(record)
        total += len(out_records)
        for part, start in enumerate(range(0, len(out_records), BATCH_RECORDS)):
            chunk = out_records[start : start + BATCH_RECORDS]
            batch = Batch.build(f"{device.device_id}-{part}", device.device_id, device.operator_id, device.term_id,
                                created, chunk)  # fmt: skip
            path = out / f"{device.device_id}-{part}.csv"
            path.write_bytes(batch.encode())
            batches.append((device.device_id, path))
    registry = {
        "format": "onecard-registry/1",
        "operators": [
            *({"operator_id": op, "name": f"Bus company {op[-1]}", "kind": "bus",
               "fee": {"percent": "1.5", "per_txn": 0, "from": "2025-01-01"}} for op in operators),
            {"operator_id": "OP-ISSUER", "name": "Card issuer", "kind": "issuer"},
        ],
        "devices": [
            {"device_id": d.device_id, "operator_id": d.operator_id, "kind": d.kind, "term_id": d.term_id,
             "upload_key": hashlib.sha256(d.device_id.encode()).hexdigest()}
            for d in [*counters, *validators]
        ],
    }  # fmt: skip
    return _Day(keys, registry, batches, card_list, loads, total)


# --- seeding -------------------------------------------------------------------------------------------------------


def _seed(url: str, day: _Day) -> float:
    """Registry, issuance's cards, loads and their money; then every batch through the inbox. Seconds of receipt."""
    from sqlalchemy import text

    from backoffice.db import UnitOfWork, make_engine, session_factory
    from clearing import bulk
    from clearing.inbox import receive_batch
    from clearing.registry import import_registry, load_device_credentials, parse_registry_file

    engine = make_engine(url)
    sessions = session_factory(engine)
    at = datetime(DAY.year, DAY.month, DAY.day, 5, 0, tzinfo=CST)
    try:
        with UnitOfWork(sessions) as uow:
            import_registry(uow, parse_registry_file(json.dumps(day.registry).encode()))
        ids = {card_no: index + 1 for index, (card_no, _) in enumerate(day.cards)}
        with UnitOfWork(sessions) as uow:
            bulk.insert_rows(
                uow.session,
                "cards",
                ("id", "card_no", "city_code", "serial", "card_type", "registered", "state", "purse_limit", "alg",
                 "key_version", "social_application", "shadow_balance", "shadow_online_seq", "shadow_offline_seq",
                 "created_at", "row_version"),
                ((ids[c], c, "0310", int(c[4:]), "adult", False, "active", 100_000, 0, 1, False, amount, 1, 0, at, 1)
                 for c, amount in day.cards),
            )  # fmt: skip
            bulk.insert_rows(
                uow.session,
                "loads",
                ("id", "request_id", "card_id", "card_no", "card_type", "term_id", "term_seq", "online_seq",
                 "old_balance", "amount", "txn_date", "txn_time", "alg", "key_ver", "tac", "status", "device_seq",
                 "funding_account", "staff_id", "created_at", "authorized_at", "completed_at"),
                ((i + 1, f"bench-{r.card_no}", ids[r.card_no], r.card_no, r.card_type, r.term_id, r.term_seq,
                  r.card_seq, r.balance_before, r.amount, r.txn_date, r.txn_time, r.alg, r.key_ver, r.tac, "ok",
                  r.device_seq, "counter_cash", "bench", at, at, at) for i, r in enumerate(day.loads)),
            )  # fmt: skip
            bulk.insert_rows(
                uow.session,
                "purse_movements",
                ("id", "kind", "from_account", "to_account", "amount", "reference", "at", "actor_id"),
                ((i + 1, "load", "counter_cash", f"card:{r.card_no}", r.amount, f"load:bench-{r.card_no}", at, "bench")
                 for i, r in enumerate(day.loads)),
            )  # fmt: skip
            for table_name in ("cards", "loads", "purse_movements"):
                sequence = f"pg_get_serial_sequence('{table_name}', 'id')"
                uow.session.execute(text(f"SELECT setval({sequence}, (SELECT max(id) FROM {table_name}))"))
            uow.commit()
        started = time.perf_counter()
        for device_id, path in day.batches:
            raw = path.read_bytes()
            with UnitOfWork(sessions) as uow:
                credentials = load_device_credentials(uow.session, device_id)
            assert credentials is not None
            signature = hmac.new(credentials.upload_key, raw, hashlib.sha256).hexdigest()
            with UnitOfWork(sessions) as uow:
                receive_batch(uow, credentials.identity, raw, signature, datetime.now(UTC))
        return time.perf_counter() - started
    finally:
        engine.dispose()


def _raw_copy(url: str, day: _Day) -> float:
    """Seconds to COPY the same rows (the batches' CSV lines) into a bare table."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    columns = (
        "txn_type text, card_no text, card_type text, card_seq integer, amount bigint, balance_before bigint, "
        "term_id text, term_seq bigint, txn_date text, txn_time text, tac text, alg text, key_ver text, status text, "
        "line_id text, station_id text, vehicle_id text, ref text, device_seq bigint"
    )
    bodies = [path.read_bytes().split(b"\n", 1)[1] for _, path in day.batches]
    with psycopg.connect(dsn) as connection:
        connection.execute(f"CREATE TABLE bench_raw_copy ({columns})")
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy("COPY bench_raw_copy FROM STDIN (FORMAT csv)") as copy:
            for body in bodies:
                copy.write(body)
        connection.commit()
        return time.perf_counter() - started


# --- workers and the timed run -------------------------------------------------------------------------------------


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) of a process, with its reaped children's when asked (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def _cluster_cpu(postgres: _Postgres) -> float:
    """CPU seconds of the PostgreSQL cluster so far: the postmaster, its finished backends and its live ones."""
    try:
        postmaster = int((postgres.root / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError):
        return 0.0
    total = _proc_cpu(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    total += _proc_cpu(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return total


@contextlib.contextmanager
def _workers(
    count: int, url: str, redis_url: str, keystore: dict[str, str], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "ONECARD_DATABASE_URL": url, "ONECARD_REDIS_URL": redis_url, **keystore}
    processes = []
    for index in range(count):
        log = logs / f"worker-{count}-{index}.log"
        code = (
            "from clearing.tasks import worker_main; "
            f"worker_main(['--pool=solo', '--without-gossip', '--without-mingle', '--without-heartbeat', "
            f"'-n', 'bench{index}@%h', '--loglevel=WARNING'])"
        )
        with log.open("wb") as out:
            processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=out))
    try:
        time.sleep(3)  # let them connect (not timed)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _timed_run(
    url: str, redis_url: str, keystore_path: str, *, day: date = DAY, timeout: float = 3600
) -> tuple[float, dict[str, Any]]:
    from backoffice.settings import Settings
    from clearing.tasks import run_day

    settings = Settings(database_url=url, redis_url=redis_url, keystore=keystore_path)
    started = time.perf_counter()
    state = run_day(settings, day, timeout=timeout, poll=0.1)
    elapsed = time.perf_counter() - started
    if state.stage != "done":
        raise RuntimeError(f"the run did not close the day: {state.result}")
    return elapsed, state.result or {}


def _stages(url: str) -> dict[str, float]:
    from sqlalchemy import text

    from backoffice.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            started = connection.execute(text("SELECT min(started_at) FROM clearing_run")).scalar_one()
            rows = connection.execute(
                text("SELECT stage, max(finished_at) FROM clearing_task GROUP BY stage ORDER BY max(finished_at)")
            ).all()
            counts: dict[Any, Any] = dict(
                connection.execute(text("SELECT class, count(*) FROM clearing_verdict GROUP BY class")).all()
            )
    finally:
        engine.dispose()
    stages: dict[str, Any] = {}
    previous = started
    for stage, finished in rows:
        stages[f"{stage}_s"] = round((finished - previous).total_seconds(), 3)
        previous = finished
    stages["classes"] = {str(k): int(v) for k, v in counts.items()}
    return stages


def bench_clearing(records: int, workers: tuple[int, ...] = (1, 2), progress: Progress | None = None) -> dict[str, Any]:
    """Run the clearing benchmark; its figures and the raw COPY baseline of the same run."""
    say = progress or (lambda message: None)
    from backoffice.schema import upgrade
    from issuance.keystore import SoftwareKeystore

    root = Path(tempfile.mkdtemp(prefix="onecard-bench-clearing-"))
    postgres = _start_postgres()
    try:
        (root / "batches").mkdir()
        say(f"generating {records:,} records with valid TACs …")
        day = generate(records, root / "batches")
        raw_key = os.urandom(32)
        keystore_path = root / "keys.json"
        SoftwareKeystore(keystore_path, raw_key=raw_key).import_keys(day.keys)
        keystore = {"ONECARD_KEYSTORE": str(keystore_path), "ONECARD_KEYSTORE_KEY": raw_key.hex()}
        postgres.psql("CREATE DATABASE city")
        template = postgres.url("city")
        upgrade(template)
        say("seeding issuance and receiving the batches through the inbox …")
        receipt_seconds = _seed(template, day)
        copy_seconds = _raw_copy(template, day)
        baseline = day.records / copy_seconds
        results: dict[str, Any] = {}
        with _redis() as redis_url:
            for count in workers:
                name = f"run{count}"
                postgres.psql(f"CREATE DATABASE {name} TEMPLATE city")
                url = postgres.url(name)
                say(f"clearing with {count} worker(s) …")
                os.environ.update(keystore)
                with _workers(count, url, redis_url, keystore, root) as processes:
                    before = sum(_proc_cpu(p.pid) for p in processes) + _cluster_cpu(postgres)
                    elapsed, result = _timed_run(url, redis_url, str(keystore_path))
                    cpu = sum(_proc_cpu(p.pid) for p in processes) + _cluster_cpu(postgres) - before
                results[str(count)] = {
                    "seconds": round(elapsed, 3),
                    "records_per_s": round(day.records / elapsed),
                    "cpu_s": round(cpu, 2),
                    "cpu_us_per_record": round(1e6 * cpu / day.records, 1),
                    "reconciliation_ok": bool(result.get("ok")),
                    **_stages(url),
                }
        best = max(workers)
        value = results[str(best)]["records_per_s"]
        doc: dict[str, Any] = {
            "bench": "clearing",
            "value": value,
            "unit": "records/s",
            "baseline": round(baseline),
            "baseline_what": "raw COPY of the same rows into a bare table, same PostgreSQL, same run (rows/s)",
            "ratio": round(value / baseline, 3),
            "records": day.records,
            "workers": results,
            "cpus": os.cpu_count(),
            "inbox_receipt_records_per_s": round(day.records / receipt_seconds),
            "per_record_us": {k: round(1e6 * v["seconds"] / day.records, 2) for k, v in results.items()},
            "load_average": os.getloadavg()[0],
        }
        if 1 in workers and len(workers) > 1:
            doc["scaling"] = round(results[str(best)]["records_per_s"] / results["1"]["records_per_s"], 3)
        return doc
    finally:
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
