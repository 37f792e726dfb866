"""A database that is locked or stops answering stalls only the requests that need it.

A real `notify-server serve` (worker included) while its database is held: health checks,
401s and 404s of malformed SIDs keep answering at once; the requests that need the database
finish, stored, once it is back.
"""

import statistics
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.factories import Account, make_account
from tests.servers import DatabaseProxy, LiveServer, live_server

# Far below the stalls this guards against (seconds: the database's own timeouts), far above
# what a loaded test machine adds to a loopback request.
MEDIAN_LIMIT = 0.05
MAX_LIMIT = 0.5


def answer_times(server: LiveServer, account: Account, service_sid: str) -> dict[str, list[float]]:
    """Requests that need no database, each timed 15 times."""
    probes = {
        "healthz": ("/healthz", None, 200),
        "no credentials": (f"/v1/Services/{service_sid}/Bindings", None, 401),
        "malformed sid": ("/v1/Services/IS-not-a-sid/Bindings", account.auth, 404),
    }
    times: dict[str, list[float]] = {name: [] for name in probes}
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        for _ in range(15):
            for name, (path, auth, status) in probes.items():
                started = time.perf_counter()
                response = client.get(path, auth=auth)
                times[name].append(time.perf_counter() - started)
                assert response.status_code == status, (name, response.text)
    return times


def assert_prompt(times: dict[str, list[float]]) -> None:
    for name, samples in times.items():
        median, worst = statistics.median(samples), max(samples)
        assert median < MEDIAN_LIMIT, f"{name}: median {median * 1000:.1f} ms"
        assert worst < MAX_LIMIT, f"{name}: max {worst * 1000:.1f} ms"


def create_binding(server: LiveServer, account: Account, service_sid: str, identity: str):
    return httpx.post(
        f"{server.base_url}/v1/Services/{service_sid}/Bindings",
        data={"Identity": identity, "BindingType": "apn", "Address": identity},
        auth=account.auth,
        timeout=30,
    )


def start_creates(
    pool: ThreadPoolExecutor, server: LiveServer, account: Account, service_sid: str
) -> list[Future]:
    return [
        pool.submit(create_binding, server, account, service_sid, f"waiting-{i}") for i in range(8)
    ]


@contextmanager
def database_held(engine: Engine) -> Iterator[None]:
    """Another client holds the bindings table: every create (and on PostgreSQL every read of
    it) waits until the block ends."""
    holder = create_engine(engine.url, poolclass=NullPool)
    with holder.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()
            conn.execute(text("LOCK TABLE bindings IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()
    holder.dispose()


def test_a_locked_database_holds_up_only_what_needs_it(engine: Engine, database_url: str) -> None:
    account = make_account(engine)
    with live_server(database_url) as server:
        service = httpx.post(
            f"{server.base_url}/v1/Services", data={}, auth=account.auth, timeout=10
        ).json()
        with ThreadPoolExecutor(8) as pool:
            with database_held(engine):
                waiting = start_creates(pool, server, account, service["sid"])
                time.sleep(0.3)  # they are now waiting on the lock
                times = answer_times(server, account, service["sid"])
                assert not any(f.done() for f in waiting), "the lock did not hold them"
            assert_prompt(times)
            created = [f.result(timeout=30) for f in waiting]
    assert [r.status_code for r in created] == [201] * len(created)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM bindings")).scalar_one()
    assert stored == len(created)


def test_a_database_that_stops_answering_holds_up_only_what_needs_it(
    engine: Engine, database_url: str
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to go silent")
    account = make_account(engine)
    url = make_url(database_url)
    proxy = DatabaseProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    try:
        with live_server(proxied.render_as_string(hide_password=False)) as server:
            service = httpx.post(
                f"{server.base_url}/v1/Services", data={}, auth=account.auth, timeout=10
            ).json()
            with ThreadPoolExecutor(8) as pool:
                proxy.freeze()
                waiting = start_creates(pool, server, account, service["sid"])
                time.sleep(0.3)
                times = answer_times(server, account, service["sid"])
                assert not any(f.done() for f in waiting), "the freeze did not hold them"
                proxy.resume()
                assert_prompt(times)
                created = [f.result(timeout=30) for f in waiting]
    finally:
        proxy.close()
    assert [r.status_code for r in created] == [201] * len(created)
