"""Every SQL statement on credentials. Flushes, never commits."""

from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, insert, select, update

from notify_server.credentials.models import Credential
from notify_server.paging import keyset

credentials = cast(Table, Credential.__table__)

_OWNED = (credentials.c.account_sid == bindparam("account_sid")) & (
    credentials.c.sid == bindparam("sid")
)
_BY_SID = select(credentials).where(_OWNED)
_EXISTS = select(credentials.c.id).where(_OWNED)
_DELETE = delete(credentials).where(_OWNED)


def by_sid(conn: Connection, account_sid: str, sid: str) -> Row | None:
    return conn.execute(_BY_SID, {"account_sid": account_sid, "sid": sid}).first()


def exists(conn: Connection, account_sid: str, sid: str) -> bool:
    return conn.execute(_EXISTS, {"account_sid": account_sid, "sid": sid}).first() is not None


def insert_credential(conn: Connection, values: dict) -> None:
    conn.execute(insert(credentials).values(**values))


def update_credential(conn: Connection, credential_id: int, values: dict) -> None:
    conn.execute(update(credentials).where(credentials.c.id == credential_id).values(**values))


def delete_credential(conn: Connection, account_sid: str, sid: str) -> bool:
    return conn.execute(_DELETE, {"account_sid": account_sid, "sid": sid}).rowcount > 0


def page(
    conn: Connection, account_sid: str, *, after_id: int | None, before_id: int | None, limit: int
) -> list[Row]:
    conditions = [credentials.c.account_sid == account_sid]
    bounds, order = keyset(credentials.c.id, after_id, before_id)
    conditions.extend(bounds)
    statement = select(credentials).where(*conditions).order_by(order).limit(limit)
    return list(conn.execute(statement))
