"""Every SQL statement on services. Flushes, never commits."""

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, insert, select, update

from notify_server.services.models import Service

services = cast(Table, Service.__table__)

_OWNED = (services.c.account_sid == bindparam("account_sid")) & (services.c.sid == bindparam("sid"))
_BY_SID = select(services).where(_OWNED)
_DELETE = delete(services).where(_OWNED)
CREDENTIAL_COLUMNS = ("apn_credential_sid", "gcm_credential_sid", "fcm_credential_sid")


def by_sid(conn: Connection, account_sid: str, sid: str) -> Row | None:
    return conn.execute(_BY_SID, {"account_sid": account_sid, "sid": sid}).first()


def insert_service(conn: Connection, values: dict) -> None:
    conn.execute(insert(services).values(**values))


def update_service(conn: Connection, service_id: int, values: dict) -> None:
    conn.execute(update(services).where(services.c.id == service_id).values(**values))


def delete_service(conn: Connection, account_sid: str, sid: str) -> bool:
    # Its bindings go with it (ON DELETE CASCADE).
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
    if after_id is not None:
        conditions.append(services.c.id > after_id)
    if before_id is not None:
        conditions.append(services.c.id < before_id)
    order = services.c.id.desc() if before_id is not None else services.c.id
    return list(conn.execute(select(services).where(*conditions).order_by(order).limit(limit)))
