"""Plain factory functions: each makes one thing through the public surface."""

from dataclasses import dataclass

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from notify_server.accounts.operations import create_account, create_api_key
from notify_server.crypto import SecretBox
from notify_server.db import transaction


@dataclass(frozen=True)
class Account:
    sid: str
    auth_token: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.sid, self.auth_token)


def make_account(engine: Engine, box: SecretBox | None = None) -> Account:
    """An account; with `box`, its token is also kept sealed (to sign delivery callbacks)."""
    with transaction(engine, write=True) as conn:
        created = create_account(conn, box)
    return Account(created.sid, created.auth_token)


def make_api_key(engine: Engine, account_sid: str) -> tuple[str, str]:
    with transaction(engine, write=True) as conn:
        key = create_api_key(conn, account_sid)
    return (key.sid, key.secret)


def make_service(client: TestClient, account: Account, **form: str) -> dict:
    response = client.post("/v1/Services", data=form, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()


def make_credential(client: TestClient, account: Account, **form: str) -> dict:
    response = client.post("/v1/Credentials", data={"Type": "apn", **form}, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()


def make_binding(
    client: TestClient, account: Account, service_sid: str, **form: str | list[str]
) -> dict:
    data = {"Identity": "alice", "BindingType": "apn", "Address": "a1b2c3", **form}
    response = client.post(f"/v1/Services/{service_sid}/Bindings", data=data, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()
