"""Services over HTTP against the real database: create, list, fetch, update, delete."""

import re
from datetime import datetime

import pytest
from sqlalchemy import func, select

from notify_server.db import transaction
from notify_server.models import Binding, Service
from tests.errors import assert_error, assert_invalid, assert_not_found, assert_recent
from tests.factories import make_binding, make_credential, make_service

SERVICE_SID = re.compile(r"IS[0-9a-f]{32}")
UNKNOWN_IS = "IS" + "0" * 32
UNKNOWN_CR = "CR" + "0" * 32
MG = "MG" + "0123456789abcdef" * 2
OLD = datetime(2020, 1, 2, 3, 4, 5)
OLD_WIRE = "2020-01-02T03:04:05Z"
MALFORMED_IS = [
    "ISzz",
    "IS" + "0" * 31,
    "IS" + "0" * 33,
    "XS" + "0" * 32,
    "is" + "0" * 32,
    "IS" + "g" * 32,
    "IS" + "0" * 31 + "%",
]


def expected_service(sid: str, account_sid: str, date: str, **fields) -> dict:
    url = f"http://testserver/v1/Services/{sid}"
    return {
        "sid": sid,
        "account_sid": account_sid,
        "friendly_name": None,
        "date_created": date,
        "date_updated": date,
        "apn_credential_sid": None,
        "gcm_credential_sid": None,
        "fcm_credential_sid": None,
        "messaging_service_sid": None,
        "facebook_messenger_page_id": None,
        "default_apn_notification_protocol_version": "3",
        "default_gcm_notification_protocol_version": "3",
        "default_fcm_notification_protocol_version": "3",
        "log_enabled": True,
        "type": "S",
        "url": url,
        "links": {
            "bindings": f"{url}/Bindings",
            "notifications": f"{url}/Notifications",
            "segments": f"{url}/Segments",
            "users": f"{url}/Users",
        },
        "alexa_skill_id": None,
        "default_alexa_notification_protocol_version": "3",
        "delivery_callback_url": None,
        "delivery_callback_enabled": False,
        **fields,
    }


def backdate(engine, sid: str) -> None:
    """Dates in the past, so an update's new date_updated shows without sleeping."""
    services = Service.__table__
    with transaction(engine, write=True) as conn:
        conn.execute(
            services.update()
            .where(services.c.sid == sid)
            .values(date_created=OLD, date_updated=OLD)
        )


def full_form(client, account) -> dict:
    """Every create/update field set, with its expected resource value."""
    apn = make_credential(client, account, Type="apn")
    gcm = make_credential(client, account, Type="gcm")
    fcm = make_credential(client, account, Type="fcm")
    form = {
        "FriendlyName": "Production ünïcode",
        "ApnCredentialSid": apn["sid"],
        "GcmCredentialSid": gcm["sid"],
        "FcmCredentialSid": fcm["sid"],
        "MessagingServiceSid": MG,
        "FacebookMessengerPageId": "4",
        "AlexaSkillId": "amzn1.ask.skill.1234",
        "DefaultApnNotificationProtocolVersion": "4",
        "DefaultGcmNotificationProtocolVersion": "5",
        "DefaultFcmNotificationProtocolVersion": "6",
        "DefaultAlexaNotificationProtocolVersion": "7",
        "LogEnabled": "false",
        "DeliveryCallbackUrl": "https://example.com/callback?x=1&y=2",
        "DeliveryCallbackEnabled": "true",
    }
    fields = {
        "friendly_name": "Production ünïcode",
        "apn_credential_sid": apn["sid"],
        "gcm_credential_sid": gcm["sid"],
        "fcm_credential_sid": fcm["sid"],
        "messaging_service_sid": MG,
        "facebook_messenger_page_id": "4",
        "alexa_skill_id": "amzn1.ask.skill.1234",
        "default_apn_notification_protocol_version": "4",
        "default_gcm_notification_protocol_version": "5",
        "default_fcm_notification_protocol_version": "6",
        "default_alexa_notification_protocol_version": "7",
        "log_enabled": False,
        "delivery_callback_url": "https://example.com/callback?x=1&y=2",
        "delivery_callback_enabled": True,
    }
    return {"form": form, "fields": fields}


