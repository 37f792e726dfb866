"""What every router needs from a request: SIDs checked, caller known, form read."""

from collections.abc import Callable
from typing import Any

import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from notify_server.crypto import SecretBox
from notify_server.db import Database, Result
from notify_server.errors import BodyTooLarge, InvalidParameter, NotFound
from notify_server.forms import ListQuery
from notify_server.outbound import DestinationRefused, OutboundPolicy
from notify_server.paging import Page
from notify_server.wire import JSON_DATES, FormData, is_sid, page_envelope


def path_sid(request: Request, name: str, prefix: str) -> str:
    """A SID from the path. A malformed one is a path that does not exist: 404 even before
    authentication, as Twilio answered."""
    value: str = request.path_params[name]
    if not is_sid(value, prefix):
        raise NotFound()
    # Stored SIDs are lower-case; Twilio's patterns accept upper-case hex too.
    return prefix + value[2:].lower()


async def authenticate(request: Request) -> str:
    """The caller's account SID; also counted against the account's rate limit."""
    state = request.app.state
    account_sid: str = await state.authenticator.account_sid(request.headers.get("authorization"))
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
        return _parse_multipart(request.headers["content-type"], bytes(body))
    return _parse(bytes(body))


def _parse_multipart(content_type: str, body: bytes) -> FormData:
    """Driven here rather than through Starlette's form(), which decodes a field that is not
    UTF-8 as Latin-1: python-multipart hands over the bytes, and such a field is refused."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidParameter("The request's multipart body has no boundary")
    parts = _MultipartParts()
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": parts.begin,
                "on_part_data": parts.data,
                "on_part_end": parts.end,
                "on_header_field": parts.header_field,
                "on_header_value": parts.header_value,
                "on_header_end": parts.header_end,
            },
        )
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise InvalidParameter("The request's multipart body is malformed") from None
    if parts.ended != len(parts.parts):
        # Cut short: python-multipart does not complain, but the last part may be missing text.
        raise InvalidParameter("The request's multipart body is malformed")
    items = []
    for disposition, data in parts.parts:
        _, params = parse_options_header(disposition)
        if b"filename" in params or b"filename*" in params:
            continue  # an uploaded file: no parameter of ours is one
        if b"name" not in params:
            raise InvalidParameter("A part of the request's multipart body has no name")
        try:
            name = params[b"name"].decode()
        except UnicodeDecodeError:
            raise InvalidParameter("The request's parameters are not valid UTF-8") from None
        try:
            items.append((name, data.decode()))
        except UnicodeDecodeError:
            raise InvalidParameter(f"Parameter '{name}' is invalid: not valid UTF-8") from None
    return FormData(items)


class _MultipartParts:
    """Each part's Content-Disposition and raw bytes, as python-multipart calls back."""

    def __init__(self) -> None:
        self.parts: list[tuple[bytes, bytearray]] = []
        self.ended = 0
        self._field = bytearray()
        self._value = bytearray()

    def begin(self) -> None:
        self.parts.append((b"", bytearray()))

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self.parts[-1] = (bytes(self._value), self.parts[-1][1])
        self._field.clear()
        self._value.clear()

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].extend(data[start:end])

    def end(self) -> None:
        self.ended += 1


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
    return Response(
        orjson.dumps(body, option=JSON_DATES), status_code=status, media_type="application/json"
    )


def no_content() -> Response:
    return Response(status_code=204)


def database(request: Request) -> Database:
    return request.app.state.database


async def read(request: Request, operation: Callable[[Connection], Result]) -> Result:
    """Run `operation`'s reads off the event loop (in autocommit)."""
    return await database(request).read(operation)


async def write(request: Request, operation: Callable[[Connection], Result]) -> Result:
    """Run `operation` in a write transaction off the event loop, committed (on SQLite)
    together with its neighbours'."""
    return await database(request).write(operation)


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


def check_callback_url(request: Request, url: str | None) -> None:
    """A callback URL a tenant gives must lead somewhere the outbound policy allows."""
    if url is None:
        return
    policy: OutboundPolicy = request.app.state.outbound
    try:
        policy.check_url(url)
    except DestinationRefused as refusal:
        raise InvalidParameter(f"Parameter 'DeliveryCallbackUrl' is invalid: {refusal}") from None
