"""HTTP only, for the Users view (users/operations.py): check the path, authenticate, parse,
one transaction, render."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import web
from notify_server.bindings import operations as bindings
from notify_server.bindings.schemas import BindingForm
from notify_server.errors import NotFound
from notify_server.forms import ListQuery
from notify_server.users import operations
from notify_server.users.schemas import (
    UserBindingListQuery,
    UserForm,
    UserListQuery,
    user_binding_resource,
    user_resource,
    user_url,
)
from notify_server.wire import FormData

USERS = "/v1/Services/{service_sid}/Users"
USER = USERS + "/{identity}"


def path_identity(request: Request) -> str:
    """The identity a path names. One no Binding could have is a path that does not exist
    (and NUL would not even reach PostgreSQL)."""
    identity: str = request.path_params["identity"]
    if len(identity) > 256 or "\x00" in identity:
        raise NotFound()
    return identity


async def create_user(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    form = UserForm.parse(await web.read_form(request))
    user = await web.read(
        request, lambda conn: operations.create_user(conn, account_sid, service_sid, form)
    )
    return web.json_response(user_resource(user, web.base_url(request)), 201)


async def list_users(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    query = UserListQuery.parse(web.query(request))
    page = await web.read(
        request, lambda conn: operations.list_users(conn, account_sid, service_sid, query)
    )
    return web.page_response(
        request,
        key="users",
        path=f"/v1/Services/{service_sid}/Users",
        query=query,
        page=page,
        render=user_resource,
    )


async def fetch_user(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    account_sid = await web.authenticate(request)
    user = await web.read(
        request, lambda conn: operations.fetch_user(conn, account_sid, service_sid, identity)
    )
    return web.json_response(user_resource(user, web.base_url(request)))


async def delete_user(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    account_sid = await web.authenticate(request)
    await web.write(
        request, lambda conn: operations.delete_user(conn, account_sid, service_sid, identity)
    )
    return web.no_content()


async def create_user_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    account_sid = await web.authenticate(request)
    sent = await web.read_form(request)
    # The identity is the path's; an Identity in the body is not asked for and not used.
    items = [("Identity", identity)]
    items += [
        (name, value) for name in sent.names() if name != "Identity" for value in sent.all(name)
    ]
    form = BindingForm.parse(FormData(items))
    binding = await web.write(
        request,
        lambda conn: bindings.create_binding(conn, account_sid, service_sid, form),
    )
    return web.json_response(user_binding_resource(binding, web.base_url(request)), 201)


async def list_user_bindings(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    account_sid = await web.authenticate(request)
    query = UserBindingListQuery.parse(web.query(request))
    page = await web.read(
        request,
        lambda conn: operations.list_user_bindings(conn, account_sid, service_sid, identity, query),
    )
    return web.page_response(
        request,
        key="bindings",
        path=user_url("", service_sid, identity) + "/Bindings",
        query=query,
        page=page,
        render=user_binding_resource,
    )


async def fetch_user_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    sid = web.path_sid(request, "sid", "BS")
    account_sid = await web.authenticate(request)
    binding = await web.read(
        request,
        lambda conn: operations.fetch_user_binding(conn, account_sid, service_sid, identity, sid),
    )
    return web.json_response(user_binding_resource(binding, web.base_url(request)))


async def delete_user_binding(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    identity = path_identity(request)
    sid = web.path_sid(request, "sid", "BS")
    account_sid = await web.authenticate(request)
    await web.write(
        request,
        lambda conn: operations.delete_user_binding(conn, account_sid, service_sid, identity, sid),
    )
    return web.no_content()


async def create_segment_membership(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    path_identity(request)
    account_sid = await web.authenticate(request)
    return await web.read(
        request,
        lambda conn: operations.create_segment_membership(conn, account_sid, service_sid),
    )


async def list_segments(request: Request) -> Response:
    service_sid = web.path_sid(request, "service_sid", "IS")
    account_sid = await web.authenticate(request)
    query = ListQuery.parse(web.query(request))
    page = await web.read(
        request, lambda conn: operations.list_segments(conn, account_sid, service_sid, query)
    )
    return web.page_response(
        request,
        key="segments",
        path=f"/v1/Services/{service_sid}/Segments",
        query=query,
        page=page,
        render=lambda segment, base_url: segment,
    )


routes = [
    Route(USERS, create_user, methods=["POST"]),
    Route(USERS, list_users, methods=["GET"]),
    Route(USER, fetch_user, methods=["GET"]),
    Route(USER, delete_user, methods=["DELETE"]),
    Route(USER + "/Bindings", create_user_binding, methods=["POST"]),
    Route(USER + "/Bindings", list_user_bindings, methods=["GET"]),
    Route(USER + "/Bindings/{sid}", fetch_user_binding, methods=["GET"]),
    Route(USER + "/Bindings/{sid}", delete_user_binding, methods=["DELETE"]),
    Route(USER + "/SegmentMemberships", create_segment_membership, methods=["POST"]),
    Route("/v1/Services/{service_sid}/Segments", list_segments, methods=["GET"]),
]
