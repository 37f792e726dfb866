"""The one pure-ASGI middleware (no per-request task hop): Twilio's wire conventions and
the request's observability. `.json` suffixes, CORS, preflights, `Twilio-Request-Id`, one
JSON access-log line and the request metrics."""

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notify_server.errors import InternalError, twilio_error_response
from notify_server.metrics import Metrics
from notify_server.wire import new_request_id

access_log = logging.getLogger("notify_server.access")
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


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        log_requests: bool,
        route_paths: dict[Callable[..., Any], str],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        # Plain Starlette routes leave only their endpoint in the scope: endpoint -> template.
        self.route_paths = route_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        if path.endswith(".json"):
            # Twilio accepts an optional `.json` on every path.
            scope["path"] = path[:-5]
            scope["raw_path"] = scope["path"].encode()
        headers = [*CORS_HEADERS, (b"twilio-request-id", request_id.encode())]
        status = 500
        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            if scope["method"] == "OPTIONS":
                await send_with_headers({"type": "http.response.start", "status": 204})
                await send({"type": "http.response.body", "body": b""})
            else:
                await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client went away mid-request: nobody to answer, nothing to fix.
            log.info("client disconnected during %s %s", scope["method"], scope["path"])
        except Exception:
            # Anything no handler mapped: logged here, answered as Twilio's 500 (never a
            # stack trace), with the same headers as every other response.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started_response:
                await twilio_error_response(InternalError())(scope, receive, send_with_headers)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        # A 405 matched a path, not an operation.
        endpoint = scope.get("endpoint") if status != 405 else None
        operation = getattr(endpoint, "__name__", None) or "unmatched"
        route_path = self.route_paths.get(endpoint) if endpoint is not None else None
        self.metrics.observe_request(operation, scope["method"], status, seconds)
        if self.log_requests:
            state = scope["state"]
            access_log.info(
                "request",
                extra={
                    "request_id": state["request_id"],
                    "method": scope["method"],
                    "route": route_path,
                    "operation": operation,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "account_sid": state.get("account_sid"),
                },
            )
