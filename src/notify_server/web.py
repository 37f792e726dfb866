"""What every router needs from a request: SIDs checked, caller known, form read."""

from collections.abc import Callable
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from notify_server.crypto import SecretBox
from notify_server.errors import BodyTooLarge, NotFound
from notify_server.paging import Page
from notify_server.wire import FormData, is_sid, page_envelope


def engine(request: Request) -> Engine:
    return request.app.state.engine


def require_sid(value: str, prefix: str) -> None:
    # A malformed SID is a path that does not exist: 404 even before authentication.
    if not is_sid(value, prefix):
        raise NotFound()


def authenticate(request: Request) -> str:
    return request.app.state.authenticator.account_sid(request.headers.get("authorization"))


async def read_form(request: Request) -> FormData:
    limit: int = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # curl -F sends this; the SDKs never do, so it may take the slower parser.
        form = await request.form()
        return FormData((k, v) for k, v in form.multi_items() if isinstance(v, str))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return FormData.parse(bytes(body))


def query(request: Request) -> FormData:
    return FormData.parse(request.scope["query_string"])


def base_url(request: Request) -> str:
    configured: str | None = request.app.state.settings.public_url
    if configured:
        return configured.rstrip("/")
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


def secret_box(request: Request) -> SecretBox:
    return request.app.state.secret_box


class ListQuery(Protocol):
    page: int
    page_size: int
    page_token: str | None

    def filters(self) -> dict[str, str | list[str]]: ...


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
