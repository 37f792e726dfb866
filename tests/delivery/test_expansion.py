"""A query notification's targets beyond the first chunk are written by the workers
(delivery/expansion.py): the 201 does not wait for them, every target gets exactly one outbox
row however the workers run, crash or race, and what the workers write still queues fairly."""

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, func, select, update
from sqlalchemy.exc import IntegrityError

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import Database, transaction
from notify_server.delivery import repository as delivery_repository
from notify_server.delivery.expansion import Expander
from notify_server.notifications import repository
from notify_server.notifications.models import Delivery, Expansion
from notify_server.wire import utcnow_precise
from tests.factories import Account, make_binding, make_service
from tests.servers import start_server
from tests.support.bulk import insert_bindings

deliveries: Table = Delivery.__table__  # type: ignore[assignment]
expansions: Table = Expansion.__table__  # type: ignore[assignment]
CHUNK = 10


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """No worker: what the request alone writes stays as it left it until a test expands."""
    quiet = settings.model_copy(update={"worker_enabled": False, "fanout_chunk_size": CHUNK})
    with TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield client


def service_with(api: TestClient, engine: Engine, account: Account, count: int, **kw) -> str:
    service_sid = make_service(api, account)["sid"]
    insert_bindings(engine, account.sid, service_sid, count, **kw)
    return service_sid


def notify(api: TestClient, account: Account, service_sid: str, **form: str) -> str:
    response = api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={"Tag": "all", "Body": "x", **form},
        auth=account.auth,
    )
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def listed(api: TestClient, account: Account, service_sid: str, sid: str) -> list[dict]:
    rows: list[dict] = []
    url: str | None = f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries?PageSize=1000"
    while url:
        response = api.get(url, auth=account.auth)
        assert response.status_code == 200, response.text
        rows.extend(response.json()["deliveries"])
        url = response.json()["meta"]["next_page_url"]
    return rows


def waiting_expansions(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(expansions)).scalar_one()


def outbox_rows(engine: Engine) -> Counter[tuple[int, str]]:
    """(notification id, binding sid) -> rows: every target must count exactly 1."""
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.notification_id, deliveries.c.binding_sid))
        return Counter((row.notification_id, row.binding_sid) for row in rows)


def expand(engine: Engine, workers: int = 1, chunk_size: int = CHUNK, timeout: float = 60) -> int:
    """Run `workers` Expanders, each with a Database of its own (as in separate processes),
    until no expansion waits: the chunks they wrote."""
    chunks = 0

    def counted() -> None:
        nonlocal chunks
        chunks += 1

    async def run() -> None:
        databases = [Database(engine) for _ in range(workers)]
        tasks = [
            asyncio.create_task(
                Expander(db, poll_seconds=0.01, chunk_size=chunk_size, on_chunk=counted).run()
            )
            for db in databases
        ]
        deadline = time.monotonic() + timeout
        try:
            while waiting_expansions(engine):
                assert time.monotonic() < deadline, "expansion did not finish"
                assert not any(t.done() for t in tasks), [t.exception() for t in tasks]
                await asyncio.sleep(0.01)
            # The last chunk's commit is seen here before its worker is back on the loop.
            await asyncio.sleep(0.2)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for db in databases:
                db.close()

    asyncio.run(run())
    return chunks


class TestTheRequest:
    def test_201_before_the_targets_exist_then_every_one_is_written(self, api, engine, account):
        service_sid = service_with(api, engine, account, 95)

        sid = notify(api, account, service_sid)

        # The request wrote the first chunk and left the rest to the workers.
        assert len(listed(api, account, service_sid, sid)) == CHUNK
        assert waiting_expansions(engine) == 1
        assert expand(engine) == 9  # 8 full chunks and the last 5
        rows = listed(api, account, service_sid, sid)
        assert sorted(row["identity"] for row in rows) == sorted(f"user-{i}" for i in range(1, 96))
        assert set(outbox_rows(engine).values()) == {1}
        assert {row["status"] for row in rows} == {"pending"}

    def test_a_small_notification_is_written_whole_by_the_request(self, api, engine, account):
        service_sid = service_with(api, engine, account, CHUNK - 1)

        sid = notify(api, account, service_sid)

        assert len(listed(api, account, service_sid, sid)) == CHUNK - 1
        assert waiting_expansions(engine) == 0

    def test_exactly_one_chunk_leaves_an_expansion_that_writes_nothing(self, api, engine, account):
        service_sid = service_with(api, engine, account, CHUNK)
        sid = notify(api, account, service_sid)
        assert waiting_expansions(engine) == 1

        assert expand(engine) == 0

        assert len(listed(api, account, service_sid, sid)) == CHUNK

    def test_listing_while_expanding_shows_the_rows_written_so_far(self, api, engine, account):
        service_sid = service_with(api, engine, account, 25)
        sid = notify(api, account, service_sid)
        with transaction(engine, write=True) as conn:
            repository.expand_next(conn, limit=CHUNK, now=utcnow_precise())

        rows = listed(api, account, service_sid, sid)

        # In binding order: the first two chunks' targets, and nothing of the third yet.
        assert [row["identity"] for row in rows] == [f"user-{i}" for i in range(1, 21)]

    def test_bindings_made_after_the_201_are_not_targets(self, api, engine, account):
        service_sid = service_with(api, engine, account, 15)
        sid = notify(api, account, service_sid)
        make_binding(api, account, service_sid, Identity="late", Address="late-token")

        expand(engine)

        identities = {row["identity"] for row in listed(api, account, service_sid, sid)}
        assert len(identities) == 15
        assert "late" not in identities

    def test_the_query_is_kept_for_the_workers(self, api, engine, account):
        # Identity, tag and binding-type conditions all still apply to the later chunks.
        service_sid = service_with(api, engine, account, 30, tag="vip")
        insert_bindings(engine, account.sid, service_sid, 30, binding_type="fcm", tag="vip")
        insert_bindings(engine, account.sid, service_sid, 30, tag="other")
        identities = [f"user-{i}" for i in range(1, 21)]

        sid = notify(api, account, service_sid, Tag=["vip", "apn"], Identity=identities)
        expand(engine)

        rows = listed(api, account, service_sid, sid)
        assert sorted(row["identity"] for row in rows) == sorted(identities)
        assert {row["binding_type"] for row in rows} == {"apn"}
        assert set(outbox_rows(engine).values()) == {1}


