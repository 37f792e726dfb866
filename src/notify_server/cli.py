"""notify-server serve | worker | db upgrade | accounts create | keys create | healthcheck"""

import argparse
import asyncio
import errno
import importlib.metadata
import json
import math
import os
import signal
import socket
import sys
import tempfile
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import uvicorn
from alembic.util.exc import CommandError
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    StatementError,
)

from notify_server import migrate
from notify_server.accounts.operations import (
    InvalidAccountSid,
    UnknownAccount,
    create_account,
    create_api_key,
    ensure_account,
)
from notify_server.config import Settings, get_settings
from notify_server.crypto import SecretBox, SecretKeyError, secret_box_for
from notify_server.db import Database, make_engine, transaction
from notify_server.delivery.worker import DeliveryWorker
from notify_server.deployment import SchemaBehind, check_secret_key
from notify_server.healthcheck import probe_health
from notify_server.logs import configure_logging, uvicorn_log_config
from notify_server.metrics import MULTIPROCESS_DIR, Metrics
from notify_server.metrics_server import MetricsExporter
from notify_server.preflight import (
    DatabaseNotReady,
    NotWritable,
    check_writable,
    wait_for_database,
)


def checked_secret_box(settings: Settings, *, database_may_be_down: bool = False) -> SecretBox:
    """This deployment's key, or SecretKeyError (exit 2) before the command does anything.
    With `database_may_be_down` (serve), an unreachable database gives a held box instead:
    the app starts anyway and checks the key once the database answers."""
    box = secret_box_for(settings)
    engine = make_engine(settings.database_url)
    try:
        check_secret_key(engine, box)
    except (OperationalError, SchemaBehind):
        # The server answers 503 and says why until the database is up and migrated.
        if not database_may_be_down:
            raise
        box.hold()
    finally:
        engine.dispose()
    return box


def _ensure_configured_account(settings: Settings, box: SecretBox) -> None:
    if bool(settings.account_sid) != bool(settings.auth_token):
        raise InvalidAccountSid("NOTIFY_ACCOUNT_SID and NOTIFY_AUTH_TOKEN go together: set both")
    if settings.account_sid and settings.auth_token:
        if box.held:
            raise CommandFailed(
                "NOTIFY_ACCOUNT_SID is ensured at start-up, which needs the database up and"
                " migrated: run `notify-server db upgrade` first (or serve without --no-migrate)",
                2,
            )
        engine = make_engine(settings.database_url)
        try:
            for attempt in (1, 2):
                try:
                    with transaction(engine, write=True) as conn:
                        ensure_account(conn, box, settings.account_sid, settings.auth_token)
                    break
                except IntegrityError:
                    # A process starting beside this one inserted it first: look again.
                    if attempt == 2:
                        raise
        finally:
            engine.dispose()


def serve(args: argparse.Namespace, settings: Settings) -> int:
    _check_serve_ports(args, settings)
    _wait_for_database(args, settings)
    # Migrate once here, before any worker process starts.
    if not args.no_migrate:
        migrate.upgrade(settings.database_url)
    # The key before anything seals with it (the configured account's token, just below).
    _ensure_configured_account(settings, checked_secret_box(settings, database_may_be_down=True))
    if args.no_worker:
        # uvicorn's worker processes build their own Settings from the environment.
        os.environ["NOTIFY_WORKER_ENABLED"] = "false"
    if args.metrics_port is not None:
        os.environ["NOTIFY_METRICS_PORT"] = str(args.metrics_port)
    if args.host and not settings.metrics_host:
        # The metrics listener follows the API's host unless told otherwise.
        os.environ["NOTIFY_METRICS_HOST"] = args.host
    # With one process uvicorn calls create_app here, which must see the lines above.
    get_settings.cache_clear()
    cleanup = ExitStack()
    if args.workers > 1 and MULTIPROCESS_DIR not in os.environ:
        # Each process counts in its own files here and any of them answers a scrape with the
        # sum of all (prometheus-client's multiprocess mode). Fresh per run: no stale counts.
        directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="notify-metrics-"))
        os.environ[MULTIPROCESS_DIR] = directory
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; without a
    # handler of ours that would end the process with 143 instead of 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with cleanup:
        _run_uvicorn(args, settings)
    return 0


