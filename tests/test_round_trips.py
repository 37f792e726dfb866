"""Round trips to PostgreSQL per request, counted on the wire (libpq's protocol trace).

Across a network every round trip stalls the request; issue 8 asks for a fetch in one and a
create in at most three: we do two (BEGIN, the locks and the probe; then the writes and the
COMMIT). A round trip ends where the client waits: a Sync (extended protocol) or a simple
Query message.
"""

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import make_engine, transaction
from notify_server.delivery import repository
from notify_server.delivery.channels import Outcome, Result
from notify_server.delivery.worker import outcome_of
from notify_server.notifications import repository as notifications_repository
from notify_server.wire import utcnow_precise
from tests.factories import Account, make_account, make_credential, make_service

_WAITS = re.compile(r"^F\t\d+\t(Sync|Query)\b", re.MULTILINE)


class WireTrace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w")
        self._seen = 0

    def attach(self, dbapi_connection: Any, _record: Any) -> None:
        from psycopg import pq

        dbapi_connection.pgconn.trace(self._file.fileno())
        dbapi_connection.pgconn.set_trace_flags(
            pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE
        )

    def round_trips(self) -> int:
        """Since the last call."""
        self._file.flush()
        text = self.path.read_text()
        waits = len(_WAITS.findall(text))
        new, self._seen = waits - self._seen, waits
        return new

    def close(self) -> None:
        self._file.close()


@pytest.fixture
def traced(
    settings: Settings, engine: Engine, tmp_path: Path
) -> Iterator[tuple[TestClient, WireTrace]]:
    if engine.dialect.name != "postgresql":
        pytest.skip("round trips are counted on PostgreSQL's wire protocol")
    trace = WireTrace(tmp_path / "libpq.trace")
    # Every connection the app opens from here on; no worker, so only requests use them.
    event.listen(Engine, "connect", trace.attach)
    try:
        app = create_app(settings.model_copy(update={"worker_enabled": False}))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, trace
    finally:
        event.remove(Engine, "connect", trace.attach)
        trace.close()


@pytest.fixture
def account(engine: Engine) -> Account:
    return make_account(engine)


def test_a_fetch_is_one_round_trip_and_a_create_two(traced, account) -> None:
    client, trace = traced
    service = make_service(client, account)  # also leaves the credentials verified and cached
    url = f"/v1/Services/{service['sid']}/Bindings"
    trace.round_trips()

    created = client.post(
        url,
        data={"Identity": "alice", "BindingType": "apn", "Address": "a1", "Tag": ["x", "y"]},
        auth=account.auth,
    )
    assert created.status_code == 201, created.text
    assert trace.round_trips() == 2

    again = client.post(
        url,
        data={"Identity": "alice", "BindingType": "apn", "Address": "a1", "Tag": "z"},
        auth=account.auth,
    )
    assert again.status_code == 201 and again.json()["sid"] == created.json()["sid"]
    assert trace.round_trips() == 2

    fetched = client.get(f"{url}/{created.json()['sid']}", auth=account.auth)
    assert fetched.status_code == 200 and fetched.json()["tags"] == ["z"]
    assert trace.round_trips() == 1


def test_a_create_with_endpoint_and_credential_is_still_two(traced, account) -> None:
    client, trace = traced
    service = make_service(client, account)
    credential = make_credential(client, account)
    trace.round_trips()

    created = client.post(
        f"/v1/Services/{service['sid']}/Bindings",
        data={
            "Identity": "bob",
            "BindingType": "apn",
            "Address": "b1",
            "Endpoint": "device-1",
            "CredentialSid": credential["sid"],
        },
        auth=account.auth,
    )
    assert created.status_code == 201, created.text
    assert trace.round_trips() == 2


def test_errors_found_by_the_probe_cost_no_more(traced, account) -> None:
    client, trace = traced
    service = make_service(client, account)
    trace.round_trips()
    missing = client.post(
        f"/v1/Services/IS{'0' * 32}/Bindings",
        data={"Identity": "alice", "BindingType": "apn", "Address": "a1"},
        auth=account.auth,
    )
    assert missing.status_code == 404
    bad_credential = client.post(
        f"/v1/Services/{service['sid']}/Bindings",
        data={
            "Identity": "alice",
            "BindingType": "apn",
            "Address": "a1",
            "CredentialSid": "CR" + "0" * 32,
        },
        auth=account.auth,
    )
    assert bad_credential.status_code == 400
    assert "CredentialSid" in bad_credential.json()["message"]
    # Each: BEGIN with the probe, then ROLLBACK.
    assert trace.round_trips() == 4


