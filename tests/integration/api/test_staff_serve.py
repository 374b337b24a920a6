"""``onecard serve``'s multi-worker path: worker processes on one port (``SO_REUSEPORT``), JSON logs, keep-alive
answers without the 40 ms delayed-ACK stall (TCP sockets by name, so connections get TCP_NODELAY), and the
connections spread over the workers."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx

from onecard_cli.serve import reserve_port, spawn_workers, stop_workers


def test_workers_share_one_socket_and_answer_promptly(tmp_path: Path) -> None:
    sock = reserve_port("127.0.0.1", 0)
    port = sock.getsockname()[1]
    assert sock.proto == socket.IPPROTO_TCP
    env = {**os.environ, "ONECARD_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    with (tmp_path / "stderr").open("wb") as stderr:
        workers = spawn_workers("127.0.0.1", port, 2, env=env, stderr=stderr)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if client.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
                    time.sleep(0.1)
                started = time.perf_counter()
                for _ in range(20):  # one keep-alive connection
                    assert client.get("/health", headers={"X-Request-ID": "serve-test"}).status_code == 200
                assert (time.perf_counter() - started) / 20 < 0.03
            for _ in range(40):  # new connections, spread over the workers
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as fresh:
                    assert fresh.get("/health", headers={"X-Request-ID": "spread"}).status_code == 200
        finally:
            stop_workers(workers)
            sock.close()
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "onecard.api.access"]
    mine = [line for line in access if line["request_id"] == "serve-test"]
    assert len(mine) == 20 and mine[0]["path"] == "/health" and mine[0]["status"] == 200
    spread = {line["pid"] for line in access if line["request_id"] == "spread"}
    assert spread == {worker.pid for worker in workers}
