"""Operating the server: a Twilio-Request-Id on every response, Prometheus metrics that count
exactly what happened, readiness that follows the database, and JSON logs (from a live
`notify-server serve --log-level debug`) with one access line per request and never a secret.
"""

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, Table, func, select, text

from notify_server import migrate
from notify_server.app import create_app
from notify_server.db import make_engine
from notify_server.models import Base
from notify_server.notifications.models import Delivery
from tests.delivery.fake_sms import FakeSms
from tests.factories import Account, make_account, make_api_key, make_binding, make_service
from tests.servers import free_port

deliveries: Table = Delivery.__table__  # type: ignore[assignment]
REQUEST_ID = re.compile(r"RQ[0-9a-f]{32}")
UNKNOWN_IS = "IS" + "0" * 32
LOG_SENT = {"channel": "log", "outcome": "sent"}
METRICS_TOKEN = f"metrics-{uuid.uuid4().hex}"
BEARER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def settings(settings):
    """/metrics needs its token; the database gauges are refreshed often enough to wait for."""
    return settings.model_copy(
        update={"metrics_token": METRICS_TOKEN, "metrics_refresh_seconds": 0.1}
    )


def request_id(response) -> str:
    values = response.headers.get_list("twilio-request-id")
    assert len(values) == 1, (response.status_code, values)
    assert REQUEST_ID.fullmatch(values[0]), values[0]
    return values[0]


def assert_internal_error(response) -> None:
    assert response.status_code == 500
    assert response.json() == {
        "code": 20500,
        "message": "An internal server error has occurred",
        "more_info": "https://www.twilio.com/docs/errors/20500",
        "status": 500,
    }
    assert "Traceback" not in response.text


def broken(*args, **kwargs):
    raise RuntimeError("forced failure for the test")


