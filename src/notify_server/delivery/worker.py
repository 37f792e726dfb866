"""The outbox worker: claims due deliveries, sends them through their channel, records the
answer. Runs inside `notify-server serve` and alone as `notify-server worker`."""

import asyncio
import contextlib
import functools
import logging
import random
import time
from datetime import datetime, timedelta

import orjson
from sqlalchemy import Engine, Row

from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.db import Database, transaction
from notify_server.delivery import repository
from notify_server.delivery.callbacks import CallbackReporter
from notify_server.delivery.channel_set import ChannelSet
from notify_server.delivery.channels import CredentialSecrets, Job, Outcome, Result
from notify_server.delivery.expansion import Expander
from notify_server.metrics import Metrics
from notify_server.outbound import OutboundPolicy
from notify_server.wire import utcnow_precise

log = logging.getLogger("notify_server.delivery")

MAX_BACKOFF_SECONDS = 3600
_CREDENTIAL_CACHE_SECONDS = 60.0


def backoff(attempt: int) -> timedelta:
    """1 s, 2 s, 4 s, ... up to an hour, with jitter so retries do not arrive in waves."""
    seconds = min(2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


class DeliveryWorker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        box: SecretBox,
        channels: ChannelSet | None = None,
        metrics: Metrics | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self._engine = engine
        self._box = box
        self._settings = settings
        self._channels = channels or ChannelSet(settings)
        self._metrics = metrics
        self._callbacks = CallbackReporter(
            engine, settings, box, outbound or OutboundPolicy(settings.outbound_allow)
        )
        self._wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # delivery id -> the task sending it; their leases are renewed while they run.
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._leases_renewed_at = 0.0
        self._credentials: dict[tuple[str, str], tuple[CredentialSecrets | None, float]] = {}
        self.expander = Expander(
            Database(engine),
            poll_seconds=settings.worker_poll_seconds,
            chunk_size=settings.fanout_chunk_size,
            on_chunk=self.wake,
        )

    def wake(self) -> None:
        """New rows are due: skip the rest of the poll interval."""
        if self._wake_event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        # Callbacks go to tenants' endpoints: they run beside delivery, never in its way.
        callbacks = asyncio.create_task(self._callbacks.run())
        expansions = asyncio.create_task(self.expander.run())
        try:
            await self._deliver_due()
        finally:
            callbacks.cancel()
            expansions.cancel()

    async def _deliver_due(self) -> None:
        concurrency = self._settings.worker_concurrency
        while not self._stopping:
            free = concurrency - len(self._in_flight)
            # Claim in batches (at least half the slots free) rather than one row per answer.
            busy = free * 2 < concurrency
            try:
                claimed = [] if busy else self._claim(free)
            except Exception:
                log.exception("claiming deliveries failed; retrying")
                claimed = []
            for row in claimed:
                task = asyncio.create_task(self._deliver(row))
                self._in_flight[row.id] = task
                task.add_done_callback(functools.partial(self._finished, row.id))
            self._renew_leases()
            if busy or len(self._in_flight) >= concurrency:
                await asyncio.wait(
                    self._in_flight.values(),
                    timeout=self._lease_seconds / 3,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            elif not claimed:
                await self._idle()
            else:
                await asyncio.sleep(0)

    def _finished(self, delivery_id: int, _task: "asyncio.Task[None]") -> None:
        self._in_flight.pop(delivery_id, None)

    async def _idle(self) -> None:
        assert self._wake_event is not None
        timeout = min(self._settings.worker_poll_seconds, self._lease_seconds / 3)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_event.wait(), timeout)
        self._wake_event.clear()

    @property
    def _lease_seconds(self) -> float:
        return self._settings.delivery_lease_seconds

    def _renew_leases(self) -> None:
        """A send may outlast the lease; while this worker lives, its rows stay its own. The
        lease only lets another worker take over the rows of one that died."""
        if (
            not self._in_flight
            or time.monotonic() - self._leases_renewed_at < self._lease_seconds / 3
        ):
            return
        self._leases_renewed_at = time.monotonic()
        lease_until = utcnow_precise() + timedelta(seconds=self._lease_seconds)
        try:
            with transaction(self._engine, write=True) as conn:
                repository.renew_leases(conn, list(self._in_flight), lease_until)
        except Exception:
            log.exception("renewing delivery leases failed; retrying")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let what is in flight finish (what does not is claimed again later)."""
        self._stopping = True
        self.wake()
        if self._in_flight:
            await asyncio.wait(self._in_flight.values(), timeout=timeout)
        await self._channels.aclose()
        await self._callbacks.stop(timeout)

    def _claim(self, limit: int) -> list[Row]:
        if limit <= 0:
            return []
        now = utcnow_precise()
        lease_until = now + timedelta(seconds=self._lease_seconds)
        with transaction(self._engine, write=True) as conn:
            return repository.claim(conn, now=now, lease_until=lease_until, limit=limit)

    async def _deliver(self, row: Row) -> None:
        try:
            try:
                job = self._job(row)
            except Exception as exc:  # e.g. a credential sealed with another key
                log.exception("delivery %s could not be prepared", row.id)
                result = Result(Outcome.RETRY, error_message=f"could not prepare: {exc!r}")
            else:
                if job.attempt > 1 and utcnow_precise() >= job.expires_at:
                    result = Result(Outcome.FAILED, error_message="TTL expired before delivery")
                else:
                    result = await self._send(job)
            self._record(row, result)
        except Exception:
            # Recording failed: the row stays leased and is claimed again after the lease.
            log.exception("delivery %s failed unexpectedly", row.id)

    async def _send(self, job: Job) -> Result:
        try:
            channel = self._channels.channel_for(job)
        except Exception as exc:
            return Result(Outcome.RETRY, error_message=f"no channel: {exc!r}")
        try:
            result = await asyncio.wait_for(
                channel.send(job), self._settings.delivery_timeout_seconds
            )
        except TimeoutError:
            result = Result(Outcome.RETRY, error_message=f"{channel.name}: no answer in time")
        except Exception as exc:  # a provider we cannot reach is a transient failure
            result = Result(Outcome.RETRY, error_message=f"{channel.name}: {exc!r}")
        if self._metrics is not None:
            self._metrics.count_delivery(channel.name, result.outcome.value)
        return result

    def _job(self, row: Row) -> Job:
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
            credential=(
                self._credential(row.account_sid, row.credential_sid)
                if row.credential_sid
                else None
            ),
        )

    def _credential(self, account_sid: str, sid: str) -> CredentialSecrets | None:
        cached = self._credentials.get((account_sid, sid))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        with self._engine.connect() as conn:
            stored = repository.credential(conn, account_sid, sid)
        credential = None
        if stored is not None:
            secrets = self._box.open(stored.encrypted_secrets) if stored.encrypted_secrets else {}
            credential = CredentialSecrets(stored.sid, stored.type, bool(stored.sandbox), secrets)
        self._credentials[(account_sid, sid)] = (
            credential,
            time.monotonic() + _CREDENTIAL_CACHE_SECONDS,
        )
        return credential

    def _record(self, row: Row, result: Result) -> None:
        now = utcnow_precise()
        provider = {
            "provider_status": result.provider_status,
            "provider_response": result.provider_response,
        }
        with transaction(self._engine, write=True) as conn:
            if result.outcome is Outcome.SENT:
                repository.mark_sent(
                    conn, row.id, now, provider_message_id=result.provider_message_id, **provider
                )
            elif result.outcome is Outcome.RETRY and now < _as_naive(row.expires_at):
                repository.mark_retry(
                    conn,
                    row.id,
                    now,
                    now + backoff(row.attempts),
                    error_message=result.error_message,
                    **provider,
                )
            else:
                message = result.error_message
                if result.outcome is Outcome.RETRY:
                    message = f"TTL expired after {row.attempts} attempts; last: {message}"
                repository.mark_failed(
                    conn,
                    row.id,
                    now,
                    provider_message_id=result.provider_message_id,
                    error_message=message,
                    **provider,
                )
                if result.unregistered and row.binding_id is not None:
                    repository.delete_binding(conn, row.binding_id)
        if not row.reported:  # a callback is owed for this row: report it soon
            self._callbacks.wake()


def _as_naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None)
