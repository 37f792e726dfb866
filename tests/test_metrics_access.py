"""/metrics is for operators: a bearer token on the API port (no token, no /metrics there), no
account's identifiers unless asked, a listener of its own (`--metrics-port`) on `serve` and
`worker`, and database gauges read in the background so a scrape never waits on the database.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, text

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import driver_connection, make_engine
from tests.factories import make_binding, make_service
from tests.servers import free_port

TOKEN = f"metrics-{uuid.uuid4().hex}"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
UNAUTHORIZED = {
    "code": 20003,
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
    "detail": "A valid Bearer token is required for /metrics.",
}


def samples(body: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label pairs: value}"""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


@contextmanager
def app_client(settings: Settings, **updates) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"worker_enabled": False, **updates}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def wait_for(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def gauges(client: TestClient) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.text
    return samples(response.text)


class TestApiPort:
    def test_no_token_configured_is_the_404_of_any_unknown_path(self, settings, engine):
        with app_client(settings) as client:
            unknown = client.get("/nothing-here")
            for headers in ({}, BEARER):
                response = client.get("/metrics", headers=headers)
                assert response.status_code == 404
                assert response.json() == {
                    **unknown.json(),
                    "message": "The requested resource /metrics was not found",
                }
                assert "www-authenticate" not in response.headers

    def test_an_empty_token_is_no_token(self, settings, engine):
        with app_client(settings, metrics_token="") as client:
            assert client.get("/metrics").status_code == 404
            assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404

    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            "Bearer wrong",
            f"Bearer {TOKEN[:-1]}",
            f"Bearer {TOKEN}x",
            f"Bearer x{TOKEN}",
            f"Basic {TOKEN}",
            TOKEN,
        ],
    )
    def test_a_missing_or_wrong_bearer_is_401(self, settings, engine, authorization):
        headers = {} if authorization is None else {"Authorization": authorization}
        with app_client(settings, metrics_token=TOKEN) as client:
            response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text

    def test_account_credentials_are_not_the_token(self, settings, engine, account):
        with app_client(settings, metrics_token=TOKEN) as client:
            response = client.get("/metrics", auth=account.auth)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED

    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
    def test_the_token_opens_it(self, settings, engine, scheme):
        with app_client(settings, metrics_token=TOKEN) as client:
            response = client.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "notify_database_gauges_age_seconds" in samples(response.text)

    def test_metrics_disabled_is_404_even_with_the_token(self, settings, engine):
        port = free_port()
        updates = {"metrics_enabled": False, "metrics_token": TOKEN, "metrics_port": port}
        with app_client(settings, **updates) as client:
            assert client.get("/metrics", headers=BEARER).status_code == 404
            # Nor is the metrics port listening.
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


class TestLabels:
    def test_no_service_sid_label_by_default(self, settings, engine, account, other_account):
        with app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=0.05) as client:
            mine = make_service(client, account)["sid"]
            theirs = make_service(client, other_account)["sid"]
            make_binding(client, account, mine)
            make_binding(client, other_account, theirs, Address="b1")
            make_binding(client, other_account, theirs, Address="b2")
            found = wait_for(
                lambda: (s := gauges(client)).get("notify_bindings") == {(): 3} and s,
                "a total of 3 bindings",
            )
            body = client.get("/metrics", headers=BEARER).text
        assert "service_sid" not in body
        assert mine not in body and theirs not in body
        assert account.sid not in body and other_account.sid not in body
        # Outbox depth is still by status.
        assert found["notify_outbox_depth"] == {
            (("status", "pending"),): 0,
            (("status", "sending"),): 0,
        }

    def test_per_service_labels_when_opted_in(self, settings, engine, account, other_account):
        updates = {
            "metrics_token": TOKEN,
            "metrics_refresh_seconds": 0.05,
            "metrics_per_service": True,
        }
        with app_client(settings, **updates) as client:
            mine = make_service(client, account)["sid"]
            theirs = make_service(client, other_account)["sid"]
            make_binding(client, account, mine)
            expected = {(("service_sid", mine),): 1, (("service_sid", theirs),): 0}
            wait_for(lambda: gauges(client).get("notify_bindings") == expected, "per-service gauge")