def _check_serve_ports(args: argparse.Namespace, settings: Settings) -> None:
    host = args.host or settings.host
    port = args.port or settings.port
    check_can_listen(host, port, "--port or NOTIFY_PORT")
    metrics_port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if settings.metrics_enabled and metrics_port is not None:
        if metrics_port == port:
            raise CommandFailed(
                f"the API and /metrics cannot both listen on port {port}: give"
                " --metrics-port (NOTIFY_METRICS_PORT) another",
                2,
            )
        check_can_listen(
            settings.metrics_host or host,
            metrics_port,
            "--metrics-port or NOTIFY_METRICS_PORT",
            host_option="NOTIFY_METRICS_HOST" if settings.metrics_host else "--host or NOTIFY_HOST",
        )


def _run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    uvicorn.run(
        "notify_server.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=uvicorn_log_config(args.log_level),
        # Our own middleware logs each request, as JSON, and sets every header a client needs.
        access_log=False,
        server_header=False,
        # Requests still running this long after SIGTERM are cut off.
        timeout_graceful_shutdown=25,
        # uvicorn kills a child that has not answered its ping in 5 s; on a busy host a
        # child still importing takes longer, and was killed and respawned in a loop.
        timeout_worker_healthcheck=30,
        # httptools with a header-size limit and read timeouts (NOTIFY_MAX_HEADER_BYTES, ...);
        # an import string, so that every worker process loads it itself.
        http="notify_server.http_protocol:EdgeLimitedHttpToolsProtocol",
    )


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """A delivery worker on its own: scale delivery out apart from the API."""
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    # Before anything touches the database: a port in use is a set-up mistake to report alone.
    if settings.metrics_port is not None:
        check_can_listen(
            settings.metrics_host or settings.host,
            settings.metrics_port,
            "--metrics-port or NOTIFY_METRICS_PORT",
            host_option="NOTIFY_METRICS_HOST" if settings.metrics_host else "NOTIFY_HOST",
        )
    _wait_for_database(args, settings)
    if not args.no_migrate:
        migrate.upgrade(settings.database_url)
    box = checked_secret_box(settings)
    engine = make_engine(settings.database_url)
    metrics = Metrics(engine, settings) if settings.metrics_enabled else None
    delivery_worker = DeliveryWorker(Database(engine), settings, box, metrics=metrics)
    exporter = _worker_health_listener(metrics, settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        task = asyncio.create_task(delivery_worker.run())
        await stopping.wait()
        await delivery_worker.stop()
        task.cancel()

    configure_logging(args.log_level)
    if exporter is not None:
        try:
            exporter.start()
        except OSError as error:
            engine.dispose()
            raise CommandFailed(
                f"cannot listen for metrics ({error.strerror}): choose another port with"
                " --metrics-port or NOTIFY_METRICS_PORT"
            ) from None
    try:
        asyncio.run(run())
    finally:
        if exporter is not None:
            exporter.stop()
        engine.dispose()
    return 0


def _worker_health_listener(metrics: Metrics | None, settings: Settings) -> MetricsExporter | None:
    # The worker's only HTTP: /healthz (for container health checks, even with metrics off)
    # and /metrics, on the metrics port.
    if metrics is None and settings.metrics_port is None:
        return None
    return MetricsExporter(metrics, settings)


def _wait_for_database(args: argparse.Namespace, settings: Settings) -> None:
    if args.wait_for_db > 0:
        # With --no-migrate another process migrates: wait for it as well.
        migrated = getattr(args, "no_migrate", False)
        wait_for_database(settings.database_url, args.wait_for_db, migrated=migrated)


def _wait_for_db_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--wait-for-db",
        type=_seconds,
        default=0,
        metavar="SECONDS",
        help="wait up to SECONDS for the database to answer, and with --no-migrate for its"
        " schema to be migrated (default 0: fail at once)",
    )


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}")
    return seconds


def _positive_seconds(value: str) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0: {value!r}")
    return seconds


def healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    return probe_health(settings, port=args.port, timeout=args.timeout)


def import_command(args: argparse.Namespace, settings: Settings) -> int:
    from notify_server.importer import run_import

    if not args.no_migrate:
        migrate.upgrade(settings.database_url)
    return run_import(args, settings, checked_secret_box(settings))


def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    _wait_for_database(args, settings)
    migrate.upgrade(settings.database_url, args.revision)
    return 0


def db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    migrate.downgrade(settings.database_url, args.revision)
    return 0


