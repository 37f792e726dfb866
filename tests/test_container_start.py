"""What a container meets at start-up: a data folder, database file or key folder it cannot
write gets one line naming the path and the uid (no traceback), and the health check that
the image, docker-compose.yml and the manifests use asks the right port for `serve` and for
`worker`, whose health port is NOTIFY_METRICS_PORT, metrics on or off."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.servers import free_port, live_server
from tests.test_cli import cli_env

# Root writes anywhere: as root, the commands run without the capabilities that let it
# (still uid 0, as in a container whose user is root), so that permissions mean something.
AS_ROOT = os.geteuid() == 0
UID = os.geteuid()
BOUND = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
DATA_COMMANDS = [
    ("serve",),
    ("worker",),
    ("db", "upgrade"),
    ("accounts", "create"),
    ("keys", "create", "--account", "AC" + "0" * 32),
]


@pytest.fixture
def place(tmp_path) -> Path:
    if AS_ROOT and shutil.which("setpriv") is None:
        pytest.skip("as root, needs setpriv (util-linux) to run a command bound by permissions")
    return tmp_path


def folder(place: Path, name: str, mode: int) -> Path:
    """A folder owned by this process's user (root, or the user the suite runs as)."""
    path = place / name
    path.mkdir()
    path.chmod(mode)
    return path


