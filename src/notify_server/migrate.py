"""Alembic, driven from code: `notify-server serve` and `db upgrade` call this."""

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


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
