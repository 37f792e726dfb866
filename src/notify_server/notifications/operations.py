"""Twilio's CreateNotification, and our extensions: the notification list, one
notification with its delivery summary, and the Deliveries listing."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import orjson
from cryptography.fernet import InvalidToken
from sqlalchemy import Connection, Row

from notify_server.bindings.operations import split_tags
from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.delivery.channels import CredentialSecrets, Job
from notify_server.delivery.rendering import provider_request
from notify_server.errors import NotFound
from notify_server.notifications import repository
from notify_server.notifications.schemas import (
    DELIVERY_STATUSES,
    DeliveryListQuery,
    NotificationForm,
    NotificationListQuery,
)
from notify_server.paging import Page, fetch_page
from notify_server.services.operations import get_service
from notify_server.wire import new_sid, utcnow


@dataclass(frozen=True)
class NotificationRecord:
    sid: str
    account_sid: str
    service_sid: str
    date_created: datetime
    content: dict[str, Any]
    deliveries: int  # outbox rows written so far
    expanding: bool  # whether workers still have targets to write


def create_notification(
    conn: Connection,
    account_sid: str,
    service_sid: str,
    form: NotificationForm,
    chunk_size: int,
) -> NotificationRecord:
    """Store the notification and its outbox; workers deliver later.

    A query notification targets the service's bindings with any of the identities and all
    of the tags; an identity with no bindings is not an error. Segments (a resource Twilio
    removed in 2018) match no binding. Its first `chunk_size` targets are written here;
    when more match, an expansion record leaves the rest to the workers (delivery/expansion.py),
    so the 201 never waits on a large fan-out.
    """
    service = get_service(conn, account_sid, service_sid)
    targets = form.targets()
    now = utcnow()
    content = form.content()
    sid = new_sid("NT")
    callback_url = _callback_url(service, form)
    # Without a callback URL there is nothing to report: rows are born reported.
    reported = callback_url is None
    notification_id = repository.insert_notification(
        conn,
        {
            "sid": sid,
            "account_sid": account_sid,
            "service_id": service.id,
            "content": content,
            "delivery_callback_url": callback_url,
            "callback_sequence": 0,
            "date_created": now,
        },
    )
    expires_at = now + timedelta(seconds=form.ttl)
    count, expanding = 0, False
    if targets:
        fair_start = repository.fair_start(conn, account_sid)
        count = repository.fan_out_to_addresses(
            conn,
            notification_id,
            service.id,
            [(t.binding_type, t.address) for t in targets],
            now=now,
            expires_at=expires_at,
            reported=reported,
            fair_start=fair_start,
        )
        repository.advance_fair_clock(conn, account_sid, fair_start + count)
    elif form.identities or form.tags:
        binding_types, stored_tags = split_tags(form.tags)
        query = repository.Query(service.id, form.identities, stored_tags, binding_types)
        # Bindings made after the 201 are not targets, as when all were written at once.
        last_binding_id = repository.newest_binding_id(conn)
        count, after_binding_id = repository.write_chunk(
            conn,
            notification_id,
            account_sid,
            query,
            after_binding_id=0,
            last_binding_id=last_binding_id,
            limit=chunk_size,
            now=now,
            expires_at=expires_at,
            reported=reported,
        )
        expanding = after_binding_id is not None
        if expanding:
            repository.insert_expansion(
                conn,
                {
                    "notification_id": notification_id,
                    "account_sid": account_sid,
                    "service_id": service.id,
                    "identities": orjson.dumps(form.identities).decode(),
                    "tags": orjson.dumps(stored_tags).decode(),
                    "binding_types": orjson.dumps(binding_types).decode(),
                    "after_binding_id": after_binding_id,
                    "last_binding_id": last_binding_id,
                    "expires_at": expires_at,
                    "reported": reported,
                    "advanced_at": now,
                },
            )
    return NotificationRecord(sid, account_sid, service_sid, now, content, count, expanding)


def _callback_url(service: Row, form: NotificationForm) -> str | None:
    # The request's URL wins; else the service's, when the service enabled callbacks.
    if form.delivery_callback_url:
        return form.delivery_callback_url
    if service.delivery_callback_enabled and service.delivery_callback_url:
        return str(service.delivery_callback_url)
    return None


@dataclass(frozen=True)
class StoredNotification:
    """A notification as listed and fetched; `delivery_summary` (its deliveries counted per
    status) only when fetched alone."""

    id: int
    sid: str
    account_sid: str
    service_sid: str
    date_created: datetime
    content: dict[str, Any]
    delivery_summary: dict[str, int] | None = None


def _stored(row: Row, delivery_summary: dict[str, int] | None = None) -> StoredNotification:
    return StoredNotification(
        row.id,
        row.sid,
        row.account_sid,
        row.service_sid,
        row.date_created,
        orjson.loads(row.content),
        delivery_summary,
    )


def _day_start(day: date | None, days_later: int = 0) -> datetime | None:
    return None if day is None else datetime.combine(day + timedelta(days=days_later), time.min)


def list_notifications(
    conn: Connection, account_sid: str, service_sid: str, query: NotificationListQuery
) -> Page[StoredNotification]:
    """The service's notifications newest first; StartDate and EndDate are UTC days, both
    inclusive, as the Bindings list's."""
    service = get_service(conn, account_sid, service_sid)
    start, end = _day_start(query.start_date), _day_start(query.end_date, days_later=1)
    page = fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.notifications_page(
            conn,
            service.id,
            start=start,
            end=end,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        ),
        descending=True,
    )
    return Page([_stored(row) for row in page.items], page.next_token, page.previous_token)