def db_current(args: argparse.Namespace, settings: Settings) -> int:
    """The schema's revision; exit 0 only at this code's head (or ahead of it)."""
    current = migrate.current_revision(settings.database_url)
    head = migrate.head_revision()
    if current is None:
        print(f"none (not migrated; head is {head}): run `notify-server db upgrade`")
        return 1
    if current in migrate.older_revisions():
        print(f"{current} (behind head {head}): run `notify-server db upgrade`")
        return 1
    print(f"{current} (head)" if current == head else f"{current} (newer than this code's {head})")
    return 0


def accounts_create(args: argparse.Namespace, settings: Settings) -> int:
    box = checked_secret_box(settings)
    engine = make_engine(settings.database_url)
    with transaction(engine, write=True) as conn:
        account = create_account(conn, box, args.friendly_name)
    engine.dispose()
    if args.json:
        print(json.dumps({"sid": account.sid, "auth_token": account.auth_token}))
    else:
        print(f"account sid: {account.sid}\nauth token:  {account.auth_token}")
    return 0


def keys_create(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        with transaction(engine, write=True) as conn:
            key = create_api_key(conn, args.account, args.friendly_name)
    except UnknownAccount:
        print(f"notify-server: no account {args.account}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"sid": key.sid, "secret": key.secret}))
    else:
        print(f"key sid: {key.sid}\nsecret:  {key.secret}")
    return 0


def _processes(value: str) -> int:
    # Bounded: each process holds its own pools and ~100 MB, and uvicorn forks them all at
    # once; a typo of 45837 would take the machine down.
    most = max(64, 4 * (os.cpu_count() or 1))
    count = int(value) if value.isdigit() else 0
    if not 1 <= count <= most:
        raise argparse.ArgumentTypeError(f"not a number of processes (1 to {most}): {value!r}")
    return count


def _port(value: str) -> int:
    port = int(value) if value.isdigit() else 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}")
    return port


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_level_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="default NOTIFY_LOG_LEVEL or info",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("notify-server")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every other failure: argparse would print the whole usage first.
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="notify-server", description="The Twilio Notify v1 REST API, self-hosted."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="on a failure, print the traceback as well"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", help="migrate the database, then serve the API")
    serve_cmd.add_argument("--host", help="default NOTIFY_HOST or 127.0.0.1")
    serve_cmd.add_argument("--port", type=_port, help="default NOTIFY_PORT or 8000")
    serve_cmd.add_argument(
        "--workers",
        type=_processes,
        default=1,
        help="server processes sharing the port (default 1)",
    )
    serve_cmd.add_argument("--no-migrate", action="store_true", help="do not run migrations")
    _log_level_flag(serve_cmd)
    serve_cmd.add_argument(
        "--no-worker", action="store_true", help="deliver nothing here (run `worker` apart)"
    )
    serve_cmd.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="also serve /metrics and /healthz on this port (default NOTIFY_METRICS_PORT)",
    )
    _wait_for_db_flag(serve_cmd)
    serve_cmd.set_defaults(run=serve)

    worker_cmd = commands.add_parser("worker", help="deliver notifications from the outbox")
    worker_cmd.add_argument("--no-migrate", action="store_true", help="do not run migrations")
    _log_level_flag(worker_cmd)
    worker_cmd.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics and /healthz on this port (default NOTIFY_METRICS_PORT)",
    )
    _wait_for_db_flag(worker_cmd)
    worker_cmd.set_defaults(run=worker)

    import_cmd = commands.add_parser(
        "import", help="copy Services, Bindings and Credential metadata from a Notify API"
    )
    import_cmd.add_argument(
        "--from",
        dest="source_url",
        default="https://notify.twilio.com",
        help="the Notify-compatible API to copy from (default Twilio's)",
    )
    import_cmd.add_argument(
        "--account-sid", required=True, metavar="AC…", help="the source account's SID"
    )
    import_cmd.add_argument(
        "--auth-token",
        help="deprecated: `ps` and shell history show it; set NOTIFY_IMPORT_AUTH_TOKEN instead,"
        " or leave both out to be asked for it on a terminal",
    )
    import_cmd.add_argument(
        "--service", action="append", metavar="IS…", help="only this service (repeatable)"
    )
    import_cmd.add_argument(
        "--local-account",
        metavar="AC…",
        help="the local account to import into (default: the same account SID and token)",
    )
    import_cmd.add_argument("--no-migrate", action="store_true", help="do not run migrations")
    import_cmd.add_argument("--quiet", action="store_true", help="only the summary")
    import_cmd.add_argument(
        "--restart",
        action="store_true",
        help="copy everything again, instead of resuming where an interrupted run stopped",
    )
    import_cmd.set_defaults(run=import_command)

    db_cmd = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    upgrade_cmd = db_cmd.add_parser("upgrade", help="migrate to the latest schema")
    upgrade_cmd.add_argument(
        "revision", nargs="?", default="head", help="the revision to reach (default head)"
    )
    _wait_for_db_flag(upgrade_cmd)
    upgrade_cmd.set_defaults(run=db_upgrade)
    downgrade_cmd = db_cmd.add_parser("downgrade", help="migrate back to a revision")
    downgrade_cmd.add_argument("revision", help="the revision to go back to (e.g. 0001, base)")
    downgrade_cmd.set_defaults(run=db_downgrade)
    current_cmd = db_cmd.add_parser(
        "current", help="print the schema's revision (exit 1 if it is behind this code)"
    )
    current_cmd.set_defaults(run=db_current)

    accounts_cmd = commands.add_parser("accounts", help="accounts").add_subparsers(
        dest="accounts_command", required=True, metavar="COMMAND"
    )
    account_create = accounts_cmd.add_parser("create", help="create an account")
    account_create.add_argument("--friendly-name", help="the account's friendly name")
    account_create.add_argument("--json", action="store_true", help="print the result as JSON")
    account_create.set_defaults(run=accounts_create)

    keys_cmd = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    key_create = keys_cmd.add_parser("create", help="create an API key of an account")
    key_create.add_argument(
        "--account", required=True, metavar="AC…", help="the account the key belongs to"
    )
    key_create.add_argument("--friendly-name", help="the key's friendly name")
    key_create.add_argument("--json", action="store_true", help="print the result as JSON")
    key_create.set_defaults(run=keys_create)

    health_cmd = commands.add_parser(
        "healthcheck", help="exit 0 if this container's serve or worker answers /healthz"
    )
    health_cmd.add_argument("--port", type=_port, help="default NOTIFY_PORT or 8000")
    health_cmd.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=2.0,
        help="seconds to wait for an answer (default 2)",
    )
    health_cmd.set_defaults(run=healthcheck, touches_data=False)
    return parser


