"""Delivery callbacks, as Twilio sent them: batches of at most 1000 delivery states POSTed to
the notification's DeliveryCallbackUrl, signed with X-Twilio-Signature.

Callback URLs are the tenant's: they go through the outbound policy, and they are sent from a
task of their own, concurrently, at most `callback_concurrency` at once and
`callback_concurrency_per_host` per destination, each with a short timeout, so a slow or dead
endpoint delays only the callbacks that go to it, never delivery."""

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta

import httpx
import orjson
from sqlalchemy import Connection, Row

from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.db import Database
from notify_server.delivery import repository
from notify_server.logs import RetryLog
from notify_server.notifications.repository import SENT
from notify_server.outbound import DestinationRefused, OutboundPolicy
from notify_server.wire import utcnow

log = logging.getLogger("notify_server.delivery")

_LEASE = timedelta(seconds=60)
_RETRY_AFTER = timedelta(seconds=30)
# A notification whose destination already has its share of connections waits this long, so
# the next round looks past it at other destinations.
_HOST_BUSY_DELAY = timedelta(seconds=2)


def twilio_signature(url: str, params: Mapping[str, Sequence[str]], auth_token: str) -> str:
    """Twilio's webhook signature: HMAC-SHA1 over the URL and the sorted name+value pairs."""
    payload = url
    for name in sorted(params):
        for value in sorted(set(params[name])):
            payload += name + value
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def delivery_state(row: Row) -> str:
    # Twilio documents `sid` (the provider's message id) and `status` (SENT or FAILED);
    # the rest say which target this was.
    return orjson.dumps(
        {
            "sid": row.provider_message_id,
            "status": "SENT" if row.status == SENT else "FAILED",
            "binding_sid": row.binding_sid,
            "binding_type": row.binding_type,
            "identity": row.identity,
            "address": row.address,
            "error_message": row.error_message,
        }
    ).decode()


