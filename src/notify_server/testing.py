"""A real notify-server for your own test suite: `serve()`, a context manager, and a pytest
plugin (loaded through the `pytest11` entry point) with the fixtures `notify_server`
(one server for the session) and `notify_client` (the official `twilio` client pointed at
it). The server is `notify-server serve` in a child process on a free loopback port, with a
temporary SQLite database and no provider configured, so every delivery goes to the log
channel and nothing leaves the machine.

Nothing starts until a test asks for a fixture; importing this module imports no more than
the standard library, httpx and pytest.
"""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from twilio.rest import Client

FINAL_STATUSES = ("sent", "failed")
START_TIMEOUT = 60.0
START_ATTEMPTS = 3


@dataclass
class NotifyServer:
    base_url: str
    account_sid: str
    auth_token: str
    # A Service made at start-up, shared by the session; `create_service()` for a fresh one.
    service_sid: str
    log_file: Path
    _http: httpx.Client = field(repr=False)

    def client(self) -> "Client":
        """The official twilio client, authenticated as this server's account."""
        from twilio.rest import Client

        client = Client(self.account_sid, self.auth_token)
        client.notify.base_url = self.base_url
        return client

    def create_service(self, **form: str) -> str:
        response = self._http.post("/v1/Services", data={"FriendlyName": "test", **form})
        if response.status_code != 201:
            raise AssertionError(f"notify-server refused a Service: {response.text}")
        sid: str = response.json()["sid"]
        return sid

    def wait_for_deliveries(
        self,
        notification_sid: str,
        count: int = 1,
        timeout: float = 5.0,
        *,
        service_sid: str | None = None,
    ) -> list[dict[str, Any]]:
        """The notification's deliveries as the Deliveries listing renders them, once there
        are exactly `count` and each is sent or failed. AssertionError after `timeout`
        seconds, or at once when there are more than `count`."""
        path = f"/v1/Services/{service_sid or self.service_sid}/Notifications"
        url = f"{path}/{notification_sid}/Deliveries?PageSize=1000"
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self._all_pages(url)
            finished = [d for d in deliveries if d["status"] in FINAL_STATUSES]
            if len(deliveries) > count:
                raise AssertionError(
                    f"expected {count} deliveries of {notification_sid}, there are"
                    f" {len(deliveries)}: {_summary(deliveries)}"
                )
            if len(finished) == count:
                return deliveries
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {count} finished deliveries of {notification_sid} within"
                    f" {timeout} s, {len(finished)} finished of {len(deliveries)}:"
                    f" {_summary(deliveries)}"
                )
            time.sleep(0.05)

    def _all_pages(self, url: str | None) -> list[dict[str, Any]]:
        deliveries: list[dict[str, Any]] = []
        while url:
            response = self._http.get(url)
            if response.status_code != 200:
                raise AssertionError(
                    f"notify-server answered {response.status_code} for {url}: {response.text}"
                )
            page = response.json()
            deliveries.extend(page["deliveries"])
            url = page["meta"]["next_page_url"]
        return deliveries


def _summary(deliveries: list[dict[str, Any]]) -> str:
    if not deliveries:
        return "none"
    return ", ".join(
        f"{d['binding_type']} {d['address']!r} {d['status']}"
        + (f" ({d['error_message']})" if d.get("error_message") else "")
        for d in deliveries
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _environment(directory: Path, account_sid: str, auth_token: str) -> dict[str, str]:
    # The caller's NOTIFY_* settings (a provider's credentials, a PostgreSQL URL) stay out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(
        NOTIFY_DATABASE_URL=f"sqlite:///{directory / 'notify.db'}",
        NOTIFY_SECRET_KEY_FILE=str(directory / "notify-server.key"),
        NOTIFY_ACCOUNT_SID=account_sid,
        NOTIFY_AUTH_TOKEN=auth_token,
        NOTIFY_ACCESS_LOG="false",
        # Delivery callbacks may go to a receiver the test runs on this machine.
        NOTIFY_OUTBOUND_ALLOW="127.0.0.0/8,::1/128",
    )
    return env


def _start(env: dict[str, str], log_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The server on a free port; a port taken between choosing and binding is tried again."""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "notify_server.cli", "serve", "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base_url = f"http://127.0.0.1:{port}"
        if _wait_ready(process, base_url):
            return process, base_url
        _stop(process)
    raise RuntimeError(
        f"notify-server did not start; its output ({log_file}):\n{log_file.read_text()[-4000:]}"
    )


def _wait_ready(process: subprocess.Popen[bytes], base_url: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serve(env: Mapping[str, str] | None = None) -> Iterator[NotifyServer]:
    """A fresh notify-server with one account and one Service, stopped on exit. `env` adds
    NOTIFY_* settings (e.g. {"NOTIFY_SMS_FROM": "+15550000000"})."""
    account_sid = "AC" + secrets.token_hex(16)
    auth_token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="notify-server-") as tmp:
        directory = Path(tmp)
        log_file = directory / "server.log"
        process, base_url = _start(
            {**_environment(directory, account_sid, auth_token), **(env or {})}, log_file
        )
        try:
            with httpx.Client(
                base_url=base_url, auth=(account_sid, auth_token), timeout=10
            ) as http:
                server = NotifyServer(base_url, account_sid, auth_token, "", log_file, http)
                server.service_sid = server.create_service(FriendlyName="notify_server.testing")
                yield server
        finally:
            _stop(process)


@pytest.fixture(scope="session")
def notify_server() -> Iterator[NotifyServer]:
    """One notify-server for the test session: `base_url`, `account_sid`, `auth_token`,
    `service_sid`, `client()`, `wait_for_deliveries(...)`."""
    with serve() as server:
        yield server


@pytest.fixture
def notify_client(notify_server: NotifyServer) -> "Client":
    """The official twilio client, its Notify domain the session's notify-server."""
    return notify_server.client()
