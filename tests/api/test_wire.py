"""The wire: `.json` suffixes, CORS, preflights, 404/405/413 shapes, and hostile input."""

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from notify_server.app import create_app
from tests.factories import make_binding, make_credential, make_service

CORS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-expose-headers",
)
UNKNOWN_IS = "IS" + "0" * 32
FORM = {"content-type": "application/x-www-form-urlencoded"}


def assert_cors(response) -> None:
    for name in CORS:
        assert response.headers.get(name), (name, response.status_code, dict(response.headers))
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE", "OPTIONS"} <= methods
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed


def assert_twilio_error(response) -> None:
    """Any 4xx: the legacy Twilio error body (never RFC 9457, which flips the SDK's parser)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected_keys = {"code", "message", "more_info", "status"}
    if response.status_code == 401:
        expected_keys.add("detail")
    assert set(body) == expected_keys, body
    assert body["status"] == response.status_code
    assert isinstance(body["code"], int)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{body['code']}"
    assert isinstance(body["message"], str)
    assert body["message"]
    assert "Traceback" not in response.text
    assert not ("type" in body and "title" in body)


def assert_not_5xx(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500
    if response.status_code >= 400:
        assert_twilio_error(response)


def assert_not_found(response, path: str) -> None:
    assert response.status_code == 404
    assert response.json() == {
        "code": 20404,
        "message": f"The requested resource {path} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }


@pytest.fixture
def small_client(settings, engine) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"max_body_bytes": 100}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


class TestJsonSuffix:
    def test_every_operation_answers_with_json_suffix(self, client, account):
        auth = account.auth
        created = client.post("/v1/Services.json", data={"FriendlyName": "s"}, auth=auth)
        assert created.status_code == 201
        service = created.json()
        sid = service["sid"]
        assert service["url"] == f"http://testserver/v1/Services/{sid}"

        listed = client.get("/v1/Services.json?PageSize=1", auth=auth)
        assert listed.status_code == 200
        assert listed.json()["services"] == [service]
        assert listed.json()["meta"]["url"] == "http://testserver/v1/Services?PageSize=1&Page=0"
        assert client.get(f"/v1/Services/{sid}.json", auth=auth).json() == service
        updated = client.post(f"/v1/Services/{sid}.json", data={"FriendlyName": "t"}, auth=auth)
        assert updated.status_code == 200
        assert updated.json()["friendly_name"] == "t"

        bindings = f"/v1/Services/{sid}/Bindings"
        data = {"Identity": "alice", "BindingType": "apn", "Address": "a1"}
        binding = client.post(f"{bindings}.json", data=data, auth=auth)
        assert binding.status_code == 201
        bsid = binding.json()["sid"]
        assert client.get(f"{bindings}.json", auth=auth).json()["bindings"] == [binding.json()]
        assert client.get(f"{bindings}/{bsid}.json", auth=auth).json() == binding.json()
        assert client.delete(f"{bindings}/{bsid}.json", auth=auth).status_code == 204

        credential = client.post("/v1/Credentials.json", data={"Type": "fcm"}, auth=auth)
        assert credential.status_code == 201
        csid = credential.json()["sid"]
        assert client.get("/v1/Credentials.json", auth=auth).json()["credentials"] == [
            credential.json()
        ]
        assert client.get(f"/v1/Credentials/{csid}.json", auth=auth).json() == credential.json()
        renamed = client.post(f"/v1/Credentials/{csid}.json", data={"FriendlyName": "c"}, auth=auth)
        assert renamed.json()["friendly_name"] == "c"
        assert client.delete(f"/v1/Credentials/{csid}.json", auth=auth).status_code == 204

        assert client.delete(f"/v1/Services/{sid}.json", auth=auth).status_code == 204
        assert client.get(f"/v1/Services/{sid}.json", auth=auth).status_code == 404

    def test_errors_keep_their_shape_with_json_suffix(self, client, account):
        assert_twilio_error(client.get("/v1/Services/ISnope.json"))
        assert_twilio_error(client.get("/v1/Services.json"))
        assert_twilio_error(client.post("/v1/Credentials.json", auth=account.auth))
        unknown = client.get(f"/v1/Services/{UNKNOWN_IS}.json", auth=account.auth)
        assert unknown.status_code == 404
        assert unknown.json()["code"] == 20404

    def test_healthz_json(self, client):
        assert client.get("/healthz.json").status_code == 200


class TestCors:
    def test_on_success_responses(self, client, account):
        created = client.post("/v1/Services", auth=account.auth)
        assert created.status_code == 201
        assert_cors(created)
        sid = created.json()["sid"]
        for response in (
            client.get("/v1/Services", auth=account.auth),
            client.get(f"/v1/Services/{sid}", auth=account.auth),
            client.get("/healthz"),
        ):
            assert response.status_code == 200
            assert_cors(response)
        deleted = client.delete(f"/v1/Services/{sid}", auth=account.auth)
        assert deleted.status_code == 204
        assert_cors(deleted)

    def test_on_error_responses(self, client, account):
        responses = [
            client.post("/v1/Services", data={"LogEnabled": "maybe"}, auth=account.auth),
            client.get("/v1/Services"),
            client.get("/v1/Services/ISbad"),
            client.get(f"/v1/Services/{UNKNOWN_IS}", auth=account.auth),
            client.get("/v1/Nothing"),
            client.put("/v1/Services", auth=account.auth),
        ]
        assert [r.status_code for r in responses] == [400, 401, 404, 404, 404, 405]
        for response in responses:
            assert_cors(response)
            assert_twilio_error(response)

    def test_on_413(self, small_client, account):
        response = small_client.post(
            "/v1/Services", data={"FriendlyName": "x" * 200}, auth=account.auth
        )
        assert response.status_code == 413
        assert_cors(response)


class TestPreflight:
    @pytest.mark.parametrize(
        "path",
        [
            "/v1/Services",
            "/v1/Services.json",
            f"/v1/Services/{UNKNOWN_IS}",
            f"/v1/Services/{UNKNOWN_IS}/Bindings",
            "/v1/Credentials",
            "/v1/Nothing/Here",
        ],
    )
    def test_options_is_204_with_cors_and_no_credentials(self, client, path):
        response = client.options(
            path,
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )

        assert response.status_code == 204
        assert response.content == b""
        assert_cors(response)


class TestNotFound:
    @pytest.mark.parametrize(
        ("path", "shown"),
        [
            ("/v1/Nothing", "/Nothing"),
            ("/v1/Services/IS" + "0" * 32 + "/Nothing", "/Services/IS" + "0" * 32 + "/Nothing"),
            ("/v1/Services/ISbad", "/Services/ISbad"),
            ("/v1/Services/ISbad/Bindings", "/Services/ISbad/Bindings"),
            ("/v1/Credentials/nope", "/Credentials/nope"),
            ("/v2/Services", "/v2/Services"),
            ("/nothing", "/nothing"),
        ],
    )
    def test_unknown_route_shape_and_message_without_v1(self, client, account, path, shown):
        for auth in (None, account.auth):
            response = client.get(path, auth=auth)
            assert_not_found(response, shown)
            assert_cors(response)

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/v1/Services/"),
            ("POST", "/v1/Services/"),
            ("GET", "/v1/Credentials/"),
            ("GET", f"/v1/Services/{UNKNOWN_IS}/"),
            ("GET", "/v1/Services/.json"),
        ],
    )
    def test_trailing_slash_is_an_unknown_route_not_a_redirect(self, client, account, method, path):
        # A redirect would carry no Twilio body, and behind a TLS proxy would point at http://.
        response = client.request(method, path, auth=account.auth, follow_redirects=False)

        assert response.status_code == 404, (response.status_code, response.headers)
        assert_twilio_error(response)


class TestMethodNotAllowed:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("PUT", "/v1/Services"),
            ("PATCH", "/v1/Services"),
            ("DELETE", "/v1/Services"),
            ("PUT", f"/v1/Services/{UNKNOWN_IS}"),
            ("PATCH", f"/v1/Services/{UNKNOWN_IS}/Bindings"),
            ("DELETE", f"/v1/Services/{UNKNOWN_IS}/Bindings"),
            ("POST", f"/v1/Services/{UNKNOWN_IS}/Bindings/BS" + "0" * 32),
            ("PUT", "/v1/Credentials"),
            ("DELETE", "/v1/Credentials"),
            ("PUT", "/v1/Credentials/CR" + "0" * 32),
        ],
    )
    def test_405_shape(self, client, account, method, path):
        for auth in (None, account.auth):
            response = client.request(method, path, auth=auth)

            assert response.status_code == 405
            body = response.json()
            assert body == {
                "code": 20004,
                "message": body["message"],
                "more_info": "https://www.twilio.com/docs/errors/20004",
                "status": 405,
            }
            assert method in body["message"]
            assert_cors(response)


class TestBodyTooLarge:
    TOO_LARGE = {
        "code": 20001,
        "message": "Request body exceeds the maximum of 100 bytes",
        "more_info": "https://www.twilio.com/docs/errors/20001",
        "status": 413,
    }

    def test_declared_length_over_the_limit(self, small_client, account):
        response = small_client.post(
            "/v1/Services", content=b"FriendlyName=" + b"x" * 88, headers=FORM, auth=account.auth
        )

        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE
        assert small_client.get("/v1/Services", auth=account.auth).json()["services"] == []

    def test_exactly_the_limit_is_read(self, small_client, account):
        body = b"FriendlyName=" + b"x" * 64 + b"&AlexaSkillId=" + b"y" * 9
        assert len(body) == 100

        response = small_client.post("/v1/Services", content=body, headers=FORM, auth=account.auth)

        assert response.status_code == 201, response.text

    def test_chunked_body_over_the_limit(self, small_client, account):
        def chunks():
            yield b"FriendlyName="
            yield b"x" * 60
            yield b"y" * 60

        response = small_client.post(
            "/v1/Services", content=chunks(), headers=FORM, auth=account.auth
        )

        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE

    def test_multipart_over_the_limit(self, small_client, account):
        response = small_client.post(
            "/v1/Services", files={"FriendlyName": (None, "x" * 300)}, auth=account.auth
        )

        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE

    def test_chunked_multipart_over_the_limit(self, small_client, account):
        def chunks():
            yield b'--b\r\nContent-Disposition: form-data; name="FriendlyName"\r\n\r\n'
            yield b"x" * 60
            yield b"y" * 60 + b"\r\n--b--\r\n"

        response = small_client.post(
            "/v1/Services",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
            auth=account.auth,
        )

        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE

    @pytest.mark.parametrize("path", ["/v1/Credentials", f"/v1/Services/{UNKNOWN_IS}"])
    def test_every_form_is_limited(self, small_client, account, path):
        response = small_client.post(path, data={"FriendlyName": "x" * 200}, auth=account.auth)
        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE

    def test_bindings_are_limited(self, small_client, account):
        service = make_service(small_client, account)
        response = small_client.post(
            f"/v1/Services/{service['sid']}/Bindings",
            data={"Identity": "alice", "BindingType": "apn", "Address": "a" * 200},
            auth=account.auth,
        )
        assert response.status_code == 413
        assert response.json() == self.TOO_LARGE


class TestFormsAndMultipart:
    def test_multipart_form_is_accepted(self, client, account):
        response = client.post(
            "/v1/Services",
            files={"FriendlyName": (None, "from curl -F"), "LogEnabled": (None, "false")},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert response.json()["friendly_name"] == "from curl -F"
        assert response.json()["log_enabled"] is False

    def test_plus_is_a_space_and_repeated_keys_keep_the_first(self, client, account):
        response = client.post(
            "/v1/Services",
            content=b"FriendlyName=a+b%2Bc&FriendlyName=second",
            headers=FORM,
            auth=account.auth,
        )
        assert response.status_code == 201
        assert response.json()["friendly_name"] == "a b+c"

    def test_unicode_identity_round_trips(self, client, account):
        service = make_service(client, account)
        identity = "ユーザー 😀/?#%&=+é"
        created = make_binding(client, account, service["sid"], Identity=identity)

        assert created["identity"] == identity
        assert created["links"]["user"] == (
            f"http://testserver/v1/Services/{service['sid']}/Users/{quote(identity, safe='')}"
        )
        path = f"/v1/Services/{service['sid']}/Bindings"
        assert client.get(f"{path}/{created['sid']}", auth=account.auth).json() == created
        listed = client.get(path, params={"Identity": identity}, auth=account.auth).json()
        assert listed["bindings"] == [created]


def _bindings(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Bindings"


BINDING = "Identity=alice&BindingType=apn&Address=a1"
# (id, method, path template with {IS}, request keyword arguments): none may give a 5xx.
FUZZ = [
    ("non-UTF-8 body", "POST", "/v1/Services", {"content": b"FriendlyName=\xff\xfe\xfd"}),
    (
        "non-UTF-8 binding",
        "POST",
        "{B}",
        {"content": b"Identity=\xc3\x28&BindingType=apn&Address=\xff"},
    ),
    ("bad escapes", "POST", "/v1/Services", {"content": b"FriendlyName=%zz%&LogEnabled=%"}),
    (
        "bad escapes in binding",
        "POST",
        "{B}",
        {"content": b"Identity=%zz&BindingType=apn&Address=%"},
    ),
    ("lone surrogate escape", "POST", "/v1/Services", {"content": b"FriendlyName=%ED%A0%80"}),
    ("control characters", "POST", "/v1/Services", {"content": b"FriendlyName=a%0D%0Ab%07"}),
    ("NUL in a body value", "POST", "/v1/Services", {"content": b"FriendlyName=a%00b"}),
    ("NUL in an identity", "POST", "{B}", {"content": b"Identity=a%00b&BindingType=apn&Address=x"}),
    ("NUL in a credential", "POST", "/v1/Credentials", {"content": b"Type=apn&Certificate=%00"}),
    ("NUL in a filter", "GET", "/v1/Services?FriendlyName=%00", {}),
    ("NUL in an identity filter", "GET", "{B}?Identity=a%00", {}),
    ("NUL in the path", "GET", "/v1/Services/IS%00" + "0" * 31, {}),
    (
        "huge repeated tags",
        "POST",
        "{B}",
        {"content": (BINDING + "&" + "Tag=t&" * 50_000).encode()},
    ),
    (
        "huge repeated distinct tags",
        "POST",
        "{B}",
        {"content": (BINDING + "&" + "&".join(f"Tag=t{i % 25}" for i in range(40_000))).encode()},
    ),
    ("huge repeated names", "POST", "/v1/Services", {"content": b"FriendlyName=x&" * 60_000}),
    (
        "many unknown keys",
        "POST",
        "/v1/Services",
        {"content": b"&".join(b"k%d=v" % i for i in range(50_000))},
    ),
    ("odd separators", "POST", "/v1/Services", {"content": b"&&&==&=x&a[b]=c&;&FriendlyName"}),
    (
        "JSON body",
        "POST",
        "/v1/Services",
        {
            "content": json.dumps({"FriendlyName": "j"}).encode(),
            "headers": {"content-type": "application/json"},
        },
    ),
    (
        "JSON binding",
        "POST",
        "{B}",
        {
            "content": json.dumps({"Identity": "a", "BindingType": "apn", "Address": "x"}).encode(),
            "headers": {"content-type": "application/json"},
        },
    ),
    ("empty body", "POST", "/v1/Services", {"content": b""}),
    ("empty binding body", "POST", "{B}", {"content": b""}),
    ("empty credential body", "POST", "/v1/Credentials", {"content": b""}),
    (
        "text/plain body",
        "POST",
        "/v1/Services",
        {"content": b"FriendlyName=t", "headers": {"content-type": "text/plain"}},
    ),
    (
        "multipart without boundary",
        "POST",
        "/v1/Services",
        {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
    ),
    (
        "broken multipart",
        "POST",
        "/v1/Services",
        {
            "content": b"--b\r\ngarbage",
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
    ),
    ("long query string", "GET", "/v1/Services?FriendlyName=" + "x" * 60_000, {}),
    ("long identity filter", "GET", "{B}?Identity=" + "x" * 60_000, {}),
    ("many identity filters", "GET", "{B}?" + "Identity=x&" * 1_001, {}),
    ("many tag filters", "GET", "{B}?" + "&".join(f"Tag=t{i}" for i in range(6)), {}),
    ("non-UTF-8 query", "GET", "/v1/Services?FriendlyName=%ff%fe", {}),
    ("bad query escapes", "GET", "/v1/Services?FriendlyName=%zz&PageSize=%", {}),
    ("bad dates", "GET", "{B}?StartDate=2020-02-30&EndDate=%zz", {}),
    ("huge page size", "GET", "/v1/Services?PageSize=" + "9" * 5_000, {}),
    ("huge page number", "GET", "/v1/Services?Page=99999999999999999999999", {}),
    ("page token past int64", "GET", "/v1/Services?PageToken=PT9999999999999999999", {}),
    ("page token past int32", "GET", "/v1/Services?PageToken=PT3000000000", {}),
    ("backward token past int32", "GET", "/v1/Credentials?PageToken=PB3000000000", {}),
    ("binding token past int64", "GET", "{B}?PageToken=PT9999999999999999999", {}),
    (
        "unicode identity",
        "POST",
        "{B}",
        {"data": {"Identity": "ユーザー😀", "BindingType": "sms", "Address": "+15551234567"}},
    ),
    (
        "emoji tags",
        "POST",
        "{B}",
        {"data": {"Identity": "a", "BindingType": "apn", "Address": "x", "Tag": ["😀" * 64, "ü"]}},
    ),
    (
        "identity too long",
        "POST",
        "{B}",
        {"data": {"Identity": "é" * 257, "BindingType": "apn", "Address": "x"}},
    ),
    (
        "address too long",
        "POST",
        "{B}",
        {"data": {"Identity": "a", "BindingType": "apn", "Address": "x" * 1025}},
    ),
    ("encoded slash in a SID", "GET", "/v1/Services/IS%2F" + "0" * 31, {}),
    ("unicode in the path", "GET", "/v1/Services/ÏS" + "0" * 32, {}),
    ("unicode route", "GET", "/v1/Sërvices", {}),
]


class TestHostileInput:
    @pytest.mark.parametrize(
        ("method", "template", "kwargs"),
        [case[1:] for case in FUZZ],
        ids=[case[0] for case in FUZZ],
    )
    def test_never_5xx_and_4xx_is_twilio_shaped(self, client, account, method, template, kwargs):
        service = make_service(client, account)
        path = template.replace("{B}", _bindings(service["sid"]))
        kwargs = dict(kwargs)
        if "content" in kwargs:
            kwargs["headers"] = {**FORM, **kwargs.get("headers", {})}

        response = client.request(method, path, auth=account.auth, **kwargs)

        assert_not_5xx(response)
        assert_cors(response)

    def test_non_ascii_authorization_header_is_401(self, client):
        response = client.get("/v1/Services", headers={"Authorization": b"Basic \xc3\xa9\xff"})
        assert response.status_code == 401
        assert_twilio_error(response)

    def test_credentials_survive_hostile_input(self, client, account):
        make_credential(client, account, FriendlyName="ok")
        for content in (b"\xff\xfe", b"FriendlyName=%zz", b"Sandbox=%00", b"=" * 1000):
            response = client.post(
                "/v1/Credentials", content=content, headers=FORM, auth=account.auth
            )
            assert_not_5xx(response)


class TestUnexpectedError:
    def test_500_is_twilio_shaped_without_details_and_with_cors(self, client, account, monkeypatch):
        from notify_server.services import operations

        def fail(*args, **kwargs):
            raise RuntimeError("internal detail /etc/secret")

        monkeypatch.setattr(operations, "list_services", fail)

        response = client.get("/v1/Services", auth=account.auth)

        assert response.status_code == 500
        assert response.json() == {
            "code": 20500,
            "message": "An internal server error has occurred",
            "more_info": "https://www.twilio.com/docs/errors/20500",
            "status": 500,
        }
        assert "internal detail" not in response.text
        assert_cors(response)


class TestErrorBodies:
    def test_never_both_type_and_title(self, client, small_client, account):
        responses = [
            client.get("/v1/Services"),
            client.get("/v1/Services", auth=(account.sid, "x")),
            client.get("/v1/Nowhere"),
            client.get("/v1/Services/ISbad"),
            client.delete("/v1/Services"),
            client.post("/v1/Services", data={"LogEnabled": "x"}, auth=account.auth),
            client.post("/v1/Credentials", auth=account.auth),
            client.get("/v1/Services?PageToken=x", auth=account.auth),
            small_client.post("/v1/Services", content=b"x" * 101, headers=FORM, auth=account.auth),
        ]
        assert [r.status_code for r in responses] == [401, 401, 404, 404, 405, 400, 400, 400, 413]
        for response in responses:
            assert_twilio_error(response)
