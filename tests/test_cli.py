"""The command line, as an operator runs it: real subprocesses on a fresh SQLite file."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, select, text

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


# --- every failure a person can cause: one line, an exit code, no traceback, no secret --------

PASSWORD = "pw-" + uuid.uuid4().hex
UNKNOWN_ACCOUNT = "AC" + "0" * 32
# Every command that touches the database, as an operator would type it.
COMMANDS = {
    "serve": ("serve", "--port", "0"),  # the port is filled in by run_failing
    "worker": ("worker",),
    "db upgrade": ("db", "upgrade"),
    "db downgrade": ("db", "downgrade", "base"),
    "db current": ("db", "current"),
    "accounts create": ("accounts", "create", "--json"),
    "keys create": ("keys", "create", "--account", UNKNOWN_ACCOUNT),
    "import": ("import", "--from", "http://127.0.0.1:9", "--account-sid", UNKNOWN_ACCOUNT),
}


def run_failing(
    database_url: str, workdir: Path, *args: str, **env: str
) -> subprocess.CompletedProcess:
    args = tuple(str(free_port()) if a == "0" and args[0] == "serve" else a for a in args)
    return subprocess.run(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=cli_env(database_url, workdir, NOTIFY_IMPORT_AUTH_TOKEN="import-token", **env),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(
    result: subprocess.CompletedProcess, code: int, says: str, *secrets: str
) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("notify-server"), lines[0]
    assert says in lines[0], lines[0]
    for secret in (*secrets, "import-token", "[parameters", "gAAAAA"):
        assert secret not in output
    return lines[0]


@pytest.fixture
def blank_url(tmp_path: Path) -> Iterator[str]:
    """A database nothing has migrated, on the database the suite runs on: a new SQLite file,
    or a new PostgreSQL schema (first on the search path) in the test database."""
    url = os.environ.get("NOTIFY_TEST_DATABASE_URL")
    if not url:
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    schema = "blank_" + uuid.uuid4().hex[:12]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def unreachable_url() -> str:
    if os.environ.get("NOTIFY_TEST_DATABASE_URL"):
        return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    return "sqlite:////nonexistent-notify-folder/notify.db"


class TestFailuresAreOneLine:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_an_unreachable_database(self, tmp_path, command):
        result = run_failing(unreachable_url(), tmp_path, *COMMANDS[command])

        says = "does not exist"
        if os.environ.get("NOTIFY_TEST_DATABASE_URL"):
            says = "cannot use the database at postgresql+psycopg://postgres:***@127.0.0.1:"
        assert_one_line(result, 1, says, PASSWORD)

    @pytest.mark.parametrize(
        ("url", "command"),
        [
            ("not a url", "serve"),
            (f"mysql://root:{PASSWORD}@db/notify", "db upgrade"),
            ("postgresql+psycopg2://x/y", "accounts create"),
            # These were "unexpected error (ValueError/ArgumentError ...)".
            ("postgresql+psycopg://postgres@127.0.0.1:abc/x", "db upgrade"),
            ("sqlite://notify.db", "serve"),
        ],
    )
    def test_a_malformed_database_url(self, tmp_path, url, command):
        result = run_failing(url, tmp_path, *COMMANDS[command])

        line = assert_one_line(result, 2, "NOTIFY_DATABASE_URL", PASSWORD)
        assert "postgresql+psycopg://user:password@host:5432/name" in line

    @pytest.mark.parametrize(
        "command", ["worker", "accounts create", "keys create", "import", "db current"]
    )
    def test_an_unmigrated_database(self, tmp_path, blank_url, command):
        args = COMMANDS[command]
        if command in ("worker", "import"):
            args = (*args, "--no-migrate")
        result = run_failing(blank_url, tmp_path, *args)

        if command == "db current":  # an answer, not a failure: on stdout, exit 1
            assert result.returncode == 1
            assert result.stdout.startswith("none (not migrated; head is ")
            assert "run `notify-server db upgrade`" in result.stdout
            return
        assert_one_line(result, 2, "run `notify-server db upgrade`")

    @pytest.mark.parametrize("debug", [False, True])
    def test_a_failed_insert_never_shows_its_parameters(self, tmp_path, blank_url, debug):
        # The schema migrated but for the accounts table: the INSERT of the new account (its
        # sealed token, its token's hash) fails. It used to print both in the traceback.
        assert run_failing(blank_url, tmp_path, "db", "upgrade").returncode == 0
        engine = make_engine(blank_url)
        cascade = " CASCADE" if engine.dialect.name == "postgresql" else ""
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE api_keys"))
            conn.execute(text(f"DROP TABLE accounts{cascade}"))
        engine.dispose()
        flags = ("--debug",) if debug else ()

        result = run_failing(blank_url, tmp_path, *flags, "accounts", "create")

        assert result.returncode == 2
        assert result.stdout == ""
        last = result.stderr.splitlines()[-1]
        assert last == "notify-server: the database is not migrated: run `notify-server db upgrade`"
        assert ("Traceback" in result.stderr) == debug
        assert (
            "SQL parameters hidden" in result.stderr
            if debug
            else len(result.stderr.splitlines()) == 1
        )
        assert "gAAAAA" not in result.stderr  # a Fernet token
        assert not re.search(r"\b[0-9a-f]{64}\b", result.stderr)  # a SHA-256 hash

    @pytest.mark.parametrize("revision", ["nope", "9999"])
    @pytest.mark.parametrize("command", ["upgrade", "downgrade"])
    def test_a_bad_migration_revision(self, tmp_path, blank_url, command, revision):
        result = run_failing(blank_url, tmp_path, "db", command, revision)

        line = assert_one_line(result, 2, revision)
        assert "base, 0001, " in line and ", head)" in line

    @pytest.mark.parametrize("command", ["db upgrade", "db downgrade", "serve"])
    def test_a_database_a_newer_notify_server_migrated(self, tmp_path, blank_url, command):
        assert run_failing(blank_url, tmp_path, "db", "upgrade").returncode == 0
        engine = make_engine(blank_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        engine.dispose()

        result = run_failing(blank_url, tmp_path, *COMMANDS[command])

        # It was alembic's "Can't locate revision identified by '0099'".
        line = assert_one_line(result, 2, "the database's schema is at revision 0099")
        assert "a newer notify-server migrated it" in line

    @pytest.mark.parametrize(
        ("variable", "value", "says"),
        [
            ("NOTIFY_PORT", "70000", "70000 is not a port number (1-65535)"),
            ("NOTIFY_HOST", "no-such-host.invalid", "cannot listen on 'no-such-host.invalid'"),
            ("NOTIFY_HOST", "192.0.2.1", "192.0.2.1 is not an address of this machine"),
        ],
    )
    def test_a_bad_port_or_host(self, tmp_path, database_url, variable, value, says):
        result = run_failing(database_url, tmp_path, "serve", **{variable: value})

        assert_one_line(result, 2, says)

    def test_a_bad_port_flag(self, tmp_path, database_url):
        result = run_failing(database_url, tmp_path, "serve", "--port", "http")

        assert_one_line(result, 2, "notify-server serve: argument --port: not a port number")

    @pytest.mark.parametrize(
        ("args", "option"),
        [
            (("serve", "--port", "{busy}"), "--port or NOTIFY_PORT"),
            (("serve", "--metrics-port", "{busy}"), "--metrics-port or NOTIFY_METRICS_PORT"),
            (("serve", "--workers", "2", "--port", "{busy}"), "--port or NOTIFY_PORT"),
            (("worker", "--metrics-port", "{busy}"), "--metrics-port or NOTIFY_METRICS_PORT"),
        ],
    )
    def test_a_port_in_use(self, tmp_path, database_url, args, option):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = str(taken.getsockname()[1])
            args = tuple(busy if a == "{busy}" else a for a in args)
            if "--port" not in args and args[0] == "serve":
                args = (*args, "--port", str(free_port()))
            result = run_failing(database_url, tmp_path, *args)

        line = assert_one_line(result, 1, f"port {busy} on 127.0.0.1 is in use")
        assert line.endswith(f"choose another with {option}")

    @pytest.mark.parametrize("command", ["serve", "accounts create", "db upgrade", "db current"])
    def test_a_file_that_is_not_sqlite(self, tmp_path, command):
        (tmp_path / "notes.db").write_bytes(b"not SQLite, " * 500)
        url = f"sqlite:///{tmp_path / 'notes.db'}"
        result = run_failing(url, tmp_path, *COMMANDS[command])

        assert_one_line(result, 1, f"{tmp_path / 'notes.db'} is not a SQLite database")

    def test_the_api_and_metrics_on_one_port(self, tmp_path, database_url):
        port = str(free_port())
        args = ("serve", "--port", port, "--metrics-port", port)
        result = run_failing(database_url, tmp_path, *args)

        assert_one_line(result, 2, f"the API and /metrics cannot both listen on port {port}")

    def test_a_metrics_host_that_is_not_there_is_named(self, tmp_path, database_url):
        result = run_failing(
            database_url,
            tmp_path,
            "serve",
            "--port",
            str(free_port()),
            NOTIFY_METRICS_HOST="no-such-host.invalid",
            NOTIFY_METRICS_PORT=str(free_port()),
        )

        line = assert_one_line(result, 2, "cannot listen on 'no-such-host.invalid'")
        assert line.endswith("(NOTIFY_METRICS_HOST)")

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (("serve", "--workers", "00"), "argument --workers: not a number of processes"),
            (("serve", "--workers", "-3"), "argument --workers: not a number of processes"),
            (("serve", "--workers", "45837"), "argument --workers: not a number of processes"),
            (("healthcheck", "--timeout", "0"), "argument --timeout: not a number of seconds"),
        ],
    )
    def test_a_count_or_timeout_of_nothing(self, tmp_path, database_url, args, says):
        result = run_failing(database_url, tmp_path, *args)

        assert_one_line(result, 2, says)

    @pytest.mark.parametrize("command", ["serve", "accounts create", "db upgrade"])
    def test_an_unwritable_data_folder(self, tmp_path, command):
        # Root may write anywhere: a folder that is a file is what stops everyone.
        (tmp_path / "data").write_text("not a folder")
        url = f"sqlite:///{tmp_path / 'data' / 'notify.db'}"

        result = run_failing(url, tmp_path, *COMMANDS[command])

        assert_one_line(result, 1, str(tmp_path / "data"))

    def test_an_unwritable_key_file(self, tmp_path, blank_url):
        (tmp_path / "keys").write_text("not a folder")
        key_file = str(tmp_path / "keys" / "notify-server.key")
        assert run_failing(blank_url, tmp_path, "db", "upgrade").returncode == 0

        result = run_failing(
            blank_url, tmp_path, "accounts", "create", NOTIFY_SECRET_KEY_FILE=key_file
        )

        assert result.returncode != 0
        assert_one_line(result, result.returncode, key_file)

    def test_a_wrong_secret_key(self, tmp_path, blank_url):
        first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
        assert run_failing(blank_url, tmp_path, "db", "upgrade").returncode == 0
        made = run_failing(blank_url, tmp_path, "accounts", "create", NOTIFY_SECRET_KEY=first)
        assert made.returncode == 0, made.stderr

        for command in ("serve", "worker", "accounts create", "import"):
            result = run_failing(blank_url, tmp_path, *COMMANDS[command], NOTIFY_SECRET_KEY=second)
            assert_one_line(
                result, 2, "(NOTIFY_SECRET_KEY) is not this deployment's key", first, second
            )


class TestServeUnmigrated:
    def test_answers_503_and_says_to_upgrade_until_migrated(self, tmp_path, blank_url):
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notify_server.cli",
                "serve",
                "--no-migrate",
                "--port",
                str(port),
            ],
            env=cli_env(blank_url, tmp_path, NOTIFY_SECRET_KEY=Fernet.generate_key().decode()),
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200)
            api = httpx.get(f"{base}/v1/Services", auth=(UNKNOWN_ACCOUNT, "x" * 32))
            ready = httpx.get(f"{base}/readyz")

            assert api.status_code == 503
            assert api.json() == {
                "code": 20503,
                "message": "Service is unavailable: the database schema is not migrated"
                " (the operator must run `notify-server db upgrade`)",
                "more_info": "https://www.twilio.com/docs/errors/20503",
                "status": 503,
            }
            assert ready.status_code == 503
            assert "notify-server db upgrade" in ready.json()["reason"]

            # Migrated meanwhile: the same process becomes ready, and serves.
            assert run_failing(blank_url, tmp_path, "db", "upgrade").returncode == 0
            wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200)
            after = httpx.get(f"{base}/v1/Services", auth=(UNKNOWN_ACCOUNT, "x" * 32))
            assert after.status_code == 401
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=30)
        logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        warnings = [e["message"] for e in logged if e["level"] == "warning"]
        assert any(
            m.startswith("the database is not migrated: run `notify-server db upgrade`")
            for m in warnings
        ), warnings
        tracebacks = [e for e in logged if "Traceback" in json.dumps(e)]
        assert tracebacks == []


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("not within the time")
