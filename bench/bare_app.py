"""The baseline for bench/http_bench.py: what plain FastAPI costs, with nothing of ours in it.

POST declares create-binding's form fields with FastAPI's own `Form()` parameters and an
`HTTPBasic` dependency (the declarative style notify-server avoids), then answers a fixed 201
body; GET answers a fixed body. The list (information only: the issue's list target is
against the fixed GET) is what a plain FastAPI app does for a page: `HTTPBasic`, `Query()`
parameters, and a Pydantic response model of PageSize bindings built per request from
constants, no database. Both use notify-server's URL shapes, so routing costs the same,
and a body of about the size of a real binding, so writing the response costs the same.

Served like `notify-server serve`: uvicorn.run, one worker, httptools + uvloop when installed,
log level "warning" (which is how notify-server silences its access log), no Server header.

    .venv/bin/python bench/bare_app.py --port 8100
"""

import argparse
from datetime import datetime
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Form, Query
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel
from starlette.responses import Response

_SERVICE = "IS" + "0" * 32
_BINDING = "BS" + "0" * 32
_ACCOUNT = "AC" + "0" * 32
_BASE = f"http://127.0.0.1:8000/v1/Services/{_SERVICE}"
# A real create-binding response with two tags, as fixed bytes.
BINDING_BODY = (
    f'{{"account_sid":"{_ACCOUNT}","address":"a-bench-0-1","binding_type":"apn",'
    '"credential_sid":null,"date_created":"2024-01-01T00:00:00Z",'
    '"date_updated":"2024-01-01T00:00:00Z","endpoint":null,"identity":"u-bench-0-1",'
    f'"notification_protocol_version":"3","service_sid":"{_SERVICE}","sid":"{_BINDING}",'
    f'"tags":["alpha","beta"],"links":{{"user":"{_BASE}/Users/u-bench-0-1"}},'
    f'"url":"{_BASE}/Bindings/{_BINDING}"}}'
).encode()

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
basic = HTTPBasic()


@app.post("/v1/Services/{service_sid}/Bindings")
async def create_binding(
    service_sid: str,
    credentials: Annotated[HTTPBasicCredentials, Depends(basic)],
    Identity: Annotated[str, Form()],
    BindingType: Annotated[str, Form()],
    Address: Annotated[str, Form()],
    Tag: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies defaults
    NotificationProtocolVersion: Annotated[str | None, Form()] = None,
    CredentialSid: Annotated[str | None, Form()] = None,
    Endpoint: Annotated[str | None, Form()] = None,
) -> Response:
    return Response(BINDING_BODY, status_code=201, media_type="application/json")


@app.get("/v1/Services/{service_sid}/Bindings/{sid}")
async def fetch_binding(service_sid: str, sid: str) -> Response:
    return Response(BINDING_BODY, media_type="application/json")


class BareBinding(BaseModel):
    account_sid: str
    address: str
    binding_type: str
    credential_sid: str | None
    date_created: datetime
    date_updated: datetime
    endpoint: str | None
    identity: str
    notification_protocol_version: str
    service_sid: str
    sid: str
    tags: list[str]
    links: dict[str, str]
    url: str


class BarePage(BaseModel):
    bindings: list[BareBinding]
    meta: dict[str, str | int | None]


_CREATED = datetime(2024, 1, 1)


@app.get("/v1/Services/{service_sid}/Bindings")
async def list_bindings(
    service_sid: str,
    credentials: Annotated[HTTPBasicCredentials, Depends(basic)],
    PageSize: Annotated[int, Query(ge=1, le=1000)] = 50,
    Tag: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    Identity: Annotated[list[str], Query()] = [],  # noqa: B006
) -> BarePage:
    base = f"http://127.0.0.1:8000/v1/Services/{service_sid}"
    bindings = [
        BareBinding(
            account_sid=_ACCOUNT,
            address=f"a-bench-0-{i}",
            binding_type="apn",
            credential_sid=None,
            date_created=_CREATED,
            date_updated=_CREATED,
            endpoint=None,
            identity=f"u-bench-0-{i}",
            notification_protocol_version="3",
            service_sid=service_sid,
            sid=f"BS{i:032d}",
            tags=["alpha", "beta"],
            links={"user": f"{base}/Users/u-bench-0-{i}"},
            url=f"{base}/Bindings/BS{i:032d}",
        )
        for i in range(PageSize)
    ]
    url = f"{base}/Bindings?PageSize={PageSize}&Page=0"
    meta = {
        "page": 0,
        "page_size": PageSize,
        "first_page_url": url,
        "previous_page_url": None,
        "url": url,
        "next_page_url": f"{url}&PageToken=PT{PageSize}",
        "key": "bindings",
    }
    return BarePage(bindings=bindings, meta=meta)


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
