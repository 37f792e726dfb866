"""docker-compose.yml and deploy/nginx.conf agree with each other, with the Dockerfile and with
the server's own settings and command line (every service, variable, port, file and dependency
reference resolves); and what lets the file start in any order, `--wait-for-db`, run for real
against a database that comes up late or never. The image itself: tools/image-test."""

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from notify_server import migrate
from notify_server.cli import build_parser
from notify_server.config import Settings
from notify_server.wire import is_sid
from tests.servers import free_port
from tests.test_cli import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NOTIFY_SERVICES = ("migrate", "api-1", "api-2", "worker")
API_SERVICES = ("api-1", "api-2")
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def substitute(value: str) -> str:
    """Compose's interpolation, as it runs with nothing set: every variable needs a default."""

    def default(match: re.Match) -> str:
        assert match["default"] is not None, f"${{{match['name']}}} has no local default"
        return match["default"]

    assert "$$" not in value
    resolved = VARIABLE.sub(default, value)
    assert "$" not in resolved, value
    return resolved


def interpolated(node):
    if isinstance(node, dict):
        return {key: interpolated(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value) for value in node]
    if isinstance(node, str):
        return substitute(node)
    return node


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolated(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    return dict(re.findall(r"\b(NOTIFY_\w+)=(\S+)", final_stage))


@pytest.fixture(scope="module")
def nginx() -> str:
    return (ROOT / "deploy" / "nginx.conf").read_text()


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {key: str(value) for key, value in env.items()}


def settings_of(service: dict, dockerfile_env: dict, monkeypatch) -> Settings:
    """The Settings the container's process would build from its environment."""
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"NOTIFY_{name.upper()}", raising=False)
    for name, value in {**dockerfile_env, **environment(service)}.items():
        monkeypatch.setenv(name, value)
    return Settings()


class TestServices:
    def test_the_services(self, services):
        assert set(services) == {"postgres", "migrate", "api-1", "api-2", "worker", "lb"}

    def test_postgres_16_with_a_healthcheck_that_matches_its_environment(self, services):
        postgres = services["postgres"]
        assert postgres["image"] == "postgres:16"
        env = environment(postgres)
        assert env["POSTGRES_PASSWORD"]
        check = " ".join(postgres["healthcheck"]["test"])
        assert "pg_isready" in check
        assert f"-U {env['POSTGRES_USER']}" in check
        assert f"-d {env['POSTGRES_DB']}" in check

    def test_notify_services_build_this_repository(self, services):
        assert (ROOT / "Dockerfile").is_file()
        for name in NOTIFY_SERVICES:
            assert services[name]["build"] == ".", name

    def test_commands_parse_with_our_cli(self, services):
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        parser = build_parser()
        commands = {}
        for name in NOTIFY_SERVICES:
            program, *argv = services[name]["command"]
            assert program in scripts, name
            args = parser.parse_args(argv)
            commands[name] = (args.command, getattr(args, "db_command", None))
            if name != "migrate":
                # Migrations are the migrate service's job, run once.
                assert args.no_migrate, name
        assert commands == {
            "migrate": ("db", "upgrade"),
            "api-1": ("serve", None),
            "api-2": ("serve", None),
            "worker": ("worker", None),
        }

    def test_every_variable_names_a_setting(self, services):
        for name in NOTIFY_SERVICES:
            for variable in environment(services[name]):
                assert variable.startswith("NOTIFY_"), (name, variable)
                assert variable.removeprefix("NOTIFY_").lower() in Settings.model_fields, (
                    name,
                    variable,
                )

    def test_one_database_url_pointing_at_the_postgres_service(
        self, services, dockerfile_env, monkeypatch
    ):
        postgres = environment(services["postgres"])
        urls = set()
        for name in NOTIFY_SERVICES:
            settings = settings_of(services[name], dockerfile_env, monkeypatch)
            urls.add(settings.database_url)
        assert len(urls) == 1
        url = make_url(urls.pop())
        assert url.drivername == "postgresql+psycopg"
        assert url.host == "postgres"
        assert url.port == 5432
        assert (url.username, url.password, url.database) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        )

    def test_one_secret_key_everywhere_and_it_is_a_fernet_key(
        self, services, dockerfile_env, monkeypatch
    ):
        keys = {
            settings_of(services[name], dockerfile_env, monkeypatch).secret_key
            for name in NOTIFY_SERVICES
        }
        assert len(keys) == 1
        (key,) = keys
        assert key
        token = Fernet(key).encrypt(b"x")
        assert Fernet(key).decrypt(token) == b"x"

    def test_api_processes_deliver_nothing_and_the_worker_does(
        self, services, dockerfile_env, monkeypatch
    ):
        for name in API_SERVICES:
            settings = settings_of(services[name], dockerfile_env, monkeypatch)
            assert settings.worker_enabled is False, name
            # Reachable from the load balancer's container.
            assert settings.host == "0.0.0.0"
        worker = settings_of(services["worker"], dockerfile_env, monkeypatch)
        assert worker.worker_enabled is True

    def test_the_configured_account_is_valid(self, services, dockerfile_env, monkeypatch):
        for name in API_SERVICES:
            settings = settings_of(services[name], dockerfile_env, monkeypatch)
            assert is_sid(settings.account_sid, "AC"), settings.account_sid
            assert settings.auth_token

    def test_api_processes_are_identical(self, services):
        first, second = (services[name] for name in API_SERVICES)
        assert first["command"] == second["command"]
        assert first["environment"] == second["environment"]


