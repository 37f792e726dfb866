"""What Twilio's own SDK fixtures and the other SDK languages' encodings show (issue 10):
response keys as the fixtures have them, twilio-php's `Data=[]`, bracketed names, empty typed
filters, and paging URLs that keep the client's parameter order."""

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from notify_server.bindings.models import Binding
from notify_server.notifications.models import Notification
from tests.errors import assert_invalid
from tests.factories import Account, make_binding, make_credential, make_service

BASE = "http://testserver"
# The keys of each body in twilio-python's generated fixtures (tests/integration/notify/v1/...):
# at e7b851e4 (2023-03-22, the last commit with them) for Service, Binding, Credential and
# Notification; at 7d0bf3fd (2018-08-03, the last with the removed classes) for User and the
# User's Binding. docs/behaviour.md ("Response keys") names the file of each.
FIXTURE_KEYS = {
    "service": {
        "sid",
        "account_sid",
        "friendly_name",
        "date_created",
        "date_updated",
        "apn_credential_sid",
        "gcm_credential_sid",
        "fcm_credential_sid",
        "messaging_service_sid",
        "facebook_messenger_page_id",
        "alexa_skill_id",
        "default_apn_notification_protocol_version",
        "default_gcm_notification_protocol_version",
        "default_fcm_notification_protocol_version",
        "default_alexa_notification_protocol_version",
        "log_enabled",
        "type",
        "delivery_callback_url",
        "delivery_callback_enabled",
        "url",
        "links",
    },
    "binding": {
        "account_sid",
        "address",
        "binding_type",
        "credential_sid",
        "date_created",
        "date_updated",
        "endpoint",
        "identity",
        "links",
        "notification_protocol_version",
        "service_sid",
        "sid",
        "tags",
        "url",
    },
    "credential": {
        "sid",
        "account_sid",
        "friendly_name",
        "type",
        "sandbox",
        "date_created",
        "date_updated",
        "url",
    },
    "notification": {
        "sid",
        "account_sid",
        "service_sid",
        "date_created",
        "identities",
        "tags",
        "segments",
        "priority",
        "ttl",
        "title",
        "body",
        "sound",
        "action",
        "data",
        "apn",
        "fcm",
        "gcm",
        "sms",
        "facebook_messenger",
        "alexa",
    },
    "user": {
        "account_sid",
        "date_created",
        "date_updated",
        "identity",
        "links",
        "segments",
        "service_sid",
        "sid",
        "url",
    },
}
SERVICE_LINKS = {"bindings", "notifications", "segments", "users"}
JSON_OBJECT_PARAMETERS = {
    "Data": "data",
    "Apn": "apn",
    "Fcm": "fcm",
    "Gcm": "gcm",
    "Sms": "sms",
    "FacebookMessenger": "facebook_messenger",
    "Alexa": "alexa",
}


def relative(url: str) -> str:
    assert url.startswith(f"{BASE}/v1/"), url
    return url[len(BASE) :]


def notification_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(Notification.__table__)).scalar_one()


def binding_count(engine: Engine) -> int:
    with engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(Binding.__table__)).scalar_one()


@pytest.fixture
def service(client: TestClient, account: Account) -> dict:
    return make_service(client, account, FriendlyName="fidelity")


@pytest.fixture
def service_sid(service: dict) -> str:
    return service["sid"]


