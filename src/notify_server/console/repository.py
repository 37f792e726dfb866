"""The statements behind the console's live view: a cheap fingerprint of what a page shows,
polled by its event stream. Flushes nothing, writes nothing."""

import hashlib
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Connection, Table, bindparam, func, select

from notify_server.notifications.models import Delivery, Notification

notifications = cast(Table, Notification.__table__)
deliveries = cast(Table, Delivery.__table__)

# As many notifications as the console's list shows: their deliveries' states are on the page.
WATCHED_NOTIFICATIONS = 50

_NEWEST_NOTIFICATION = select(func.max(notifications.c.id)).where(
    notifications.c.service_id == bindparam("service_id")
)
_NEWEST_IDS = (
    select(notifications.c.id)
    .where(notifications.c.service_id == bindparam("service_id"))
    .order_by(notifications.c.id.desc())
    .limit(WATCHED_NOTIFICATIONS)
    .scalar_subquery()
)
_STATES = (deliveries.c.status, func.count(), func.sum(deliveries.c.attempts))
_SERVICE_DELIVERY_STATES = (
    select(*_STATES)
    .where(deliveries.c.notification_id.in_(_NEWEST_IDS))
    .group_by(deliveries.c.status)
    .order_by(deliveries.c.status)
)
_NOTIFICATION_DELIVERY_STATES = (
    select(*_STATES, func.max(deliveries.c.date_updated))
    .where(deliveries.c.notification_id == bindparam("notification_id"))
    .group_by(deliveries.c.status)
    .order_by(deliveries.c.status)
)


def delivery_summaries(
    conn: Connection, notification_ids: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Each notification's deliveries counted per status, in one statement."""
    if not notification_ids:
        return {}
    statement = (
        select(deliveries.c.notification_id, deliveries.c.status, func.count())
        .where(deliveries.c.notification_id.in_(notification_ids))
        .group_by(deliveries.c.notification_id, deliveries.c.status)
    )
    summaries: dict[int, dict[str, int]] = {}
    for notification_id, status, count in conn.execute(statement):
        summaries.setdefault(notification_id, {})[status] = count
    return summaries


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def service_stamp(conn: Connection, service_id: int) -> str:
    """Changes when the service gets a notification or a recent one's delivery moves on."""
    params = {"service_id": service_id}
    newest = conn.execute(_NEWEST_NOTIFICATION, params).scalar()
    states = [tuple(row) for row in conn.execute(_SERVICE_DELIVERY_STATES, params)]
    return _digest(newest, states)


def notification_stamp(conn: Connection, notification_id: int) -> str:
    """Changes when one of the notification's deliveries is written or moves on."""
    rows = conn.execute(_NOTIFICATION_DELIVERY_STATES, {"notification_id": notification_id})
    return _digest([tuple(map(str, row)) for row in rows])
