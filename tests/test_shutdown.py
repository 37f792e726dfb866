"""Graceful shutdown of live processes: `notify-server serve` finishes the requests it is
serving when SIGTERM arrives, refuses new connections, and exits 0; `notify-server worker`
exits 0 too.

The in-flight requests are held open deterministically: each is sent with
`Expect: 100-continue`, so the server's `100 Continue` proves the request reached the route
(authenticated, reading its body) before the signal; the rest of the body follows the signal.
"""

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

import h11
import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, func, select

from notify_server.app import create_app
from notify_server.bindings.models import Binding
from notify_server.notifications.models import Delivery
from tests.factories import Account, make_binding, make_service
from tests.servers import LiveServer, start_server

bindings_table: Table = Binding.__table__  # type: ignore[assignment]
deliveries: Table = Delivery.__table__  # type: ignore[assignment]
IN_FLIGHT = 5
EXIT_WITHIN = 5.0


class HeldRequest:
    """A POST over a raw socket whose body is sent in two halves, on the test's cue."""

    def __init__(self, base_url: str, path: str, auth: tuple[str, str], form: dict) -> None:
        parts = urlsplit(base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.conn = h11.Connection(h11.CLIENT)
        self.body = urlencode(form).encode()
        token = base64.b64encode(":".join(auth).encode()).decode()
        self._send(
            h11.Request(
                method="POST",
                target=path,
                headers=[
                    ("Host", parts.netloc),
                    ("Authorization", f"Basic {token}"),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", str(len(self.body))),
                    ("Expect", "100-continue"),
                ],
            )
        )

    def _send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def _next_event(self):
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            return event

    def wait_for_continue(self) -> None:
        event = self._next_event()
        assert isinstance(event, h11.InformationalResponse), event
        assert event.status_code == 100
        # Half the body now: the request is being received when the signal comes.
        self._send(h11.Data(data=self.body[: len(self.body) // 2]))

    def finish(self) -> tuple[int, dict[bytes, bytes], bytes]:
        self._send(h11.Data(data=self.body[len(self.body) // 2 :]))
        self._send(h11.EndOfMessage())
        response = self._next_event()
        assert isinstance(response, h11.Response), response
        body = b""
        while not isinstance(event := self._next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        return response.status_code, dict(response.headers), body

    def close(self) -> None:
        self.sock.close()


def refuses_connections(base_url: str) -> bool:
    parts = urlsplit(base_url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def exit_code(process: subprocess.Popen, within: float = EXIT_WITHIN) -> int | str:
    try:
        return process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return f"still running after {within} s"


@pytest.fixture(scope="module")
def server_env(secret_key: str) -> dict[str, str]:
    return {"NOTIFY_SECRET_KEY": secret_key, "NOTIFY_WORKER_POLL_SECONDS": "0.05"}


@pytest.fixture
def server(database_url: str, engine: Engine, server_env) -> Iterator[LiveServer]:
    live = start_server(database_url, env=server_env)
    try:
        yield live
    finally:
        if live.process.poll() is None:
            live.process.kill()
            live.process.wait()


def count_bindings(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(bindings_table)).scalar_one()


class TestServeShutdown:
    def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(
        self, server, engine, account: Account
    ):
        with httpx.Client(base_url=server.base_url, auth=account.auth) as http:
            service = http.post("/v1/Services").json()
        path = f"/v1/Services/{service['sid']}/Bindings"
        held = [
            HeldRequest(
                server.base_url,
                path,
                account.auth,
                {"Identity": f"user-{n}", "BindingType": "fcm", "Address": f"device-{n}"},
            )
            for n in range(IN_FLIGHT)
        ]
        try:
            for request in held:
                request.wait_for_continue()

            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: refuses_connections(server.base_url), 5, "listener closed")
            # Still serving what it had: it waits for these.
            assert server.process.poll() is None
            assert count_bindings(engine) == 0

            released = time.monotonic()
            answers = [request.finish() for request in held]
        finally:
            for request in held:
                request.close()

        for n, (status, headers, body) in enumerate(answers):
            assert status == 201, body
            resource = orjson.loads(body)
            assert resource["identity"] == f"user-{n}"
            assert resource["address"] == f"device-{n}"
            assert headers[b"twilio-request-id"].startswith(b"RQ")
            # The connection is not kept for another request.
            assert headers[b"connection"] == b"close"
        assert count_bindings(engine) == IN_FLIGHT

        assert exit_code(server.process) == 0
        assert time.monotonic() - released < EXIT_WITHIN

    def test_sigterm_with_an_idle_keep_alive_connection_exits_0(self, server, account):
        with httpx.Client(base_url=server.base_url, auth=account.auth) as http:
            assert http.get("/v1/Services").status_code == 200
            # The connection stays open, idle: it must not hold the shutdown up.
            server.process.send_signal(signal.SIGTERM)
            assert exit_code(server.process) == 0
        assert refuses_connections(server.base_url)

    def test_two_worker_processes_exit_0(self, database_url, engine, server_env):
        live = start_server(database_url, workers=2, env=server_env)
        try:
            assert httpx.get(f"{live.base_url}/healthz").status_code == 200
            live.process.send_signal(signal.SIGTERM)
            assert exit_code(live.process, within=10) == 0
        finally:
            if live.process.poll() is None:
                live.process.kill()
                live.process.wait()


class TestWorkerShutdown:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
    def test_worker_delivers_then_exits_0_on_signal(
        self, database_url, settings, engine, account, server_env, signum
    ):
        app = create_app(settings.model_copy(update={"worker_enabled": False}))
        with TestClient(app, raise_server_exceptions=False) as client:
            service = make_service(client, account)
            make_binding(client, account, service["sid"])
            response = client.post(
                f"/v1/Services/{service['sid']}/Notifications",
                data={"Identity": "alice", "Body": "hello"},
                auth=account.auth,
            )
            assert response.status_code == 201, response.text

        process = subprocess.Popen(
            [sys.executable, "-m", "notify_server.cli", "worker", "--no-migrate"],
            env={**os.environ, "NOTIFY_DATABASE_URL": database_url, **server_env},
        )
        try:

            def delivered() -> bool:
                assert process.poll() is None, f"worker exited with {process.returncode}"
                with engine.connect() as conn:
                    return conn.execute(select(deliveries.c.status)).scalar_one() == "sent"

            # Delivering proves the worker is running (its signal handlers are in place).
            wait_for(delivered, 20, "the worker delivers")
            process.send_signal(signum)
            assert exit_code(process) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