class TestResponseKeysAsTheFixtures:
    def test_service_in_create_fetch_list_and_update(self, client, account, service):
        url = f"/v1/Services/{service['sid']}"
        fetched = client.get(url, auth=account.auth).json()
        listed = client.get("/v1/Services", auth=account.auth).json()["services"][0]
        updated = client.post(url, data={"FriendlyName": "x"}, auth=account.auth).json()
        for body in (service, fetched, listed, updated):
            assert set(body) == FIXTURE_KEYS["service"]
            assert body["type"] == "S"
            assert set(body["links"]) == SERVICE_LINKS

    def test_binding(self, client, account, service_sid):
        created = make_binding(client, account, service_sid)
        fetched = client.get(relative(created["url"]), auth=account.auth).json()
        listed = client.get(f"/v1/Services/{service_sid}/Bindings", auth=account.auth).json()
        for body in (created, fetched, listed["bindings"][0]):
            assert set(body) == FIXTURE_KEYS["binding"]
            assert set(body["links"]) == {"user"}

    def test_credential(self, client, account):
        created = make_credential(client, account, Certificate="c", PrivateKey="k")
        fetched = client.get(relative(created["url"]), auth=account.auth).json()
        assert set(created) == set(fetched) == FIXTURE_KEYS["credential"]

    def test_notification(self, client, account, service_sid):
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "alice", "Body": "hi"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert set(response.json()) == FIXTURE_KEYS["notification"]

    def test_user_and_its_binding(self, client, account, service_sid):
        binding = make_binding(client, account, service_sid)
        user = client.get(relative(binding["links"]["user"]), auth=account.auth).json()
        assert set(user) == FIXTURE_KEYS["user"]
        assert set(user["links"]) == {"bindings", "segment_memberships"}
        user_binding = client.get(relative(user["links"]["bindings"]), auth=account.auth).json()
        assert set(user_binding["bindings"][0]) == FIXTURE_KEYS["binding"]

    def test_every_link_answers(self, client, account, service, service_sid):
        binding = make_binding(client, account, service_sid)
        links = [*service["links"].values(), binding["links"]["user"]]
        # The notifications link too: Twilio's was POST only, ours lists them (issue 11).
        for link in links:
            response = client.get(relative(link), auth=account.auth)
            assert response.status_code == 200, (link, response.text)


class TestPhpEmptyArrayIsAnEmptyObject:
    """twilio-php sends a PHP array through json_encode(): an empty one arrives as `[]`."""

    @pytest.mark.parametrize("name", sorted(JSON_OBJECT_PARAMETERS))
    def test_each_json_object_parameter(self, client, account, service_sid, name):
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "alice", "Body": "hi", name: "[]"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body[JSON_OBJECT_PARAMETERS[name]] == {}
        others = set(JSON_OBJECT_PARAMETERS.values()) - {JSON_OBJECT_PARAMETERS[name]}
        assert all(body[key] is None for key in others)

    @pytest.mark.parametrize("value", ["[1]", '["a"]', "[[]]", "[{}]"])
    def test_a_non_empty_array_is_still_refused(self, client, account, service_sid, engine, value):
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "alice", "Body": "hi", "Data": value},
            auth=account.auth,
        )
        assert_invalid(response, "Data", "must be a JSON object")
        assert notification_count(engine) == 0

    def test_the_notification_is_sent_with_empty_data(self, client, account, service_sid):
        make_binding(client, account, service_sid, Identity="alice")
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "alice", "Body": "hi", "Data": "[]", "Apn": "[]"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert (response.json()["data"], response.json()["apn"]) == ({}, {})


LIST_HOW = "a list is sent by repeating {0}= ({0}=a&{0}=b), not as {0}[]"


class TestBracketedNamesAreRefused:
    @pytest.mark.parametrize("sent", ["Tag[]", "Tag[0]", "Tag[1]", "Tag[x]", "Tag["])
    def test_binding_create(self, client, account, service_sid, engine, sent):
        response = client.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": "alice", "BindingType": "apn", "Address": "a", sent: "vip"},
            auth=account.auth,
        )
        assert_invalid(response, "Tag", LIST_HOW.format("Tag"))
        assert binding_count(engine) == 0

    def test_php_http_build_query_as_sent(self, client, account, service_sid, engine):
        # http_build_query(['Tag' => ['a', 'b']]) percent-encodes the brackets.
        body = "Identity=alice&BindingType=apn&Address=a&Tag%5B0%5D=a&Tag%5B1%5D=b"
        response = client.post(
            f"/v1/Services/{service_sid}/Bindings",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=account.auth,
        )
        assert_invalid(response, "Tag", LIST_HOW.format("Tag"))
        assert binding_count(engine) == 0

    @pytest.mark.parametrize("name", ["Identity", "Tag", "ToBinding", "Segment"])
    def test_notification_create(self, client, account, service_sid, engine, name):
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Body": "hi", f"{name}[]": "x"},
            auth=account.auth,
        )
        assert_invalid(response, name, LIST_HOW.format(name))
        assert notification_count(engine) == 0

    @pytest.mark.parametrize("name", ["Identity", "Tag"])
    def test_binding_list_filters(self, client, account, service_sid, name):
        response = client.get(
            f"/v1/Services/{service_sid}/Bindings?{quote(name + '[]')}=x", auth=account.auth
        )
        assert_invalid(response, name, LIST_HOW.format(name))

    def test_a_single_valued_parameter(self, client, account):
        response = client.post("/v1/Services", data={"FriendlyName[]": "x"}, auth=account.auth)
        assert_invalid(response, "FriendlyName", "send FriendlyName= without brackets")

    def test_a_name_that_is_not_ours_is_ignored_as_ever(self, client, account, service_sid):
        response = client.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": "alice", "BindingType": "apn", "Address": "a", "Extra[]": "x"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text


