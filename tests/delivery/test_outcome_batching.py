"""The worker's answers are recorded in batches, and its database work never holds the loop.

Through the API (notifications created by an app whose own worker is off), then a
DeliveryWorker on a loop of the test's own, against the real database: the loop keeps ticking
while the database is locked; a batch is one record call; the size and time limits hold; a
failed record is retried with nothing lost or doubled and the rows stay leased meanwhile; a
batch with one answer the database refuses still records the rest; stop() records what waits.
"""

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from notify_server.config import Settings
from notify_server.db import Database, make_engine
from notify_server.delivery import repository
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.worker import DeliveryWorker
from notify_server.wire import utcnow
from tests.delivery.test_worker import (
    FakeChannel,
    FakeChannels,
    all_final,
    notify,
    outbox,
    running,
    until,
)
from tests.factories import Account


async def quick_send(job: Job, call: int) -> Result:
    await asyncio.sleep(0.001)
    return Result(Outcome.SENT, provider_message_id=f"msg-{job.delivery_id}")


def post_targets(api, account: Account, service_sid: str, count: int) -> None:
    targets = [
        json.dumps({"binding_type": "apn", "address": f"token-{i:05d}"}) for i in range(count)
    ]
    notify(api, account, service_sid, ToBinding=targets)


class RecordSpy:
    """Counts the batches written (each a call of repository.record_outcomes, one statement on
    PostgreSQL) and can make them fail, as a database that went away would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[int]] = []
        self.failures = 0
        self.fail: Callable[[Sequence[int]], Exception | None] = lambda ids: None
        self._real = repository.record_outcomes
        self._lock = threading.Lock()
        monkeypatch.setattr(repository, "record_outcomes", self._record)

    def _record(self, conn: Any, outcomes: Sequence[Any], dead: Sequence[int]) -> None:
        ids = [outcome["delivery_id"] for outcome in outcomes]
        error = self.fail(ids)
        if error is not None:
            with self._lock:
                self.failures += 1
            raise error
        self._real(conn, outcomes, dead)
        with self._lock:
            self.batches.append(ids)

    @property
    def recorded(self) -> list[int]:
        return [i for batch in self.batches for i in batch]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> RecordSpy:
    return RecordSpy(monkeypatch)


def run(
    engine: Engine,
    settings: Settings,
    box,
    channel: FakeChannel,
    scenario: Callable[[DeliveryWorker], Any],
    **worker_options: Any,
) -> None:
    database = Database(engine)

    async def main() -> None:
        worker = DeliveryWorker(
            database, settings, box, channels=FakeChannels(channel), **worker_options
        )
        async with running(worker):
            await scenario(worker)

    try:
        asyncio.run(main())
    finally:
        database.close()


def statuses(engine: Engine) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in outbox(engine):
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def database_error(engine: Engine, kind: str) -> Exception:
    """The driver's own exception class, as Prepared statements raise them."""
    return getattr(engine.dialect.loaded_dbapi, kind)("injected by the test")