class TestDependencies:
    def test_every_dependency_exists_with_a_condition_it_can_meet(self, services):
        dockerfile = (ROOT / "Dockerfile").read_text()
        for name, service in services.items():
            for dependency, spec in service.get("depends_on", {}).items():
                assert dependency in services, (name, dependency)
                target = services[dependency]
                condition = spec["condition"]
                if condition == "service_healthy":
                    has_own = "test" in target.get("healthcheck", {})
                    from_image = "build" in target and "HEALTHCHECK" in dockerfile
                    disabled = target.get("healthcheck", {}).get("disable", False)
                    assert (has_own or from_image) and not disabled, (name, dependency)
                elif condition == "service_completed_successfully":
                    assert target.get("restart") == "no", (name, dependency)
                else:
                    assert condition == "service_started", (name, dependency)

    def test_no_cycle(self, services):
        def visit(name: str, path: tuple[str, ...]) -> None:
            assert name not in path, " -> ".join((*path, name))
            for dependency in services[name].get("depends_on", {}):
                visit(dependency, (*path, name))

        for name in services:
            visit(name, ())

    def test_everything_waits_for_migrations_and_migrations_for_postgres(self, services):
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
        for name in ("api-1", "api-2", "worker"):
            condition = services[name]["depends_on"]["migrate"]["condition"]
            assert condition == "service_completed_successfully", name

    def test_every_process_waits_for_the_database_itself(self, services):
        # podman-compose ignores the conditions above: start-up order must not matter.
        parser = build_parser()
        for name in NOTIFY_SERVICES:
            args = parser.parse_args(services[name]["command"][1:])
            assert args.wait_for_db >= 60, name

    def test_serving_processes_declare_the_health_check_of_their_port(
        self, services, dockerfile_env, monkeypatch
    ):
        # Not the image's: OCI-format builds drop HEALTHCHECK.
        for name in (*API_SERVICES, "worker"):
            check = services[name]["healthcheck"]
            assert check["test"] == ["CMD", "python3", "-m", "notify_server.healthcheck"], name
            assert "disable" not in check
        # The worker answers only on its metrics port, which the health check then asks.
        assert settings_of(services["worker"], dockerfile_env, monkeypatch).metrics_port

    def test_the_one_shot_migration_has_no_health_check(self, services):
        assert services["migrate"]["healthcheck"] == {"disable": True}

    def test_named_volumes_are_declared(self, compose, services):
        declared = set(compose.get("volumes") or {})
        for name, service in services.items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith((".", "/")):
                    assert (ROOT / source).exists(), (name, source)
                else:
                    assert source in declared, (name, source)


class TestLoadBalancer:
    def test_nginx_on_port_8000_with_our_config(self, services):
        lb = services["lb"]
        assert lb["image"].startswith("nginx:")
        assert lb["ports"] == ["8000:8000"]
        assert lb["volumes"] == ["./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro"]
        assert set(lb["depends_on"]) == set(API_SERVICES)

    def test_upstream_is_exactly_the_api_processes_on_their_port(
        self, services, nginx, dockerfile_env, monkeypatch
    ):
        upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", nginx))
        (passed,) = re.findall(r"proxy_pass\s+http://(\w+);", nginx)
        assert passed in upstreams
        servers = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", upstreams[passed], re.M))
        expected = {
            f"{name}:{settings_of(services[name], dockerfile_env, monkeypatch).port}"
            for name in API_SERVICES
        }
        assert servers == expected

    def test_listens_on_the_published_container_port(self, services, nginx):
        (listen,) = re.findall(r"^\s*listen\s+(\d+);", nginx, re.M)
        published = {port.split(":")[-1] for port in services["lb"]["ports"]}
        assert published == {listen}

    def test_bodies_up_to_the_api_limit_reach_the_api(self, nginx):
        (size,) = re.findall(r"client_max_body_size\s+(\d+)m;", nginx)
        assert int(size) * 1024 * 1024 > Settings.model_fields["max_body_bytes"].default

    def test_metrics_are_not_published(self, nginx):
        assert re.search(r"location\s+~\s+\^/metrics\s*\{\s*return 404;", nginx)

    def test_braces_balance(self, nginx):
        code = re.sub(r"#.*", "", nginx)
        assert code.count("{") == code.count("}")


