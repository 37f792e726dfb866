"""The outbox worker: claims due deliveries, sends them through their channel, records the
answers in batches. Runs inside `notify-server serve` and alone as `notify-server worker`.

Every statement goes through `Database`, on its threads: a slow or locked database holds up
claims and records, never the event loop (sends in flight, the API of the same process)."""

import asyncio
import collections
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DataError, IntegrityError

from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.db import Database
from notify_server.delivery import repository
from notify_server.delivery.callbacks import CallbackReporter
from notify_server.delivery.channel_set import ChannelSet
from notify_server.delivery.channels import CredentialSecrets, Job, Outcome, Result
from notify_server.delivery.expansion import Expander
from notify_server.delivery.repository import Claimed
from notify_server.logs import RetryLog
from notify_server.metrics import Metrics
from notify_server.notifications.repository import FAILED, PENDING, SENT, deliveries
from notify_server.outbound import OutboundPolicy
from notify_server.wire import utcnow_precise

log = logging.getLogger("notify_server.delivery")

MAX_BACKOFF_SECONDS = 3600
# What deliveries.provider_message_id holds (a String's length).
MESSAGE_ID_LENGTH: int = deliveries.c.provider_message_id.type.length  # type: ignore[attr-defined]
_CREDENTIAL_CACHE_SECONDS = 60.0
# Answers are recorded when this many wait, or when the oldest has waited this long, or when
# nothing else is in flight; this bounds what a kill -9 can make us send again
# (docs/behaviour.md, "Delivery outcome batching and the crash window").
OUTCOME_BATCH = 500
OUTCOME_WINDOW_SECONDS = 0.05
# A failed record is tried again after this long, doubling up to the cap.
_RECORD_RETRY_SECONDS = (0.05, 2.0)


