"""Crash safety of delivery: SIGKILL a live server in the middle of a fan-out, start another on
the same database, and every outbox row still ends `sent` exactly as the fake provider saw it.

The fake is a Twilio-compatible Messages API in this process. After HOLD_AFTER messages it
holds further requests open, so at the kill some rows are sent, some are in flight (answered
or not) and the rest are pending. At-least-once: an address may be texted twice only if its
first send was in flight, or answered but not yet recorded (answers are written in batches),
when the server died, so duplicates are bounded by the worker's concurrency plus one batch of
answers; a row recorded `sent` is never sent again.
"""

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, select
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.notifications.models import Delivery
from tests.factories import Account, make_binding, make_service
from tests.servers import LiveServer, free_port, start_server

deliveries: Table = Delivery.__table__  # type: ignore[assignment]
BINDINGS = 300
HOLD_AFTER = 120
CONCURRENCY = 16
SMS_ACCOUNT = "AC" + "5" * 32


@dataclass
class FakeMessagesApi:
    """POST /2010-04-01/Accounts/{AC}/Messages.json -> 201 {"sid": "SM..."} after 20 ms."""

    base_url: str = ""
    received: list[str] = field(default_factory=list)
    # Set once a request is being held; set to let held requests answer.
    holding: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def create_message(self, request: Request) -> JSONResponse:
        try:
            form = await request.form()
        except ClientDisconnect:  # the server was killed mid-request
            return JSONResponse({}, 499)
        assert request.path_params["account"] == SMS_ACCOUNT
        with self.lock:
            self.received.append(str(form["To"]))
            number = len(self.received)
        if number > HOLD_AFTER:
            self.holding.set()
            while not self.released.is_set():
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        return JSONResponse({"sid": "SM" + uuid.uuid4().hex, "status": "queued"}, 201)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def fake_sms() -> Iterator[FakeMessagesApi]:
    fake = FakeMessagesApi()
    app = Starlette(
        routes=[
            Route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                fake.create_message,
                methods=["POST"],
            )
        ]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake Messages API did not start"
        time.sleep(0.01)
    fake.base_url = f"http://127.0.0.1:{port}"
    yield fake
    fake.released.set()
    server.should_exit = True
    thread.join(timeout=10)


def server_env(fake: FakeMessagesApi, settings: Settings, tmp_path) -> dict[str, str]:
    return {
        "NOTIFY_DELIVERY_LEASE_SECONDS": "1",
        "NOTIFY_WORKER_POLL_SECONDS": "0.05",
        "NOTIFY_WORKER_CONCURRENCY": str(CONCURRENCY),
        "NOTIFY_SMS_BASE_URL": fake.base_url,
        "NOTIFY_SMS_ACCOUNT_SID": SMS_ACCOUNT,
        "NOTIFY_SMS_AUTH_TOKEN": "fake-token",
        "NOTIFY_SMS_FROM": "+15005550006",
        "NOTIFY_SECRET_KEY": settings.secret_key or "",
        "NOTIFY_SECRET_KEY_FILE": str(tmp_path / "unused.key"),
        "NOTIFY_ACCESS_LOG": "false",
        "NOTIFY_LOG_LEVEL": "warning",
    }


def seed(settings: Settings, account: Account) -> tuple[str, list[str]]:
    """A service with BINDINGS sms bindings, made in-process with no worker running."""
    quiet = settings.model_copy(update={"worker_enabled": False})
    with TestClient(create_app(quiet)) as client:
        service_sid = make_service(client, account)["sid"]
        addresses = [f"+1555{i:07d}" for i in range(BINDINGS)]
        for i, address in enumerate(addresses):
            make_binding(
                client,
                account,
                service_sid,
                Identity=f"user-{i}",
                BindingType="sms",
                Address=address,
            )
    return service_sid, addresses


def listed(server: LiveServer, account: Account, service_sid: str, sid: str) -> list[dict]:
    response = httpx.get(
        f"{server.base_url}/v1/Services/{service_sid}/Notifications/{sid}/Deliveries",
        params={"PageSize": 1000},
        auth=account.auth,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def statuses_in_database(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.address, deliveries.c.status))
        return {row.address: row.status for row in rows}


def test_kill_mid_fan_out_then_restart(
    engine: Engine,
    settings: Settings,
    account: Account,
    database_url: str,
    fake_sms: FakeMessagesApi,
    tmp_path,
    record_property,
) -> None:
    service_sid, addresses = seed(settings, account)
    env = server_env(fake_sms, settings, tmp_path)

    first = start_server(database_url, env=env)
    try:
        response = httpx.post(
            f"{first.base_url}/v1/Services/{service_sid}/Notifications",
            data={"Tag": "all", "Body": "hello"},
            auth=account.auth,
            timeout=10,
        )
        assert response.status_code == 201, response.text
        sid = response.json()["sid"]
        # Some rows are recorded sent, not all: the fake holds everything after HOLD_AFTER.
        deadline = time.monotonic() + 30
        while True:
            rows = listed(first, account, service_sid, sid)
            sent = sum(row["status"] == "sent" for row in rows)
            if sent:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.02)
        assert len(rows) == BINDINGS
        assert sent < BINDINGS
        # Kill as soon as sends are held open: well within their lease.
        assert fake_sms.holding.wait(timeout=30), "the fan-out never reached the hold"
    finally:
        first.kill()
    fake_sms.released.set()

    # What the dead server left behind, read from the database itself.
    at_kill = statuses_in_database(engine)
    received_before_kill = Counter(fake_sms.snapshot())
    sent_at_kill = {address for address, status in at_kill.items() if status == "sent"}
    sending_at_kill = {address for address, status in at_kill.items() if status == "sending"}
    # In flight at the kill: claimed, not recorded (sent and waiting for an answer, or
    # answered and waiting for its batch to be written). The fake may still be parsing
    # requests that arrived just before the kill, so its record is a lower bound.
    in_flight = sending_at_kill
    assert 0 < len(sent_at_kill) < BINDINGS
    assert sent_at_kill <= set(received_before_kill)
    assert set(received_before_kill) - sent_at_kill <= in_flight
    assert set(received_before_kill.values()) == {1}

    second = start_server(database_url, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = listed(second, account, service_sid, sid)
            if all(row["status"] in ("sent", "failed") for row in rows):
                break
            assert time.monotonic() < deadline, Counter(row["status"] for row in rows)
            time.sleep(0.05)
    finally:
        second.kill()

    assert len(rows) == BINDINGS
    for row in rows:
        assert row["status"] == "sent", row
        assert row["provider_message_id"].startswith("SM"), row
        assert row["provider_status"] == 201
    received = Counter(fake_sms.snapshot())
    assert set(received) == set(addresses)
    # A row recorded sent at the kill was never sent again.
    assert all(received[address] == 1 for address in sent_at_kill)
    duplicates = {address: n for address, n in received.items() if n > 1}
    assert set(duplicates) <= in_flight, set(duplicates) - in_flight
    assert set(duplicates.values()) <= {2}
    record_property("duplicates", len(duplicates))
    record_property("in_flight_at_kill", len(in_flight))
    record_property("sent_at_kill", len(sent_at_kill))
    print(
        f"\ncrash delivery: {len(sent_at_kill)} sent at the kill, {len(in_flight)} in flight,"
        f" {len(duplicates)} addresses texted twice"
    )
