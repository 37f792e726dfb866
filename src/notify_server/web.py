"""What every router needs from a request: SIDs checked, caller known, form read."""

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection, Engine
from starlette.requests import Request
from starlette.responses import Response

from notify_server.crypto import SecretBox
from notify_server.db import GroupCommit, Result
from notify_server.errors import BodyTooLarge, InvalidParameter, NotFound
from notify_server.forms import ListQuery
from notify_server.paging import Page
from notify_server.wire import FormData, is_sid, page_envelope


def engine(request: Request) -> Engine:
    return request.app.state.engine


def path_sid(request: Request, name: str, prefix: str) -> str:
    """A SID from the path. A malformed one is a path that does not exist: 404 even before
    authentication, as Twilio answered."""
    value: str = request.path_params[name]
    if not is_sid(value, prefix):
        raise NotFound()
    return value


def authenticate(request: Request) -> str:
    """The caller's account SID; also counted against the account's rate limit."""
    state = request.app.state
    account_sid: str = state.authenticator.account_sid(request.headers.get("authorization"))
    request.state.account_sid = account_sid
    state.rate_limiter.check(account_sid)
    return account_sid


async def read_form(request: Request) -> FormData:
    limit: int = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        # curl -F sends this; the SDKs never do, so it may take the slower parser.
        return await _parse_multipart(request, bytes(body))
    return _parse(bytes(body))


async def _parse_multipart(request: Request, body: bytes) -> FormData:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form()
    return FormData((k, v) for k, v in form.multi_items() if isinstance(v, str))


def query(request: Request) -> FormData:
    return _parse(request.scope["query_string"])


def _parse(raw: bytes) -> FormData:
    try:
        return FormData.parse(raw)
    except UnicodeDecodeError:
        raise InvalidParameter("The request's parameters are not valid UTF-8") from None


def base_url(request: Request) -> str:
    configured: str | None = request.app.state.settings.public_url
    if configured:
        return configured.rstrip("/")
    # From the scope, not request.url: building the whole URL costs more than this request's
    # database work.
    host = request.headers.get("host")
    if host is None:
        server_host, server_port = request.scope.get("server") or ("localhost", 80)
        host = f"{server_host}:{server_port}"
    return f"{request.scope['scheme']}://{host}"


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


async def write(request: Request, operation: Callable[[Connection], Result]) -> Result:
    """Run `operation` in a write transaction, committed together with its neighbours'."""
    group_commit: GroupCommit = request.app.state.group_commit
    return await group_commit.run(operation)


def secret_box(request: Request) -> SecretBox:
    return request.app.state.secret_box


def page_response(
    request: Request,
    *,
    key: str,
    path: str,
    query: ListQuery,
    page: Page[Any],
    render: Callable[[Any, str], dict],
) -> Response:
    base = base_url(request)
    return json_response(
        page_envelope(
            key=key,
            records=[render(item, base) for item in page.items],
            page_url=f"{base}{path}",
            filters=query.filters(),
            page=query.page,
            page_size=query.page_size,
            page_token=query.page_token,
            next_token=page.next_token,
            previous_token=page.previous_token,
        )
    )
