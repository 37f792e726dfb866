"""Alembic, driven from code: `notify-server serve` and `db upgrade` call this."""

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from notify_server.db import make_engine


def script_location() -> str:
    # The top-level alembic/ folder ships as the namespace package notify_server_migrations
    # (no __init__.py, so it never shadows the alembic library when run from the repo).
    spec = importlib.util.find_spec("notify_server_migrations")
    locations = spec.submodule_search_locations if spec else None
    for location in locations or ():
        if (Path(location) / "env.py").is_file():
            return location
    raise RuntimeError("notify-server's migration scripts are not installed")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The revision this code's migrations end at."""
    return ScriptDirectory(script_location()).get_current_head()


def older_revisions() -> frozenset[str]:
    """The revisions before this code's head: a database at one of them is behind."""
    script = ScriptDirectory(script_location())
    head = script.get_current_head()
    return frozenset(r.revision for r in script.walk_revisions() if r.revision != head)


def revisions() -> list[str]:
    """Every revision of this code, oldest first."""
    script = ScriptDirectory(script_location())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


# PostgreSQL's undefined_table; SQLite has no codes, only the message.
_UNDEFINED_TABLE = "42P01"


def is_unmigrated(error: DBAPIError) -> bool:
    """A statement failed because a table of ours does not exist: the schema is not migrated."""
    orig = error.orig
    if getattr(orig, "sqlstate", None) == _UNDEFINED_TABLE:
        return True
    return str(orig).startswith("no such table")