def list_all(client, account, url: str) -> list[dict]:
    """Follow next_page_url to the end, as the SDKs do."""
    records: list[dict] = []
    pages = 0
    while url:
        response = client.get(url, auth=account.auth)
        assert response.status_code == 200, response.text
        body = response.json()
        records += body["services"]
        url = body["meta"]["next_page_url"]
        pages += 1
        assert pages < 50
    return records


# Bad values for create and update, with the exact message where we decided it.
INVALID_FORMS = [
    ({"FriendlyName": "x" * 65}, "FriendlyName", None),
    ({"ApnCredentialSid": "CR123"}, "ApnCredentialSid", None),
    ({"GcmCredentialSid": "XX" + "0" * 32}, "GcmCredentialSid", None),
    ({"FcmCredentialSid": "CR" + "g" * 32}, "FcmCredentialSid", None),
    ({"FcmCredentialSid": "CR" + "0" * 33}, "FcmCredentialSid", None),
    (
        {"ApnCredentialSid": UNKNOWN_CR},
        "ApnCredentialSid",
        f"Credential {UNKNOWN_CR} was not found",
    ),
    (
        {"GcmCredentialSid": UNKNOWN_CR},
        "GcmCredentialSid",
        f"Credential {UNKNOWN_CR} was not found",
    ),
    (
        {"FcmCredentialSid": UNKNOWN_CR},
        "FcmCredentialSid",
        f"Credential {UNKNOWN_CR} was not found",
    ),
    ({"MessagingServiceSid": "MG123"}, "MessagingServiceSid", None),
    ({"MessagingServiceSid": "IS" + "0" * 32}, "MessagingServiceSid", None),
    (
        {"DefaultApnNotificationProtocolVersion": "x" * 65},
        "DefaultApnNotificationProtocolVersion",
        None,
    ),
    (
        {"DefaultGcmNotificationProtocolVersion": "x" * 65},
        "DefaultGcmNotificationProtocolVersion",
        None,
    ),
    (
        {"DefaultFcmNotificationProtocolVersion": "x" * 65},
        "DefaultFcmNotificationProtocolVersion",
        None,
    ),
    (
        {"DefaultAlexaNotificationProtocolVersion": "x" * 65},
        "DefaultAlexaNotificationProtocolVersion",
        None,
    ),
    ({"FacebookMessengerPageId": "x" * 65}, "FacebookMessengerPageId", None),
    ({"AlexaSkillId": "x" * 129}, "AlexaSkillId", None),
    ({"DeliveryCallbackUrl": "https://example.com/" + "x" * 2048}, "DeliveryCallbackUrl", None),
    *[
        (
            {"DeliveryCallbackUrl": url},
            "DeliveryCallbackUrl",
            "must be an absolute http or https URL",
        )
        for url in ("ftp://example.com/cb", "example.com/cb", "/cb", "http://", "not a url")
    ],
    *[
        ({name: value}, name, "must be true or false")
        for name in ("LogEnabled", "DeliveryCallbackEnabled")
        for value in ("yes", "1", "0", "truee", "on", " true")
    ],
]
INVALID_IDS = [f"{name}={form[name][:24]!r}" for form, name, _ in INVALID_FORMS]


