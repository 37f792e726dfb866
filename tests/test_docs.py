"""GET /docs (Swagger UI on /openapi.json, every asset from this server) and GET /."""

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
}


class References(HTMLParser):
    """Every URL the page loads, and every inline script (there must be none)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(values[name] or "")
        if tag == "script" and not values.get("src"):
            self._in_script_without_src = True
        if any(name.startswith("on") for name in values) or tag == "style":
            self.inline_scripts += 1

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script_without_src = False


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


@pytest.fixture
def page(client: TestClient):
    response = client.get("/docs")
    assert response.status_code == 200, response.text
    return response


def test_page_is_html_with_a_strict_policy(page) -> None:
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_page_loads_only_this_servers_assets(client: TestClient, page) -> None:
    found = references(page.text)
    assert found.inline_scripts == 0
    assert len(found.urls) == 4  # favicon, stylesheet, Swagger UI, our initialiser
    page_url = "http://testserver/docs"
    for url in found.urls:
        absolute = urljoin(page_url, url)
        assert urlsplit(absolute).netloc == "testserver", url
        asset = client.get(absolute)
        assert asset.status_code == 200, url
        suffix = re.search(r"\.\w+$", url)
        assert suffix is not None
        assert asset.headers["content-type"] == CONTENT_TYPES[suffix.group()], url
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert len(asset.content) > 0


def test_the_assets_are_swagger_ui_and_our_initialiser(client: TestClient) -> None:
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content
    assert "max-age" in bundle.headers["cache-control"]
    css = client.get("/docs/assets/swagger-ui.css")
    assert b".swagger-ui" in css.content
    initialiser = client.get("/docs/assets/docs.js").text
    assert 'url: "openapi.json"' in initialiser  # relative to /docs: /openapi.json
    # Swagger UI would otherwise post the description to validator.swagger.io.
    assert "validatorUrl: null" in initialiser
    assert "http" not in initialiser
    assert urljoin("http://testserver/docs", "openapi.json") == "http://testserver/openapi.json"


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/index.html",  # the bundle's own page loads the Petstore example
        "/docs/assets/swagger-initializer.js",
        "/docs/assets/docs.html",
        "/docs/assets/nothing.js",
        "/docs/assets/..%2F__init__.py",
        "/docs/assets/%2e%2e%2fextensions.py",
    ],
)
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == 20404


def test_no_authentication_needed(client: TestClient) -> None:
    assert client.get("/docs", auth=("ACnobody", "wrong")).status_code == 200
    assert client.get("/docs/assets/docs.js", auth=("ACnobody", "wrong")).status_code == 200


def test_wrong_method_is_a_twilio_error(client: TestClient) -> None:
    response = client.post("/docs")
    assert response.status_code == 405
    assert response.json()["code"] == 20004


def test_root_points_at_the_docs(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "name": "notify-server",
        "description": "A self-hosted server that speaks the Twilio Notify v1 REST API",
        "api": "/v1",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz",
    }
    for key in ("docs", "openapi", "health", "ready"):
        assert client.get(response.json()[key]).status_code == 200, key
