"""HTTP only: check the path, authenticate, parse, one transaction, render."""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import web
from notify_server.credentials import operations
from notify_server.credentials.schemas import (
    CredentialForm,
    CredentialResource,
    CredentialUpdateForm,
)
from notify_server.forms import ListQuery


async def create_credential(request: Request) -> Response:
    account_sid = await web.authenticate(request)
    form = CredentialForm.parse(await web.read_form(request))
    credential = await web.write(
        request,
        lambda conn: operations.create_credential(conn, account_sid, form, web.secret_box(request)),
    )
    return web.json_response(CredentialResource.render(credential, web.base_url(request)), 201)


async def list_credentials(request: Request) -> Response:
    account_sid = await web.authenticate(request)
    query = ListQuery.parse(web.query(request))
    page = await web.read(
        request, lambda conn: operations.list_credentials(conn, account_sid, query)
    )
    return web.page_response(
        request,
        key="credentials",
        path="/v1/Credentials",
        query=query,
        page=page,
        render=CredentialResource.render,
    )


async def fetch_credential(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "CR")
    account_sid = await web.authenticate(request)
    credential = await web.read(
        request, lambda conn: operations.get_credential(conn, account_sid, sid)
    )
    return web.json_response(CredentialResource.render(credential, web.base_url(request)))


async def update_credential(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "CR")
    account_sid = await web.authenticate(request)
    form = CredentialUpdateForm.parse(await web.read_form(request))
    credential = await web.write(
        request,
        lambda conn: operations.update_credential(
            conn, account_sid, sid, form, web.secret_box(request)
        ),
    )
    return web.json_response(CredentialResource.render(credential, web.base_url(request)))


async def delete_credential(request: Request) -> Response:
    sid = web.path_sid(request, "sid", "CR")
    account_sid = await web.authenticate(request)
    await web.write(request, lambda conn: operations.delete_credential(conn, account_sid, sid))
    return web.no_content()


routes = [
    Route("/v1/Credentials", create_credential, methods=["POST"]),
    Route("/v1/Credentials", list_credentials, methods=["GET"]),
    Route("/v1/Credentials/{sid}", fetch_credential, methods=["GET"]),
    Route("/v1/Credentials/{sid}", update_credential, methods=["POST"]),
    Route("/v1/Credentials/{sid}", delete_credential, methods=["DELETE"]),
]
