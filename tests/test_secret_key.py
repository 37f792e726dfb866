"""One secret key per deployment: found the same way by every command, its fingerprint stored
in the database at first use, and every command that seals or opens secrets refusing a key
that is not the deployment's (exit 2, one line on stderr). Through the real CLI and the app."""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from twilio.request_validator import RequestValidator

from notify_server import migrate
from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.crypto import FINGERPRINT_LABEL, SecretBox, SecretKeyError, key_file_for
from notify_server.db import make_engine, transaction
from notify_server.deployment import check_secret_key, deployment
from notify_server.models import Account as AccountRow
from notify_server.models import Base
from notify_server.models import Credential as CredentialRow
from notify_server.wire import utcnow
from tests.factories import make_account, make_credential
from tests.servers import free_port
from tests.support.receiver import Receiver, serve_receiver

ACCOUNTS = AccountRow.__table__
CREDENTIALS = CredentialRow.__table__
SOURCE_SID = "AC" + "0" * 32
# The callback receiver listens on loopback.
OUTBOUND_ALLOW = "127.0.0.0/8,::1/128"
# Each command that seals or opens secrets; the import never reaches its source (port 9).
COMMANDS = {
    "serve": ["serve", "--port", "9"],
    "worker": ["worker"],
    "accounts create": ["accounts", "create", "--json"],
    "import": [
        "import",
        "--from",
        "http://127.0.0.1:9",
        "--account-sid",
        SOURCE_SID,
        "--auth-token",
        "x" * 32,
    ],
}


@pytest.fixture(autouse=True)
def empty_configured_database(engine: Engine) -> None:
    """From no fingerprint and no rows, whatever a server of another suite left behind (the
    `engine` fixture empties the tables again afterwards)."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def new_key() -> str:
    return Fernet.generate_key().decode()


def fingerprint(key: str) -> str:
    """What the database should hold: HMAC-SHA-256 of the label under the raw key, 32 hex."""
    digest = hmac.new(base64.urlsafe_b64decode(key), FINGERPRINT_LABEL, hashlib.sha256)
    return digest.hexdigest()[:32]


def base_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    # Nothing from the caller's NOTIFY_* environment may leak in; XDG_DATA_HOME keeps any
    # default key out of the real home directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    return {
        **env,
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "NOTIFY_DATABASE_URL": database_url,
        **extra,
    }


def cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused(done: subprocess.CompletedProcess, pattern: str) -> str:
    """Exit 2 and exactly one line on stderr, matching `pattern`; the line is returned."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(f"notify-server: {pattern}", lines[0]), lines[0]
    return lines[0]


def app_refuses(settings: Settings, match: str) -> None:
    """The app's lifespan raises before it serves anything."""
    with pytest.raises(SecretKeyError, match=match), TestClient(create_app(settings)):
        pass


def stored_fingerprints(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(deployment.c.key_fingerprint)).scalars())


def sealed_tokens(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(ACCOUNTS.c.auth_token_sealed)).scalars())


@dataclass
class SqliteDeployment:
    """A SQLite file in a directory of its own, migrated; commands run from elsewhere."""

    tmp_path: Path
    directory: Path
    url: str

    @property
    def key_file(self) -> Path:
        return self.directory / "notify-server.key"

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(self.tmp_path, self.url, **extra)

    def engine(self) -> Engine:
        return make_engine(self.url)


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> SqliteDeployment:
    directory = tmp_path / "data"
    directory.mkdir()
    url = f"sqlite:///{directory / 'notify-server.db'}"  # an absolute path
    migrate.upgrade(url)
    return SqliteDeployment(tmp_path, directory, url)


def workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


# --- the reproduction: serve and accounts create from different directories --------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as recorder:
        yield recorder


