"""Delivery callbacks, as Twilio sent them: batches of at most 1000 delivery states POSTed to
the notification's DeliveryCallbackUrl, signed with X-Twilio-Signature."""

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta

import httpx
import orjson
from sqlalchemy import Engine, Row

from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.db import transaction
from notify_server.delivery import repository
from notify_server.notifications.repository import SENT
from notify_server.wire import utcnow

log = logging.getLogger("notify_server.delivery")

_LEASE = timedelta(seconds=60)
_RETRY_AFTER = timedelta(seconds=30)
_NOTIFICATIONS_PER_ROUND = 20


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
    def __init__(self, engine: Engine, settings: Settings, box: SecretBox) -> None:
        self._engine = engine
        self._box = box
        self._batch_size = settings.callback_batch_size
        self._check_every = max(settings.worker_poll_seconds * 4, 1.0)
        self._next_check = 0.0
        self._due = True
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        self._due = True

    async def report_due(self) -> None:
        # Rows finished by other processes are found by the periodic check.
        if not self._due and time.monotonic() < self._next_check:
            return
        self._due = False
        self._next_check = time.monotonic() + self._check_every
        with self._engine.connect() as conn:
            notification_ids = repository.notifications_to_report(
                conn, utcnow(), _NOTIFICATIONS_PER_ROUND
            )
        for notification_id in notification_ids:
            try:
                await self._report(notification_id)
            except Exception:
                log.exception("delivery callback for notification %s failed", notification_id)

    async def _report(self, notification_id: int) -> None:
        now = utcnow()
        with transaction(self._engine, write=True) as conn:
            if not repository.lease_callback(conn, notification_id, now, now + _LEASE):
                return
            notification, rows, is_final = repository.callback_batch(
                conn, notification_id, self._batch_size
            )
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
        delivered = await self._post(url, params, notification.auth_token_sealed)
        with transaction(self._engine, write=True) as conn:
            if delivered:
                repository.finish_callback(
                    conn,
                    notification_id,
                    [row.id for row in rows],
                    next_sequence=sequence + 1,
                    release_at=None,
                )
            else:
                repository.finish_callback(
                    conn, notification_id, [], next_sequence=sequence, release_at=now + _RETRY_AFTER
                )
        if delivered and not is_final:
            self._due = True

    async def _post(self, url: str, params: dict[str, list[str]], sealed_token: str | None) -> bool:
        headers = {}
        if sealed_token:
            headers["X-Twilio-Signature"] = twilio_signature(
                url, params, self._box.open(sealed_token)["auth_token"]
            )
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        try:
            response = await self._client.post(url, data=params, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("delivery callback to %s failed: %r", url, exc)
            return False
        if not response.is_success:
            log.warning("delivery callback to %s answered %s", url, response.status_code)
        return response.is_success

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
