"""Every SQL statement on notifications and the delivery outbox. Flushes, never commits."""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Row,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)

from notify_server.accounts.models import Account
from notify_server.bindings import repository as bindings_repository
from notify_server.credentials.models import Credential
from notify_server.db import Prepared
from notify_server.notifications.models import FRESH, Delivery, Expansion, Notification
from notify_server.paging import keyset
from notify_server.services.models import Service

notifications = cast(Table, Notification.__table__)
deliveries = cast(Table, Delivery.__table__)
bindings = bindings_repository.bindings
binding_tags = bindings_repository.binding_tags
expansions = cast(Table, Expansion.__table__)
services = cast(Table, Service.__table__)
accounts = cast(Table, Account.__table__)
credentials = cast(Table, Credential.__table__)

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
# ORDER BY ... LIMIT 1, not min(): PostgreSQL's plan for min() read every waiting row of the
# partial index, a scan per chunk that grows with the fan-out being written.
_QUEUE_HEAD = select(deliveries.c.fair_key).where(FRESH).order_by(deliveries.c.fair_key).limit(1)
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


@dataclass(frozen=True)
class Query:
    """What a query notification targets: the service's bindings with any of the identities,
    all of the tags (stored tags, not `all` or type names) and all of the binding types."""

    service_id: int
    identities: Sequence[str] = ()
    tags: Sequence[str] = ()
    binding_types: Sequence[str] = ()


def newest_binding_id(conn: Connection) -> int:
    return conn.execute(select(func.max(bindings.c.id))).scalar() or 0


def write_chunk(
    conn: Connection,
    notification_id: int,
    account_sid: str,
    query: Query,
    *,
    after_binding_id: int,
    last_binding_id: int,
    limit: int,
    now: datetime,
    expires_at: datetime,
    reported: bool,
) -> tuple[int, int]:
    """Outbox rows for the next `limit` matching bindings in id order, queued at the
    account's place in the fair queue: (rows written, the last binding id written)."""
    start = fair_start(conn, account_sid)
    params = {
        "notification_id": notification_id,
        "service_id": query.service_id,
        "after": after_binding_id,
        "last": last_binding_id,
        "limit": limit,
        "offset": 0,
        "now": now,
        "expires_at": expires_at,
        "reported": reported,
        "fair_start": start,
        **{f"identity_{i}": v for i, v in enumerate(query.identities)},
        **{f"tag_{i}": v for i, v in enumerate(query.tags)},
        **{f"binding_type_{i}": v for i, v in enumerate(query.binding_types)},
    }
    statement = _chunk_statement(len(query.identities), len(query.tags), len(query.binding_types))
    written = [row[0] for row in statement.execute(conn, params).fetchall()]
    if written:
        advance_fair_clock(conn, account_sid, start + len(written))
    return len(written), max(written, default=after_binding_id)


@functools.cache
def _chunk_statement(identities: int, tags: int, binding_types: int) -> Prepared:
    """One chunk's INSERT ... SELECT ... RETURNING, per shape of query. Prepared: a chunk
    rebuilt as Core each time spent more of the GIL on SQLAlchemy's cache keys and result rows
    than on anything else it does in Python."""
    conditions = [
        bindings.c.service_id == bindparam("service_id"),
        bindings.c.id > bindparam("after"),
        bindings.c.id <= bindparam("last"),
    ]
    if identities:
        conditions.append(
            bindings.c.identity.in_([bindparam(f"identity_{i}") for i in range(identities)])
        )
    conditions.extend(
        bindings.c.binding_type == bindparam(f"binding_type_{i}") for i in range(binding_types)
    )
    # EXISTS probes binding_tags' primary key per binding; an IN (subquery) let PostgreSQL
    # hash every tagged binding of the service again for each chunk.
    conditions.extend(
        select(binding_tags.c.binding_id)
        .where(
            binding_tags.c.binding_id == bindings.c.id,
            binding_tags.c.tag == bindparam(f"tag_{i}"),
        )
        .exists()
        for i in range(tags)
    )
    chunk = (
        select(
            bindings.c.id,
            bindings.c.service_id,
            bindings.c.sid,
            bindings.c.identity,
            bindings.c.binding_type,
            bindings.c.address,
            bindings.c.credential_sid,
        )
        .where(*conditions)
        .order_by(bindings.c.id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))  # SQLite's LIMIT comes with an OFFSET
        .subquery()
    )
    rows = select(
        bindparam("notification_id", type_=BigInteger),
        chunk.c.service_id,
        chunk.c.id,
        chunk.c.sid,
        chunk.c.identity,
        chunk.c.binding_type,
        chunk.c.address,
        chunk.c.credential_sid,
        literal_column(f"'{PENDING}'"),
        literal_column("0"),
        bindparam("now", type_=DateTime),
        bindparam("expires_at", type_=DateTime),
        bindparam("reported", type_=Boolean),
        bindparam("now", type_=DateTime),
        bindparam("now", type_=DateTime),
        bindparam("fair_start", type_=BigInteger) + func.row_number().over(order_by=chunk.c.id),
    )
    statement = (
        insert(deliveries).from_select(_FAN_OUT_COLUMNS, rows).returning(deliveries.c.binding_id)
    )
    return Prepared(statement)


def insert_expansion(conn: Connection, values: dict) -> None:
    conn.execute(insert(expansions), values)


