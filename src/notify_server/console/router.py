"""HTTP only: the console's pages and forms. Each reads the session, calls the same domain
operations the API's routers call (off the event loop, through web.read / web.write), and
renders a template."""

import hmac
import importlib.resources
from functools import cache
from typing import Any

from sqlalchemy import Connection, Row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import console, web
from notify_server.accounts.operations import credential_stamp, verify_credentials
from notify_server.bindings import operations as bindings
from notify_server.bindings.schemas import BINDING_TYPES, BindingListQuery
from notify_server.console import live
from notify_server.console import repository as watched
from notify_server.console.pages import SECURITY_HEADERS, SIGN_IN, page, redirect, render
from notify_server.console.session import (
    COOKIE,
    Session,
    SignInNeeded,
    check_csrf,
    check_same_origin,
    clear_cookie,
    decode,
    new_session,
    set_cookie,
)
from notify_server.errors import NotFound, TwilioError
from notify_server.notifications import operations as notifications
from notify_server.notifications import repository as notifications_repository
from notify_server.notifications.operations import DeliveryRecord, StoredNotification
from notify_server.notifications.schemas import (
    DELIVERY_STATUSES,
    DeliveryListQuery,
    DeliveryResource,
    NotificationForm,
    NotificationListQuery,
)
from notify_server.paging import Page
from notify_server.ratelimit import TooManyRequests
from notify_server.services import operations as services
from notify_server.services.schemas import ServiceListQuery
from notify_server.wire import FormData, is_sid

PAGE_SIZE = "50"
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
SIGN_IN_REFUSED = "Sign-in failed: those credentials were not accepted."


async def current_session(request: Request) -> Session:
    """The signed-in session, its credential checked again against the database (a rotated
    token or a deleted API key ends it at once)."""
    session = decode(request, request.cookies.get(COOKIE))
    stamp = await web.read(request, lambda conn: credential_stamp(conn, session.username))
    if stamp is None or not hmac.compare_digest(stamp, session.stamp):
        raise SignInNeeded()
    request.state.account_sid = session.account_sid
    return session


def _params(request: Request, *names: str) -> dict[str, str]:
    query = web.query(request)
    return {name: (query.first(name) or "").strip() for name in names}


@page
async def home(request: Request) -> Response:
    await current_session(request)
    return redirect("/console/services")


@page
async def sign_in_page(request: Request) -> Response:
    try:
        await current_session(request)
    except SignInNeeded:
        return render("sign_in.html")
    return redirect("/console/services")


def _verified(conn: Connection, username: str, password: str) -> tuple[str, str] | None:
    account_sid = verify_credentials(conn, username, password)
    stamp = credential_stamp(conn, username) if account_sid else None
    return (account_sid, stamp) if account_sid and stamp else None


@page
async def sign_in(request: Request) -> Response:
    check_same_origin(request)
    form = await web.read_form(request)
    username = (form.first("username") or "").strip()
    password = form.first("password") or ""
    try:
        # Per SID tried, so guessing one account's token is slow (docs/behaviour.md); any
        # other name can never sign in and costs no database read.
        if is_sid(username, "AC") or is_sid(username, "SK"):
            request.app.state.console_sign_ins.check(username.lower())
    except TooManyRequests as error:
        wait = error.headers()["Retry-After"]
        response = render(
            "sign_in.html", 429, error=f"Too many sign-in attempts: try again in {wait} s."
        )
        response.headers.update(error.headers())
        return response
    verified = await web.read(request, lambda conn: _verified(conn, username, password))
    if verified is None:
        return render("sign_in.html", 401, error=SIGN_IN_REFUSED, username=username)
    account_sid, stamp = verified
    signed = redirect("/console/services")
    set_cookie(request, signed, new_session(account_sid, username, stamp))
    return signed


@page
async def sign_out(request: Request) -> Response:
    form = await web.read_form(request)
    try:
        session = await current_session(request)
    except SignInNeeded:
        check_same_origin(request)
    else:
        check_csrf(request, session, form.first("csrf_token"))
    response = redirect(SIGN_IN)
    clear_cookie(request, response)
    return response


@page
async def list_services(request: Request) -> Response:
    session = await current_session(request)
    params = _params(request, "page")
    query = ServiceListQuery.parse(_form(PageSize=PAGE_SIZE, PageToken=params["page"]))
    found = await web.read(
        request, lambda conn: services.list_services(conn, session.account_sid, query)
    )
    return render("services.html", session=session, page=found)


