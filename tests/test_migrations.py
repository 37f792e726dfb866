"""Migrations: upgrade -> downgrade -> upgrade on both databases; models and migrations agree."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from notify_server import migrate
from notify_server.db import make_engine
from notify_server.models import Base


def head_revision() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def assert_round_trip(url: str) -> None:
    model_tables = set(Base.metadata.tables)

    migrate.upgrade(url)
    assert current_revision(url) == head_revision()
    assert table_names(url) == model_tables | {"alembic_version"}

    migrate.downgrade(url, "base")
    assert current_revision(url) is None
    assert table_names(url) <= {"alembic_version"}

    migrate.upgrade(url)
    assert current_revision(url) == head_revision()
    assert table_names(url) == model_tables | {"alembic_version"}
    assert differences(url) == []


class TestSqlite:
    def test_round_trip_on_a_fresh_file(self, tmp_path):
        assert_round_trip(f"sqlite:///{tmp_path / 'migrations.db'}")

    def test_upgrade_twice_is_a_no_op(self, tmp_path):
        url = f"sqlite:///{tmp_path / 'twice.db'}"
        migrate.upgrade(url)
        migrate.upgrade(url)
        assert current_revision(url) == head_revision()
        assert differences(url) == []

    def test_step_by_step_matches_head(self, tmp_path):
        """Each revision upgrades and downgrades on its own, not only as a whole."""
        url = f"sqlite:///{tmp_path / 'steps.db'}"
        script = ScriptDirectory.from_config(migrate.alembic_config(url))
        revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
        for revision in revisions:
            migrate.upgrade(url, revision)
            assert current_revision(url) == revision
        for revision in reversed(revisions):
            migrate.downgrade(url, "-1")
            assert current_revision(url) != revision
        assert current_revision(url) is None
        migrate.upgrade(url)
        assert differences(url) == []


class TestConfiguredDatabase:
    """The session's database (PostgreSQL in CI): downgraded, upgraded, left at head."""

    def test_round_trip(self, database_url):
        try:
            assert_round_trip(database_url)
        finally:
            # Whatever happened, the rest of the suite needs the schema at head.
            migrate.upgrade(database_url)

    def test_models_agree_with_migrations(self, database_url):
        assert current_revision(database_url) == head_revision()
        assert differences(database_url) == []

    def test_downgrade_removes_data_tables_with_rows_in_them(self, database_url, engine, account):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 1
        engine.dispose()
        try:
            migrate.downgrade(database_url, "base")
            assert table_names(database_url) <= {"alembic_version"}
        finally:
            migrate.upgrade(database_url)
        assert current_revision(database_url) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM accounts")).scalar_one() == 0
