"""GET /openapi.json: Twilio's Notify v1 description plus our extensions, valid OpenAPI 3,
and in step with the routes the server has."""

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from openapi_spec_validator import validate
from starlette.routing import Route

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.console.router import routes as console_routes
from notify_server.credentials.schemas import CredentialForm, CredentialUpdateForm
from notify_server.docs_routes import routes as docs_routes
from notify_server.notifications.schemas import DeliveryResource
from notify_server.openapi import twilio_description
from notify_server.openapi.extensions import EXTENSION
from tests.factories import Account, make_binding, make_service

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/twilio_notify_v1.yaml"
METHODS = ("get", "post", "delete")
# Served, not described: the description itself and its viewer; the web inspector's pages.
UNDESCRIBED = {
    ("/", "get"): "a pointer to /docs, not part of the API",
    ("/openapi", "get"): "the description itself (/openapi.json once Edge strips .json)",
    ("/docs", "get"): "the page that shows the description",
    ("/docs/assets/{}", "get"): "the page's scripts and styles",
    **{
        (re.sub(r"\{[^}]*\}", "{}", route.path), method.lower()): "the web inspector (HTML)"
        for route in console_routes
        for method in route.methods or ()
        if method != "HEAD"
    },
}
# Twilio documents these and we do not serve them, on purpose: none today.
UNSERVED: dict[tuple[str, str], str] = {}


