"""Twilio's CreateNotification, and our Deliveries listing."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row

from notify_server.bindings import repository as bindings
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
    deliveries: int


def create_notification(
    conn: Connection, account_sid: str, service_sid: str, form: NotificationForm
) -> NotificationRecord:
    """Store the notification and its outbox in one transaction; workers deliver later.

    A query notification targets the service's bindings with any of the identities and all
    of the tags; an identity with no bindings is not an error. Segments (a resource Twilio
    removed in 2018) match no binding.
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
    fair_start = repository.fair_start(conn, account_sid)
    if targets:
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
    elif form.identities or form.tags:
        binding_types, stored_tags = split_tags(form.tags)
        conditions = bindings.matching(
            service.id,
            identities=form.identities,
            tags=stored_tags,
            binding_types=binding_types,
        )
        count = repository.fan_out_to_bindings(
            conn,
            notification_id,
            conditions,
            now=now,
            expires_at=expires_at,
            reported=reported,
            fair_start=fair_start,
        )
    else:
        count = 0
    if count:
        repository.advance_fair_clock(conn, account_sid, fair_start + count)
    return NotificationRecord(sid, account_sid, service_sid, now, content, count)


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
