"""Every SQL statement on bindings. Flushes, never commits."""

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple, cast

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
from notify_server.credentials.models import Credential
from notify_server.db import Prepared, defer, send_together, stored_datetime
from notify_server.services.models import Service
from notify_server.services.repository import DEFAULT_VERSION_TYPES, BindingDefaults

bindings = cast(Table, Binding.__table__)
binding_tags = cast(Table, BindingTag.__table__)
services = cast(Table, Service.__table__)
credentials = cast(Table, Credential.__table__)

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
# What a create needs to know before it writes, in one statement: the service (and its
# protocol-version defaults), the identity's bindings so far, whether the credential is the
# account's, and the bindings this registration repeats: the one with the same address key,
# the one with the same endpoint key (each join a lookup in a unique index). No row: no such
# service.
_same_address = bindings.alias("same_address")
_same_endpoint = bindings.alias("same_endpoint")
_CREATE_PROBE = Prepared(
    select(
        services.c.id,
        *(services.c[f"default_{t}_notification_protocol_version"] for t in DEFAULT_VERSION_TYPES),
        select(func.count())
        .where(bindings.c.service_id == services.c.id, bindings.c.identity == bindparam("identity"))
        .scalar_subquery(),
        select(credentials.c.id)
        .where(
            credentials.c.account_sid == bindparam("account_sid"),
            credentials.c.sid == bindparam("credential_sid"),
        )
        .exists(),
        *(_same_address.c[column.name] for column in _COLUMNS),
        *(_same_endpoint.c[column.name] for column in _COLUMNS),
    )
    .select_from(
        services.outerjoin(
            _same_address,
            and_(
                _same_address.c.service_id == services.c.id,
                _same_address.c.address_key == bindparam("address_key"),
            ),
        ).outerjoin(
            _same_endpoint,
            and_(
                _same_endpoint.c.service_id == services.c.id,
                _same_endpoint.c.endpoint_key == bindparam("endpoint_key"),
            ),
        )
    )
    .where(
        services.c.account_sid == bindparam("account_sid"),
        services.c.sid == bindparam("service_sid"),
    )
)
_PROBE_SAME_ADDRESS_AT = 1 + len(DEFAULT_VERSION_TYPES) + 2
_PROBE_SAME_ENDPOINT_AT = _PROBE_SAME_ADDRESS_AT + len(_COLUMNS)


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
    insert(bindings).values(
        {
            name: bindparam(name)
            for name in (*WRITTEN_COLUMNS, "sid", "account_sid", "service_id", "date_created")
        }
    )
)
_UPDATE = Prepared(
    update(bindings)
    .where(bindings.c.id == bindparam("binding_id"))
    .values({name: bindparam(name) for name in WRITTEN_COLUMNS})
)
# By the binding's sid: a new binding's id is not known to the request (it never waits for it).
_INSERT_TAG = Prepared(
    insert(binding_tags).from_select(
        ["binding_id", "service_id", "tag"],
        select(bindings.c.id, bindings.c.service_id, bindparam("tag")).where(
            bindings.c.sid == bindparam("sid")
        ),
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


class BindingRecord(NamedTuple):  # a tuple: a list page makes fifty of them
    sid: str
    account_sid: str
    service_sid: str
    identity: str
    binding_type: str
    address: str
    endpoint: str | None
    credential_sid: str | None
    notification_protocol_version: str
    tags: list[str]
    date_created: datetime
    date_updated: datetime
    # Orders pages and carries the PageToken. 0 (no row's id) in what a create answers for a
    # binding it inserts: the request never waits to learn the id, and no page holds it.
    id: int = 0


def _stored(row: Sequence[Any], service_sid: str) -> BindingRecord:
    """A row of _COLUMNS, from SQLAlchemy or straight from the driver, of the service
    `service_sid` (every query here names it). Positional: a list page builds fifty, and
    keywords cost half as much again."""
    return BindingRecord(
        row[1],
        row[2],
        service_sid,
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        orjson.loads(row[9]),
        stored_datetime(row[10]),
        stored_datetime(row[11]),
        row[0],
    )


def digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def lock_key(service_sid: str, value: str) -> int:
    """The advisory-lock key of one identity (or endpoint) of a service."""
    hashed = hashlib.blake2b(f"{service_sid}\x00{value}".encode(), digest_size=4).digest()
    return int.from_bytes(hashed, "big", signed=True)


def lock_registration(
    conn: Connection, service_sid: str, identity: str, endpoint_key: str | None
) -> None:
    """Serialise writers on one identity (and endpoint) across processes.

    SQLite needs nothing: every write transaction there is BEGIN IMMEDIATE. On PostgreSQL
    transaction-scoped advisory locks, endpoint first, then identity, so no two requests wait
    on each other; a hash collision only serialises a little more. Keyed by the service's
    sid, so they can be taken before the service is looked up.
    """
    if conn.dialect.name == "postgresql":
        send_together(conn, _registration_locks(service_sid, identity, endpoint_key))


def _registration_locks(
    service_sid: str, identity: str, endpoint_key: str | None
) -> list[tuple[Prepared, dict[str, int]]]:
    locks = []
    if endpoint_key is not None:
        key = lock_key(service_sid, endpoint_key)
        locks.append((_ADVISORY_LOCK, {"namespace": LOCK_ENDPOINT, "key": key}))
    key = lock_key(service_sid, identity)
    locks.append((_ADVISORY_LOCK, {"namespace": LOCK_IDENTITY, "key": key}))
    return locks


def fetch(conn: Connection, account_sid: str, service_sid: str, sid: str) -> BindingRecord | None:
    params = {"account_sid": account_sid, "service_sid": service_sid, "sid": sid}
    row = _FETCH.one(conn, params)
    return None if row is None else _stored(row, service_sid)


@dataclass(frozen=True)
class CreateProbe:
    service: BindingDefaults
    identity_bindings: int
    credential_found: bool
    same_address: BindingRecord | None
    same_endpoint: BindingRecord | None


def lock_and_probe(
    conn: Connection,
    *,
    account_sid: str,
    service_sid: str,
    identity: str,
    address_key: str,
    endpoint_key: str | None,
    credential_sid: str | None,
) -> CreateProbe | None:
    """lock_registration, then what the create must know (None: no such service).

    On PostgreSQL BEGIN, the locks and the probe go together: one round trip, the probe
    still run under the locks.
    """
    params = {
        "account_sid": account_sid,
        "service_sid": service_sid,
        "identity": identity,
        "address_key": address_key,
        "endpoint_key": endpoint_key,
        "credential_sid": credential_sid,
    }
    if conn.dialect.name == "postgresql":
        locks = _registration_locks(service_sid, identity, endpoint_key)
        cursor = send_together(conn, [*locks, (_CREATE_PROBE, params)])[-1]
    else:
        cursor = _CREATE_PROBE.execute(conn, params)
    row = cursor.fetchone()
    if row is None:
        return None
    versions = row[1 : 1 + len(DEFAULT_VERSION_TYPES)]
    return CreateProbe(
        service=BindingDefaults(row[0], dict(zip(DEFAULT_VERSION_TYPES, versions, strict=True))),
        identity_bindings=row[1 + len(DEFAULT_VERSION_TYPES)],
        credential_found=bool(row[2 + len(DEFAULT_VERSION_TYPES)]),
        same_address=_stored_or_none(
            row[_PROBE_SAME_ADDRESS_AT:_PROBE_SAME_ENDPOINT_AT], service_sid
        ),
        same_endpoint=_stored_or_none(row[_PROBE_SAME_ENDPOINT_AT:], service_sid),
    )


def _stored_or_none(row: Sequence[Any], service_sid: str) -> BindingRecord | None:
    return None if row[0] is None else _stored(row, service_sid)  # the outer join found none


# A create's writes are its transaction's last statements: deferred, they go with the COMMIT.
def insert_binding(conn: Connection, service_id: int, values: dict) -> None:
    params = {**values, "service_id": service_id, "tags": orjson.dumps(values["tags"]).decode()}
    defer(conn, _INSERT, [params])
    _insert_tags(conn, values["sid"], values["tags"])


def update_binding(conn: Connection, binding_id: int, sid: str, values: dict) -> None:
    params = {**values, "binding_id": binding_id, "tags": orjson.dumps(values["tags"]).decode()}
    defer(conn, _UPDATE, [params])
    defer(conn, _DELETE_TAGS, [{"binding_id": binding_id}])
    _insert_tags(conn, sid, values["tags"])


def _insert_tags(conn: Connection, sid: str, tags: Sequence[str]) -> None:
    defer(conn, _INSERT_TAG, [{"sid": sid, "tag": t} for t in tags])


def delete_by_id(conn: Connection, binding_id: int) -> None:
    defer(conn, _DELETE_BY_ID, [{"binding_id": binding_id}])


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
    account_sid: str,
    service_sid: str,
    *,
    identities: Sequence[str],
    tags: Sequence[str],
    binding_types: Sequence[str],
    start_date: date | None,
    end_date: date | None,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[BindingRecord]:
    """Up to `limit` bindings of the account's service in id order, after `after_id` or
    (backwards) before `before_id`. Empty too when there is no such service."""
    params: dict[str, Any] = {"account_sid": account_sid, "service_sid": service_sid}
    params.update({f"identity_{i}": v for i, v in enumerate(identities)})
    params.update({f"tag_{i}": v for i, v in enumerate(tags)})
    params.update({f"type_{i}": v for i, v in enumerate(binding_types)})
    if start_date:
        params["start"] = datetime.combine(start_date, time.min)
    if end_date:
        params["end"] = datetime.combine(end_date + timedelta(days=1), time.min)
    direction = "before" if before_id is not None else "after" if after_id is not None else None
    params.update(after_id=after_id, before_id=before_id, limit=limit)
    statement = _page_statement(
        len(identities), len(tags), len(binding_types), bool(start_date), bool(end_date), direction
    )
    return [_stored(row, service_sid) for row in statement.execute(conn, params)]


@functools.lru_cache(maxsize=256)
def _page_statement(
    identities: int, tags: int, binding_types: int, start: bool, end: bool, direction: str | None
) -> Prepared:
    """The list statement for one shape of filters, built and compiled once."""
    conditions: list[ColumnElement[bool]] = [
        services.c.account_sid == bindparam("account_sid"),
        services.c.sid == bindparam("service_sid"),
    ]
    if identities:
        conditions.append(
            bindings.c.identity.in_([bindparam(f"identity_{i}") for i in range(identities)])
        )
    conditions.extend(
        bindings.c.binding_type == bindparam(f"type_{i}") for i in range(binding_types)
    )
    for i in range(tags):
        tagged = select(binding_tags.c.binding_id).where(
            binding_tags.c.service_id == services.c.id, binding_tags.c.tag == bindparam(f"tag_{i}")
        )
        conditions.append(bindings.c.id.in_(tagged))
    if start:
        conditions.append(bindings.c.date_created >= bindparam("start"))
    if end:
        conditions.append(bindings.c.date_created < bindparam("end"))
    order: ColumnElement[int] = bindings.c.id
    if direction == "after":
        conditions.append(bindings.c.id > bindparam("after_id"))
    elif direction == "before":
        conditions.append(bindings.c.id < bindparam("before_id"))
        order = bindings.c.id.desc()
    return Prepared(
        select(*_COLUMNS)
        .join(services, services.c.id == bindings.c.service_id)
        .where(*conditions)
        .order_by(order)
        .limit(bindparam("limit"))
    )


def forget_credential(
    conn: Connection, account_sid: str, credential_sid: str, now: datetime
) -> None:
    conn.execute(
        update(bindings)
        .where(bindings.c.account_sid == account_sid, bindings.c.credential_sid == credential_sid)
        .values(credential_sid=None, date_updated=now)
    )
