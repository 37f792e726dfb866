"""Tests run against a real database: a SQLite file, or PostgreSQL when
NOTIFY_TEST_DATABASE_URL is set (CI sets it to this machine's PostgreSQL)."""

import os
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from notify_server import migrate
from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import make_engine
from notify_server.models import Base
from tests.factories import Account, make_account


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("NOTIFY_TEST_DATABASE_URL")
    if url:
        reset_schema(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'notify.db'}"
    migrate.upgrade(url)
    return url


def reset_schema(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(scope="session")
def secret_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def settings(database_url: str, secret_key: str, tmp_path) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=secret_key,
        secret_key_file=str(tmp_path / "unused.key"),
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    # Every test starts from empty tables.
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def account(engine: Engine) -> Account:
    return make_account(engine)


@pytest.fixture
def other_account(engine: Engine) -> Account:
    return make_account(engine)
