"""The official `twilio` package (twilio-python 9) against a live notify-server.

What the SDK does on the wire is the contract: its serialisation (Tag=a&Tag=b, true/false,
YYYY-MM-DD), its date parsing (only `...Z` becomes a datetime), its paging (it follows
`meta.next_page_url` verbatim) and its error mapping (TwilioRestException from our body).
"""

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import text
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from twilio.rest.notify.v1.service import ServiceInstance
from twilio.rest.notify.v1.service.binding import BindingInstance

from tests.factories import make_account, make_api_key
from tests.sdk.conftest import RecordingHttpClient, sdk_client

NO_SUCH_CREDENTIAL = "CR" + "0" * 32
NO_SUCH_SERVICE = "IS" + "0" * 32
NO_SUCH_BINDING = "BS" + "0" * 32
CREDENTIAL_KEYS = {
    "sid",
    "account_sid",
    "friendly_name",
    "type",
    "sandbox",
    "date_created",
    "date_updated",
    "url",
}


def sid_of(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{prefix}[0-9a-f]{{32}}")


def rest_error(call, *args, **kwargs) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as caught:
        call(*args, **kwargs)
    return caught.value


def page_error(call, *args, **kwargs) -> tuple[int, dict]:
    """A failed list: twilio-python raises TwilioException("Unable to fetch page", response)."""
    with pytest.raises(TwilioException) as caught:
        call(*args, **kwargs)
    _, response = caught.value.args
    return response.status_code, json.loads(response.text)


def assert_error(error: TwilioRestException, status: int, code: int, message: str) -> None:
    """The SDK built the exception from our body: `<what failed>: <our message>`."""
    assert (error.status, error.code) == (status, code)
    assert error.msg.split(": ", 1)[1] == message


def error_body(status: int, code: int, message: str) -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def not_found(path: str) -> str:
    return f"The requested resource {path} was not found"


def assert_recent_utc(value: datetime) -> None:
    # A datetime at all proves the wire format: the SDK leaves anything but ...Z a string.
    assert isinstance(value, datetime)
    assert value.tzinfo == UTC
    assert abs(datetime.now(UTC) - value) < timedelta(minutes=5)


def last_json(wire: RecordingHttpClient) -> dict:
    return json.loads(wire.last.text)


def make_sdk_service(sdk: Client, **fields) -> ServiceInstance:
    return sdk.notify.v1.services.create(**fields)


def make_sdk_binding(sdk: Client, service_sid: str, **fields) -> BindingInstance:
    form = {"identity": "alice", "binding_type": "apn", "address": "token-1", **fields}
    return sdk.notify.v1.services(service_sid).bindings.create(**form)


class TestCreateService:
    def test_defaults(self, sdk, wire, server, account):
        service = make_sdk_service(sdk, friendly_name="sdk service")

        assert sid_of("IS").fullmatch(service.sid)
        assert service.account_sid == account.sid
        assert service.friendly_name == "sdk service"
        assert service.default_apn_notification_protocol_version == "3"
        assert service.default_gcm_notification_protocol_version == "3"
        assert service.default_fcm_notification_protocol_version == "3"
        assert service.default_alexa_notification_protocol_version == "3"
        assert service.log_enabled is True
        assert service.delivery_callback_enabled is False
        assert service.delivery_callback_url is None
        assert service.apn_credential_sid is None
        assert service.messaging_service_sid is None
        assert_recent_utc(service.date_created)
        assert service.date_updated == service.date_created
        url = f"{server.base_url}/v1/Services/{service.sid}"
        assert service.url == url
        assert service.links == {
            "bindings": f"{url}/Bindings",
            "notifications": f"{url}/Notifications",
            "segments": f"{url}/Segments",
            "users": f"{url}/Users",
        }
        assert wire.last.status == 201

    def test_every_field_is_sent_and_echoed(self, sdk):
        apn = sdk.notify.v1.credentials.create(type="apn")
        fcm = sdk.notify.v1.credentials.create(type="fcm", secret="s")
        messaging = "MG" + "a" * 32

        service = make_sdk_service(
            sdk,
            friendly_name="full",
            apn_credential_sid=apn.sid,
            fcm_credential_sid=fcm.sid,
            messaging_service_sid=messaging,
            facebook_messenger_page_id="page-1",
            default_apn_notification_protocol_version="4",
            default_fcm_notification_protocol_version="5",
            log_enabled=False,
            alexa_skill_id="skill-1",
            delivery_callback_url="https://example.com/callback",
            delivery_callback_enabled=True,
        )

        assert service.apn_credential_sid == apn.sid
        assert service.fcm_credential_sid == fcm.sid
        assert service.gcm_credential_sid is None
        assert service.messaging_service_sid == messaging
        assert service.facebook_messenger_page_id == "page-1"
        assert service.default_apn_notification_protocol_version == "4"
        assert service.default_fcm_notification_protocol_version == "5"
        assert service.default_gcm_notification_protocol_version == "3"
        assert service.log_enabled is False
        assert service.alexa_skill_id == "skill-1"
        assert service.delivery_callback_url == "https://example.com/callback"
        assert service.delivery_callback_enabled is True

    def test_unknown_credential_is_400(self, sdk, wire):
        error = rest_error(make_sdk_service, sdk, apn_credential_sid=NO_SUCH_CREDENTIAL)
        message = (
            "Parameter 'ApnCredentialSid' is invalid:"
            f" Credential {NO_SUCH_CREDENTIAL} was not found"
        )
        assert_error(error, 400, 20001, message)
        assert last_json(wire) == error_body(400, 20001, message)
        assert sdk.notify.v1.services.list() == []

    def test_credential_of_another_account_is_400(self, sdk, server, engine):
        other = make_account(engine)
        theirs = sdk_client(server, other.sid, other.auth_token).notify.v1.credentials.create(
            type="gcm"
        )
        error = rest_error(make_sdk_service, sdk, gcm_credential_sid=theirs.sid)
        assert_error(
            error,
            400,
            20001,
            f"Parameter 'GcmCredentialSid' is invalid: Credential {theirs.sid} was not found",
        )

    def test_invalid_callback_url_is_400(self, sdk):
        error = rest_error(make_sdk_service, sdk, delivery_callback_url="not a url")
        assert (error.status, error.code) == (400, 20001)
        assert error.msg.split(": ", 1)[1].startswith("Parameter 'DeliveryCallbackUrl' is invalid")

    def test_invalid_boolean_is_400(self, sdk):
        # The SDK passes a string through lower-cased.
        error = rest_error(make_sdk_service, sdk, log_enabled="maybe")
        assert (error.status, error.code) == (400, 20001)
        assert error.msg.split(": ", 1)[1].startswith("Parameter 'LogEnabled' is invalid")


class TestFetchService:
    def test_fetch_returns_what_create_returned(self, sdk, wire):
        created = make_sdk_service(sdk, friendly_name="fetch me")
        created_body = last_json(wire)

        fetched = sdk.notify.v1.services(created.sid).fetch()

        assert wire.last.status == 200
        assert last_json(wire) == created_body
        assert fetched.sid == created.sid
        assert fetched.date_created == created.date_created
        assert fetched.friendly_name == "fetch me"

    def test_unknown_service_is_404(self, sdk, wire):
        error = rest_error(sdk.notify.v1.services(NO_SUCH_SERVICE).fetch)
        message = not_found(f"/Services/{NO_SUCH_SERVICE}")
        assert_error(error, 404, 20404, message)
        assert last_json(wire) == error_body(404, 20404, message)

    def test_service_of_another_account_is_404(self, sdk, server, engine):
        other = make_account(engine)
        theirs = make_sdk_service(sdk_client(server, other.sid, other.auth_token))
        error = rest_error(sdk.notify.v1.services(theirs.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Services/{theirs.sid}"))


class TestUpdateService:
    def test_only_given_fields_change(self, sdk, wire):
        created = make_sdk_service(sdk, friendly_name="before", alexa_skill_id="skill")
        before = last_json(wire)

        updated = sdk.notify.v1.services(created.sid).update(friendly_name="after")
        after = last_json(wire)

        assert wire.last.status == 200
        assert updated.friendly_name == "after"
        assert updated.date_created == created.date_created
        assert updated.date_updated >= created.date_updated
        unchanged = {k: v for k, v in after.items() if k not in ("friendly_name", "date_updated")}
        assert unchanged == {
            k: v for k, v in before.items() if k not in ("friendly_name", "date_updated")
        }

        updated = sdk.notify.v1.services(created.sid).update(log_enabled=False)
        assert updated.log_enabled is False
        assert updated.friendly_name == "after"
        assert updated.alexa_skill_id == "skill"

        fetched = sdk.notify.v1.services(created.sid).fetch()
        assert (fetched.friendly_name, fetched.log_enabled) == ("after", False)

    def test_blank_protocol_version_resets_to_3(self, sdk):
        created = make_sdk_service(sdk, default_gcm_notification_protocol_version="7")
        assert created.default_gcm_notification_protocol_version == "7"

        updated = sdk.notify.v1.services(created.sid).update(
            default_gcm_notification_protocol_version=""
        )

        assert updated.default_gcm_notification_protocol_version == "3"

    def test_unknown_service_is_404(self, sdk):
        error = rest_error(sdk.notify.v1.services(NO_SUCH_SERVICE).update, friendly_name="x")
        assert_error(error, 404, 20404, not_found(f"/Services/{NO_SUCH_SERVICE}"))

    def test_invalid_field_changes_nothing(self, sdk):
        created = make_sdk_service(sdk, friendly_name="keep")
        error = rest_error(
            sdk.notify.v1.services(created.sid).update,
            friendly_name="lost",
            messaging_service_sid="MG-not-a-sid",
        )
        assert (error.status, error.code) == (400, 20001)
        assert error.msg.split(": ", 1)[1].startswith("Parameter 'MessagingServiceSid' is invalid")
        assert sdk.notify.v1.services(created.sid).fetch().friendly_name == "keep"


class TestListServices:
    def test_lists_own_services_in_creation_order(self, sdk, server, engine):
        sids = [make_sdk_service(sdk, friendly_name=name).sid for name in ("a", "b", "a")]
        other = make_account(engine)
        make_sdk_service(sdk_client(server, other.sid, other.auth_token), friendly_name="a")

        assert [s.sid for s in sdk.notify.v1.services.list()] == sids
        assert [s.sid for s in sdk.notify.v1.services.list(friendly_name="a")] == [
            sids[0],
            sids[2],
        ]
        assert sdk.notify.v1.services.list(friendly_name="nobody") == []

    def test_sdk_follows_pages(self, sdk, wire):
        sids = [make_sdk_service(sdk).sid for _ in range(5)]
        wire.exchanges.clear()

        assert [s.sid for s in sdk.notify.v1.services.list(page_size=2)] == sids
        assert [e.status for e in wire.exchanges] == [200, 200, 200]


class TestDeleteService:
    def test_delete_then_gone(self, sdk, wire):
        service = make_sdk_service(sdk)
        binding = make_sdk_binding(sdk, service.sid)

        assert sdk.notify.v1.services(service.sid).delete() is True
        assert (wire.last.status, wire.last.text) == (204, "")

        error = rest_error(sdk.notify.v1.services(service.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Services/{service.sid}"))
        error = rest_error(sdk.notify.v1.services(service.sid).bindings(binding.sid).fetch)
        assert_error(
            error, 404, 20404, not_found(f"/Services/{service.sid}/Bindings/{binding.sid}")
        )
        assert sdk.notify.v1.services.list() == []

    def test_delete_twice_is_404(self, sdk):
        service = make_sdk_service(sdk)
        sdk.notify.v1.services(service.sid).delete()
        error = rest_error(sdk.notify.v1.services(service.sid).delete)
        assert_error(error, 404, 20404, not_found(f"/Services/{service.sid}"))

    def test_service_of_another_account_survives(self, sdk, server, engine):
        other = make_account(engine)
        theirs_client = sdk_client(server, other.sid, other.auth_token)
        theirs = make_sdk_service(theirs_client)
        error = rest_error(sdk.notify.v1.services(theirs.sid).delete)
        assert_error(error, 404, 20404, not_found(f"/Services/{theirs.sid}"))
        assert theirs_client.notify.v1.services(theirs.sid).fetch().sid == theirs.sid


class TestCreateCredential:
    def test_apn_secrets_are_write_only(self, sdk, wire, server, account, engine):
        credential = sdk.notify.v1.credentials.create(
            type="apn",
            friendly_name="ios",
            certificate="-----BEGIN CERTIFICATE----- cert-body",
            private_key="-----BEGIN RSA PRIVATE KEY----- key-body",
            sandbox=True,
        )

        assert wire.last.status == 201
        body = last_json(wire)
        assert set(body) == CREDENTIAL_KEYS
        assert "cert-body" not in wire.last.text
        assert "key-body" not in wire.last.text
        assert not hasattr(credential, "certificate")
        assert not hasattr(credential, "private_key")
        assert sid_of("CR").fullmatch(credential.sid)
        assert credential.account_sid == account.sid
        assert credential.friendly_name == "ios"
        assert credential.type == "apn"
        assert credential.sandbox == "True"
        assert_recent_utc(credential.date_created)
        assert credential.url == f"{server.base_url}/v1/Credentials/{credential.sid}"
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT encrypted_secrets FROM credentials WHERE sid = :sid"),
                {"sid": credential.sid},
            ).scalar_one()
        assert stored and "cert-body" not in stored and "key-body" not in stored

    def test_apn_sandbox_defaults_to_false_and_gcm_has_none(self, sdk, wire):
        assert sdk.notify.v1.credentials.create(type="apn").sandbox == "False"
        gcm = sdk.notify.v1.credentials.create(type="gcm", api_key="gcm-api-key")
        assert gcm.sandbox is None
        assert last_json(wire)["sandbox"] is None
        assert "gcm-api-key" not in wire.last.text
        fcm = sdk.notify.v1.credentials.create(type="fcm", secret="fcm-secret")
        assert (fcm.type, fcm.sandbox) == ("fcm", None)
        assert "fcm-secret" not in wire.last.text

    def test_missing_type_is_400(self, sdk, wire):
        error = rest_error(sdk.notify.v1.credentials.create, type=values.unset)
        message = "Missing required parameter Type in the post body"
        assert_error(error, 400, 20001, message)
        assert last_json(wire) == error_body(400, 20001, message)
        assert sdk.notify.v1.credentials.list() == []

    def test_invalid_type_is_400(self, sdk):
        error = rest_error(sdk.notify.v1.credentials.create, type="webpush")
        assert (error.status, error.code) == (400, 20001)
        assert error.msg.split(": ", 1)[1].startswith("Parameter 'Type' is invalid")


class TestFetchCredential:
    def test_fetch_returns_what_create_returned(self, sdk, wire):
        created = sdk.notify.v1.credentials.create(type="apn", certificate="c", sandbox=True)
        created_body = last_json(wire)

        fetched = sdk.notify.v1.credentials(created.sid).fetch()

        assert last_json(wire) == created_body
        assert set(created_body) == CREDENTIAL_KEYS
        assert (fetched.sid, fetched.sandbox) == (created.sid, "True")

    def test_unknown_and_foreign_credentials_are_404(self, sdk, server, engine):
        error = rest_error(sdk.notify.v1.credentials(NO_SUCH_CREDENTIAL).fetch)
        assert_error(error, 404, 20404, not_found(f"/Credentials/{NO_SUCH_CREDENTIAL}"))

        other = make_account(engine)
        theirs = sdk_client(server, other.sid, other.auth_token).notify.v1.credentials.create(
            type="fcm"
        )
        error = rest_error(sdk.notify.v1.credentials(theirs.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Credentials/{theirs.sid}"))


class TestUpdateCredential:
    def test_update(self, sdk, wire):
        created = sdk.notify.v1.credentials.create(type="apn", friendly_name="old", sandbox=True)

        updated = sdk.notify.v1.credentials(created.sid).update(
            friendly_name="new", sandbox=False, certificate="rotated-cert"
        )

        assert wire.last.status == 200
        assert set(last_json(wire)) == CREDENTIAL_KEYS
        assert "rotated-cert" not in wire.last.text
        assert (updated.friendly_name, updated.sandbox, updated.type) == ("new", "False", "apn")
        assert updated.date_created == created.date_created
        fetched = sdk.notify.v1.credentials(created.sid).fetch()
        assert (fetched.friendly_name, fetched.sandbox) == ("new", "False")

    def test_unknown_credential_is_404(self, sdk):
        error = rest_error(sdk.notify.v1.credentials(NO_SUCH_CREDENTIAL).update, friendly_name="x")
        assert_error(error, 404, 20404, not_found(f"/Credentials/{NO_SUCH_CREDENTIAL}"))


class TestListCredentials:
    def test_sdk_follows_pages(self, sdk, wire, server, engine):
        sids = [sdk.notify.v1.credentials.create(type=t).sid for t in ("apn", "gcm", "fcm")]
        other = make_account(engine)
        sdk_client(server, other.sid, other.auth_token).notify.v1.credentials.create(type="apn")
        wire.exchanges.clear()

        listed = sdk.notify.v1.credentials.list(page_size=2)

        assert [c.sid for c in listed] == sids
        assert len(wire.exchanges) == 2
        for credential in listed:
            assert not hasattr(credential, "secret")
        assert all(set(c) == CREDENTIAL_KEYS for c in json.loads(wire.last.text)["credentials"])


class TestDeleteCredential:
    def test_delete_clears_it_from_services_and_bindings(self, sdk, wire):
        credential = sdk.notify.v1.credentials.create(type="apn")
        service = make_sdk_service(sdk, apn_credential_sid=credential.sid)
        binding = make_sdk_binding(sdk, service.sid, credential_sid=credential.sid)
        assert binding.credential_sid == credential.sid

        assert sdk.notify.v1.credentials(credential.sid).delete() is True
        assert wire.last.status == 204

        error = rest_error(sdk.notify.v1.credentials(credential.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Credentials/{credential.sid}"))
        assert sdk.notify.v1.services(service.sid).fetch().apn_credential_sid is None
        refetched = sdk.notify.v1.services(service.sid).bindings(binding.sid).fetch()
        assert refetched.credential_sid is None
        error = rest_error(sdk.notify.v1.credentials(credential.sid).delete)
        assert_error(error, 404, 20404, not_found(f"/Credentials/{credential.sid}"))


class TestCreateBinding:
    def test_tags_go_as_repeated_parameter(self, sdk, wire, server, account):
        service = make_sdk_service(sdk)

        binding = make_sdk_binding(sdk, service.sid, tag=["a", "b"])

        # requests encodes the SDK's list as Tag=a&Tag=b.
        assert wire.last.data["Tag"] == ["a", "b"]
        assert wire.last.status == 201
        assert binding.tags == ["a", "b"]
        assert sid_of("BS").fullmatch(binding.sid)
        assert binding.account_sid == account.sid
        assert binding.service_sid == service.sid
        assert (binding.identity, binding.binding_type, binding.address) == (
            "alice",
            "apn",
            "token-1",
        )
        assert binding.credential_sid is None
        assert binding.endpoint is None
        assert binding.notification_protocol_version == "3"
        assert_recent_utc(binding.date_created)
        assert binding.date_updated == binding.date_created
        service_url = f"{server.base_url}/v1/Services/{service.sid}"
        assert binding.url == f"{service_url}/Bindings/{binding.sid}"
        assert binding.links == {"user": f"{service_url}/Users/alice"}

    def test_optional_fields(self, sdk):
        credential = sdk.notify.v1.credentials.create(type="fcm")
        service = make_sdk_service(sdk, default_fcm_notification_protocol_version="9")

        defaulted = make_sdk_binding(sdk, service.sid, binding_type="fcm", address="fcm-token")
        given = make_sdk_binding(
            sdk,
            service.sid,
            binding_type="fcm",
            address="fcm-token-2",
            credential_sid=credential.sid,
            notification_protocol_version="2",
            endpoint="device-7",
            tag=["x", "x", "all", "fcm", "y"],
        )
        sms = make_sdk_binding(sdk, service.sid, binding_type="sms", address="+15551234567")

        assert defaulted.notification_protocol_version == "9"
        assert given.credential_sid == credential.sid
        assert given.notification_protocol_version == "2"
        assert given.endpoint == "device-7"
        assert given.tags == ["x", "y"]
        assert sms.notification_protocol_version == "default"

    def test_blank_optional_fields_count_as_not_given(self, sdk):
        service = make_sdk_service(sdk)

        binding = make_sdk_binding(
            sdk, service.sid, endpoint="", notification_protocol_version="", credential_sid=""
        )

        assert (binding.endpoint, binding.credential_sid) == (None, None)
        assert binding.notification_protocol_version == "3"

    def test_same_binding_again_is_updated_in_place(self, sdk):
        service = make_sdk_service(sdk)
        first = make_sdk_binding(sdk, service.sid, tag=["old"])

        again = make_sdk_binding(sdk, service.sid, tag=["new"])

        assert again.sid == first.sid
        assert again.date_created == first.date_created
        assert again.tags == ["new"]
        listed = sdk.notify.v1.services(service.sid).bindings.list()
        assert [(b.sid, b.tags) for b in listed] == [(first.sid, ["new"])]

    def test_missing_identity_is_400(self, sdk, wire):
        service = make_sdk_service(sdk)
        error = rest_error(make_sdk_binding, sdk, service.sid, identity=values.unset)
        message = "Missing required parameter Identity in the post body"
        assert_error(error, 400, 20001, message)
        assert last_json(wire) == error_body(400, 20001, message)

    @pytest.mark.parametrize(
        ("fields", "parameter"),
        [
            ({"binding_type": "webpush"}, "BindingType"),
            ({"binding_type": "sms", "address": "555-1234"}, "Address"),
            ({"credential_sid": NO_SUCH_CREDENTIAL}, "CredentialSid"),
            ({"credential_sid": "CRnot-a-sid"}, "CredentialSid"),
            ({"tag": [f"t{i}" for i in range(21)]}, "Tag"),
        ],
    )
    def test_invalid_parameter_is_400(self, sdk, fields, parameter):
        service = make_sdk_service(sdk)
        error = rest_error(make_sdk_binding, sdk, service.sid, **fields)
        assert (error.status, error.code) == (400, 20001)
        assert error.msg.split(": ", 1)[1].startswith(f"Parameter '{parameter}' is invalid")
        assert sdk.notify.v1.services(service.sid).bindings.list() == []

    def test_21st_binding_for_an_identity_is_400(self, sdk, wire):
        service = make_sdk_service(sdk)
        bindings = sdk.notify.v1.services(service.sid).bindings
        sids = [make_sdk_binding(sdk, service.sid, address=f"token-{i}").sid for i in range(20)]

        error = rest_error(make_sdk_binding, sdk, service.sid, address="token-20")

        assert (error.status, error.code) == (400, 20001)
        assert "maximum of 20 Bindings" in error.msg
        body = last_json(wire)
        assert body == error_body(400, 20001, body["message"])
        assert [b.sid for b in bindings.list(identity=["alice"])] == sids
        # Updating one in place does not count; another identity has its own 20.
        assert make_sdk_binding(sdk, service.sid, address="token-3", tag=["t"]).sid == sids[3]
        make_sdk_binding(sdk, service.sid, identity="bob", address="token-20")

    def test_unknown_service_is_404(self, sdk):
        error = rest_error(make_sdk_binding, sdk, NO_SUCH_SERVICE)
        assert_error(error, 404, 20404, not_found(f"/Services/{NO_SUCH_SERVICE}/Bindings"))


class TestFetchBinding:
    def test_fetch_returns_what_create_returned(self, sdk, wire):
        service = make_sdk_service(sdk)
        created = make_sdk_binding(sdk, service.sid, tag=["t"])
        created_body = last_json(wire)

        fetched = sdk.notify.v1.services(service.sid).bindings(created.sid).fetch()

        assert wire.last.status == 200
        assert last_json(wire) == created_body
        assert_recent_utc(fetched.date_created)
        assert fetched.date_created == created.date_created
        assert (fetched.sid, fetched.tags) == (created.sid, ["t"])

    def test_unknown_binding_is_404(self, sdk, wire):
        service = make_sdk_service(sdk)
        error = rest_error(sdk.notify.v1.services(service.sid).bindings(NO_SUCH_BINDING).fetch)
        message = not_found(f"/Services/{service.sid}/Bindings/{NO_SUCH_BINDING}")
        assert_error(error, 404, 20404, message)
        assert last_json(wire) == error_body(404, 20404, message)

    def test_binding_of_another_service_is_404(self, sdk):
        first, second = make_sdk_service(sdk), make_sdk_service(sdk)
        binding = make_sdk_binding(sdk, first.sid)
        error = rest_error(sdk.notify.v1.services(second.sid).bindings(binding.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Services/{second.sid}/Bindings/{binding.sid}"))


class TestListBindings:
    def test_identity_filter_is_any_of(self, sdk):
        service = make_sdk_service(sdk)
        made = {
            (identity, address): make_sdk_binding(
                sdk, service.sid, identity=identity, address=address
            ).sid
            for identity, address in [("alice", "1"), ("bob", "2"), ("alice", "3"), ("carol", "4")]
        }
        bindings = sdk.notify.v1.services(service.sid).bindings

        listed = bindings.list(identity=["alice", "carol"])

        assert [b.sid for b in listed] == [
            made[("alice", "1")],
            made[("alice", "3")],
            made[("carol", "4")],
        ]
        assert bindings.list(identity=["nobody"]) == []

    def test_tag_filter_is_all_of(self, sdk):
        service = make_sdk_service(sdk)
        both = make_sdk_binding(sdk, service.sid, address="1", tag=["x", "y"]).sid
        only_x = make_sdk_binding(sdk, service.sid, address="2", tag=["x"]).sid
        gcm = make_sdk_binding(sdk, service.sid, address="3", binding_type="gcm", tag=["y"]).sid
        bindings = sdk.notify.v1.services(service.sid).bindings

        assert [b.sid for b in bindings.list(tag=["x", "y"])] == [both]
        assert [b.sid for b in bindings.list(tag=["x"])] == [both, only_x]
        assert [b.sid for b in bindings.list(tag=["gcm"])] == [gcm]
        assert [b.sid for b in bindings.list(tag=["y", "apn"])] == [both]
        assert [b.sid for b in bindings.list(tag=["all"])] == [both, only_x, gcm]
        assert bindings.list(tag=["x", "nothing"]) == []

    def test_more_than_5_tag_filters_is_400(self, sdk):
        service = make_sdk_service(sdk)
        status, body = page_error(
            sdk.notify.v1.services(service.sid).bindings.list, tag=[f"t{i}" for i in range(6)]
        )
        assert (status, body) == (400, error_body(400, 20001, body["message"]))
        assert body["message"].startswith("Parameter 'Tag' is invalid")

    def test_date_filters_are_inclusive_days(self, sdk, wire):
        service = make_sdk_service(sdk)
        sids = [make_sdk_binding(sdk, service.sid, address=str(i)).sid for i in range(2)]
        created_on = sdk.notify.v1.services(service.sid).bindings(sids[0]).fetch().date_created
        today = created_on.date()
        day = timedelta(days=1)
        bindings = sdk.notify.v1.services(service.sid).bindings

        assert [b.sid for b in bindings.list(start_date=today, end_date=today)] == sids
        assert wire.last.params["StartDate"] == today.isoformat()
        assert [b.sid for b in bindings.list(start_date=today - day)] == sids
        assert [b.sid for b in bindings.list(end_date=today + day)] == sids
        assert bindings.list(start_date=today + day) == []
        assert bindings.list(end_date=today - day) == []

    def test_sdk_follows_next_page_url(self, sdk, wire, server):
        service = make_sdk_service(sdk)
        sids = [make_sdk_binding(sdk, service.sid, address=f"t{i}").sid for i in range(7)]
        bindings = sdk.notify.v1.services(service.sid).bindings
        wire.exchanges.clear()

        listed = bindings.list(page_size=2)

        assert [b.sid for b in listed] == sids
        pages = wire.exchanges
        assert [(e.method, e.status) for e in pages] == [("GET", 200)] * 4
        assert pages[0].params["PageSize"] == 2
        for page in pages[1:]:
            # The SDK requested exactly what we put in meta.next_page_url.
            assert page.url.startswith(f"{server.base_url}/v1/Services/{service.sid}/Bindings?")
            assert parse_qs(urlsplit(page.url).query)["PageSize"] == ["2"]
            assert "PageToken" in parse_qs(urlsplit(page.url).query)
        assert json.loads(pages[-1].text)["meta"]["next_page_url"] is None

    def test_stream_yields_every_binding_once(self, sdk):
        service = make_sdk_service(sdk)
        sids = [make_sdk_binding(sdk, service.sid, address=f"t{i}").sid for i in range(7)]

        streamed = [b.sid for b in sdk.notify.v1.services(service.sid).bindings.stream(page_size=2)]

        assert streamed == sids

    def test_pages_keep_the_filters(self, sdk, wire):
        service = make_sdk_service(sdk)
        alice = []
        for i in range(8):
            identity = "bob" if i % 3 == 0 else "alice"
            binding = make_sdk_binding(sdk, service.sid, identity=identity, address=f"t{i}")
            if identity == "alice":
                alice.append(binding.sid)
        wire.exchanges.clear()

        listed = sdk.notify.v1.services(service.sid).bindings.list(identity=["alice"], page_size=2)

        assert [b.sid for b in listed] == alice
        assert len(wire.exchanges) == 3
        for page in wire.exchanges[1:]:
            assert parse_qs(urlsplit(page.url).query)["Identity"] == ["alice"]

    def test_limit(self, sdk, wire):
        service = make_sdk_service(sdk)
        sids = [make_sdk_binding(sdk, service.sid, address=f"t{i}").sid for i in range(5)]
        wire.exchanges.clear()

        listed = sdk.notify.v1.services(service.sid).bindings.list(limit=3)

        assert [b.sid for b in listed] == sids[:3]
        assert len(wire.exchanges) == 1
        assert wire.last.params["PageSize"] == 3

    def test_unknown_service_is_404(self, sdk):
        status, body = page_error(sdk.notify.v1.services(NO_SUCH_SERVICE).bindings.list)
        message = not_found(f"/Services/{NO_SUCH_SERVICE}/Bindings")
        assert (status, body) == (404, error_body(404, 20404, message))


class TestDeleteBinding:
    def test_delete_then_gone(self, sdk, wire):
        service = make_sdk_service(sdk)
        kept = make_sdk_binding(sdk, service.sid, address="keep")
        doomed = make_sdk_binding(sdk, service.sid, address="doomed")
        bindings = sdk.notify.v1.services(service.sid).bindings

        assert bindings(doomed.sid).delete() is True
        assert (wire.last.status, wire.last.text) == (204, "")

        error = rest_error(bindings(doomed.sid).fetch)
        assert_error(error, 404, 20404, not_found(f"/Services/{service.sid}/Bindings/{doomed.sid}"))
        error = rest_error(bindings(doomed.sid).delete)
        assert_error(error, 404, 20404, not_found(f"/Services/{service.sid}/Bindings/{doomed.sid}"))
        assert [b.sid for b in bindings.list()] == [kept.sid]


class TestAuthentication:
    def test_api_key(self, sdk, server, account, engine):
        key_sid, secret = make_api_key(engine, account.sid)
        keyed = sdk_client(server, key_sid, secret, account.sid)

        service = make_sdk_service(keyed, friendly_name="via key")
        binding = make_sdk_binding(keyed, service.sid)

        assert service.account_sid == account.sid
        assert binding.account_sid == account.sid
        assert [s.sid for s in sdk.notify.v1.services.list()] == [service.sid]
        assert keyed.notify.v1.services(service.sid).bindings(binding.sid).fetch().sid == (
            binding.sid
        )

    def test_api_key_sees_only_its_account(self, sdk, server, engine):
        other = make_account(engine)
        key_sid, secret = make_api_key(engine, other.sid)
        mine = make_sdk_service(sdk)

        error = rest_error(
            sdk_client(server, key_sid, secret, other.sid).notify.v1.services(mine.sid).fetch
        )

        assert_error(error, 404, 20404, not_found(f"/Services/{mine.sid}"))

    @pytest.mark.parametrize("who", ["wrong token", "wrong key secret", "unknown account"])
    def test_bad_credentials_are_401(self, sdk, server, account, engine, who):
        key_sid, secret = make_api_key(engine, account.sid)
        username, password = {
            "wrong token": (account.sid, account.auth_token[:-1] + "x"),
            "wrong key secret": (key_sid, secret[:-1] + "x"),
            "unknown account": ("AC" + "0" * 32, account.auth_token),
        }[who]
        client = sdk_client(server, username, password, account.sid)

        error = rest_error(client.notify.v1.services.create, friendly_name="never")

        assert_error(error, 401, 20003, "Authenticate")
        body = json.loads(client.http_client.last.text)
        detail = body.pop("detail")
        assert isinstance(detail, str) and detail
        assert body == error_body(401, 20003, "Authenticate")
        status, body = page_error(client.notify.v1.services.list)
        assert (status, body["code"], body["message"]) == (401, 20003, "Authenticate")
        assert sdk.notify.v1.services.list() == []


class TestSeedExample:
    """The seed's curl call, byte for byte, through a plain HTTP client."""

    BODY = (
        "Tag=tag&Address=address&Endpoint=endpoint&Identity=24987039&BindingType=apn"
        "&CredentialSid={credential}&NotificationProtocolVersion=notification_protocol_version"
    )

    def post(self, server, account, service_sid: str, body: str) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/v1/Services/{service_sid}/Bindings",
            content=body.encode(),
            auth=account.auth,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def test_create_binding(self, sdk, server, account):
        service = make_sdk_service(sdk)
        credential = sdk.notify.v1.credentials.create(type="apn")

        response = self.post(
            server, account, service.sid, self.BODY.format(credential=credential.sid)
        )

        assert response.status_code == 201
        assert response.headers["content-type"] == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        for header in ("methods", "headers", "credentials"):
            assert response.headers[f"access-control-allow-{header}"]
        assert "access-control-expose-headers" in response.headers
        body = response.json()
        assert sid_of("BS").fullmatch(body["sid"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["date_created"])
        service_url = f"{server.base_url}/v1/Services/{service.sid}"
        assert body == {
            "sid": body["sid"],
            "url": f"{service_url}/Bindings/{body['sid']}",
            "tags": ["tag"],
            "links": {"user": f"{service_url}/Users/24987039"},
            "address": "address",
            "endpoint": "endpoint",
            "identity": "24987039",
            "account_sid": account.sid,
            "service_sid": service.sid,
            "binding_type": "apn",
            "date_created": body["date_created"],
            "date_updated": body["date_created"],
            "credential_sid": credential.sid,
            "notification_protocol_version": "notification_protocol_version",
        }
        fetched = httpx.get(body["url"], auth=account.auth)
        assert (fetched.status_code, fetched.json()) == (200, body)

    def test_placeholder_credential_is_400(self, sdk, server, account):
        service = make_sdk_service(sdk)
        placeholder = "CR" + "a" * 32

        response = self.post(server, account, service.sid, self.BODY.format(credential=placeholder))

        assert response.status_code == 400
        body = response.json()
        assert body == error_body(400, 20001, body["message"])
        assert body["message"].startswith("Parameter 'CredentialSid' is invalid")
        assert response.headers["access-control-allow-origin"] == "*"
        assert sdk.notify.v1.services(service.sid).bindings.list() == []
