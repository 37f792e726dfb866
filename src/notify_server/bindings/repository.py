"""Every SQL statement on bindings. Flushes, never commits."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from notify_server.bindings.models import Binding, BindingTag
from notify_server.db import Prepared, stored_datetime
from notify_server.paging import keyset
from notify_server.services.models import Service

bindings = cast(Table, Binding.__table__)
binding_tags = cast(Table, BindingTag.__table__)
services = cast(Table, Service.__table__)

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

# The hot paths' statements, compiled once and run on the driver (see db.Prepared).
_FETCH = Prepared(
    select(*_COLUMNS)
    .join(services, services.c.id == bindings.c.service_id)
    .where(
        services.c.account_sid == bindparam("account_sid"),
        services.c.sid == bindparam("service_sid"),
        bindings.c.sid == bindparam("sid"),
    )
)
_BY_ENDPOINT_KEY = Prepared(
    select(*_COLUMNS).where(_IN_SERVICE, bindings.c.endpoint_key == bindparam("endpoint_key"))
)
# What a create needs to know first, in one round trip: the identity's bindings so far, and
# the binding (if any) with this identity + type + address.
_PROBE = Prepared(
    select(
        select(func.count())
        .where(_IN_SERVICE, bindings.c.identity == bindparam("identity"))
        .scalar_subquery(),
        select(bindings.c.id)
        .where(_IN_SERVICE, bindings.c.address_key == bindparam("address_key"))
        .scalar_subquery(),
    )
)
_BY_ID = Prepared(select(*_COLUMNS).where(bindings.c.id == bindparam("binding_id")))
# The columns a create or re-registration writes (the importer writes the same).
WRITTEN_COLUMNS = (
    "identity",
    "binding_type",
    "address",
    "address_key",
    "endpoint",
    "endpoint_key",
    "credential_sid",
    "notification_protocol_version",
    "tags",
    "date_updated",
)
_INSERT = Prepared(
    insert(bindings)
    .values(
        {
            name: bindparam(name)
            for name in (*WRITTEN_COLUMNS, "sid", "account_sid", "service_id", "date_created")
        }
    )
    .returning(bindings.c.id)
)
_UPDATE = Prepared(
    update(bindings)
    .where(bindings.c.id == bindparam("binding_id"))
    .values({name: bindparam(name) for name in WRITTEN_COLUMNS})
)
_INSERT_TAG = Prepared(
    insert(binding_tags).values(
        binding_id=bindparam("binding_id"),
        service_id=bindparam("service_id"),
        tag=bindparam("tag"),
    )
)
_DELETE_TAGS = Prepared(
    delete(binding_tags).where(binding_tags.c.binding_id == bindparam("binding_id"))
)
_DELETE_BY_ID = Prepared(delete(bindings).where(bindings.c.id == bindparam("binding_id")))
_DELETE_BY_SID = delete(bindings).where(_IN_SERVICE, bindings.c.sid == bindparam("sid"))
_ADVISORY_LOCK = Prepared(
    select(func.pg_advisory_xact_lock(bindparam("namespace"), bindparam("key")))
)

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


def _stored(row: Sequence[Any] | None) -> StoredBinding | None:
    """A row of _COLUMNS, from SQLAlchemy or straight from the driver."""
    if row is None:
        return None
    return StoredBinding(
        id=row[0],
        sid=row[1],
        account_sid=row[2],
        identity=row[3],
        binding_type=row[4],
        address=row[5],
        endpoint=row[6],
        credential_sid=row[7],
        notification_protocol_version=row[8],
        tags=orjson.loads(row[9]),
        date_created=stored_datetime(row[10]),
        date_updated=stored_datetime(row[11]),
    )


def digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def lock_key(service_id: int, value: str) -> int:
    """The advisory-lock key of one identity (or endpoint) of a service."""
    hashed = hashlib.blake2b(f"{service_id}\x00{value}".encode(), digest_size=4).digest()
    return int.from_bytes(hashed, "big", signed=True)


def lock(conn: Connection, namespace: int, service_id: int, value: str) -> None:
    """Serialise writers on one identity (or endpoint) across processes.

    SQLite needs nothing: every write transaction there is BEGIN IMMEDIATE. On PostgreSQL
    a transaction-scoped advisory lock; a hash collision only serialises a little more.
    """
    if conn.dialect.name == "postgresql":
        _ADVISORY_LOCK.execute(conn, {"namespace": namespace, "key": lock_key(service_id, value)})


def fetch(conn: Connection, account_sid: str, service_sid: str, sid: str) -> StoredBinding | None:
    params = {"account_sid": account_sid, "service_sid": service_sid, "sid": sid}
    return _stored(_FETCH.one(conn, params))


@dataclass(frozen=True)
class Probe:
    identity_bindings: int
    same_address: StoredBinding | None


def probe(conn: Connection, service_id: int, identity: str, address_key: str) -> Probe:
    """How many bindings the identity has, and the binding with this address key."""
    params = {"service_id": service_id, "identity": identity, "address_key": address_key}
    count, same_address_id = _PROBE.one(conn, params)
    same_address = None
    if same_address_id is not None:
        same_address = _stored(_BY_ID.one(conn, {"binding_id": same_address_id}))
    return Probe(count, same_address)


def by_endpoint_key(conn: Connection, service_id: int, endpoint_key: str) -> StoredBinding | None:
    params = {"service_id": service_id, "endpoint_key": endpoint_key}
    return _stored(_BY_ENDPOINT_KEY.one(conn, params))


def insert_binding(conn: Connection, service_id: int, values: dict) -> int:
    params = {**values, "service_id": service_id, "tags": orjson.dumps(values["tags"]).decode()}
    binding_id: int = _INSERT.one(conn, params)[0]
    _insert_tags(conn, binding_id, service_id, values["tags"])
    return binding_id


def update_binding(conn: Connection, binding_id: int, service_id: int, values: dict) -> None:
    params = {**values, "binding_id": binding_id, "tags": orjson.dumps(values["tags"]).decode()}
    _UPDATE.execute(conn, params)
    _DELETE_TAGS.execute(conn, {"binding_id": binding_id})
    _insert_tags(conn, binding_id, service_id, values["tags"])


def _insert_tags(conn: Connection, binding_id: int, service_id: int, tags: Sequence[str]) -> None:
    if tags:
        rows = [{"binding_id": binding_id, "service_id": service_id, "tag": t} for t in tags]
        _INSERT_TAG.execute_many(conn, rows)


def delete_by_id(conn: Connection, binding_id: int) -> None:
    _DELETE_BY_ID.execute(conn, {"binding_id": binding_id})


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
    bounds, order = keyset(bindings.c.id, after_id, before_id)
    conditions.extend(bounds)
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
