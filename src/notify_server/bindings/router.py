"""HTTP only: check the path, authenticate, parse, one transaction (writes are committed in
groups: db.GroupCommit), render.

Plain Starlette routes: FastAPI's parameter machinery cost more per request than our whole
database work (bench/README.md), and these handlers read the request themselves anyway.
"""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import web
from notify_server.bindings import operations
from notify_server.bindings.schemas import BindingForm, BindingListQuery, binding_resource


async def create_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    form = BindingForm.parse(await web.read_form(request))
    binding = await web.write(
        request, lambda conn: operations.create_binding(conn, account_sid, service_sid, form)
    )
    return web.json_response(binding_resource(binding, web.base_url(request)), 201)


async def list_bindings(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    query = BindingListQuery.parse(web.query(request))
    page = await web.read(
        request, lambda conn: operations.list_bindings(conn, account_sid, service_sid, query)
    )
    return web.page_response(
        request,
        key="bindings",
        path=f"/v1/Services/{service_sid}/Bindings",
        query=query,
        page=page,
        render=binding_resource,
    )


async def fetch_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    sid = web.path_sid(request, "sid", "BS")
    account_sid = await web.authenticate(request)
    binding = await web.read(
        request, lambda conn: operations.fetch_binding(conn, account_sid, service_sid, sid)
    )
    return web.json_response(binding_resource(binding, web.base_url(request)))


async def delete_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    sid = web.path_sid(request, "sid", "BS")
    account_sid = await web.authenticate(request)
    await web.write(
        request, lambda conn: operations.delete_binding(conn, account_sid, service_sid, sid)
    )
    return web.no_content()


routes = [
    Route("/v1/Services/{service_sid}/Bindings", create_binding, methods=["POST"]),
    Route("/v1/Services/{service_sid}/Bindings", list_bindings, methods=["GET"]),
    Route("/v1/Services/{service_sid}/Bindings/{sid}", fetch_binding, methods=["GET"]),
    Route("/v1/Services/{service_sid}/Bindings/{sid}", delete_binding, methods=["DELETE"]),
]
