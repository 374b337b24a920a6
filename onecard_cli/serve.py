"""``onecard serve [--host H] [--port P]`` (cli.md): the API (and, once built, the web pages) under uvicorn.

:func:`serve_app` is the application factory each worker imports: JSON-line logs with request ids on stderr, then
:func:`api.app.create_app` for the settings of the environment. :func:`serve` runs it, in one process or in
``workers`` processes sharing one listening socket.

Several workers are started here rather than with uvicorn's ``--workers``, for two reasons. Uvicorn binds its
shared socket without naming the protocol and hands it to its workers pickled, so the socket objects there say
protocol 0 and asyncio does not set ``TCP_NODELAY`` on the connections they accept (it checks for
``IPPROTO_TCP``): every keep-alive response then waits for the client's delayed ACK, about 40 ms each. And with
one shared socket, asyncio's accept loop lets the first worker to wake take a whole burst of connections, which
then stay on it. Here each worker (``python -m onecard_cli.serve --worker HOST PORT APP``) listens on its own TCP
socket on the same port with ``SO_REUSEPORT``, and the kernel spreads the connections over them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
APP = "onecard_cli.serve:serve_app"


def serve_app() -> FastAPI:
    """The application as served: structured logs configured, settings from the environment."""
    from api.app import create_app
    from api.observability import configure_logging

    configure_logging(logging.DEBUG if os.environ.get("ONECARD_DEBUG") else logging.INFO)
    return create_app()


def _uvicorn_options() -> dict[str, Any]:
    return {
        "factory": True,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "server_header": False,
        "log_level": "warning",
    }


def reserve_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` but not listening: it holds the port (a free one
    for ``port`` 0: see ``getsockname()``) for the workers, and receives no connections itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A worker's own listening TCP socket on the shared port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def spawn_workers(
    host: str,
    port: int,
    workers: int,
    *,
    app: str = APP,
    env: Mapping[str, str] | None = None,
    stderr: IO[bytes] | int | None = None,
) -> list[subprocess.Popen[bytes]]:
    """Start ``workers`` uvicorn processes serving ``app`` (a factory, ``module:function``) on ``host:port``."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "onecard_cli.serve", "--worker", host, str(port), app],
            env=dict(env) if env is not None else None,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        for _ in range(workers)
    ]


def stop_workers(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """Ask the workers to stop (SIGTERM: uvicorn finishes what it serves), then kill stragglers."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, workers: int = 1) -> None:
    """Serve the API on ``host:port`` until interrupted (``workers`` processes)."""
    import uvicorn

    if not 0 < port < 65536:
        raise ValueError("the port is 1 to 65535")
    if workers < 1:
        raise ValueError("at least one worker")
    if workers == 1:
        uvicorn.run(APP, host=host, port=port, **_uvicorn_options())
        return
    sock = reserve_port(host, port)
    processes = spawn_workers(host, sock.getsockname()[1], workers)
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_workers(processes))
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(processes)
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _worker(host: str, port: int, app: str) -> None:
    import uvicorn

    sock = worker_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, **_uvicorn_options()))
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: python -m onecard_cli.serve --worker HOST PORT module:factory")
