"""The baseline for bench/http_bench.py: what plain FastAPI costs, with nothing of ours in it.

POST declares create-binding's form fields with FastAPI's own `Form()` parameters and an
`HTTPBasic` dependency (the declarative style notify-server avoids), then answers a fixed 201
body; GET answers a fixed body. Both use notify-server's URL shapes, so routing costs the same,
and a body of about the size of a real binding, so writing the response costs the same.

Served like `notify-server serve`: uvicorn.run, one worker, httptools + uvloop when installed,
log level "warning" (which is how notify-server silences its access log), no Server header.

    .venv/bin/python bench/bare_app.py --port 8100
"""

import argparse
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Form
from fastapi.security import HTTPBasic, HTTPBasicCredentials
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