class TestWorkers:
    def test_two_workers_write_every_target_once(self, api, engine, account, other_account):
        sids = []
        for owner, count in ((account, 400), (account, 250), (other_account, 333)):
            sids.append(notify(api, owner, service_with(api, engine, owner, count)))
        assert waiting_expansions(engine) == 3

        expand(engine, workers=2, chunk_size=7)

        counts = outbox_rows(engine)
        assert set(counts.values()) == {1}
        per_notification = Counter(notification_id for notification_id, _ in counts)
        assert sorted(per_notification.values()) == [250, 333, 400]

    def test_a_failure_within_a_chunk_leaves_nothing_of_it(self, api, engine, account, monkeypatch):
        service_sid = service_with(api, engine, account, 35)
        sid = notify(api, account, service_sid)
        real = repository.advance_fair_clock
        failures = 0

        def fail_twice(conn, account_sid, end):
            # After the chunk's rows are inserted, before the cursor moves.
            nonlocal failures
            if failures < 2:
                failures += 1
                raise RuntimeError("the database went away mid-chunk")
            real(conn, account_sid, end)

        monkeypatch.setattr(repository, "advance_fair_clock", fail_twice)

        expand(engine)

        assert failures == 2
        assert len(listed(api, account, service_sid, sid)) == 35
        assert set(outbox_rows(engine).values()) == {1}

    def test_the_unique_index_refuses_a_second_row_for_a_target(self, api, engine, account):
        # The backstop: were a cursor ever wrong, the chunk fails rather than doubles.
        service_sid = service_with(api, engine, account, 15)
        notify(api, account, service_sid)
        with engine.begin() as conn:
            conn.execute(update(expansions).values(after_binding_id=0))

        # Prepared statements raise the driver's own error.
        refused = (IntegrityError, engine.dialect.loaded_dbapi.IntegrityError)
        with pytest.raises(refused), transaction(engine, write=True) as conn:
            repository.expand_next(conn, limit=CHUNK, now=utcnow_precise())
        assert set(outbox_rows(engine).values()) == {1}

    def test_service_deleted_mid_expansion(self, api, engine, account):
        service_sid = service_with(api, engine, account, 50)
        notify(api, account, service_sid)
        with transaction(engine, write=True) as conn:
            repository.expand_next(conn, limit=CHUNK, now=utcnow_precise())

        response = api.delete(f"/v1/Services/{service_sid}", auth=account.auth)

        assert response.status_code == 204
        assert waiting_expansions(engine) == 0
        assert expand(engine) == 0
        assert not outbox_rows(engine)

    def test_bindings_deleted_mid_expansion(self, api, engine, account):
        service_sid = service_with(api, engine, account, 30)
        sid = notify(api, account, service_sid)
        by_identity = {
            b["identity"]: b["sid"]
            for b in api.get(
                f"/v1/Services/{service_sid}/Bindings?PageSize=100", auth=account.auth
            ).json()["bindings"]
        }
        for identity in ("user-1", "user-25"):  # written already; not yet
            path = f"/v1/Services/{service_sid}/Bindings/{by_identity[identity]}"
            assert api.delete(path, auth=account.auth).status_code == 204

        expand(engine)

        rows = listed(api, account, service_sid, sid)
        identities = {row["identity"] for row in rows}
        assert len(rows) == 29
        assert "user-25" not in identities
        # A row already written keeps its target, as before chunks.
        assert "user-1" in identities

    def test_another_accounts_single_target_is_not_queued_behind_an_expansion(
        self, api, engine, account, other_account
    ):
        big_sid = notify(api, account, service_with(api, engine, account, 200))
        for _ in range(3):  # a few chunks in, as workers would be: one a transaction
            with transaction(engine, write=True) as conn:
                repository.expand_next(conn, limit=CHUNK, now=utcnow_precise())
        small_sid = notify(api, other_account, service_with(api, engine, other_account, 1))
        expand(engine)

        now = utcnow_precise()
        with transaction(engine, write=True) as conn:
            claimed = delivery_repository.claim(
                conn, now=now, lease_until=now + timedelta(minutes=5), limit=10
            )

        # Each chunk joins its account's flow as it is written; the other account's row
        # still goes in the first batch.
        sids = [row.notification_sid for row in claimed]
        assert small_sid in sids
        assert sids.count(big_sid) == 9


