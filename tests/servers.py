"""A real `notify-server serve` process on a free port, for SDK and concurrency tests."""

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
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


class DatabaseProxy:
    """TCP forwarding to PostgreSQL that can stop moving bytes (a database gone silent,
    connections left open) and resume, or cut every connection and refuse new ones (a
    database gone away) and come back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._moving = threading.Event()
        self._moving.set()
        self._stopping = False
        self._open: set[socket.socket] = set()
        self._listen()

    def freeze(self) -> None:
        self._moving.clear()

    def resume(self) -> None:
        self._moving.set()

    def cut(self) -> None:
        # shutdown() first: close() alone does not wake the thread blocked in accept().
        for sock in [self._listener, *self._open]:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def restore(self) -> None:
        self._listen()

    def close(self) -> None:
        self._stopping = True
        self._moving.set()
        self._listener.close()

    def _listen(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        self._open.update(peers)
        try:
            with client, upstream:
                while not self._stopping:
                    self._moving.wait()
                    ready, _, _ = select.select(list(peers), [], [], 0.05)
                    for sock in ready:
                        self._moving.wait()  # frozen: hold what arrived
                        data = sock.recv(65536)
                        if not data:
                            return
                        peers[sock].sendall(data)
        except OSError:  # cut
            return
        finally:
            self._open.difference_update(peers)
