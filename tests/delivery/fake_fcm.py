"""A fake FCM HTTP v1 and Google OAuth2 token endpoint on a free 127.0.0.1 port.

It records every request, verifies each JWT assertion with the registered service account's
public key (as Google does: signature, aud = the key's token_uri, scope, a lifetime of at most
an hour), issues access tokens, checks them on messages:send, and answers per scripted replies.
`RecordingServer` (a Starlette app under hypercorn in a thread) is shared with fake_sms.py:
hypercorn speaks HTTP/1.1 and HTTP/2 with prior knowledge on one port, as the FCM channel sends
over HTTP/2 (h2c to an http:// URL) and exchanges tokens over HTTP/1.1.
"""

import asyncio
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str = "1.1"  # "2" for HTTP/2

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> list[tuple[str, str]]:
        """The form fields in order, repeated names kept."""
        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


Handler = Callable[[Recorded], Awaitable[Response]]


class RecordingServer:
    """Any request is recorded, then answered by `handler`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        app = Starlette(
            routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT", "DELETE"])]
        )
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        config = Config()
        # A duplicate: hypercorn closes the socket it is given.
        config.bind = [f"fd://{os.dup(self._sock.fileno())}"]
        config.loglevel = "WARNING"
        config.accesslog = None
        self._loop.run_until_complete(
            serve(self._app, config, shutdown_trigger=self._stopping.wait, mode="asgi")
        )

    def start(self) -> "RecordingServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while True:  # up once it accepts a connection
            try:
                socket.create_connection(self._sock.getsockname(), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    raise RuntimeError("the fake server did not start") from None
                time.sleep(0.01)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._sock.close()

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    async def _endpoint(self, request: Request) -> Response:
        recorded = Recorded(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
            request.scope.get("http_version", "1.1"),
        )
        with self._lock:
            self._requests.append(recorded)
        return await self._handler(recorded)


@dataclass
class _Account:
    public_key: Any
    token_uri: str
    project_id: str


@dataclass
class _State:
    accounts: dict[str, _Account] = field(default_factory=dict)
    # access token -> client_email
    tokens: dict[str, str] = field(default_factory=dict)
    # registration token -> replies to give, in order, before the default success
    scripts: dict[str, deque[Reply]] = field(default_factory=dict)
    token_script: deque[Reply] = field(default_factory=deque)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    issued: int = 0
    sent: int = 0


class FakeFcm:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._server = RecordingServer(self._handle)
        self.url = self._server.url
        self.token_url = f"{self.url}/token"

    def start(self) -> "FakeFcm":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        with self._lock:
            self._state = _State()
        self._server.clear()

    # -- set-up -----------------------------------------------------------------------------

    def register(self, service_account: dict[str, str]) -> None:
        """Accept assertions signed by this service account's key."""
        key = serialization.load_pem_private_key(
            service_account["private_key"].encode(), password=None
        )
        with self._lock:
            self._state.accounts[service_account["client_email"]] = _Account(
                key.public_key(), service_account["token_uri"], service_account["project_id"]
            )

    def script(self, registration_token: str, *replies: Reply) -> None:
        """messages:send to this registration token answers these, then succeeds."""
        with self._lock:
            self._state.scripts.setdefault(registration_token, deque()).extend(replies)

    def script_token_endpoint(self, *replies: Reply) -> None:
        with self._lock:
            self._state.token_script.extend(replies)

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        with self._lock:
            self._state.tokens.clear()

    # -- what happened ----------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        return self._server.requests

    @property
    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/messages:send")]

    @property
    def token_requests(self) -> list[Recorded]:
        return [r for r in self.requests if not r.path.endswith("/messages:send")]

    @property
    def assertions(self) -> list[dict[str, Any]]:
        """The verified claims of every accepted assertion, with its header as "_header"."""
        with self._lock:
            return list(self._state.assertions)

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return [f"ya29.fake-{n}" for n in range(1, self._state.issued + 1)]

    # -- the endpoints ----------------------------------------------------------------------

    async def _handle(self, request: Recorded) -> Response:
        if request.method != "POST":
            return _google_error(405, "Method not allowed", "INVALID_ARGUMENT")
        if request.path.endswith("/messages:send"):
            return self._send(request)
        if request.path.endswith("/token"):
            return self._token(request)
        return _google_error(404, "Not found", "NOT_FOUND")

    def _token(self, request: Recorded) -> Response:
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return _oauth_error("invalid_request", "Bad content type")
        form = dict(request.form())
        if form.get("grant_type") != GRANT_TYPE:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        assertion = form.get("assertion", "")
        with self._lock:
            if self._state.token_script:
                reply = self._state.token_script.popleft()
                return JSONResponse(reply.body, reply.status)
            try:
                email = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            except jwt.PyJWTError:
                return _oauth_error("invalid_grant", "Invalid JWT")
            account = self._state.accounts.get(email)
            if account is None:
                return _oauth_error("invalid_grant", "Invalid grant: account not found")
            try:
                claims = jwt.decode(
                    assertion,
                    account.public_key,
                    algorithms=["RS256"],
                    audience=account.token_uri,
                    options={"require": ["iss", "aud", "iat", "exp", "scope"]},
                )
            except jwt.PyJWTError:
                return _oauth_error("invalid_grant", "Invalid JWT Signature.")
            if claims["scope"] != SCOPE:
                return _oauth_error("invalid_scope", "Invalid OAuth scope.")
            if not 0 < claims["exp"] - claims["iat"] <= 3600:
                return _oauth_error("invalid_grant", "Invalid JWT: lifetime over an hour")
            claims["_header"] = jwt.get_unverified_header(assertion)
            self._state.assertions.append(claims)
            self._state.issued += 1
            token = f"ya29.fake-{self._state.issued}"
            self._state.tokens[token] = email
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _send(self, request: Recorded) -> Response:
        project = request.path.removeprefix("/v1/projects/").removesuffix("/messages:send")
        authorization = request.headers.get("authorization", "")
        with self._lock:
            email = self._state.tokens.get(authorization.removeprefix("Bearer "))
            if not authorization.startswith("Bearer ") or email is None:
                return _google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access"
                    " token, login cookie or other valid authentication credential.",
                    "UNAUTHENTICATED",
                )
            if self._state.accounts[email].project_id != project:
                return _google_error(
                    403,
                    f"Permission 'cloudmessaging.messages.create' denied on resource"
                    f" '//cloudresourcemanager.googleapis.com/projects/{project}'",
                    "PERMISSION_DENIED",
                )
            try:
                message = request.json()["message"]
                data = message.get("data", {})
            except (ValueError, KeyError, TypeError, AttributeError):
                return _google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
            if not all(isinstance(v, str) for v in data.values()):
                return _google_error(
                    400,
                    "Invalid value at 'message.data[0].value' (TYPE_STRING)",
                    "INVALID_ARGUMENT",
                )
            script = self._state.scripts.get(message.get("token", ""))
            if script:
                reply = script.popleft()
                return JSONResponse(reply.body, reply.status)
            self._state.sent += 1
            name = f"projects/{project}/messages/0:{self._state.sent}"
        return JSONResponse({"name": name})


def _oauth_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, 400)


def _google_error(
    status: int, message: str, error_status: str, error_code: str | None = None
) -> Response:
    return JSONResponse(google_error(status, message, error_status, error_code).body, status)


def google_error(
    status: int, message: str, error_status: str, error_code: str | None = None
) -> Reply:
    """An FCM v1 error body, with an FcmError detail when `error_code` is given."""
    error: dict[str, Any] = {"code": status, "message": message, "status": error_status}
    if error_code:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }
        ]
    return Reply(status, {"error": error})


def unregistered(status: int = 404) -> Reply:
    return google_error(status, "Requested entity was not found.", "NOT_FOUND", "UNREGISTERED")


def invalid_registration_token() -> Reply:
    return google_error(
        400,
        "The registration token is not a valid FCM registration token",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
    )
