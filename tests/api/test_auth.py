"""HTTP Basic authentication on every /v1 route: account tokens and API keys."""

import base64
import hashlib
import re

import pytest
from sqlalchemy import select
from starlette.routing import Route

from notify_server.models import Account as AccountRow
from notify_server.models import ApiKey
from tests.factories import make_account, make_api_key, make_service

UNKNOWN = {
    "IS": "IS" + "1" * 32,
    "BS": "BS" + "2" * 32,
    "CR": "CR" + "3" * 32,
    "NT": "NT" + "5" * 32,
    "US": "someone",  # Users are addressed by identity
}
# The prefix of the SID that follows each collection name in a path.
PREFIX_AFTER = {
    "Services": "IS",
    "Bindings": "BS",
    "Credentials": "CR",
    "Notifications": "NT",
    "Users": "US",
}
# Every operation we serve today; the route table must contain at least these.
EXPECTED_ROUTES = {
    ("POST", "/v1/Services"),
    ("GET", "/v1/Services"),
    ("GET", "/v1/Services/{sid}"),
    ("POST", "/v1/Services/{sid}"),
    ("DELETE", "/v1/Services/{sid}"),
    ("POST", "/v1/Services/{service_sid}/Bindings"),
    ("GET", "/v1/Services/{service_sid}/Bindings"),
    ("GET", "/v1/Services/{service_sid}/Bindings/{sid}"),
    ("DELETE", "/v1/Services/{service_sid}/Bindings/{sid}"),
    ("POST", "/v1/Credentials"),
    ("GET", "/v1/Credentials"),
    ("GET", "/v1/Credentials/{sid}"),
    ("POST", "/v1/Credentials/{sid}"),
    ("DELETE", "/v1/Credentials/{sid}"),
}
# A body that would be 400 for every POST: authentication must come first.
INVALID_BODY = {
    "FriendlyName": "x" * 65,
    "Type": "bogus",
    "BindingType": "bogus",
    "LogEnabled": "maybe",
}
UNAUTHORIZED = {
    "code": 20003,
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
    "detail": "Your AccountSid or AuthToken was incorrect.",
}


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _routes(routes):
    # Newer FastAPI keeps included routers as wrappers around the original router.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def v1_operations(app) -> list[tuple[str, str]]:
    """(method, template) for every /v1 operation the app serves."""
    found = set()
    for route in _routes(app.routes):
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            # Starlette adds HEAD to every GET route; clients never send it.
            found.update((method, route.path) for method in route.methods if method != "HEAD")
    return sorted(found)


def concrete(template: str) -> str:
    """A path with well-formed SIDs that name nothing."""
    parts = template.split("/")
    for i, part in enumerate(parts):
        if part.startswith("{"):
            parts[i] = UNKNOWN[PREFIX_AFTER[parts[i - 1]]]
    return "/".join(parts)


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url)
    assert response.json() == UNAUTHORIZED
    assert response.headers["www-authenticate"].startswith("Basic ")


def send(client, method: str, path: str, **kwargs):
    if method == "POST":
        kwargs.setdefault("data", INVALID_BODY)
    return client.request(method, path, **kwargs)


