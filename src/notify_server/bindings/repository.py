"""Every SQL statement on bindings. Flushes, never commits."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from notify_server.bindings.models import Binding, BindingTag

bindings = cast(Table, Binding.__table__)
binding_tags = cast(Table, BindingTag.__table__)

_COLUMNS = (
    bindings.c.id,
    bindings.c.sid,
    bindings.c.account_sid,
    bindings.c.identity,
    bindings.c.binding_type,
    bindings.c.address,
    bindings.c.endpoint,
    bindings.c.credential_sid,
    bindings.c.notification_protocol_version,
    bindings.c.tags,
    bindings.c.date_created,
    bindings.c.date_updated,
)
_IN_SERVICE = bindings.c.service_id == bindparam("service_id")

# Built once: rebuilding a statement per call costs more than running it.
_BY_SID = select(*_COLUMNS).where(_IN_SERVICE, bindings.c.sid == bindparam("sid"))
_BY_ADDRESS_KEY = select(*_COLUMNS).where(
    _IN_SERVICE, bindings.c.address_key == bindparam("address_key")
)
_BY_ENDPOINT_KEY = select(*_COLUMNS).where(
    _IN_SERVICE, bindings.c.endpoint_key == bindparam("endpoint_key")
)
_COUNT_FOR_IDENTITY = select(func.count()).where(
    _IN_SERVICE, bindings.c.identity == bindparam("identity")
)
_INSERT = insert(bindings).returning(bindings.c.id)
_UPDATE = (
    update(bindings)
    .where(bindings.c.id == bindparam("binding_id"))
    .values(
        identity=bindparam("identity"),
        binding_type=bindparam("binding_type"),
        address=bindparam("address"),
        address_key=bindparam("address_key"),
        endpoint=bindparam("endpoint"),
        endpoint_key=bindparam("endpoint_key"),
        credential_sid=bindparam("credential_sid"),
        notification_protocol_version=bindparam("notification_protocol_version"),
        tags=bindparam("tags"),
        date_updated=bindparam("date_updated"),
    )
)
_INSERT_TAG = insert(binding_tags)
_DELETE_TAGS = delete(binding_tags).where(binding_tags.c.binding_id == bindparam("binding_id"))
_DELETE_BY_ID = delete(bindings).where(bindings.c.id == bindparam("binding_id"))
_DELETE_BY_SID = delete(bindings).where(_IN_SERVICE, bindings.c.sid == bindparam("sid"))
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:namespace, :key)")

LOCK_ENDPOINT, LOCK_IDENTITY = 1, 2


@dataclass(frozen=True)
class StoredBinding:
    id: int
    sid: str
    account_sid: str
    identity: str
    binding_type: str
    address: str
    endpoint: str | None
    credential_sid: str | None
    notification_protocol_version: str
    tags: list[str]
    date_created: datetime
    date_updated: datetime


def _stored(row: Row | None) -> StoredBinding | None:
    if row is None:
        return None
    values = row._asdict()
    values["tags"] = orjson.loads(values["tags"])
    return StoredBinding(**values)


def digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def lock(conn: Connection, namespace: int, service_id: int, value: str) -> None:
    """Serialise writers on one identity (or endpoint) across processes.

    SQLite needs nothing: every write transaction there is BEGIN IMMEDIATE. On PostgreSQL
    a transaction-scoped advisory lock; a hash collision only serialises a little more.
    """
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.blake2b(f"{service_id}\x00{value}".encode(), digest_size=4).digest(),
            "big",
            signed=True,
        )
        conn.execute(_ADVISORY_LOCK, {"namespace": namespace, "key": key})


def by_sid(conn: Connection, service_id: int, sid: str) -> StoredBinding | None:
    return _stored(conn.execute(_BY_SID, {"service_id": service_id, "sid": sid}).first())


def by_address_key(conn: Connection, service_id: int, address_key: str) -> StoredBinding | None:
    row = conn.execute(_BY_ADDRESS_KEY, {"service_id": service_id, "address_key": address_key})
    return _stored(row.first())


def by_endpoint_key(conn: Connection, service_id: int, endpoint_key: str) -> StoredBinding | None:
    row = conn.execute(_BY_ENDPOINT_KEY, {"service_id": service_id, "endpoint_key": endpoint_key})
    return _stored(row.first())


def count_for_identity(conn: Connection, service_id: int, identity: str) -> int:
    params = {"service_id": service_id, "identity": identity}
    return conn.execute(_COUNT_FOR_IDENTITY, params).scalar_one()


def insert_binding(conn: Connection, service_id: int, values: dict) -> int:
    params = {**values, "service_id": service_id, "tags": orjson.dumps(values["tags"]).decode()}
    binding_id: int = conn.execute(_INSERT, params).scalar_one()
    _insert_tags(conn, binding_id, service_id, values["tags"])
    return binding_id


def update_binding(conn: Connection, binding_id: int, service_id: int, values: dict) -> None:
    params = {**values, "binding_id": binding_id, "tags": orjson.dumps(values["tags"]).decode()}
    conn.execute(_UPDATE, params)
    conn.execute(_DELETE_TAGS, {"binding_id": binding_id})
    _insert_tags(conn, binding_id, service_id, values["tags"])


def _insert_tags(conn: Connection, binding_id: int, service_id: int, tags: Sequence[str]) -> None:
    if tags:
        rows = [{"binding_id": binding_id, "service_id": service_id, "tag": t} for t in tags]
        conn.execute(_INSERT_TAG, rows)


def delete_by_id(conn: Connection, binding_id: int) -> None:
    conn.execute(_DELETE_BY_ID, {"binding_id": binding_id})


def delete_by_sid(conn: Connection, service_id: int, sid: str) -> bool:
    return conn.execute(_DELETE_BY_SID, {"service_id": service_id, "sid": sid}).rowcount > 0


def matching(
    service_id: int,
    *,
    identities: Sequence[str] = (),
    tags: Sequence[str] = (),
    binding_types: Sequence[str] = (),
) -> list[ColumnElement[bool]]:
    """Conditions for a service's bindings with any of the identities and all of the tags."""
    conditions = [bindings.c.service_id == service_id]
    if identities:
        conditions.append(bindings.c.identity.in_(identities))
    conditions.extend(bindings.c.binding_type == t for t in binding_types)
    for tag in tags:
        tagged = select(binding_tags.c.binding_id).where(
            binding_tags.c.service_id == service_id, binding_tags.c.tag == tag
        )
        conditions.append(bindings.c.id.in_(tagged))
    return conditions


