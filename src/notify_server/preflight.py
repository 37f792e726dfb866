"""What a command checks before it starts, so that a container set up wrong, or started before
its database, gets one line saying what to do instead of a traceback."""

import math
import os
import sys
import tempfile
import time
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from notify_server import migrate
from notify_server.config import Settings
from notify_server.crypto import key_file_for


class NotWritable(Exception):
    """A file or folder the command must write is not writable: exit 1."""


class DatabaseNotReady(Exception):
    """`--wait-for-db` ran out of time: exit 1."""


def sqlite_file(database_url: str) -> Path | None:
    url = make_url(database_url)
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or url.query.get("uri") == "true":
        return None
    if database in ("", ":memory:"):
        return None
    return Path(os.path.abspath(database))


def check_writable(settings: Settings) -> None:
    """The SQLite database (its folder too: SQLite writes its -wal and -shm files there) and,
    when the key is to be generated, the folder of the key file."""
    database = sqlite_file(settings.database_url)
    if database is not None:
        _check_folder(database.parent, f"the SQLite database {database.name}")
        if database.exists() and not _can_write_file(database):
            raise NotWritable(_advice(database, "the SQLite database"))
    if not settings.secret_key:
        key_file = key_file_for(settings.database_url, settings.secret_key_file)
        # An existing key file is only read; crypto.py says so if it cannot be.
        if not key_file.exists():
            folder = next(p for p in key_file.parents if p.exists())
            _check_folder(folder, f"the secret key file {key_file}")


def _check_folder(folder: Path, holds: str) -> None:
    if not folder.is_dir():
        raise NotWritable(
            f"{folder} does not exist (it is to hold {holds}): create it, or mount a volume there"
        )
    try:
        # Trying is the only honest test: root passes os.access, read-only mounts do not.
        with tempfile.TemporaryFile(dir=folder, prefix=".notify-server-check-"):
            pass
    except OSError:
        raise NotWritable(_advice(folder, holds)) from None


def _can_write_file(path: Path) -> bool:
    try:
        with path.open("r+b"):
            return True
    except OSError:
        return False


def _advice(path: Path, holds: str) -> str:
    uid = os.geteuid()
    return (
        f"{path} is not writable by uid {uid} (it holds {holds}):"
        f" chown it to {uid}, or mount a writable volume there"
    )


def wait_for_database(database_url: str, seconds: float, *, migrated: bool) -> None:
    """Until the database answers (and with `migrated`, until its schema is this code's or
    newer: `--no-migrate` leaves migrating to another process), for at most `seconds`.
    One line on stderr per failed attempt; DatabaseNotReady at the end."""
    deadline = time.monotonic() + seconds
    url = make_url(database_url)
    connect_args = {}
    if url.get_backend_name() == "postgresql":
        # A host that drops packets would hang the attempt far past the deadline.
        connect_args["connect_timeout"] = max(1, min(5, math.ceil(seconds)))
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    where = url.render_as_string(hide_password=True)
    try:
        attempt = 0
        while True:
            attempt += 1
            reason = _not_ready(engine, migrated)
            if reason is None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseNotReady(
                    f"the database at {where} is not ready after {seconds:g} s"
                    f" and {attempt} attempts: {reason}"
                )
            print(
                f"notify-server: waiting for the database ({reason});"
                f" attempt {attempt}, {math.ceil(left)} s left",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(min(1.0, left))
    finally:
        engine.dispose()


def _not_ready(engine: Engine, migrated: bool) -> str | None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not migrated:
                return None
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as error:
        lines = str(error.orig).strip().splitlines()
        return lines[0] if lines else type(error.orig).__name__
    if current is None or current in migrate.older_revisions():
        head = migrate.head_revision()
        return f"its schema is at {current or 'nothing'}, not {head}: `db upgrade` migrates it"
    return None
