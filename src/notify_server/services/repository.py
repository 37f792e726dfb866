"""Every SQL statement on services. Flushes, never commits."""

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, insert, select, update

from notify_server.db import Prepared
from notify_server.notifications.models import Expansion
from notify_server.paging import keyset
from notify_server.services.models import Service

services = cast(Table, Service.__table__)

_OWNED = (services.c.account_sid == bindparam("account_sid")) & (services.c.sid == bindparam("sid"))
_BY_SID = select(services).where(_OWNED)
_DELETE = delete(services).where(_OWNED)
_expansions = cast(Table, Expansion.__table__)
# A worker expanding a notification holds its expansion row, then locks the service (its
# outbox rows' foreign key). Deleting takes them in that order too, or the two deadlock.
_LOCK_EXPANSIONS = (
    select(_expansions.c.id)
    .where(_expansions.c.service_id == select(services.c.id).where(_OWNED).scalar_subquery())
    .with_for_update()
)
CREDENTIAL_COLUMNS = ("apn_credential_sid", "gcm_credential_sid", "fcm_credential_sid")
# Binding types whose protocol version defaults to the service's default_<type>_... column.
DEFAULT_VERSION_TYPES = ("apn", "gcm", "fcm", "alexa")
_FOR_BINDINGS = Prepared(
    select(
        services.c.id,
        *(services.c[f"default_{t}_notification_protocol_version"] for t in DEFAULT_VERSION_TYPES),
    ).where(_OWNED)
)


@dataclass(frozen=True)
class BindingDefaults:
    """What creating a binding needs of its service."""

    service_id: int
    protocol_versions: dict[str, str]


def by_sid(conn: Connection, account_sid: str, sid: str) -> Row | None:
    return conn.execute(_BY_SID, {"account_sid": account_sid, "sid": sid}).first()


def binding_defaults(conn: Connection, account_sid: str, sid: str) -> BindingDefaults | None:
    row = _FOR_BINDINGS.one(conn, {"account_sid": account_sid, "sid": sid})
    if row is None:
        return None
    return BindingDefaults(row[0], dict(zip(DEFAULT_VERSION_TYPES, row[1:], strict=True)))


def insert_service(conn: Connection, values: dict) -> None:
    conn.execute(insert(services).values(**values))


def update_service(conn: Connection, service_id: int, values: dict) -> None:
    conn.execute(update(services).where(services.c.id == service_id).values(**values))


def delete_service(conn: Connection, account_sid: str, sid: str) -> bool:
    # Its bindings go with it (ON DELETE CASCADE).
    conn.execute(_LOCK_EXPANSIONS, {"account_sid": account_sid, "sid": sid})
    return conn.execute(_DELETE, {"account_sid": account_sid, "sid": sid}).rowcount > 0


def forget_credential(
    conn: Connection, account_sid: str, credential_sid: str, now: datetime
) -> None:
    for column in CREDENTIAL_COLUMNS:
        conn.execute(
            update(services)
            .where(services.c.account_sid == account_sid, services.c[column] == credential_sid)
            .values({column: None, "date_updated": now})
        )


def page(
    conn: Connection,
    account_sid: str,
    *,
    friendly_name: str | None,
    after_id: int | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    conditions = [services.c.account_sid == account_sid]
    if friendly_name is not None:
        conditions.append(services.c.friendly_name == friendly_name)
    bounds, order = keyset(services.c.id, after_id, before_id)
    conditions.extend(bounds)
    return list(conn.execute(select(services).where(*conditions).order_by(order).limit(limit)))