class LateProxy:
    """A TCP proxy to `target` that starts listening only after `delay` seconds: a database
    that comes up late. Before then its port refuses connections."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.port = free_port()
        self._timer = threading.Timer(delay, self._listen)
        self._server: socket.socket | None = None
        self._closed = threading.Event()

    def open_now(self) -> None:
        self._timer.cancel()
        self._listen()

    def __enter__(self) -> "LateProxy":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._closed.set()
        if self._server is not None:
            self._server.close()

    def _listen(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def notify(workdir: Path, database_url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=cli_env(database_url, workdir),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


WAITING = re.compile(r"^notify-server: waiting for the database \((.+)\); attempt \d+, \d+ s left$")


class TestWaitForDb:
    def test_db_upgrade_waits_for_a_postgresql_that_comes_up_late(self, database_url, tmp_path):
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            pytest.skip("PostgreSQL only (set NOTIFY_TEST_DATABASE_URL)")
        # The proxy comes up once the command has found nothing there (and said so), however
        # long a busy machine takes to start it.
        with LateProxy((url.host or "127.0.0.1", url.port or 5432), delay=3600) as proxy:
            late = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
            process = notify(tmp_path, late, "db", "upgrade", "--wait-for-db", "30")
            assert process.stderr is not None
            first = process.stderr.readline().rstrip("\n")
            proxy.open_now()
            _, rest = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "Traceback" not in rest
        for line in [first, *rest.splitlines()]:
            match = WAITING.match(line)
            assert match, line
            assert "Connection refused" in match[1]

    def test_gives_up_after_the_timeout_in_one_line(self, tmp_path):
        port = free_port()
        nowhere = f"postgresql+psycopg://notify:s3cret-pw@127.0.0.1:{port}/notify"
        started = time.monotonic()
        process = notify(tmp_path, nowhere, "db", "upgrade", "--wait-for-db", "2")
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - started
        assert process.returncode == 1
        assert "Traceback" not in stderr
        assert "s3cret-pw" not in stderr
        *waiting, last = stderr.splitlines()
        assert 1 <= len(waiting) <= 3
        assert all(WAITING.match(line) for line in waiting), waiting
        assert re.fullmatch(
            rf"notify-server: the database at postgresql\+psycopg://notify:\*\*\*@127\.0\.0\.1:"
            rf"{port}/notify is not ready after 2 s and \d+ attempts: .*Connection refused",
            last,
        ), last
        assert elapsed >= 2

    def test_without_it_nothing_waits(self, tmp_path):
        nowhere = f"postgresql+psycopg://notify@127.0.0.1:{free_port()}/notify"
        process = notify(tmp_path, nowhere, "db", "upgrade")
        _, stderr = process.communicate(timeout=30)
        assert process.returncode != 0
        assert "waiting for the database" not in stderr

    @pytest.mark.parametrize("command", ["serve", "worker"])
    def test_with_no_migrate_it_waits_for_the_migration_too(self, tmp_path, command):
        # Compose in any order: the API or the worker up before the migrate service has run.
        database = f"sqlite:///{tmp_path / 'late.db'}"
        port, health_port = free_port(), free_port()
        args = [command, "--no-migrate", "--wait-for-db", "60", "--metrics-port", str(health_port)]
        if command == "serve":
            args += ["--port", str(port)]
        process = notify(tmp_path, database, *args)
        try:
            assert process.stderr is not None
            first = process.stderr.readline().rstrip("\n")
            match = WAITING.match(first)
            assert match, first
            head = migrate.head_revision()
            assert match[1] == (f"its schema is at nothing, not {head}: `db upgrade` migrates it")
            assert run_cli(database, tmp_path, "db", "upgrade").returncode == 0
            deadline = time.monotonic() + 30
            while not healthy(health_port):
                assert process.poll() is None
                assert time.monotonic() < deadline, "never healthy after the migration"
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(timeout=30)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
