"""One row per database: the fingerprint of the secret key that every process must share.

A process with another key would seal secrets no other process can open (every callback of
the account then fails), so each command that seals or opens secrets checks its key here
before it does anything else.
"""

import asyncio
import hmac
import logging
from datetime import datetime
from typing import cast

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, Integer, String, Table, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, mapped_column

from notify_server import migrate
from notify_server.accounts.models import Account
from notify_server.credentials.models import Credential
from notify_server.crypto import SecretBox, SecretKeyError, short
from notify_server.db import Base, transaction
from notify_server.wire import utcnow

THE_ROW = 1
# How many sealed values of each table a first key is tried on.
SAMPLE = 100
SET_THE_KEY = "set NOTIFY_SECRET_KEY (or NOTIFY_SECRET_KEY_FILE) to"
log = logging.getLogger("notify_server")


class Deployment(Base):
    __tablename__ = "deployment"

    # Always 1: the primary key is what makes "insert if absent" race-safe.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # HMAC-SHA-256 of a fixed label under the key (crypto.SecretBox.fingerprint).
    key_fingerprint: Mapped[str] = mapped_column(String(64))
    date_created: Mapped[datetime]


deployment = cast(Table, Deployment.__table__)


class SchemaBehind(SecretKeyError):
    """No deployment table yet: the key cannot be checked before `db upgrade`."""


def check_secret_key(engine: Engine, box: SecretBox) -> None:
    """The box's key is this deployment's, or SecretKeyError. The first key to come is
    recorded, once it has shown it opens the secrets already stored (if any)."""
    with transaction(engine, write=True) as conn:
        if not inspect(conn).has_table(deployment.name):
            raise SchemaBehind(
                "the database schema is older than this notify-server:"
                " run `notify-server db upgrade`"
            )
        stored = _stored_fingerprint(conn)
        if stored is None:
            sealed = _sealed_values(conn)
            # Never generate a key for a database that holds secrets sealed with one.
            if not box.load(create=not sealed):
                raise SecretKeyError(
                    f"no secret key at {box.source}, and this database holds secrets sealed"
                    f" with one: {SET_THE_KEY} the key that sealed them"
                )
            if sealed and not any(box.opens(value) for value in sealed):
                raise SecretKeyError(
                    f"the secret key ({box.source}) does not open the secrets already stored"
                    f" in this database: {SET_THE_KEY} the key that sealed them"
                )
            _insert_if_absent(conn, box.fingerprint())
            # Another process may have recorded its key first: compare with whatever won.
            stored = _stored_fingerprint(conn)
            assert stored is not None
        elif not box.load(create=False):
            raise SecretKeyError(
                f"no secret key at {box.source}, and this database belongs to a deployment"
                f" that has one (fingerprint {short(stored)}): {SET_THE_KEY} the key the server"
                " was set up with"
            )
        mine = box.fingerprint()
        if not hmac.compare_digest(stored, mine):
            raise SecretKeyError(
                f"the secret key ({box.source}) is not this deployment's key (database"
                f" fingerprint {short(stored)}, this key {short(mine)}): {SET_THE_KEY} the key"
                " the server was set up with"
            )


async def check_when_reachable(engine: Engine, box: SecretBox, retry_seconds: float = 1.0) -> bool:
    """For a server that started while the database was down (or not migrated), its box held:
    checks the key as soon as the database answers, migrated. True (the box released) once
    the key is the deployment's; False, logged, the box still held, if it is not."""
    behind = migrate.older_revisions()
    while True:
        await asyncio.sleep(retry_seconds)
        try:
            # Not before the migration has finished: the worker needs every table and column.
            if await asyncio.to_thread(_schema_behind, engine, behind):
                continue
            await asyncio.to_thread(check_secret_key, engine, box)
        except (OperationalError, SchemaBehind):
            continue
        except SecretKeyError as error:
            log.error("notify-server: %s", error)
            return False
        box.release()
        return True


def _schema_behind(engine: Engine, behind: frozenset[str]) -> bool:
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current is None or current in behind


def _stored_fingerprint(conn: Connection) -> str | None:
    return conn.execute(
        select(deployment.c.key_fingerprint).where(deployment.c.id == THE_ROW)
    ).scalar_one_or_none()


def _insert_if_absent(conn: Connection, fingerprint: str) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        insert(deployment)
        .values(id=THE_ROW, key_fingerprint=fingerprint, date_created=utcnow())
        .on_conflict_do_nothing(index_elements=[deployment.c.id])
    )


def _sealed_values(conn: Connection) -> list[str]:
    accounts = (
        select(Account.auth_token_sealed)
        .where(Account.auth_token_sealed.is_not(None))
        .order_by(Account.id)
        .limit(SAMPLE)
    )
    credentials = (
        select(Credential.encrypted_secrets)
        .where(Credential.encrypted_secrets.is_not(None))
        .order_by(Credential.id)
        .limit(SAMPLE)
    )
    found = [value for query in (accounts, credentials) for value in conn.execute(query).scalars()]
    return [value for value in found if value is not None]
