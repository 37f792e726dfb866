"""The command line, as an operator runs it: real subprocesses on a fresh SQLite file."""

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, select

from notify_server.db import make_engine
from notify_server.models import Account as AccountRow
from notify_server.models import Base
from tests.factories import make_account
from tests.servers import LiveServer, free_port, live_server

CONFIGURED_SID = "AC" + uuid.uuid4().hex
CONFIGURED_TOKEN = uuid.uuid4().hex


def cli_env(database_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    # Nothing from the caller's NOTIFY_* environment may leak into the command.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    return {
        **env,
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_SECRET_KEY_FILE": str(workdir / "notify-server.key"),
        **extra,
    }


def run_cli(database_url: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=cli_env(database_url, workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Cli:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.database_url = f"sqlite:///{workdir / 'cli.db'}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.database_url, self.workdir, *args)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = Cli(tmp_path_factory.mktemp("cli"))
    upgraded = cli("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    return cli


@pytest.fixture(scope="module")
def server(cli: Cli) -> Iterator[LiveServer]:
    env = {
        "NOTIFY_ACCOUNT_SID": CONFIGURED_SID,
        "NOTIFY_AUTH_TOKEN": CONFIGURED_TOKEN,
        "NOTIFY_SECRET_KEY_FILE": str(cli.workdir / "notify-server.key"),
    }
    with live_server(cli.database_url, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def account_run(cli: Cli) -> subprocess.CompletedProcess:
    return cli("accounts", "create", "--json")


@pytest.fixture(scope="module")
def created(account_run: subprocess.CompletedProcess) -> dict:
    assert account_run.returncode == 0, account_run.stderr
    return json.loads(account_run.stdout)


@pytest.fixture(scope="module")
def key_run(cli: Cli, created: dict) -> subprocess.CompletedProcess:
    return cli("keys", "create", "--account", created["sid"], "--json")


@pytest.fixture(scope="module")
def key(key_run: subprocess.CompletedProcess) -> dict:
    assert key_run.returncode == 0, key_run.stderr
    return json.loads(key_run.stdout)


class TestDbUpgrade:
    def test_creates_every_table(self, cli):
        engine = make_engine(cli.database_url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert tables == set(Base.metadata.tables) | {"alembic_version"}

    def test_is_idempotent(self, cli):
        again = cli("db", "upgrade")
        assert again.returncode == 0, again.stderr


class TestAccountsCreate:
    def test_json_prints_exactly_sid_and_auth_token(self, account_run):
        assert account_run.returncode == 0, account_run.stderr
        assert account_run.stdout.count("\n") == 1
        created = json.loads(account_run.stdout)
        assert set(created) == {"sid", "auth_token"}
        assert re.fullmatch(r"AC[0-9a-f]{32}", created["sid"])
        assert re.fullmatch(r"[0-9a-f]{32}", created["auth_token"])

    def test_token_is_stored_hashed(self, cli, created):
        engine = make_engine(cli.database_url)
        accounts = AccountRow.__table__
        try:
            with engine.connect() as conn:
                row = conn.execute(select(accounts).where(accounts.c.sid == created["sid"])).one()
        finally:
            engine.dispose()
        assert row.auth_token_hash == hashlib.sha256(created["auth_token"].encode()).hexdigest()
        assert all(created["auth_token"] not in str(value) for value in row)

    def test_credentials_work_against_a_live_server(self, created, server):
        auth = (created["sid"], created["auth_token"])

        posted = httpx.post(
            f"{server.base_url}/v1/Services", data={"FriendlyName": "cli"}, auth=auth
        )
        fetched = httpx.get(f"{server.base_url}/v1/Services/{posted.json()['sid']}", auth=auth)

        assert posted.status_code == 201, posted.text
        assert posted.json()["account_sid"] == created["sid"]
        assert posted.json()["url"].startswith(server.base_url + "/v1/Services/IS")
        assert fetched.json() == posted.json()
        wrong = httpx.get(f"{server.base_url}/v1/Services", auth=(created["sid"], "0" * 32))
        assert wrong.status_code == 401

    def test_accounts_are_isolated(self, created, server):
        service = httpx.post(
            f"{server.base_url}/v1/Services", auth=(created["sid"], created["auth_token"])
        ).json()

        seen = httpx.get(
            f"{server.base_url}/v1/Services/{service['sid']}",
            auth=(CONFIGURED_SID, CONFIGURED_TOKEN),
        )

        assert seen.status_code == 404

    def test_plain_output_names_sid_and_token(self, cli, created, server):
        result = cli("accounts", "create", "--friendly-name", "ops")

        assert result.returncode == 0, result.stderr
        sid = re.search(r"AC[0-9a-f]{32}", result.stdout)
        assert sid
        assert sid[0] != created["sid"]
        token = re.search(r"\b[0-9a-f]{32}\b", result.stdout.replace(sid[0], ""))
        assert token
        response = httpx.get(f"{server.base_url}/v1/Services", auth=(sid[0], token[0]))
        assert response.status_code == 200
        assert response.json()["services"] == []


class TestKeysCreate:
    def test_json_prints_exactly_sid_and_secret(self, key_run):
        assert key_run.returncode == 0, key_run.stderr
        assert key_run.stdout.count("\n") == 1
        key = json.loads(key_run.stdout)
        assert set(key) == {"sid", "secret"}
        assert re.fullmatch(r"SK[0-9a-f]{32}", key["sid"])
        assert re.fullmatch(r"[0-9a-f]{32}", key["secret"])

    def test_key_works_against_a_live_server_as_its_account(self, created, key, server):
        service = httpx.post(
            f"{server.base_url}/v1/Services", auth=(created["sid"], created["auth_token"])
        ).json()

        fetched = httpx.get(
            f"{server.base_url}/v1/Services/{service['sid']}", auth=(key["sid"], key["secret"])
        )
        credential = httpx.post(
            f"{server.base_url}/v1/Credentials",
            data={"Type": "fcm", "Secret": "s3cr3t-value"},
            auth=(key["sid"], key["secret"]),
        )
        wrong = httpx.get(f"{server.base_url}/v1/Services", auth=(key["sid"], "0" * 32))

        assert fetched.status_code == 200
        assert fetched.json() == service
        assert credential.status_code == 201
        assert credential.json()["account_sid"] == created["sid"]
        assert "s3cr3t-value" not in credential.text
        assert wrong.status_code == 401

    def test_unknown_account_exits_non_zero_with_a_message(self, cli):
        unknown = "AC" + "0" * 32

        result = cli("keys", "create", "--account", unknown, "--json")

        assert result.returncode != 0
        assert result.stdout == ""
        assert unknown in result.stderr
        assert "Traceback" not in result.stderr


class TestServe:
    def test_configured_account_is_ensured(self, server):
        auth = (CONFIGURED_SID, CONFIGURED_TOKEN)

        listed = httpx.get(f"{server.base_url}/v1/Services", auth=auth)
        created = httpx.post(f"{server.base_url}/v1/Services", auth=auth)

        assert listed.status_code == 200, listed.text
        assert created.status_code == 201
        assert created.json()["account_sid"] == CONFIGURED_SID
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200

    def test_a_new_configured_token_replaces_the_old_one(self, cli):
        engine = make_engine(cli.database_url)
        try:
            existing = make_account(engine)
        finally:
            engine.dispose()
        new_token = uuid.uuid4().hex
        env = {
            "NOTIFY_ACCOUNT_SID": existing.sid,
            "NOTIFY_AUTH_TOKEN": new_token,
            "NOTIFY_SECRET_KEY_FILE": str(cli.workdir / "notify-server.key"),
        }

        with live_server(cli.database_url, env=env) as restarted:
            url = f"{restarted.base_url}/v1/Services"
            assert httpx.get(url, auth=(existing.sid, new_token)).status_code == 200
            assert httpx.get(url, auth=existing.auth).status_code == 401

    @pytest.mark.parametrize("account_sid", ["bad", "AC" + "g" * 32])
    def test_invalid_configured_sid_exits_non_zero(self, cli, account_sid):
        env = cli_env(
            cli.database_url,
            cli.workdir,
            NOTIFY_ACCOUNT_SID=account_sid,
            NOTIFY_AUTH_TOKEN=uuid.uuid4().hex,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "notify_server.cli", "serve", "--port", str(free_port())],
            env=env,
            cwd=cli.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail("serve kept running with an invalid NOTIFY_ACCOUNT_SID")

        assert process.returncode != 0
        assert "NOTIFY_ACCOUNT_SID" in stderr
        assert "Traceback" not in stderr