def start_serve(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "notify_server.cli", "serve", "--port", str(port)],
            env={
                **env,
                "NOTIFY_WORKER_POLL_SECONDS": "0.05",
                "NOTIFY_OUTBOUND_ALLOW": OUTBOUND_ALLOW,
            },
            cwd=cwd,
            stderr=stderr,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("serve did not become healthy in 30 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class TestOneKeyWhateverTheWorkingDirectory:
    def test_an_account_created_from_another_directory_gets_signed_callbacks(
        self, sqlite_deployment, tmp_path, receiver
    ):
        """The reported bug: `serve` run from A, `accounts create` from B, the database given
        by absolute path. Both now use the key beside the database, so the server opens the
        new account's sealed token and signs its callbacks with it."""
        dir_a, dir_b = workdir(tmp_path, "a"), workdir(tmp_path, "b")
        # What the old cwd-relative default left behind in B: ignored now.
        stray = new_key()
        (dir_b / "notify-server.key").write_text(stray)
        configured = ("AC" + uuid.uuid4().hex, uuid.uuid4().hex)
        env = sqlite_deployment.env(
            NOTIFY_ACCOUNT_SID=configured[0], NOTIFY_AUTH_TOKEN=configured[1]
        )
        process, base_url = start_serve(env, dir_a, tmp_path / "serve.log")
        try:
            created = cli(sqlite_deployment.env(), dir_b, "accounts", "create", "--json")
            assert created.returncode == 0, created.stderr
            account = json.loads(created.stdout)
            auth = (account["sid"], account["auth_token"])
            with httpx.Client(base_url=base_url, auth=auth, timeout=10) as http:
                service = http.post("/v1/Services", data={"FriendlyName": "b"}).json()
                binding = http.post(
                    f"/v1/Services/{service['sid']}/Bindings",
                    data={"Identity": "alice", "BindingType": "apn", "Address": "device"},
                )
                assert binding.status_code == 201, binding.text
                url = receiver.new_url()
                notification = http.post(
                    f"/v1/Services/{service['sid']}/Notifications",
                    data={"Identity": "alice", "Body": "hi", "DeliveryCallbackUrl": url},
                )
                assert notification.status_code == 201, notification.text
            deadline = time.monotonic() + 15
            while not receiver.received(url):
                assert time.monotonic() < deadline, "no callback: the server could not sign it"
                time.sleep(0.05)
        finally:
            stop(process)
        post = receiver.received(url)[0]
        validator = RequestValidator(account["auth_token"])
        assert validator.validate(url, post.form, post.headers["x-twilio-signature"])

        # One key, beside the database, mode 0600; none made in either working directory.
        assert sqlite_deployment.key_file.stat().st_mode & 0o777 == 0o600
        assert list(dir_a.iterdir()) == []
        assert [p.name for p in dir_b.iterdir()] == ["notify-server.key"]
        assert (dir_b / "notify-server.key").read_text() == stray
        key = sqlite_deployment.key_file.read_text().strip()
        engine = sqlite_deployment.engine()
        try:
            tokens = sealed_tokens(engine)
            assert stored_fingerprints(engine) == [fingerprint(key)]
        finally:
            engine.dispose()
        assert len(tokens) == 2  # the configured account's and the created one's
        assert all(Fernet(key.encode()).decrypt(token.encode()) for token in tokens)

    def test_the_historic_layout_keeps_working(self, tmp_path):
        """`./notify-server.db` and `./notify-server.key` in the working directory, as before."""
        here = workdir(tmp_path, "here")
        key = new_key()
        (here / "notify-server.key").write_text(key + "\n")
        env = base_env(tmp_path, "sqlite:///notify-server.db")
        assert cli(env, here, "db", "upgrade").returncode == 0
        created = cli(env, here, "accounts", "create", "--json")
        assert created.returncode == 0, created.stderr
        assert sorted(p.name for p in here.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
            "notify-server.db",
            "notify-server.key",
        ]
        engine = make_engine(f"sqlite:///{here / 'notify-server.db'}")
        try:
            assert stored_fingerprints(engine) == [fingerprint(key)]
            [token] = sealed_tokens(engine)
        finally:
            engine.dispose()
        assert Fernet(key.encode()).decrypt(token.encode())

    def test_the_key_file_setting_wins_over_the_database_directory(self, sqlite_deployment):
        elsewhere = sqlite_deployment.tmp_path / "keys" / "deployment.key"
        env = sqlite_deployment.env(NOTIFY_SECRET_KEY_FILE=str(elsewhere))
        created = cli(env, sqlite_deployment.tmp_path, "accounts", "create", "--json")
        assert created.returncode == 0, created.stderr
        assert elsewhere.stat().st_mode & 0o777 == 0o600
        assert not sqlite_deployment.key_file.exists()

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("sqlite:////srv/notify/notify-server.db", "/srv/notify/notify-server.key"),
            ("sqlite:///notify-server.db", "{cwd}/notify-server.key"),
            ("sqlite:///data/n.db", "{cwd}/data/notify-server.key"),
            ("sqlite:///file:/srv/n.db?uri=true", "/srv/notify-server.key"),
            ("sqlite://", "{xdg}/notify-server/secret.key"),
            ("sqlite:///:memory:", "{xdg}/notify-server/secret.key"),
            ("sqlite:///file:m?mode=memory&uri=true", "{xdg}/notify-server/secret.key"),
            ("postgresql+psycopg://u@db/notify", "{xdg}/notify-server/secret.key"),
        ],
    )
    def test_where_the_key_file_is(self, url, expected, tmp_path, monkeypatch):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        path = expected.format(cwd=os.getcwd(), xdg=tmp_path)
        assert key_file_for(url) == Path(path)

    def test_without_xdg_data_home_the_key_is_under_the_home_directory(self, monkeypatch):
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        monkeypatch.setenv("HOME", "/home/someone")
        expected = Path("/home/someone/.local/share/notify-server/secret.key")
        assert key_file_for("postgresql+psycopg://u@db/notify") == expected