def get_notification(
    conn: Connection, account_sid: str, service_sid: str, sid: str
) -> StoredNotification:
    service = get_service(conn, account_sid, service_sid)
    row = repository.notification(conn, account_sid, service.id, sid)
    if row is None:
        raise NotFound()
    counts = repository.status_counts(conn, row.id)
    return _stored(row, {status: counts.get(status, 0) for status in DELIVERY_STATUSES})


@dataclass(frozen=True)
class DeliveryRecord:
    """One outbox row as the Deliveries listing shows it."""

    id: int
    notification_sid: str
    binding_sid: str | None
    identity: str | None
    binding_type: str
    address: str
    status: str
    attempts: int
    provider_message_id: str | None
    provider_status: int | None
    provider_response: str | None
    error_message: str | None
    callback_error: str | None
    date_created: datetime
    date_updated: datetime
    provider_request: dict[str, Any]


def list_deliveries(
    conn: Connection,
    account_sid: str,
    service_sid: str,
    sid: str,
    query: DeliveryListQuery,
    settings: Settings,
    box: SecretBox,
) -> Page[DeliveryRecord]:
    """The notification's deliveries in the order they were written, each with the request
    its provider received or would receive (rendered with the credential as it is now)."""
    service = get_service(conn, account_sid, service_sid)
    notification = repository.notification(conn, account_sid, service.id, sid)
    if notification is None:
        raise NotFound()
    page = fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.deliveries_page(
            conn,
            notification.id,
            status=query.status,
            binding_type=query.binding_type,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        ),
    )
    credentials = _credentials(
        conn, account_sid, {row.sending_credential_sid for row in page.items}, box
    )
    content = orjson.loads(notification.content)
    records = []
    for row in page.items:
        job = Job(
            delivery_id=row.id,
            attempt=row.attempts,
            binding_type=row.binding_type,
            address=row.address,
            identity=row.identity,
            binding_sid=row.binding_sid,
            expires_at=row.expires_at,
            notification_sid=notification.sid,
            account_sid=account_sid,
            service_sid=service.sid,
            messaging_service_sid=service.messaging_service_sid,
            content=content,
            credential=credentials.get(row.sending_credential_sid),
        )
        records.append(_delivery_record(row, provider_request(job, settings)))
    return Page(records, page.next_token, page.previous_token)


def _credentials(
    conn: Connection, account_sid: str, sids: set[str | None], box: SecretBox
) -> dict[str | None, CredentialSecrets]:
    """The credentials the rows are sent with, as the worker opens them (a deleted one is
    none: the worker sends those rows to the log channel)."""
    wanted: Sequence[str] = sorted(sid for sid in sids if sid)
    opened = {}
    for row in repository.credentials_by_sid(conn, account_sid, wanted):
        try:
            secrets = box.open(row.encrypted_secrets) if row.encrypted_secrets else {}
        except InvalidToken:  # sealed with another key: the worker cannot send with it either
            secrets = {}
        opened[row.sid] = CredentialSecrets(row.sid, row.type, bool(row.sandbox), secrets)
    return opened


def _delivery_record(row: Row, rendered: dict[str, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        notification_sid=row.notification_sid,
        binding_sid=row.binding_sid,
        identity=row.identity,
        binding_type=row.binding_type,
        address=row.address,
        status=row.status,
        attempts=row.attempts,
        provider_message_id=row.provider_message_id,
        provider_status=row.provider_status,
        provider_response=row.provider_response,
        error_message=row.error_message,
        callback_error=row.callback_error,
        date_created=row.date_created,
        date_updated=row.date_updated,
        provider_request=rendered,
    )
