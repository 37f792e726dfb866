"""Console sessions: a signed cookie that names the account and the credential that signed
in (never the token or secret itself), with the session's CSRF token; and the checks every
state-changing form passes."""

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from notify_server import web
from notify_server.wire import is_sid

COOKIE = "notify_console"
COOKIE_PATH = "/console"
LIFETIME_SECONDS = 12 * 3600
_KEY_LABEL = b"notify-server console session v1"


class SignInNeeded(Exception):
    """No session, or one that is expired, forged or outlived its credential."""


class CrossSiteRequest(Exception):
    """A form post that did not come from a console page of this server."""


@dataclass(frozen=True)
class Session:
    account_sid: str
    # The AC… or SK… that signed in, and a digest of its stored hash at the time
    # (accounts.operations.credential_stamp): a new token or a deleted key ends the session.
    username: str
    stamp: str
    csrf_token: str
    expires: int


def _key(request: Request) -> bytes:
    return web.secret_box(request).derived_key(_KEY_LABEL)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session(account_sid: str, username: str, stamp: str) -> Session:
    return Session(
        account_sid=account_sid,
        username=username,
        stamp=stamp,
        csrf_token=secrets.token_urlsafe(24),
        expires=int(time.time()) + LIFETIME_SECONDS,
    )


def encode(request: Request, session: Session) -> str:
    fields = [session.account_sid, session.username, session.stamp, session.csrf_token]
    payload = _b64(orjson.dumps([*fields, session.expires]))
    signature = _b64(hmac.new(_key(request), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def decode(request: Request, value: str | None) -> Session:
    if not value or value.count(".") != 1:
        raise SignInNeeded()
    payload, signature = value.split(".")
    expected = _b64(hmac.new(_key(request), payload.encode(), hashlib.sha256).digest())
    if not _same(signature, expected):
        raise SignInNeeded()
    try:
        account_sid, username, stamp, csrf_token, expires = orjson.loads(_unb64(payload))
    except (ValueError, TypeError):
        raise SignInNeeded() from None
    texts = (account_sid, username, stamp, csrf_token)
    if not all(isinstance(text, str) for text in texts) or not is_sid(account_sid, "AC"):
        raise SignInNeeded()
    if not isinstance(expires, int) or expires < time.time():
        raise SignInNeeded()
    return Session(account_sid, username, stamp, csrf_token, expires)


def _same(given: str, expected: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500), and
    # a cookie or form field is whatever the client sent.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _secure(request: Request) -> bool:
    # uvicorn's proxy-headers handling has already set the scheme from X-Forwarded-Proto when
    # the proxy is trusted (--forwarded-allow-ips); a configured https public URL counts too.
    return request.scope["scheme"] == "https" or web.base_url(request).startswith("https://")


def set_cookie(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        encode(request, session),
        max_age=LIFETIME_SECONDS,
        path=COOKIE_PATH,
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=_secure(request), httponly=True, samesite="strict"
    )


def check_same_origin(request: Request) -> None:
    """Browsers name the page a form was posted from; another site's page is refused, as is
    `Origin: null` (a sandboxed frame or a redirect chain). A client that sends neither
    header is not a browser, and a browser is what CSRF needs."""
    origin = request.headers.get("origin")
    own = urlsplit(web.base_url(request))
    if origin is not None and origin != f"{own.scheme}://{own.netloc}":
        raise CrossSiteRequest()
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        raise CrossSiteRequest()


def check_csrf(request: Request, session: Session, token: str | None) -> None:
    check_same_origin(request)
    if not token or not _same(token, session.csrf_token):
        raise CrossSiteRequest()