@contextmanager
def statements_counted() -> Iterator[list[str]]:
    """Names of the threads that run SQL on any engine made meanwhile, one per statement.

    Listened for on the Engine class before the app exists: a listener added to a live
    engine races the threads already dispatching its events.
    """
    threads: list[str] = []

    def record(*args) -> None:
        threads.append(threading.current_thread().name)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield threads
    finally:
        event.remove(Engine, "before_cursor_execute", record)


class TestCachedGauges:
    def test_a_scrape_runs_no_sql(self, settings, engine):
        with (
            statements_counted() as threads,
            app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=3600) as client,
        ):
            wait_for(lambda: "notify_outbox_depth" in gauges(client), "the first refresh")
            threads.clear()
            for _ in range(5):
                gauges(client)
        assert threads == []

    def test_values_are_cached_until_the_next_refresh(self, settings, engine, account):
        with app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=3600) as client:
            service = make_service(client, account)["sid"]
            first = wait_for(
                lambda: (s := gauges(client)).get("notify_bindings") and s, "the first refresh"
            )
            make_binding(client, account, service)
            time.sleep(0.3)
            later = gauges(client)
        # The binding made after the (only) read is not seen; the cache only ages.
        assert later["notify_bindings"] == first["notify_bindings"] == {(): 0}
        age = "notify_database_gauges_age_seconds"
        assert later[age][()] >= first[age][()] + 0.3

    def test_gauges_refresh_after_the_interval(self, settings, engine, account):
        with app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=0.2) as client:
            service = make_service(client, account)["sid"]
            wait_for(lambda: gauges(client).get("notify_bindings") == {(): 0}, "0 bindings")
            make_binding(client, account, service)
            made = time.monotonic()
            wait_for(lambda: gauges(client).get("notify_bindings") == {(): 1}, "1 binding", 5)
            seen_after = time.monotonic() - made
            ages = []
            for _ in range(10):
                ages.append(gauges(client)["notify_database_gauges_age_seconds"][()])
                time.sleep(0.05)
        assert seen_after < 2
        # Never older than an interval (plus the read itself).
        assert max(ages) < 0.2 + 0.3

    def test_a_failing_read_keeps_the_last_values_and_logs_once_per_streak(
        self, settings, engine, account, monkeypatch, caplog
    ):
        from notify_server import metrics as metrics_module

        read = metrics_module._read
        broken = threading.Event()

        def flaky(conn, per_service):
            if broken.is_set():
                conn.execute(text("SELECT * FROM no_such_table"))
            return read(conn, per_service)

        monkeypatch.setattr(metrics_module, "_read", flaky)
        caplog.set_level("INFO", logger="notify_server.metrics")
        age = "notify_database_gauges_age_seconds"
        with app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=0.05) as client:
            service = make_service(client, account)["sid"]
            make_binding(client, account, service)
            wait_for(lambda: gauges(client).get("notify_bindings") == {(): 1}, "1 binding")
            broken.set()
            make_binding(client, account, service, Address="second")
            time.sleep(0.5)  # about ten failed reads
            stale = gauges(client)
            broken.clear()
            fresh = wait_for(
                lambda: (s := gauges(client)).get("notify_bindings") == {(): 2} and s, "recovery"
            )
            broken.set()
            wait_for(
                lambda: sum(r.levelname == "WARNING" for r in caplog.records) == 2,
                "the second streak's warning",
            )
            time.sleep(0.3)
        assert stale["notify_bindings"] == {(): 1}
        assert stale[age][()] >= 0.4
        assert fresh[age][()] < 0.4
        logged = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in logged] == ["WARNING", "INFO", "WARNING"], logged
        assert logged[0][1].startswith("database gauges: reading failed, keeping the last values")
        assert "no_such_table" in logged[0][1]
        assert logged[1][1] == "database gauges: reading works again"

    def test_never_read_shows_only_a_growing_age(self, settings, engine, monkeypatch):
        def broken(conn, per_service):
            raise RuntimeError("forced failure for the test")

        monkeypatch.setattr("notify_server.metrics._read", broken)
        with app_client(settings, metrics_token=TOKEN, metrics_refresh_seconds=0.05) as client:
            first = gauges(client)
            time.sleep(0.2)
            second = gauges(client)
            api = client.get("/healthz")
        age = "notify_database_gauges_age_seconds"
        assert "notify_bindings" not in second and "notify_outbox_depth" not in second
        assert second[age][()] >= first[age][()] + 0.2
        assert api.status_code == 200