# --- first use --------------------------------------------------------------------------------


class TestFirstUse:
    def test_db_upgrade_alone_stores_no_fingerprint_and_makes_no_key(self, sqlite_deployment):
        engine = sqlite_deployment.engine()
        try:
            assert stored_fingerprints(engine) == []
        finally:
            engine.dispose()
        assert not sqlite_deployment.key_file.exists()

    def test_the_first_command_makes_the_key_and_stores_its_fingerprint(self, sqlite_deployment):
        created = cli(sqlite_deployment.env(), sqlite_deployment.tmp_path, "accounts", "create")
        assert created.returncode == 0, created.stderr
        key = sqlite_deployment.key_file.read_text().strip()
        Fernet(key.encode())  # a real Fernet key
        engine = sqlite_deployment.engine()
        try:
            with engine.connect() as conn:
                [row] = conn.execute(select(deployment)).all()
        finally:
            engine.dispose()
        assert row.id == 1
        assert row.key_fingerprint == fingerprint(key)
        assert re.fullmatch(r"[0-9a-f]{32}", row.key_fingerprint)
        # An HMAC under the key: neither the key nor a plain hash of it.
        raw = base64.urlsafe_b64decode(key)
        for plain in (key.encode(), raw):
            assert hashlib.sha256(plain).hexdigest()[:32] != row.key_fingerprint
        assert key not in row.key_fingerprint and raw.hex()[:32] != row.key_fingerprint
        assert row.date_created is not None

        again = cli(sqlite_deployment.env(), sqlite_deployment.tmp_path, "accounts", "create")
        assert again.returncode == 0, again.stderr
        assert sqlite_deployment.key_file.read_text().strip() == key

    def test_on_postgresql_the_default_key_is_made_under_xdg_data_home(
        self, database_url, engine, tmp_path
    ):
        if not database_url.startswith("postgresql"):
            pytest.skip("the configured database is SQLite: its key is beside the file")
        created = cli(base_env(tmp_path, database_url), tmp_path, "accounts", "create")
        assert created.returncode == 0, created.stderr
        key_file = tmp_path / "xdg" / "notify-server" / "secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.parent.stat().st_mode & 0o777 == 0o700
        assert stored_fingerprints(engine) == [fingerprint(key_file.read_text().strip())]

    def test_the_app_stores_the_fingerprint_of_its_key(self, settings, engine, secret_key):
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
        assert stored_fingerprints(engine) == [fingerprint(secret_key)]


def run_together(envs: list[dict[str, str]], cwd: Path, *args: str) -> list:
    processes = [start_cli(env, cwd, *args) for env in envs]
    outcomes = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        outcomes.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return outcomes