def _form(**values: str | list[str]) -> FormData:
    """A form the way a client would send it: blank fields left out."""
    items: list[tuple[str, str]] = []
    for name, value in values.items():
        for one in [value] if isinstance(value, str) else value:
            if one:
                items.append((name, one))
    return FormData(items)


async def _service(request: Request, session: Session) -> tuple[str, Row]:
    service_sid = web.path_sid(request, "service_sid", "IS")
    service = await web.read(
        request, lambda conn: services.get_service(conn, session.account_sid, service_sid)
    )
    return service_sid, service


@page
async def list_bindings(request: Request) -> Response:
    session = await current_session(request)
    service_sid, service = await _service(request, session)
    params = _params(request, "identity", "tag", "type", "page")
    context: dict[str, Any] = {
        "session": session,
        "service": service,
        "params": params,
        "types": BINDING_TYPES,
    }
    if params["type"] and params["type"] not in BINDING_TYPES:
        return render("bindings.html", status=400, error="Unknown binding type", **context)
    try:
        # A type is a Tag to Twilio's list (bindings.operations.split_tags).
        query = BindingListQuery.parse(
            _form(
                Identity=params["identity"],
                Tag=[params["tag"], params["type"]],
                PageSize=PAGE_SIZE,
                PageToken=params["page"],
            )
        )
    except TwilioError as error:
        return render("bindings.html", status=400, error=error.message, **context)
    found = await web.read(
        request,
        lambda conn: bindings.list_bindings(conn, session.account_sid, service_sid, query),
    )
    return render("bindings.html", page=found, **context)


@page
async def delete_binding(request: Request) -> Response:
    session = await current_session(request)
    form = await web.read_form(request)
    check_csrf(request, session, form.first("csrf_token"))
    service_sid = web.path_sid(request, "service_sid", "IS")
    sid = web.path_sid(request, "sid", "BS")
    await web.write(
        request,
        lambda conn: bindings.delete_binding(conn, session.account_sid, service_sid, sid),
    )
    return redirect(f"/console/services/{service_sid}/bindings?deleted={sid}")


async def _notifications_page(
    request: Request,
    session: Session,
    status: int = 200,
    *,
    sent: dict[str, str] | None = None,
    error: str | None = None,
) -> Response:
    service_sid, service = await _service(request, session)
    params = _params(request, "page")
    query = NotificationListQuery.parse(_form(PageSize=PAGE_SIZE, PageToken=params["page"]))
    account_sid = session.account_sid

    def read(conn: Connection) -> tuple[Page[StoredNotification], dict[int, dict[str, int]], str]:
        # The stamp before what it stands for (PostgreSQL reads are autocommit, each statement its
        # own snapshot): a change between the two then refreshes the page, instead of being missed.
        stamp = watched.service_stamp(conn, service.id)
        found = notifications.list_notifications(conn, account_sid, service_sid, query)
        return found, watched.delivery_summaries(conn, [n.id for n in found.items]), stamp

    found, summaries, stamp = await web.read(request, read)
    return render(
        "notifications.html",
        status,
        session=session,
        service=service,
        page=found,
        summaries=summaries,
        stamp=stamp,
        sent=sent or {"target_kind": "Identity"},
        error=error,
    )


@page
async def list_notifications(request: Request) -> Response:
    session = await current_session(request)
    return await _notifications_page(request, session)


@page
async def send_notification(request: Request) -> Response:
    """The API's CreateNotification, from the page's form: the same NotificationForm rules,
    its errors shown beside the form."""
    session = await current_session(request)
    form = await web.read_form(request)
    check_csrf(request, session, form.first("csrf_token"))
    service_sid = web.path_sid(request, "service_sid", "IS")
    sent = {
        name: form.first(name) or "" for name in ("target_kind", "target", "title", "body", "data")
    }
    kind = sent["target_kind"] if sent["target_kind"] in ("Identity", "Tag") else "Identity"
    chunk_size = request.app.state.settings.fanout_chunk_size
    try:
        parsed = NotificationForm.parse(
            _form(
                **{kind: sent["target"]},
                Title=sent["title"],
                Body=sent["body"],
                Data=sent["data"].strip(),
            )
        )
        notification = await web.write(
            request,
            lambda conn: notifications.create_notification(
                conn, session.account_sid, service_sid, parsed, chunk_size
            ),
        )
    except NotFound:
        raise
    except TwilioError as error:
        return await _notifications_page(request, session, 400, sent=sent, error=error.message)
    request.app.state.delivery_worker.created(
        deliveries=notification.deliveries, expanding=notification.expanding
    )
    return redirect(f"/console/services/{service_sid}/notifications/{notification.sid}")