def start(database_url: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(BOUND if AS_ROOT else []), sys.executable, "-m", "notify_server.cli", *args],
        env={**cli_env(database_url, cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


def advice(path: Path, holds: str) -> str:
    return (
        f"notify-server: {path} is not writable by uid {UID} (it holds {holds}):"
        f" chown it to {UID}, or mount a writable volume there"
    )


class TestDataFolder:
    @pytest.mark.parametrize("command", DATA_COMMANDS, ids=" ".join)
    def test_a_read_only_data_folder_is_one_line_with_the_uid(self, place, command):
        data = folder(place, "data", 0o555)
        result = start(
            f"sqlite:///{data}/notify-server.db",
            *command,
            cwd=place,
            NOTIFY_SECRET_KEY_FILE=f"{data}/notify-server.key",
        )
        assert result.returncode == 1
        assert one_line(result) == advice(data, "the SQLite database notify-server.db")
        assert os.listdir(data) == []

    def test_a_read_only_database_file_in_a_writable_folder(self, place):
        data = folder(place, "data", 0o777)
        database = data / "notify-server.db"
        database.write_bytes(b"")
        database.chmod(0o444)
        result = start(f"sqlite:///{database}", "db", "upgrade", cwd=place)
        assert result.returncode == 1
        assert one_line(result) == advice(database, "the SQLite database")

    def test_a_key_folder_it_cannot_write(self, place):
        data = folder(place, "data", 0o777)
        keys = folder(place, "keys", 0o555)
        result = start(
            f"sqlite:///{data}/notify-server.db",
            "serve",
            cwd=place,
            NOTIFY_SECRET_KEY_FILE=f"{keys}/secret.key",
        )
        assert result.returncode == 1
        assert one_line(result) == advice(keys, f"the secret key file {keys}/secret.key")

    def test_a_missing_folder(self, place):
        missing = place / "not-mounted"
        result = start(f"sqlite:///{missing}/notify-server.db", "db", "upgrade", cwd=place)
        assert result.returncode == 1
        assert one_line(result) == (
            f"notify-server: {missing} does not exist (it is to hold the SQLite database"
            " notify-server.db): create it, or mount a volume there"
        )

    def test_an_existing_key_is_only_read_and_a_writable_folder_starts(self, place):
        # The check must not refuse what works: a key file given read-only, data writable.
        data = folder(place, "data", 0o777)
        keys = folder(place, "keys", 0o755)
        key = keys / "secret.key"
        key.write_text(Fernet.generate_key().decode())
        key.chmod(0o444)
        keys.chmod(0o555)
        result = start(
            f"sqlite:///{data}/notify-server.db",
            "db",
            "upgrade",
            cwd=place,
            NOTIFY_SECRET_KEY_FILE=str(key),
        )
        assert result.returncode == 0, result.stderr
        assert (data / "notify-server.db").stat().st_uid == UID


def healthcheck(*args: str, module: bool = False, **env: str) -> subprocess.CompletedProcess:
    program = ["notify_server.healthcheck"] if module else ["notify_server.cli", "healthcheck"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    return subprocess.run(
        [sys.executable, "-m", *program, *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


class TestHealthcheck:
    @pytest.mark.parametrize("module", [False, True], ids=["subcommand", "module"])
    def test_serve_on_the_configured_port(self, database_url, module):
        with live_server(database_url) as server:
            port = server.base_url.rsplit(":", 1)[1]
            result = healthcheck(module=module, NOTIFY_PORT=port, NOTIFY_HOST="0.0.0.0")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"healthy: http://127.0.0.1:{port}/healthz answered 200\n"

    @pytest.mark.parametrize("module", [False, True], ids=["subcommand", "module"])
    def test_nothing_listening_is_unhealthy_in_one_line(self, module):
        api, metrics = free_port(), free_port()
        result = healthcheck(module=module, NOTIFY_PORT=str(api), NOTIFY_METRICS_PORT=str(metrics))
        assert result.returncode == 1
        assert one_line(result) == (
            f"notify-server: unhealthy: nothing listens on port {api} or {metrics}"
        )

    def test_an_error_answer_is_unhealthy_and_the_metrics_port_is_not_asked(self):
        # Something answers on the API port, badly: that is this container's process, sick.
        with answering(503) as api, answering(200) as metrics:
            result = healthcheck(NOTIFY_PORT=str(api), NOTIFY_METRICS_PORT=str(metrics))
        assert result.returncode == 1
        assert one_line(result) == (
            f"notify-server: unhealthy: http://127.0.0.1:{api}/healthz answered 503"
        )

    def test_a_bad_setting_is_one_line(self):
        result = healthcheck(module=True, NOTIFY_PORT="eighty")
        assert result.returncode == 2
        assert one_line(result).startswith("notify-server: NOTIFY_PORT: ")


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class answering:
    """A listener on a free port that answers every GET with `status`."""

    def __init__(self, status: int) -> None:
        self.handler = type("Handler", (_Answer,), {"status": status})

    def __enter__(self) -> int:
        self.server = HTTPServer(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server.server_address[1]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_worker(database_url: str, workdir: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "notify_server.cli", "worker", "--no-migrate"],
        env={**cli_env(database_url, workdir), "NOTIFY_SECRET_KEY_FILE": "", **env},
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_healthy(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if healthcheck(NOTIFY_PORT=str(free_port()), NOTIFY_METRICS_PORT=str(port)).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the worker never answered /healthz")


class TestWorkerHealthPort:
    @pytest.fixture
    def worker_env(self, database_url, secret_key, tmp_path):
        return {"NOTIFY_SECRET_KEY": secret_key}

    @pytest.mark.parametrize("metrics_enabled", ["true", "false"])
    def test_the_worker_answers_healthz_on_the_metrics_port(
        self, database_url, worker_env, tmp_path, metrics_enabled
    ):
        port = free_port()
        process = run_worker(
            database_url,
            tmp_path,
            NOTIFY_METRICS_PORT=str(port),
            NOTIFY_METRICS_ENABLED=metrics_enabled,
            **worker_env,
        )
        try:
            wait_healthy(port, process)
            health = httpx.get(f"http://127.0.0.1:{port}/healthz")
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        if metrics_enabled == "true":
            assert metrics.status_code == 200
            assert re.search(r"^# TYPE notify_deliveries_total counter$", metrics.text, re.M)
        else:
            assert metrics.status_code == 404
            assert metrics.json()["code"] == 20404

    def test_a_worker_without_a_metrics_port_listens_nowhere(
        self, database_url, worker_env, tmp_path
    ):
        # No port of its own unless given one: two workers on one host do not collide.
        process = run_worker(database_url, tmp_path, NOTIFY_METRICS_ENABLED="false", **worker_env)
        try:
            time.sleep(2)
            assert process.poll() is None
            listening = subprocess.run(
                ["ss", "-Hltnp"], capture_output=True, text=True, check=False
            ).stdout
        finally:
            process.terminate()
            process.wait(timeout=30)
        if not listening and shutil.which("ss") is None:
            pytest.skip("no ss here")
        assert f"pid={process.pid}," not in listening