def wait_for_a_blocked_insert(engine: Engine) -> None:
    """On PostgreSQL: until another connection waits to insert the deployment row."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO deployment%'"
    )
    deadline = time.monotonic() + 30
    while True:
        # A transaction sees one snapshot of pg_stat_activity: a fresh one for each look.
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        assert time.monotonic() < deadline, "the command never tried to insert its row"
        time.sleep(0.05)


class TestStartingTogether:
    def test_processes_without_a_key_make_one_key_and_agree_on_it(self, sqlite_deployment):
        outcomes = run_together(
            [sqlite_deployment.env()] * 4, sqlite_deployment.tmp_path, "accounts", "create"
        )
        assert [(o.returncode, o.stderr) for o in outcomes] == [(0, "")] * 4
        key = sqlite_deployment.key_file.read_text().strip()
        # No temporary file left behind.
        names = [p.name for p in sqlite_deployment.directory.iterdir() if "key" in p.name]
        assert names == ["notify-server.key"]
        engine = sqlite_deployment.engine()
        try:
            assert stored_fingerprints(engine) == [fingerprint(key)]
            tokens = sealed_tokens(engine)
        finally:
            engine.dispose()
        assert len(tokens) == 4
        assert all(Fernet(key.encode()).decrypt(token.encode()) for token in tokens)

    def test_on_postgresql_processes_without_a_key_agree_too(self, database_url, engine, tmp_path):
        if not database_url.startswith("postgresql"):
            pytest.skip("needs PostgreSQL, where nothing serialises the processes but the row")
        env = base_env(tmp_path, database_url)
        outcomes = run_together([env] * 4, tmp_path, "accounts", "create")
        assert [(o.returncode, o.stderr) for o in outcomes] == [(0, "")] * 4
        key_dir = tmp_path / "xdg" / "notify-server"
        assert [p.name for p in key_dir.iterdir()] == ["secret.key"]
        key = (key_dir / "secret.key").read_text().strip()
        assert stored_fingerprints(engine) == [fingerprint(key)]
        assert all(Fernet(key.encode()).decrypt(t.encode()) for t in sealed_tokens(engine))

    def test_of_two_different_keys_starting_at_once_one_wins(self, database_url, engine, tmp_path):
        keys = [new_key(), new_key()]
        envs = [base_env(tmp_path, database_url, NOTIFY_SECRET_KEY=key) for key in keys]
        outcomes = run_together(envs, tmp_path, "accounts", "create", "--json")
        [stored] = stored_fingerprints(engine)
        winner = [fingerprint(key) for key in keys].index(stored)
        assert outcomes[winner].returncode == 0, outcomes[winner].stderr
        refused(
            outcomes[1 - winner],
            r"the secret key \(NOTIFY_SECRET_KEY\) is not this deployment's key .*",
        )
        assert len(sealed_tokens(engine)) == 1  # the loser created nothing

    @pytest.mark.parametrize("same_key", [False, True], ids=["another key", "the same key"])
    def test_a_command_that_loses_the_race_compares_with_the_winner(
        self, same_key, database_url, engine, tmp_path
    ):
        """The winner's row is written but not yet committed while the command starts: the
        command must end up comparing its key with the winner's, not with its own."""
        winner, loser = new_key(), new_key()
        env = base_env(tmp_path, database_url, NOTIFY_SECRET_KEY=winner if same_key else loser)
        # On SQLite the write transaction holds the database's write lock meanwhile.
        with transaction(engine, write=True) as conn:
            values = {"id": 1, "key_fingerprint": fingerprint(winner), "date_created": utcnow()}
            conn.execute(deployment.insert().values(**values))
            process = start_cli(env, tmp_path, "accounts", "create")
            if conn.dialect.name == "postgresql":
                wait_for_a_blocked_insert(engine)
            else:
                time.sleep(2)
        stdout, stderr = process.communicate(timeout=60)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if same_key:
            assert done.returncode == 0, done.stderr
        else:
            refused(done, r"the secret key \(NOTIFY_SECRET_KEY\) is not this deployment's key .*")
        assert stored_fingerprints(engine) == [fingerprint(winner)]


# --- refusals ---------------------------------------------------------------------------------


@pytest.fixture
def deployed(database_url: str, engine: Engine, secret_key: str) -> str:
    """The configured database (PostgreSQL in CI) with the session key's fingerprint."""
    check_secret_key(engine, SecretBox(secret_key, None))
    assert stored_fingerprints(engine) == [fingerprint(secret_key)]
    return database_url


