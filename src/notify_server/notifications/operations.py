"""Twilio's CreateNotification, and our Deliveries listing."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row

from notify_server.bindings.operations import split_tags
from notify_server.errors import NotFound
from notify_server.forms import ListQuery
from notify_server.notifications import repository
from notify_server.notifications.schemas import NotificationForm
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


def list_deliveries(
    conn: Connection, account_sid: str, service_sid: str, sid: str, query: ListQuery
) -> Page[Row]:
    get_service(conn, account_sid, service_sid)
    notification_id = repository.notification_id(conn, account_sid, service_sid, sid)
    if notification_id is None:
        raise NotFound()
    return fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.deliveries_page(
            conn, notification_id, after_id=after_id, before_id=before_id, limit=limit
        ),
    )
