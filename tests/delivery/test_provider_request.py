"""Each delivery's `provider_request` in the Deliveries listing (issue 11) is what the provider
received: the same notification delivered through the worker to the fake APNs, FCM and SMS
servers, and the listing's rendering compared with what they recorded, byte for byte. The log
channel (no credential) renders, and logs, the same request; no secret is ever shown.
Then provider_request itself, for what the end-to-end cases cannot reach."""

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from fastapi.testclient import TestClient

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.delivery.channels import CredentialSecrets, Job
from notify_server.delivery.rendering import fcm_body, provider_request
from tests.delivery.fake_apns import FakeApns, apns_certificate, ec_key_pem
from tests.delivery.fake_fcm import FakeFcm
from tests.delivery.fake_sms import FakeSms
from tests.delivery.test_fcm import private_key_pem
from tests.factories import Account, make_binding, make_credential, make_service

TOKEN_KEY = ec_key_pem()
BUNDLE_ID = "com.example.rendered"
APN_TOKEN = "ab" * 32
FCM_TOKEN = "fcm-registration-token-1"
GCM_TOKEN = "gcm-registration-token-1"
PHONE = "+15555550123"
SENDER = "+15005550006"
FINAL = ("sent", "failed")
CONTENT = {
    "Title": "Order shipped",
    "Body": "Your order 7 is on its way ✈",
    "Sound": "ping.aiff",
    "Action": "ORDER",
    "Priority": "high",
    "Ttl": "3600",
    "Data": json.dumps({"order": {"id": 7}, "kind": "receipt"}),
    "Apn": json.dumps({"aps": {"mutable-content": 1}, "order": {"status": "paid"}}),
    "Fcm": json.dumps({"notification": {"title": "FCM title", "color": "#ff0000"}}),
    "Gcm": json.dumps({"priority": "normal", "time_to_live": 60}),
    "Sms": json.dumps({"body": "SMS text", "media_urls": ["https://example.com/a.png"]}),
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeApns, FakeFcm, FakeSms]]:
    apns, fcm, sms = FakeApns().start(), FakeFcm().start(), FakeSms().start()
    yield apns, fcm, sms
    apns.stop()
    fcm.stop()
    sms.stop()


@pytest.fixture
def apns(fakes) -> FakeApns:
    fakes[0].reset()
    return fakes[0]


@pytest.fixture
def fcm(fakes) -> FakeFcm:
    fakes[1].reset()
    return fakes[1]


@pytest.fixture
def sms(fakes) -> FakeSms:
    fakes[2].reset()
    return fakes[2]


