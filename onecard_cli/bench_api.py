"""``onecard bench api --json``: counter loads per second through the API, against the framework's no-op endpoint
measured in the same run.

What runs:

- PostgreSQL: ``ONECARD_DATABASE_URL`` when it names a PostgreSQL database (the bench adds its own desks, clerks
  and cards under a fresh run id), else a throw-away cluster started here (``initdb``; ``fsync`` and
  ``synchronous_commit`` on unless ``durable=False``);
- the API in ``workers`` uvicorn processes on one port, started as ``onecard serve`` starts them
  (:func:`onecard_cli.serve.spawn_workers`) and built as :func:`onecard_cli.serve.serve_app` builds it (JSON
  access log to a file, metrics, request ids), plus the bench's two additions: ``GET /bench/noop`` (an async
  FastAPI route returning a constant, behind the same middleware: the framework's floor) and **simulated cards**:
  each bench desk's reader holds a card image file (:class:`api.desks.ImageDeskReaders`, on tmpfs), driven
  in-process (the card OS of ``cardos``: INITIALIZE FOR LOAD, CREDIT FOR LOAD with real MACs) and saved back under
  a lock per load; a worker reuses the card it last saved while the file is unchanged instead of parsing it again.
  Everything else is the production path: bearer-token sessions, role and desk checks, the money rate limit (set
  high enough not to bind), the Idempotency-Key claim and stored response, issuance's load host (MAC1, MAC2, TAC
  through an in-memory keystore of generated keys), the ledger;
- ``clients`` concurrent clients (one clerk and desk each, one keep-alive connection each), raw HTTP/1.1 on
  asyncio so that the client costs little of the machine it shares: first the no-op for ``seconds``, then loads
  of 1 fen with a fresh Idempotency-Key each for ``seconds``. The server is CPU-bound on this machine's two cores
  by about 8 clients (two workers, four requests in flight each, so that one request's database round trips and
  commits overlap another's work); more clients only queue, adding latency and no throughput.

Figures: ``value`` loads/s, ``baseline`` no-op requests/s, ``ratio = value / baseline``, client-side p50 / p99
latency of both, a check that the database holds exactly one load row per 201 answered, and where the machine's
CPU went: ``cpu_ms_per_load`` / ``cpu_ms_per_noop``, milliseconds of CPU per answered request of the API workers,
of PostgreSQL (server and backends, read from ``/proc``; only for the bench's own cluster) and of the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from onecard_cli.serve import reserve_port, spawn_workers, stop_workers

ENV_DIR = "ONECARD_BENCH_DIR"
ISSUER_ID = bytes.fromhex("0310000000000000")
CITY = "0310"


# --- the server side (imported by uvicorn in each worker) ----------------------------------------------------------


def bench_app() -> FastAPI:
    """The API as served, with simulated cards in the bench desks' readers and ``GET /bench/noop``."""
    import logging

    from api.app import create_app
    from api.counter_service import CounterContext
    from api.desks import ImageDeskReaders
    from api.observability import configure_logging
    from backoffice.settings import Settings
    from cardos.keyfile import load_key_file
    from issuance import services
    from issuance.keys import InMemoryKeystore
    from issuance.keystore import AesGcmSealer
    from issuance.pii import PersonalDataVault

    directory = Path(os.environ[ENV_DIR])
    log_file = (directory / f"server-{os.getpid()}.log").open("a", encoding="utf-8")
    configure_logging(logging.INFO, log_file)
    app = create_app(Settings.load())
    state = app.state.onecard
    keys = load_key_file(directory / "keys.json")
    secrets_doc = json.loads((directory / "pii.json").read_text())
    state.counter = CounterContext(
        keys=InMemoryKeystore([keys]),
        vault=PersonalDataVault(AesGcmSealer(bytes.fromhex(secrets_doc["seal"])), bytes.fromhex(secrets_doc["lookup"])),
        issuer=services.IssuerProfile(keys.issuer_id, keys.alg),
    )
    state.desk_readers = ImageDeskReaders(directory / "cards")

    @app.get("/bench/noop", include_in_schema=False)
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    return app