_NEXT_EXPANSION = (
    select(expansions)
    .order_by(expansions.c.advanced_at, expansions.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)


def expand_next(conn: Connection, *, limit: int, now: datetime) -> int | None:
    """The next chunk of the expansion least recently advanced: the rows written, or None
    when no expansion waits. The cursor moves in the same transaction as the rows, so a
    crash between chunks neither loses nor doubles a target. On PostgreSQL the row lock
    (SKIP LOCKED) keeps two workers off the same expansion; SQLite has one writer anyway."""
    expansion = conn.execute(_NEXT_EXPANSION).first()
    if expansion is None:
        return None
    query = Query(
        expansion.service_id,
        orjson.loads(expansion.identities),
        orjson.loads(expansion.tags),
        orjson.loads(expansion.binding_types),
    )
    count, after = write_chunk(
        conn,
        expansion.notification_id,
        expansion.account_sid,
        query,
        after_binding_id=expansion.after_binding_id,
        last_binding_id=expansion.last_binding_id,
        limit=limit,
        now=now,
        expires_at=expansion.expires_at,
        reported=expansion.reported,
    )
    this = expansions.c.id == expansion.id
    if count < limit:
        conn.execute(delete(expansions).where(this))
    else:
        conn.execute(update(expansions).where(this).values(after_binding_id=after, advanced_at=now))
    return count


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


_NOTIFICATION_COLUMNS = (
    notifications.c.id,
    notifications.c.sid,
    notifications.c.account_sid,
    services.c.sid.label("service_sid"),
    notifications.c.date_created,
    notifications.c.content,
)
# The account and the service in the same condition: another account's notification is as
# unknown as a made-up one.
_NOTIFICATION = (
    select(*_NOTIFICATION_COLUMNS)
    .join(services, services.c.id == notifications.c.service_id)
    .where(
        services.c.account_sid == bindparam("account_sid"),
        services.c.id == bindparam("service_id"),
        notifications.c.sid == bindparam("sid"),
    )
)


def notification(conn: Connection, account_sid: str, service_id: int, sid: str) -> Row | None:
    params = {"account_sid": account_sid, "service_id": service_id, "sid": sid}
    return conn.execute(_NOTIFICATION, params).first()


def notifications_page(
    conn: Connection,
    service_id: int,
    *,
    start: datetime | None,
    end: datetime | None,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    """A service's notifications newest first (by id: the order they were created in),
    created at or after `start` and before `end`."""
    conditions = [notifications.c.service_id == service_id]
    if start is not None:
        conditions.append(notifications.c.date_created >= start)
    if end is not None:
        conditions.append(notifications.c.date_created < end)
    bounds, order = keyset(notifications.c.id, after_id, before_id, descending=True)
    statement = (
        select(*_NOTIFICATION_COLUMNS)
        .join(services, services.c.id == notifications.c.service_id)
        .where(*conditions, *bounds)
        .order_by(order)
        .limit(limit)
    )
    return list(conn.execute(statement))


def status_counts(conn: Connection, notification_id: int) -> dict[str, int]:
    statement = (
        select(deliveries.c.status, func.count())
        .where(deliveries.c.notification_id == notification_id)
        .group_by(deliveries.c.status)
    )
    return {status: count for status, count in conn.execute(statement)}


def service_credential_for(binding_type: ColumnElement[str]) -> ColumnElement[str | None]:
    """The service's credential for a binding type (a binding's own CredentialSid wins over
    it). GCM bindings are delivered through FCM: a service with only an FCM credential serves
    both."""
    return case(
        (binding_type == "apn", services.c.apn_credential_sid),
        (binding_type == "fcm", services.c.fcm_credential_sid),
        (
            binding_type == "gcm",
            func.coalesce(services.c.gcm_credential_sid, services.c.fcm_credential_sid),
        ),
        else_=None,
    )


def deliveries_page(
    conn: Connection,
    notification_id: int,
    *,
    status: str | None = None,
    binding_type: str | None = None,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    conditions = [deliveries.c.notification_id == notification_id]
    if status is not None:
        conditions.append(deliveries.c.status == status)
    if binding_type is not None:
        conditions.append(deliveries.c.binding_type == binding_type)
    bounds, order = keyset(deliveries.c.id, after_id, before_id)
    conditions.extend(bounds)
    statement = (
        select(
            deliveries,
            notifications.c.sid.label("notification_sid"),
            # The credential a worker sends this row with (delivery/repository.py's _JOBS).
            func.coalesce(
                deliveries.c.credential_sid, service_credential_for(deliveries.c.binding_type)
            ).label("sending_credential_sid"),
        )
        .join(notifications, notifications.c.id == deliveries.c.notification_id)
        .join(services, services.c.id == deliveries.c.service_id)
        .where(*conditions)
        .order_by(order)
        .limit(limit)
    )
    return list(conn.execute(statement))


_CREDENTIALS = select(
    credentials.c.sid, credentials.c.type, credentials.c.sandbox, credentials.c.encrypted_secrets
).where(
    credentials.c.account_sid == bindparam("account_sid"),
    credentials.c.sid.in_(bindparam("sids", expanding=True)),
)


def credentials_by_sid(conn: Connection, account_sid: str, sids: Sequence[str]) -> list[Row]:
    """The account's own credentials among `sids` (a row may name another account's: never)."""
    if not sids:
        return []
    return list(conn.execute(_CREDENTIALS, {"account_sid": account_sid, "sids": list(sids)}))
