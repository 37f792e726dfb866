"""HTTP only: check the path, authenticate, parse, one transaction, render."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import web
from notify_server.notifications import operations
from notify_server.notifications.schemas import (
    DeliveryListQuery,
    DeliveryResource,
    NotificationForm,
    NotificationListQuery,
    NotificationResource,
    notification_detail,
)


async def create_notification(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    form = NotificationForm.parse(await web.read_form(request))
    web.check_callback_url(request, form.delivery_callback_url)
    chunk_size = request.app.state.settings.fanout_chunk_size
    notification = await web.write(
        request,
        lambda conn: operations.create_notification(
            conn, account_sid, service_sid, form, chunk_size
        ),
    )
    request.app.state.delivery_worker.created(
        deliveries=notification.deliveries, expanding=notification.expanding
    )
    return web.json_response(NotificationResource.render(notification), 201)


# Our extensions (Twilio answers 405 to a GET here): the notifications sent, newest first.
async def list_notifications(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    query = NotificationListQuery.parse(web.query(request))
    page = await web.read(
        request,
        lambda conn: operations.list_notifications(conn, account_sid, service_sid, query),
    )
    return web.page_response(
        request,
        key="notifications",
        path=f"/v1/Services/{service_sid}/Notifications",
        query=query,
        page=page,
        render=lambda notification, _base_url: NotificationResource.render(notification),
    )


async def fetch_notification(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    sid = web.path_sid(request, "sid", "NT")
    account_sid = await web.authenticate(request)
    notification = await web.read(
        request, lambda conn: operations.get_notification(conn, account_sid, service_sid, sid)
    )
    return web.json_response(notification_detail(notification, web.base_url(request)))


# What happened to each target, and the request its provider received.
async def list_deliveries(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    sid = web.path_sid(request, "sid", "NT")
    account_sid = await web.authenticate(request)
    query = DeliveryListQuery.parse(web.query(request))
    settings = request.app.state.settings
    box = web.secret_box(request)
    page = await web.read(
        request,
        lambda conn: operations.list_deliveries(
            conn, account_sid, service_sid, sid, query, settings, box
        ),
    )
    return web.page_response(
        request,
        key="deliveries",
        path=f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries",
        query=query,
        page=page,
        render=DeliveryResource.render,
    )


routes = [
    Route("/v1/Services/{service_sid}/Notifications", create_notification, methods=["POST"]),
    Route("/v1/Services/{service_sid}/Notifications", list_notifications, methods=["GET"]),
    Route("/v1/Services/{service_sid}/Notifications/{sid}", fetch_notification, methods=["GET"]),
    Route(
        "/v1/Services/{service_sid}/Notifications/{sid}/Deliveries",
        list_deliveries,
        methods=["GET"],
    ),
]
