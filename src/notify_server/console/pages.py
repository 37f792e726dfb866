"""Rendering: the Jinja environment (autoescape on for every template), the headers every
console response carries, and the wrapper that turns a handler's failures into pages."""

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, PackageLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from notify_server.console.session import CrossSiteRequest, SignInNeeded
from notify_server.errors import TwilioError
from notify_server.notifications.schemas import DELIVERY_STATUSES
from notify_server.ratelimit import TooManyRequests
from notify_server.wire import format_date

# Scripts, styles and connections from this origin only, nothing inline, never framed.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with
    # its own forms' posts, and the origin check would refuse them.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
SIGN_IN = "/console/sign-in"


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


templates = Environment(
    loader=PackageLoader("notify_server.console", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["pretty"] = _pretty
templates.globals["delivery_statuses"] = DELIVERY_STATUSES
templates.filters["isodate"] = lambda value: format_date(value) if value else ""
# The list's filters for the pager's links ("identity=a&tag=b&"), blank ones left out.
templates.filters["keep_filters"] = lambda params: "".join(
    f"{urlencode({name: value})}&" for name, value in params.items() if value and name != "page"
)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(template).render(**context), status_code=status)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


Handler = Callable[[Request], Awaitable[Response]]


def page(handler: Handler) -> Handler:
    """The console's failures as pages (never the API's JSON), and its headers on every answer."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        response: Response
        try:
            response = await handler(request)
        except SignInNeeded:
            response = redirect(SIGN_IN)
        except CrossSiteRequest:
            response = render(
                "error.html",
                403,
                title="Refused",
                message="This form was not sent from a page of this console. Reload the page"
                " and try again.",
            )
        except TooManyRequests as error:
            response = render("error.html", 429, title="Too many requests", message=error.message)
            response.headers.update(error.headers())
        except TwilioError as error:
            title = "Not found" if error.status == 404 else "Error"
            response = render("error.html", error.status, title=title, message=error.message)
        response.headers.update(SECURITY_HEADERS)
        return response

    return endpoint


def stream_refused(status: int) -> Response:
    return PlainTextResponse("", status_code=status, headers=SECURITY_HEADERS)