# --- failures: one line each -----------------------------------------------------------------


class CommandFailed(Exception):
    """What is wrong and what to do, in one line, and the exit code (2: fix the set-up)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


DEBUG_HINT = "run `notify-server --debug ...` for the traceback"


def explain(error: Exception, settings: Settings) -> CommandFailed:
    """The one place a failure becomes the line a person reads. Never a secret: no SQL
    parameters (the engine hides them, and so does this), no password of a URL."""
    if isinstance(error, CommandFailed):
        return error
    if isinstance(error, InvalidAccountSid | SecretKeyError):
        return CommandFailed(str(error), 2)
    if isinstance(error, NotWritable | DatabaseNotReady):
        return CommandFailed(str(error), 1)
    if isinstance(error, CommandError):  # alembic: an unknown revision, a bad target
        stored = _stored_revision(settings.database_url)
        if stored is not None and stored not in migrate.revisions():
            return CommandFailed(
                f"the database's schema is at revision {stored}, which this notify-server"
                f" (head {migrate.head_revision()}) does not know: a newer notify-server"
                " migrated it, so run that one (or restore a backup), or the database belongs"
                " to another application: point NOTIFY_DATABASE_URL elsewhere",
                2,
            )
        known = ", ".join(["base", *migrate.revisions(), "head"])
        return CommandFailed(f"{error} (the revisions of this notify-server: {known})", 2)
    if isinstance(error, DBAPIError):
        if migrate.is_unmigrated(error):
            return CommandFailed(NOT_MIGRATED, 2)
        # SQLite says "file is not a database" as a DatabaseError, not an OperationalError.
        if (
            isinstance(error, OperationalError)
            or error.connection_invalidated
            or "not a database" in str(error.orig)
        ):
            return CommandFailed(_database_failure(error, settings.database_url))
    _hide_statement_parameters(error)
    lines = str(error).strip().splitlines()
    what = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return CommandFailed(f"unexpected error ({what}); {DEBUG_HINT}")


NOT_MIGRATED = "the database is not migrated: run `notify-server db upgrade`"


def _stored_revision(database_url: str) -> str | None:
    try:
        return migrate.current_revision(database_url)
    except Exception:  # explaining one failure must not raise another
        return None


def _database_failure(error: DBAPIError, database_url: str) -> str:
    reason = " ".join(str(error.orig).split())
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        where = url.render_as_string(hide_password=True)
        return (
            f"cannot use the database at {where}: {reason}:"
            " check NOTIFY_DATABASE_URL and that PostgreSQL is running"
        )
    path = Path(url.database or "").absolute()
    uid = os.geteuid()
    if reason == "unable to open database file":
        if not path.parent.is_dir():
            return (
                f"cannot open the SQLite database {path}: the folder {path.parent} does not"
                " exist: create it, or point NOTIFY_DATABASE_URL elsewhere"
            )
        return (
            f"cannot open the SQLite database {path}: uid {uid} may not create or write files"
            f" in {path.parent}: make it writable, or point NOTIFY_DATABASE_URL elsewhere"
        )
    if "readonly database" in reason:
        return (
            f"the SQLite database {path} is read-only for uid {uid}: make it and its folder"
            " writable, or point NOTIFY_DATABASE_URL elsewhere"
        )
    if "not a database" in reason:
        return (
            f"{path} is not a SQLite database: point NOTIFY_DATABASE_URL at notify-server's,"
            " or at a path where none exists yet"
        )
    if "locked" in reason:
        return f"the SQLite database {path} stayed locked by another process: try again"
    return f"the SQLite database {path} failed: {reason}"


def _hide_statement_parameters(error: BaseException | None) -> None:
    # A failed INSERT carries its parameters (a sealed auth token, a key's hash): never shown.
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, StatementError):
            error.hide_parameters = True
        error = error.__cause__ or error.__context__


SUPPORTED_DATABASES = (
    "sqlite:///path/to/notify-server.db or postgresql+psycopg://user:password@host:5432/name"
)


def check_database_url(database_url: str) -> None:
    """Before anything connects: a URL of a database notify-server speaks, with our driver."""
    try:
        url = make_url(database_url)
        dialect = url.get_dialect()
        # What the driver is given: a port that is not a number, `sqlite://n.db` (two slashes).
        dialect().create_connect_args(url)
    except (ArgumentError, ValueError):
        raise CommandFailed(
            f"NOTIFY_DATABASE_URL is not a database URL: give {SUPPORTED_DATABASES}", 2
        ) from None
    except NoSuchModuleError:
        dialect = None
    if dialect is None or (dialect.name, dialect.driver) not in (
        ("sqlite", "pysqlite"),
        ("postgresql", "psycopg"),
    ):
        raise CommandFailed(
            f"NOTIFY_DATABASE_URL names a database notify-server does not speak: give"
            f" {SUPPORTED_DATABASES}",
            2,
        )


def check_can_listen(
    host: str, port: int, option: str, host_option: str = "--host or NOTIFY_HOST"
) -> None:
    """Bind and let go, before anything starts: a port in use is one line, not a server that
    starts its worker and then dies on the bind."""
    if not 1 <= port <= 65535:
        raise CommandFailed(f"{option}: {port} is not a port number (1-65535)", 2)
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise CommandFailed(
            f"cannot listen on {host!r}: {error.strerror}: give an address of this machine"
            f" ({host_option})",
            2,
        ) from None
    with socket.socket(family, kind) as listener:
        # As uvicorn binds: a port left in TIME_WAIT by the last run is free.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                problem = "is in use by another process"
            elif error.errno == errno.EACCES:
                problem = f"needs privileges uid {os.geteuid()} does not have"
            elif error.errno == errno.EADDRNOTAVAIL:
                raise CommandFailed(
                    f"{host} is not an address of this machine: give another with {host_option}",
                    2,
                ) from None
            else:
                problem = f"cannot be listened on ({error.strerror})"
            raise CommandFailed(
                f"port {port} on {host} {problem}: choose another with {option}"
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        # e.g. NOTIFY_PORT=abc: the variable and what is wrong with it, without a traceback.
        error = exc.errors(include_url=False)[0]
        name = "NOTIFY_" + ".".join(str(part) for part in error["loc"]).upper()
        print(f"notify-server: {name}: {error['msg']}", file=sys.stderr)
        return 2
    if hasattr(args, "log_level") and args.log_level is None:
        args.log_level = settings.log_level
    try:
        check_database_url(settings.database_url)
        if getattr(args, "touches_data", True):
            check_writable(settings)
        return int(args.run(args, settings))
    except KeyboardInterrupt:
        print("notify-server: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        failure = explain(error, settings)
        if args.debug:
            _hide_statement_parameters(error)
            traceback.print_exception(error, file=sys.stderr)
        print(f"notify-server: {failure}", file=sys.stderr)
        return failure.exit_code


if __name__ == "__main__":
    sys.exit(main())