class TestAWrongKeyIsRefused:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_by_every_command(self, command, deployed, engine, secret_key, tmp_path):
        wrong = new_key()
        env = base_env(tmp_path, deployed, NOTIFY_SECRET_KEY=wrong)
        done = cli(env, tmp_path, *COMMANDS[command])
        line = refused(
            done,
            r"the secret key \(NOTIFY_SECRET_KEY\) is not this deployment's key \(database"
            rf" fingerprint {fingerprint(secret_key)[:12]}…, this key {fingerprint(wrong)[:12]}…\):"
            r" set NOTIFY_SECRET_KEY \(or NOTIFY_SECRET_KEY_FILE\) to the key the server was set"
            r" up with",
        )
        assert wrong not in line and secret_key not in line
        assert done.stdout == ""
        assert stored_fingerprints(engine) == [fingerprint(secret_key)]
        with engine.connect() as conn:
            assert conn.execute(select(ACCOUNTS)).all() == []

    def test_a_wrong_key_file_names_the_file(self, deployed, engine, tmp_path):
        key_file = tmp_path / "other.key"
        key_file.write_text(new_key())
        env = base_env(tmp_path, deployed, NOTIFY_SECRET_KEY_FILE=str(key_file))
        refused(
            cli(env, tmp_path, "accounts", "create"),
            rf"the secret key \({re.escape(str(key_file))}\) is not this deployment's key .*",
        )

    def test_the_right_key_is_accepted(self, deployed, engine, secret_key, tmp_path):
        env = base_env(tmp_path, deployed, NOTIFY_SECRET_KEY=secret_key)
        done = cli(env, tmp_path, "accounts", "create", "--json")
        assert done.returncode == 0, done.stderr
        [token] = sealed_tokens(engine)
        assert Fernet(secret_key.encode()).decrypt(token.encode())

    def test_by_the_app_before_it_serves(self, deployed, engine, settings, tmp_path):
        wrong = settings.model_copy(update={"secret_key": new_key()})
        app_refuses(wrong, "is not this deployment's key")
        assert stored_fingerprints(engine) == [fingerprint(settings.secret_key or "")]


@dataclass
class KeylessHost:
    """A database that has a fingerprint, seen from a host that has no key at the default
    place: the configured database on PostgreSQL (the default is under XDG_DATA_HOME), else
    a SQLite file of its own (the default is beside it, which for the shared test database
    other suites' servers may have created)."""

    url: str
    engine: Engine
    default_key_file: Path


@pytest.fixture
def keyless_host(
    database_url: str, engine: Engine, secret_key: str, tmp_path: Path
) -> Iterator[KeylessHost]:
    if database_url.startswith("postgresql"):
        check_secret_key(engine, SecretBox(secret_key, None))
        yield KeylessHost(database_url, engine, tmp_path / "xdg" / "notify-server" / "secret.key")
        return
    directory = workdir(tmp_path, "keyless")
    url = f"sqlite:///{directory / 'notify-server.db'}"
    migrate.upgrade(url)
    own = make_engine(url)
    check_secret_key(own, SecretBox(secret_key, None))
    try:
        yield KeylessHost(url, own, directory / "notify-server.key")
    finally:
        own.dispose()


class TestNoKeyWhereTheDeploymentHasOne:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_is_refused_and_no_key_is_made(self, command, keyless_host, secret_key, tmp_path):
        env = base_env(tmp_path, keyless_host.url)
        done = cli(env, tmp_path, *COMMANDS[command])
        refused(
            done,
            rf"no secret key at {re.escape(str(keyless_host.default_key_file))}, and this database"
            r" belongs to a deployment that has one"
            rf" \(fingerprint {fingerprint(secret_key)[:12]}…\): set NOTIFY_SECRET_KEY"
            r" \(or NOTIFY_SECRET_KEY_FILE\) to the key the server was set up with",
        )
        assert not keyless_host.default_key_file.exists()
        assert not (tmp_path / "xdg").exists()
        assert stored_fingerprints(keyless_host.engine) == [fingerprint(secret_key)]

    def test_a_missing_key_file_is_not_made_either(self, deployed, engine, tmp_path):
        key_file = tmp_path / "keys" / "notify.key"
        env = base_env(tmp_path, deployed, NOTIFY_SECRET_KEY_FILE=str(key_file))
        refused(
            cli(env, tmp_path, "accounts", "create"),
            rf"no secret key at {re.escape(str(key_file))}, .*",
        )
        assert not key_file.parent.exists()

    def test_by_the_app(self, deployed, engine, settings, tmp_path):
        key_file = tmp_path / "app.key"
        keyless = settings.model_copy(update={"secret_key": None, "secret_key_file": str(key_file)})
        app_refuses(keyless, "no secret key at")
        assert not key_file.exists()


