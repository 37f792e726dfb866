"""The outbox worker against fake channels: outcomes, retries and backoff, TTL expiry,
unregistered addresses, exceptions and hangs, dead workers' leases, and two workers sharing
one database without delivering anything twice.

Notifications are created through the API of an app whose own worker is off; each test then
runs a DeliveryWorker it builds itself, on an event loop it runs itself (asyncio.run).
"""

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, Row, Table, select, update

from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.db import Database, make_engine
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.worker import DeliveryWorker
from notify_server.notifications.models import Delivery
from notify_server.wire import utcnow, utcnow_precise
from tests.factories import Account, make_binding, make_credential, make_service

deliveries: Table = Delivery.__table__  # type: ignore[assignment]
FINAL = ("sent", "failed")
Behaviour = Callable[[Job, int], Awaitable[Result]]


class FakeChannel:
    """Answers with `behaviour(job, call_number)`; counts sends per delivery id. Thread-safe,
    so workers on two threads can share one."""

    name = "fake"

    def __init__(self, behaviour: Behaviour, sends: Counter | None = None) -> None:
        self._behaviour = behaviour
        self._lock = threading.Lock()
        self.sends: Counter[int] = sends if sends is not None else Counter()
        self.jobs: list[Job] = []
        self.closed = False

    async def send(self, job: Job) -> Result:
        with self._lock:
            self.sends[job.delivery_id] += 1
            self.jobs.append(job)
            call = self.sends[job.delivery_id]
        return await self._behaviour(job, call)

    async def aclose(self) -> None:
        self.closed = True


class FakeChannels:
    """What DeliveryWorker needs of its channel set."""

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    def channel_for(self, job: Job) -> FakeChannel:
        return self.channel

    async def aclose(self) -> None:
        await self.channel.aclose()


def answers(*results: Result) -> Behaviour:
    """The n-th send of a delivery answers results[n-1] (the last one from then on)."""

    async def behaviour(job: Job, call: int) -> Result:
        return results[min(call, len(results)) - 1]

    return behaviour


SENT = Result(Outcome.SENT, provider_message_id="msg-1", provider_status=200)
RETRY = Result(
    Outcome.RETRY, provider_status=503, provider_response="busy", error_message="try later"
)


