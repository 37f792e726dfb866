"""A real `notify-server serve` process on a free port, for SDK and concurrency tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    base_url: str

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushes."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_server(
    database_url: str, *, workers: int = 1, env: dict[str, str] | None = None
) -> LiveServer:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notify_server.cli",
            "serve",
            "--no-migrate",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "NOTIFY_DATABASE_URL": database_url, **(env or {})},
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"notify-server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return LiveServer(process, base_url)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("notify-server did not become healthy in 30 s")


@contextmanager
def live_server(database_url: str, **kwargs) -> Iterator[LiveServer]:
    server = start_server(database_url, **kwargs)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