class TestAMalformedKey:
    @pytest.mark.parametrize("value", ["not-a-fernet-key", "c2hvcnQ=", "é" * 44])
    def test_in_the_environment_is_one_line(self, value, sqlite_deployment):
        env = sqlite_deployment.env(NOTIFY_SECRET_KEY=value)
        for command in ("accounts create", "serve", "worker"):
            done = cli(env, sqlite_deployment.tmp_path, *COMMANDS[command])
            line = refused(
                done,
                r"the secret key \(NOTIFY_SECRET_KEY\) is not a Fernet key \(32 url-safe"
                r" base64-encoded bytes\): make one with python -c .*",
            )
            assert value not in line
        engine = sqlite_deployment.engine()
        try:
            assert stored_fingerprints(engine) == []
        finally:
            engine.dispose()
        assert not sqlite_deployment.key_file.exists()

    def test_in_the_key_file_is_one_line_and_the_file_is_left_alone(self, sqlite_deployment):
        sqlite_deployment.key_file.write_text("garbage\n")
        done = cli(sqlite_deployment.env(), sqlite_deployment.tmp_path, "accounts", "create")
        refused(
            done,
            rf"the secret key \({re.escape(str(sqlite_deployment.key_file))}\) is not a Fernet .*",
        )
        assert sqlite_deployment.key_file.read_text() == "garbage\n"

    def test_an_empty_key_file_is_malformed_too(self, sqlite_deployment):
        sqlite_deployment.key_file.write_text("")
        done = cli(sqlite_deployment.env(), sqlite_deployment.tmp_path, "accounts", "create")
        refused(done, r"the secret key \(.*\) is not a Fernet key .*")

    def test_a_key_file_that_cannot_be_read_is_one_line(self, sqlite_deployment):
        sqlite_deployment.key_file.mkdir()  # a directory where the key should be
        done = cli(sqlite_deployment.env(), sqlite_deployment.tmp_path, "accounts", "create")
        refused(
            done,
            rf"cannot read the secret key file {re.escape(str(sqlite_deployment.key_file))}: .*",
        )

    def test_by_the_app(self, settings):
        app_refuses(settings.model_copy(update={"secret_key": "nope"}), "is not a Fernet key")


class TestADatabaseWithSealedDataButNoFingerprint:
    """A database from before fingerprints: the first key must open what is already sealed."""

    @pytest.fixture
    def sealed_with(self, engine: Engine) -> str:
        original = new_key()
        make_account(engine, SecretBox(original, None))
        assert stored_fingerprints(engine) == []
        return original

    def test_a_wrong_key_is_refused_and_nothing_is_stored(
        self, sealed_with, database_url, engine, tmp_path
    ):
        env = base_env(tmp_path, database_url, NOTIFY_SECRET_KEY=new_key())
        for command in COMMANDS:
            refused(
                cli(env, tmp_path, *COMMANDS[command]),
                r"the secret key \(NOTIFY_SECRET_KEY\) does not open the secrets already stored in"
                r" this database: set NOTIFY_SECRET_KEY \(or NOTIFY_SECRET_KEY_FILE\) to the key"
                r" that sealed them",
            )
        assert stored_fingerprints(engine) == []
        assert len(sealed_tokens(engine)) == 1

    def test_no_key_is_refused_and_no_key_is_made(
        self, sealed_with, database_url, engine, tmp_path
    ):
        key_file = tmp_path / "none.key"
        env = base_env(tmp_path, database_url, NOTIFY_SECRET_KEY_FILE=str(key_file))
        refused(
            cli(env, tmp_path, "accounts", "create"),
            rf"no secret key at {re.escape(str(key_file))}, and this database holds secrets sealed"
            r" with one: set NOTIFY_SECRET_KEY \(or NOTIFY_SECRET_KEY_FILE\) to the key that"
            r" sealed them",
        )
        assert not key_file.exists()
        assert stored_fingerprints(engine) == []

    def test_the_key_that_sealed_them_is_recorded(
        self, sealed_with, database_url, engine, tmp_path
    ):
        env = base_env(tmp_path, database_url, NOTIFY_SECRET_KEY=sealed_with)
        done = cli(env, tmp_path, "accounts", "create")
        assert done.returncode == 0, done.stderr
        assert stored_fingerprints(engine) == [fingerprint(sealed_with)]

    def test_credential_secrets_count_too(self, database_url, engine, settings, tmp_path):
        original = settings.model_copy(update={"secret_key": new_key()})
        account = make_account(engine)  # no sealed token: only the credential is sealed
        with TestClient(create_app(original)) as client:
            make_credential(client, account, Certificate="-----BEGIN CERTIFICATE-----")
        with engine.begin() as conn:
            conn.execute(deployment.delete())  # as if it predated fingerprints
            assert conn.execute(select(CREDENTIALS.c.encrypted_secrets)).scalar_one()
        app_refuses(settings, "does not open the secrets already stored")
        assert stored_fingerprints(engine) == []

    def test_the_app_refuses_a_wrong_key_too(self, sealed_with, engine, settings):
        app_refuses(settings, "does not open the secrets already stored")
        assert stored_fingerprints(engine) == []