# --- PostgreSQL ------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Cluster:
    url: str
    stop: Callable[[], None]
    data: Path | None = None
    """The cluster's data directory (its ``postmaster.pid`` names the server process)."""


# --- CPU accounting ------------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of a process from ``/proc`` (0 when it is gone); ``reaped`` adds its waited-for
    children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


@dataclass
class _CpuMeter:
    """CPU seconds of the API workers, the PostgreSQL cluster (server and backends, when it is ours) and this
    process (the clients), read from ``/proc`` before and after a phase."""

    workers: list[int]
    postmaster: int | None

    def read(self) -> dict[str, float]:
        """Cumulative CPU seconds by part."""
        postgres = 0.0
        if self.postmaster is not None:
            postgres = _proc_cpu(self.postmaster, reaped=True) + sum(
                _proc_cpu(child) for child in _children(self.postmaster)
            )
        return {
            "api_workers": sum(_proc_cpu(pid) for pid in self.workers),
            "postgres": postgres,
            "clients": time.process_time(),
        }

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
        """Milliseconds of CPU per answered request, by part, and in all."""
        parts = {name: (after[name] - before[name]) * 1000 / max(count, 1) for name in before}
        parts["total"] = sum(parts.values())
        return {name: round(value, 3) for name, value in parts.items()}


def _postmaster_pid(data: Path | None) -> int | None:
    if data is None:
        return None
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def _postgres(durable: bool) -> Iterator[_Cluster]:
    """A throw-away cluster (``initdb`` + ``pg_ctl``), run as ``postgres`` when we are root."""
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
    data, port = root / "data", _free_port()
    durability = "" if durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 {durability}"
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-300:]}") from None

    def stop() -> None:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)

    try:
        yield _Cluster(f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench", stop, data)
    finally:
        stop()


# --- setting up the desks, clerks and cards ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Desk:
    desk_id: str
    clerk: str
    card_no: str


def _prepare(url: str, directory: Path, clients: int, run_id: str) -> list[_Desk]:
    """Desks, clerks (one per client) and an issued anonymous card in each desk's reader (an image file)."""
    from api.desks import put_desk
    from api.staff_auth import create_staff
    from backoffice.db import UnitOfWork, make_engine, session_factory
    from backoffice.schema import upgrade
    from cardos.card import Card, CardKind
    from cardos.crypto import Alg
    from cardos.keyfile import IssuerKeys
    from issuance import services
    from issuance.access import Role, Staff
    from issuance.keys import InMemoryKeystore
    from issuance.keystore import AesGcmSealer
    from issuance.lifecycle import CardType
    from issuance.pii import PersonalDataVault
    from terminal.channel import InProcessChannel

    upgrade(url, "issuance@head")
    upgrade(url, "api@head")
    keys = IssuerKeys.generate(ISSUER_ID, Alg.DES)
    (directory / "keys.json").write_text(json.dumps(keys.to_json()))
    seal, lookup = os.urandom(32), os.urandom(32)
    (directory / "pii.json").write_text(json.dumps({"seal": seal.hex(), "lookup": lookup.hex()}))
    (directory / "cards").mkdir()
    keystore = InMemoryKeystore([keys])
    vault = PersonalDataVault(AesGcmSealer(seal), lookup)
    issuer = services.IssuerProfile(keys.issuer_id, keys.alg)
    setup_staff = Staff(f"bench-setup-{run_id}", Role.CLERK)
    engine = make_engine(url)
    sessions = session_factory(engine)
    desks: list[_Desk] = []
    try:
        for index in range(clients):
            desk_id, clerk = f"B{run_id}-{index:03d}", f"bench-{run_id}-{index:03d}"
            term_id = f"9{int(run_id, 16) % 10**8:08d}{index:03d}"
            with UnitOfWork(sessions) as uow:
                put_desk(uow, desk_id, reader="simulated", term_id=term_id)
            with UnitOfWork(sessions) as uow:
                create_staff(uow, clerk, f"bench password {run_id}", ["counter"], desk_id=desk_id)
            with UnitOfWork(sessions) as uow:
                card_no = services.apply_for_card(uow, setup_staff, card_type=CardType.ADULT, city_code=CITY).card_no
            chip = Card.factory(CardKind.USER, keys.alg, keys.keys["KT"], os.urandom(8))
            with UnitOfWork(sessions) as uow, InProcessChannel(chip) as channel:
                services.issue_card(uow, setup_staff, keystore, vault, issuer, channel, card_no=card_no, pin="123456")
            chip.save_image(directory / "cards" / f"{desk_id}.card")
            desks.append(_Desk(desk_id, clerk, card_no))
    finally:
        engine.dispose()
    return desks


# --- the client -------------------------------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read the status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, head: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head.encode("latin-1") + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class _Phase:
    done: int
    errors: dict[int, int]
    latencies: list[float]
    seconds: float

    def figures(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}_per_s": round(self.done / self.seconds, 1),
            f"{prefix}_count": self.done,
            f"{prefix}_p50_ms": round(_percentile(self.latencies, 0.50) * 1000, 2),
            f"{prefix}_p99_ms": round(_percentile(self.latencies, 0.99) * 1000, 2),
            f"{prefix}_mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else 0.0,
            f"{prefix}_errors": {str(k): v for k, v in sorted(self.errors.items())},
        }