@pytest.fixture
def service_account(fcm: FakeFcm) -> dict[str, str]:
    account = {
        "type": "service_account",
        "project_id": "proj-rendered",
        "private_key_id": "kid-rendered",
        "private_key": private_key_pem(),
        "client_email": "firebase-adminsdk@proj-rendered.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    fcm.register(account)
    return account


@contextmanager
def running(settings: Settings, **update: Any) -> Iterator[TestClient]:
    """The app with its worker delivering."""
    app = create_app(settings.model_copy(update={"worker_poll_seconds": 0.05, **update}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def provider_settings(apns: FakeApns, fcm: FakeFcm, sms: FakeSms) -> dict[str, Any]:
    return {
        "apns_sandbox_url": apns.url,
        "apns_production_url": "http://127.0.0.1:9",  # never used: the credential is sandbox
        "fcm_url": fcm.url,
        "fcm_token_url": fcm.token_url,
        "sms_base_url": sms.url,
        "sms_account_sid": sms.account_sid,
        "sms_auth_token": sms.auth_token,
        "sms_from": SENDER,
    }


def bindings(client: TestClient, account: Account, service_sid: str) -> None:
    for binding_type, address in (
        ("apn", APN_TOKEN),
        ("fcm", FCM_TOKEN),
        ("gcm", GCM_TOKEN),
        ("sms", PHONE),
    ):
        make_binding(
            client, account, service_sid, Identity="alice", BindingType=binding_type,
            Address=address,
        )  # fmt: skip


def delivered(client: TestClient, account: Account, service_sid: str) -> dict[str, dict]:
    """Post CONTENT to alice; her deliveries by binding type, once all are final."""
    response = client.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={"Identity": "alice", **CONTENT},
        auth=account.auth,
    )
    assert response.status_code == 201, response.text
    path = f"/v1/Services/{service_sid}/Notifications/{response.json()['sid']}/Deliveries"
    deadline = time.monotonic() + 10
    while True:
        listing = client.get(path, auth=account.auth)
        assert listing.status_code == 200, listing.text
        rows = listing.json()["deliveries"]
        if len(rows) == 4 and all(row["status"] in FINAL for row in rows):
            return {row["binding_type"]: row for row in rows}
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def provider_service(client: TestClient, account: Account, sa: dict[str, str]) -> str:
    apn = make_credential(
        client, account, Type="apn", TokenKey=TOKEN_KEY, KeyId="KEY1234567", TeamId="TEAM123456",
        BundleId=BUNDLE_ID, Sandbox="true",
    )["sid"]  # fmt: skip
    fcm = make_credential(client, account, Type="fcm", ServiceAccount=json.dumps(sa))["sid"]
    return make_service(client, account, ApnCredentialSid=apn, FcmCredentialSid=fcm)["sid"]


class TestListDeliveriesProviderRequest:
    def test_the_rendering_is_what_each_provider_received(
        self, settings, engine, account, apns, fcm, sms, service_account
    ):
        with running(settings, **provider_settings(apns, fcm, sms)) as client:
            service_sid = provider_service(client, account, service_account)
            bindings(client, account, service_sid)
            rows = delivered(client, account, service_sid)
        assert {row["status"] for row in rows.values()} == {"sent"}, rows

        # APNs: the URL, every apns- header, the token's place, the payload's very bytes.
        rendered = rows["apn"]["provider_request"]
        [received] = apns.requests
        assert rendered["provider"] == rendered["channel"] == "apns"
        assert rendered["notes"] == []
        assert rendered["method"] == received.method == "POST"
        assert rendered["url"] == f"{apns.url}{received.path}"
        assert received.body == orjson.dumps(rendered["body"])
        wire = {k: v for k, v in received.headers.items() if k.startswith("apns-")}
        shown = {k: v for k, v in rendered["headers"].items() if k != "authorization"}
        assert shown == wire
        assert list(shown) == ["apns-id", "apns-push-type", "apns-priority", "apns-expiration",
                               "apns-topic"]  # fmt: skip
        assert wire["apns-topic"] == BUNDLE_ID
        assert received.headers["authorization"].startswith("bearer ey")
        assert rendered["headers"]["authorization"] == "bearer <provider token>"
        assert rendered["body"] == {
            "aps": {
                "alert": {"title": "Order shipped", "body": "Your order 7 is on its way ✈"},
                "sound": "ping.aiff",
                "category": "ORDER",
                "mutable-content": 1,
            },
            "order": {"id": 7, "status": "paid"},
            "kind": "receipt",
        }

        # FCM v1, for the fcm binding (the Fcm override) and the gcm one (the Gcm override).
        sends = {r.json()["message"]["token"]: r for r in fcm.sends}
        for binding_type, token in (("fcm", FCM_TOKEN), ("gcm", GCM_TOKEN)):
            rendered = rows[binding_type]["provider_request"]
            received = sends[token]
            assert rendered["provider"] == rendered["channel"] == "fcm"
            assert rendered["notes"] == []
            assert rendered["url"] == f"{fcm.url}{received.path}"
            assert received.path == "/v1/projects/proj-rendered/messages:send"
            assert received.body == fcm_body(rendered["body"])
            assert received.json() == rendered["body"]
            assert received.headers["content-type"] == rendered["headers"]["content-type"]
            assert received.headers["authorization"].startswith("Bearer ya29.fake-")
            assert rendered["headers"] == {
                "authorization": "Bearer <access token>",
                "content-type": "application/json",
            }
        assert rows["fcm"]["provider_request"]["body"]["message"]["notification"] == {
            "title": "FCM title"
        }
        assert rows["gcm"]["provider_request"]["body"]["message"]["android"] == {
            "priority": "NORMAL",
            "ttl": "60s",
        }

        # SMS: the form, in order, as sent.
        rendered = rows["sms"]["provider_request"]
        [received] = sms.requests
        assert rendered["provider"] == rendered["channel"] == "sms"
        assert rendered["url"] == f"{sms.url}{received.path}"
        assert received.form() == [tuple(pair) for pair in rendered["body"]]
        assert received.body == urlencode([tuple(pair) for pair in rendered["body"]]).encode()
        assert rendered["body"] == [
            ["To", PHONE],
            ["From", SENDER],
            ["Body", "SMS text"],
            ["MediaUrl", "https://example.com/a.png"],
        ]
        assert received.headers["content-type"] == rendered["headers"]["content-type"]
        assert received.headers["authorization"].startswith("Basic ")
        assert rendered["headers"]["authorization"] == (
            "Basic <NOTIFY_SMS_ACCOUNT_SID:NOTIFY_SMS_AUTH_TOKEN>"
        )

        # Not one secret, anywhere in the listing.
        text = json.dumps(list(rows.values()))
        secrets = [
            TOKEN_KEY.splitlines()[1],
            service_account["private_key"].splitlines()[1],
            sms.auth_token,
            apns.requests[0].headers["authorization"].split()[1],
            fcm.sends[0].headers["authorization"].split()[1],
        ]
        assert [secret for secret in secrets if secret in text] == []

    def test_the_log_channel_renders_and_logs_what_would_be_sent(
        self, settings, engine, account, apns, fcm, sms, service_account, caplog
    ):
        # First what the providers receive, then the same notification without credentials.
        with running(settings, **provider_settings(apns, fcm, sms)) as client:
            service_sid = provider_service(client, account, service_account)
            bindings(client, account, service_sid)
            sent = delivered(client, account, service_sid)
        caplog.set_level(logging.INFO, logger="notify_server.delivery")
        with running(settings, sms_from=SENDER) as client:
            service_sid = make_service(client, account)["sid"]
            bindings(client, account, service_sid)
            logged = delivered(client, account, service_sid)
        assert apns.requests and len(fcm.sends) == 2 and len(sms.requests) == 1  # no more

        lines = {
            record.delivery_id: record
            for record in caplog.records
            if record.getMessage().startswith("log channel:")
        }
        for binding_type in ("apn", "fcm", "gcm", "sms"):
            row = logged[binding_type]
            rendered = row["provider_request"]
            assert row["status"] == "sent"
            assert row["provider_message_id"].startswith("log-")
            assert rendered["channel"] == "log"
            assert rendered["provider"] == sent[binding_type]["provider_request"]["provider"]
            # The very body the provider got when there was a credential.
            assert rendered["body"] == sent[binding_type]["provider_request"]["body"]
            assert rendered["notes"], rendered
            # The log line carries the same rendering, as JSON.
            record = lines[int(row["provider_message_id"].removeprefix("log-"))]
            assert orjson.loads(orjson.dumps(record.provider_request)) == rendered
        assert orjson.dumps(logged["apn"]["provider_request"]["body"]) == apns.requests[0].body

        apn = logged["apn"]["provider_request"]
        # What no credential can say is said, not invented.
        assert apn["headers"]["apns-topic"] == "<apns-topic unknown: no credential>"
        assert apn["url"] == (
            f"<APNs sandbox or production: no credential says which>/3/device/{APN_TOKEN}"
        )
        assert apn["headers"]["authorization"] == "bearer <provider token: no credential>"
        assert logged["fcm"]["provider_request"]["url"] == (
            "https://fcm.googleapis.com/v1/projects/<project_id: no FCM credential>/messages:send"
        )
        assert logged["sms"]["provider_request"]["url"] == (
            "https://api.twilio.com/2010-04-01/Accounts/<NOTIFY_SMS_ACCOUNT_SID unset>"
            "/Messages.json"
        )


# provider_request itself


def job(binding_type: str, credential: CredentialSecrets | None = None, **content: Any) -> Job:
    return Job(
        delivery_id=41,
        attempt=1,
        binding_type=binding_type,
        address="+15555550123" if binding_type == "sms" else "device-token/1",
        identity="alice",
        binding_sid="BS" + "1" * 32,
        expires_at=datetime(2030, 1, 1, tzinfo=UTC).replace(tzinfo=None) + timedelta(hours=1),
        notification_sid="NT" + "2" * 32,
        account_sid="AC" + "3" * 32,
        service_sid="IS" + "4" * 32,
        messaging_service_sid=None,
        content={"priority": "high", "ttl": 3600, "body": "hi", **content},
        credential=credential,
    )


class TestProviderRequest:
    def test_apns_certificate_auth_topic_is_the_certificates(self, settings):
        certificate, key = apns_certificate("com.example.certapp")
        credential = CredentialSecrets(
            "CR" + "5" * 32, "apn", False, {"certificate": certificate, "private_key": key}
        )
        rendered = provider_request(job("apn", credential), settings)
        assert rendered["url"] == "https://api.push.apple.com/3/device/device-token%2F1"
        assert rendered["headers"]["apns-topic"] == "com.example.certapp"
        assert "authorization" not in rendered["headers"]
        assert rendered["notes"] == []
        assert rendered["headers"]["apns-expiration"] == str(
            int(datetime(2030, 1, 1, 1, tzinfo=UTC).timestamp())
        )
        assert key.splitlines()[1] not in json.dumps(rendered)

    def test_apns_expired_certificate_is_not_sent(self, settings):
        certificate, key = apns_certificate("com.example.old", days=-1, not_before_days=-30)
        credential = CredentialSecrets(
            "CR" + "7" * 32, "apn", True, {"certificate": certificate, "private_key": key}
        )
        rendered = provider_request(job("apn", credential), settings)
        assert rendered["headers"]["apns-topic"] == "com.example.old"
        assert rendered["notes"] == [
            f"Credential {'CR' + '7' * 32}'s Certificate expired: not sent"
        ]

    def test_apns_token_auth_without_bundle_id_is_not_sent(self, settings):
        secrets = {"token_key": TOKEN_KEY, "key_id": "K", "team_id": "T"}
        credential = CredentialSecrets("CR" + "5" * 32, "apn", True, secrets)
        rendered = provider_request(job("apn", credential), settings)
        assert rendered["url"].startswith("https://api.sandbox.push.apple.com/3/device/")
        assert "apns-topic" not in rendered["headers"]
        assert rendered["notes"] == [f"Credential {'CR' + '5' * 32} has no BundleId: not sent"]

    def test_background_push(self, settings):
        rendered = provider_request(job("apn", body=None, data={"k": "v"}), settings)
        assert rendered["body"] == {"aps": {"content-available": 1}, "k": "v"}
        assert rendered["headers"]["apns-push-type"] == "background"
        assert rendered["headers"]["apns-priority"] == "5"

    def test_fcm_legacy_credential_is_not_sent(self, settings):
        credential = CredentialSecrets("CR" + "6" * 32, "fcm", False, {"secret": "legacy-key"})
        rendered = provider_request(job("fcm", credential), settings)
        assert rendered["channel"] == "fcm"
        assert "legacy-key" not in json.dumps(rendered)
        assert "<project_id: no usable ServiceAccount>" in rendered["url"]
        assert rendered["notes"][0].startswith("Google retired FCM legacy server keys")

    def test_fcm_override_it_cannot_send(self, settings):
        rendered = provider_request(job("fcm", fcm={"notification": "not an object"}), settings)
        assert rendered["body"] is None
        assert rendered["notes"][-1] == "Override 'notification' must be a JSON object: not sent"

    def test_sms_without_body_or_sender(self, settings):
        configured = settings.model_copy(update={"sms_account_sid": "AC1", "sms_auth_token": "t"})
        rendered = provider_request(job("sms", body=None), configured)
        assert rendered["channel"] == "sms"
        assert rendered["url"] == "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
        assert rendered["body"] is None
        assert rendered["notes"] == [
            "sms needs the Service's MessagingServiceSid or a sender in NOTIFY_SMS_FROM: not sent"
        ]
        assert '"t"' not in json.dumps(rendered)

    @pytest.mark.parametrize("binding_type", ["facebook-messenger", "alexa"])
    def test_retired_channels_send_nothing(self, settings, binding_type):
        rendered = provider_request(job(binding_type), settings)
        assert rendered == {
            "provider": binding_type,
            "channel": "retired",
            "method": None,
            "url": None,
            "headers": {},
            "body": None,
            "notes": [f"Twilio retired the {binding_type} channel: nothing is sent"],
        }
