"""twilio-python 9 and what issue 10 changed: the Service's `type`, the links it hands out
(Users, a User's Bindings, Segments: classes the SDK dropped in 6.16.0, so they are followed
with the SDK's own `Client.request`), and paging URLs in the SDK's parameter order."""

import json
import re
from datetime import date
from urllib.parse import urlsplit

import pytest
from twilio.base.exceptions import TwilioException

USER_SID = re.compile(r"US[0-9a-f]{32}")


def make_sdk_service(sdk, **fields):
    return sdk.notify.v1.services.create(**fields)


def make_sdk_binding(sdk, service_sid: str, **fields):
    form = {"identity": "alice", "binding_type": "apn", "address": "token-1", **fields}
    return sdk.notify.v1.services(service_sid).bindings.create(**form)


def follow(sdk, url: str) -> dict:
    """GET a link with the SDK's client: its auth, headers and HTTP client."""
    response = sdk.request("GET", url)
    assert response.status_code == 200, (url, response.text)
    return json.loads(response.text)


class TestCreateServiceType:
    def test_type_is_s_on_the_wire(self, sdk, wire):
        service = make_sdk_service(sdk, friendly_name="typed")
        assert json.loads(wire.last.text)["type"] == "S"
        sdk.notify.v1.services(service.sid).fetch()
        assert json.loads(wire.last.text)["type"] == "S"
        sdk.notify.v1.services(service.sid).update(friendly_name="again")
        assert json.loads(wire.last.text)["type"] == "S"
        sdk.notify.v1.services.list()
        assert {s["type"] for s in json.loads(wire.last.text)["services"]} == {"S"}


class TestFetchUser:
    def test_a_bindings_links_user(self, sdk, server):
        service = make_sdk_service(sdk)
        first = make_sdk_binding(sdk, service.sid, identity="alice", address="1")
        second = make_sdk_binding(sdk, service.sid, identity="alice", address="2")

        user = follow(sdk, first.links["user"])

        assert user["identity"] == "alice"
        assert USER_SID.fullmatch(user["sid"])
        assert user["url"] == first.links["user"] == second.links["user"]
        assert user["url"].startswith(server.base_url)
        assert user["segments"] == []
        bindings = follow(sdk, user["links"]["bindings"])["bindings"]
        assert [b["sid"] for b in bindings] == [first.sid, second.sid]

    def test_an_identity_without_bindings_is_404(self, sdk, server):
        service = make_sdk_service(sdk)
        response = sdk.request("GET", f"{server.base_url}/v1/Services/{service.sid}/Users/nobody")
        assert response.status_code == 404
        assert json.loads(response.text)["code"] == 20404


class TestListUsers:
    def test_the_services_links_users(self, sdk):
        service = make_sdk_service(sdk)
        for identity, address in [("bob", "1"), ("alice", "2"), ("bob", "3")]:
            make_sdk_binding(sdk, service.sid, identity=identity, address=address)

        users = follow(sdk, service.links["users"])

        assert [u["identity"] for u in users["users"]] == ["bob", "alice"]
        assert users["meta"]["key"] == "users"


class TestListSegments:
    def test_the_services_links_segments(self, sdk):
        service = make_sdk_service(sdk)
        segments = follow(sdk, service.links["segments"])
        assert segments["segments"] == []
        assert segments["meta"]["key"] == "segments"


class TestListBindingsParameterOrder:
    def test_next_page_url_keeps_the_sdks_order(self, sdk, wire):
        service = make_sdk_service(sdk)
        for address in ("1", "2"):
            make_sdk_binding(sdk, service.sid, address=address, tag=["t"])
        bindings = sdk.notify.v1.services(service.sid).bindings
        mark = len(wire.exchanges)

        listed = bindings.list(
            start_date=date(2000, 1, 1), identity=["alice"], tag=["t"], page_size=1
        )

        assert len(listed) == 2
        first, second = wire.exchanges[mark], wire.exchanges[mark + 1]
        # The SDK sends a dict; the server saw its keys in this order.
        assert list(first.params) == ["StartDate", "Identity", "Tag", "PageSize"]
        next_url = json.loads(first.text)["meta"]["next_page_url"]
        assert second.url == next_url
        assert urlsplit(next_url).query.startswith(
            "StartDate=2000-01-01&Identity=alice&Tag=t&PageSize=1&Page=1&PageToken="
        )

    def test_an_empty_start_date_is_refused(self, sdk):
        service = make_sdk_service(sdk)
        bindings = sdk.notify.v1.services(service.sid).bindings
        # The SDK would never send it, but a string passes straight through its serialiser.
        with pytest.raises(TwilioException) as caught:
            bindings.list(start_date="")
        _, response = caught.value.args
        assert response.status_code == 400
        assert json.loads(response.text)["message"].startswith("Parameter 'StartDate' is invalid")