def _b64(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


# Authorization header values, from the account's SID and token, that must all be 401.
BAD_HEADERS = {
    "wrong token": lambda sid, token: basic(sid, "0" * 32),
    "token upper-cased": lambda sid, token: basic(sid, token.upper()),
    "token with a trailing space": lambda sid, token: basic(sid, token + " "),
    "empty token": lambda sid, token: basic(sid, ""),
    "unknown account": lambda sid, token: basic("AC" + "9" * 32, token),
    "lower-case account SID prefix": lambda sid, token: basic("ac" + sid[2:], token),
    "username is not a SID": lambda sid, token: basic("admin", token),
    "colon only": lambda sid, token: _b64(b":"),
    "not base64": lambda sid, token: "Basic !!!not-base64!!!",
    "base64 without a colon": lambda sid, token: _b64(sid.encode()),
    "base64 of non-UTF-8": lambda sid, token: _b64(b"\xff:\xfe"),
    "Bearer": lambda sid, token: "Bearer x",
    "Bearer with the real token": lambda sid, token: f"Bearer {token}",
    "Basic with nothing": lambda sid, token: "Basic",
    "Basic with a space only": lambda sid, token: "Basic ",
    "empty header": lambda sid, token: "",
    "non-ASCII header bytes": lambda sid, token: b"Basic \xc3\xa9\xff",
}


class TestRouteTable:
    def test_every_expected_operation_is_served(self, client):
        assert set(v1_operations(client.app)) >= EXPECTED_ROUTES


class TestWithoutCredentials:
    def test_every_v1_operation_is_401(self, client, account):
        make_service(client, account)  # data exists; it must not matter
        for method, template in v1_operations(client.app):
            assert_unauthorized(send(client, method, concrete(template)))

    def test_every_v1_operation_is_401_with_the_json_suffix(self, client):
        for method, template in v1_operations(client.app):
            assert_unauthorized(send(client, method, concrete(template) + ".json"))

    def test_401_even_for_resources_that_exist(self, client, account):
        service = make_service(client, account)
        for method in ("GET", "POST", "DELETE"):
            assert_unauthorized(send(client, method, f"/v1/Services/{service['sid']}"))
        assert client.get(f"/v1/Services/{service['sid']}", auth=account.auth).status_code == 200


class TestBadCredentials:
    @pytest.mark.parametrize("case", BAD_HEADERS)
    def test_every_v1_operation_is_401(self, client, account, case):
        headers = {"Authorization": BAD_HEADERS[case](account.sid, account.auth_token)}
        for method, template in v1_operations(client.app):
            assert_unauthorized(send(client, method, concrete(template), headers=headers))

    def test_lower_case_scheme_is_accepted(self, client, account):
        header = "basic " + basic(*account.auth).split(" ", 1)[1]
        response = client.get("/v1/Services", headers={"Authorization": header})
        assert response.status_code == 200

    def test_a_good_request_does_not_open_the_door_for_a_bad_one(self, client, account):
        assert client.get("/v1/Services", auth=account.auth).status_code == 200
        assert_unauthorized(client.get("/v1/Services", auth=(account.sid, "f" * 32)))
        assert client.get("/v1/Services", auth=account.auth).status_code == 200

    def test_another_accounts_token_does_not_fit(self, client, account, other_account):
        response = client.get("/v1/Services", auth=(account.sid, other_account.auth_token))
        assert_unauthorized(response)


class TestApiKeys:
    def test_key_acts_as_its_account(self, client, account, engine):
        key_sid, key_secret = make_api_key(engine, account.sid)
        assert re.fullmatch(r"SK[0-9a-f]{32}", key_sid)
        mine = make_service(client, account, FriendlyName="mine")

        created = client.post(
            "/v1/Services", data={"FriendlyName": "by key"}, auth=(key_sid, key_secret)
        )
        listed = client.get("/v1/Services", auth=(key_sid, key_secret))
        fetched = client.get(f"/v1/Services/{mine['sid']}", auth=(key_sid, key_secret))

        assert created.status_code == 201
        assert created.json()["account_sid"] == account.sid
        assert [s["sid"] for s in listed.json()["services"]] == [mine["sid"], created.json()["sid"]]
        assert fetched.json() == mine
        via_token = client.get(f"/v1/Services/{created.json()['sid']}", auth=account.auth)
        assert via_token.json() == created.json()

    def test_every_v1_operation_accepts_a_key(self, client, account, engine):
        key = make_api_key(engine, account.sid)
        for method, template in v1_operations(client.app):
            response = send(client, method, concrete(template), auth=key)
            # Past authentication: a list, or the unknown SIDs or the invalid body answer.
            assert response.status_code in (200, 400, 404), (method, template, response.text)

    def test_wrong_key_secret_is_401(self, client, account, engine):
        key_sid, key_secret = make_api_key(engine, account.sid)
        assert_unauthorized(client.get("/v1/Services", auth=(key_sid, "0" * 32)))
        assert_unauthorized(client.get("/v1/Services", auth=(key_sid, key_secret.upper())))
        assert_unauthorized(client.get("/v1/Services", auth=(key_sid, "")))

    def test_key_and_token_do_not_mix(self, client, account, engine):
        key_sid, key_secret = make_api_key(engine, account.sid)
        assert_unauthorized(client.get("/v1/Services", auth=(account.sid, key_secret)))
        assert_unauthorized(client.get("/v1/Services", auth=(key_sid, account.auth_token)))

    def test_unknown_key_is_401(self, client, account):
        assert_unauthorized(client.get("/v1/Services", auth=("SK" + "4" * 32, account.auth_token)))

    def test_another_accounts_key_cannot_see_this_accounts_resources(
        self, client, account, other_account, engine
    ):
        service = make_service(client, account)
        their_key = make_api_key(engine, other_account.sid)

        fetched = client.get(f"/v1/Services/{service['sid']}", auth=their_key)
        deleted = client.delete(f"/v1/Services/{service['sid']}", auth=their_key)
        listed = client.get("/v1/Services", auth=their_key)

        for response in (fetched, deleted):
            assert response.status_code == 404
            assert response.json()["code"] == 20404
        assert listed.json()["services"] == []
        assert client.get(f"/v1/Services/{service['sid']}", auth=account.auth).status_code == 200

    def test_several_keys_per_account(self, client, account, engine):
        first, second = make_api_key(engine, account.sid), make_api_key(engine, account.sid)
        assert first[0] != second[0]
        assert client.get("/v1/Services", auth=first).status_code == 200
        assert client.get("/v1/Services", auth=second).status_code == 200
        assert_unauthorized(client.get("/v1/Services", auth=(first[0], second[1])))


class TestStoredSecrets:
    def test_auth_token_is_stored_only_as_sha256(self, engine):
        account = make_account(engine)
        accounts = AccountRow.__table__
        with engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.sid == account.sid)).one()

        assert row.auth_token_hash == hashlib.sha256(account.auth_token.encode()).hexdigest()
        assert all(account.auth_token not in str(value) for value in row)

    def test_api_key_secret_is_stored_only_as_sha256(self, engine, account):
        key_sid, key_secret = make_api_key(engine, account.sid)
        api_keys = ApiKey.__table__
        with engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.sid == key_sid)).one()

        assert row.account_sid == account.sid
        assert row.secret_hash == hashlib.sha256(key_secret.encode()).hexdigest()
        assert all(key_secret not in str(value) for value in row)

    def test_tokens_are_random_128_bit_hex(self, engine):
        tokens = {make_account(engine).auth_token for _ in range(3)}
        assert len(tokens) == 3
        assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in tokens)


class TestHealthz:
    def test_needs_no_credentials(self, client):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_ignores_bad_credentials(self, client):
        response = client.get("/healthz", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 200
