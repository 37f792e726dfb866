"""Every SQL statement on notifications and the delivery outbox. Flushes, never commits."""

from collections.abc import Sequence
from datetime import datetime
from typing import cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    insert,
    literal,
    select,
)

from notify_server.bindings import repository as bindings_repository
from notify_server.notifications.models import Delivery, Notification
from notify_server.paging import keyset
from notify_server.services.models import Service

notifications = cast(Table, Notification.__table__)
deliveries = cast(Table, Delivery.__table__)
bindings = bindings_repository.bindings
services = cast(Table, Service.__table__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
FINAL = (SENT, FAILED)

_FAN_OUT_COLUMNS = (
    "notification_id", "service_id", "binding_id", "binding_sid", "identity", "binding_type",
    "address", "credential_sid", "status", "attempts", "next_attempt_at", "expires_at",
    "reported", "date_created", "date_updated",
)  # fmt: skip


def insert_notification(conn: Connection, values: dict) -> int:
    params = {**values, "content": orjson.dumps(values["content"]).decode()}
    statement = insert(notifications).values(**params).returning(notifications.c.id)
    return conn.execute(statement).scalar_one()


def fan_out_to_bindings(
    conn: Connection,
    notification_id: int,
    conditions: Sequence[ColumnElement[bool]],
    *,
    now: datetime,
    expires_at: datetime,
    reported: bool,
) -> int:
    """One outbox row per matching binding, in a single INSERT ... SELECT."""
    matching = select(
        literal(notification_id),
        bindings.c.service_id,
        bindings.c.id,
        bindings.c.sid,
        bindings.c.identity,
        bindings.c.binding_type,
        bindings.c.address,
        bindings.c.credential_sid,
        literal(PENDING),
        literal(0),
        literal(now),
        literal(expires_at),
        literal(reported),
        literal(now),
        literal(now),
    ).where(and_(*conditions))
    result = conn.execute(insert(deliveries).from_select(_FAN_OUT_COLUMNS, matching))
    return result.rowcount


def fan_out_to_addresses(
    conn: Connection,
    notification_id: int,
    service_id: int,
    targets: Sequence[tuple[str, str]],
    *,
    now: datetime,
    expires_at: datetime,
    reported: bool,
) -> int:
    """One outbox row per ToBinding (binding type, address)."""
    if not targets:
        return 0
    rows = [
        {
            "notification_id": notification_id,
            "service_id": service_id,
            "binding_id": None,
            "binding_sid": None,
            "identity": None,
            "binding_type": binding_type,
            "address": address,
            "credential_sid": None,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "expires_at": expires_at,
            "reported": reported,
            "date_created": now,
            "date_updated": now,
        }
        for binding_type, address in targets
    ]
    conn.execute(insert(deliveries), rows)
    return len(rows)


_NOTIFICATION_BY_SID = (
    select(notifications.c.id, notifications.c.sid)
    .join(services, services.c.id == notifications.c.service_id)
    .where(
        services.c.account_sid == bindparam("account_sid"),
        services.c.sid == bindparam("service_sid"),
        notifications.c.sid == bindparam("sid"),
    )
)


def notification_id(conn: Connection, account_sid: str, service_sid: str, sid: str) -> int | None:
    params = {"account_sid": account_sid, "service_sid": service_sid, "sid": sid}
    row = conn.execute(_NOTIFICATION_BY_SID, params).first()
    return None if row is None else row.id


def deliveries_page(
    conn: Connection,
    notification_id: int,
    *,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    conditions = [deliveries.c.notification_id == notification_id]
    bounds, order = keyset(deliveries.c.id, after_id, before_id)
    conditions.extend(bounds)
    statement = (
        select(deliveries, notifications.c.sid.label("notification_sid"))
        .join(notifications, notifications.c.id == deliveries.c.notification_id)
        .where(*conditions)
        .order_by(order)
        .limit(limit)
    )
    return list(conn.execute(statement))
