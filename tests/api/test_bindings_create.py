"""POST /v1/Services/{IS}/Bindings: the resource, validation, access, body handling,
upserts and the 20-bindings-per-identity limit."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from notify_server.app import create_app
from notify_server.bindings.models import Binding
from notify_server.config import Settings
from tests.errors import UNAUTHENTICATED, assert_invalid, not_found, twilio_error
from tests.factories import (
    Account,
    make_api_key,
    make_binding,
    make_credential,
    make_service,
)

SID_RE = re.compile(r"^BS[0-9a-f]{32}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BINDING_KEYS = {
    "account_sid",
    "address",
    "binding_type",
    "credential_sid",
    "date_created",
    "date_updated",
    "endpoint",
    "identity",
    "notification_protocol_version",
    "service_sid",
    "sid",
    "tags",
    "links",
    "url",
}
UNKNOWN_SERVICE = "IS" + "0" * 32
SEED_CREDENTIAL = "CR" + "a" * 32
FORM = {"content-type": "application/x-www-form-urlencoded"}
E164_MESSAGE = (
    "Parameter 'Address' is invalid: an sms Binding's Address must be a phone number in"
    " E.164 format"
)


def limit_message(identity: str) -> str:
    return f"Identity '{identity}' already has the maximum of 20 Bindings in this Service"


def bindings_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Bindings"


def post_binding(client: TestClient, account: Account, service_sid: str, data):
    return client.post(bindings_path(service_sid), data=data, auth=account.auth)


def listed(client: TestClient, account: Account, service_sid: str, **params) -> list[dict]:
    response = client.get(
        bindings_path(service_sid), params={"PageSize": 1000, **params}, auth=account.auth
    )
    assert response.status_code == 200, response.text
    return response.json()["bindings"]


def fetch(client: TestClient, account: Account, service_sid: str, sid: str):
    return client.get(f"{bindings_path(service_sid)}/{sid}", auth=account.auth)


def parse_date(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def backdate(engine: Engine, sid: str, when: datetime) -> None:
    table = Binding.__table__
    with engine.begin() as conn:
        conn.execute(
            update(table).where(table.c.sid == sid).values(date_created=when, date_updated=when)
        )


def fill_identity(
    client: TestClient, account: Account, service_sid: str, identity: str = "alice"
) -> list[dict]:
    return [
        make_binding(client, account, service_sid, Identity=identity, Address=f"addr-{i}")
        for i in range(20)
    ]


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account, FriendlyName="bindings")["sid"]


class TestCreateBinding:
    def test_seed_curl_example(self, client, account, service_sid):
        body = (
            "Tag=tag&Address=address&Endpoint=endpoint&Identity=24987039&BindingType=apn"
            "&NotificationProtocolVersion=notification_protocol_version"
        )
        before = datetime.now(UTC).replace(microsecond=0)
        response = client.post(
            bindings_path(service_sid), content=body, headers=FORM, auth=account.auth
        )
        after = datetime.now(UTC)
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        binding = response.json()
        assert set(binding) == BINDING_KEYS
        sid = binding["sid"]
        assert SID_RE.fullmatch(sid)
        assert DATE_RE.fullmatch(binding["date_created"])
        assert binding["date_updated"] == binding["date_created"]
        assert before <= parse_date(binding["date_created"]) <= after
        service_url = f"http://testserver/v1/Services/{service_sid}"
        assert binding == {
            "account_sid": account.sid,
            "address": "address",
            "binding_type": "apn",
            "credential_sid": None,
            "date_created": binding["date_created"],
            "date_updated": binding["date_created"],
            "endpoint": "endpoint",
            "identity": "24987039",
            "notification_protocol_version": "notification_protocol_version",
            "service_sid": service_sid,
            "sid": sid,
            "tags": ["tag"],
            "links": {"user": f"{service_url}/Users/24987039"},
            "url": f"{service_url}/Bindings/{sid}",
        }
        assert listed(client, account, service_sid) == [binding]

    def test_seed_credential_sid_is_not_a_credential_of_the_account(
        self, client, account, service_sid
    ):
        body = (
            "Tag=tag&Address=address&Endpoint=endpoint&Identity=24987039&BindingType=apn"
            f"&CredentialSid={SEED_CREDENTIAL}"
            "&NotificationProtocolVersion=notification_protocol_version"
        )
        response = client.post(
            bindings_path(service_sid), content=body, headers=FORM, auth=account.auth
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400,
            20001,
            f"Parameter 'CredentialSid' is invalid: Credential {SEED_CREDENTIAL} was not found",
        )
        assert listed(client, account, service_sid) == []

    def test_minimal_binding(self, client, account, service_sid):
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "token"},
        )
        assert response.status_code == 201, response.text
        binding = response.json()
        assert binding["endpoint"] is None
        assert binding["credential_sid"] is None
        assert binding["tags"] == []
        assert binding["notification_protocol_version"] == "3"
        assert binding["date_created"] == binding["date_updated"]

    @pytest.mark.parametrize(
        "blank", ["Endpoint", "CredentialSid", "NotificationProtocolVersion", "all three"]
    )
    def test_empty_optional_fields_count_as_not_given(self, client, account, service_sid, blank):
        everything = ("Endpoint", "CredentialSid", "NotificationProtocolVersion")
        optional = everything if blank == "all three" else (blank,)
        form = {"Identity": "alice", "BindingType": "gcm", "Address": "token"}
        response = post_binding(
            client, account, service_sid, {**form, **dict.fromkeys(optional, "")}
        )
        assert response.status_code == 201, response.text
        binding = response.json()
        assert binding["endpoint"] is None
        assert binding["credential_sid"] is None
        assert binding["notification_protocol_version"] == "3"

    @pytest.mark.parametrize(
        ("binding_type", "address", "version"),
        [
            ("apn", "a7c658f4111ec4ff5a1a647f9d0edd81", "3"),
            ("gcm", "gcm-registration-token", "3"),
            ("fcm", "fcm-registration-token", "3"),
            ("alexa", "amzn1.ask.account.abc", "3"),
            ("sms", "+15555550100", "default"),
            ("facebook-messenger", "1234567890123456", "default"),
        ],
    )
    def test_each_binding_type(self, client, account, service_sid, binding_type, address, version):
        binding = make_binding(
            client, account, service_sid, BindingType=binding_type, Address=address
        )
        assert binding["binding_type"] == binding_type
        assert binding["address"] == address
        assert binding["notification_protocol_version"] == version
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding

    def test_protocol_versions_follow_the_service_defaults(self, client, account):
        service_sid = make_service(
            client,
            account,
            DefaultApnNotificationProtocolVersion="4",
            DefaultGcmNotificationProtocolVersion="5",
            DefaultFcmNotificationProtocolVersion="6",
            DefaultAlexaNotificationProtocolVersion="7",
        )["sid"]
        expected = {
            "apn": "4",
            "gcm": "5",
            "fcm": "6",
            "alexa": "7",
            "sms": "default",
            "facebook-messenger": "default",
        }
        for binding_type, version in expected.items():
            address = "+15555550100" if binding_type == "sms" else f"{binding_type}-token"
            binding = make_binding(
                client, account, service_sid, BindingType=binding_type, Address=address
            )
            assert binding["notification_protocol_version"] == version, binding_type

    def test_protocol_version_follows_an_updated_service(self, client, account, service_sid):
        before = make_binding(client, account, service_sid, Address="before")
        response = client.post(
            f"/v1/Services/{service_sid}",
            data={"DefaultApnNotificationProtocolVersion": "4"},
            auth=account.auth,
        )
        assert response.status_code == 200, response.text
        after = make_binding(client, account, service_sid, Address="after")
        gcm = make_binding(client, account, service_sid, BindingType="gcm", Address="g")
        assert after["notification_protocol_version"] == "4"
        assert gcm["notification_protocol_version"] == "3"
        # Stored bindings keep the version they were created with.
        assert fetch(client, account, service_sid, before["sid"]).json() == before

    def test_given_protocol_version_overrides_the_default(self, client, account, service_sid):
        sms = make_binding(
            client,
            account,
            service_sid,
            BindingType="sms",
            Address="+15555550100",
            NotificationProtocolVersion="2",
        )
        apn = make_binding(client, account, service_sid, NotificationProtocolVersion="x" * 64)
        assert sms["notification_protocol_version"] == "2"
        assert apn["notification_protocol_version"] == "x" * 64

    def test_credential_of_the_account_is_accepted_and_echoed(self, client, account, service_sid):
        credential = make_credential(client, account, Type="fcm")
        binding = make_binding(
            client, account, service_sid, BindingType="fcm", CredentialSid=credential["sid"]
        )
        assert binding["credential_sid"] == credential["sid"]
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding

    @pytest.mark.parametrize(
        ("identity", "encoded"),
        [
            ("a b/c?", "a%20b%2Fc%3F"),
            ("user#1&x=y+z%", "user%231%26x%3Dy%2Bz%25"),
            ("élan", "%C3%A9lan"),
        ],
    )
    def test_user_link_percent_encodes_the_identity(
        self, client, account, service_sid, identity, encoded
    ):
        binding = make_binding(client, account, service_sid, Identity=identity)
        service_url = f"http://testserver/v1/Services/{service_sid}"
        assert binding["identity"] == identity
        assert binding["links"] == {"user": f"{service_url}/Users/{encoded}"}
        assert binding["url"] == f"{service_url}/Bindings/{binding['sid']}"

    def test_urls_use_the_configured_public_url(self, settings, engine, account):
        public = settings.model_copy(update={"public_url": "https://notify.example.com/"})
        with TestClient(create_app(public), raise_server_exceptions=False) as client:
            service_sid = make_service(client, account)["sid"]
            binding = make_binding(client, account, service_sid, Identity="bob")
        service_url = f"https://notify.example.com/v1/Services/{service_sid}"
        assert binding["url"] == f"{service_url}/Bindings/{binding['sid']}"
        assert binding["links"] == {"user": f"{service_url}/Users/bob"}

    def test_tags_are_collapsed_in_order_and_implicit_ones_dropped(
        self, client, account, service_sid
    ):
        tags = ["b", "a", "b", "all", "apn", "sms", "c", "a", "facebook-messenger", "B"]
        binding = make_binding(client, account, service_sid, Tag=tags)
        assert binding["tags"] == ["b", "a", "c", "B"]
        assert fetch(client, account, service_sid, binding["sid"]).json()["tags"] == binding["tags"]

    def test_twenty_distinct_tags_with_duplicates_and_implicit_tags(
        self, client, account, service_sid
    ):
        distinct = [f"tag-{i}" for i in range(20)]
        implicit = ["all", "apn", "gcm", "sms", "fcm", "facebook-messenger", "alexa"]
        binding = make_binding(client, account, service_sid, Tag=distinct + distinct + implicit)
        assert binding["tags"] == distinct

    def test_values_at_their_maximum_length(self, client, account, service_sid):
        form = {
            "Identity": "é" * 256,
            "Address": "a" * 1024,
            "Tag": ["t" * 64, "ü" * 64],
            "Endpoint": "e" * 1024,
            "NotificationProtocolVersion": "v" * 64,
        }
        binding = make_binding(client, account, service_sid, **form)
        assert binding["identity"] == form["Identity"]
        assert binding["address"] == form["Address"]
        assert binding["tags"] == form["Tag"]
        assert binding["endpoint"] == form["Endpoint"]
        assert fetch(client, account, service_sid, binding["sid"]).json() == binding

    @pytest.mark.parametrize(
        "address", ["+12", "+15555550100", "+123456789012345", "+447700900123"]
    )
    def test_sms_address_in_e164(self, client, account, service_sid, address):
        binding = make_binding(client, account, service_sid, BindingType="sms", Address=address)
        assert binding["address"] == address

    def test_api_key_authenticates(self, client, engine, account, service_sid):
        key_sid, secret = make_api_key(engine, account.sid)
        response = client.post(
            bindings_path(service_sid),
            data={"Identity": "alice", "BindingType": "apn", "Address": "x"},
            auth=(key_sid, secret),
        )
        assert response.status_code == 201, response.text
        assert response.json()["account_sid"] == account.sid

    def test_json_suffix(self, client, account, service_sid):
        response = client.post(
            f"{bindings_path(service_sid)}.json",
            data={"Identity": "alice", "BindingType": "apn", "Address": "x"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert response.json()["url"].endswith(f"/Bindings/{response.json()['sid']}")

    def test_multipart_form_data_is_accepted_like_a_urlencoded_body(
        self, client, account, service_sid
    ):
        boundary = "notify-test-boundary"
        fields = [
            ("Identity", "alice"),
            ("BindingType", "sms"),
            ("Address", "+15555550100"),
            ("Tag", "one"),
            ("Tag", "two"),
            ("Endpoint", "device-1"),
        ]
        body = (
            "".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                for name, value in fields
            )
            + f"--{boundary}--\r\n"
        )
        response = client.post(
            bindings_path(service_sid),
            content=body.encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        binding = response.json()
        assert binding["identity"] == "alice"
        assert binding["binding_type"] == "sms"
        assert binding["address"] == "+15555550100"
        assert binding["tags"] == ["one", "two"]
        assert binding["endpoint"] == "device-1"
        assert listed(client, account, service_sid) == [binding]

    def test_plus_in_a_urlencoded_body_is_a_space(self, client, account, service_sid):
        response = client.post(
            bindings_path(service_sid),
            content="Identity=alice+smith&BindingType=sms&Address=%2B15555550100&Tag=t+2",
            headers=FORM,
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert response.json()["identity"] == "alice smith"
        assert response.json()["address"] == "+15555550100"
        assert response.json()["tags"] == ["t 2"]


class TestCreateBindingValidation:
    @pytest.mark.parametrize("missing", ["Identity", "BindingType", "Address"])
    def test_missing_required_parameter(self, client, account, service_sid, missing):
        form = {"Identity": "alice", "BindingType": "apn", "Address": "x"}
        del form[missing]
        response = post_binding(client, account, service_sid, form)
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, f"Missing required parameter {missing} in the post body"
        )
        assert listed(client, account, service_sid) == []

    def test_empty_body_names_the_first_missing_parameter(self, client, account, service_sid):
        response = client.post(
            bindings_path(service_sid), content=b"", headers=FORM, auth=account.auth
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, "Missing required parameter Identity in the post body"
        )

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("BindingType", "push"),
            ("BindingType", "APN"),
            ("BindingType", "facebook_messenger"),
            ("BindingType", ""),
            ("Identity", ""),
            ("Identity", "i" * 257),
            ("Address", ""),
            ("Address", "a" * 1025),
            ("Endpoint", "e" * 1025),
            ("NotificationProtocolVersion", "v" * 65),
            ("CredentialSid", "CR123"),
            ("CredentialSid", "CR" + "a" * 33),
            ("CredentialSid", "CR" + "g" * 32),
            ("CredentialSid", "XX" + "a" * 32),
            ("CredentialSid", "cr" + "a" * 32),
        ],
    )
    def test_invalid_parameter(self, client, account, service_sid, name, value):
        form = {"Identity": "alice", "BindingType": "apn", "Address": "x", name: value}
        response = post_binding(client, account, service_sid, form)
        assert_invalid(response, name)
        assert listed(client, account, service_sid) == []

    @pytest.mark.parametrize(
        "address",
        [
            "15555550100",
            "+05555550100",
            "+1234567890123456",
            "+1555abc0100",
            "+1",
            "+",
            "+1 555 555 0100",
            "+1-555-555-0100",
            "0015555550100",
            "+15555550100 ",
        ],
    )
    def test_sms_address_not_in_e164(self, client, account, service_sid, address):
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "sms", "Address": address},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, E164_MESSAGE)
        assert listed(client, account, service_sid) == []

    @pytest.mark.parametrize("tags", [["t" * 65], [""], ["ok", ""], ["ok", "x" * 65]])
    def test_invalid_tag(self, client, account, service_sid, tags):
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "x", "Tag": tags},
        )
        assert_invalid(response, "Tag")
        assert listed(client, account, service_sid) == []

    def test_twenty_one_distinct_tags(self, client, account, service_sid):
        tags = [f"tag-{i}" for i in range(21)]
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "x", "Tag": tags},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, "Parameter 'Tag' is invalid: a Binding can have at most 20 tags"
        )
        assert listed(client, account, service_sid) == []

    def test_unknown_credential(self, client, account, service_sid):
        unknown = "CR" + "0" * 32
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "x", "CredentialSid": unknown},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, f"Parameter 'CredentialSid' is invalid: Credential {unknown} was not found"
        )
        assert listed(client, account, service_sid) == []

    def test_credential_of_another_account(self, client, account, other_account, service_sid):
        theirs = make_credential(client, other_account)["sid"]
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "x", "CredentialSid": theirs},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, f"Parameter 'CredentialSid' is invalid: Credential {theirs} was not found"
        )
        assert listed(client, account, service_sid) == []

    def test_deleted_credential(self, client, account, service_sid):
        credential = make_credential(client, account)["sid"]
        assert client.delete(f"/v1/Credentials/{credential}", auth=account.auth).status_code == 204
        response = post_binding(
            client,
            account,
            service_sid,
            {
                "Identity": "alice",
                "BindingType": "apn",
                "Address": "x",
                "CredentialSid": credential,
            },
        )
        assert response.status_code == 400
        assert listed(client, account, service_sid) == []


class TestCreateBindingAccess:
    FORM = {"Identity": "alice", "BindingType": "apn", "Address": "x"}

    def test_unknown_service(self, client, account):
        response = post_binding(client, account, UNKNOWN_SERVICE, self.FORM)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{UNKNOWN_SERVICE}/Bindings")

    def test_deleted_service(self, client, account, service_sid):
        assert client.delete(f"/v1/Services/{service_sid}", auth=account.auth).status_code == 204
        response = post_binding(client, account, service_sid, self.FORM)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings")

    @pytest.mark.parametrize(
        "service_sid",
        [
            "IS" + "X" * 32,
            "IS123",
            "IS" + "a" * 33,
            "BS" + "a" * 32,
            "is" + "a" * 32,
            "IS" + "a" * 31 + "g",
        ],
    )
    @pytest.mark.parametrize("authenticated", [True, False])
    def test_malformed_service_sid_is_not_found_even_without_credentials(
        self, client, account, service_sid, authenticated
    ):
        response = client.post(
            bindings_path(service_sid),
            data=self.FORM,
            auth=account.auth if authenticated else None,
        )
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings")

    def test_service_of_another_account(self, client, account, other_account):
        theirs = make_service(client, other_account)["sid"]
        response = post_binding(client, account, theirs, self.FORM)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{theirs}/Bindings")
        assert listed(client, other_account, theirs) == []

    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "Bearer abc",
            "Basic !!!not-base64!!!",
            "Basic bm8tY29sb24=",  # "no-colon"
        ],
    )
    def test_missing_or_malformed_credentials(self, client, account, service_sid, authorization):
        headers = {} if authorization is None else {"authorization": authorization}
        response = client.post(bindings_path(service_sid), data=self.FORM, headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"].startswith("Basic ")
        assert listed(client, account, service_sid) == []

    def test_wrong_token(self, client, account, other_account, service_sid):
        for auth in [
            (account.sid, "wrong"),
            (account.sid, other_account.auth_token),
            (other_account.sid, account.auth_token),
            ("AC" + "0" * 32, account.auth_token),
        ]:
            response = client.post(bindings_path(service_sid), data=self.FORM, auth=auth)
            assert response.status_code == 401, auth
            assert response.json() == UNAUTHENTICATED
            assert response.headers["www-authenticate"].startswith("Basic ")
        assert listed(client, account, service_sid) == []

    def test_unknown_service_without_credentials_is_unauthenticated(self, client):
        response = client.post(bindings_path(UNKNOWN_SERVICE), data=self.FORM)
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED


class TestCreateBindingBody:
    LIMIT = 300

    @pytest.fixture
    def small_client(self, settings: Settings, engine: Engine) -> Iterator[TestClient]:
        small = settings.model_copy(update={"max_body_bytes": self.LIMIT})
        with TestClient(create_app(small), raise_server_exceptions=False) as client:
            yield client

    def too_large(self) -> dict:
        return twilio_error(413, 20001, f"Request body exceeds the maximum of {self.LIMIT} bytes")

    def padded_body(self, size: int) -> bytes:
        body = b"Identity=alice&BindingType=apn&Address=x&Endpoint="
        return body + b"e" * (size - len(body))

    def test_body_at_the_limit_is_accepted(self, small_client, account):
        service_sid = make_service(small_client, account)["sid"]
        response = small_client.post(
            bindings_path(service_sid),
            content=self.padded_body(self.LIMIT),
            headers=FORM,
            auth=account.auth,
        )
        assert response.status_code == 201, response.text

    def test_declared_body_over_the_limit(self, small_client, account):
        service_sid = make_service(small_client, account)["sid"]
        response = small_client.post(
            bindings_path(service_sid),
            content=self.padded_body(self.LIMIT + 1),
            headers=FORM,
            auth=account.auth,
        )
        assert response.status_code == 413
        assert response.json() == self.too_large()
        assert listed(small_client, account, service_sid) == []

    def test_chunked_body_over_the_limit(self, small_client, account):
        service_sid = make_service(small_client, account)["sid"]
        body = self.padded_body(self.LIMIT + 100)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 64):
                yield body[start : start + 64]

        response = small_client.post(
            bindings_path(service_sid), content=chunks(), headers=FORM, auth=account.auth
        )
        assert response.status_code == 413
        assert response.json() == self.too_large()
        assert listed(small_client, account, service_sid) == []

    def test_multipart_body_over_the_limit(self, small_client, account):
        service_sid = make_service(small_client, account)["sid"]
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="Identity"\r\n\r\n'
            f"{'i' * self.LIMIT}\r\n--{boundary}--\r\n"
        )
        response = small_client.post(
            bindings_path(service_sid),
            content=body.encode(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            auth=account.auth,
        )
        assert response.status_code == 413
        assert response.json() == self.too_large()
        assert listed(small_client, account, service_sid) == []

    @pytest.mark.parametrize(
        "body",
        [
            b"\x00\x01\x02garbage{{}}",
            b'{"Identity": "alice", "BindingType": "apn", "Address": "x"}',
            b"<xml><Identity>alice</Identity></xml>",
            b"&&&===&&",
        ],
    )
    def test_garbage_body(self, client, account, service_sid, body):
        response = client.post(
            bindings_path(service_sid), content=body, headers=FORM, auth=account.auth
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, "Missing required parameter Identity in the post body"
        )
        assert listed(client, account, service_sid) == []

    @pytest.mark.parametrize(
        "body",
        [
            b"Identity=\xff\xfe&BindingType=apn&Address=x",
            b"Identity=%FF%FE&BindingType=apn&Address=x",
            b"Identity=alice&BindingType=apn&Address=\xc3\x28",
        ],
        ids=["raw bytes", "percent-encoded", "truncated sequence"],
    )
    def test_non_utf8_body_is_refused(self, client, account, service_sid, body):
        response = client.post(
            bindings_path(service_sid), content=body, headers=FORM, auth=account.auth
        )
        assert response.status_code == 400, response.text
        error = response.json()
        assert error == twilio_error(400, 20001, error["message"])
        assert listed(client, account, service_sid) == []

    @pytest.mark.parametrize("name", ["Identity", "Address", "Tag", "Endpoint"])
    def test_nul_character_is_refused(self, client, account, service_sid, name):
        # PostgreSQL cannot store NUL in text: refuse it everywhere, never a 500.
        form = {"Identity": "alice", "BindingType": "apn", "Address": "x", name: "a\x00b"}
        response = post_binding(client, account, service_sid, form)
        assert_invalid(response, name)
        assert listed(client, account, service_sid) == []

    def test_malformed_multipart_body(self, client, account, service_sid):
        response = client.post(
            bindings_path(service_sid),
            content=b"--nope\r\nthis is not multipart",
            headers={"content-type": "multipart/form-data; boundary=other"},
            auth=account.auth,
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == 20001
        assert listed(client, account, service_sid) == []


class TestCreateBindingUpsert:
    def test_same_identity_type_and_address_updates_in_place(
        self, client, engine, account, service_sid
    ):
        credential = make_credential(client, account)["sid"]
        first = make_binding(
            client,
            account,
            service_sid,
            Tag=["a", "b"],
            CredentialSid=credential,
            NotificationProtocolVersion="9",
        )
        past = datetime(2020, 1, 2, 3, 4, 5)
        backdate(engine, first["sid"], past)
        second = make_binding(client, account, service_sid, Tag=["c"])
        assert second["sid"] == first["sid"]
        assert second["date_created"] == "2020-01-02T03:04:05Z"
        assert parse_date(second["date_updated"]) > datetime.now(UTC) - timedelta(minutes=5)
        assert second == {
            **first,
            "tags": ["c"],
            "credential_sid": None,
            "notification_protocol_version": "3",
            "date_created": "2020-01-02T03:04:05Z",
            "date_updated": second["date_updated"],
        }
        assert listed(client, account, service_sid) == [second]
        assert fetch(client, account, service_sid, first["sid"]).json() == second
        # The tag index follows the replaced tags.
        assert listed(client, account, service_sid, Tag="a") == []
        assert listed(client, account, service_sid, Tag="c") == [second]

    def test_repost_gains_a_credential_and_tags(self, client, account, service_sid):
        first = make_binding(client, account, service_sid)
        credential = make_credential(client, account)["sid"]
        second = make_binding(client, account, service_sid, CredentialSid=credential, Tag=["x"])
        assert second["sid"] == first["sid"]
        assert second["credential_sid"] == credential
        assert second["tags"] == ["x"]
        assert len(listed(client, account, service_sid)) == 1

    def test_repost_takes_a_new_endpoint(self, client, account, service_sid):
        first = make_binding(client, account, service_sid, Endpoint="old")
        second = make_binding(client, account, service_sid, Endpoint="new")
        assert second["sid"] == first["sid"]
        assert second["endpoint"] == "new"
        # The new endpoint now names this binding.
        third = make_binding(client, account, service_sid, Address="moved", Endpoint="new")
        assert third["sid"] == first["sid"]
        assert third["address"] == "moved"
        # The old one names nothing any more.
        fourth = make_binding(client, account, service_sid, Address="other", Endpoint="old")
        assert fourth["sid"] != first["sid"]
        assert len(listed(client, account, service_sid)) == 2

    def test_repost_without_endpoint_keeps_the_endpoint(self, client, account, service_sid):
        first = make_binding(client, account, service_sid, Endpoint="device-1")
        second = make_binding(client, account, service_sid, Tag=["t"])
        assert second["sid"] == first["sid"]
        assert second["endpoint"] == "device-1"

    def test_same_endpoint_replaces_in_place(self, client, engine, account, service_sid):
        first = make_binding(
            client, account, service_sid, Identity="alice", Address="token-1", Endpoint="dev"
        )
        backdate(engine, first["sid"], datetime(2021, 5, 6, 7, 8, 9))
        second = make_binding(
            client,
            account,
            service_sid,
            Identity="bob",
            BindingType="fcm",
            Address="token-2",
            Endpoint="dev",
            Tag=["new"],
        )
        assert second["sid"] == first["sid"]
        assert second["date_created"] == "2021-05-06T07:08:09Z"
        assert second["date_updated"] != "2021-05-06T07:08:09Z"
        assert (second["identity"], second["binding_type"], second["address"]) == (
            "bob",
            "fcm",
            "token-2",
        )
        assert second["tags"] == ["new"]
        assert second["links"]["user"].endswith("/Users/bob")
        assert listed(client, account, service_sid) == [second]
        assert listed(client, account, service_sid, Identity="alice") == []

    def test_endpoint_move_onto_another_binding_deletes_that_binding(
        self, client, account, service_sid
    ):
        moving = make_binding(
            client, account, service_sid, Identity="alice", Address="a-1", Endpoint="dev"
        )
        taken = make_binding(client, account, service_sid, Identity="bob", Address="b-1")
        keep = make_binding(client, account, service_sid, Identity="carol", Address="c-1")
        moved = make_binding(
            client, account, service_sid, Identity="bob", Address="b-1", Endpoint="dev"
        )
        assert moved["sid"] == moving["sid"]
        assert (moved["identity"], moved["address"], moved["endpoint"]) == ("bob", "b-1", "dev")
        assert fetch(client, account, service_sid, taken["sid"]).status_code == 404
        assert [b["sid"] for b in listed(client, account, service_sid)] == [
            moving["sid"],
            keep["sid"],
        ]

    def test_same_address_with_another_identity_is_another_binding(
        self, client, account, service_sid
    ):
        alice = make_binding(client, account, service_sid, Identity="alice", Address="shared")
        bob = make_binding(client, account, service_sid, Identity="bob", Address="shared")
        assert alice["sid"] != bob["sid"]
        assert listed(client, account, service_sid) == [alice, bob]

    def test_same_address_with_another_type_is_another_binding(self, client, account, service_sid):
        apn = make_binding(client, account, service_sid, BindingType="apn", Address="shared")
        gcm = make_binding(client, account, service_sid, BindingType="gcm", Address="shared")
        assert apn["sid"] != gcm["sid"]
        assert listed(client, account, service_sid) == [apn, gcm]

    def test_same_binding_in_another_service_is_another_binding(self, client, account, service_sid):
        other_sid = make_service(client, account)["sid"]
        here = make_binding(client, account, service_sid, Endpoint="dev")
        there = make_binding(client, account, other_sid, Endpoint="dev")
        assert here["sid"] != there["sid"]
        assert there["service_sid"] == other_sid
        assert listed(client, account, service_sid) == [here]
        assert listed(client, account, other_sid) == [there]


class TestCreateBindingIdentityLimit:
    def test_twenty_first_binding_is_refused(self, client, account, service_sid):
        twenty = fill_identity(client, account, service_sid)
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "addr-20"},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, limit_message("alice"))
        assert "maximum of 20 Bindings" in response.json()["message"]
        assert listed(client, account, service_sid) == twenty
        # Another type or an Endpoint does not make room either.
        for extra in (
            {"BindingType": "gcm", "Address": "addr-0"},
            {"BindingType": "apn", "Address": "addr-21", "Endpoint": "fresh"},
        ):
            response = post_binding(client, account, service_sid, {"Identity": "alice", **extra})
            assert response.status_code == 400
            assert response.json() == twilio_error(400, 20001, limit_message("alice"))
        assert listed(client, account, service_sid) == twenty

    def test_reposting_one_of_the_twenty_updates_in_place(self, client, account, service_sid):
        twenty = fill_identity(client, account, service_sid)
        again = make_binding(client, account, service_sid, Address="addr-7", Tag=["again"])
        assert again["sid"] == twenty[7]["sid"]
        assert again["tags"] == ["again"]
        assert len(listed(client, account, service_sid)) == 20

    def test_endpoint_update_within_a_full_identity(self, client, account, service_sid):
        first = make_binding(client, account, service_sid, Address="addr-0", Endpoint="dev")
        rest = [
            make_binding(client, account, service_sid, Address=f"addr-{i}") for i in range(1, 20)
        ]
        moved = make_binding(client, account, service_sid, Address="addr-new", Endpoint="dev")
        assert moved["sid"] == first["sid"]
        assert moved["address"] == "addr-new"
        assert listed(client, account, service_sid) == [moved, *rest]

    def test_other_identities_and_services_are_unaffected(self, client, account, service_sid):
        fill_identity(client, account, service_sid)
        bob = make_binding(client, account, service_sid, Identity="bob", Address="addr-20")
        assert bob["identity"] == "bob"
        other_sid = make_service(client, account)["sid"]
        elsewhere = make_binding(client, account, other_sid, Identity="alice", Address="addr-20")
        assert elsewhere["service_sid"] == other_sid
        assert len(listed(client, account, service_sid, Identity="alice")) == 20

    def test_endpoint_move_into_a_full_identity_is_refused(self, client, account, service_sid):
        fill_identity(client, account, service_sid, identity="alice")
        bob = make_binding(
            client, account, service_sid, Identity="bob", Address="b-1", Endpoint="dev"
        )
        before = listed(client, account, service_sid)
        response = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "b-1", "Endpoint": "dev"},
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, limit_message("alice"))
        assert fetch(client, account, service_sid, bob["sid"]).json() == bob
        assert listed(client, account, service_sid) == before

    def test_endpoint_move_onto_a_binding_of_a_full_identity(self, client, account, service_sid):
        twenty = fill_identity(client, account, service_sid, identity="alice")
        bob = make_binding(
            client, account, service_sid, Identity="bob", Address="b-1", Endpoint="dev"
        )
        # Takes the place of alice's addr-3: alice still has 20, bob has none.
        moved = make_binding(
            client, account, service_sid, Identity="alice", Address="addr-3", Endpoint="dev"
        )
        assert moved["sid"] == bob["sid"]
        alice = listed(client, account, service_sid, Identity="alice")
        assert len(alice) == 20
        assert twenty[3]["sid"] not in {b["sid"] for b in alice}
        assert listed(client, account, service_sid, Identity="bob") == []

    def test_after_deleting_one_a_new_one_fits(self, client, account, service_sid):
        twenty = fill_identity(client, account, service_sid)
        deleted = client.delete(
            f"{bindings_path(service_sid)}/{twenty[0]['sid']}", auth=account.auth
        )
        assert deleted.status_code == 204
        new = make_binding(client, account, service_sid, Address="addr-20")
        assert listed(client, account, service_sid) == [*twenty[1:], new]
        refused = post_binding(
            client,
            account,
            service_sid,
            {"Identity": "alice", "BindingType": "apn", "Address": "addr-21"},
        )
        assert refused.status_code == 400