@page
async def show_notification(request: Request) -> Response:
    session = await current_session(request)
    service_sid, service = await _service(request, session)
    sid = web.path_sid(request, "sid", "NT")
    params = _params(request, "status", "type", "page")
    context: dict[str, Any] = {
        "session": session,
        "service": service,
        "params": params,
        "statuses": DELIVERY_STATUSES,
        "types": BINDING_TYPES,
    }
    query = DeliveryListQuery.parse(
        _form(
            Status=params["status"],
            BindingType=params["type"],
            PageSize=PAGE_SIZE,
            PageToken=params["page"],
        )
    )
    account_sid = session.account_sid
    settings, box = request.app.state.settings, web.secret_box(request)

    def read(conn: Connection) -> tuple[StoredNotification, Page[DeliveryRecord], str]:
        notification = notifications.get_notification(conn, account_sid, service_sid, sid)
        stamp = watched.notification_stamp(conn, notification.id)  # first: see above
        found = notifications.list_deliveries(
            conn, account_sid, service_sid, sid, query, settings, box
        )
        return notification, found, stamp

    notification, found, stamp = await web.read(request, read)
    base = web.base_url(request)
    return render(
        "notification.html",
        notification=notification,
        deliveries=[DeliveryResource.render(record, base) for record in found.items],
        page=found,
        stamp=stamp,
        **context,
    )


async def events(request: Request) -> Response:
    """The open page's fingerprint, as server-sent events (console/live.py)."""
    try:
        session = await current_session(request)
    except SignInNeeded:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    try:
        service_sid = web.path_sid(request, "service_sid", "IS")
    except NotFound:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    notification_sid = web.query(request).first("notification")
    if notification_sid is not None:
        if not is_sid(notification_sid, "NT"):
            return Response(status_code=404, headers=SECURITY_HEADERS)
        notification_sid = "NT" + notification_sid[2:].lower()
    account_sid = session.account_sid

    def stamp(conn: Connection) -> str:
        # Looked up each time, scoped to the account: a deleted service ends the stream.
        service = services.get_service(conn, account_sid, service_sid)
        if notification_sid is None:
            return watched.service_stamp(conn, service.id)
        notification = notifications_repository.notification(
            conn, account_sid, service.id, notification_sid
        )
        if notification is None:
            raise NotFound()
        return watched.notification_stamp(conn, notification.id)

    try:
        await web.read(request, stamp)
    except TwilioError:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    return live.event_stream(web.database(request), stamp, SECURITY_HEADERS)


@cache
def _static(name: str) -> bytes:
    return importlib.resources.files(console).joinpath("static", name).read_bytes()


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    return Response(_static(name), media_type=STATIC[name], headers=SECURITY_HEADERS)


routes = [
    Route("/console", home, methods=["GET"]),
    Route("/console/", home, methods=["GET"]),  # what people type
    Route("/console/sign-in", sign_in_page, methods=["GET"]),
    Route("/console/sign-in", sign_in, methods=["POST"]),
    Route("/console/sign-out", sign_out, methods=["POST"]),
    Route("/console/services", list_services, methods=["GET"]),
    Route("/console/services/{service_sid}/bindings", list_bindings, methods=["GET"]),
    Route(
        "/console/services/{service_sid}/bindings/{sid}/delete", delete_binding, methods=["POST"]
    ),
    Route("/console/services/{service_sid}/notifications", list_notifications, methods=["GET"]),
    Route("/console/services/{service_sid}/notifications", send_notification, methods=["POST"]),
    Route(
        "/console/services/{service_sid}/notifications/{sid}", show_notification, methods=["GET"]
    ),
    Route("/console/services/{service_sid}/events", events, methods=["GET"]),
    Route("/console/static/{name}", static, methods=["GET"]),
]
