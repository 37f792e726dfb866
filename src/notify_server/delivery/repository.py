"""Every SQL statement of the delivery worker. Flushes, never commits, except on PostgreSQL
where a claim and a batch of answers are a whole transaction: there the COMMIT goes in the
same round trip."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    null,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql

from notify_server.accounts.models import Account
from notify_server.bindings.models import Binding
from notify_server.credentials.models import Credential
from notify_server.db import COMMIT, Prepared, send_together
from notify_server.notifications.models import FRESH, LEASED, RETRY
from notify_server.notifications.repository import (
    FAILED,
    FINAL,
    PENDING,
    SENDING,
    SENT,
    deliveries,
    notifications,
    service_credential_for,
)
from notify_server.services.models import Service

services = cast(Table, Service.__table__)
credentials = cast(Table, Credential.__table__)
accounts = cast(Table, Account.__table__)
bindings = cast(Table, Binding.__table__)


# Built once, each on its own index: `status IN (pending, sending)` with ORDER BY
# next_attempt_at, id made both databases sort every due row on each claim (on PostgreSQL an
# external merge sort, 39 ms at 92,000 due rows; 0.7 ms this way).
_EXPIRED = (
    select(deliveries.c.id)
    .where(LEASED, deliveries.c.next_attempt_at <= bindparam("now"))
    .order_by(deliveries.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_RETRIES = (
    select(deliveries.c.id)
    .where(RETRY, deliveries.c.next_attempt_at <= bindparam("now"))
    .order_by(deliveries.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# First attempts in fair order: each account's rows carry consecutive keys starting at the
# queue's head when it posts (see notifications/repository.fair_start), so one account's
# 100,000 targets interleave with another's single target instead of going first.
_FRESH = (
    select(deliveries.c.id)
    # In production first attempts are due when written; the index carries the column, so
    # the rare one that is not costs no table read.
    .where(FRESH, deliveries.c.next_attempt_at <= bindparam("now"))
    .order_by(deliveries.c.fair_key, deliveries.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_TAKE = (
    update(deliveries)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=SENDING,
        attempts=deliveries.c.attempts + 1,
        next_attempt_at=bindparam("lease_until"),
        date_updated=bindparam("now"),
    )
)


class Claimed(NamedTuple):
    """A claimed row, and what sending it needs of its notification and service."""

    id: int
    attempts: int
    binding_type: str
    address: str
    identity: str | None
    binding_sid: str | None
    binding_id: int | None
    expires_at: datetime
    reported: bool
    credential_sid: str | None
    notification_sid: str
    account_sid: str
    content: str
    service_sid: str
    messaging_service_sid: str | None


def claim(conn: Connection, *, now: datetime, lease_until: datetime, limit: int) -> list[Claimed]:
    """Take up to `limit` due rows: sending ones whose lease ran out (their worker died) first,
    so they are never starved; then retries and first attempts, half the batch each when both
    wait, so neither a wave of retries nor a large fan-out holds up the other. SKIP LOCKED
    lets several workers share PostgreSQL without double delivery; on SQLite the write
    transaction itself is exclusive."""
    params = {"now": now, "lease_until": lease_until, "limit": limit}
    if conn.dialect.name == "postgresql":
        # One round trip: BEGIN, the claim, COMMIT. A connection lost after the COMMIT is
        # retried as one lost before it: the rows taken then wait out their lease (late,
        # never sent twice).
        rows = send_together(conn, [(_CLAIM_PG, params), (COMMIT, {})])[0]
        return [Claimed._make(row) for row in rows]
    ids = list(conn.execute(_EXPIRED, params).scalars())
    if len(ids) < limit:
        room = limit - len(ids)
        retries = list(conn.execute(_RETRIES, {"now": now, "limit": max(room // 2, 1)}).scalars())
        ids += retries
        ids += conn.execute(_FRESH, {"now": now, "limit": limit - len(ids)}).scalars()
        if len(ids) < limit and retries:
            # Few first attempts wait: retries may have the rest (this reads the ones just
            # taken again, as a transaction's own locks do not skip it).
            taken = set(retries)
            more = conn.execute(_RETRIES, {"now": now, "limit": limit - len(ids) + len(taken)})
            ids += [i for i in more.scalars() if i not in taken]
    if not ids:
        return []
    conn.execute(_TAKE, {"ids": ids, "now": now, "lease_until": lease_until})
    return [Claimed._make(row) for row in conn.execute(_JOBS, {"ids": ids})]


_SERVICE_CREDENTIAL_SQL = service_credential_for(literal_column("taken.binding_type")).compile(
    dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
)

# claim() on PostgreSQL in one statement. Each kind locks up to the whole room, on its own
# partial index; then retries keep up to half of it (at least one) and first attempts take
# what the retries leave, as the three queries above do. Rows locked but not taken are free
# again at the COMMIT sent with it.
_CLAIM_PG = Prepared(
    text(
        f"""