def backoff(attempt: int) -> timedelta:
    """1 s, 2 s, 4 s, ... up to an hour, with jitter so retries do not arrive in waves."""
    seconds = min(2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


def outcome_of(row: Claimed, result: Result, now: datetime) -> dict[str, Any]:
    """What recording `result` writes to the row (repository.OUTCOME_COLUMNS)."""
    outcome: dict[str, Any] = {
        "delivery_id": row.id,
        "provider_message_id": _storable(result.provider_message_id, MESSAGE_ID_LENGTH),
        "provider_status": result.provider_status,
        "provider_response": _storable(result.provider_response),
        "error_message": _storable(result.error_message),
        "next_attempt_at": None,
        "now": now,
    }
    if result.outcome is Outcome.SENT:
        outcome.update(status=SENT, error_message=None)
    elif result.outcome is Outcome.RETRY and now < _as_naive(row.expires_at):
        outcome.update(status=PENDING, next_attempt_at=now + backoff(row.attempts))
    else:
        outcome["status"] = FAILED
        if result.outcome is Outcome.RETRY:
            outcome["error_message"] = (
                f"TTL expired after {row.attempts} attempts; last: {result.error_message}"
            )
    return outcome


def _storable(text: str | None, limit: int | None = None) -> str | None:
    """A provider's text as the outbox can hold it: PostgreSQL refuses NUL in text, and a
    value over the column's length; refused, the answer could never be recorded and the push
    would be sent again after every lease."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text[:limit] if limit is not None else text


class _Answer:
    """One answer waiting to be recorded."""

    __slots__ = ("outcome", "dead_binding_id", "owes_callback")

    def __init__(self, row: Claimed, result: Result) -> None:
        self.outcome = outcome_of(row, result, utcnow_precise())
        dead = result.unregistered and self.outcome["status"] == FAILED
        self.dead_binding_id: int | None = row.binding_id if dead else None
        self.owes_callback = not row.reported

    @property
    def delivery_id(self) -> int:
        return int(self.outcome["delivery_id"])


class OutcomeRecorder:
    """Collects the providers' answers and writes them in batches: one transaction (on
    PostgreSQL one UPDATE) per OUTCOME_BATCH answers or OUTCOME_WINDOW_SECONDS, instead of one
    commit per answer. Until an answer is written its row stays `sending` under a lease this
    worker keeps renewing, so no other worker takes it meanwhile.

    A failed write is tried again (after 50 ms, doubling to 2 s) with nothing lost or doubled.
    A batch the database refuses for its content (one answer too long for a column, say) is
    written one answer at a time, and an answer refused alone is dropped with an error logged:
    its row is claimed again after its lease, as when a single record failed before."""

    def __init__(
        self,
        database: Database,
        on_recorded: Callable[[list["_Answer"]], None],
        batch_size: int = OUTCOME_BATCH,
        window_seconds: float = OUTCOME_WINDOW_SECONDS,
    ) -> None:
        self._database = database
        self._on_recorded = on_recorded
        self.batch_size = batch_size
        self._window = window_seconds
        self._waiting: list[_Answer] = []
        self._writing: list[_Answer] = []
        self._due = asyncio.Event()  # an answer waits
        self._full = asyncio.Event()  # a batch is full, or the worker has nothing else
        # One write of this worker's rows at a time: on PostgreSQL a lease renewal and a
        # record locking the same rows in different orders would deadlock each other.
        self._lock = asyncio.Lock()
        self._refusals = _content_errors(database)
        self._retries = RetryLog(log)
        self.flushes = 0  # transactions that recorded answers (for tests and the bench)

    def add(self, row: Claimed, result: Result) -> None:
        self._waiting.append(_Answer(row, result))
        self._due.set()
        if len(self._waiting) >= self.batch_size:
            self._full.set()

    def flush_soon(self) -> None:
        """Nothing else is coming for now: do not wait out the window."""
        if self._waiting:
            self._full.set()

    @property
    def unrecorded(self) -> int:
        return len(self._waiting) + len(self._writing)

    def unrecorded_ids(self) -> list[int]:
        return [answer.delivery_id for answer in (*self._writing, *self._waiting)]

    async def run(self) -> None:
        delay = _RECORD_RETRY_SECONDS[0]
        while True:
            await self._due.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._window)
            if await self.flush():
                delay = _RECORD_RETRY_SECONDS[0]
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECORD_RETRY_SECONDS[1])

    async def flush(self) -> bool:
        """Write every answer waiting; False if a write failed (its answers wait again)."""
        async with self._lock:
            while self._waiting:
                batch = self._waiting[: self.batch_size]
                del self._waiting[: len(batch)]
                self._writing = batch
                write = asyncio.ensure_future(self._write(batch))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    # The worker stops while the write runs on its thread: let it end, so
                    # that stop() neither loses these answers nor writes them again.
                    await asyncio.wait([write])
                    if write.exception() is not None:
                        self._waiting[:0] = batch
                    else:
                        self._on_recorded(batch)
                    raise
                except Exception as error:
                    self._waiting[:0] = batch
                    # One name whatever the batch's size: the same failure is counted, not
                    # logged again, while it lasts.
                    self._retries.failed("recording delivery answers", error)
                    return False
                finally:
                    self._writing = []
                    self._settle_events()
                self._on_recorded(batch)
        return True

    async def renew_leases(self, delivery_ids: list[int], lease_until: datetime) -> None:
        async with self._lock:
            await self._database.transaction(
                functools.partial(
                    repository.renew_leases, delivery_ids=delivery_ids, lease_until=lease_until
                )
            )

    async def release(self, delivery_ids: list[int], now: datetime) -> None:
        async with self._lock:
            await self._database.transaction(
                functools.partial(repository.release, delivery_ids=delivery_ids, now=now)
            )

    def _settle_events(self) -> None:
        if not self._waiting:
            self._due.clear()
        if len(self._waiting) < self.batch_size:
            self._full.clear()

    async def _write(self, batch: list[_Answer]) -> None:
        try:
            await self._database.transaction(functools.partial(_record, batch=batch))
            self.flushes += 1
        except self._refusals:
            if len(batch) == 1:
                raise
            # One answer the database refuses must not hold up the others: each on its own.
            for answer in batch:
                try:
                    await self._database.transaction(functools.partial(_record, batch=[answer]))
                except self._refusals:
                    log.exception(
                        "delivery %s: its answer cannot be recorded; it is claimed again after"
                        " its lease",
                        answer.delivery_id,
                    )
            self.flushes += 1


def _record(conn: Connection, batch: list[_Answer]) -> None:
    dead = [a.dead_binding_id for a in batch if a.dead_binding_id is not None]
    repository.record_outcomes(conn, [a.outcome for a in batch], dead)


def _content_errors(database: Database) -> tuple[type[Exception], ...]:
    """What a database raises for a statement it refuses for its values: retrying the same
    values cannot help. Prepared statements raise the driver's own errors, Core SQLAlchemy's."""
    dbapi = database.engine.dialect.loaded_dbapi
    return (DataError, IntegrityError, dbapi.DataError, dbapi.IntegrityError)


class DeliveryWorker:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        box: SecretBox,
        channels: ChannelSet | None = None,
        metrics: Metrics | None = None,
        outbound: OutboundPolicy | None = None,
        *,
        outcome_batch: int = OUTCOME_BATCH,
        outcome_window_seconds: float = OUTCOME_WINDOW_SECONDS,
    ) -> None:
        self._database = database
        self._box = box
        self._settings = settings
        self._retries = RetryLog(log)
        self._channels = channels or ChannelSet(settings)
        self._metrics = metrics
        self._callbacks = CallbackReporter(
            database, settings, box, outbound or OutboundPolicy(settings.outbound_allow)
        )
        self.outcomes = OutcomeRecorder(
            database, self._recorded, outcome_batch, outcome_window_seconds
        )
        # Set when a send ends, a claim returns, answers are recorded or new rows are due:
        # one event, rather than asyncio.wait over every task in flight (which adds and
        # removes a callback on each of them at every wake-up).
        self._progress: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Claimed rows not yet being sent: the next batch is claimed while one is in flight,
        # so sends never wait out a claim's round trips.
        self._ready: collections.deque[Claimed] = collections.deque()
        self._claiming: asyncio.Task[list[Claimed]] | None = None
        # After a claim found nothing due, none until then (the poll) or a wake-up; a
        # wake-up during a claim counts (the claim may have read before the new rows).
        self._next_claim_at = 0.0
        self._wake_ups = 0
        self._wake_ups_at_claim = 0
        # delivery id -> the task sending it; their leases are renewed while they run.
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._leases_renewed_at = 0.0
        self._credentials: dict[tuple[str, str], tuple[CredentialSecrets | None, float]] = {}
        self.expander = Expander(
            database,
            poll_seconds=settings.worker_poll_seconds,
            chunk_size=settings.fanout_chunk_size,
            on_chunk=self.wake,
        )

    def wake(self) -> None:
        """New rows are due: skip the rest of the poll interval."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._next_claim_at = 0.0
        self._wake_ups += 1
        if self._progress is not None:
            self._progress.set()

    def created(self, *, deliveries: int, expanding: bool) -> None:
        """A notification was committed: send what it wrote now, expand the rest now."""
        if deliveries:
            self.wake()
        if expanding:
            self.expander.wake()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        # Callbacks go to tenants' endpoints: they run beside delivery, never in its way.
        helpers = [
            asyncio.create_task(self._callbacks.run()),
            asyncio.create_task(self.outcomes.run()),
            asyncio.create_task(self.expander.run()),
        ]
        try:
            await self._deliver_due()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _deliver_due(self) -> None:
        concurrency = self._settings.worker_concurrency
        progress = self._progress
        assert progress is not None
        while not self._stopping:
            progress.clear()
            if self._claiming is not None and self._claiming.done():
                self._take_claimed(self._claiming)
            if self._claiming is None and time.monotonic() >= self._next_claim_at:
                # Room for a batch (at least half the slots) beside what is in flight and
                # ready, and no batch of answers waiting to be recorded (the database is
                # behind). Before the sends start: its statements go out first.
                room = 2 * concurrency - len(self._in_flight) - len(self._ready)
                if room * 2 >= concurrency and self.outcomes.unrecorded < self.outcomes.batch_size:
                    self._wake_ups_at_claim = self._wake_ups
                    self._claiming = asyncio.create_task(self._claim(min(room, concurrency)))
                    self._claiming.add_done_callback(lambda _task: progress.set())
            while self._ready and len(self._in_flight) < concurrency:
                self._start(self._ready.popleft())
            await self._renew_leases()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_seconds()):
                    await progress.wait()

    def _take_claimed(self, claiming: "asyncio.Task[list[Claimed]]") -> None:
        self._claiming = None
        try:
            rows = claiming.result()
        except Exception as error:
            self._retries.failed("claiming deliveries", error)
            rows = []
        if rows:
            self._ready.extend(rows)
        elif self._wake_ups == self._wake_ups_at_claim:  # nothing due: the poll, or new rows
            self._next_claim_at = time.monotonic() + self._settings.worker_poll_seconds

    def _start(self, row: Claimed) -> None:
        task = asyncio.create_task(self._deliver(row))
        self._in_flight[row.id] = task
        task.add_done_callback(functools.partial(self._finished, row.id))

    def _wait_seconds(self) -> float:
        """Until the loop must look again though nothing happened: the next poll, the next
        lease renewal, or (while answers hold up claims) their record."""
        seconds = self._lease_seconds / 3
        if self._claiming is None:
            until_poll = self._next_claim_at - time.monotonic()
            if until_poll > 0:
                seconds = min(seconds, until_poll)
            if self.outcomes.unrecorded >= self.outcomes.batch_size:
                seconds = min(seconds, OUTCOME_WINDOW_SECONDS)
        return seconds

    def _finished(self, delivery_id: int, _task: "asyncio.Task[None]") -> None:
        self._in_flight.pop(delivery_id, None)
        if self._progress is not None:
            self._progress.set()
        if not self._in_flight:  # the batch cannot grow for now: record it
            self.outcomes.flush_soon()

    @property
    def _lease_seconds(self) -> float:
        return self._settings.delivery_lease_seconds

    async def _renew_leases(self) -> None:
        """A send may outlast the lease, and so may an answer waiting to be recorded; while
        this worker lives, its rows stay its own. The lease only lets another worker take over
        the rows of one that died."""
        if time.monotonic() - self._leases_renewed_at < self._lease_seconds / 3:
            return
        ids = [*self._in_flight, *(row.id for row in self._ready), *self.outcomes.unrecorded_ids()]
        if not ids:
            return
        self._leases_renewed_at = time.monotonic()
        lease_until = utcnow_precise() + timedelta(seconds=self._lease_seconds)
        try:
            await self.outcomes.renew_leases(ids, lease_until)
        except Exception as error:
            self._retries.failed("renewing delivery leases", error)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let what is in flight finish and record its answers (what does not
        is claimed again after its lease)."""
        self._stopping = True
        self.wake()
        deadline = time.monotonic() + timeout
        if self._claiming is not None:
            await asyncio.wait([self._claiming], timeout=timeout)
            if self._claiming.done():
                self._take_claimed(self._claiming)
        if self._ready:  # claimed, never sent: due again now, for this worker or another
            ids = [row.id for row in self._ready]
            self._ready.clear()
            try:
                await self.outcomes.release(ids, utcnow_precise())
            except Exception:
                log.exception("%d claimed deliveries not released: due after their lease", len(ids))
        if self._in_flight:
            await asyncio.wait(
                self._in_flight.values(), timeout=max(deadline - time.monotonic(), 0.1)
            )
        delay = _RECORD_RETRY_SECONDS[0]
        while not await self.outcomes.flush():
            if time.monotonic() + delay > deadline:
                log.error(
                    "%d delivery answers not recorded at stop; their rows are sent again after"
                    " their lease",
                    self.outcomes.unrecorded,
                )
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECORD_RETRY_SECONDS[1])
        await self._channels.aclose()
        await self._callbacks.stop(max(deadline - time.monotonic(), 0.1))

    async def _claim(self, limit: int) -> list[Claimed]:
        if limit <= 0:
            return []
        now = utcnow_precise()
        lease_until = now + timedelta(seconds=self._lease_seconds)
        return await self._database.transaction(
            functools.partial(repository.claim, now=now, lease_until=lease_until, limit=limit)
        )

    async def _deliver(self, row: Claimed) -> None:
        try:
            try:
                job = await self._job(row)
            except Exception as exc:  # e.g. a credential sealed with another key
                log.exception("delivery %s could not be prepared", row.id)
                result = Result(Outcome.RETRY, error_message=f"could not prepare: {exc!r}")
            else:
                if job.attempt > 1 and utcnow_precise() >= job.expires_at:
                    result = Result(Outcome.FAILED, error_message="TTL expired before delivery")
                else:
                    result = await self._send(job)
            self.outcomes.add(row, result)
        except Exception:
            # Nothing recorded: the row stays leased and is claimed again after the lease.
            log.exception("delivery %s failed unexpectedly", row.id)

    async def _send(self, job: Job) -> Result:
        try:
            channel = self._channels.channel_for(job)
        except Exception as exc:
            return Result(Outcome.RETRY, error_message=f"no channel: {exc!r}")
        try:
            async with asyncio.timeout(self._settings.delivery_timeout_seconds):
                result = await channel.send(job)
        except TimeoutError:
            result = Result(Outcome.RETRY, error_message=f"{channel.name}: no answer in time")
        except Exception as exc:  # a provider we cannot reach is a transient failure
            result = Result(Outcome.RETRY, error_message=f"{channel.name}: {exc!r}")
        if self._metrics is not None:
            self._metrics.count_delivery(channel.name, result.outcome.value)
        return result

    async def _job(self, row: Claimed) -> Job:
        credential = (
            await self._credential(row.account_sid, row.credential_sid)
            if row.credential_sid
            else None
        )
        return Job(
            delivery_id=row.id,
            attempt=row.attempts,
            binding_type=row.binding_type,
            address=row.address,
            identity=row.identity,
            binding_sid=row.binding_sid,
            expires_at=row.expires_at,
            notification_sid=row.notification_sid,
            account_sid=row.account_sid,
            service_sid=row.service_sid,
            messaging_service_sid=row.messaging_service_sid,
            content=orjson.loads(row.content),
            credential=credential,
        )

    async def _credential(self, account_sid: str, sid: str) -> CredentialSecrets | None:
        cached = self._credentials.get((account_sid, sid))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        stored = await self._database.read(
            functools.partial(repository.credential, account_sid=account_sid, sid=sid)
        )
        credential = None
        if stored is not None:
            secrets = self._box.open(stored.encrypted_secrets) if stored.encrypted_secrets else {}
            credential = CredentialSecrets(stored.sid, stored.type, bool(stored.sandbox), secrets)
        self._credentials[(account_sid, sid)] = (
            credential,
            time.monotonic() + _CREDENTIAL_CACHE_SECONDS,
        )
        return credential

    def _recorded(self, batch: "list[_Answer]") -> None:
        if self._progress is not None:  # claims may have waited for this record
            self._progress.set()
        if any(answer.owes_callback for answer in batch):  # report them soon
            self._callbacks.wake()


def _as_naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)