class TestRequestId:
    def test_every_response_carries_one_unique_request_id(self, client, account, monkeypatch):
        auth = account.auth
        service = make_service(client, account)
        sid = service["sid"]
        binding = {"Identity": "alice", "BindingType": "apn", "Address": "a1"}
        responses = {
            "201": client.post(f"/v1/Services/{sid}/Bindings", data=binding, auth=auth),
            "200": client.get("/v1/Services", auth=auth),
            "200 .json": client.get(f"/v1/Services/{sid}.json", auth=auth),
            "400": client.post(f"/v1/Services/{sid}/Bindings", data={}, auth=auth),
            "401": client.get("/v1/Services"),
            "401 wrong token": client.get("/v1/Services", auth=(account.sid, "wrong")),
            "404 unknown route": client.get("/v1/Nothing/Here"),
            "404 malformed sid": client.get("/v1/Services/ISzz"),
            "404 unknown sid": client.get(f"/v1/Services/{UNKNOWN_IS}", auth=auth),
            "405": client.put("/v1/Services", auth=auth),
            "OPTIONS": client.options(f"/v1/Services/{sid}/Bindings"),
            "healthz": client.get("/healthz"),
            "readyz": client.get("/readyz"),
            "metrics": client.get("/metrics", headers=BEARER),
            "204": client.delete(f"/v1/Services/{sid}", auth=auth),
        }
        monkeypatch.setattr("notify_server.services.operations.list_services", broken)
        responses["500"] = client.get("/v1/Services", auth=auth)

        statuses = {name: r.status_code for name, r in responses.items()}
        assert statuses == {
            "201": 201,
            "200": 200,
            "200 .json": 200,
            "400": 400,
            "401": 401,
            "401 wrong token": 401,
            "404 unknown route": 404,
            "404 malformed sid": 404,
            "404 unknown sid": 404,
            "405": 405,
            "OPTIONS": 204,
            "healthz": 200,
            "readyz": 200,
            "metrics": 200,
            "204": 204,
            "500": 500,
        }
        assert_internal_error(responses["500"])
        ids = [request_id(r) for r in responses.values()]
        assert len(set(ids)) == len(ids)

    def test_a_client_sent_request_id_is_not_echoed(self, client, account):
        sent = "RQ" + "a" * 32
        response = client.get(
            "/v1/Services", auth=account.auth, headers={"Twilio-Request-Id": sent}
        )
        assert response.status_code == 200
        assert request_id(response) != sent

    def test_ids_differ_across_many_requests(self, client, account):
        ids = {request_id(client.get("/v1/Services", auth=account.auth)) for _ in range(200)}
        assert len(ids) == 200

    def test_the_event_loop_never_waits_on_os_urandom(self, client, account, monkeypatch):
        # os.urandom releases the GIL: called on the loop for each request id, it handed the
        # GIL to a database thread and waited to get it back (fetch-binding ran 20-35% slower).
        # The SIDs of what is stored still come from it, on the database's threads.
        on_the_loop = []
        real = os.urandom

        def urandom(size: int) -> bytes:
            try:
                asyncio.get_running_loop()
                on_the_loop.append(size)
            except RuntimeError:
                pass
            return real(size)

        service = make_service(client, account)
        binding = make_binding(client, account, service["sid"])
        monkeypatch.setattr(os, "urandom", urandom)
        responses = [
            client.get(
                f"/v1/Services/{service['sid']}/Bindings/{binding['sid']}", auth=account.auth
            ),
            client.get("/v1/Services/IS-not-a-sid", auth=account.auth),
            client.get("/v1/Services"),
            client.post(
                f"/v1/Services/{service['sid']}/Bindings",
                data={"Identity": "bob", "BindingType": "apn", "Address": "b0b"},
                auth=account.auth,
            ),
        ]
        assert [r.status_code for r in responses] == [200, 404, 401, 201]
        assert all(REQUEST_ID.fullmatch(r.headers["twilio-request-id"]) for r in responses)
        assert on_the_loop == []

    def test_forced_500_keeps_request_id_and_cors(self, client, account, monkeypatch):
        service = make_service(client, account)
        monkeypatch.setattr("notify_server.bindings.operations.create_binding", broken)
        response = client.post(
            f"/v1/Services/{service['sid']}/Bindings",
            data={"Identity": "alice", "BindingType": "apn", "Address": "a1"},
            auth=account.auth,
        )
        assert_internal_error(response)
        request_id(response)
        assert response.headers["access-control-allow-origin"] == "*"


# --- metrics ---------------------------------------------------------------------------


@dataclass
class Scrape:
    """One /metrics answer, parsed by Prometheus' own parser."""

    families: dict[str, object]
    samples: list = field(default_factory=list)

    def values(self, sample_name: str) -> dict[tuple, float]:
        return {
            tuple(sorted(s.labels.items())): s.value for s in self.samples if s.name == sample_name
        }

    def value(self, sample_name: str, **labels: str) -> float | None:
        return self.values(sample_name).get(tuple(sorted(labels.items())))


def scrape(client) -> Scrape:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = [s for f in families.values() for s in f.samples]
    return Scrape(families, samples)


def scrape_fresh(client) -> Scrape:
    """A scrape whose database gauges were read after this call began (they are cached)."""
    since = time.monotonic()
    deadline = since + 10
    while True:
        asked = time.monotonic()
        result = scrape(client)
        age = result.value("notify_database_gauges_age_seconds")
        # The cache was read at (server's now - age), and the server's now is after `asked`.
        if age is not None and "notify_bindings" in result.families and asked - age > since:
            return result
        assert time.monotonic() < deadline, f"database gauges not refreshed (age {age})"
        time.sleep(0.02)


def request_counts(result: Scrape, sample_name: str) -> Counter:
    counts: Counter = Counter()
    for labels, value in result.values(sample_name).items():
        if value:
            counts[tuple(v for _, v in sorted(labels))] = int(value)
    return counts


def key(operation: str, method: str, status: int) -> tuple[str, str, str]:
    # Sorted label names: method, operation, status.
    return (method, operation, str(status))