# --- live processes ---------------------------------------------------------------------


class Live:
    def __init__(self, process: subprocess.Popen, log: Path, api: int | None, metrics: int):
        self.process = process
        self.log = log
        self.api = f"http://127.0.0.1:{api}" if api else None
        self.metrics = f"http://127.0.0.1:{metrics}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_entries(self) -> list[dict]:
        entries = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries


def start(
    args: list[str], database_url: str, log: Path, env: dict[str, str], api_port: int | None
) -> Live:
    metrics_port = free_port()
    log_file = open(log, "wb")  # noqa: SIM115 - the process writes it until stopped
    process = subprocess.Popen(
        [sys.executable, "-m", "notify_server.cli", *args, "--metrics-port", str(metrics_port)],
        env={
            **os.environ,
            "NOTIFY_DATABASE_URL": database_url,
            "NOTIFY_METRICS_TOKEN": TOKEN,
            **env,
        },
        stderr=log_file,
    )
    log_file.close()
    live = Live(process, log, api_port, metrics_port)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, f"exited with {process.returncode}: {log.read_text()}"
        try:
            if httpx.get(f"{live.metrics}/healthz", timeout=1).status_code == 200:
                return live
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the metrics listener did not answer in 30 s"
        time.sleep(0.05)


LIVE_ENV = {
    "NOTIFY_METRICS_REFRESH_SECONDS": "0.2",
    "NOTIFY_METRICS_STATEMENT_TIMEOUT_SECONDS": "0.5",
    "NOTIFY_WORKER_POLL_SECONDS": "0.05",
}


