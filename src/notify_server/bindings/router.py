"""HTTP only: check the path, authenticate, parse, one transaction, render."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from notify_server import web
from notify_server.bindings import operations
from notify_server.bindings.schemas import BindingForm, BindingListQuery, BindingResource
from notify_server.db import transaction

router = APIRouter()


@router.post("/v1/Services/{service_sid}/Bindings")
async def create_binding(request: Request, service_sid: str) -> Response:
    web.require_sid(service_sid, "IS")
    account_sid = web.authenticate(request)
    form = BindingForm.parse(await web.read_form(request))
    with transaction(web.engine(request), write=True) as conn:
        binding = operations.create_binding(conn, account_sid, service_sid, form)
    return web.json_response(BindingResource.render(binding, web.base_url(request)), 201)


@router.get("/v1/Services/{service_sid}/Bindings")
async def list_bindings(request: Request, service_sid: str) -> Response:
    web.require_sid(service_sid, "IS")
    account_sid = web.authenticate(request)
    query = BindingListQuery.parse(web.query(request))
    with transaction(web.engine(request), write=False) as conn:
        page = operations.list_bindings(conn, account_sid, service_sid, query)
    return web.page_response(
        request,
        key="bindings",
        path=f"/v1/Services/{service_sid}/Bindings",
        query=query,
        page=page,
        render=BindingResource.render,
    )


@router.get("/v1/Services/{service_sid}/Bindings/{sid}")
async def fetch_binding(request: Request, service_sid: str, sid: str) -> Response:
    web.require_sid(service_sid, "IS")
    web.require_sid(sid, "BS")
    account_sid = web.authenticate(request)
    with transaction(web.engine(request), write=False) as conn:
        binding = operations.fetch_binding(conn, account_sid, service_sid, sid)
    return web.json_response(BindingResource.render(binding, web.base_url(request)))


@router.delete("/v1/Services/{service_sid}/Bindings/{sid}")
async def delete_binding(request: Request, service_sid: str, sid: str) -> Response:
    web.require_sid(service_sid, "IS")
    web.require_sid(sid, "BS")
    account_sid = web.authenticate(request)
    with transaction(web.engine(request), write=True) as conn:
        operations.delete_binding(conn, account_sid, service_sid, sid)
    return web.no_content()
