"""`notify-server import`, as an operator runs it: a live notify-server on its own SQLite file
is the source; the import runs as a subprocess into the test database; what it copied is
checked through the local API with the source account's own credentials."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine, text, update

from notify_server import migrate
from notify_server.bindings import repository
from notify_server.bindings.repository import LOCK_IDENTITY
from notify_server.db import transaction
from notify_server.importer import lock_all
from notify_server.models import Binding
from tests.factories import Account, make_binding, make_service
from tests.servers import live_server

SOURCE = Account("AC" + uuid.uuid4().hex, uuid.uuid4().hex)
BIG = 2100  # three pages of PageSize=1000
MISSING_IS = "IS" + "0" * 32
OLD_DATE = "2016-03-24 23:42:28"
OLD_WIRE = "2016-03-24T23:42:28Z"
PAGE_LINE = re.compile(r"^bindings (IS[0-9a-f]{32}): (\d+) copied \(\d+/s\)$", re.M)


@dataclass
class Source:
    base_url: str
    database_url: str
    credentials: dict[str, str]  # what -> CR sid
    services: dict[str, str]  # "small" | "empty" | "big" -> IS sid
    small_bindings: dict[str, dict] = field(default_factory=dict)  # what -> binding JSON


def _post(http: httpx.Client, path: str, data: dict | list[tuple[str, str]]) -> dict:
    # A list keeps repeated keys (Tag=...&Tag=...) in their order.
    body = urlencode(data if isinstance(data, list) else list(data.items()))
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = http.post(path, content=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _token_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def fill(base_url: str) -> tuple[dict[str, str], dict[str, str], dict[str, dict]]:
    """A credential of each kind, three services (one with BIG bindings), every field used."""
    http = httpx.Client(base_url=base_url, auth=SOURCE.auth, timeout=30)
    service_account = {
        "type": "service_account",
        "project_id": "import-test",
        "client_email": "push@import-test.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIfake\n-----END PRIVATE KEY-----\n",
    }
    credentials = {
        "apn_certificate": _post(
            http,
            "/v1/Credentials",
            {
                "Type": "apn",
                "FriendlyName": "APNs sandbox certificate",
                "Certificate": "-----BEGIN CERTIFICATE-----\nMIIc\n-----END CERTIFICATE-----",
                "PrivateKey": "-----BEGIN PRIVATE KEY-----\nMIIk\n-----END PRIVATE KEY-----",
                "Sandbox": "true",
            },
        )["sid"],
        "apn_token": _post(
            http,
            "/v1/Credentials",
            {
                "Type": "apn",
                "TokenKey": _token_key(),
                "KeyId": "ABC123DEFG",
                "TeamId": "TEAM123456",
                "BundleId": "com.example.app",
            },
        )["sid"],
        "gcm": _post(
            http, "/v1/Credentials", {"Type": "gcm", "FriendlyName": "gcm", "ApiKey": "AIzaSy-k"}
        )["sid"],
        "fcm": _post(
            http,
            "/v1/Credentials",
            {
                "Type": "fcm",
                "FriendlyName": "Firebase ü",
                "ServiceAccount": json.dumps(service_account),
            },
        )["sid"],
    }
    small = _post(
        http,
        "/v1/Services",
        {
            "FriendlyName": "small",
            "ApnCredentialSid": credentials["apn_certificate"],
            "GcmCredentialSid": credentials["gcm"],
            "FcmCredentialSid": credentials["fcm"],
            "MessagingServiceSid": "MG" + "a" * 32,
            "FacebookMessengerPageId": "page-1",
            "AlexaSkillId": "amzn1.ask.skill.1",
            "DefaultApnNotificationProtocolVersion": "4",
            "DefaultAlexaNotificationProtocolVersion": "2",
            "LogEnabled": "false",
            "DeliveryCallbackUrl": "https://example.com/callback?x=1",
            "DeliveryCallbackEnabled": "true",
        },
    )["sid"]
    empty = _post(http, "/v1/Services", {})["sid"]
    big = _post(http, "/v1/Services", {"FriendlyName": "big"})["sid"]
    bindings_url = f"/v1/Services/{small}/Bindings"
    small_bindings = {
        "apn": _post(
            http,
            bindings_url,
            [
                ("Identity", "zoë / ü"),
                ("BindingType", "apn"),
                ("Address", "a" * 64),
                ("Tag", "zeta"),
                ("Tag", "alpha"),
                ("Tag", "mid"),
                ("Endpoint", "device-1"),
                ("CredentialSid", credentials["apn_token"]),
            ],
        ),
        "fcm": _post(
            http,
            bindings_url,
            [
                ("Identity", "alice"),
                ("BindingType", "fcm"),
                ("Address", "fcm-token-1"),
                *[("Tag", f"tag-{i:02d}") for i in range(20, 0, -1)],
                ("NotificationProtocolVersion", "custom-7"),
            ],
        ),
        "gcm": _post(
            http,
            bindings_url,
            {"Identity": "alice", "BindingType": "gcm", "Address": "gcm-1", "Endpoint": "dev-2"},
        ),
        "sms": _post(
            http,
            bindings_url,
            {"Identity": "bob", "BindingType": "sms", "Address": "+15555550100", "Tag": "vip"},
        ),
        "messenger": _post(
            http,
            bindings_url,
            {"Identity": "bob", "BindingType": "facebook-messenger", "Address": "m-1"},
        ),
        "alexa": _post(
            http, bindings_url, {"Identity": "carol", "BindingType": "alexa", "Address": "x-1"}
        ),
    }

    def big_binding(i: int) -> None:
        form = [
            ("Identity", f"user-{i:05d}"),
            ("BindingType", "sms"),
            ("Address", f"+1555{i:07d}"),
            ("Tag", f"t{i % 7}"),
            ("Tag", "big"),
        ]
        if i % 3 == 0:
            form.append(("Endpoint", f"endpoint-{i}"))
        _post(http, f"/v1/Services/{big}/Bindings", form)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(big_binding, range(BIG)))
    http.close()
    return credentials, {"small": small, "empty": empty, "big": big}, small_bindings


def age_some_rows(database_url: str, source: Source) -> None:
    """Dates the API cannot make: an import that stamped `now` instead would show."""
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE bindings SET date_created = ?, date_updated = ? WHERE sid = ?",
            (OLD_DATE, "2017-01-02 03:04:05", source.small_bindings["sms"]["sid"]),
        )
        db.execute(
            "UPDATE services SET date_created = ? WHERE sid = ?",
            (OLD_DATE, source.services["small"]),
        )
        db.execute(
            "UPDATE credentials SET date_created = ? WHERE sid = ?",
            (OLD_DATE, source.credentials["fcm"]),
        )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    workdir = tmp_path_factory.mktemp("import-source")
    database_url = f"sqlite:///{workdir / 'source.db'}"
    migrate.upgrade(database_url)
    env = {
        "NOTIFY_ACCOUNT_SID": SOURCE.sid,
        "NOTIFY_AUTH_TOKEN": SOURCE.auth_token,
        "NOTIFY_SECRET_KEY_FILE": str(workdir / "source.key"),
        "NOTIFY_WORKER_ENABLED": "false",
        "NOTIFY_ACCESS_LOG": "false",
        "NOTIFY_PUBLIC_URL": "",
    }
    with live_server(database_url, env=env) as server:
        credentials, services, small_bindings = fill(server.base_url)
        data = Source(server.base_url, database_url, credentials, services, small_bindings)
        age_some_rows(database_url, data)
        yield data


# --- running the import ----------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def summary_line(self, name: str) -> str:
        found = [line for line in self.stdout.splitlines() if line.startswith(f"{name}: ")]
        assert len(found) == 1, self.stdout
        return found[0]


class Importer:
    def __init__(self, database_url: str, secret_key: str, workdir: Path) -> None:
        self.database_url = database_url
        self.secret_key = secret_key
        self.workdir = workdir

    def env(self, token: str | None = SOURCE.auth_token) -> dict[str, str]:
        # Nothing from the caller's NOTIFY_* environment may leak into the command.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        if token is not None:
            env["NOTIFY_IMPORT_AUTH_TOKEN"] = token
        return {
            **env,
            "NOTIFY_DATABASE_URL": self.database_url,
            "NOTIFY_SECRET_KEY": self.secret_key,
            "NOTIFY_SECRET_KEY_FILE": str(self.workdir / "unused.key"),
            # Backoff starts at 10 ms here (1 s by default): the retries stay real but quick.
            "NOTIFY_IMPORT_RETRY_SECONDS": "0.01",
        }

    def command(self, source_url: str, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "notify_server.cli",
            "import",
            "--from",
            source_url,
            "--account-sid",
            SOURCE.sid,
            *args,
        ]

    def __call__(self, source_url: str, *args: str, token: str | None = SOURCE.auth_token) -> Run:
        """The token from NOTIFY_IMPORT_AUTH_TOKEN, as an operator should pass it."""
        done = subprocess.run(
            self.command(source_url, *args),
            env=self.env(token),
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, source_url: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(source_url, *args),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def importer(database_url: str, secret_key: str, tmp_path: Path, engine: Engine) -> Importer:
    # `engine` empties the test database after each test.
    return Importer(database_url, secret_key, tmp_path)


def succeeded(run: Run) -> Run:
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def tally(copied: int, new: int, updated: int, unchanged: int) -> str:
    return f"{copied} copied ({new} new, {updated} updated, {unchanged} unchanged)"


# --- comparing both sides --------------------------------------------------------------------


def _all_pages(get: Callable[[str], httpx.Response], url: str | None) -> list[dict]:
    records: list[dict] = []
    while url:
        response = get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        records += body[body["meta"]["key"]]
        url = body["meta"]["next_page_url"]
    return records


def source_list(source: Source, path: str, query: str = "") -> list[dict]:
    with httpx.Client(auth=SOURCE.auth, timeout=30) as http:
        return _all_pages(http.get, f"{source.base_url}{path}?{query}&PageSize=1000")


def local_list(
    client: TestClient, path: str, query: str = "", auth: tuple[str, str] = SOURCE.auth
) -> list[dict]:
    return _all_pages(lambda url: client.get(url, auth=auth), f"{path}?{query}&PageSize=1000")


def _hostless(value: object, hosts: tuple[str, ...]) -> object:
    if isinstance(value, str):
        for host in hosts:
            value = value.replace(host, "HOST")
        return value
    if isinstance(value, dict):
        return {k: _hostless(v, hosts) for k, v in value.items()}
    return value


def assert_same_records(local: list[dict], remote: list[dict], source: Source, **expect) -> None:
    """Field by field, in list order; url and links may differ only by host."""
    hosts = (source.base_url, "http://testserver")
    assert len(local) == len(remote)
    for mine, theirs in zip(local, remote, strict=True):
        assert set(mine) == set(theirs), (mine, theirs)
        for key in theirs:
            want = expect.get(key, theirs[key])
            if key in ("url", "links"):
                assert _hostless(mine[key], hosts) == _hostless(want, hosts), (key, mine, theirs)
            else:
                assert mine[key] == want, (key, mine, theirs)


def assert_copied(
    client: TestClient,
    source: Source,
    services: tuple[str, ...] = ("small", "empty", "big"),
    auth: tuple[str, str] = SOURCE.auth,
    **expect: str,
) -> None:
    assert_same_records(
        local_list(client, "/v1/Credentials", auth=auth),
        source_list(source, "/v1/Credentials"),
        source,
        **expect,
    )
    wanted = {source.services[name] for name in services}
    remote_services = [s for s in source_list(source, "/v1/Services") if s["sid"] in wanted]
    assert_same_records(
        local_list(client, "/v1/Services", auth=auth), remote_services, source, **expect
    )
    for service in remote_services:
        path = f"/v1/Services/{service['sid']}/Bindings"
        assert_same_records(
            local_list(client, path, auth=auth), source_list(source, path), source, **expect
        )


def local_binding_sids(client: TestClient, source: Source, name: str) -> list[str]:
    path = f"/v1/Services/{source.services[name]}/Bindings"
    return [b["sid"] for b in local_list(client, path)]


# --- a tiny HTTP proxy in front of the source, to misbehave on cue ---------------------------

Answer = tuple[int, dict[str, str], bytes]
# (request number from 1, path) -> an answer to give instead, "drop" to close the connection
# without answering, or None to pass the request on to the source.
Behaviour = Callable[[int, str], "Answer | str | None"]


class Proxy:
    def __init__(self, target: str, behave: Behaviour) -> None:
        self.paths: list[str] = []
        self._lock = threading.Lock()
        upstream = httpx.Client(base_url=target, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with proxy._lock:
                    proxy.paths.append(self.path)
                    number = len(proxy.paths)
                answer = behave(number, self.path)
                if answer == "drop":
                    self.close_connection = True
                    return
                if answer is None:
                    # The source sees the proxy's Host: its next_page_urls lead back here.
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    response = upstream.get(self.path, headers=headers)
                    answer = (
                        response.status_code,
                        {"Content-Type": response.headers.get("content-type", "")},
                        response.content,
                    )
                assert not isinstance(answer, str)
                status, headers, body = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._upstream = upstream

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def count(self, fragment: str) -> int:
        return sum(fragment in path for path in self.paths)


@pytest.fixture
def proxy(source: Source) -> Iterator[Callable[[Behaviour], Proxy]]:
    started: list[Proxy] = []

    def start(behave: Behaviour) -> Proxy:
        started.append(Proxy(source.base_url, behave))
        return started[-1]

    yield start
    for p in started:
        p.close()


def error(status: int, code: int, message: str, headers: dict | None = None) -> Answer:
    body = {"code": code, "message": message, "status": status}
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


# --- the tests -------------------------------------------------------------------------------


class TestImportCopiesEverything:
    def test_every_credential_service_and_binding_arrives_identical(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        run = succeeded(importer(source.base_url))

        assert_copied(client, source)
        assert run.summary_line("services") == "services: " + tally(3, 3, 0, 0)
        small_count = len(source.small_bindings)
        total = BIG + small_count
        assert run.summary_line("bindings") == "bindings: " + tally(total, total, 0, 0)
        assert run.summary_line("credentials") == "credentials: " + tally(4, 4, 0, 0)
        assert run.summary_line("conflicts skipped") == "conflicts skipped: 0"
        assert run.stdout.splitlines()[0] == (
            f"import from {source.base_url} into local account {SOURCE.sid}"
            " (created, with the source's auth token)"
        )
        # The dates the API could not have made survived as they were.
        sms = client.get(
            f"/v1/Services/{source.services['small']}/Bindings/{source.small_bindings['sms']['sid']}",
            auth=SOURCE.auth,
        ).json()
        assert (sms["date_created"], sms["date_updated"]) == (OLD_WIRE, "2017-01-02T03:04:05Z")
        # binding_tags was written too: the local filters find what the source's find.
        path = f"/v1/Services/{source.services['big']}/Bindings"
        for query in ("Tag=t3", "Tag=t3&Tag=big", "Identity=user-00007&Identity=user-02099"):
            want = [b["sid"] for b in source_list(source, path, query)]
            assert want  # the filter selects something
            assert [b["sid"] for b in local_list(client, path, query)] == want
        # Not a terminal: a plain line per page.
        pages = PAGE_LINE.findall(run.stderr)
        big = [int(count) for sid, count in pages if sid == source.services["big"]]
        assert big == [1000, 2000, BIG]
        assert re.search(r"^credentials: 4 copied \(\d+/s\)$", run.stderr, re.M), run.stderr
        assert "\r" not in run.stderr

    def test_credentials_are_reported_until_their_secrets_are_posted_here(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        run = succeeded(importer(source.base_url, "--service", source.services["empty"]))

        assert run.summary_line("credentials needing secrets") == "credentials needing secrets: 4"
        for sid in source.credentials.values():
            assert f'/v1/Credentials/{sid} -u "{SOURCE.sid}:$AUTH_TOKEN"' in run.stdout
        apn = source.credentials["apn_certificate"]
        assert (
            f"curl -X POST http://127.0.0.1:8000/v1/Credentials/{apn}"
            f' -u "{SOURCE.sid}:$AUTH_TOKEN" --data-urlencode Certificate@cert.pem'
            " --data-urlencode PrivateKey@key.pem"
        ) in run.stdout
        fcm = source.credentials["fcm"]
        assert (
            f"curl -X POST http://127.0.0.1:8000/v1/Credentials/{fcm}"
            f' -u "{SOURCE.sid}:$AUTH_TOKEN" --data-urlencode ServiceAccount@service-account.json'
        ) in run.stdout
        assert SOURCE.auth_token not in run.stdout + run.stderr

        response = client.post(
            f"/v1/Credentials/{apn}",
            data={"Certificate": "-----BEGIN CERTIFICATE-----", "PrivateKey": "k"},
            auth=SOURCE.auth,
        )
        assert response.status_code == 200, response.text
        again = succeeded(importer(source.base_url, "--service", source.services["empty"]))

        assert again.summary_line("credentials needing secrets") == "credentials needing secrets: 3"
        assert apn not in again.stdout
        # The secrets posted here survive the re-import.
        assert client.get(f"/v1/Credentials/{apn}", auth=SOURCE.auth).json()["sandbox"] == "True"


class TestImportRunAgain:
    def test_a_second_run_copies_nothing_twice(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        succeeded(importer(source.base_url))
        run = succeeded(importer(source.base_url))

        total = BIG + len(source.small_bindings)
        assert run.summary_line("services") == "services: " + tally(3, 0, 0, 3)
        assert run.summary_line("bindings") == "bindings: " + tally(total, 0, 0, total)
        assert run.summary_line("credentials") == "credentials: " + tally(4, 0, 0, 4)
        assert run.stdout.splitlines()[0].endswith(f"into local account {SOURCE.sid}")
        assert_copied(client, source)
        # Tags are not doubled either: a tag filter finds each binding once.
        path = f"/v1/Services/{source.services['big']}/Bindings"
        assert len(local_list(client, path, "Tag=big")) == BIG

    def test_changes_at_the_source_are_copied_over(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        names = ("small", "empty")
        only = [arg for name in names for arg in ("--service", source.services[name])]
        succeeded(importer(source.base_url, *only))
        fcm = source.small_bindings["fcm"]
        with httpx.Client(base_url=source.base_url, auth=SOURCE.auth) as http:
            # Re-registered in place at the source: same SID, other tags and protocol version.
            again = _post(
                http,
                f"/v1/Services/{source.services['small']}/Bindings",
                [
                    ("Identity", "alice"),
                    ("BindingType", "fcm"),
                    ("Address", "fcm-token-1"),
                    ("Tag", f"new-{uuid.uuid4().hex[:8]}"),
                    ("Tag", "tag-05"),
                    ("NotificationProtocolVersion", uuid.uuid4().hex[:8]),
                ],
            )
            assert again["sid"] == fcm["sid"]
            renamed = http.post(
                f"/v1/Services/{source.services['empty']}", data={"FriendlyName": uuid.uuid4().hex}
            )
            assert renamed.status_code == 200, renamed.text
            relabelled = http.post(
                f"/v1/Credentials/{source.credentials['gcm']}", data={"FriendlyName": "renamed"}
            )
            assert relabelled.status_code == 200, relabelled.text

        run = succeeded(importer(source.base_url, *only))

        count = len(source.small_bindings)
        assert run.summary_line("services") == "services: " + tally(2, 0, 1, 1)
        assert run.summary_line("bindings") == "bindings: " + tally(count, 0, 1, count - 1)
        assert run.summary_line("credentials") == "credentials: " + tally(4, 0, 1, 3)
        assert_copied(client, source, services=names)
        # The new tags are indexed, the old ones gone.
        path = f"/v1/Services/{source.services['small']}/Bindings"
        assert [b["sid"] for b in local_list(client, path, "Tag=tag-05")] == [fcm["sid"]]
        assert local_list(client, path, "Tag=tag-01") == []


class TestImportServiceFilter:
    def test_only_the_named_services_and_their_bindings(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        small, empty = source.services["small"], source.services["empty"]
        run = succeeded(importer(source.base_url, "--service", small, "--service", empty))

        assert_copied(client, source, services=("small", "empty"))
        assert run.summary_line("services") == "services: " + tally(2, 2, 0, 0)
        count = len(source.small_bindings)
        assert run.summary_line("bindings") == "bindings: " + tally(count, count, 0, 0)
        # Credentials are the account's: all of them come.
        assert run.summary_line("credentials") == "credentials: " + tally(4, 4, 0, 0)
        response = client.get(f"/v1/Services/{source.services['big']}", auth=SOURCE.auth)
        assert response.status_code == 404

    def test_a_service_unknown_at_the_source_fails_before_any_write(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        run = importer(
            source.base_url, "--service", source.services["small"], "--service", MISSING_IS
        )

        assert run.returncode == 1
        assert f"service {MISSING_IS} was not found at the source" in run.stderr
        # Not even the account was created.
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("--service", "IS123"), "--service must be a service SID (IS...): 'IS123'"),
            (("--local-account", "nope"), "--local-account must be an account SID (AC...)"),
        ],
    )
    def test_malformed_arguments_are_a_usage_error(
        self, source: Source, importer: Importer, args: tuple[str, ...], message: str
    ) -> None:
        run = importer(source.base_url, *args)

        assert run.returncode == 2
        assert message in run.stderr
        assert run.stdout == ""


class TestImportAuth:
    def test_a_wrong_token_is_refused_and_nothing_is_written(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        run = importer(source.base_url, token="wrong-token")

        assert run.returncode == 1
        assert "the source rejected the credentials (401" in run.stderr
        assert "wrong-token" not in run.stdout + run.stderr
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401
        assert client.get("/v1/Services", auth=(SOURCE.sid, "wrong-token")).status_code == 401

    def test_into_an_existing_local_account(
        self, source: Source, importer: Importer, client: TestClient, other_account: Account
    ) -> None:
        small = source.services["small"]
        run = succeeded(
            importer(source.base_url, "--local-account", other_account.sid, "--service", small)
        )

        assert_copied(
            client,
            source,
            services=("small",),
            auth=other_account.auth,
            account_sid=other_account.sid,
        )
        assert run.stdout.splitlines()[0].endswith(f"into local account {other_account.sid}")
        assert f'-u "{other_account.sid}:$AUTH_TOKEN"' in run.stdout
        # The source's account was not created here.
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401

    def test_an_unknown_local_account_is_an_error(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        unknown = "AC" + uuid.uuid4().hex
        run = importer(source.base_url, "--local-account", unknown)

        assert run.returncode == 1
        assert f"no local account {unknown}" in run.stderr
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401


class TestImportRetries:
    def test_429_503_and_dropped_connections_are_retried(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        seen: set[str] = set()

        def first_attempt_fails(number: int, path: str) -> Answer | str | None:
            if path in seen:
                return None
            seen.add(path)
            if path.startswith("/v1/Credentials"):
                return error(429, 20429, "Too Many Requests", {"Retry-After": "1"})
            if path.startswith("/v1/Services?"):
                return "drop"
            return error(503, 20503, "Service Unavailable")

        flaky = proxy(first_attempt_fails)
        run = succeeded(importer(flaky.url))

        assert_copied(client, source)
        big = source.services["big"]
        # Every page asked twice, the failed attempt and the good one; the pages after the
        # first came from next_page_urls that point at the proxy.
        assert flaky.count(f"/v1/Services/{big}/Bindings") == 6
        assert flaky.count(f"/v1/Services/{big}/Bindings?PageSize=1000&Page=2&PageToken=") == 2
        assert len(flaky.paths) == 2 * len(seen)
        assert re.search(r"source: HTTP 429 on GET \S+; retry 1/6 in 1\.0 s", run.stderr)
        assert re.search(r"source: HTTP 503 on GET \S+/Bindings\S*; retry 1/6 in", run.stderr)
        assert "source: RemoteProtocolError" in run.stderr

    def test_gives_up_after_a_bounded_number_of_retries(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        down = proxy(lambda number, path: error(502, 20500, "Bad Gateway"))
        run = importer(down.url, "--quiet")

        assert run.returncode == 1
        assert len(down.paths) == 7  # the first try and 6 retries
        assert "the source kept failing (HTTP 502)" in run.stderr
        assert "gave up after 6 retries" in run.stderr
        # --quiet: no retry lines, only the outcome.
        assert "retry 1/6" not in run.stderr
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401

    def test_a_client_error_is_not_retried(self, source: Source, importer: Importer, proxy) -> None:
        def refuse_credentials(number: int, path: str) -> Answer | None:
            if path.startswith("/v1/Credentials"):
                return error(400, 20001, "Parameter 'PageSize' is invalid")
            return None

        picky = proxy(refuse_credentials)
        run = importer(picky.url)

        assert run.returncode == 1
        assert picky.count("/v1/Credentials") == 1
        assert (
            f"the source answered 400 to GET {picky.url}/v1/Credentials?PageSize=1000:"
            " Parameter 'PageSize' is invalid"
        ) in run.stderr


def interrupt_at_second_big_page(
    source: Source, importer: Importer, proxy: Callable[[Behaviour], Proxy], signum: int
) -> Run:
    return interrupt_through_proxy(source, importer, proxy, signum)[0]


def interrupt_through_proxy(
    source: Source, importer: Importer, proxy: Callable[[Behaviour], Proxy], signum: int
) -> tuple[Run, Proxy]:
    """Import through a proxy that holds back the big service's second page (the first time
    only); once the import waits for it (its first page committed), send it `signum`."""
    big = source.services["big"]
    reached, release = threading.Event(), threading.Event()

    def hold_second_page(number: int, path: str) -> None:
        if f"/v1/Services/{big}/Bindings" in path and "PageToken" in path and not reached.is_set():
            reached.set()
            release.wait(60)
        return None

    held = proxy(hold_second_page)
    process = importer.start(held.url)
    try:
        assert reached.wait(60), process.communicate(timeout=60)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.communicate()
    return Run(process.returncode, stdout, stderr), held


class TestImportResume:
    def test_killed_mid_way_then_run_again(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        killed = interrupt_at_second_big_page(source, importer, proxy, signal.SIGKILL)

        assert killed.returncode == -signal.SIGKILL

        # What was committed before the kill: every page up to the one being fetched.
        assert len(local_binding_sids(client, source, "big")) == 1000
        run = succeeded(importer(source.base_url))

        small = len(source.small_bindings)
        done = 1000 + small
        assert run.summary_line("bindings") == "bindings: " + tally(
            BIG + small, BIG - 1000, 0, done
        )
        assert run.summary_line("services") == "services: " + tally(3, 0, 0, 3)
        assert_copied(client, source)

    def test_run_again_resumes_where_the_killed_run_stopped(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        killed, counting = interrupt_through_proxy(source, importer, proxy, signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL
        before = len(counting.paths)

        run = succeeded(importer(counting.url))

        big = source.services["big"]
        asked = counting.paths[before:]
        # The services (to check the token and the list), then big's pages from the second:
        # not the credentials, nor the services whose bindings were all copied.
        assert asked[0] == "/v1/Services?PageSize=1000"
        assert asked[1].startswith(f"/v1/Services/{big}/Bindings?PageSize=1000&Page=1&")
        assert len(asked) == 3, asked
        assert f"resumed at bindings {big}, where an interrupted run stopped" in run.stdout
        assert run.summary_line("bindings") == "bindings: " + tally(BIG - 1000, BIG - 1000, 0, 0)
        assert run.summary_line("credentials") == "credentials: " + tally(0, 0, 0, 0)
        # Nothing twice, nothing missing.
        assert_copied(client, source)
        path = f"/v1/Services/{big}/Bindings"
        assert len(local_list(client, path, "Tag=big")) == BIG

        # Completed, the import forgets where it was: the next run copies everything again.
        before = len(counting.paths)
        again = succeeded(importer(counting.url))

        assert len(counting.paths) - before == 7
        assert "resumed" not in again.stdout
        small = len(source.small_bindings)
        assert again.summary_line("bindings") == "bindings: " + tally(
            BIG + small, 0, 0, BIG + small
        )

    def test_restart_copies_everything_again(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        _, counting = interrupt_through_proxy(source, importer, proxy, signal.SIGKILL)
        before = len(counting.paths)

        run = succeeded(importer(counting.url, "--restart"))

        assert len(counting.paths) - before == 7
        assert "resumed" not in run.stdout
        small = len(source.small_bindings)
        assert run.summary_line("bindings") == "bindings: " + tally(
            BIG + small, BIG - 1000, 0, 1000 + small
        )
        assert_copied(client, source)

    def test_ctrl_c_stops_with_a_summary(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        run = interrupt_at_second_big_page(source, importer, proxy, signal.SIGINT)

        assert run.returncode == 130, run.stderr
        assert "notify-server import: interrupted. What was copied stays copied" in run.stderr
        assert "Traceback" not in run.stderr
        small = len(source.small_bindings)
        assert run.summary_line("bindings") == "bindings: " + tally(
            1000 + small, 1000 + small, 0, 0
        )
        assert len(local_binding_sids(client, source, "big")) == 1000

    def test_a_source_failing_for_good_then_run_again(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        # services, credentials, small's bindings, empty's, big's first page; then nothing.
        failing = proxy(lambda n, path: error(500, 20500, "Internal") if n > 5 else None)
        run = importer(failing.url)

        assert run.returncode == 1
        assert "gave up after 6 retries" in run.stderr
        assert "run the same command again to finish" in run.stderr
        small = len(source.small_bindings)
        # The summary of what was copied before the source failed.
        assert run.summary_line("bindings") == "bindings: " + tally(
            1000 + small, 1000 + small, 0, 0
        )
        assert len(local_binding_sids(client, source, "big")) == 1000

        again = succeeded(importer(source.base_url))

        assert again.summary_line("bindings") == "bindings: " + tally(
            BIG + small, BIG - 1000, 0, 1000 + small
        )
        assert_copied(client, source)


class TestImportConflicts:
    def test_sids_of_another_local_account_are_skipped(
        self, source: Source, importer: Importer, client: TestClient, other_account: Account
    ) -> None:
        small = source.services["small"]
        succeeded(
            importer(source.base_url, "--local-account", other_account.sid, "--service", small)
        )

        run = succeeded(importer(source.base_url, "--service", small))

        assert run.summary_line("conflicts skipped") == "conflicts skipped: 5"
        assert (
            f"service {small}: the SID belongs to another local account: it and its bindings"
            " were skipped"
        ) in run.stdout
        for sid in source.credentials.values():
            assert f"credential {sid}: the SID belongs to another local account" in run.stdout
        assert run.summary_line("services") == "services: " + tally(0, 0, 0, 0)
        assert run.summary_line("bindings") == "bindings: " + tally(0, 0, 0, 0)
        assert run.summary_line("credentials needing secrets") == "credentials needing secrets: 0"
        assert local_list(client, "/v1/Services") == []
        assert local_list(client, "/v1/Credentials") == []
        # The other account's copy is untouched.
        assert_copied(
            client,
            source,
            services=("small",),
            auth=other_account.auth,
            account_sid=other_account.sid,
        )

    def test_credentials_of_another_local_account_are_not_referenced(
        self, source: Source, importer: Importer, client: TestClient, other_account: Account
    ) -> None:
        empty, small = source.services["empty"], source.services["small"]
        succeeded(
            importer(source.base_url, "--local-account", other_account.sid, "--service", empty)
        )

        run = succeeded(importer(source.base_url, "--service", small))

        # Delivery would otherwise send with the other account's secrets.
        assert run.summary_line("conflicts skipped") == "conflicts skipped: 4"
        assert run.summary_line("credential references cleared") == (
            "credential references cleared: 4"
        )
        service = client.get(f"/v1/Services/{small}", auth=SOURCE.auth).json()
        assert service["apn_credential_sid"] is None
        assert service["gcm_credential_sid"] is None
        assert service["fcm_credential_sid"] is None
        apn = source.small_bindings["apn"]
        assert (
            f"binding {apn['sid']}: credential_sid {apn['credential_sid']} is another local"
            " account's credential"
        ) in run.stdout
        path = f"/v1/Services/{small}/Bindings"
        local = local_list(client, path)
        assert [b["credential_sid"] for b in local if b["sid"] == apn["sid"]] == [None]
        everything_else = [b for b in local if b["sid"] != apn["sid"]]
        remote = [b for b in source_list(source, path) if b["sid"] != apn["sid"]]
        assert_same_records(everything_else, remote, source)

    def test_a_binding_sid_of_another_local_account_is_skipped(
        self,
        source: Source,
        importer: Importer,
        client: TestClient,
        engine: Engine,
        other_account: Account,
    ) -> None:
        small = source.services["small"]
        succeeded(importer(source.base_url, "--service", small))
        taken = source.small_bindings["alexa"]["sid"]
        deleted = client.delete(f"/v1/Services/{small}/Bindings/{taken}", auth=SOURCE.auth)
        assert deleted.status_code == 204
        # Only an import can give another account's binding this SID.
        theirs = make_service(client, other_account)["sid"]
        made = make_binding(client, other_account, theirs)
        with transaction(engine, write=True) as conn:
            table = Binding.__table__
            conn.execute(update(table).where(table.c.sid == made["sid"]).values(sid=taken))

        run = succeeded(importer(source.base_url, "--service", small))

        assert run.summary_line("conflicts skipped") == "conflicts skipped: 1"
        assert f"binding {taken}: the SID belongs to another local account" in run.stdout
        count = len(source.small_bindings)
        assert run.summary_line("bindings") == "bindings: " + tally(count - 1, 0, 0, count - 1)
        assert taken not in local_binding_sids(client, source, "small")
        kept = client.get(f"/v1/Services/{theirs}/Bindings/{taken}", auth=other_account.auth)
        assert kept.json()["address"] == made["address"]

    def test_a_device_registered_here_since_keeps_its_binding(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        small = source.services["small"]
        succeeded(importer(source.base_url, "--service", small))
        apn, gcm = source.small_bindings["apn"], source.small_bindings["gcm"]
        # After the switch the apps registered again here: new SIDs for the same devices.
        for old in (apn, gcm):
            gone = client.delete(f"/v1/Services/{small}/Bindings/{old['sid']}", auth=SOURCE.auth)
            assert gone.status_code == 204
        same_address = make_binding(
            client,
            SOURCE,
            small,
            Identity=apn["identity"],
            BindingType="apn",
            Address=apn["address"],
        )
        same_endpoint = make_binding(
            client, SOURCE, small, Identity="dave", BindingType="gcm", Address="g", Endpoint="dev-2"
        )

        run = succeeded(importer(source.base_url, "--service", small))

        assert run.summary_line("conflicts skipped") == "conflicts skipped: 2"
        assert (
            f"binding {apn['sid']}: binding {same_address['sid']} here has the same identity,"
            " binding type and address"
        ) in run.stdout
        assert (
            f"binding {gcm['sid']}: binding {same_endpoint['sid']} here has the same endpoint"
        ) in run.stdout
        sids = local_binding_sids(client, source, "small")
        assert same_address["sid"] in sids and same_endpoint["sid"] in sids
        assert apn["sid"] not in sids and gcm["sid"] not in sids
        assert len(sids) == len(source.small_bindings)


class TestImportOutput:
    def test_quiet_prints_only_the_summary(self, source: Source, importer: Importer) -> None:
        run = succeeded(importer(source.base_url, "--quiet", "--service", source.services["small"]))

        assert run.stderr == ""
        assert run.stdout.startswith(f"import from {source.base_url} into local account ")
        assert not PAGE_LINE.search(run.stdout)

    def test_a_terminal_sees_a_progress_bar(self, source: Source, importer: Importer) -> None:
        big = source.services["big"]
        small = source.services["small"]
        process, shown = on_a_terminal(
            importer, importer.command(source.base_url, "--service", small, "--service", big)
        )

        assert process.returncode == 0, shown
        # tqdm's bars: the services are counted (total, percentage, rate, ETA), and the
        # bindings of the service being copied beside them.
        assert re.search(r"bindings: +50%\|.*\| 1/2 \[\d\d:\d\d<\d\d:\d\d, ", shown), shown
        assert re.search(r"bindings: 100%\|.*\| 2/2 \[", shown), shown
        assert " service/s" in shown
        for count in (1000, 2000, BIG):
            assert f"bindings {big}: {count} copied, " in shown
        assert re.search(r"credentials: 4 credential \[", shown), shown
        assert re.search(r"services: 100%\|.*\| 2/2 \[", shown), shown
        # Rewritten in place: one line per bar (credentials, services, bindings) and the summary.
        summary = shown[shown.index("import from ") :]
        assert shown.count("\n") - summary.count("\n") == 3, shown

    def test_asks_for_the_token_on_a_terminal_without_echo(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        small = source.services["small"]
        process, shown = on_a_terminal(
            importer,
            importer.command(source.base_url, "--service", small, "--quiet"),
            token=None,
            answer=(f"auth token of {SOURCE.sid} at {source.base_url}: ", SOURCE.auth_token),
        )

        assert process.returncode == 0, shown
        assert SOURCE.auth_token not in shown  # typed, not echoed
        assert "services: 1 copied (1 new" in shown
        assert local_list(client, "/v1/Services")[0]["sid"] == small

    def test_no_token_and_no_terminal_is_one_line(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        run = importer(source.base_url, token=None)

        assert run.returncode == 2
        assert run.stderr == (
            f"notify-server import: no auth token for {SOURCE.sid}: set NOTIFY_IMPORT_AUTH_TOKEN"
            " (or run on a terminal, to be asked for it)\n"
        )
        assert run.stdout == ""
        assert client.get("/v1/Services", auth=SOURCE.auth).status_code == 401

    def test_the_deprecated_flag_still_works_and_says_so(
        self, source: Source, importer: Importer, client: TestClient
    ) -> None:
        small = source.services["small"]
        run = succeeded(
            importer(
                source.base_url, "--service", small, "--auth-token", SOURCE.auth_token, token=None
            )
        )

        assert run.summary_line("services") == "services: " + tally(1, 1, 0, 0)
        assert (
            "notify-server import: --auth-token is deprecated (`ps` and shell history show it):"
            " set NOTIFY_IMPORT_AUTH_TOKEN instead"
        ) in run.stderr
        assert SOURCE.auth_token not in run.stdout + run.stderr


def on_a_terminal(
    importer: Importer,
    command: list[str],
    *,
    token: str | None = SOURCE.auth_token,
    answer: tuple[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """`command` with a pseudo-terminal as its controlling terminal (stdin, stderr; getpass
    opens /dev/tty); `answer` is (prompt, what to type once it shows). Everything shown on the
    terminal, and stdout, as one text."""
    controller, terminal = pty.openpty()
    # 30 rows of 160 columns: a new pseudo-terminal has none, and tqdm would draw no bar.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    process = subprocess.Popen(
        command,
        env=importer.env(token),
        cwd=importer.workdir,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        start_new_session=True,
        # The child opens its terminal once, so that it becomes its controlling terminal.
        preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)),
    )
    os.close(terminal)
    shown = b""
    try:
        while True:
            if not select.select([controller], [], [], 0.5)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and answer[0].encode() in shown:
                os.write(controller, answer[1].encode() + b"\n")
                answer = None
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        process.wait(timeout=60)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return process, shown.decode().replace("\r\n", "\n") + stdout


class TestImportDuplicates:
    def test_a_record_twice_in_one_page_is_copied_once_and_reported(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        small = source.services["small"]
        twice = source.small_bindings["apn"]

        def repeat_one_binding(number: int, path: str) -> Answer | None:
            if not path.startswith(f"/v1/Services/{small}/Bindings"):
                return None
            body = httpx.get(f"{source.base_url}{path}", auth=SOURCE.auth).json()
            body["bindings"] += [b for b in body["bindings"] if b["sid"] == twice["sid"]]
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

        # It failed the page's insert ("UNIQUE constraint failed"), and every run again.
        run = succeeded(importer(proxy(repeat_one_binding).url, "--service", small))

        assert run.summary_line("invalid records skipped") == "invalid records skipped: 1"
        assert f"binding {twice['sid']}: appears twice in the source's list" in run.stdout
        count = len(source.small_bindings)
        assert run.summary_line("bindings") == "bindings: " + tally(count, count, 0, 0)
        assert twice["sid"] in local_binding_sids(client, source, "small")


class TestImportSourcePaging:
    def test_a_next_page_that_leads_back_is_one_line_not_a_hang(
        self, source: Source, importer: Importer, proxy
    ) -> None:
        def loop(number: int, path: str) -> Answer | None:
            if not path.startswith("/v1/Credentials"):
                return None
            body = {
                "credentials": [],
                "meta": {"key": "credentials", "next_page_url": path, "page": 0},
            }
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

        looping = proxy(loop)
        run = importer(looping.url, "--quiet")

        assert run.returncode == 1
        assert looping.count("/v1/Credentials") == 1
        assert "next_page_url leads back to a page already read" in run.stderr
        assert "Traceback" not in run.stderr


class TestImportLocalDatabase:
    def test_a_database_error_is_reported_without_a_traceback(
        self, source: Source, importer: Importer, tmp_path: Path
    ) -> None:
        # A database whose services table has gone: the import fails writing the first one.
        url = f"sqlite:///{tmp_path / 'broken.db'}"
        migrate.upgrade(url)
        broken = create_engine(url)
        with broken.begin() as conn:
            conn.execute(text("DROP TABLE services"))
        broken.dispose()
        importer.database_url = url
        run = importer(source.base_url, "--no-migrate")

        assert run.returncode == 1
        assert "notify-server import: the local database failed: no such table" in run.stderr
        assert "Traceback" not in run.stderr
        assert run.stdout.startswith(f"import from {source.base_url} into local account")

    def test_an_unmigrated_database_says_to_upgrade(
        self, source: Source, importer: Importer, tmp_path: Path
    ) -> None:
        importer.database_url = f"sqlite:///{tmp_path / 'unmigrated.db'}"
        run = importer(source.base_url, "--no-migrate")

        assert run.returncode == 2
        assert "notify-server db upgrade" in run.stderr
        assert "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


class TestImportLocks:
    def test_the_import_takes_the_locks_the_api_takes(self, engine: Engine) -> None:
        """A registration in flight and an import page never interleave: same advisory keys."""
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers with BEGIN IMMEDIATE; no advisory locks")
        values = ["alice", "zoë / ü", "x" * 256, repository.digest("endpoint-1")]
        held = (
            "SELECT classid, objid FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )

        def locks_taken(take: Callable[[Connection], None]) -> set[tuple[int, int]]:
            with engine.connect() as conn, conn.begin():
                take(conn)
                return {tuple(row) for row in conn.execute(text(held))}

        service_sid = "IS" + "0" * 32

        def by_the_api(conn: Connection) -> None:
            for value in values:
                repository.lock_registration(conn, service_sid, value, endpoint_key=None)

        by_the_import = locks_taken(lambda conn: lock_all(conn, LOCK_IDENTITY, service_sid, values))
        assert len(by_the_import) == len(values)
        assert by_the_import == locks_taken(by_the_api)


class TestImportInvalidRecords:
    def test_a_record_this_server_cannot_hold_is_skipped_and_reported(
        self, source: Source, importer: Importer, client: TestClient, proxy
    ) -> None:
        small = source.services["small"]
        too_long, undated = source.small_bindings["sms"], source.small_bindings["alexa"]
        # Past the last datetime once in UTC: it aborted the whole import (OverflowError).
        far = source.small_bindings["fcm"]

        def spoil_two_bindings(number: int, path: str) -> Answer | None:
            if not path.startswith(f"/v1/Services/{small}/Bindings"):
                return None
            body = httpx.get(f"{source.base_url}{path}", auth=SOURCE.auth).json()
            for binding in body["bindings"]:
                if binding["sid"] == too_long["sid"]:
                    binding["identity"] = "i" * 257
                if binding["sid"] == undated["sid"]:
                    binding["date_created"] = "yesterday"
                if binding["sid"] == far["sid"]:
                    binding["date_updated"] = "9999-12-31T23:59:59-14:00"
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

        spoiled = proxy(spoil_two_bindings)
        run = succeeded(importer(spoiled.url, "--service", small))

        assert run.summary_line("invalid records skipped") == "invalid records skipped: 3"
        assert f"binding {too_long['sid']}: identity is longer than 256 characters" in run.stdout
        assert f"binding {undated['sid']}: date 'yesterday' is not a date" in run.stdout
        assert (
            f"binding {far['sid']}: date '9999-12-31T23:59:59-14:00' is out of range" in run.stdout
        )
        count = len(source.small_bindings) - 3
        assert run.summary_line("bindings") == "bindings: " + tally(count, count, 0, 0)
        sids = local_binding_sids(client, source, "small")
        assert len(sids) == count
        assert not {too_long["sid"], undated["sid"], far["sid"]} & set(sids)
