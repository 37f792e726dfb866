"""The official `twilio` Node.js package (twilio-node) against a live notify-server.

tests/node/sdk_roundtrip.mjs drives the SDK through create, list with paging and filters, fetch,
delete and two failed creates, asserting every step with node:assert; it prints one JSON summary
and exits 0, or exits 1 at the first mismatch. Here we run it against a live server and check
its summary and the server's state afterwards, then run it again behind a proxy that breaks the
server's answers one way at a time, to show the script notices.

Needs Node.js and tests/node/node_modules (CI runs `npm ci --prefix tests/node` first). Without
node_modules the session tries that once; if Node.js or npm is missing or `npm ci` fails, the
tests skip locally and fail under CI (CI set), where a skip would hide a broken SDK run.
"""

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.factories import Account
from tests.servers import LiveServer, free_port, live_server

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "sdk_roundtrip.mjs"
PINNED_TWILIO = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["twilio"]
SCRIPT_TIMEOUT = 90
BINDING_SID = re.compile(r"BS[0-9a-f]{32}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run `npm ci --prefix tests/node` before pytest)")
    pytest.skip(reason)


def _installed_twilio() -> str | None:
    manifest = NODE_DIR / "node_modules" / "twilio" / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/node/node_modules installed (`npm ci` once if absent)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js (`node`) is not installed")
    if _installed_twilio() is None:
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("tests/node/node_modules is missing and npm is not installed")
        try:
            done = subprocess.run(
                [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            _unavailable("tests/node/node_modules is missing and `npm ci` timed out")
        if done.returncode != 0 or _installed_twilio() is None:
            _unavailable(
                "tests/node/node_modules is missing and `npm ci --prefix tests/node` failed: "
                + done.stderr.strip()[-500:]
            )
    installed = _installed_twilio()
    assert installed == PINNED_TWILIO, (
        f"tests/node/node_modules has twilio {installed}, package.json pins {PINNED_TWILIO}:"
        " run `npm ci --prefix tests/node`"
    )
    return node


@pytest.fixture(scope="module")
def server(
    database_url: str, secret_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    key_file = tmp_path_factory.mktemp("node-sdk") / "unused.key"
    env = {"NOTIFY_SECRET_KEY": secret_key, "NOTIFY_SECRET_KEY_FILE": str(key_file)}
    with live_server(database_url, env=env) as server:
        yield server


def run_script(node: str, base_url: str, account: Account) -> subprocess.CompletedProcess[str]:
    # TWILIO_EDGE / TWILIO_REGION would rewrite the host name of every request the SDK makes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env.update(
        NOTIFY_BASE_URL=base_url,
        NOTIFY_ACCOUNT_SID=account.sid,
        NOTIFY_AUTH_TOKEN=account.auth_token,
    )
    return subprocess.run(
        [node, str(SCRIPT)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )


class TestNodeSdkRoundtrip:
    # For tools/coverage.py: the operations the script drives.
    exercises = ("CreateService", "CreateBinding", "ListBinding", "FetchBinding", "DeleteBinding")

    def test_create_list_fetch_delete_through_the_sdk(
        self, node: str, server: LiveServer, account: Account
    ) -> None:
        done = run_script(node, server.base_url, account)

        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        created = summary["created"]
        assert len(created) == len(set(created)) == 7
        assert all(BINDING_SID.fullmatch(sid) for sid in created)
        deleted = created[4]  # erin's
        assert summary == {
            "sdk": "twilio-node",
            "sdk_version": PINNED_TWILIO,
            "service_sid": summary["service_sid"],
            "created": created,
            "listed": created,
            "page_sizes": [2, 2, 2, 1],
            "limited": 5,
            "by_identity": ["alice", "dave", "grace"],
            "by_tags": ["carol", "grace"],
            "by_type": ["alice", "dave", "frank"],
            "fetched": {"sid": deleted, "date_created": summary["fetched"]["date_created"]},
            "user": {"identity": "erin", "bindings": [deleted]},
            "users": 7,
            "segments": 0,
            "deleted": deleted,
            "removed": True,
            "remaining": [sid for sid in created if sid != deleted],
            "not_found": {"status": 404, "code": 20404},
            "missing_parameter": {"status": 400, "code": 20001},
            "invalid_parameter": {"status": 400, "code": 20001},
            "requests": summary["requests"],
        }
        assert re.fullmatch(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.000Z", summary["fetched"]["date_created"]
        )

        # What the SDK did is what the server now holds, for this account.
        service_url = f"{server.base_url}/v1/Services/{summary['service_sid']}"
        service = httpx.get(service_url, auth=account.auth)
        assert service.status_code == 200
        assert service.json()["friendly_name"] == "node-sdk roundtrip"
        listed = httpx.get(f"{service_url}/Bindings", auth=account.auth)
        assert listed.status_code == 200
        bindings = listed.json()["bindings"]
        assert [b["sid"] for b in bindings] == summary["remaining"]
        identities = [b["identity"] for b in bindings]
        assert identities == ["alice", "bob", "carol", "dave", "frank", "grace"]
        gone = httpx.get(f"{service_url}/Bindings/{deleted}", auth=account.auth)
        assert (gone.status_code, gone.json()["code"]) == (404, 20404)


# --- the script notices a misbehaving server -------------------------------------------------

Tamper = Callable[[str, str, int, object], tuple[int, object]]


def _drop_next_page_url(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    if isinstance(body, dict) and "meta" in body:
        body["meta"]["next_page_url"] = None
    return status, body


def _repeat_a_binding(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    if isinstance(body, dict) and body.get("bindings") and "PageToken=" in path:
        body["bindings"].insert(0, body["bindings"][0])
    return status, body


def _offset_dates(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    # Python's isoformat(): the same instant, but not Twilio's wire format.
    if isinstance(body, dict):
        for key in ("date_created", "date_updated"):
            if isinstance(body.get(key), str):
                body[key] = body[key].replace("Z", "+00:00")
    return status, body


def _not_found_as_bad_request(
    method: str, path: str, status: int, body: object
) -> tuple[int, object]:
    if status == 404 and isinstance(body, dict):
        body["code"] = 20001
    return status, body


def _delete_answers_200(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    if method == "DELETE" and status == 204:
        return 200, {}
    return status, body


def _no_service_type(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    if isinstance(body, dict):
        body.pop("type", None)
    return status, body


def _filters_reordered(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    # What a server that rebuilt the query in its own order (Tag before Identity) would send.
    if isinstance(body, dict) and body.get("meta", {}).get("next_page_url"):
        url = body["meta"]["next_page_url"]
        if "&Tag=vip" in url:
            head, query = url.split("?", 1)
            params = query.split("&")
            params.sort(key=lambda p: not p.startswith("Tag="))
            body["meta"]["next_page_url"] = f"{head}?{'&'.join(params)}"
    return status, body


def _user_binding_url(method: str, path: str, status: int, body: object) -> tuple[int, object]:
    # A user's bindings answered with their plain /Bindings URLs.
    if isinstance(body, dict) and "/Users/" in path and body.get("bindings"):
        for binding in body["bindings"]:
            binding["url"] = binding["url"].replace(f"/Users/{binding['identity']}", "")
    return status, body


class TamperingProxy:
    """Forwards to the live server (keeping the Host header, so the server's URLs, paging
    included, lead back here) and lets `tamper` change each answer."""

    def __init__(self, upstream: str, tamper: Tamper) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_DELETE = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.upstream = upstream
        self.tamper = tamper
        self.http = httpx.Client(timeout=15)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        skip = {"connection", "content-length", "accept-encoding"}
        upstream = self.http.request(
            handler.command,
            self.upstream + handler.path,
            headers={k: v for k, v in handler.headers.items() if k.lower() not in skip},
            content=handler.rfile.read(length),
        )
        body = upstream.json() if upstream.content else None
        status, body = self.tamper(handler.command, handler.path, upstream.status_code, body)
        raw = b"" if body is None else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(raw)

    def __enter__(self) -> "TamperingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


class TestNodeSdkRoundtripFails:
    @pytest.mark.parametrize(
        ("tamper", "message"),
        [
            pytest.param(_drop_next_page_url, "all 7, exactly once", id="no-next-page-url"),
            pytest.param(_repeat_a_binding, "all 7, exactly once", id="binding-repeated"),
            pytest.param(_offset_dates, "service on the wire", id="dates-not-in-Z-form"),
            pytest.param(_not_found_as_bad_request, "code: 20001", id="404-with-code-20001"),
            pytest.param(_delete_answers_200, "delete answers 204", id="delete-answers-200"),
            pytest.param(_no_service_type, "service type on the wire", id="no-service-type"),
            pytest.param(_filters_reordered, "parameter order", id="paging-filters-reordered"),
            pytest.param(_user_binding_url, "lives under the user", id="user-binding-url"),
        ],
    )
    def test_a_misbehaving_server_fails_the_script(
        self, node: str, server: LiveServer, account: Account, tamper: Tamper, message: str
    ) -> None:
        with TamperingProxy(server.base_url, tamper) as proxy:
            done = run_script(node, proxy.base_url, account)

        assert done.returncode == 1, done.stdout
        assert done.stdout == ""
        failure = json.loads(done.stderr.splitlines()[0])
        assert failure["error"] == "AssertionError"
        assert message in failure["message"]

    def test_no_server_fails_the_script(self, node: str, account: Account) -> None:
        done = run_script(node, f"http://127.0.0.1:{free_port()}", account)

        assert done.returncode == 1
        assert done.stdout == ""
        assert json.loads(done.stderr.splitlines()[0])["code"] == "ECONNREFUSED"
        # Concise: no Axios dump, so no Authorization header in CI logs.
        assert account.auth_token not in done.stderr
        assert "Authorization" not in done.stderr
