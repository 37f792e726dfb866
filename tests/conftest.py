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

TEST_OUTBOUND_ALLOW = "127.0.0.0/8,::1/128"


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


@pytest.fixture(scope="session", autouse=True)
def secret_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The test database's one key: servers and commands the suite starts on it without a key
    # of their own read it from this file (a different key is refused, notify_server/deployment.py).
    key = Fernet.generate_key().decode()
    key_file = tmp_path_factory.mktemp("key") / "notify-server.key"
    key_file.write_text(key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NOTIFY_SECRET_KEY_FILE", str(key_file))
        yield key


@pytest.fixture
def settings(database_url: str, secret_key: str, tmp_path) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=secret_key,
        secret_key_file=str(tmp_path / "unused.key"),
        # The suite's fake providers and callback receivers listen on loopback.
        outbound_allow=TEST_OUTBOUND_ALLOW,
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