def notify(api: TestClient, account: Account, service_sid: str, **form) -> dict:
    response = api.post(f"/v1/Services/{service_sid}/Notifications", data=form, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()


def outbox(engine: Engine) -> list[Row]:
    with engine.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def only_row(engine: Engine) -> Row:
    [row] = outbox(engine)
    return row


def set_rows(engine: Engine, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(deliveries).values(**values))


def make_due(engine: Engine) -> None:
    """Instead of sleeping through a backoff: the pending rows are due now."""
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.status == "pending")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def all_final(engine: Engine) -> bool:
    rows = outbox(engine)
    return bool(rows) and all(row.status in FINAL for row in rows)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[DeliveryWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        # run() must end on its own once stopped (and must not have crashed).
        await asyncio.wait_for(task, 5)


def run_worker(
    engine: Engine,
    settings: Settings,
    box: SecretBox,
    channel: FakeChannel,
    scenario: Callable[[DeliveryWorker], Awaitable[None]] | None = None,
) -> None:
    """Run a worker until every outbox row is final (or through `scenario`)."""

    database = Database(engine)

    async def main() -> None:
        worker = DeliveryWorker(database, settings, box, channels=FakeChannels(channel))
        async with running(worker):
            if scenario is None:
                await until(lambda: all_final(engine))
            else:
                await scenario(worker)

    try:
        asyncio.run(main())
    finally:
        database.close()


class TestSend:
    def test_sent(self, api, engine, worker_settings, box, account, service_sid):
        binding = make_binding(api, account, service_sid, Identity="alice", Address="tok-1")
        notification = notify(
            api, account, service_sid, Identity="alice", Title="T", Body="B", Data='{"k": 1}'
        )
        channel = FakeChannel(answers(SENT))
        run_worker(engine, worker_settings, box, channel)

        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 1)
        assert (row.provider_message_id, row.provider_status) == ("msg-1", 200)
        assert row.error_message is None
        assert channel.closed
        [job] = channel.jobs
        assert job.delivery_id == row.id
        assert job.attempt == 1
        assert (job.binding_type, job.address, job.identity, job.binding_sid) == (
            "apn",
            "tok-1",
            "alice",
            binding["sid"],
        )
        assert job.notification_sid == notification["sid"]
        assert (job.account_sid, job.service_sid) == (account.sid, service_sid)
        assert job.messaging_service_sid is None
        assert job.credential is None
        assert job.content["title"] == "T"
        assert job.content["body"] == "B"
        assert job.content["data"] == {"k": 1}
        assert job.content["priority"] == "high"
        assert job.content["ttl"] == 2419200

    def test_failed(self, api, engine, worker_settings, box, account, service_sid):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")
        failed = Result(
            Outcome.FAILED,
            provider_status=400,
            provider_response='{"reason":"BadTopic"}',
            error_message="BadTopic",
        )
        channel = FakeChannel(answers(failed))
        run_worker(engine, worker_settings, box, channel)

        row = only_row(engine)
        assert (row.status, row.attempts, row.error_message) == ("failed", 1, "BadTopic")
        assert (row.provider_status, row.provider_response) == (400, '{"reason":"BadTopic"}')
        assert sum(channel.sends.values()) == 1

    def test_unregistered_deletes_the_binding(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        dead = make_binding(api, account, service_sid, Identity="alice", Address="dead-token")
        alive = make_binding(api, account, service_sid, Identity="alice", Address="live-token")
        notify(api, account, service_sid, Identity="alice")

        async def behaviour(job: Job, call: int) -> Result:
            if job.address == "dead-token":
                return Result(
                    Outcome.FAILED,
                    provider_status=410,
                    error_message="Unregistered",
                    unregistered=True,
                )
            return SENT

        run_worker(engine, worker_settings, box, FakeChannel(behaviour))

        bindings_url = f"/v1/Services/{service_sid}/Bindings"
        gone = api.get(f"{bindings_url}/{dead['sid']}", auth=account.auth)
        assert gone.status_code == 404
        assert api.get(f"{bindings_url}/{alive['sid']}", auth=account.auth).status_code == 200
        rows = {row.address: row for row in outbox(engine)}
        # The outbox row outlives its binding and still says which it was.
        assert rows["dead-token"].status == "failed"
        assert rows["dead-token"].binding_sid == dead["sid"]
        assert rows["dead-token"].binding_id is None
        assert rows["dead-token"].error_message == "Unregistered"
        assert rows["live-token"].status == "sent"
        assert rows["live-token"].binding_id is not None

    def test_credential_reaches_the_channel_decrypted(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        apn = make_credential(api, account, Certificate="CERT", PrivateKey="KEY", Sandbox="true")
        fcm = make_credential(api, account, Type="fcm", Secret="server-key")
        service = make_service(api, account, FcmCredentialSid=fcm["sid"])["sid"]
        make_binding(api, account, service, Address="apn-token", CredentialSid=apn["sid"])
        make_binding(api, account, service, BindingType="gcm", Address="gcm-token")
        make_binding(api, account, service, BindingType="sms", Address="+15550001111")
        notify(api, account, service, Tag="all")
        channel = FakeChannel(answers(SENT))
        run_worker(engine, worker_settings, box, channel)

        jobs = {job.binding_type: job for job in channel.jobs}
        assert jobs["apn"].credential is not None
        assert jobs["apn"].credential.sid == apn["sid"]
        assert (jobs["apn"].credential.type, jobs["apn"].credential.sandbox) == ("apn", True)
        assert jobs["apn"].credential.secrets == {"certificate": "CERT", "private_key": "KEY"}
        # A gcm binding without its own credential is served by the service's FCM one.
        assert jobs["gcm"].credential is not None
        assert jobs["gcm"].credential.sid == fcm["sid"]
        assert jobs["gcm"].credential.type == "fcm"
        assert jobs["gcm"].credential.secrets == {"secret": "server-key"}
        assert jobs["sms"].credential is None


class TestRetry:
    def test_retry_then_sent_respects_the_backoff(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")
        channel = FakeChannel(answers(RETRY, SENT))

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: only_row(engine).status == "pending" and channel.sends)
            row = only_row(engine)
            assert row.attempts == 1
            assert (row.error_message, row.provider_status, row.provider_response) == (
                "try later",
                503,
                "busy",
            )
            # backoff(1): one second, +-20% jitter, from the moment the failure was recorded.
            delay = (row.next_attempt_at - row.date_updated).total_seconds()
            assert 0.8 <= delay <= 1.2, delay
            # A row not yet due is left alone: a dozen polls go by without a second send.
            # (Pushed further out, so a slow machine cannot reach the real backoff's end.)
            set_rows(engine, next_attempt_at=utcnow() + timedelta(seconds=30))
            await asyncio.sleep(0.25)
            assert sum(channel.sends.values()) == 1
            assert only_row(engine).status == "pending"
            make_due(engine)
            worker.wake()
            await until(lambda: all_final(engine))

        run_worker(engine, worker_settings, box, channel, scenario)
        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 2)
        assert row.error_message is None
        assert row.provider_message_id == "msg-1"
        assert [job.attempt for job in channel.jobs] == [1, 2]

    def test_retry_with_expired_ttl_fails(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        # Ttl=0: one attempt now, never a retry.
        notify(api, account, service_sid, Tag="all", Ttl="0")
        channel = FakeChannel(answers(RETRY, SENT))
        run_worker(engine, worker_settings, box, channel)

        row = only_row(engine)
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.error_message.startswith("TTL expired"), row.error_message
        assert "try later" in row.error_message
        assert sum(channel.sends.values()) == 1

    def test_due_retry_after_the_ttl_is_not_sent(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all", Ttl="60")
        channel = FakeChannel(answers(RETRY, SENT))

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: only_row(engine).status == "pending" and channel.sends)
            # The retry comes due only after the notification expired.
            past = utcnow() - timedelta(seconds=1)
            set_rows(engine, expires_at=past, next_attempt_at=past)
            worker.wake()
            await until(lambda: all_final(engine))

        run_worker(engine, worker_settings, box, channel, scenario)
        row = only_row(engine)
        assert row.status == "failed"
        assert row.error_message.startswith("TTL expired"), row.error_message
        assert sum(channel.sends.values()) == 1

    def test_channel_that_raises_is_retried(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")

        async def behaviour(job: Job, call: int) -> Result:
            if call == 1:
                raise ConnectionError("provider unreachable")
            return SENT

        channel = FakeChannel(behaviour)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: only_row(engine).status == "pending" and channel.sends)
            row = only_row(engine)
            assert row.attempts == 1
            assert "provider unreachable" in row.error_message
            assert row.next_attempt_at > row.date_updated
            make_due(engine)
            worker.wake()
            await until(lambda: all_final(engine))

        run_worker(engine, worker_settings, box, channel, scenario)
        row = only_row(engine)
        assert (row.status, row.attempts, row.error_message) == ("sent", 2, None)

    def test_channel_that_hangs_is_retried(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")
        cancelled = asyncio.Event()

        async def behaviour(job: Job, call: int) -> Result:
            if call == 1:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return SENT

        channel = FakeChannel(behaviour)

        async def scenario(worker: DeliveryWorker) -> None:
            started = time.monotonic()
            await until(lambda: only_row(engine).status == "pending" and channel.sends)
            # delivery_timeout_seconds is 0.3: the hung send was given up, not waited out.
            assert time.monotonic() - started < 5
            assert cancelled.is_set()
            row = only_row(engine)
            assert row.attempts == 1
            assert "no answer in time" in row.error_message
            make_due(engine)
            worker.wake()
            await until(lambda: all_final(engine))

        run_worker(engine, worker_settings, box, channel, scenario)
        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 2)


class TestLease:
    def test_expired_lease_is_claimed_again(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")
        # A worker claimed the row and died: `sending`, its lease already over.
        set_rows(
            engine,
            status="sending",
            attempts=1,
            next_attempt_at=utcnow() - timedelta(seconds=5),
        )
        channel = FakeChannel(answers(SENT))
        run_worker(engine, worker_settings, box, channel)

        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 2)
        assert sum(channel.sends.values()) == 1

    def test_live_lease_is_left_alone(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        make_binding(api, account, service_sid, Address="leased")
        make_binding(api, account, service_sid, Address="free")
        notify(api, account, service_sid, Tag="all")
        with engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.address == "leased")
                .values(
                    status="sending",
                    attempts=1,
                    next_attempt_at=utcnow() + timedelta(minutes=5),
                )
            )
        channel = FakeChannel(answers(SENT))

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: channel.sends and outbox(engine)[1].status == "sent")
            await asyncio.sleep(0.2)

        run_worker(engine, worker_settings, box, channel, scenario)
        rows = {row.address: row for row in outbox(engine)}
        assert (rows["leased"].status, rows["leased"].attempts) == ("sending", 1)
        assert (rows["free"].status, rows["free"].attempts) == ("sent", 1)
        assert [job.address for job in channel.jobs] == ["free"]

    def test_row_in_flight_within_its_lease_is_not_claimed_again(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        # A 1 s lease and a 0.5 s send: the lease must hold for the whole second, whatever
        # the fraction of the wall-clock second the row was claimed at.
        settings = worker_settings.model_copy(
            update={"delivery_lease_seconds": 1.0, "delivery_timeout_seconds": 2.0}
        )
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")
        set_rows(engine, next_attempt_at=utcnow() + timedelta(hours=1))

        async def slow_send(job: Job, call: int) -> Result:
            await asyncio.sleep(0.5)
            return SENT

        channel = FakeChannel(slow_send)

        async def scenario(worker: DeliveryWorker) -> None:
            # Not synchronisation: the claim is placed late in a wall-clock second, where a
            # lease computed from a clock truncated to the second would end within 0.3 s.
            fraction = time.time() % 1
            await asyncio.sleep((0.7 - fraction) % 1)
            set_rows(engine, next_attempt_at=utcnow() - timedelta(seconds=1))
            worker.wake()
            await until(lambda: all_final(engine))
            # Polls go on after the boundary while the send is still in flight.
            await asyncio.sleep(0.1)

        run_worker(engine, settings, box, channel, scenario)
        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 1)
        assert sum(channel.sends.values()) == 1

    def test_send_slower_than_the_lease_is_not_sent_twice(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        # The lease is for finding dead workers' rows: a live worker whose send takes longer
        # than the lease (yet less than delivery_timeout_seconds) must not send it again.
        settings = worker_settings.model_copy(
            update={"delivery_lease_seconds": 1.0, "delivery_timeout_seconds": 5.0}
        )
        make_binding(api, account, service_sid)
        notify(api, account, service_sid, Tag="all")

        async def slow_send(job: Job, call: int) -> Result:
            await asyncio.sleep(1.6)
            return SENT

        channel = FakeChannel(slow_send)

        async def scenario(worker: DeliveryWorker) -> None:
            await until(lambda: all_final(engine))
            await asyncio.sleep(0.1)

        run_worker(engine, settings, box, channel, scenario)
        row = only_row(engine)
        assert (row.status, row.attempts) == ("sent", 1)
        assert sum(channel.sends.values()) == 1


def statuses(engine: Engine) -> Counter[tuple[str, int]]:
    return Counter((row.status, row.attempts) for row in outbox(engine))


class TestClaimAhead:
    """The next batch is claimed while one is sent, so sends never wait out a claim's round
    trips; rows claimed but not yet sent go back to the queue when the worker stops."""

    CONCURRENCY = 4

    def _held(self, api, account, service_sid, worker_settings, rows: int):
        targets = [
            json.dumps({"binding_type": "apn", "address": f"token-{i:02d}"}) for i in range(rows)
        ]
        notify(api, account, service_sid, ToBinding=targets)
        settings = worker_settings.model_copy(
            update={"worker_concurrency": self.CONCURRENCY, "delivery_timeout_seconds": 30.0}
        )
        gate = asyncio.Event()

        async def held_send(job: Job, call: int) -> Result:
            await gate.wait()
            return SENT

        return settings, gate, FakeChannel(held_send)

    def test_the_next_batch_is_claimed_while_one_is_in_flight(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        settings, gate, channel = self._held(api, account, service_sid, worker_settings, 12)

        async def scenario(worker: DeliveryWorker) -> None:
            # Every slot sending, and as many rows again claimed and waiting for a slot.
            await until(lambda: statuses(engine)[("sending", 1)] == 2 * self.CONCURRENCY)
            await asyncio.sleep(0.1)  # and no more than that
            assert statuses(engine) == {("sending", 1): 8, ("pending", 0): 4}
            assert len(channel.jobs) == self.CONCURRENCY
            gate.set()
            await until(lambda: all_final(engine))

        run_worker(engine, settings, box, channel, scenario)
        assert statuses(engine) == {("sent", 1): 12}
        assert set(channel.sends.values()) == {1}

    def test_stopping_gives_back_the_rows_claimed_but_not_sent(
        self, api, engine, worker_settings, box, account, service_sid
    ):
        settings, gate, channel = self._held(api, account, service_sid, worker_settings, 12)
        database = Database(engine)

        async def main() -> None:
            worker = DeliveryWorker(database, settings, box, channels=FakeChannels(channel))
            task = asyncio.create_task(worker.run())
            await until(lambda: statuses(engine)[("sending", 1)] == 2 * self.CONCURRENCY)
            stopping = asyncio.create_task(worker.stop())
            # Those waiting for a slot are due again at once, untried, while the ones in
            # flight still are.
            await until(lambda: statuses(engine)[("pending", 0)] == 8)
            assert statuses(engine) == {("sending", 1): 4, ("pending", 0): 8}
            gate.set()
            await asyncio.wait_for(stopping, 10)
            await asyncio.wait_for(task, 5)

        try:
            asyncio.run(main())
        finally:
            database.close()
        assert statuses(engine) == {("sent", 1): 4, ("pending", 0): 8}
        assert len(channel.jobs) == self.CONCURRENCY
        now = utcnow_precise()
        assert all(row.next_attempt_at <= now for row in outbox(engine) if row.status == "pending")

        # Another worker sends them, each once.
        sent_later = FakeChannel(answers(SENT))
        run_worker(engine, worker_settings, box, sent_later)
        assert statuses(engine) == {("sent", 1): 12}
        assert not set(sent_later.sends) & {job.delivery_id for job in channel.jobs}


class TestTwoWorkers:
    ROWS = 500

    def test_each_row_delivered_exactly_once(
        self, api, engine, worker_settings, box, account, service_sid, database_url
    ):
        targets = [
            json.dumps({"binding_type": "apn", "address": f"token-{i:04d}"})
            for i in range(self.ROWS)
        ]
        notify(api, account, service_sid, ToBinding=targets)
        assert len(outbox(engine)) == self.ROWS

        async def short_send(job: Job, call: int) -> Result:
            await asyncio.sleep(0.002)
            return Result(Outcome.SENT, provider_message_id=f"msg-{job.delivery_id}")

        everything: Counter[int] = Counter()
        channels = [FakeChannel(short_send, everything) for _ in range(2)]
        per_worker: list[Counter[int]] = [Counter(), Counter()]
        start = threading.Barrier(2)
        done = threading.Event()
        errors: list[BaseException] = []

        def work(index: int) -> None:
            # Its own engine, its own thread and loop: the two really overlap.
            own_engine = make_engine(database_url)
            own_database = Database(own_engine)

            async def main() -> None:
                channel = channels[index]
                worker = DeliveryWorker(
                    own_database, worker_settings, box, channels=FakeChannels(channel)
                )
                start.wait(timeout=10)
                async with running(worker):
                    while not done.is_set():
                        await asyncio.sleep(0.01)
                per_worker[index].update(job.delivery_id for job in channel.jobs)

            try:
                asyncio.run(main())
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
            finally:
                own_database.close()
                own_engine.dispose()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 60
            while not all_final(engine) and not errors:
                assert time.monotonic() < deadline, "workers did not finish"
                time.sleep(0.05)
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=30)
        assert errors == []

        rows = outbox(engine)
        assert {row.status for row in rows} == {"sent"}
        assert {row.attempts for row in rows} == {1}
        assert set(everything) == {row.id for row in rows}
        assert set(everything.values()) == {1}, everything.most_common(5)
        for row in rows:
            assert row.provider_message_id == f"msg-{row.id}"
        # Both took part; neither delivered what the other did.
        assert all(per_worker), [len(c) for c in per_worker]
        assert not set(per_worker[0]) & set(per_worker[1])
        assert sum(len(c) for c in per_worker) == self.ROWS