WITH expired AS MATERIALIZED (
    SELECT id FROM deliveries WHERE {LEASED} AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED
), room AS (
    SELECT :limit - count(*) AS n FROM expired
), retries AS MATERIALIZED (
    SELECT id, next_attempt_at FROM deliveries WHERE {RETRY} AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT (SELECT greatest(n, 0) FROM room) FOR UPDATE SKIP LOCKED
), fresh AS MATERIALIZED (
    SELECT id, fair_key FROM deliveries WHERE {FRESH} AND next_attempt_at <= :now
    ORDER BY fair_key, id LIMIT (SELECT greatest(n, 0) FROM room) FOR UPDATE SKIP LOCKED
), first_attempts AS (
    SELECT least((SELECT count(*) FROM fresh),
                 n - least((SELECT count(*) FROM retries), greatest(n / 2, 1))) AS n
    FROM room
), chosen AS (
    SELECT id FROM expired
    UNION ALL
    SELECT id FROM (
        SELECT id, row_number() OVER (ORDER BY next_attempt_at, id) AS k FROM retries
    ) AS r WHERE k <= (SELECT room.n - first_attempts.n FROM room, first_attempts)
    UNION ALL
    SELECT id FROM (
        SELECT id, row_number() OVER (ORDER BY fair_key, id) AS k FROM fresh
    ) AS f WHERE k <= (SELECT n FROM first_attempts)
), taken AS (
    UPDATE deliveries AS d SET status = 'sending', attempts = d.attempts + 1,
        next_attempt_at = :lease_until, date_updated = :now
    FROM chosen WHERE d.id = chosen.id
    RETURNING d.*
)
SELECT taken.id, taken.attempts, taken.binding_type, taken.address, taken.identity,
    taken.binding_sid, taken.binding_id, taken.expires_at, taken.reported,
    coalesce(taken.credential_sid, {_SERVICE_CREDENTIAL_SQL}),
    notifications.sid, notifications.account_sid, notifications.content,
    services.sid, services.messaging_service_sid
