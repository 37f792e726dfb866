from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from notify_server.accounts.models import Account, ApiKey

accounts = cast(Table, Account.__table__)
api_keys = cast(Table, ApiKey.__table__)

# Built once: rebuilding a statement per call costs more than running it.
_ACCOUNT_TOKEN_HASH = select(accounts.c.auth_token_hash).where(accounts.c.sid == bindparam("sid"))
_KEY_SECRET_HASH = select(api_keys.c.account_sid, api_keys.c.secret_hash).where(
    api_keys.c.sid == bindparam("sid")
)


def account_token_hash(conn: Connection, sid: str) -> str | None:
    return conn.execute(_ACCOUNT_TOKEN_HASH, {"sid": sid}).scalar()


def api_key_secret_hash(conn: Connection, sid: str) -> tuple[str, str] | None:
    row = conn.execute(_KEY_SECRET_HASH, {"sid": sid}).first()
    return None if row is None else (row.account_sid, row.secret_hash)


def account_exists(conn: Connection, sid: str) -> bool:
    return account_token_hash(conn, sid) is not None


def insert_account(
    conn: Connection,
    *,
    sid: str,
    friendly_name: str | None,
    token_hash: str,
    token_sealed: str | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(accounts).values(
            sid=sid,
            friendly_name=friendly_name,
            auth_token_hash=token_hash,
            auth_token_sealed=token_sealed,
            date_created=now,
            date_updated=now,
        )
    )


def set_account_token(
    conn: Connection, sid: str, token_hash: str, token_sealed: str | None, now: datetime
) -> None:
    conn.execute(
        update(accounts)
        .where(accounts.c.sid == sid)
        .values(auth_token_hash=token_hash, auth_token_sealed=token_sealed, date_updated=now)
    )


def account_token_sealed(conn: Connection, sid: str) -> str | None:
    return conn.execute(select(accounts.c.auth_token_sealed).where(accounts.c.sid == sid)).scalar()


def insert_api_key(
    conn: Connection,
    *,
    sid: str,
    account_sid: str,
    friendly_name: str | None,
    secret_hash: str,
    now: datetime,
) -> None:
    conn.execute(
        insert(api_keys).values(
            sid=sid,
            account_sid=account_sid,
            friendly_name=friendly_name,
            secret_hash=secret_hash,
            date_created=now,
        )
    )
