"""Every SQL statement on notifications and the delivery outbox. Flushes, never commits."""

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

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
from notify_server.db import Prepared, defer, send_together
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
# Prepared, as is every statement of an expansion's chunk: a chunk runs on the writer thread
# and holds the GIL for whatever it does in Python, SQLAlchemy's execution layer included.
_ACCOUNT_CLOCK = Prepared(
    select(accounts.c.fair_clock)
    .where(accounts.c.sid == bindparam("account_sid"))
    .with_for_update()
)
# ORDER BY ... LIMIT 1, not min(): PostgreSQL's plan for min() read every waiting row of the
# partial index, a scan per chunk that grows with the fan-out being written.
_QUEUE_HEAD = Prepared(
    select(deliveries.c.fair_key).where(FRESH).order_by(deliveries.c.fair_key).limit(1)
)
_LATEST_CLOCK = Prepared(select(func.max(accounts.c.fair_clock)))
_ADVANCE_CLOCK = Prepared(
    update(accounts)
    .where(accounts.c.sid == bindparam("account_sid"))
    .values(fair_clock=bindparam("end", type_=BigInteger))
)


def fair_start(conn: Connection, account_sid: str) -> int:
    """Where the account's next rows start in the queue. Locks the account's row on
    PostgreSQL until the transaction ends, so its notifications queue one after another."""
    clock, head = send_together(conn, _fair_start_reads(account_sid))
    return _fair_start(conn, clock.fetchone(), head.fetchone())


def _fair_start_reads(account_sid: str) -> list[tuple[Prepared, Mapping[str, Any]]]:
    return [(_ACCOUNT_CLOCK, {"account_sid": account_sid}), (_QUEUE_HEAD, {})]


def _fair_start(conn: Connection, clock: Any, head: Any) -> int:
    if head is None:  # nothing queued: after the latest start of any account
        head = _LATEST_CLOCK.one(conn)
    return max((clock and clock[0]) or 0, (head and head[0]) or 0)


def advance_fair_clock(conn: Connection, account_sid: str, end: int) -> None:
    """Sent with the COMMIT: nothing in the transaction reads the clock again."""
    defer(conn, _ADVANCE_CLOCK, [{"account_sid": account_sid, "end": end}])


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
    expires_at: datetime | str,
    reported: bool,
) -> tuple[int, int | None]:
    """Outbox rows for the next `limit` matching bindings in id order, queued at the
    account's place in the fair queue: (rows written, the binding id the next chunk starts
    after, or None when this was the last chunk).

    The chunk's end is looked up first (the `limit`-th matching binding), so the INSERT
    returns nothing: RETURNING a row per target made the driver build them in Python, on
    the writer thread, with the GIL. Whether more remain is the end's existence, not the
    count: a binding deleted meanwhile makes the chunk shorter, not the last."""
    shape = (len(query.identities), len(query.tags), len(query.binding_types))
    params = {
        "service_id": query.service_id,
        "after": after_binding_id,
        "last": last_binding_id,
        "offset": limit - 1,
        **{f"identity_{i}": v for i, v in enumerate(query.identities)},
        **{f"tag_{i}": v for i, v in enumerate(query.tags)},
        **{f"binding_type_{i}": v for i, v in enumerate(query.binding_types)},
    }
    # One round trip: the chunk's end and where its rows start in the queue.
    ends, clock, head = send_together(
        conn, [(_chunk_end_statement(*shape), params), *_fair_start_reads(account_sid)]
    )
    end = ends.fetchone()
    if end is not None:
        params["last"] = end[0]
    start = _fair_start(conn, clock.fetchone(), head.fetchone())
    params.update(
        notification_id=notification_id,
        now=now,
        expires_at=expires_at,
        reported=reported,
        fair_start=start,
    )
    written = _chunk_statement(*shape).execute(conn, params).rowcount
    if written:
        advance_fair_clock(conn, account_sid, start + written)
    return written, None if end is None else end[0]