class TestTheWorkerInTheServer:
    def test_every_target_is_delivered(self, settings, engine, account):
        fast = settings.model_copy(update={"fanout_chunk_size": CHUNK, "worker_poll_seconds": 5})
        with TestClient(create_app(fast), raise_server_exceptions=False) as api:
            service_sid = service_with(api, engine, account, 123)
            sid = notify(api, account, service_sid)
            # Woken by the request, not after the 5 s poll.
            deadline = time.monotonic() + 4
            while True:
                rows = listed(api, account, service_sid, sid)
                if len(rows) == 123 and all(row["status"] == "sent" for row in rows):
                    break
                assert time.monotonic() < deadline, Counter(row["status"] for row in rows)
                time.sleep(0.02)
        assert set(outbox_rows(engine).values()) == {1}
        assert waiting_expansions(engine) == 0

    def test_service_deleted_while_the_worker_expands(self, settings, engine, account):
        busy = settings.model_copy(update={"fanout_chunk_size": 5})
        with TestClient(create_app(busy), raise_server_exceptions=False) as api:
            service_sid = service_with(api, engine, account, 3000)
            notify(api, account, service_sid)
            wait_for(lambda: written(engine) >= 50, 30, "expansion did not start")

            response = api.delete(f"/v1/Services/{service_sid}", auth=account.auth)

            assert response.status_code == 204, response.text
            assert waiting_expansions(engine) == 0
            time.sleep(0.2)  # the next chunk finds nothing to expand
            assert written(engine) == 0


# Crash safety: a real server process killed with SIGKILL during expansion, several times.
BINDINGS = 3000
KILL_CHUNK = 20


def server_env(settings: Settings, tmp_path) -> dict[str, str]:
    return {
        "NOTIFY_FANOUT_CHUNK_SIZE": str(KILL_CHUNK),
        "NOTIFY_WORKER_POLL_SECONDS": "0.05",
        "NOTIFY_DELIVERY_LEASE_SECONDS": "1",
        "NOTIFY_SECRET_KEY": settings.secret_key or "",
        "NOTIFY_SECRET_KEY_FILE": str(tmp_path / "unused.key"),
        "NOTIFY_ACCESS_LOG": "false",
        "NOTIFY_LOG_LEVEL": "warning",
    }


def written(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(deliveries)).scalar_one()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_kill_during_expansion_leaves_every_target_exactly_once(
    engine, settings, account, database_url, tmp_path
):
    env = server_env(settings, tmp_path)
    quiet = settings.model_copy(update={"worker_enabled": False})
    with TestClient(create_app(quiet)) as api:
        service_sid = service_with(api, engine, account, BINDINGS)
    server = start_server(database_url, env=env)
    response = httpx.post(
        f"{server.base_url}/v1/Services/{service_sid}/Notifications",
        data={"Tag": "all", "Body": "x"},
        auth=account.auth,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    at_kills = []
    # Killed at different points of the expansion, each time with chunks being written.
    for share in (0.1, 0.35, 0.6):
        target = BINDINGS * share
        wait_for(lambda: written(engine) >= target, 60, "expansion stalled")  # noqa: B023
        server.kill()
        at_kills.append(written(engine))
        counts = outbox_rows(engine)
        assert set(counts.values()) == {1}
        # Nothing of a chunk in flight survived: whole chunks only.
        assert at_kills[-1] % KILL_CHUNK == 0, at_kills
        # A loaded machine may let the last chunks land before the kill: then nothing is left.
        assert waiting_expansions(engine) == (1 if at_kills[-1] < BINDINGS else 0), at_kills
        server = start_server(database_url, env=env)
    try:
        wait_for(lambda: waiting_expansions(engine) == 0, 60, "expansion did not finish")
        wait_for(lambda: _all_sent(engine), 60, "not every target was delivered")
    finally:
        server.kill()
    counts = outbox_rows(engine)
    assert len(counts) == BINDINGS
    assert set(counts.values()) == {1}
    # The first kill, at a tenth, always cut the expansion short.
    assert at_kills == sorted(at_kills) and at_kills[0] < BINDINGS, at_kills
    print(f"\nexpansion killed at {at_kills} of {BINDINGS} rows written")


def _all_sent(engine: Engine) -> bool:
    with engine.connect() as conn:
        statuses = set(conn.execute(select(deliveries.c.status).distinct()).scalars())
    return statuses == {"sent"}