class TestCreateService:
    def test_without_parameters_gives_every_default(self, client, account):
        response = client.post("/v1/Services", auth=account.auth)

        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert SERVICE_SID.fullmatch(body["sid"])
        assert_recent(body["date_created"])
        assert body == expected_service(body["sid"], account.sid, body["date_created"])

    def test_every_field_is_stored_and_echoed(self, client, account):
        full = full_form(client, account)

        response = client.post("/v1/Services", data=full["form"], auth=account.auth)

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == expected_service(
            body["sid"], account.sid, body["date_created"], **full["fields"]
        )
        fetched = client.get(f"/v1/Services/{body['sid']}", auth=account.auth)
        assert fetched.json() == body

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("true", True), ("TRUE", True), ("tRuE", True), ("false", False), ("FALSE", False)],
    )
    def test_booleans_are_case_insensitive(self, client, account, value, expected):
        body = make_service(client, account, LogEnabled=value, DeliveryCallbackEnabled=value)
        assert body["log_enabled"] is expected
        assert body["delivery_callback_enabled"] is expected

    def test_limits_are_inclusive(self, client, account):
        body = make_service(
            client,
            account,
            FriendlyName="é" * 64,
            FacebookMessengerPageId="p" * 64,
            AlexaSkillId="a" * 128,
            DefaultApnNotificationProtocolVersion="v" * 64,
        )
        assert body["friendly_name"] == "é" * 64
        assert body["facebook_messenger_page_id"] == "p" * 64
        assert body["alexa_skill_id"] == "a" * 128
        assert body["default_apn_notification_protocol_version"] == "v" * 64

    def test_upper_case_hex_sids_are_accepted(self, client, account):
        body = make_service(client, account, MessagingServiceSid="MG" + "ABCDEF0123456789" * 2)
        assert body["messaging_service_sid"] == "MG" + "ABCDEF0123456789" * 2

    def test_empty_values_mean_not_given(self, client, account):
        # An empty string clears a nullable field, and a blank protocol version is the default.
        form = {
            "FriendlyName": "",
            "ApnCredentialSid": "",
            "GcmCredentialSid": "",
            "FcmCredentialSid": "",
            "MessagingServiceSid": "",
            "FacebookMessengerPageId": "",
            "AlexaSkillId": "",
            "DefaultApnNotificationProtocolVersion": "",
            "DefaultGcmNotificationProtocolVersion": "",
            "DefaultFcmNotificationProtocolVersion": "",
            "DefaultAlexaNotificationProtocolVersion": "",
            "DeliveryCallbackUrl": "",
        }
        response = client.post("/v1/Services", data=form, auth=account.auth)

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == expected_service(body["sid"], account.sid, body["date_created"])

    @pytest.mark.parametrize(("form", "name", "message"), INVALID_FORMS, ids=INVALID_IDS)
    def test_invalid_parameter_is_400_and_stores_nothing(
        self, client, account, form, name, message
    ):
        response = client.post("/v1/Services", data=form, auth=account.auth)

        assert_invalid(response, name, message)
        assert client.get("/v1/Services", auth=account.auth).json()["services"] == []

    def test_credential_of_another_account_is_400(self, client, account, other_account):
        theirs = make_credential(client, other_account)

        response = client.post(
            "/v1/Services", data={"ApnCredentialSid": theirs["sid"]}, auth=account.auth
        )

        assert_invalid(response, "ApnCredentialSid", f"Credential {theirs['sid']} was not found")

    def test_one_bad_field_among_good_ones_stores_nothing(self, client, account):
        response = client.post(
            "/v1/Services",
            data={"FriendlyName": "ok", "GcmCredentialSid": UNKNOWN_CR},
            auth=account.auth,
        )

        assert_invalid(response, "GcmCredentialSid", f"Credential {UNKNOWN_CR} was not found")
        assert client.get("/v1/Services", auth=account.auth).json()["services"] == []


