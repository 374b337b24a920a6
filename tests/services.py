"""Real services for the tests: a throw-away PostgreSQL cluster, a Redis server, a SoftHSM token.

Each starter returns a handle whose ``stop()`` ends what it started. When ``ONECARD_REQUIRE_SERVICES`` is
set (the README's test command sets it) a service that cannot start fails the tests instead of skipping.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """A service's binaries are missing or it did not come up."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@dataclass
class Postgres:
    """A PostgreSQL cluster in a temporary directory, run as the ``postgres`` user when we are root."""

    port: int
    data_dir: Path
    bin_dir: Path
    as_user: list[str]
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        """SQLAlchemy URL of a database on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database; return its URL."""
        subprocess.run(
            [
                *self.as_user,
                str(self.bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            ],
            check=True,
            capture_output=True,
        )
        self.databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        subprocess.run(
            [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb + pg_ctl start on a free port (fsync off: a test cluster)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServiceUnavailable("PostgreSQL is not installed (Debian package postgresql; run scripts/setup.sh)")
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="onecard-pg-"))
    data_dir = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o755)
    port = free_port()
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data_dir),
                "-l",
                str(root / "log"),
                "-o",
                options,
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')[-400:]}") from exc
    return Postgres(port, data_dir, bin_dir, as_user)


@dataclass
class Redis:
    """A redis-server on a free port."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Redis URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()


def start_redis() -> Redis:
    """redis-server without persistence on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not _wait_port(port, 10):
        process.kill()
        raise ServiceUnavailable("redis-server did not start")
    return Redis(port, process)


def require_services() -> bool:
    """True when a missing service must fail the run (CI, the README's test command)."""
    return bool(os.environ.get("ONECARD_REQUIRE_SERVICES") or os.environ.get("CI"))