def make_notification(client, account: Account, service_sid: str, **form: str) -> dict:
    response = client.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={"Body": "hello", **form},
        auth=account.auth,
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def quiet_client(settings, engine) -> Iterator[TestClient]:
    """An app whose delivery worker does not run: notifications stay in the outbox."""
    app = create_app(settings.model_copy(update={"worker_enabled": False}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


class TestMetrics:
    exercises = ("PrometheusMetrics",)

    def test_prometheus_text_with_the_bearer_token(self, client):
        result = scrape_fresh(client)
        assert {
            "notify_requests",
            "notify_request_duration_seconds",
            "notify_deliveries",
            "notify_bindings",
            "notify_outbox_depth",
        } <= set(result.families)
        assert result.families["notify_requests"].type == "counter"
        assert result.families["notify_request_duration_seconds"].type == "histogram"
        assert result.families["notify_bindings"].type == "gauge"
        assert result.families["notify_outbox_depth"].type == "gauge"
        assert result.families["notify_database_gauges_age_seconds"].type == "gauge"

    def test_account_credentials_do_not_open_it(self, client, account):
        # An account's token is not the operators' token (more in test_metrics_access.py).
        response = client.get("/metrics", auth=account.auth)
        assert response.status_code == 401
        assert response.json()["code"] == 20003

    def test_request_counters_count_exactly_the_requests_made(self, client, account):
        auth = account.auth
        made: Counter = Counter()

        def call(operation: str, method: str, path: str, **kwargs) -> None:
            response = client.request(method, path, **kwargs)
            made[key(operation, method, response.status_code)] += 1

        call("create_service", "POST", "/v1/Services", auth=auth)
        call("create_service", "POST", "/v1/Services", auth=auth)
        sid = client.get("/v1/Services", auth=auth).json()["services"][0]["sid"]
        made[key("list_services", "GET", 200)] += 1
        bindings = f"/v1/Services/{sid}/Bindings"
        for n in range(3):
            form = {"Identity": f"u{n}", "BindingType": "fcm", "Address": f"a{n}"}
            call("create_binding", "POST", bindings, data=form, auth=auth)
        call("create_binding", "POST", bindings, data={"Identity": "u"}, auth=auth)
        call("list_bindings", "GET", bindings, auth=auth)
        call("list_bindings", "GET", bindings + ".json", auth=auth)
        call("list_bindings", "GET", bindings)
        call("fetch_service", "GET", f"/v1/Services/{UNKNOWN_IS}", auth=auth)
        call("unmatched", "GET", "/v1/Nothing")
        call("unmatched", "OPTIONS", "/v1/Services")
        call("healthz", "GET", "/healthz")
        call("delete_service", "DELETE", f"/v1/Services/{sid}", auth=auth)
        assert made == {
            key("create_service", "POST", 201): 2,
            key("list_services", "GET", 200): 1,
            key("create_binding", "POST", 201): 3,
            key("create_binding", "POST", 400): 1,
            key("list_bindings", "GET", 200): 2,
            key("list_bindings", "GET", 401): 1,
            key("fetch_service", "GET", 404): 1,
            key("unmatched", "GET", 404): 1,
            key("unmatched", "OPTIONS", 204): 1,
            key("healthz", "GET", 200): 1,
            key("delete_service", "DELETE", 204): 1,
        }

        first = scrape(client)
        # The scrape itself is counted once it has answered: not in its own output.
        assert request_counts(first, "notify_requests_total") == made
        second = scrape(client)
        assert request_counts(second, "notify_requests_total") == {
            **made,
            key("prometheus_metrics", "GET", 200): 1,
        }

    def test_latency_histogram_has_operation_method_and_status(self, client, account):
        auth = account.auth
        service = make_service(client, account)
        client.get(f"/v1/Services/{service['sid']}", auth=auth)
        client.get(f"/v1/Services/{service['sid']}", auth=auth)
        client.post(f"/v1/Services/{service['sid']}", data={"LogEnabled": "maybe"}, auth=auth)
        result = scrape(client)
        expected = {
            key("create_service", "POST", 201): 1,
            key("fetch_service", "GET", 200): 2,
            key("update_service", "POST", 400): 1,
        }
        assert request_counts(result, "notify_request_duration_seconds_count") == expected
        for labels in result.values("notify_request_duration_seconds_count"):
            assert [name for name, _ in labels] == ["method", "operation", "status"]
        # Buckets are cumulative and +Inf equals the count; the sum is real time.
        for method, operation, status in expected:
            labels = {"method": method, "operation": operation, "status": status}
            buckets = sorted(
                (float(s.labels["le"]), s.value)
                for s in result.samples
                if s.name == "notify_request_duration_seconds_bucket"
                and {k: v for k, v in s.labels.items() if k != "le"} == labels
            )
            counts = [value for _, value in buckets]
            assert counts == sorted(counts)
            assert buckets[-1] == (float("inf"), expected[(method, operation, status)])
            total = result.value("notify_request_duration_seconds_sum", **labels)
            assert total is not None and 0 < total < 10

    def test_a_405_is_counted_once_with_its_method(self, client, account):
        response = client.delete("/v1/Services", auth=account.auth)
        assert response.status_code == 405
        counts = request_counts(scrape(client), "notify_requests_total")
        assert sum(counts.values()) == 1
        ((method, _operation, status),) = counts
        assert (method, status) == ("DELETE", "405")

    def test_a_500_is_counted(self, client, account, monkeypatch):
        monkeypatch.setattr("notify_server.services.operations.list_services", broken)
        assert client.get("/v1/Services", auth=account.auth).status_code == 500
        counts = request_counts(scrape(client), "notify_requests_total")
        assert counts == {key("list_services", "GET", 500): 1}

    def test_bindings_gauge_is_one_total_by_default(self, client, account, other_account):
        service = make_service(client, account)["sid"]
        others = make_service(client, other_account)["sid"]
        for n in range(3):
            make_binding(client, account, service, Address=f"a{n}")
        make_binding(client, other_account, others)
        assert scrape_fresh(client).values("notify_bindings") == {(): 4}
        assert client.delete(f"/v1/Services/{others}", auth=other_account.auth).status_code == 204
        assert scrape_fresh(client).values("notify_bindings") == {(): 3}

    def test_bindings_gauge_is_per_service_when_asked(
        self, settings, engine, account, other_account
    ):
        app = create_app(settings.model_copy(update={"metrics_per_service": True}))
        with TestClient(app, raise_server_exceptions=False) as client:
            self.check_bindings_per_service(client, account, other_account)

    def check_bindings_per_service(self, client, account, other_account):
        first = make_service(client, account)["sid"]
        second = make_service(client, account)["sid"]
        empty = make_service(client, account)["sid"]
        others = make_service(client, other_account)["sid"]
        created = [make_binding(client, account, first, Address=f"a{n}") for n in range(3)]
        make_binding(client, account, second, Identity="bob")
        # The same binding posted again is an update in place: still one.
        make_binding(client, account, second, Identity="bob")
        for n in range(2):
            make_binding(client, other_account, others, Identity=f"o{n}")

        gauge = scrape_fresh(client).values("notify_bindings")
        assert gauge == {
            (("service_sid", first),): 3,
            (("service_sid", second),): 1,
            (("service_sid", empty),): 0,
            (("service_sid", others),): 2,
        }

        response = client.delete(
            f"/v1/Services/{first}/Bindings/{created[0]['sid']}", auth=account.auth
        )
        assert response.status_code == 204
        assert client.delete(f"/v1/Services/{others}", auth=other_account.auth).status_code == 204
        gauge = scrape_fresh(client).values("notify_bindings")
        assert gauge == {
            (("service_sid", first),): 2,
            (("service_sid", second),): 1,
            (("service_sid", empty),): 0,
        }

    def test_outbox_depth_then_deliveries_once_the_worker_runs(
        self, quiet_client, settings, account
    ):
        service = make_service(quiet_client, account)["sid"]
        for n in range(3):
            make_binding(quiet_client, account, service, Address=f"device-{n}")
        make_binding(quiet_client, account, service, Identity="bob", BindingType="fcm")
        make_notification(quiet_client, account, service, Identity="alice")

        before = scrape_fresh(quiet_client)
        assert before.values("notify_outbox_depth") == {
            (("status", "pending"),): 3,
            (("status", "sending"),): 0,
        }
        assert not request_counts(before, "notify_deliveries_total")

        # A process whose worker runs delivers them, through the log channel (no credential).
        with TestClient(create_app(settings), raise_server_exceptions=False) as working:
            deadline = time.monotonic() + 15
            while True:
                after = scrape(working)
                sent = after.value("notify_deliveries_total", **LOG_SENT)
                depth = after.values("notify_outbox_depth")
                # The gauges are read in the background: on a busy machine the three can be
                # sent before the new process's first reading, which has no depth yet.
                if sent == 3 and depth.get((("status", "pending"),)) == 0:
                    break
                assert time.monotonic() < deadline, (sent, depth)
                time.sleep(0.05)
            make_notification(working, account, service, Identity="bob")
            deadline = time.monotonic() + 15
            while (scrape(working).value("notify_deliveries_total", **LOG_SENT) or 0) < 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            final = scrape(working)
            # Answers are recorded in batches after they are counted: the depth read once the
            # last batch is in is empty.
            empty = {(("status", "pending"),): 0, (("status", "sending"),): 0}
            deadline = time.monotonic() + 15
            while (depth := scrape_fresh(working).values("notify_outbox_depth")) != empty:
                assert time.monotonic() < deadline, depth
                time.sleep(0.05)
        # Counted once per delivery, and only delivery outcomes that happened.
        assert final.values("notify_deliveries_total") == {
            (("channel", "log"), ("outcome", "sent")): 4
        }
        # The gauge comes from the database: the idle process agrees.
        depth = scrape_fresh(quiet_client).values("notify_outbox_depth")
        assert depth[(("status", "pending"),)] == 0

    def test_metrics_can_be_turned_off(self, settings, engine):
        app = create_app(settings.model_copy(update={"metrics_enabled": False}))
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/metrics", headers=BEARER)
        assert response.status_code == 404
        assert response.json()["code"] == 20404


# --- readiness -------------------------------------------------------------------------


class TestReadiness:
    exercises = ("Readyz",)

    def test_ready_with_a_working_database(self, client):
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}
        request_id(response)

    def test_readyz_needs_no_credentials(self, client, account):
        response = client.get("/readyz", auth=(account.sid, "wrong"))
        assert response.status_code == 200

    def test_not_ready_while_the_schema_is_behind(self, settings, engine, tmp_path):
        # A database a migration behind, then one whose migration record has gone: never
        # ready, and it says why.
        url = f"sqlite:///{tmp_path / 'behind.db'}"
        migrate.upgrade(url, "0002")
        app = create_app(settings.model_copy(update={"database_url": url, "worker_enabled": False}))
        with TestClient(app, raise_server_exceptions=False) as client:
            behind = client.get("/readyz")
            migrate.upgrade(url)
            ready = client.get("/readyz")
            with app.state.engine.begin() as conn:
                # A newer release migrated first (rolling upgrade): this one stays ready.
                conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
            ahead = client.get("/readyz")
            with app.state.engine.begin() as conn:
                conn.execute(text("DROP TABLE alembic_version"))
            unrecorded = client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json() == {
            "status": "unavailable",
            "reason": f"the database schema is at 0002, this server needs"
            f" {migrate.head_revision()}: run `notify-server db upgrade`",
        }
        assert ready.status_code == 200
        assert ahead.status_code == 200
        assert unrecorded.status_code == 503
        assert unrecorded.json()["reason"] == (
            "the database is not migrated: run `notify-server db upgrade`"
        )

    @pytest.mark.parametrize("where", ["postgresql closed port", "sqlite missing directory"])
    def test_unreachable_database(self, where, settings, tmp_path):
        if where.startswith("postgresql"):
            url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/notify"
        else:
            url = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'notify.db'}"
        app = create_app(settings.model_copy(update={"database_url": url, "worker_enabled": False}))
        with TestClient(app, raise_server_exceptions=False) as client:
            ready = client.get("/readyz")
            health = client.get("/healthz")
            api = client.get("/v1/Services", auth=("AC" + "1" * 32, "token"))
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "reason": "the database does not answer"}
        request_id(ready)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        # The API says so too, the Twilio way (never a 500).
        assert api.status_code == 503
        assert api.json() == {
            "code": 20503,
            "message": "Service is unavailable, please retry the request",
            "more_info": "https://www.twilio.com/docs/errors/20503",
            "status": 503,
        }
        request_id(api)