class TestListServices:
    def test_empty(self, client, account):
        response = client.get("/v1/Services", auth=account.auth)

        assert response.status_code == 200
        assert response.json() == {
            "services": [],
            "meta": {
                "page": 0,
                "page_size": 50,
                "first_page_url": "http://testserver/v1/Services?PageSize=50&Page=0",
                "previous_page_url": None,
                "url": "http://testserver/v1/Services?PageSize=50&Page=0",
                "next_page_url": None,
                "key": "services",
            },
        }

    def test_records_equal_fetched_resources_in_creation_order(
        self, client, account, other_account
    ):
        created = [make_service(client, account, FriendlyName=f"s{i}") for i in range(3)]
        make_service(client, other_account, FriendlyName="theirs")

        body = client.get("/v1/Services", auth=account.auth).json()

        assert body["services"] == created

    def test_follows_next_page_url_through_every_page(self, client, account):
        created = [make_service(client, account, FriendlyName=f"s{i}")["sid"] for i in range(5)]

        first = client.get("/v1/Services?PageSize=2", auth=account.auth).json()
        meta = first["meta"]
        assert [s["sid"] for s in first["services"]] == created[:2]
        assert meta["page"] == 0
        assert meta["page_size"] == 2
        assert meta["first_page_url"] == "http://testserver/v1/Services?PageSize=2&Page=0"
        assert meta["url"] == "http://testserver/v1/Services?PageSize=2&Page=0"
        assert meta["previous_page_url"] is None
        assert meta["next_page_url"].startswith(
            "http://testserver/v1/Services?PageSize=2&Page=1&PageToken="
        )

        second = client.get(meta["next_page_url"], auth=account.auth).json()
        assert [s["sid"] for s in second["services"]] == created[2:4]
        assert second["meta"]["page"] == 1
        assert second["meta"]["url"] == meta["next_page_url"]
        assert second["meta"]["previous_page_url"].startswith(
            "http://testserver/v1/Services?PageSize=2&Page=0&PageToken="
        )
        back = client.get(second["meta"]["previous_page_url"], auth=account.auth).json()
        assert [s["sid"] for s in back["services"]] == created[:2]

        third = client.get(second["meta"]["next_page_url"], auth=account.auth).json()
        assert [s["sid"] for s in third["services"]] == created[4:]
        assert third["meta"]["next_page_url"] is None

        all_sids = [s["sid"] for s in list_all(client, account, "/v1/Services?PageSize=2")]
        assert all_sids == created

    def test_exact_page_boundary_has_no_next_page(self, client, account):
        for _ in range(2):
            make_service(client, account)

        body = client.get("/v1/Services?PageSize=2", auth=account.auth).json()

        assert len(body["services"]) == 2
        assert body["meta"]["next_page_url"] is None

    def test_friendly_name_is_an_exact_filter(self, client, account, other_account):
        a1 = make_service(client, account, FriendlyName="alpha")
        make_service(client, account, FriendlyName="beta")
        a2 = make_service(client, account, FriendlyName="alpha")
        make_service(client, account, FriendlyName="Alpha")
        make_service(client, account, FriendlyName="alpha2")
        make_service(client, account)
        make_service(client, other_account, FriendlyName="alpha")

        body = client.get("/v1/Services?FriendlyName=alpha", auth=account.auth).json()

        assert body["services"] == [a1, a2]
        assert body["meta"]["url"] == (
            "http://testserver/v1/Services?FriendlyName=alpha&PageSize=50&Page=0"
        )

    def test_friendly_name_filter_is_kept_while_paging(self, client, account):
        wanted = [
            make_service(client, account, FriendlyName="ü ñ&=")["sid"],
            make_service(client, account, FriendlyName="other")["sid"],
            make_service(client, account, FriendlyName="ü ñ&=")["sid"],
        ]

        first = client.get(
            "/v1/Services", params={"FriendlyName": "ü ñ&=", "PageSize": "1"}, auth=account.auth
        ).json()

        next_url = first["meta"]["next_page_url"]
        assert next_url.startswith(
            "http://testserver/v1/Services?FriendlyName=%C3%BC+%C3%B1%26%3D&PageSize=1&Page=1"
        )
        records = list_all(client, account, next_url)
        assert [first["services"][0]["sid"]] + [s["sid"] for s in records] == [
            wanted[0],
            wanted[2],
        ]

    @pytest.mark.parametrize(
        ("query", "name"),
        [
            ("PageSize=0", "PageSize"),
            ("PageSize=1001", "PageSize"),
            ("PageSize=abc", "PageSize"),
            ("PageSize=", "PageSize"),
            ("Page=-1", "Page"),
            ("Page=x", "Page"),
        ],
    )
    def test_bad_paging_parameters_are_400(self, client, account, query, name):
        assert_invalid(client.get(f"/v1/Services?{query}", auth=account.auth), name)

    @pytest.mark.parametrize("token", ["garbage", "PT", "PX12", "PT-1", "PTabc", "pt1"])
    def test_bad_page_token_is_400(self, client, account, token):
        response = client.get(f"/v1/Services?PageToken={token}", auth=account.auth)
        assert_error(response, 400, 20001, "Parameter 'PageToken' is invalid")

    def test_page_size_limits_are_inclusive(self, client, account):
        make_service(client, account)
        for size in (1, 1000):
            response = client.get(f"/v1/Services?PageSize={size}", auth=account.auth)
            assert response.status_code == 200
            assert response.json()["meta"]["page_size"] == size