def _matching(identities: int, tags: int, binding_types: int) -> list[ColumnElement[bool]]:
    """The bindings of a query, per shape, after `after` up to `last`."""
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
    # The chunk's range again inside EXISTS, which PostgreSQL does not infer: without it, it
    # hashed every tagged binding of the service for each chunk (100,000 rows a chunk,
    # 12 of its 14 ms at 100,000 bindings); with it, it reads the chunk's range of
    # binding_tags' primary key alongside the bindings'.
    conditions.extend(
        select(binding_tags.c.binding_id)
        .where(
            binding_tags.c.binding_id == bindings.c.id,
            binding_tags.c.tag == bindparam(f"tag_{i}"),
            binding_tags.c.binding_id > bindparam("after"),
            binding_tags.c.binding_id <= bindparam("last"),
        )
        .exists()
        for i in range(tags)
    )
    return conditions


@functools.cache
def _chunk_end_statement(identities: int, tags: int, binding_types: int) -> Prepared:
    """The id of the chunk's last binding: the `offset`+1-th matching one, if there is one."""
    return Prepared(
        select(bindings.c.id)
        .where(*_matching(identities, tags, binding_types))
        .order_by(bindings.c.id)
        .limit(1)
        .offset(bindparam("offset", type_=Integer))
    )


@functools.cache
def _chunk_statement(identities: int, tags: int, binding_types: int) -> Prepared:
    """One chunk's INSERT ... SELECT, per shape of query: every matching binding up to
    the chunk's end, fair keys in id order. Prepared: a chunk rebuilt as Core each time
    spent more of the GIL on SQLAlchemy's cache keys than on anything else it does."""
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
        .where(*_matching(identities, tags, binding_types))
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
    return Prepared(insert(deliveries).from_select(_FAN_OUT_COLUMNS, rows))


def insert_expansion(conn: Connection, values: dict) -> None:
    conn.execute(insert(expansions), values)


_NEXT_EXPANSION = Prepared(
    select(
        expansions.c.id,
        expansions.c.notification_id,
        expansions.c.account_sid,
        expansions.c.service_id,
        expansions.c.identities,
        expansions.c.tags,
        expansions.c.binding_types,
        expansions.c.after_binding_id,
        expansions.c.last_binding_id,
        expansions.c.expires_at,
        expansions.c.reported,
    )
    .order_by(expansions.c.advanced_at, expansions.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_ADVANCE_EXPANSION = Prepared(
    update(expansions)
    .where(expansions.c.id == bindparam("expansion_id"))
    .values(
        after_binding_id=bindparam("after", type_=BigInteger),
        advanced_at=bindparam("now", type_=DateTime),
    )
)
_END_EXPANSION = Prepared(delete(expansions).where(expansions.c.id == bindparam("expansion_id")))


def expand_next(conn: Connection, *, limit: int, now: datetime) -> int | None:
    """The next chunk of the expansion least recently advanced: the rows written, or None
    when no expansion waits. The cursor moves in the same transaction as the rows, so a
    crash between chunks neither loses nor doubles a target. On PostgreSQL the row lock
    (SKIP LOCKED) keeps two workers off the same expansion; SQLite has one writer anyway."""
    expansion = _NEXT_EXPANSION.one(conn)
    if expansion is None:
        return None
    (
        expansion_id,
        notification_id,
        account_sid,
        service_id,
        identities,
        tags,
        binding_types,
        after_binding_id,
        last_binding_id,
        expires_at,
        reported,
    ) = expansion
    query = Query(
        service_id, orjson.loads(identities), orjson.loads(tags), orjson.loads(binding_types)
    )
    count, after = write_chunk(
        conn,
        notification_id,
        account_sid,
        query,
        after_binding_id=after_binding_id,
        last_binding_id=last_binding_id,
        limit=limit,
        now=now,
        expires_at=expires_at,  # on SQLite the stored text, written back as it is
        reported=reported,
    )
    # Sent with the COMMIT, as the fair clock's advance is: one chunk per transaction.
    if after is None:
        defer(conn, _END_EXPANSION, [{"expansion_id": expansion_id}])
    else:
        advanced = {"expansion_id": expansion_id, "after": after, "now": now}
        defer(conn, _ADVANCE_EXPANSION, [advanced])
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