def template(path: str) -> str:
    """`/v1/Services/{ServiceSid}` and `/v1/Services/{service_sid}` are the same path."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def described(description: dict) -> set[tuple[str, str]]:
    return {
        (template(path), method)
        for path, item in description["paths"].items()
        for method in METHODS
        if method in item
    }


def served(settings: Settings) -> set[tuple[str, str]]:
    # Every optional route on (the console's default is off on PostgreSQL).
    app = create_app(settings.model_copy(update={"console_enabled": True}))
    return {
        (template(route.path), method.lower())
        for route in app.router.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"  # Starlette adds it to every GET
    }


def operations(description: dict):
    for path, item in description["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


@pytest.fixture
def description(client: TestClient) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


def test_is_valid_openapi_3(description: dict) -> None:
    assert description["openapi"].startswith("3.")
    validate(description)  # raises on any schema error


def test_validator_rejects_a_broken_description(description: dict) -> None:
    # The check above can fail: a $ref to nothing is refused.
    broken = {**description, "paths": {**description["paths"]}}
    broken["paths"]["/broken"] = {
        "get": {
            "responses": {
                "200": {
                    "description": "x",
                    "content": {"application/json": {"schema": {"$ref": "#/nowhere"}}},
                }
            }
        }
    }
    with pytest.raises(Exception):  # noqa: B017 - the validator's error types vary by version
        validate(broken)


def test_every_route_is_described_and_every_described_operation_served(
    description: dict, settings: Settings
) -> None:
    routes = served(settings)
    operations_ = described(description)
    assert routes - operations_ == set(UNDESCRIBED)
    assert operations_ - routes == set(UNSERVED)


def test_undescribed_routes_are_exactly_the_docs_and_console_routes() -> None:
    # The exclusions above are the docs and console routes, so a new API route cannot hide
    # among them; and every console route is under /console.
    assert all(route.path.startswith("/console") for route in console_routes)
    assert {
        (template(r.path), m.lower())
        for r in [*docs_routes, *console_routes]
        for m in r.methods or ()
    } - {(p, "head") for p, _ in UNDESCRIBED} == set(UNDESCRIBED)


def test_every_described_operation_answers_through_http(
    client: TestClient, description: dict
) -> None:
    # Not only a route in the table: a request to each operation reaches it. Without
    # credentials an API operation answers 401 (after the path's SIDs are checked); the
    # probes answer one of their documented statuses.
    for path, method, operation in operations(description):
        response = client.request(method.upper(), concrete(path))
        if operation.get("security") == []:
            assert str(response.status_code) in operation["responses"], (path, method)
        elif path == "/metrics":
            assert response.status_code == 404, response.text  # no token configured
        else:
            assert response.status_code == 401, (path, method, response.text)


def concrete(path: str) -> str:
    """A described path with well-formed SIDs in it."""
    prefixes = {"ServiceSid": "IS", "Sid": None}
    parts = []
    for segment in path.split("/"):
        match = re.fullmatch(r"\{(\w+)\}", segment)
        if match is None:
            parts.append(segment)
            continue
        if match.group(1) == "Identity":  # the Users view: an identity, not a SID
            parts.append("alice")
            continue
        prefix = prefixes[match.group(1)] or sid_prefix_after(parts[-1])
        parts.append(prefix + "0" * 32)
    return "/".join(parts)


def sid_prefix_after(collection: str) -> str:
    return {"Services": "IS", "Bindings": "BS", "Credentials": "CR", "Notifications": "NT"}[
        collection
    ]


def test_servers_are_this_server(description: dict, settings: Settings) -> None:
    assert description["servers"] == [{"url": "http://testserver"}]
    # Twilio names notify.twilio.com on every path; none of that is left.
    assert all("servers" not in item for item in description["paths"].values())
    public = settings.model_copy(update={"public_url": "https://notify.example.com/"})
    with TestClient(create_app(public)) as client:
        served_description = client.get("/openapi.json").json()
    assert served_description["servers"] == [{"url": "https://notify.example.com"}]


def test_twilio_operations_are_twilios_own(description: dict) -> None:
    twilio = twilio_description()
    for path, method, operation in operations(twilio):
        ours = description["paths"][path][method]
        assert EXTENSION not in ours
        if path.startswith("/v1/Credentials") and method == "post":
            continue  # gains our credential fields, below
        assert ours == operation, (path, method)


def test_everything_added_is_marked_as_an_extension(description: dict) -> None:
    twilio = twilio_description()
    for path in description["paths"].keys() - twilio["paths"].keys():
        item = description["paths"][path]
        assert item[EXTENSION] is True, path
        assert item["description"].startswith("notify-server extension: "), path
        for method in METHODS:
            if method in item:
                assert item[method][EXTENSION] is True, (path, method)
    for name in (
        description["components"]["schemas"].keys() - twilio["components"]["schemas"].keys()
    ):
        assert description["components"]["schemas"][name][EXTENSION] is True, name
    for path in ("/v1/Credentials", "/v1/Credentials/{Sid}"):
        properties = form_properties(description, path)
        twilios = form_properties(twilio, path)
        for name in properties.keys() - twilios.keys():
            assert properties[name][EXTENSION] is True, name
            assert properties[name]["description"].startswith("notify-server extension: ")


def form_properties(description: dict, path: str) -> dict:
    body = description["paths"][path]["post"]["requestBody"]
    return body["content"]["application/x-www-form-urlencoded"]["schema"]["properties"]


def aliases(form: type) -> set[str]:
    return {field.alias for field in form.model_fields.values()}


def test_credential_fields_are_the_forms(description: dict) -> None:
    assert form_properties(description, "/v1/Credentials").keys() == aliases(CredentialForm)
    assert form_properties(description, "/v1/Credentials/{Sid}").keys() == aliases(
        CredentialUpdateForm
    )
    extension = set(form_properties(description, "/v1/Credentials"))
    assert {"TokenKey", "KeyId", "TeamId", "BundleId", "ServiceAccount"} <= extension


def test_deliveries_schema_is_what_the_listing_answers(
    client: TestClient, account: Account, description: dict
) -> None:
    schema = description["components"]["schemas"]["notify_server.delivery"]
    assert schema["properties"].keys() == DeliveryResource.model_fields.keys()
    service = make_service(client, account)
    make_binding(client, account, service["sid"], Identity="alice")
    created = client.post(
        f"/v1/Services/{service['sid']}/Notifications",
        data={"Identity": "alice", "Body": "hi"},
        auth=account.auth,
    )
    assert created.status_code == 201, created.text
    listing = client.get(
        f"/v1/Services/{service['sid']}/Notifications/{created.json()['sid']}/Deliveries",
        auth=account.auth,
    ).json()
    operation = description["paths"]["/v1/Services/{ServiceSid}/Notifications/{Sid}/Deliveries"]
    answer = operation["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing.keys() == answer["properties"].keys()
    assert listing["meta"].keys() == answer["properties"]["meta"]["properties"].keys()
    [delivery] = listing["deliveries"]
    assert delivery.keys() == schema["properties"].keys()


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/reference is not beside the checkout")
def test_shipped_copy_is_twilios_description() -> None:
    assert twilio_description() == yaml.safe_load(REFERENCE.read_text())


def test_no_authentication_needed(client: TestClient) -> None:
    response = client.get("/openapi.json", auth=("ACnot", "a real account"))
    assert response.status_code == 200
    # `.json` is optional on every path, this one too.
    assert client.get("/openapi").json() == response.json()
    assert client.post("/openapi.json").json()["code"] == 20004


def test_notification_list_and_fetch_are_described_as_answered(
    client: TestClient, account: Account, description: dict
) -> None:
    # GET on Twilio's own Notifications path is ours (Twilio answers 405): marked, and the
    # path's POST is still Twilio's, untouched (test_twilio_operations_are_twilios_own).
    listing = description["paths"]["/v1/Services/{ServiceSid}/Notifications"]["get"]
    assert listing[EXTENSION] is True
    assert listing["description"].startswith("notify-server extension: ")
    assert {p["name"] for p in listing["parameters"]} == {
        "ServiceSid", "StartDate", "EndDate", "PageSize", "Page", "PageToken",
    }  # fmt: skip
    schemas = description["components"]["schemas"]
    service = make_service(client, account)
    created = client.post(
        f"/v1/Services/{service['sid']}/Notifications",
        data={"Identity": "nobody", "Body": "hi"},
        auth=account.auth,
    ).json()
    page = client.get(f"/v1/Services/{service['sid']}/Notifications", auth=account.auth).json()
    answer = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert page.keys() == answer["properties"].keys()
    [item] = page["notifications"]
    assert item.keys() == schemas["notify.v1.service.notification"]["properties"].keys()
    fetched = client.get(
        f"/v1/Services/{service['sid']}/Notifications/{created['sid']}", auth=account.auth
    ).json()
    detail = schemas["notify_server.notification_detail"]["allOf"]
    assert fetched.keys() == item.keys() | detail[1]["properties"].keys()
    assert fetched["delivery_summary"].keys() == (
        detail[1]["properties"]["delivery_summary"]["properties"].keys()
    )


def test_deliveries_filters_and_provider_request_are_described(description: dict) -> None:
    operation = description["paths"]["/v1/Services/{ServiceSid}/Notifications/{Sid}/Deliveries"]
    names = {p["name"] for p in operation["get"]["parameters"]}
    assert {"Status", "BindingType"} <= names
    schema = description["components"]["schemas"]["notify_server.provider_request"]
    assert schema[EXTENSION] is True
    assert set(schema["properties"]) == {
        "provider", "channel", "method", "url", "headers", "body", "notes",
    }  # fmt: skip