async def _drive(port: int, make_requests: list[Callable[[], tuple[str, bytes]]], ok: int, seconds: float) -> _Phase:
    """One connection per request maker, each sending as fast as its answers come, for ``seconds``."""
    connections = [await _Connection.open(port) for _ in make_requests]
    latencies: list[float] = []
    errors: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()

    async def client(connection: _Connection, make: Callable[[], tuple[str, bytes]]) -> int:
        done = 0
        while time.perf_counter() < stop_at:
            head, body = make()
            sent = time.perf_counter()
            status, _ = await connection.request(head, body)
            if status == ok:
                latencies.append(time.perf_counter() - sent)
                done += 1
            else:
                errors[status] = errors.get(status, 0) + 1
        return done

    try:
        counts = await asyncio.gather(*(client(c, m) for c, m in zip(connections, make_requests, strict=True)))
    finally:
        for connection in connections:
            connection.close()
    return _Phase(sum(counts), errors, latencies, time.perf_counter() - started)


def _noop_request() -> tuple[str, bytes]:
    return "GET /bench/noop HTTP/1.1\r\nHost: bench\r\n\r\n", b""


def _load_request(desk: _Desk, token: str) -> Callable[[], tuple[str, bytes]]:
    body = json.dumps({"desk_id": desk.desk_id, "amount": 1}).encode()
    prefix = (
        f"POST /counter/cards/{desk.card_no}/loads HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )

    def make() -> tuple[str, bytes]:
        return f"{prefix}Idempotency-Key: {uuid.uuid4().hex}\r\n\r\n", body

    return make


async def _login(port: int, desks: list[_Desk], run_id: str) -> list[str]:
    tokens = []
    connection = await _Connection.open(port)
    try:
        for desk in desks:
            body = json.dumps({"username": desk.clerk, "password": f"bench password {run_id}"}).encode()
            head = (
                f"POST /auth/login HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            status, answer = await connection.request(head, body)
            if status != 200:
                raise RuntimeError(f"bench log-in failed: {status} {answer[:200]!r}")
            tokens.append(json.loads(answer)["token"])
    finally:
        connection.close()
    return tokens


def _wait_ready(port: int, processes: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("an API worker exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n")
            if b" 200 " in sock.recv(200):
                return
        time.sleep(0.2)
    raise RuntimeError("the API server did not come up")


def _count_loads(url: str, desks: list[_Desk]) -> int:
    from sqlalchemy import func, select

    from backoffice.db import make_engine
    from issuance.models import Load

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            cards = [desk.card_no for desk in desks]
            return int(
                conn.execute(select(func.count()).select_from(Load).where(Load.card_no.in_(cards))).scalar() or 0
            )
    finally:
        engine.dispose()


def bench_api(
    progress: Callable[[str], None],
    *,
    clients: int = 8,
    seconds: float = 10.0,
    workers: int = 2,
    durable: bool = True,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Run the API benchmark; return its JSON document (see the module docstring)."""
    url = (database_url if database_url is not None else os.environ.get("ONECARD_DATABASE_URL")) or None
    if url and not url.startswith("postgresql"):
        url = None  # the bench is about PostgreSQL
    shm = Path("/dev/shm")
    directory = Path(tempfile.mkdtemp(prefix="onecard-bench-api-", dir=shm if shm.is_dir() else None))
    try:
        with contextlib.ExitStack() as stack:
            cluster_data: Path | None = None
            if url is None:
                progress("starting PostgreSQL")
                cluster = stack.enter_context(_postgres(durable))
                url, cluster_data = cluster.url, cluster.data
                own_cluster = True
            else:
                own_cluster = False
            run_id = secrets.token_hex(3)
            progress(f"preparing {clients} desks, clerks and cards")
            desks = _prepare(url, directory, clients, run_id)
            env = {
                **os.environ,
                ENV_DIR: str(directory),
                "ONECARD_DATABASE_URL": url,
                "ONECARD_RATE_MONEY": "1000000/1000000",
                "ONECARD_RATE_LOGIN_CLIENT": "100000/1000",
            }
            progress(f"starting the API: {workers} uvicorn worker(s)")
            sock = stack.enter_context(contextlib.closing(reserve_port("127.0.0.1", 0)))
            port = int(sock.getsockname()[1])
            processes = spawn_workers(
                "127.0.0.1",
                port,
                workers,
                app="onecard_cli.bench_api:bench_app",
                env=env,
                stderr=(directory / "uvicorn.err").open("wb"),
            )
            stack.callback(stop_workers, processes)
            _wait_ready(port, processes)
            tokens = asyncio.run(_login(port, desks, run_id))
            progress("warming up")
            asyncio.run(_drive(port, [_load_request(d, t) for d, t in zip(desks, tokens, strict=True)], 201, 2.0))
            asyncio.run(_drive(port, [_noop_request] * clients, 200, 1.0))
            before = _count_loads(url, desks)
            meter = _CpuMeter([process.pid for process in processes], _postmaster_pid(cluster_data))
            progress(f"no-op endpoint: {clients} clients, {seconds:g} s")
            cpu_start = meter.read()
            noop = asyncio.run(_drive(port, [_noop_request] * clients, 200, seconds))
            cpu_noop = meter.per_request(cpu_start, meter.read(), noop.done)
            progress(f"loads: {clients} clients, {seconds:g} s")
            cpu_start = meter.read()
            loads = asyncio.run(
                _drive(port, [_load_request(d, t) for d, t in zip(desks, tokens, strict=True)], 201, seconds)
            )
            cpu_loads = meter.per_request(cpu_start, meter.read(), loads.done)
            recorded = _count_loads(url, desks) - before
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    value = round(loads.done / loads.seconds, 1)
    baseline = round(noop.done / noop.seconds, 1)
    return {
        "bench": "api",
        "value": value,
        "unit": "loads/s",
        "baseline": baseline,
        "baseline_unit": "no-op requests/s",
        "ratio": round(value / baseline, 4) if baseline else None,
        "p50_ms": loads.figures("loads")["loads_p50_ms"],
        "p99_ms": loads.figures("loads")["loads_p99_ms"],
        **loads.figures("loads"),
        **noop.figures("noop"),
        "cpu_ms_per_load": cpu_loads,
        "cpu_ms_per_noop": cpu_noop,
        "loads_recorded": recorded,
        "exactly_once": recorded == loads.done,
        "clients": clients,
        "workers": workers,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "database": "postgresql (throw-away cluster)" if own_cluster else "postgresql (ONECARD_DATABASE_URL)",
        "postgres_durable": durable if own_cluster else None,
        "cards": "simulated (cardos in-process, image files on tmpfs)",
        "targets": {"loads_per_s": 800, "p99_ms": 50},
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m onecard_cli.bench_api [--clients N] [--seconds S] [--workers W] [--no-durable] [--json]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-durable", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    doc = bench_api(
        lambda line: print(line, file=sys.stderr),
        clients=args.clients,
        seconds=args.seconds,
        workers=args.workers,
        durable=not args.no_durable,
    )
    if args.json:
        print(json.dumps(doc))
    else:
        for key, value in doc.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