class TestFetchService:
    def test_returns_the_created_resource(self, client, account):
        created = make_service(client, account, FriendlyName="fetch me")

        response = client.get(f"/v1/Services/{created['sid']}", auth=account.auth)

        assert response.status_code == 200
        assert response.json() == created

    def test_unknown_sid_is_404(self, client, account):
        response = client.get(f"/v1/Services/{UNKNOWN_IS}", auth=account.auth)
        assert_not_found(response, f"/Services/{UNKNOWN_IS}")

    def test_another_accounts_service_is_404(self, client, account, other_account):
        theirs = make_service(client, other_account)

        response = client.get(f"/v1/Services/{theirs['sid']}", auth=account.auth)

        assert_not_found(response, f"/Services/{theirs['sid']}")

    @pytest.mark.parametrize("sid", MALFORMED_IS)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.get(f"/v1/Services/{sid}")
        assert response.status_code == 404
        assert response.json()["code"] == 20404
        assert set(response.json()) == {"code", "message", "more_info", "status"}


class TestUpdateService:
    def test_changes_only_the_given_fields(self, client, account, engine):
        full = full_form(client, account)
        created = make_service(client, account, **full["form"])
        backdate(engine, created["sid"])

        response = client.post(
            f"/v1/Services/{created['sid']}", data={"FriendlyName": "renamed"}, auth=account.auth
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["date_created"] == OLD_WIRE
        assert_recent(body["date_updated"])
        assert body == {
            **created,
            "friendly_name": "renamed",
            "date_created": OLD_WIRE,
            "date_updated": body["date_updated"],
        }
        assert client.get(f"/v1/Services/{created['sid']}", auth=account.auth).json() == body

    def test_every_field_can_be_changed(self, client, account, engine):
        created = make_service(client, account)
        backdate(engine, created["sid"])
        full = full_form(client, account)

        response = client.post(
            f"/v1/Services/{created['sid']}", data=full["form"], auth=account.auth
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert_recent(body["date_updated"])
        assert body == expected_service(created["sid"], account.sid, OLD_WIRE, **full["fields"]) | {
            "date_updated": body["date_updated"]
        }

    def test_booleans_can_be_turned_back(self, client, account):
        created = make_service(client, account, LogEnabled="false", DeliveryCallbackEnabled="true")

        body = client.post(
            f"/v1/Services/{created['sid']}",
            data={"LogEnabled": "True", "DeliveryCallbackEnabled": "False"},
            auth=account.auth,
        ).json()

        assert body["log_enabled"] is True
        assert body["delivery_callback_enabled"] is False

    def test_empty_string_clears_and_blank_version_resets(self, client, account):
        full = full_form(client, account)
        created = make_service(client, account, **full["form"])
        blank = {name: "" for name in full["form"] if not name.endswith("Enabled")}

        response = client.post(f"/v1/Services/{created['sid']}", data=blank, auth=account.auth)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body == expected_service(
            created["sid"],
            account.sid,
            created["date_created"],
            log_enabled=False,
            delivery_callback_enabled=True,
        ) | {"date_updated": body["date_updated"]}

    def test_no_fields_changes_nothing_but_date_updated(self, client, account, engine):
        full = full_form(client, account)
        created = make_service(client, account, **full["form"])
        backdate(engine, created["sid"])

        response = client.post(f"/v1/Services/{created['sid']}", auth=account.auth)

        assert response.status_code == 200
        body = response.json()
        assert_recent(body["date_updated"])
        assert body == {**created, "date_created": OLD_WIRE, "date_updated": body["date_updated"]}

    @pytest.mark.parametrize(("form", "name", "message"), INVALID_FORMS, ids=INVALID_IDS)
    def test_invalid_parameter_is_400_and_changes_nothing(
        self, client, account, form, name, message
    ):
        created = make_service(client, account, FriendlyName="before", LogEnabled="false")

        response = client.post(
            f"/v1/Services/{created['sid']}",
            data={"FriendlyName": "after", **form} if name != "FriendlyName" else form,
            auth=account.auth,
        )

        assert_invalid(response, name, message)
        assert client.get(f"/v1/Services/{created['sid']}", auth=account.auth).json() == created

    def test_credential_of_another_account_is_400(self, client, account, other_account):
        created = make_service(client, account)
        theirs = make_credential(client, other_account, Type="fcm")

        response = client.post(
            f"/v1/Services/{created['sid']}",
            data={"FcmCredentialSid": theirs["sid"]},
            auth=account.auth,
        )

        assert_invalid(response, "FcmCredentialSid", f"Credential {theirs['sid']} was not found")
        assert client.get(f"/v1/Services/{created['sid']}", auth=account.auth).json() == created

    def test_unknown_sid_is_404(self, client, account):
        response = client.post(
            f"/v1/Services/{UNKNOWN_IS}", data={"FriendlyName": "x"}, auth=account.auth
        )
        assert_not_found(response, f"/Services/{UNKNOWN_IS}")

    def test_another_accounts_service_is_404_and_unchanged(self, client, account, other_account):
        theirs = make_service(client, other_account, FriendlyName="theirs")

        response = client.post(
            f"/v1/Services/{theirs['sid']}", data={"FriendlyName": "mine"}, auth=account.auth
        )

        assert_not_found(response, f"/Services/{theirs['sid']}")
        fetched = client.get(f"/v1/Services/{theirs['sid']}", auth=other_account.auth)
        assert fetched.json() == theirs

    @pytest.mark.parametrize("sid", MALFORMED_IS)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.post(f"/v1/Services/{sid}", data={"FriendlyName": "x"})
        assert response.status_code == 404
        assert response.json()["code"] == 20404


class TestDeleteService:
    def test_204_then_gone(self, client, account):
        created = make_service(client, account)
        path = f"/v1/Services/{created['sid']}"

        response = client.delete(path, auth=account.auth)

        assert response.status_code == 204
        assert response.content == b""
        assert_not_found(client.get(path, auth=account.auth), f"/Services/{created['sid']}")
        assert_not_found(client.delete(path, auth=account.auth), f"/Services/{created['sid']}")
        assert client.get("/v1/Services", auth=account.auth).json()["services"] == []

    def test_its_bindings_go_too_and_no_others(self, client, account, engine):
        doomed = make_service(client, account)
        kept = make_service(client, account)
        make_binding(client, account, doomed["sid"], Tag=["a", "b"])
        make_binding(client, account, doomed["sid"], Identity="bob", Address="b0b")
        survivor = make_binding(client, account, kept["sid"], Tag=["a"])

        assert client.delete(f"/v1/Services/{doomed['sid']}", auth=account.auth).status_code == 204

        bindings = Binding.__table__
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(bindings)).scalar_one()
        assert count == 1
        listed = client.get(f"/v1/Services/{doomed['sid']}/Bindings", auth=account.auth)
        assert_not_found(listed, f"/Services/{doomed['sid']}/Bindings")
        fetched = client.get(
            f"/v1/Services/{kept['sid']}/Bindings/{survivor['sid']}", auth=account.auth
        )
        assert fetched.json() == survivor

    def test_unknown_sid_is_404(self, client, account):
        response = client.delete(f"/v1/Services/{UNKNOWN_IS}", auth=account.auth)
        assert_not_found(response, f"/Services/{UNKNOWN_IS}")

    def test_another_accounts_service_is_404_and_kept(self, client, account, other_account):
        theirs = make_service(client, other_account)

        response = client.delete(f"/v1/Services/{theirs['sid']}", auth=account.auth)

        assert_not_found(response, f"/Services/{theirs['sid']}")
        fetched = client.get(f"/v1/Services/{theirs['sid']}", auth=other_account.auth)
        assert fetched.status_code == 200

    @pytest.mark.parametrize("sid", MALFORMED_IS)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.delete(f"/v1/Services/{sid}")
        assert response.status_code == 404
        assert response.json()["code"] == 20404
