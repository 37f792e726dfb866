"""`/`, `/openapi.json` and `/docs`: the API's description and a page to browse it, with
Swagger UI's assets from the swagger-ui-bundle package (nothing from a CDN). No
authentication: they describe the API, not any account's data."""

import importlib.resources
from functools import cache
from pathlib import Path

import orjson
import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notify_server import openapi, web
from notify_server.errors import NotFound

# Scripts and styles from this origin only. Swagger UI sets inline styles and draws its icons
# from data: URIs; "Try it out" calls this origin's API.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
DOCS_HEADERS = {
    "content-security-policy": DOCS_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# The versioned bundle changes only with the package: browsers may keep it a day.
ASSET_HEADERS = {**DOCS_HEADERS, "cache-control": "public, max-age=86400"}
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
OUR_ASSETS = {"docs.js": "text/javascript; charset=utf-8"}
INDEX = {
    "name": "notify-server",
    "description": "A self-hosted server that speaks the Twilio Notify v1 REST API",
    "api": "/v1",
    "docs": "/docs",
    "openapi": "/openapi.json",
    "health": "/healthz",
    "ready": "/readyz",
}


@cache
def _asset(name: str) -> bytes:
    if name in SWAGGER_ASSETS:
        return (Path(swagger_ui_bundle.swagger_ui_path) / name).read_bytes()
    return importlib.resources.files(openapi).joinpath(name).read_bytes()


async def index(request: Request) -> Response:
    return web.json_response(INDEX)


async def openapi_description(request: Request) -> Response:
    body = orjson.dumps(openapi.description(web.base_url(request)))
    return Response(body, media_type="application/json")


async def docs_page(request: Request) -> Response:
    return Response(
        _asset("docs.html"), media_type="text/html; charset=utf-8", headers=DOCS_HEADERS
    )


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    content_type = SWAGGER_ASSETS.get(name) or OUR_ASSETS.get(name)
    if content_type is None:
        raise NotFound()
    return Response(_asset(name), media_type=content_type, headers=ASSET_HEADERS)


routes = [
    Route("/", index, methods=["GET"]),
    # Edge strips a trailing `.json` from every path (Twilio's convention): this answers
    # /openapi.json (and /openapi).
    Route("/openapi", openapi_description, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/docs/assets/{name}", docs_asset, methods=["GET"]),
]
