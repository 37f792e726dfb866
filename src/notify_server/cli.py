"""notify-server serve | worker | db upgrade | accounts create | keys create"""

import argparse
import asyncio
import importlib.metadata
import json
import os
import signal
import sys
import tempfile
from contextlib import ExitStack

import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError

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
from notify_server.deployment import check_secret_key
from notify_server.logs import configure_logging, uvicorn_log_config
from notify_server.metrics import MULTIPROCESS_DIR, Metrics
from notify_server.metrics_server import MetricsExporter


def checked_secret_box(settings: Settings, *, database_may_be_down: bool = False) -> SecretBox:
    """This deployment's key, or SecretKeyError (exit 2) before the command does anything.
    With `database_may_be_down` (serve), an unreachable database gives a held box instead:
    the app starts anyway and checks the key once the database answers."""
    box = secret_box_for(settings)
    engine = make_engine(settings.database_url)
    try:
        check_secret_key(engine, box)
    except OperationalError:
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
        # httptools with a header-size limit and read timeouts (NOTIFY_MAX_HEADER_BYTES, ...);
        # an import string, so that every worker process loads it itself.
        http="notify_server.http_protocol:EdgeLimitedHttpToolsProtocol",
    )


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """A delivery worker on its own: scale delivery out apart from the API."""
    if not args.no_migrate:
        migrate.upgrade(settings.database_url)
    box = checked_secret_box(settings)
    engine = make_engine(settings.database_url)
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    metrics = Metrics(engine, settings) if settings.metrics_enabled else None
    delivery_worker = DeliveryWorker(Database(engine), settings, box, metrics=metrics)
    exporter = MetricsExporter(metrics, settings) if metrics is not None else None

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
            print(f"notify-server: cannot listen for metrics: {error}", file=sys.stderr)
            engine.dispose()
            return 1
    try:
        asyncio.run(run())
    finally:
        if exporter is not None:
            exporter.stop()
        engine.dispose()
    return 0


def import_command(args: argparse.Namespace, settings: Settings) -> int:
    from notify_server.importer import run_import

    if not args.no_migrate:
        migrate.upgrade(settings.database_url)
    return run_import(args, settings, checked_secret_box(settings))


def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    migrate.upgrade(settings.database_url, args.revision)
    return 0


def db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    migrate.downgrade(settings.database_url, args.revision)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notify-server", description="The Twilio Notify v1 REST API, self-hosted."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="migrate the database, then serve the API")
    serve_cmd.add_argument("--host", help="default NOTIFY_HOST or 127.0.0.1")
    serve_cmd.add_argument("--port", type=_port, help="default NOTIFY_PORT or 8000")
    serve_cmd.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
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
    import_cmd.add_argument("--auth-token", required=True, help="the source account's auth token")
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
    import_cmd.set_defaults(run=import_command)

    db_cmd = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    upgrade_cmd = db_cmd.add_parser("upgrade", help="migrate to the latest schema")
    upgrade_cmd.add_argument(
        "revision", nargs="?", default="head", help="the revision to reach (default head)"
    )
    upgrade_cmd.set_defaults(run=db_upgrade)
    downgrade_cmd = db_cmd.add_parser("downgrade", help="migrate back to a revision")
    downgrade_cmd.add_argument("revision", help="the revision to go back to (e.g. 0001, base)")
    downgrade_cmd.set_defaults(run=db_downgrade)

    accounts_cmd = commands.add_parser("accounts", help="accounts").add_subparsers(
        dest="accounts_command", required=True
    )
    account_create = accounts_cmd.add_parser("create", help="create an account")
    account_create.add_argument("--friendly-name", help="the account's friendly name")
    account_create.add_argument("--json", action="store_true", help="print the result as JSON")
    account_create.set_defaults(run=accounts_create)

    keys_cmd = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    key_create = keys_cmd.add_parser("create", help="create an API key of an account")
    key_create.add_argument(
        "--account", required=True, metavar="AC…", help="the account the key belongs to"
    )
    key_create.add_argument("--friendly-name", help="the key's friendly name")
    key_create.add_argument("--json", action="store_true", help="print the result as JSON")
    key_create.set_defaults(run=keys_create)
    return parser


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
        return args.run(args, settings)
    except (InvalidAccountSid, SecretKeyError) as exc:
        print(f"notify-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