@contextmanager
def database_locked(engine: Engine) -> Iterator[None]:
    """Writes to deliveries wait (on SQLite every write; on PostgreSQL the table's EXCLUSIVE
    lock, which plain reads pass): claims and records cannot proceed."""
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        if engine.dialect.name == "sqlite":
            driver.execute("BEGIN IMMEDIATE")
        else:
            conn.execute(text("LOCK TABLE deliveries IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            if engine.dialect.name == "sqlite":
                driver.execute("ROLLBACK")
            else:
                conn.rollback()


class TestLoopNeverWaitsOnTheDatabase:
    def test_loop_keeps_ticking_while_the_database_is_locked(
        self, api, engine, worker_settings, box, account, service_sid, spy, database_url
    ):
        post_targets(api, account, service_sid, 400)
        channel = FakeChannel(quick_send)
        # The test's own polling uses another engine: only the worker's work counts below.
        observer = make_engine(database_url)
        checkouts_on_the_loop: list[int] = []
        loop_thread: list[int] = []

        @event.listens_for(engine, "checkout")
        def checkout(*_: Any) -> None:
            if threading.get_ident() in loop_thread:
                checkouts_on_the_loop.append(1)

        gaps: list[float] = []
        control_gaps: list[float] = []
        recorded_during_lock: list[int] = []

        async def scenario(worker: DeliveryWorker) -> None:
            loop_thread.append(threading.get_ident())
            await until(lambda: len(spy.recorded) >= 16)
            locked, release = threading.Event(), threading.Event()

            def hold_lock() -> None:
                with database_locked(observer):
                    locked.set()
                    release.wait(10)

            holder = threading.Thread(target=hold_lock)
            holder.start()
            assert locked.wait(10)
            recorded_at_lock = len(spy.recorded)
            # A bare loop on another thread ticks beside ours: what the machine's own load
            # does to a loop that does nothing else.
            control = threading.Thread(target=lambda: asyncio.run(tick(1.5, control_gaps)))
            control.start()
            await tick(1.5, gaps)  # the worker claims and records meanwhile: both wait
            await asyncio.to_thread(control.join, 10)
            recorded_during_lock.append(len(spy.recorded) - recorded_at_lock)
            release.set()
            await asyncio.to_thread(holder.join, 10)
            await until(lambda: all_final(observer), timeout=30)

        try:
            run(engine, worker_settings, box, channel, scenario)
        finally:
            event.remove(engine, "checkout", checkout)
            observer.dispose()
        # The database really held the worker up: nothing was recorded during the lock...
        assert recorded_during_lock == [0]
        # ... yet no statement of the worker ran on the loop's thread,
        assert checkouts_on_the_loop == []
        # ... and the loop went on ticking. A loop that waited on the database would stall
        # for the whole lock; below 20 ms unless the machine stalls a bare loop as much.
        assert len(gaps) > 100, len(gaps)
        assert max(gaps) < 1.0
        assert max(gaps) < max(0.020, 2 * max(control_gaps)), (
            f"max gap {max(gaps) * 1000:.1f} ms; a bare loop's {max(control_gaps) * 1000:.1f} ms"
        )
        assert statuses(engine) == {"sent": 400}
        assert set(channel.sends.values()) == {1}
        assert len(channel.sends) == 400


async def tick(seconds: float, gaps: list[float]) -> None:
    """Every 2 ms, how long the last tick took."""
    last = started = time.perf_counter()
    while last - started < seconds:
        await asyncio.sleep(0.002)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


class TestBatches:
    def test_a_batch_of_answers_is_one_record(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        settings = worker_settings.model_copy(update={"worker_concurrency": 256})
        post_targets(api, account, service_sid, 200)
        channel = FakeChannel(quick_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: all_final(engine))

        # A long window: the batch is recorded because nothing else is in flight.
        run(engine, settings, box, channel, scenario, outcome_window_seconds=30)
        assert len(spy.batches) == 1
        assert sorted(spy.batches[0]) == sorted(row.id for row in outbox(engine))
        assert statuses(engine) == {"sent": 200}
        for row in outbox(engine):
            assert row.provider_message_id == f"msg-{row.id}"

    def test_batches_hold_at_most_the_batch_size_and_every_row_is_sent_once(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        settings = worker_settings.model_copy(update={"worker_concurrency": 64})
        post_targets(api, account, service_sid, 1000)
        channel = FakeChannel(quick_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: all_final(engine), timeout=60)

        run(engine, settings, box, channel, scenario, outcome_batch=50)
        assert max(len(batch) for batch in spy.batches) <= 50
        assert len(spy.batches) >= 1000 // 50
        ids = {row.id for row in outbox(engine)}
        assert sorted(spy.recorded) == sorted(ids)  # each recorded once
        assert set(channel.sends) == ids
        assert set(channel.sends.values()) == {1}
        rows = outbox(engine)
        assert {(row.status, row.attempts) for row in rows} == {("sent", 1)}

    def test_answers_are_recorded_within_the_window_while_others_are_in_flight(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        post_targets(api, account, service_sid, 5)
        slow_done = asyncio.Event()

        async def behaviour(job: Job, call: int) -> Result:
            if job.address == "token-00000":
                await slow_done.wait()
            return Result(Outcome.SENT, provider_message_id="m")

        settings = worker_settings.model_copy(update={"delivery_timeout_seconds": 30})
        channel = FakeChannel(behaviour)

        async def scenario(worker: DeliveryWorker) -> None:
            started = time.monotonic()
            await until(lambda: statuses(engine).get("sent") == 4)
            # The window (0.2 s), not the slow send nor the batch size, recorded the four.
            assert time.monotonic() - started < 5
            assert statuses(engine) == {"sent": 4, "sending": 1}
            slow_done.set()
            await until(lambda: all_final(engine))

        run(engine, settings, box, channel, scenario, outcome_window_seconds=0.2)
        assert statuses(engine) == {"sent": 5}
        assert len(spy.batches) == 2


class TestFailedRecords:
    def test_a_failed_record_is_retried_without_losing_or_doubling_an_answer(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        post_targets(api, account, service_sid, 120)
        failing = threading.Event()
        failing.set()
        error = database_error(engine, "OperationalError")
        spy.fail = lambda ids: error if failing.is_set() else None
        channel = FakeChannel(quick_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: spy.failures >= 3 and len(channel.sends) == 120)
            # Not recorded, and still this worker's: leased, not due for another worker.
            rows = outbox(engine)
            assert {row.status for row in rows} == {"sending"}
            soon = utcnow() + timedelta(seconds=worker_settings.delivery_lease_seconds / 2)
            assert all(row.next_attempt_at > soon for row in rows)
            # No more claims while a full batch waits? 120 < 500: claims went on, and found
            # nothing more to send.
            failing.clear()
            await until(lambda: all_final(engine))

        run(engine, worker_settings, box, channel, scenario)
        ids = {row.id for row in outbox(engine)}
        assert sorted(spy.recorded) == sorted(ids)
        assert set(channel.sends.values()) == {1}
        assert {(row.status, row.attempts) for row in outbox(engine)} == {("sent", 1)}
        for row in outbox(engine):
            assert row.provider_message_id == f"msg-{row.id}"

    def test_leases_of_unrecorded_answers_are_renewed(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        # A 1 s lease, and records failing for 2 s: the rows must stay this worker's.
        settings = worker_settings.model_copy(update={"delivery_lease_seconds": 1.0})
        post_targets(api, account, service_sid, 10)
        failing = threading.Event()
        failing.set()
        error = database_error(engine, "OperationalError")
        spy.fail = lambda ids: error if failing.is_set() else None
        channel = FakeChannel(quick_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: len(channel.sends) == 10)
            await asyncio.sleep(2.0)
            assert {row.status for row in outbox(engine)} == {"sending"}
            assert all(row.next_attempt_at > utcnow() for row in outbox(engine))
            failing.clear()
            await until(lambda: all_final(engine))

        run(engine, settings, box, channel, scenario)
        assert set(channel.sends.values()) == {1}
        assert statuses(engine) == {"sent": 10}

    def test_an_answer_the_database_refuses_does_not_hold_up_the_rest(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        settings = worker_settings.model_copy(update={"worker_concurrency": 64})
        post_targets(api, account, service_sid, 20)
        poison = min(row.id for row in outbox(engine))
        refused = database_error(engine, "DataError")
        spy.fail = lambda ids: refused if poison in ids else None
        channel = FakeChannel(quick_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: statuses(engine).get("sent") == 19)

        run(engine, settings, box, channel, scenario, outcome_window_seconds=30)
        rows = {row.id: row for row in outbox(engine)}
        # Left leased, as a single failed record always was: claimed again after its lease.
        assert rows[poison].status == "sending"
        assert sorted(spy.recorded) == sorted(set(rows) - {poison})
        assert set(channel.sends.values()) == {1}


class TestStop:
    def test_stop_records_what_waits(
        self, api, engine, worker_settings, box, account, service_sid, spy
    ):
        post_targets(api, account, service_sid, 30)
        hung = asyncio.Event()

        async def behaviour(job: Job, call: int) -> Result:
            if job.address == "token-00000":
                hung.set()
                await asyncio.sleep(3600)
            return Result(Outcome.SENT, provider_message_id="m")

        settings = worker_settings.model_copy(update={"delivery_timeout_seconds": 60})
        channel = FakeChannel(behaviour)
        database = Database(engine)

        async def main() -> None:
            # A window and a batch no test reaches: only stop() can record these.
            worker = DeliveryWorker(
                database,
                settings,
                box,
                channels=FakeChannels(channel),
                outcome_window_seconds=3600,
                outcome_batch=10_000,
            )
            task = asyncio.create_task(worker.run())
            await until(lambda: len(channel.sends) == 30 and hung.is_set())
            await asyncio.sleep(0.2)
            assert spy.batches == []
            assert statuses(engine) == {"sending": 30}
            await worker.stop(timeout=0.5)
            await asyncio.wait_for(task, 5)

        try:
            asyncio.run(main())
        finally:
            database.close()
        assert len(spy.batches) == 1
        # The hung send is left leased: it is claimed again after its lease.
        assert statuses(engine) == {"sent": 29, "sending": 1}
