"""create_app(settings): routers, the one error handler, the wire-level middleware."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import migrate
from notify_server.auth import Authenticator
from notify_server.bindings.router import routes as bindings_routes
from notify_server.config import Settings, get_settings
from notify_server.console.router import routes as console_routes
from notify_server.credentials.router import routes as credentials_routes
from notify_server.crypto import SecretKeyError, secret_box_for
from notify_server.db import Checkpointer, Database, make_engine
from notify_server.delivery.worker import DeliveryWorker
from notify_server.deployment import SchemaBehind, check_secret_key, check_when_reachable
from notify_server.docs_routes import routes as docs_routes
from notify_server.edge import Edge
from notify_server.errors import (
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    SchemaNotMigrated,
    ServiceUnavailable,
    TwilioError,
    twilio_error_response,
)
from notify_server.logs import quiet_secret_loggers
from notify_server.metrics import CONTENT_TYPE_LATEST, Metrics, check_bearer
from notify_server.metrics_server import MetricsExporter
from notify_server.notifications.router import routes as notifications_routes
from notify_server.outbound import OutboundPolicy
from notify_server.ratelimit import RateLimiter
from notify_server.services.router import routes as services_routes
from notify_server.users.router import routes as users_routes

log = logging.getLogger("notify_server")
# A probe's own timeout is usually a few seconds: answer before it gives up.
READY_TIMEOUT = 2.0


def _resource_path(request: Request) -> str:
    path = request.url.path
    return path[3:] if path.startswith("/v1/") else path


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TwilioError)
    async def twilio_error(request: Request, error: TwilioError) -> Response:
        if isinstance(error, NotFound):
            error.message = NotFound.message_for(_resource_path(request))
        return twilio_error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 405:
            return twilio_error_response(MethodNotAllowed(request.method))
        if error.status_code == 404:
            return await twilio_error(request, NotFound())
        generic = TwilioError(str(error.detail))
        generic.status = error.status_code
        return twilio_error_response(generic)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return twilio_error_response(InvalidParameter("Invalid request"))

    @app.exception_handler(DBAPIError)
    async def database_unavailable(request: Request, error: DBAPIError) -> Response:
        if migrate.is_unmigrated(error):
            log.error("the database is not migrated: run `notify-server db upgrade`")
            return twilio_error_response(SchemaNotMigrated())
        if not isinstance(error, OperationalError):
            raise error  # a bug of ours: the 500 and its traceback
        log.error("database error on %s %s: %s", request.method, request.url.path, error.orig)
        return twilio_error_response(ServiceUnavailable())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    quiet_secret_loggers()
    engine = make_engine(settings.database_url, background_checkpoints=True)
    checkpointer = Checkpointer(engine)
    database = Database(engine)

    secret_box = secret_box_for(settings)
    metrics = Metrics(engine, settings)
    exporter = MetricsExporter(metrics, settings) if settings.metrics_enabled else None
    outbound = OutboundPolicy(settings.outbound_allow)
    worker = DeliveryWorker(database, settings, secret_box, metrics=metrics, outbound=outbound)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here too, not only in `notify-server serve`: `uvicorn notify_server.app:create_app`
        # run directly must not seal secrets with a key no other process can open.
        try:
            check_secret_key(engine, secret_box)
        except SchemaBehind:
            # `serve --no-migrate` before the migration ran: API calls answer 503 and /readyz
            # says why until it has; then the key is checked and delivery starts.
            log.warning(
                "the database is not migrated: run `notify-server db upgrade`;"
                " until then every API call answers 503"
            )
            secret_box.hold()
        except SecretKeyError as error:
            log.error("notify-server: %s", error)
            engine.dispose()
            raise
        except OperationalError as error:
            # The database is down: serve anyway (/readyz says 503) and check the key once it
            # answers; until then no secret is sealed or opened and no worker runs.
            log.warning("database unreachable at start-up, secret key not checked: %s", error.orig)
            secret_box.hold()
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise walk it all and stall every request.
        gc.collect()
        gc.freeze()
        checkpointer.start()
        if exporter is not None:
            exporter.start()
        delivering = False

        async def deliver() -> None:
            nonlocal delivering
            if secret_box.held and not await check_when_reachable(engine, secret_box):
                return
            if settings.worker_enabled:
                delivering = True
                await worker.run()

        task = (
            asyncio.create_task(deliver()) if settings.worker_enabled or secret_box.held else None
        )
        yield
        if task is not None:
            if delivering:
                await worker.stop()
            task.cancel()
        if exporter is not None:
            exporter.stop()
        database.close()
        checkpointer.stop()
        engine.dispose()

    app = FastAPI(
        title="notify-server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        # Twilio has no trailing-slash paths; a redirect would only hide the 404.
        redirect_slashes=False,
        # We export Prometheus metrics and JSON logs ourselves; FastAPI's OpenTelemetry
        # hooks would only look up unconfigured providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.database = database
    app.state.authenticator = Authenticator(database, settings.auth_cache_seconds)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    app.state.secret_box = secret_box
    app.state.outbound = outbound
    app.state.delivery_worker = worker

    # Bindings first: routes are matched in order, and theirs are the busiest.
    for routes in (bindings_routes, notifications_routes, services_routes, credentials_routes):
        app.router.routes.extend(routes)
    app.router.routes.extend(users_routes)
    app.router.routes.extend(docs_routes)
    if settings.console_on:
        app.router.routes.extend(console_routes)
        # Per name tried: ten attempts, then one every six seconds (docs/behaviour.md).
        app.state.console_sign_ins = RateLimiter(1 / 6, 10, max_keys=10_000)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    schema_head, behind = migrate.head_revision(), migrate.older_revisions()

    def unavailable(reason: str) -> Response:
        body = orjson.dumps({"status": "unavailable", "reason": reason})
        return Response(body, 503, media_type="application/json")

    def schema_revision(conn: Connection) -> str | None:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        try:
            revision = await asyncio.wait_for(database.read(schema_revision), READY_TIMEOUT)
        except TimeoutError:
            return unavailable("the database does not answer")
        except SQLAlchemyError as error:
            # SQLite says OperationalError, PostgreSQL ProgrammingError (undefined table).
            if "alembic_version" in str(getattr(error, "orig", error)):
                return unavailable("the database is not migrated: run `notify-server db upgrade`")
            return unavailable("the database does not answer")
        # Ahead is fine: a newer release migrated first, and this process is about to go.
        if revision in behind or revision is None:
            return unavailable(
                f"the database schema is at {revision}, this server needs {schema_head}:"
                " run `notify-server db upgrade`"
            )
        if secret_box.held:  # the key is not checked yet, or is not the deployment's
            return unavailable("the secret key is not checked against the database yet")
        return Response(b'{"status":"ready"}', media_type="application/json")

    if settings.metrics_enabled:

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics(request: Request) -> Response:
            # Without a token the API port has no /metrics: the same 404 as any unknown path.
            if metrics.token is None:
                raise NotFound()
            check_bearer(request.headers.get("authorization"), metrics.token)
            # Cached values only (metrics.py): nothing here waits on the database.
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app)
    route_paths = {
        route.endpoint: route.path for route in app.router.routes if isinstance(route, Route)
    }
    app.add_middleware(
        Edge, metrics=metrics, log_requests=settings.access_log, route_paths=route_paths
    )
    return app