@pytest.fixture(scope="module")
def served(database_url: str, tmp_path_factory) -> Iterator[Live]:
    """`notify-server serve --no-worker --metrics-port P`, stderr kept."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    args = ["serve", "--no-migrate", "--no-worker", "--port", str(port), "--log-level", "info"]
    live = start(args, database_url, log, LIVE_ENV, port)
    yield live
    assert live.stop() == 0


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    response = httpx.get(f"{url}/metrics", headers=BEARER, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def check_metrics_listener(base: str) -> None:
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        denied = httpx.get(f"{base}/metrics", headers=headers, timeout=5)
        assert denied.status_code == 401
        assert denied.json() == UNAUTHORIZED
        assert denied.headers["www-authenticate"] == "Bearer"
    unknown = httpx.get(f"{base}/v1/Services", headers=BEARER, timeout=5)
    assert unknown.status_code == 404
    assert unknown.json() == {
        "code": 20404,
        "message": "The requested resource /v1/Services was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    posted = httpx.post(f"{base}/metrics", headers=BEARER, timeout=5)
    assert posted.status_code == 405
    assert posted.json()["code"] == 20004
    found = wait_for(lambda: (s := scrape(base)).get("notify_bindings") and s, "gauges")
    assert found["notify_outbox_depth"].keys() == {
        (("status", "pending"),),
        (("status", "sending"),),
    }


class TestServeMetricsPort:
    def test_answers_metrics_and_healthz(self, served, engine):
        check_metrics_listener(served.metrics)

    def test_counts_the_api_port_requests(self, served, engine):
        assert served.api is not None
        for _ in range(3):
            assert httpx.get(f"{served.api}/healthz", timeout=5).status_code == 200
        found = scrape(served.metrics)["notify_requests_total"]
        healthz = (("method", "GET"), ("operation", "healthz"), ("status", "200"))
        assert found[healthz] >= 3
        # Scrapes of the metrics port are not API requests.
        assert not any(("operation", "prometheus_metrics") in labels for labels in found)
        # The API port's /metrics, with the token, serves the same registry.
        response = httpx.get(f"{served.api}/metrics", headers=BEARER, timeout=5)
        assert response.status_code == 200
        assert httpx.get(f"{served.api}/metrics", timeout=5).status_code == 401

    def test_a_scrape_is_fast_while_the_database_is_locked(self, served, database_url, engine):
        locker = make_engine(database_url)
        try:
            with locker.connect() as conn:
                if conn.dialect.name == "sqlite":
                    driver_connection(conn).execute("BEGIN EXCLUSIVE")
                else:
                    # Readers of these tables now wait (the old scrape would hang).
                    conn.execute(
                        text("LOCK TABLE bindings, deliveries, services IN ACCESS EXCLUSIVE MODE")
                    )
                # Longer than a refresh interval and its statement timeout.
                time.sleep(0.8)
                timings = []
                # One client: building one (its TLS context) alone takes tens of milliseconds.
                with httpx.Client(headers=BEARER, timeout=5) as http:
                    for base in (served.metrics, served.api):
                        for _ in range(5):
                            began = time.perf_counter()
                            response = http.get(f"{base}/metrics")
                            timings.append(time.perf_counter() - began)
                            assert response.status_code == 200
                            assert "notify_bindings" in samples(response.text)
                if conn.dialect.name == "sqlite":
                    driver_connection(conn).execute("ROLLBACK")
                else:
                    conn.rollback()
        finally:
            locker.dispose()
        assert max(timings) < 0.05, timings
        if engine.dialect.name == "postgresql":
            # The refresher hit its statement timeout: logged once for the whole streak.
            warnings = wait_for(
                lambda: [e for e in served.log_entries() if e["logger"] == "notify_server.metrics"],
                "the refresher's warning",
            )
            assert [e["level"] for e in warnings][:1] == ["warning"]
            assert sum(e["level"] == "warning" for e in warnings) == 1, warnings
            assert "statement timeout" in warnings[0]["message"]
            wait_for(
                lambda: any(
                    e["message"] == "database gauges: reading works again"
                    for e in served.log_entries()
                ),
                "recovery",
            )


class TestWorkerMetricsPort:
    def test_a_worker_exports_its_deliveries(
        self, database_url, settings, engine, account, tmp_path
    ):
        with app_client(settings) as client:
            service = make_service(client, account)["sid"]
            make_binding(client, account, service)
            response = client.post(
                f"/v1/Services/{service}/Notifications",
                data={"Identity": "alice", "Body": "hi"},
                auth=account.auth,
            )
            assert response.status_code == 201, response.text
        live = start(
            ["worker", "--no-migrate"], database_url, tmp_path / "worker.log", LIVE_ENV, None
        )
        try:
            check_metrics_listener(live.metrics)
            sent = (("channel", "log"), ("outcome", "sent"))
            wait_for(
                lambda: scrape(live.metrics).get("notify_deliveries_total", {}).get(sent) == 1,
                "the delivery counted",
            )
        finally:
            assert live.stop() == 0

    def test_a_taken_metrics_port_is_a_clean_error(self, database_url, engine, tmp_path):
        with socket_on_a_port() as port:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "notify_server.cli",
                    "worker",
                    "--no-migrate",
                    "--metrics-port",
                    str(port),
                ],
                env={**os.environ, "NOTIFY_DATABASE_URL": database_url},
                capture_output=True,
                text=True,
                timeout=30,
            )
        assert result.returncode == 1
        assert result.stderr.startswith(f"notify-server: port {port} on 127.0.0.1 is in use")
        assert "Traceback" not in result.stderr

    @pytest.mark.parametrize("port", ["0", "65536", "http"])
    def test_a_bad_port_is_a_usage_error(self, port):
        result = subprocess.run(
            [sys.executable, "-m", "notify_server.cli", "worker", "--metrics-port", port],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert f"not a port number: '{port}'" in result.stderr


@contextmanager
def socket_on_a_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class TestServeWorkersShareTheMetricsPort:
    def test_every_scrape_sums_every_process(self, database_url, engine, tmp_path):
        port = free_port()
        args = ["serve", "--no-migrate", "--no-worker", "--port", str(port), "--workers", "2"]
        live = start(
            [*args, "--log-level", "warning"], database_url, tmp_path / "s.log", LIVE_ENV, port
        )
        try:
            assert live.api is not None
            # New connections each: uvicorn's processes share the API port too.
            for _ in range(40):
                assert httpx.get(f"{live.api}/healthz", timeout=5).status_code == 200
            healthz = (("method", "GET"), ("operation", "healthz"), ("status", "200"))
            seen = set()
            for _ in range(20):
                counted = scrape(live.metrics)["notify_requests_total"]
                # The readiness probe of start() hit the metrics port, not the API port.
                seen.add(counted[healthz])
            assert seen == {40}
        finally:
            assert live.stop() == 0