class TestEmptyTypedFilterIsRefused:
    @pytest.mark.parametrize("name", ["StartDate", "EndDate", "PageSize", "Page"])
    def test_binding_list(self, client, account, service_sid, name):
        response = client.get(f"/v1/Services/{service_sid}/Bindings?{name}=", auth=account.auth)
        assert_invalid(response, name)

    @pytest.mark.parametrize(
        "path",
        ["/v1/Services", "/v1/Credentials", "/v1/Services/{}/Users", "/v1/Services/{}/Segments"],
    )
    def test_page_size_on_every_list(self, client, account, service_sid, path):
        response = client.get(f"{path.format(service_sid)}?PageSize=", auth=account.auth)
        assert_invalid(response, "PageSize")

    def test_an_empty_text_filter_is_still_not_given(self, client, account, service):
        # FriendlyName is text: empty is "not given", as before.
        response = client.get("/v1/Services?FriendlyName=", auth=account.auth)
        assert response.status_code == 200, response.text
        assert [s["sid"] for s in response.json()["services"]] == [service["sid"]]
        assert response.json()["meta"]["url"] == f"{BASE}/v1/Services?PageSize=50&Page=0"

    def test_an_empty_value_in_a_post_is_still_not_given(self, client, account):
        # Twilio's forms: on a POST an empty value means not given (on an update: cleared).
        response = client.post("/v1/Services", data={"LogEnabled": ""}, auth=account.auth)
        assert response.status_code == 201, response.text
        assert response.json()["log_enabled"] is True


class TestPagingUrlsKeepTheClientsOrder:
    def test_the_fixtures_order(self, client, account, service_sid):
        response = client.get(
            f"/v1/Services/{service_sid}/Bindings?Tag=tag&Identity=identity", auth=account.auth
        )
        url = (
            f"{BASE}/v1/Services/{service_sid}/Bindings"
            "?Tag=tag&Identity=identity&PageSize=50&Page=0"
        )
        assert response.json()["meta"]["url"] == url
        assert response.json()["meta"]["first_page_url"] == url

    def test_the_other_order(self, client, account, service_sid):
        response = client.get(
            f"/v1/Services/{service_sid}/Bindings?PageSize=5&Identity=identity&EndDate=2020-01-02&Tag=tag",
            auth=account.auth,
        )
        assert response.json()["meta"]["url"] == (
            f"{BASE}/v1/Services/{service_sid}/Bindings"
            "?Identity=identity&EndDate=2020-01-02&Tag=tag&PageSize=5&Page=0"
        )

    def test_repeated_values_stay_together_in_the_order_given(self, client, account, service_sid):
        response = client.get(
            f"/v1/Services/{service_sid}/Bindings?Identity=b&Tag=t&Identity=a", auth=account.auth
        )
        assert response.json()["meta"]["url"] == (
            f"{BASE}/v1/Services/{service_sid}/Bindings"
            "?Identity=b&Identity=a&Tag=t&PageSize=50&Page=0"
        )

    def test_next_page_keeps_it(self, client, account, service_sid):
        for n in range(3):
            make_binding(client, account, service_sid, Address=f"a{n}", Tag="t")
        first = client.get(
            f"/v1/Services/{service_sid}/Bindings?Tag=t&Identity=alice&PageSize=1",
            auth=account.auth,
        ).json()
        second = client.get(relative(first["meta"]["next_page_url"]), auth=account.auth).json()
        for meta in (first["meta"], second["meta"]):
            for key in ("url", "first_page_url", "next_page_url"):
                assert meta[key].split("?", 1)[1].startswith("Tag=t&Identity=alice&PageSize=1&")
        assert (
            second["meta"]["previous_page_url"]
            .split("?", 1)[1]
            .startswith("Tag=t&Identity=alice&PageSize=1&Page=0&PageToken=PB")
        )

    def test_a_space_is_sent_back_as_plus(self, client, account):
        response = client.get("/v1/Services?FriendlyName=a%20b", auth=account.auth)
        assert response.json()["meta"]["url"] == (
            f"{BASE}/v1/Services?FriendlyName=a+b&PageSize=50&Page=0"
        )