def page(
    conn: Connection,
    service_id: int,
    *,
    identities: Sequence[str],
    tags: Sequence[str],
    binding_types: Sequence[str],
    start_date: date | None,
    end_date: date | None,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[StoredBinding]:
    """Up to `limit` bindings in id order, after `after_id` or (backwards) before `before_id`."""
    conditions = matching(service_id, identities=identities, tags=tags, binding_types=binding_types)
    if start_date:
        conditions.append(bindings.c.date_created >= datetime.combine(start_date, time.min))
    if end_date:
        day_after = datetime.combine(end_date + timedelta(days=1), time.min)
        conditions.append(bindings.c.date_created < day_after)
    if after_id is not None:
        conditions.append(bindings.c.id > after_id)
    if before_id is not None:
        conditions.append(bindings.c.id < before_id)
    order = bindings.c.id.desc() if before_id is not None else bindings.c.id
    statement = select(*_COLUMNS).where(and_(*conditions)).order_by(order).limit(limit)
    return [_stored(row) for row in conn.execute(statement)]  # type: ignore[misc]


def forget_credential(
    conn: Connection, account_sid: str, credential_sid: str, now: datetime
) -> None:
    conn.execute(
        update(bindings)
        .where(bindings.c.account_sid == account_sid, bindings.c.credential_sid == credential_sid)
        .values(credential_sid=None, date_updated=now)
    )