class TestAnOldSchema:
    def test_is_one_line_asking_for_db_upgrade(self, tmp_path):
        env = base_env(tmp_path, f"sqlite:///{tmp_path / 'old.db'}")
        assert cli(env, tmp_path, "db", "upgrade", "0001").returncode == 0
        for command in ("accounts create", "worker"):
            args = (
                [*COMMANDS[command], "--no-migrate"] if command == "worker" else COMMANDS[command]
            )
            refused(
                cli(env, tmp_path, *args),
                r"the database schema is older than this notify-server: run `notify-server db"
                r" upgrade`",
            )
        assert not (tmp_path / "notify-server.key").exists()


class TestStartedWhileTheDatabaseWasDown:
    """The app starts without its database (/readyz says 503) and checks its key as soon as
    the database answers; until then, and for good if the key is wrong, nothing secret."""

    def start(self, settings: Settings, tmp_path: Path, key: str) -> tuple[TestClient, str]:
        url = f"sqlite:///{tmp_path / 'later' / 'notify.db'}"  # its directory does not exist yet
        app = create_app(settings.model_copy(update={"database_url": url, "secret_key": key}))
        return TestClient(app, raise_server_exceptions=False), url

    def bring_up(self, url: str, tmp_path: Path, deployment_key: str) -> Engine:
        (tmp_path / "later").mkdir()
        migrate.upgrade(url)
        engine = make_engine(url)
        check_secret_key(engine, SecretBox(deployment_key, None))
        return engine

    def wait_ready(self, client: TestClient, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while (status := client.get("/readyz").status_code) != 200:
            if time.monotonic() > deadline:
                return status
            time.sleep(0.05)
        return status

    def test_the_right_key_is_checked_once_the_database_answers(self, settings, tmp_path):
        key = new_key()
        client, url = self.start(settings, tmp_path, key)
        with client:
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200
            engine = self.bring_up(url, tmp_path, key)
            try:
                assert self.wait_ready(client, 10) == 200
                account = make_account(engine)
                created = client.post(
                    "/v1/Credentials", data={"Type": "gcm", "ApiKey": "k"}, auth=account.auth
                )
                assert created.status_code == 201, created.text
            finally:
                engine.dispose()

    def test_a_wrong_key_never_seals_and_is_never_ready(self, settings, tmp_path, caplog):
        client, url = self.start(settings, tmp_path, new_key())
        with client:
            engine = self.bring_up(url, tmp_path, new_key())
            try:
                account = make_account(engine)
                assert self.wait_ready(client, 3) == 503
                created = client.post(
                    "/v1/Credentials", data={"Type": "gcm", "ApiKey": "k"}, auth=account.auth
                )
                with engine.connect() as conn:
                    assert conn.execute(select(CREDENTIALS)).all() == []
            finally:
                engine.dispose()
        assert created.status_code == 503
        assert created.json() == {
            "code": 20503,
            "message": "Service is unavailable, please retry the request",
            "more_info": "https://www.twilio.com/docs/errors/20503",
            "status": 503,
        }
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("is not this deployment's key" in message for message in errors), errors