class CallbackReporter:
    def __init__(
        self, database: Database, settings: Settings, box: SecretBox, policy: OutboundPolicy
    ) -> None:
        self._database = database
        self._box = box
        self._policy = policy
        self._batch_size = settings.callback_batch_size
        self._timeout = settings.callback_timeout_seconds
        self._total = settings.callback_concurrency
        self._per_host = settings.callback_concurrency_per_host
        # Rows finished by other processes are found by this periodic check.
        self._check_every = max(settings.worker_poll_seconds * 4, 1.0)
        self._wake_event = asyncio.Event()
        self._retries = RetryLog(log)
        self._stopping = False
        self._client: httpx.AsyncClient | None = None
        # notification id -> the task reporting it; and how many go to each destination.
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._hosts: Counter[str] = Counter()

    def wake(self) -> None:
        self._wake_event.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake_event.clear()
            try:
                await self._start_due()
            except Exception as error:
                self._retries.failed("looking for delivery callbacks to send", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), self._check_every)

    async def stop(self, timeout: float) -> None:
        """What is still in flight is cut off: its lease runs out and it is sent again."""
        self._stopping = True
        self.wake()
        if self._in_flight:
            await asyncio.wait(self._in_flight.values(), timeout=min(timeout, 1.0))
        for task in self._in_flight.values():
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    async def _start_due(self) -> None:
        free = self._total - len(self._in_flight)
        if free <= 0:
            return
        now = utcnow()
        due = await self._database.read(
            functools.partial(repository.notifications_to_report, now=now, limit=free * 4)
        )
        busy: list[int] = []
        for notification_id, url in due:
            if notification_id in self._in_flight:
                continue
            if len(self._in_flight) >= self._total:
                break
            host = _destination(url)
            if self._hosts[host] >= self._per_host:
                busy.append(notification_id)
                continue
            self._hosts[host] += 1
            task = asyncio.create_task(self._report(notification_id))
            self._in_flight[notification_id] = task
            task.add_done_callback(functools.partial(self._finished, notification_id, host))
        if busy:
            await self._database.transaction(
                functools.partial(
                    repository.postpone_callbacks,
                    notification_ids=busy,
                    now=now,
                    until=now + _HOST_BUSY_DELAY,
                )
            )

    def _finished(self, notification_id: int, host: str, _task: "asyncio.Task[None]") -> None:
        self._in_flight.pop(notification_id, None)
        self._hosts[host] -= 1
        if self._hosts[host] <= 0:
            del self._hosts[host]
        self.wake()

    async def _report(self, notification_id: int) -> None:
        try:
            await self._send_batch(notification_id)
        except Exception:
            log.exception("delivery callback for notification %s failed", notification_id)

    async def _send_batch(self, notification_id: int) -> None:
        now = utcnow()

        def lease_and_read(conn: Connection) -> tuple[Row, list[Row], bool] | None:
            if not repository.lease_callback(conn, notification_id, now, now + _LEASE):
                return None
            return repository.callback_batch(conn, notification_id, self._batch_size)

        leased = await self._database.transaction(lease_and_read)
        if leased is None:
            return
        notification, rows, is_final = leased
        sequence = notification.callback_sequence
        params: dict[str, list[str]] = {
            "NotificationSid": [notification.sid],
            "AccountSid": [notification.account_sid],
            "ServiceSid": [notification.service_sid],
            "Count": [str(len(rows))],
            "SequenceId": [str(sequence)],
            "IsFinal": ["true" if is_final else "false"],
            "DeliveryState": [delivery_state(row) for row in rows],
        }
        url = notification.delivery_callback_url
        refusal = None
        try:
            delivered = await self._post(url, params, notification.auth_token_sealed)
        except DestinationRefused as error:
            # Retrying cannot make the destination acceptable: say why, on every row.
            refusal = f"delivery callback not sent: {error}"
            log.warning("%s (notification %s)", refusal, notification.sid)
            delivered = False
        if delivered or refusal:
            finish = functools.partial(
                repository.finish_callback,
                notification_id=notification_id,
                delivery_ids=[row.id for row in rows],
                next_sequence=sequence + 1 if delivered else sequence,
                release_at=None,
                error=refusal,
            )
        else:
            finish = functools.partial(
                repository.finish_callback,
                notification_id=notification_id,
                delivery_ids=[],
                next_sequence=sequence,
                release_at=now + _RETRY_AFTER,
            )
        await self._database.transaction(finish)
        if (delivered or refusal) and not is_final:
            self.wake()

    async def _post(self, url: str, params: dict[str, list[str]], sealed_token: str | None) -> bool:
        """Whether the endpoint accepted the batch; DestinationRefused if it may not be called."""
        self._policy.check_url(url)
        headers = {}
        if sealed_token:
            headers["X-Twilio-Signature"] = twilio_signature(
                url, params, self._box.open(sealed_token)["auth_token"]
            )
        if self._client is None:
            self._client = self._policy.client(
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 3.0)),
                limits=httpx.Limits(max_connections=self._total, max_keepalive_connections=8),
            )
        host = _destination(url)
        try:
            # The whole exchange, not each read: a trickling endpoint must not hold a slot.
            response = await asyncio.wait_for(
                self._client.post(url, data=params, headers=headers), self._timeout
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            # The host only: a URL's path or query may carry the tenant's own secrets.
            log.warning("delivery callback to %s failed: %s", host, type(exc).__name__)
            return False
        if not response.is_success:
            log.warning("delivery callback to %s answered %s", host, response.status_code)
        return response.is_success


def _destination(url: str) -> str:
    """What the per-destination limit counts: scheme, host and port."""
    try:
        parsed = httpx.URL(url)
        # The encoded host: decoding IDNA can fail, and a stored URL (imported, or kept from
        # before a check) is not known to be valid. check_url refuses it when it is sent.
        host = parsed.raw_host.decode("ascii", "replace")
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    return f"{parsed.scheme}://{host}:{parsed.port or ''}"
