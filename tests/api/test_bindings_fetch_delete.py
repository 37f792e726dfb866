"""GET and DELETE /v1/Services/{IS}/Bindings/{BS}, and bindings going with their service."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from notify_server.bindings.models import Binding, BindingTag
from tests.errors import UNAUTHENTICATED
from tests.factories import Account, make_api_key, make_binding, make_service

UNKNOWN_SERVICE = "IS" + "0" * 32
UNKNOWN_BINDING = "BS" + "0" * 32
MALFORMED_BINDINGS = [
    "BS" + "x" * 32,
    "BS123",
    "BS" + "a" * 33,
    "IS" + "a" * 32,
    "bs" + "a" * 32,
    "BS" + "a" * 31 + "-",
]


def not_found(path: str) -> dict:
    return {
        "code": 20404,
        "message": f"The requested resource {path} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }


def binding_path(service_sid: str, sid: str) -> str:
    return f"/v1/Services/{service_sid}/Bindings/{sid}"


def fetch(client: TestClient, account: Account, service_sid: str, sid: str):
    return client.get(binding_path(service_sid, sid), auth=account.auth)


def delete(client: TestClient, account: Account, service_sid: str, sid: str):
    return client.delete(binding_path(service_sid, sid), auth=account.auth)


def listed(client: TestClient, account: Account, service_sid: str) -> list[dict]:
    response = client.get(
        f"/v1/Services/{service_sid}/Bindings", params={"PageSize": 1000}, auth=account.auth
    )
    assert response.status_code == 200, response.text
    return response.json()["bindings"]


def stored_rows(engine: Engine) -> tuple[list[str], list[tuple[str, str]]]:
    """(binding sids, (binding sid, tag) pairs) as the tables hold them."""
    bindings = Binding.__table__
    tags = BindingTag.__table__
    with engine.connect() as conn:
        binding_sids = list(conn.execute(select(bindings.c.sid).order_by(bindings.c.id)).scalars())
        tag_rows = conn.execute(
            select(bindings.c.sid, tags.c.tag)
            .select_from(tags.join(bindings, tags.c.binding_id == bindings.c.id))
            .order_by(bindings.c.id, tags.c.tag)
        )
        return binding_sids, [tuple(row) for row in tag_rows]


def tag_row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(BindingTag.__table__)).scalar_one()


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account, FriendlyName="fetch-delete")["sid"]


@pytest.fixture
def binding(client: TestClient, account: Account, service_sid: str) -> dict:
    return make_binding(
        client,
        account,
        service_sid,
        Identity="a b/c?",
        BindingType="sms",
        Address="+15555550100",
        Tag=["t1", "t2"],
        Endpoint="device-1",
    )


class TestFetchBinding:
    def test_fetch_equals_the_create_body(self, client, account, service_sid, binding):
        response = fetch(client, account, service_sid, binding["sid"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.json() == binding

    def test_json_suffix(self, client, account, service_sid, binding):
        response = client.get(
            f"{binding_path(service_sid, binding['sid'])}.json", auth=account.auth
        )
        assert response.status_code == 200
        assert response.json() == binding

    def test_api_key(self, client, engine, account, service_sid, binding):
        response = client.get(
            binding_path(service_sid, binding["sid"]), auth=make_api_key(engine, account.sid)
        )
        assert response.status_code == 200
        assert response.json() == binding

    def test_upper_case_hex_in_the_sid_is_the_binding(self, client, account, service_sid, binding):
        # Twilio's patterns accept either case (docs/behaviour.md): the hex is lower-cased.
        upper = "BS" + binding["sid"][2:].upper()
        response = fetch(client, account, service_sid, upper)
        assert response.status_code == 200
        assert response.json() == binding

    def test_unknown_binding(self, client, account, service_sid, binding):
        response = fetch(client, account, service_sid, UNKNOWN_BINDING)
        assert response.status_code == 404
        assert response.json() == {
            "code": 20404,
            "message": (
                f"The requested resource /Services/{service_sid}/Bindings/{UNKNOWN_BINDING}"
                " was not found"
            ),
            "more_info": "https://www.twilio.com/docs/errors/20404",
            "status": 404,
        }

    def test_unknown_service(self, client, account, binding):
        response = fetch(client, account, UNKNOWN_SERVICE, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(
            f"/Services/{UNKNOWN_SERVICE}/Bindings/{binding['sid']}"
        )

    def test_binding_of_another_service(self, client, account, binding):
        other_sid = make_service(client, account)["sid"]
        response = fetch(client, account, other_sid, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{other_sid}/Bindings/{binding['sid']}")

    def test_binding_of_another_account(self, client, account, other_account, service_sid, binding):
        response = fetch(client, other_account, service_sid, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings/{binding['sid']}")
        # Nor through a service of their own.
        theirs = make_service(client, other_account)["sid"]
        response = fetch(client, other_account, theirs, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{theirs}/Bindings/{binding['sid']}")

    @pytest.mark.parametrize("sid", MALFORMED_BINDINGS)
    @pytest.mark.parametrize("authenticated", [True, False])
    def test_malformed_binding_sid(self, client, account, service_sid, sid, authenticated):
        response = client.get(
            binding_path(service_sid, sid), auth=account.auth if authenticated else None
        )
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings/{sid}")

    def test_malformed_service_sid_without_credentials(self, client, binding):
        path = binding_path("IS" + "q" * 32, binding["sid"])
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == not_found(path.removeprefix("/v1"))

    def test_without_credentials(self, client, service_sid, binding):
        response = client.get(binding_path(service_sid, binding["sid"]))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"].startswith("Basic ")

    def test_wrong_token(self, client, account, service_sid, binding):
        response = client.get(binding_path(service_sid, binding["sid"]), auth=(account.sid, "x"))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED

    def test_post_to_a_binding_is_not_allowed(self, client, account, service_sid, binding):
        response = client.post(
            binding_path(service_sid, binding["sid"]), data={"Tag": "x"}, auth=account.auth
        )
        assert response.status_code == 405
        assert response.json() == {
            "code": 20004,
            "message": "Method not allowed: POST",
            "more_info": "https://www.twilio.com/docs/errors/20004",
            "status": 405,
        }
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding


class TestDeleteBinding:
    def test_delete(self, client, engine, account, service_sid, binding):
        kept = make_binding(client, account, service_sid, Identity="kept", Tag=["t1"])
        response = delete(client, account, service_sid, binding["sid"])
        assert response.status_code == 204
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == "*"
        gone = fetch(client, account, service_sid, binding["sid"])
        assert gone.status_code == 404
        assert gone.json() == not_found(f"/Services/{service_sid}/Bindings/{binding['sid']}")
        again = delete(client, account, service_sid, binding["sid"])
        assert again.status_code == 404
        assert again.json() == not_found(f"/Services/{service_sid}/Bindings/{binding['sid']}")
        assert listed(client, account, service_sid) == [kept]
        assert stored_rows(engine) == ([kept["sid"]], [(kept["sid"], "t1")])

    def test_json_suffix(self, client, account, service_sid, binding):
        response = client.delete(
            f"{binding_path(service_sid, binding['sid'])}.json", auth=account.auth
        )
        assert response.status_code == 204
        assert response.content == b""
        assert fetch(client, account, service_sid, binding["sid"]).status_code == 404

    def test_the_same_binding_can_be_created_again(self, client, account, service_sid, binding):
        assert delete(client, account, service_sid, binding["sid"]).status_code == 204
        again = make_binding(
            client,
            account,
            service_sid,
            Identity="a b/c?",
            BindingType="sms",
            Address="+15555550100",
            Endpoint="device-1",
        )
        assert again["sid"] != binding["sid"]
        assert listed(client, account, service_sid) == [again]

    def test_unknown_binding(self, client, account, service_sid, binding):
        response = delete(client, account, service_sid, UNKNOWN_BINDING)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings/{UNKNOWN_BINDING}")
        assert listed(client, account, service_sid) == [binding]

    def test_binding_of_another_service(self, client, account, service_sid, binding):
        other_sid = make_service(client, account)["sid"]
        response = delete(client, account, other_sid, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{other_sid}/Bindings/{binding['sid']}")
        assert listed(client, account, service_sid) == [binding]

    def test_binding_of_another_account(self, client, account, other_account, service_sid, binding):
        response = delete(client, other_account, service_sid, binding["sid"])
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings/{binding['sid']}")
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding

    @pytest.mark.parametrize("sid", MALFORMED_BINDINGS)
    @pytest.mark.parametrize("authenticated", [True, False])
    def test_malformed_binding_sid(self, client, account, service_sid, binding, sid, authenticated):
        response = client.delete(
            binding_path(service_sid, sid), auth=account.auth if authenticated else None
        )
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings/{sid}")
        assert listed(client, account, service_sid) == [binding]

    def test_without_credentials(self, client, account, service_sid, binding):
        response = client.delete(binding_path(service_sid, binding["sid"]))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding

    def test_delete_on_the_list_is_not_allowed(self, client, account, service_sid, binding):
        response = client.delete(f"/v1/Services/{service_sid}/Bindings", auth=account.auth)
        assert response.status_code == 405
        assert response.json() == {
            "code": 20004,
            "message": "Method not allowed: DELETE",
            "more_info": "https://www.twilio.com/docs/errors/20004",
            "status": 405,
        }
        assert listed(client, account, service_sid) == [binding]


class TestDeleteServiceDeletesItsBindings:
    def test_bindings_go_with_their_service(self, client, engine, account, service_sid, binding):
        second = make_binding(client, account, service_sid, Identity="zed", Tag=["t3"])
        other_sid = make_service(client, account)["sid"]
        survivor = make_binding(client, account, other_sid, Tag=["keep"])
        assert tag_row_count(engine) == 4

        response = client.delete(f"/v1/Services/{service_sid}", auth=account.auth)
        assert response.status_code == 204
        assert response.content == b""

        for sid in (binding["sid"], second["sid"]):
            gone = fetch(client, account, service_sid, sid)
            assert gone.status_code == 404
            assert gone.json() == not_found(f"/Services/{service_sid}/Bindings/{sid}")
        listing = client.get(f"/v1/Services/{service_sid}/Bindings", auth=account.auth)
        assert listing.status_code == 404
        assert stored_rows(engine) == ([survivor["sid"]], [(survivor["sid"], "keep")])
        assert listed(client, account, other_sid) == [survivor]
