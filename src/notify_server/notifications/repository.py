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
    func,
    insert,
    literal,
    select,
    update,
)

from notify_server.accounts.models import Account
from notify_server.bindings import repository as bindings_repository
from notify_server.notifications.models import FRESH, Delivery, Notification
from notify_server.paging import keyset
from notify_server.services.models import Service

notifications = cast(Table, Notification.__table__)
deliveries = cast(Table, Delivery.__table__)
bindings = bindings_repository.bindings
services = cast(Table, Service.__table__)
accounts = cast(Table, Account.__table__)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
FINAL = (SENT, FAILED)

_FAN_OUT_COLUMNS = (
    "notification_id", "service_id", "binding_id", "binding_sid", "identity", "binding_type",
    "address", "credential_sid", "status", "attempts", "next_attempt_at", "expires_at",
    "reported", "date_created", "date_updated", "fair_key",
)  # fmt: skip

# Fair delivery across accounts (start-time fair queueing, one flow per account): an
# account's new rows get consecutive keys from max(its own clock, the queue's head). The head
# is the lowest key still waiting; with nothing waiting, every clock is behind it.
_ACCOUNT_CLOCK = (
    select(accounts.c.fair_clock)
    .where(accounts.c.sid == bindparam("account_sid"))
    .with_for_update()
)
_QUEUE_HEAD = select(func.min(deliveries.c.fair_key)).where(FRESH)
_LATEST_CLOCK = select(func.max(accounts.c.fair_clock))
_ADVANCE_CLOCK = (
    update(accounts)
    .where(accounts.c.sid == bindparam("account_sid"))
    .values(fair_clock=bindparam("end"))
)


def fair_start(conn: Connection, account_sid: str) -> int:
    """Where the account's next rows start in the queue. Locks the account's row on
    PostgreSQL until the transaction ends, so its notifications queue one after another."""
    clock = conn.execute(_ACCOUNT_CLOCK, {"account_sid": account_sid}).scalar_one_or_none() or 0
    head = conn.execute(_QUEUE_HEAD).scalar()
    if head is None:
        head = conn.execute(_LATEST_CLOCK).scalar() or 0
    return max(clock, head)


def advance_fair_clock(conn: Connection, account_sid: str, end: int) -> None:
    conn.execute(_ADVANCE_CLOCK, {"account_sid": account_sid, "end": end})


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
    fair_start: int,
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
        literal(fair_start) + func.row_number().over(),
    ).where(and_(*conditions))
    statement = insert(deliveries).from_select(_FAN_OUT_COLUMNS, matching)
    # Without preserve_rowcount SQLAlchemy 2.1 reports -1 for an INSERT ... SELECT on psycopg.
    result = conn.execute(statement.execution_options(preserve_rowcount=True))
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
    fair_start: int,
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
            "fair_key": fair_start + position,
        }
        for position, (binding_type, address) in enumerate(targets, 1)
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