# --- structured logs from a live server ---------------------------------------------------

# The server under test, with one operation that always fails: the 500 path, for real.
FAULTY_SERVE = """
import sys
from notify_server import cli
from notify_server.credentials import operations

def update_credential(*args, **kwargs):
    raise RuntimeError("forced failure for the test")

operations.update_credential = update_credential
sys.exit(cli.main(sys.argv[1:]))
"""


def pem_private_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class LoggedRun:
    responses: list[httpx.Response]
    lines: list[str]
    secrets: dict[str, str]
    account: Account


def start_logged_server(database_url: str, env: dict[str, str], stderr) -> tuple:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAULTY_SERVE,
            "serve",
            "--no-migrate",
            "--port",
            str(port),
            "--log-level",
            "debug",
        ],
        env={**os.environ, "NOTIFY_DATABASE_URL": database_url, **env},
        stderr=stderr,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, base_url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"notify-server exited with {process.returncode}"
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=1)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("notify-server did not become healthy in 30 s")


def wait_delivered(engine: Engine, count: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        with engine.connect() as conn:
            final = conn.execute(
                select(func.count()).where(deliveries.c.status.in_(("sent", "failed")))
            ).scalar_one()
        if final >= count:
            return
        assert time.monotonic() < deadline, f"{final} of {count} deliveries final"
        time.sleep(0.05)


def empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(scope="module")
def logged_run(database_url: str, tmp_path_factory) -> Iterator[LoggedRun]:
    """One live server at --log-level debug through a scripted session: authenticated calls
    by token and by API key, write-only credential secrets of every kind, failed logins, a
    500, a notification delivered through the log and SMS channels. Its whole stderr is kept."""
    engine = make_engine(database_url)
    empty_tables(engine)
    account = make_account(engine)
    key_sid, key_secret = make_api_key(engine, account.sid)
    fernet_key = Fernet.generate_key().decode()
    sms = FakeSms().start()
    token_key = pem_private_key(ec.generate_private_key(ec.SECP256R1()))
    service_account_key = pem_private_key(rsa.generate_private_key(65537, 2048))
    mark = uuid.uuid4().hex
    secrets = {
        "auth token": account.auth_token,
        "api key secret": key_secret,
        "wrong token": f"wrong-token-{mark}",
        "wrong key secret": f"wrong-key-secret-{mark}",
        "certificate": f"-----BEGIN CERTIFICATE-----\nMIIcert{mark}\n-----END CERTIFICATE-----",
        "private key": f"-----BEGIN PRIVATE KEY-----\nMIIpriv{mark}\n-----END PRIVATE KEY-----",
        "gcm api key": f"AIza-gcm-{mark}",
        "fcm secret": f"fcm-secret-{mark}",
        "token key": token_key,
        "service account key": service_account_key,
        "certificate of the failing update": f"failing-update-cert-{mark}",
        "secret key": fernet_key,
        "sms auth token": sms.auth_token,
        "metrics token": METRICS_TOKEN,
    }
    secrets.update(
        {
            "authorization (token)": basic(account.sid, account.auth_token),
            "authorization (api key)": basic(key_sid, key_secret),
            "authorization (wrong token)": basic(account.sid, secrets["wrong token"]),
            "authorization (wrong key)": basic(key_sid, secrets["wrong key secret"]),
            "authorization (sms)": basic(sms.account_sid, sms.auth_token),
        }
    )
    env = {
        "NOTIFY_SECRET_KEY": fernet_key,
        "NOTIFY_SMS_BASE_URL": sms.url,
        "NOTIFY_SMS_ACCOUNT_SID": sms.account_sid,
        "NOTIFY_SMS_AUTH_TOKEN": sms.auth_token,
        "NOTIFY_SMS_FROM": "+15005550006",
        "NOTIFY_WORKER_POLL_SECONDS": "0.05",
        "NOTIFY_METRICS_TOKEN": METRICS_TOKEN,
    }
    log_path: Path = tmp_path_factory.mktemp("logs") / "stderr.log"
    responses: list[httpx.Response] = []
    with open(log_path, "wb") as stderr:
        process, base_url = start_logged_server(database_url, env, stderr)
        try:
            responses.append(wait_healthy(process, base_url))
            with httpx.Client(base_url=base_url, auth=account.auth, timeout=10) as http:

                def call(method: str, path: str, **kwargs) -> httpx.Response:
                    response = http.request(method, path, **kwargs)
                    responses.append(response)
                    return response

                service = call("POST", "/v1/Services", data={"FriendlyName": "logged"}).json()
                bindings = f"/v1/Services/{service['sid']}/Bindings"
                by_key = (key_sid, key_secret)
                form = {"Identity": "alice", "BindingType": "apn", "Address": "apn-device"}
                assert call("POST", bindings, data=form, auth=by_key).status_code == 201
                form = {"Identity": "alice", "BindingType": "sms", "Address": "+15005550001"}
                assert call("POST", bindings, data=form).status_code == 201
                assert call("GET", bindings + ".json", params={"Identity": "alice"}).is_success
                credentials = [
                    {
                        "Type": "apn",
                        "Certificate": secrets["certificate"],
                        "PrivateKey": secrets["private key"],
                    },
                    {"Type": "gcm", "ApiKey": secrets["gcm api key"]},
                    {
                        "Type": "fcm",
                        "Secret": secrets["fcm secret"],
                        "ServiceAccount": json.dumps(
                            {
                                "type": "service_account",
                                "project_id": "logged",
                                "client_email": "logged@example.iam.gserviceaccount.com",
                                "private_key": service_account_key,
                            }
                        ),
                    },
                    {
                        "Type": "apn",
                        "TokenKey": token_key,
                        "KeyId": "ABC123DEFG",
                        "TeamId": "DEF123GHIJ",
                        "BundleId": "com.example.logged",
                    },
                ]
                created = [call("POST", "/v1/Credentials", data=c) for c in credentials]
                assert [r.status_code for r in created] == [201] * 4, [r.text for r in created]
                assert call("GET", "/v1/Credentials", auth=by_key).status_code == 200
                wrong = (account.sid, secrets["wrong token"])
                assert call("GET", "/v1/Services", auth=wrong).status_code == 401
                wrong = (key_sid, secrets["wrong key secret"])
                assert call("GET", "/v1/Credentials", auth=wrong).status_code == 401
                bad_header = {"Authorization": "Basic not-base64!"}
                http.auth = None
                assert call("GET", "/v1/Services", headers=bad_header).status_code == 401
                http.auth = account.auth
                failing = call(
                    "POST",
                    f"/v1/Credentials/{created[0].json()['sid']}",
                    data={"Certificate": secrets["certificate of the failing update"]},
                )
                assert failing.status_code == 500, failing.text
                notification = call(
                    "POST",
                    f"/v1/Services/{service['sid']}/Notifications",
                    data={"Identity": "alice", "Body": "hello"},
                )
                assert notification.status_code == 201, notification.text
                assert call("GET", "/v1/Nothing").status_code == 404
                assert call("DELETE", "/v1/Services").status_code == 405
                assert call("OPTIONS", "/v1/Services").status_code == 204
                assert call("GET", "/metrics", headers=BEARER, auth=None).status_code == 200
            wait_delivered(engine, 2)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            sms.stop()
    assert len(sms.requests) == 1
    text = log_path.read_text()
    empty_tables(engine)
    engine.dispose()
    yield LoggedRun(responses, text.splitlines(), secrets, account)


def access_lines(run: LoggedRun) -> list[dict]:
    entries = [json.loads(line) for line in run.lines]
    return [e for e in entries if e["logger"] == "notify_server.access"]


class TestStructuredLogs:
    def test_every_stderr_line_is_a_json_object(self, logged_run):
        assert len(logged_run.lines) > len(logged_run.responses)
        for line in logged_run.lines:
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert {"time", "level", "logger", "message"} <= set(entry), line
        levels = {json.loads(line)["level"] for line in logged_run.lines}
        # --log-level debug really logged at debug.
        assert "debug" in levels

    def test_one_access_line_per_request(self, logged_run):
        lines = access_lines(logged_run)
        sent = [request_id(r) for r in logged_run.responses]
        assert len(lines) == len(sent)
        assert Counter(line["request_id"] for line in lines) == Counter(sent)

    def test_access_line_fields(self, logged_run):
        by_id = {line["request_id"]: line for line in access_lines(logged_run)}
        account_sid = logged_run.account.sid
        seen = set()
        for response in logged_run.responses:
            line = by_id[request_id(response)]
            request = response.request
            assert line["method"] == request.method
            assert line["status"] == response.status_code
            assert isinstance(line["duration_ms"], int | float)
            assert 0 <= line["duration_ms"] < 10_000
            assert line["level"] == "info"
            # Only a route that authenticated the caller knows the account.
            route = line["route"]
            if route and route.startswith("/v1/") and response.status_code not in (401, 405):
                assert line["account_sid"] == account_sid, line
            else:
                assert line["account_sid"] is None, line
            seen.add((request.method, line["route"], line["status"]))
        assert {
            ("GET", "/healthz", 200),
            ("POST", "/v1/Services", 201),
            ("POST", "/v1/Services/{service_sid}/Bindings", 201),
            ("GET", "/v1/Services/{service_sid}/Bindings", 200),
            ("POST", "/v1/Credentials", 201),
            ("GET", "/v1/Credentials", 200),
            ("GET", "/v1/Services", 401),
            ("GET", "/v1/Credentials", 401),
            ("POST", "/v1/Credentials/{sid}", 500),
            ("POST", "/v1/Services/{service_sid}/Notifications", 201),
            ("GET", None, 404),
            ("OPTIONS", None, 204),
            ("GET", "/metrics", 200),
        } <= seen

    def test_the_500_is_logged_with_its_exception(self, logged_run):
        errors = [json.loads(line) for line in logged_run.lines]
        errors = [e for e in errors if e["level"] == "error" and e["logger"] == "notify_server"]
        assert len(errors) == 1, errors
        (failed,) = [r for r in logged_run.responses if r.status_code == 500]
        assert errors[0]["message"] == f"unhandled error on POST {failed.request.url.path}"
        assert "RuntimeError: forced failure for the test" in errors[0]["exception"]

    def test_delivery_is_logged(self, logged_run):
        entries = [json.loads(line) for line in logged_run.lines]
        assert any(
            e["logger"] == "notify_server.delivery" and "log channel" in e["message"]
            for e in entries
        )

    def test_no_secret_anywhere(self, logged_run):
        text = "\n".join(logged_run.lines)
        leaks = []
        for name, secret in logged_run.secrets.items():
            fragments = {secret, json.dumps(secret)[1:-1]}
            # A PEM's body lines on their own, should it be reformatted.
            fragments.update(
                line for line in secret.splitlines() if len(line) >= 16 and "-----" not in line
            )
            leaks += [name for fragment in fragments if fragment in text]
        assert not leaks, sorted(set(leaks))
