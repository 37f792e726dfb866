"""Fixtures of the worker suites (test_worker.py, test_outcome_batching.py)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.crypto import SecretBox
from tests.factories import Account, make_service


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "worker_poll_seconds": 0.02,
            "worker_concurrency": 8,
            "delivery_timeout_seconds": 0.3,
            "worker_enabled": False,
        }
    )


@pytest.fixture
def box(worker_settings: Settings) -> SecretBox:
    return SecretBox(worker_settings.secret_key, worker_settings.secret_key_file)


@pytest.fixture
def api(worker_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The API with its own worker off: only the test's workers deliver."""
    with TestClient(create_app(worker_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def service_sid(api: TestClient, account: Account) -> str:
    return make_service(api, account)["sid"]
