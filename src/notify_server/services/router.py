"""HTTP only: check the path, authenticate, parse, one transaction, render."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import web
from notify_server.services import operations
from notify_server.services.schemas import ServiceForm, ServiceListQuery, ServiceResource


async def create_service(request: Request) -> Response:
    account_sid = await web.authenticate(request)
    form = ServiceForm.parse(await web.read_form(request))
    web.check_callback_url(request, form.delivery_callback_url)
    service = await web.write(
        request, lambda conn: operations.create_service(conn, account_sid, form)
    )
    return web.json_response(ServiceResource.render(service, web.base_url(request)), 201)


async def list_services(request: Request) -> Response:
    account_sid = await web.authenticate(request)
    query = ServiceListQuery.parse(web.query(request))
    page = await web.read(request, lambda conn: operations.list_services(conn, account_sid, query))
    return web.page_response(
        request,
        key="services",
        path="/v1/Services",
        query=query,
        page=page,
        render=ServiceResource.render,
    )


async def fetch_service(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "IS")
    account_sid = await web.authenticate(request)
    service = await web.read(request, lambda conn: operations.get_service(conn, account_sid, sid))
    return web.json_response(ServiceResource.render(service, web.base_url(request)))


async def update_service(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "IS")
    account_sid = await web.authenticate(request)
    form = ServiceForm.parse(await web.read_form(request))
    web.check_callback_url(request, form.delivery_callback_url)
    service = await web.write(
        request, lambda conn: operations.update_service(conn, account_sid, sid, form)
    )
    return web.json_response(ServiceResource.render(service, web.base_url(request)))


async def delete_service(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "IS")
    account_sid = await web.authenticate(request)
    await web.write(request, lambda conn: operations.delete_service(conn, account_sid, sid))
    return web.no_content()


routes = [
    Route("/v1/Services", create_service, methods=["POST"]),
    Route("/v1/Services", list_services, methods=["GET"]),
    Route("/v1/Services/{sid}", fetch_service, methods=["GET"]),
    Route("/v1/Services/{sid}", update_service, methods=["POST"]),
    Route("/v1/Services/{sid}", delete_service, methods=["DELETE"]),
]
