"""HTTP only: check the path, authenticate, parse, one transaction, render."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from notify_server import web
from notify_server.credentials import operations
from notify_server.credentials.schemas import (
    CredentialForm,
    CredentialResource,
    CredentialUpdateForm,
)
from notify_server.db import transaction
from notify_server.forms import ListQuery

router = APIRouter()


@router.post("/v1/Credentials")
async def create_credential(request: Request) -> Response:
    account_sid = web.authenticate(request)
    form = CredentialForm.parse(await web.read_form(request))
    with transaction(web.engine(request), write=True) as conn:
        credential = operations.create_credential(conn, account_sid, form, web.secret_box(request))
    return web.json_response(CredentialResource.render(credential, web.base_url(request)), 201)


@router.get("/v1/Credentials")
async def list_credentials(request: Request) -> Response:
    account_sid = web.authenticate(request)
    query = ListQuery.parse(web.query(request))
    with transaction(web.engine(request), write=False) as conn:
        page = operations.list_credentials(conn, account_sid, query)
    return web.page_response(
        request,
        key="credentials",
        path="/v1/Credentials",
        query=query,
        page=page,
        render=CredentialResource.render,
    )


@router.get("/v1/Credentials/{sid}")
async def fetch_credential(request: Request, sid: str) -> Response:
    web.require_sid(sid, "CR")
    account_sid = web.authenticate(request)
    with transaction(web.engine(request), write=False) as conn:
        credential = operations.get_credential(conn, account_sid, sid)
    return web.json_response(CredentialResource.render(credential, web.base_url(request)))


@router.post("/v1/Credentials/{sid}")
async def update_credential(request: Request, sid: str) -> Response:
    web.require_sid(sid, "CR")
    account_sid = web.authenticate(request)
    form = CredentialUpdateForm.parse(await web.read_form(request))
    with transaction(web.engine(request), write=True) as conn:
        credential = operations.update_credential(
            conn, account_sid, sid, form, web.secret_box(request)
        )
    return web.json_response(CredentialResource.render(credential, web.base_url(request)))


@router.delete("/v1/Credentials/{sid}")
async def delete_credential(request: Request, sid: str) -> Response:
    web.require_sid(sid, "CR")
    account_sid = web.authenticate(request)
    with transaction(web.engine(request), write=True) as conn:
        operations.delete_credential(conn, account_sid, sid)
    return web.no_content()