FROM taken
JOIN notifications ON notifications.id = taken.notification_id
JOIN services ON services.id = taken.service_id
ORDER BY taken.id
"""
    )
)


def renew_leases(conn: Connection, delivery_ids: Sequence[int], lease_until: datetime) -> None:
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(delivery_ids), deliveries.c.status == SENDING)
        .values(next_attempt_at=lease_until)
    )


def release(conn: Connection, delivery_ids: Sequence[int], now: datetime) -> None:
    """Rows claimed but never sent are due again, as they were before the claim."""
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(delivery_ids), LEASED)
        .values(status=PENDING, attempts=deliveries.c.attempts - 1, next_attempt_at=now)
    )


_JOBS = (
    select(
        deliveries.c.id,
        deliveries.c.attempts,
        deliveries.c.binding_type,
        deliveries.c.address,
        deliveries.c.identity,
        deliveries.c.binding_sid,
        deliveries.c.binding_id,
        deliveries.c.expires_at,
        deliveries.c.reported,
        func.coalesce(
            deliveries.c.credential_sid, service_credential_for(deliveries.c.binding_type)
        ).label("credential_sid"),
        notifications.c.sid.label("notification_sid"),
        notifications.c.account_sid,
        notifications.c.content,
        services.c.sid.label("service_sid"),
        services.c.messaging_service_sid,
    )
    .join(notifications, notifications.c.id == deliveries.c.notification_id)
    .join(services, services.c.id == deliveries.c.service_id)
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(deliveries.c.id)
)


_CREDENTIAL = select(
    credentials.c.sid, credentials.c.type, credentials.c.sandbox, credentials.c.encrypted_secrets
).where(
    credentials.c.account_sid == bindparam("account_sid"),
    credentials.c.sid == bindparam("sid"),
)


def credential(conn: Connection, account_sid: str, sid: str) -> Row | None:
    # The account too: a notification may only ever be sent with its own account's secrets.
    return conn.execute(_CREDENTIAL, {"account_sid": account_sid, "sid": sid}).first()


def _finish(status: str, **columns: object) -> Update:
    """A row this worker is sending takes its outcome (and the provider's answer). The
    statuses are literal SQL: run by Prepared, every bound parameter must be a named one."""
    values = {
        "status": literal_column(f"'{status}'"),
        "provider_status": bindparam("provider_status"),
        "provider_response": bindparam("provider_response"),
        "error_message": bindparam("error_message"),
        "date_updated": bindparam("now"),
        **columns,
    }
    return (
        update(deliveries).where(deliveries.c.id == bindparam("delivery_id"), LEASED).values(values)
    )


_MARK_SENT = _finish(
    SENT, provider_message_id=bindparam("provider_message_id"), error_message=null()
)
_MARK_FAILED = _finish(FAILED, provider_message_id=bindparam("provider_message_id"))
_MARK_RETRY = _finish(PENDING, next_attempt_at=bindparam("next_attempt_at"))
_MARKS = {
    SENT: Prepared(_MARK_SENT),
    FAILED: Prepared(_MARK_FAILED),
    PENDING: Prepared(_MARK_RETRY),
}

# PostgreSQL: a batch of outcomes in one statement, its rows as arrays (one plan for every
# batch size). A retry keeps the row's provider_message_id and takes the next attempt's time;
# sent and failed rows keep the lease's time, as one answer at a time did.
_RECORD_OUTCOMES_PG = Prepared(
    text(
        """
UPDATE deliveries AS d SET
    status = v.status,
    provider_message_id = CASE WHEN v.status = 'pending'
        THEN d.provider_message_id ELSE v.provider_message_id END,
    provider_status = v.provider_status,
    provider_response = v.provider_response,
    error_message = v.error_message,
    next_attempt_at = COALESCE(v.next_attempt_at, d.next_attempt_at),
    date_updated = v.now
FROM unnest(
    CAST(:delivery_id AS bigint[]), CAST(:status AS varchar[]),
    CAST(:provider_message_id AS varchar[]), CAST(:provider_status AS integer[]),
    CAST(:provider_response AS text[]), CAST(:error_message AS text[]),
    CAST(:next_attempt_at AS timestamp[]), CAST(:now AS timestamp[])
) AS v(delivery_id, status, provider_message_id, provider_status, provider_response,
       error_message, next_attempt_at, now)
WHERE d.id = v.delivery_id AND d.status = 'sending'
"""
    )
)
_DELETE_BINDINGS_PG = Prepared(text("DELETE FROM bindings WHERE id = ANY(CAST(:ids AS bigint[]))"))
OUTCOME_COLUMNS = (
    "delivery_id",
    "status",
    "provider_message_id",
    "provider_status",
    "provider_response",
    "error_message",
    "next_attempt_at",
    "now",
)


def record_outcomes(
    conn: Connection, outcomes: Sequence[Mapping[str, Any]], dead_binding_ids: Sequence[int]
) -> None:
    """Rows this worker is sending take their outcomes (each a mapping of OUTCOME_COLUMNS;
    `status` is sent, failed, or pending for a retry), and dead addresses' bindings go.

    One UPDATE per batch on PostgreSQL, in the transaction's only round trip; on SQLite one
    executemany per outcome kind (sqlite3 loops in C: as cheap as one statement with no round
    trips). Bindings' outbox rows keep their address and binding_sid (binding_id goes NULL)."""
    if conn.dialect.name == "postgresql":
        # One round trip: BEGIN, the record, the deletes, COMMIT.
        columns = {name: [outcome[name] for outcome in outcomes] for name in OUTCOME_COLUMNS}
        statements = [(_RECORD_OUTCOMES_PG, columns)]
        if dead_binding_ids:
            statements.append((_DELETE_BINDINGS_PG, {"ids": list(dead_binding_ids)}))
        send_together(conn, [*statements, (COMMIT, {})])
        return
    by_status: dict[str, list[Mapping[str, Any]]] = {}
    for outcome in outcomes:
        by_status.setdefault(outcome["status"], []).append(outcome)
    for status, rows in by_status.items():
        _MARKS[status].execute_many(conn, rows)
    if dead_binding_ids:
        conn.execute(delete(bindings).where(bindings.c.id.in_(dead_binding_ids)))


# Delivery callbacks


def notifications_to_report(conn: Connection, now: datetime, limit: int) -> list[Row]:
    """(id, delivery_callback_url) of notifications with final rows not yet reported,
    skipping those whose callbacks are leased (being sent, or waiting to retry after a
    refusal): they must not starve the rest."""
    free = (notifications.c.callback_locked_until.is_(None)) | (
        notifications.c.callback_locked_until < now
    )
    due = (
        select(deliveries.c.notification_id)
        .join(notifications, notifications.c.id == deliveries.c.notification_id)
        .where(deliveries.c.reported.is_(False), deliveries.c.status.in_(FINAL), free)
        .distinct()
        .order_by(deliveries.c.notification_id)
        .limit(limit)
        .subquery()
    )
    statement = (
        select(notifications.c.id, notifications.c.delivery_callback_url)
        .join(due, due.c.notification_id == notifications.c.id)
        .order_by(notifications.c.id)
    )
    return list(conn.execute(statement))


def postpone_callbacks(
    conn: Connection, notification_ids: Sequence[int], now: datetime, until: datetime
) -> None:
    """Leave these for a moment (their destination is busy), unless someone holds them."""
    free = (notifications.c.callback_locked_until.is_(None)) | (
        notifications.c.callback_locked_until < now
    )
    conn.execute(
        update(notifications)
        .where(notifications.c.id.in_(notification_ids), free)
        .values(callback_locked_until=until)
    )


def lease_callback(conn: Connection, notification_id: int, now: datetime, until: datetime) -> bool:
    """Whether this worker now owns the notification's callbacks (until `until`)."""
    free = (notifications.c.callback_locked_until.is_(None)) | (
        notifications.c.callback_locked_until < now
    )
    statement = (
        update(notifications)
        .where(notifications.c.id == notification_id, free)
        .values(callback_locked_until=until)
    )
    return conn.execute(statement).rowcount == 1


def callback_batch(
    conn: Connection, notification_id: int, limit: int
) -> tuple[Row, list[Row], bool]:
    """(the notification, up to `limit` final unreported rows, whether this batch is the last)."""
    notification = conn.execute(
        select(
            notifications.c.id,
            notifications.c.sid,
            notifications.c.account_sid,
            notifications.c.delivery_callback_url,
            notifications.c.callback_sequence,
            services.c.sid.label("service_sid"),
            accounts.c.auth_token_sealed,
        )
        .join(services, services.c.id == notifications.c.service_id)
        .join(accounts, accounts.c.sid == notifications.c.account_sid)
        .where(notifications.c.id == notification_id)
    ).one()
    unreported = and_(
        deliveries.c.notification_id == notification_id,
        deliveries.c.reported.is_(False),
        deliveries.c.status.in_(FINAL),
    )
    rows = list(
        conn.execute(
            select(deliveries).where(unreported).order_by(deliveries.c.id).limit(limit + 1)
        )
    )
    open_rows = conn.execute(
        select(func.count()).where(
            deliveries.c.notification_id == notification_id, deliveries.c.status.not_in(FINAL)
        )
    ).scalar_one()
    is_final = open_rows == 0 and len(rows) <= limit
    return notification, rows[:limit], is_final


def finish_callback(
    conn: Connection,
    notification_id: int,
    delivery_ids: Sequence[int],
    *,
    next_sequence: int,
    release_at: datetime | None,
    error: str | None = None,
) -> None:
    """The batch's rows are reported: delivered, or (with `error`) given up on."""
    if delivery_ids:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(delivery_ids))
            .values(reported=True, callback_error=error)
        )
    conn.execute(
        update(notifications)
        .where(notifications.c.id == notification_id)
        .values(callback_sequence=next_sequence, callback_locked_until=release_at)
    )
