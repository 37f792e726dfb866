"""The SQL of the Users view: a User is the bindings of one identity, summed up."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, delete, func, select

from notify_server.bindings.models import Binding
from notify_server.db import stored_datetime
from notify_server.paging import keyset

bindings = cast(Table, Binding.__table__)
# A user's place in the list: its oldest binding's id. Stable while that binding lives.
_FIRST_ID = func.min(bindings.c.id)
_SUMMARY = (
    _FIRST_ID,
    bindings.c.identity,
    func.min(bindings.c.date_created),
    func.max(bindings.c.date_updated),
)


@dataclass(frozen=True)
class StoredUser:
    id: int
    identity: str
    date_created: datetime
    date_updated: datetime


def _stored(row: Sequence[Any]) -> StoredUser:
    return StoredUser(row[0], row[1], stored_datetime(row[2]), stored_datetime(row[3]))


def summary(conn: Connection, service_id: int, identity: str) -> StoredUser | None:
    row = conn.execute(
        select(*_SUMMARY)
        .where(bindings.c.service_id == service_id, bindings.c.identity == identity)
        .group_by(bindings.c.identity)
    ).first()
    return None if row is None else _stored(row)


def page(
    conn: Connection,
    service_id: int,
    *,
    identities: Sequence[str],
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[StoredUser]:
    """Up to `limit` users in order of their first binding, after `after_id` or (backwards)
    before `before_id`."""
    conditions = [bindings.c.service_id == service_id]
    if identities:
        conditions.append(bindings.c.identity.in_(identities))
    bounds, order = keyset(_FIRST_ID, after_id, before_id)
    statement = (
        select(*_SUMMARY)
        .where(and_(*conditions))
        .group_by(bindings.c.identity)
        .having(and_(True, *bounds))
        .order_by(order)
        .limit(limit)
    )
    return [_stored(row) for row in conn.execute(statement)]


def delete_bindings_of(conn: Connection, service_id: int, identity: str) -> int:
    """Delete every binding of the identity (their tags go with them); how many there were."""
    statement = delete(bindings).where(
        bindings.c.service_id == service_id, bindings.c.identity == identity
    )
    return conn.execute(statement).rowcount
