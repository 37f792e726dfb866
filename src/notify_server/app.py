"""create_app(settings): routers, the one error handler, the wire-level middleware."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notify_server.auth import Authenticator
from notify_server.bindings.router import router as bindings_router
from notify_server.config import Settings, get_settings
from notify_server.credentials.router import router as credentials_router
from notify_server.crypto import SecretBox
from notify_server.db import make_engine
from notify_server.delivery.worker import DeliveryWorker
from notify_server.errors import (
    InternalError,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    TwilioError,
    twilio_error_response,
)
from notify_server.notifications.router import router as notifications_router
from notify_server.services.router import router as services_router

log = logging.getLogger("notify_server")

# The CORS headers Twilio documents on every Notify response.
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"Accept, Authorization, Content-Type, If-Match, If-Modified-Since, If-None-Match,"
        b" If-Unmodified-Since",
    ),
    (b"access-control-allow-credentials", b"true"),
    (b"access-control-expose-headers", b"ETag"),
]


class TwilioWire:
    """Pure ASGI (no per-request task hop): `.json` suffixes, CORS headers, preflights."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.endswith(".json"):
            # Twilio accepts an optional `.json` on every path.
            scope = {**scope, "path": path[:-5], "raw_path": path[:-5].encode()}
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": CORS_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *CORS_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_cors)


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

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, error: OperationalError) -> Response:
        log.error("database error on %s %s: %s", request.method, request.url.path, error.orig)
        return twilio_error_response(ServiceUnavailable())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return twilio_error_response(InternalError())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)

    secret_box = SecretBox(settings.secret_key, settings.secret_key_file)
    worker = DeliveryWorker(engine, settings, secret_box)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(worker.run()) if settings.worker_enabled else None
        yield
        if task is not None:
            await worker.stop()
            task.cancel()
        engine.dispose()

    app = FastAPI(
        title="notify-server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.authenticator = Authenticator(engine, settings.auth_cache_seconds)
    app.state.secret_box = secret_box
    app.state.delivery_worker = worker

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app.include_router(services_router)
    app.include_router(bindings_router)
    app.include_router(credentials_router)
    app.include_router(notifications_router)
    install_error_handlers(app)
    app.add_middleware(TwilioWire)
    return app