def service_with_tagged_bindings(client: TestClient, account: Account, count: int) -> dict:
    """A service with `count` apn bindings tagged `t`, user-0 first."""
    service = make_service(client, account)
    url = f"/v1/Services/{service['sid']}/Bindings"
    for i in range(count):
        data = {"Identity": f"user-{i}", "BindingType": "apn", "Address": f"a{i}", "Tag": "t"}
        assert client.post(url, data=data, auth=account.auth).status_code == 201
    return service


def test_a_list_page_is_one_round_trip(traced, account) -> None:
    client, trace = traced
    service = service_with_tagged_bindings(client, account, 3)
    url = f"/v1/Services/{service['sid']}/Bindings"
    trace.round_trips()

    page = client.get(url, params={"Tag": "t", "PageSize": 2}, auth=account.auth)
    assert page.status_code == 200 and len(page.json()["bindings"]) == 2
    assert trace.round_trips() == 1
    following = client.get(page.json()["meta"]["next_page_url"], auth=account.auth)
    assert [b["identity"] for b in following.json()["bindings"]] == ["user-2"]
    assert trace.round_trips() == 1

    # Only an empty page asks whether the service is there at all.
    missing = client.get(f"/v1/Services/IS{'0' * 32}/Bindings", auth=account.auth)
    assert missing.status_code == 404
    assert trace.round_trips() == 2


@pytest.fixture
def worker_engine(traced, settings: Settings) -> Iterator[Engine]:
    """An engine of the test's own, as a worker's, its connection traced and warmed up."""
    _, trace = traced
    engine = make_engine(settings.database_url)
    with transaction(engine, write=True) as conn:
        conn.execute(text("SELECT 1"))
    yield engine
    engine.dispose()


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY 1"))
        return {status: count for status, count in rows}


def test_a_workers_claim_is_one_round_trip_and_so_is_its_record(
    traced, account, worker_engine
) -> None:
    client, trace = traced
    service = make_service(client, account)
    targets = [f'{{"binding_type": "apn", "address": "token-{i}"}}' for i in range(5)]
    notified = client.post(
        f"/v1/Services/{service['sid']}/Notifications",
        data={"ToBinding": targets, "Body": "x"},
        auth=account.auth,
    )
    assert notified.status_code == 201, notified.text
    engine = worker_engine
    trace.round_trips()

    now = utcnow_precise()
    with transaction(engine, write=True) as conn:
        claimed = repository.claim(conn, now=now, lease_until=now + timedelta(seconds=30), limit=3)
    # BEGIN, the claim (what to take, the take, and what sending it needs), COMMIT.
    assert trace.round_trips() == 1
    assert [row.address for row in claimed] == ["token-0", "token-1", "token-2"]
    assert {row.service_sid for row in claimed} == {service["sid"]}
    assert statuses(engine) == {"sending": 3, "pending": 2}

    answers = [
        outcome_of(row, Result(Outcome.SENT, f"apns-{row.id}", provider_status=200), now)
        for row in claimed
    ]
    trace.round_trips()
    with transaction(engine, write=True) as conn:
        repository.record_outcomes(conn, answers, [])
    assert trace.round_trips() == 1
    assert statuses(engine) == {"sent": 3, "pending": 2}


def test_a_chunk_of_a_fan_out_is_four_round_trips(traced, account, settings, worker_engine) -> None:
    client, trace = traced
    service = service_with_tagged_bindings(client, account, 5)
    chunked = settings.model_copy(update={"fanout_chunk_size": 2, "worker_enabled": False})
    with TestClient(create_app(chunked)) as small_chunks:
        notified = small_chunks.post(
            f"/v1/Services/{service['sid']}/Notifications",
            data={"Tag": "t", "Body": "x"},
            auth=account.auth,
        )
    assert notified.status_code == 201, notified.text
    engine = worker_engine
    trace.round_trips()

    with transaction(engine, write=True) as conn:
        written = notifications_repository.expand_next(conn, limit=2, now=utcnow_precise())
    # The expansion; the chunk's end with the fair queue's clock and head; the INSERT;
    # the cursor's and the clock's advance with the COMMIT.
    assert trace.round_trips() == 4
    assert written == 2
    assert statuses(engine) == {"pending": 4}
    with engine.connect() as conn:
        after = conn.execute(text("SELECT after_binding_id FROM expansions")).scalar_one()
        newest_written = conn.execute(text("SELECT max(binding_id) FROM deliveries")).scalar_one()
    assert after == newest_written
