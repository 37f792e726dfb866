"""The APNs channel, end to end: Notifications posted through the HTTP API, the worker running,
and a fake APNs speaking real HTTP/2 (tests/delivery/fake_apns.py) that records what it got.
Plus unit tests of the pure payload/header/PEM functions and of the provider-token cache."""

import asyncio
import json
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.delivery import apns
from notify_server.delivery.apns import ApnsChannel, client_ssl_context
from notify_server.delivery.channels import CredentialSecrets, Job, Outcome
from notify_server.delivery.rendering import (
    APNS_ID_NAMESPACE,
    apns_id,
    build_headers,
    build_payload,
    normalise_pem,
)
from notify_server.notifications.models import Delivery
from tests.delivery.fake_apns import (
    Answer,
    FakeApns,
    apns_certificate,
    ec_key_pem,
    self_signed,
    server_tls_context,
)
from tests.factories import Account, make_binding, make_credential, make_service
from tests.servers import free_port

TOKEN_KEY = ec_key_pem()
OTHER_TOKEN_KEY = ec_key_pem()
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
BUNDLE_ID = "com.example.notify"
CERT_UID = "com.example.certapp"
FINAL = ("sent", "failed")
UNKNOWN_BINDING = "BS" + "0" * 32


def public_key(private_pem: str) -> Any:
    return serialization.load_pem_private_key(private_pem.encode(), None).public_key()


def one_line(pem: str) -> str:
    """Twilio's documented form: PEM with its line breaks stripped."""
    return pem.replace("\n", "")


def device_token() -> str:
    return secrets.token_hex(32)


# The fakes and the app under test


@dataclass
class Fakes:
    sandbox: FakeApns
    production: FakeApns


@pytest.fixture(scope="module")
def sandbox_fake() -> Iterator[FakeApns]:
    fake = FakeApns().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def production_fake() -> Iterator[FakeApns]:
    fake = FakeApns().start()
    yield fake
    fake.stop()


@pytest.fixture
def fakes(sandbox_fake: FakeApns, production_fake: FakeApns) -> Fakes:
    sandbox_fake.reset()
    production_fake.reset()
    return Fakes(sandbox_fake, production_fake)


@contextmanager
def running_app(settings: Settings, *, sandbox: str, production: str) -> Iterator[TestClient]:
    """The real app with its worker running (in the TestClient's loop), APNs at the fakes."""
    app = create_app(
        settings.model_copy(
            update={
                "apns_sandbox_url": sandbox,
                "apns_production_url": production,
                "worker_poll_seconds": 0.05,
            }
        )
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def api(settings: Settings, engine: Engine, fakes: Fakes) -> Iterator[TestClient]:
    with running_app(settings, sandbox=fakes.sandbox.url, production=fakes.production.url) as c:
        yield c


# Plain factories


def token_credential(
    client: TestClient,
    account: Account,
    *,
    sandbox: bool = True,
    key: str = TOKEN_KEY,
    key_id: str = KEY_ID,
    team_id: str = TEAM_ID,
    bundle_id: str | None = BUNDLE_ID,
) -> str:
    form = {
        "FriendlyName": "token auth",
        "TokenKey": key,
        "KeyId": key_id,
        "TeamId": team_id,
        "Sandbox": "true" if sandbox else "false",
    }
    if bundle_id is not None:
        form["BundleId"] = bundle_id
    return make_credential(client, account, **form)["sid"]


def apn_service(client: TestClient, account: Account, credential_sid: str) -> str:
    return make_service(client, account, ApnCredentialSid=credential_sid)["sid"]


def apn_binding(client: TestClient, account: Account, service_sid: str, **form: str) -> dict:
    form = {"Identity": "alice", "BindingType": "apn", "Address": device_token(), **form}
    return make_binding(client, account, service_sid, **form)


def notify(client: TestClient, account: Account, service_sid: str, **form: str) -> dict:
    if "Tag" not in form and "Identity" not in form:
        form = {"Identity": "alice", **form}
    response = client.post(
        f"/v1/Services/{service_sid}/Notifications", data=form, auth=account.auth
    )
    assert response.status_code == 201, response.text
    return response.json()


def wait_final(
    client: TestClient,
    account: Account,
    service_sid: str,
    notification_sid: str,
    timeout: float = 10.0,
) -> list[dict]:
    """The notification's delivery rows, once every one is sent or failed."""
    path = f"/v1/Services/{service_sid}/Notifications/{notification_sid}/Deliveries"
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path, auth=account.auth)
        assert response.status_code == 200, response.text
        rows = response.json()["deliveries"]
        if rows and all(row["status"] in FINAL for row in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not final after {timeout} s: {rows}")
        time.sleep(0.02)


def fetch_binding(client: TestClient, account: Account, service_sid: str, sid: str):
    return client.get(f"/v1/Services/{service_sid}/Bindings/{sid}", auth=account.auth)


def delivery_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Delivery.id).order_by(Delivery.id)))


def expected_apns_id(notification_sid: str, delivery_id: int) -> str:
    return str(uuid.uuid5(APNS_ID_NAMESPACE, f"{notification_sid}/{delivery_id}"))


def decode_provider_token(authorization: str, key: str = TOKEN_KEY) -> tuple[dict, dict]:
    scheme, _, token = authorization.partition(" ")
    assert scheme == "bearer"
    claims = jwt.decode(token, public_key(key), algorithms=["ES256"])
    return jwt.get_unverified_header(token), claims


# End to end: token auth


class TestTokenAuth:
    def test_the_exact_request(self, api, engine, fakes, account):
        credential_sid = token_credential(api, account, sandbox=True)
        service_sid = apn_service(api, account, credential_sid)
        binding = apn_binding(api, account, service_sid)
        data = {"order": {"id": 7, "status": "new"}, "kind": "receipt"}
        override = {
            "aps": {"alert": {"subtitle": "Order 7"}, "mutable-content": 1},
            "order": {"status": "paid"},
        }
        posted_at = time.time()
        notification = notify(
            api,
            account,
            service_sid,
            Title="Hello",
            Body="Your order shipped",
            Sound="ping.aiff",
            Action="ORDER",
            Priority="high",
            Ttl="3600",
            Data=json.dumps(data),
            Apn=json.dumps(override),
        )
        rows = wait_final(api, account, service_sid, notification["sid"])

        assert fakes.production.requests == []
        (request,) = fakes.sandbox.requests
        assert request.http_version == "HTTP/2"
        assert request.method == "POST"
        assert request.path == f"/3/device/{binding['address']}"
        (delivery_id,) = delivery_ids(engine)
        apns_id = expected_apns_id(notification["sid"], delivery_id)
        headers = request.headers
        assert {k: v for k, v in headers.items() if k.startswith("apns-")} == {
            "apns-id": apns_id,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-topic": BUNDLE_ID,
            "apns-expiration": headers["apns-expiration"],
        }
        assert abs(int(headers["apns-expiration"]) - (posted_at + 3600)) <= 1
        jwt_header, claims = decode_provider_token(headers["authorization"])
        assert jwt_header == {"alg": "ES256", "kid": KEY_ID}
        assert set(claims) == {"iss", "iat"}
        assert claims["iss"] == TEAM_ID
        assert abs(claims["iat"] - time.time()) <= 5
        # Title/Body/Sound/Action, then Data at the top level, then the Apn override
        # deep-merged: order.status replaced, order.id kept, alert extended.
        assert request.json() == {
            "aps": {
                "alert": {"title": "Hello", "body": "Your order shipped", "subtitle": "Order 7"},
                "sound": "ping.aiff",
                "category": "ORDER",
                "mutable-content": 1,
            },
            "order": {"id": 7, "status": "paid"},
            "kind": "receipt",
        }

        (row,) = rows
        assert row["status"] == "sent"
        assert row["attempts"] == 1
        assert row["binding_sid"] == binding["sid"]
        assert row["provider_message_id"] == apns_id
        assert row["provider_status"] == 200
        assert row["provider_response"] is None
        assert row["error_message"] is None

    def test_production_when_the_credential_is_not_sandbox(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account, sandbox=False))
        binding = apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        assert fakes.sandbox.requests == []
        (request,) = fakes.production.requests
        assert request.path == f"/3/device/{binding['address']}"

    def test_priority_low_is_5(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Title="t", Priority="low")
        wait_final(api, account, service_sid, notification["sid"])

        (request,) = fakes.sandbox.requests
        assert request.headers["apns-priority"] == "5"
        assert request.headers["apns-push-type"] == "alert"
        assert request.json() == {"aps": {"alert": {"title": "t"}}}

    def test_background_push(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        apn_binding(api, account, service_sid)
        posted_at = time.time()
        notification = notify(api, account, service_sid, Data='{"sync": "inbox"}')
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        (request,) = fakes.sandbox.requests
        assert request.json() == {"aps": {"content-available": 1}, "sync": "inbox"}
        assert request.headers["apns-push-type"] == "background"
        # Apple: a background push must go at priority 5, whatever was asked for.
        assert request.headers["apns-priority"] == "5"
        # Default Ttl: four weeks.
        assert abs(int(request.headers["apns-expiration"]) - (posted_at + 2419200)) <= 1

    def test_binding_credential_overrides_the_services(self, api, fakes, account):
        service_credential = token_credential(api, account, sandbox=True)
        binding_credential = token_credential(
            api,
            account,
            sandbox=False,
            key=OTHER_TOKEN_KEY,
            key_id="OTHERKEY01",
            team_id="OTHERTEAM1",
            bundle_id="com.example.other",
        )
        service_sid = apn_service(api, account, service_credential)
        own = apn_binding(api, account, service_sid, CredentialSid=binding_credential)
        plain = apn_binding(api, account, service_sid, Identity="bob")
        notification = notify(api, account, service_sid, Tag="all", Body="hi")
        rows = wait_final(api, account, service_sid, notification["sid"])

        assert [row["status"] for row in rows] == ["sent", "sent"]
        (to_production,) = fakes.production.requests
        assert to_production.token == own["address"]
        assert to_production.headers["apns-topic"] == "com.example.other"
        jwt_header, claims = decode_provider_token(
            to_production.headers["authorization"], OTHER_TOKEN_KEY
        )
        assert (jwt_header["kid"], claims["iss"]) == ("OTHERKEY01", "OTHERTEAM1")
        (to_sandbox,) = fakes.sandbox.requests
        assert to_sandbox.token == plain["address"]
        assert to_sandbox.headers["apns-topic"] == BUNDLE_ID
        jwt_header, claims = decode_provider_token(to_sandbox.headers["authorization"])
        assert (jwt_header["kid"], claims["iss"]) == (KEY_ID, TEAM_ID)

    def test_token_and_connection_are_reused(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        apn_binding(api, account, service_sid)
        apn_binding(api, account, service_sid, Identity="bob")
        first = notify(api, account, service_sid, Tag="all", Body="one")
        wait_final(api, account, service_sid, first["sid"])
        second = notify(api, account, service_sid, Identity="alice", Body="two")
        wait_final(api, account, service_sid, second["sid"])

        requests = fakes.sandbox.requests
        assert len(requests) == 3
        assert len({r.headers["authorization"] for r in requests}) == 1
        assert len({r.connection for r in requests}) == 1

    def test_secrets_never_logged(self, api, fakes, account, caplog):
        caplog.set_level(logging.DEBUG)
        service_sid = apn_service(api, account, token_credential(api, account))
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        (request,) = fakes.sandbox.requests
        token = request.headers["authorization"].split(" ")[1]
        key_body = TOKEN_KEY.splitlines()[1]
        assert caplog.records  # the worker did log
        for secret in (token, key_body):
            assert secret not in caplog.text
            assert secret not in json.dumps(row)


class TestCredentialProblems:
    def test_neither_token_nor_certificate(self, api, fakes, account):
        credential_sid = make_credential(api, account, FriendlyName="empty")["sid"]
        service_sid = apn_service(api, account, credential_sid)
        binding = apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["attempts"] == 1
        assert row["error_message"] == (
            f"APNs credential {credential_sid} has neither a token key (TokenKey, KeyId, TeamId)"
            " nor a certificate (Certificate, PrivateKey)"
        )
        assert fakes.sandbox.requests == fakes.production.requests == []
        # A credential problem is not the device's fault: the binding stays.
        assert fetch_binding(api, account, service_sid, binding["sid"]).status_code == 200

    def test_token_key_without_team_id(self, api, fakes, account):
        credential_sid = make_credential(api, account, TokenKey=TOKEN_KEY, KeyId=KEY_ID)["sid"]
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["error_message"] == (
            f"APNs credential {credential_sid} is missing TeamId for token auth"
        )
        assert fakes.production.requests == []

    def test_token_auth_needs_a_bundle_id(self, api, fakes, account):
        credential_sid = token_credential(api, account, bundle_id=None)
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["error_message"] == (
            f"APNs credential {credential_sid} has no BundleId: token auth needs it as the"
            " apns-topic"
        )
        assert fakes.sandbox.requests == []

    def test_a_gcm_credential_on_an_apn_binding(self, api, fakes, account):
        apn_credential = token_credential(api, account)
        gcm_credential = make_credential(api, account, Type="gcm", ApiKey="k")["sid"]
        service_sid = apn_service(api, account, apn_credential)
        binding = apn_binding(api, account, service_sid, CredentialSid=gcm_credential)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["error_message"] == f"APNs: binding {binding['sid']} has a gcm credential"
        assert fakes.sandbox.requests == []

    def test_certificate_that_is_not_pem(self, api, fakes, account):
        credential_sid = make_credential(
            api, account, Certificate="not a certificate", PrivateKey="nor a key"
        )["sid"]
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["error_message"] == (
            f"APNs credential {credential_sid}: Certificate and PrivateKey could not be loaded"
            " as a PEM certificate and its private key"
        )
        assert fakes.production.requests == []


class TestProviderAnswers:
    @pytest.mark.parametrize(
        ("answer", "message"),
        [
            (Answer(410, "Unregistered"), "APNs answered 410 Unregistered"),
            (Answer(400, "BadDeviceToken"), "APNs answered 400 BadDeviceToken"),
            (Answer(400, "DeviceTokenNotForTopic"), "APNs answered 400 DeviceTokenNotForTopic"),
        ],
    )
    def test_dead_device_token_deletes_the_binding(self, api, fakes, account, answer, message):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        kept = apn_binding(api, account, service_sid, Identity="bob")
        fakes.sandbox.script(binding["address"], answer)
        notification = notify(api, account, service_sid, Tag="all", Body="hi")
        rows = wait_final(api, account, service_sid, notification["sid"])

        dead = next(r for r in rows if r["address"] == binding["address"])
        assert dead["status"] == "failed"
        assert dead["attempts"] == 1
        assert dead["error_message"] == message
        assert dead["provider_status"] == answer.status
        assert json.loads(dead["provider_response"])["reason"] == answer.reason
        assert dead["binding_sid"] == binding["sid"]  # the row remembers which binding it was
        response = fetch_binding(api, account, service_sid, binding["sid"])
        assert response.status_code == 404
        assert response.json()["code"] == 20404
        assert fetch_binding(api, account, service_sid, kept["sid"]).status_code == 200
        assert len(fakes.sandbox.requests) == 2  # no retry

    @pytest.mark.parametrize(
        "answer",
        [
            Answer(400, "BadTopic"),
            Answer(403, "InvalidProviderToken"),
            Answer(413, "PayloadTooLarge"),
        ],
    )
    def test_other_client_errors_fail_and_keep_the_binding(self, api, fakes, account, answer):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        fakes.sandbox.script(binding["address"], answer)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["attempts"] == 1
        assert row["error_message"] == f"APNs answered {answer.status} {answer.reason}"
        assert row["provider_status"] == answer.status
        assert json.loads(row["provider_response"]) == {"reason": answer.reason}
        assert fetch_binding(api, account, service_sid, binding["sid"]).status_code == 200
        assert len(fakes.sandbox.requests) == 1

    def test_an_answer_with_bytes_the_database_refuses_is_still_recorded(self, api, fakes, account):
        # NUL in the body and the reason (PostgreSQL refuses NUL in text), an apns-id with a
        # control character and another over the column's 256 characters: each answer is
        # recorded once, and nothing is sent again.
        service_sid = apn_service(api, account, token_credential(api, account))
        answers = {
            "sent": Answer(200, apns_id="id\x01with-a-control-character", body=b"ok\x00"),
            "long-id": Answer(200, apns_id="x" * 300),
            "refused": Answer(400, body=b'{"reason":"Bad\\u0000Topic"}'),
        }
        bindings = {}
        for name, answer in answers.items():
            bindings[name] = apn_binding(api, account, service_sid, Identity=f"u-{name}")
            fakes.sandbox.script(bindings[name]["address"], answer)
        notification = notify(api, account, service_sid, Tag="all", Body="hi")
        rows = {
            row["binding_sid"]: row
            for row in wait_final(api, account, service_sid, notification["sid"])
        }

        sent, long_id, refused = (rows[bindings[name]["sid"]] for name in answers)
        assert (sent["status"], sent["attempts"], sent["provider_message_id"]) == ("sent", 1, None)
        assert sent["provider_response"] == "ok\ufffd"
        assert (long_id["status"], long_id["provider_message_id"]) == ("sent", "x" * 256)
        assert (refused["status"], refused["attempts"]) == ("failed", 1)
        assert refused["error_message"] == "APNs answered 400 Bad\ufffdTopic"
        assert refused["provider_response"] == '{"reason":"Bad\\u0000Topic"}'
        assert len(fakes.sandbox.requests) == 3

    @pytest.mark.parametrize(
        "answer", [Answer(500, "InternalServerError"), Answer(429, "TooManyRequests")]
    )
    def test_transient_error_then_sent(self, api, fakes, account, answer):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        fakes.sandbox.script(binding["address"], answer)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        assert row["attempts"] == 2
        assert row["error_message"] is None
        first, second = fakes.sandbox.requests
        # A retry of the same row carries the same apns-id (APNs can deduplicate).
        assert first.headers["apns-id"] == second.headers["apns-id"] == row["provider_message_id"]
        assert first.body == second.body

    def test_expired_provider_token_is_refreshed_and_retried(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        fakes.sandbox.script(binding["address"], Answer(403, "ExpiredProviderToken"))
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        assert row["attempts"] == 2
        first, second = fakes.sandbox.requests
        assert first.headers["authorization"] != second.headers["authorization"]
        for request in (first, second):
            _, claims = decode_provider_token(request.headers["authorization"])
            assert claims["iss"] == TEAM_ID

    def test_ttl_0_fails_after_the_first_attempt(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        fakes.sandbox.script(binding["address"], Answer(500, "InternalServerError"))
        notification = notify(api, account, service_sid, Body="hi", Ttl="0")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["attempts"] == 1
        assert row["error_message"] == (
            "TTL expired after 1 attempts; last: APNs answered 500 InternalServerError"
        )
        assert row["provider_status"] == 500
        (request,) = fakes.sandbox.requests
        assert request.headers["apns-expiration"] == "0"
        assert fetch_binding(api, account, service_sid, binding["sid"]).status_code == 200

    def test_connection_reset_is_retried(self, api, fakes, account):
        service_sid = apn_service(api, account, token_credential(api, account))
        binding = apn_binding(api, account, service_sid)
        fakes.sandbox.script(binding["address"], Answer(reset=True))
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        assert row["attempts"] == 2
        first, second = fakes.sandbox.requests
        assert first.connection != second.connection

    def test_connection_refused(self, settings, engine, fakes, account):
        closed = f"http://127.0.0.1:{free_port()}"
        with running_app(settings, sandbox=closed, production=closed) as client:
            service_sid = apn_service(client, account, token_credential(client, account))
            apn_binding(client, account, service_sid)
            notification = notify(client, account, service_sid, Body="hi", Ttl="0")
            (row,) = wait_final(client, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["attempts"] == 1
        assert row["error_message"].startswith(
            "TTL expired after 1 attempts; last: APNs unreachable: ConnectError"
        )
        assert row["provider_status"] is None


class TestCertificateAuth:
    def test_topic_from_the_certificate_uid(self, api, fakes, account):
        certificate, private_key = apns_certificate(CERT_UID)
        credential_sid = make_credential(
            api,
            account,
            Certificate=one_line(certificate),
            PrivateKey=one_line(private_key),
            Sandbox="false",
        )["sid"]
        service_sid = apn_service(api, account, credential_sid)
        binding = apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi", Priority="low")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "sent"
        assert fakes.sandbox.requests == []
        (request,) = fakes.production.requests
        assert request.path == f"/3/device/{binding['address']}"
        assert request.headers["apns-topic"] == CERT_UID
        assert request.headers["apns-priority"] == "5"
        assert "authorization" not in request.headers
        assert request.json() == {"aps": {"alert": {"body": "hi"}}}

    def test_bundle_id_wins_over_the_uid(self, api, fakes, account):
        certificate, private_key = apns_certificate(CERT_UID)
        credential_sid = make_credential(
            api,
            account,
            Certificate=one_line(certificate),
            PrivateKey=one_line(private_key),
            BundleId="com.example.explicit",
            Sandbox="true",
        )["sid"]
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        wait_final(api, account, service_sid, notification["sid"])

        (request,) = fakes.sandbox.requests
        assert request.headers["apns-topic"] == "com.example.explicit"

    def test_key_of_another_certificate(self, api, fakes, account):
        certificate, _ = apns_certificate(CERT_UID)
        _, other_key = apns_certificate(CERT_UID)
        credential_sid = make_credential(
            api, account, Certificate=one_line(certificate), PrivateKey=one_line(other_key)
        )["sid"]
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert "could not be loaded" in row["error_message"]
        assert fakes.production.requests == []

    def test_expired_certificate(self, api, fakes, account):
        certificate, private_key = apns_certificate(CERT_UID, days=-1, not_before_days=-30)
        credential_sid = make_credential(
            api, account, Certificate=one_line(certificate), PrivateKey=one_line(private_key)
        )["sid"]
        service_sid = apn_service(api, account, credential_sid)
        apn_binding(api, account, service_sid)
        notification = notify(api, account, service_sid, Body="hi")
        (row,) = wait_final(api, account, service_sid, notification["sid"])

        assert row["status"] == "failed"
        assert row["error_message"].startswith(
            f"APNs credential {credential_sid}: the Certificate expired on "
        )
        assert fakes.production.requests == []


# TLS as Apple does it: the fake serves https with ALPN h2 and asks for a client certificate.


@dataclass
class TlsSetup:
    fake: FakeApns
    server_certificate_file: Path
    client_certificate: str
    client_key: str


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    directory: Path = tmp_path_factory.mktemp("apns-tls")
    server_cert, server_key = self_signed(
        [x509.NameAttribute(NameOID.COMMON_NAME, "fake APNs")], ip="127.0.0.1"
    )
    (directory / "server.pem").write_text(server_cert)
    (directory / "server.key").write_text(server_key)
    client_cert, client_key = apns_certificate(CERT_UID)
    context = server_tls_context(
        str(directory / "server.pem"), str(directory / "server.key"), client_ca=client_cert
    )
    fake = FakeApns(tls=context).start()
    yield TlsSetup(fake, directory / "server.pem", client_cert, client_key)
    fake.stop()


class TestTls:
    @pytest.fixture
    def tls_client(self, settings, engine, tls, monkeypatch) -> Iterator[TestClient]:
        tls.fake.reset()
        # The channel trusts what httpx trusts: SSL_CERT_FILE makes that the fake's certificate.
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.server_certificate_file))
        with running_app(settings, sandbox=tls.fake.url, production=tls.fake.url) as client:
            yield client

    def test_certificate_auth_presents_the_client_certificate(self, tls_client, tls, account):
        credential_sid = make_credential(
            tls_client,
            account,
            Certificate=one_line(tls.client_certificate),
            PrivateKey=one_line(tls.client_key),
        )["sid"]
        service_sid = apn_service(tls_client, account, credential_sid)
        binding = apn_binding(tls_client, account, service_sid)
        notification = notify(tls_client, account, service_sid, Body="over TLS")
        (row,) = wait_final(tls_client, account, service_sid, notification["sid"])

        assert row["status"] == "sent", row
        (request,) = tls.fake.requests
        assert tls.fake.url.startswith("https://")
        assert (request.alpn, request.http_version) == ("h2", "HTTP/2")
        assert request.peer_subject["userId"] == CERT_UID
        assert request.path == f"/3/device/{binding['address']}"
        assert request.headers["apns-topic"] == CERT_UID
        assert "authorization" not in request.headers

    def test_token_auth_sends_no_client_certificate(self, tls_client, tls, account):
        service_sid = apn_service(tls_client, account, token_credential(tls_client, account))
        apn_binding(tls_client, account, service_sid)
        notification = notify(tls_client, account, service_sid, Body="over TLS")
        (row,) = wait_final(tls_client, account, service_sid, notification["sid"])

        assert row["status"] == "sent", row
        (request,) = tls.fake.requests
        assert (request.alpn, request.http_version) == ("h2", "HTTP/2")
        assert request.peer_subject == {}
        decode_provider_token(request.headers["authorization"])


class TestFake:
    """The fake can tell HTTP/1.1 from HTTP/2, so the http_version assertions can fail."""

    def test_http1_is_recorded_and_refused(self, fakes):
        response = httpx.post(f"{fakes.sandbox.url}/3/device/abc", content=b"{}")
        assert response.status_code == 505
        (request,) = fakes.sandbox.requests
        assert (request.http_version, request.method, request.path) == (
            "HTTP/1.1",
            "POST",
            "/3/device/abc",
        )


# Unit tests of the pure parts


def make_job(**content: Any) -> Job:
    base = {"priority": "high", "ttl": 60, "title": None, "body": None, "sound": None}
    return Job(
        delivery_id=42,
        attempt=1,
        binding_type="apn",
        address="abc",
        identity="alice",
        binding_sid=None,
        expires_at=datetime(2030, 1, 1),  # stored naive, in UTC
        notification_sid="NT" + "a" * 32,
        account_sid="AC" + "a" * 32,
        service_sid="IS" + "a" * 32,
        messaging_service_sid=None,
        content={**base, **content},
    )


class TestBuildPayload:
    def test_nothing_is_a_background_push(self):
        assert build_payload({}) == {"aps": {"content-available": 1}}

    def test_fields_map_onto_aps(self):
        content = {"title": "T", "body": "B", "sound": "s", "action": "A"}
        assert build_payload(content) == {
            "aps": {"alert": {"title": "T", "body": "B"}, "sound": "s", "category": "A"}
        }

    def test_body_only(self):
        assert build_payload({"body": "B"}) == {"aps": {"alert": {"body": "B"}}}

    def test_override_merges_last_and_replaces_non_objects(self):
        content = {
            "body": "B",
            "data": {"a": {"x": 1, "y": 2}, "b": [1, 2]},
            "apn": {"a": {"y": 3}, "b": [3], "aps": {"alert": "plain text", "badge": 2}},
        }
        assert build_payload(content) == {
            "aps": {"alert": "plain text", "badge": 2},
            "a": {"x": 1, "y": 3},
            "b": [3],
        }

    def test_an_override_alert_makes_an_alert_push(self):
        payload = build_payload({"apn": {"aps": {"alert": {"title": "from override"}}}})
        assert payload == {"aps": {"alert": {"title": "from override"}}}
        assert build_headers(make_job(apn=payload), payload)["apns-push-type"] == "alert"

    def test_content_is_not_mutated(self):
        content = {"data": {"aps": "x"}, "apn": {"aps": {"badge": 1}}}
        assert build_payload(content) == {"aps": {"badge": 1, "content-available": 1}}
        assert content == {"data": {"aps": "x"}, "apn": {"aps": {"badge": 1}}}

    def test_override_may_set_content_available(self):
        payload = build_payload({"apn": {"aps": {"content-available": 0}}})
        assert payload == {"aps": {"content-available": 0}}


class TestBuildHeaders:
    def test_alert(self):
        job = make_job(title="T")
        assert build_headers(job, build_payload(job.content)) == {
            "apns-id": str(uuid.uuid5(APNS_ID_NAMESPACE, f"{job.notification_sid}/42")),
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": str(int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())),
        }

    def test_ttl_0(self):
        job = make_job(title="T", ttl=0, priority="low")
        headers = build_headers(job, build_payload(job.content))
        assert (headers["apns-expiration"], headers["apns-priority"]) == ("0", "5")

    def test_apns_id_is_per_delivery(self):
        one, other = make_job(), make_job()._replace(delivery_id=43)
        again = make_job()._replace(attempt=2)
        ids = [build_headers(job, {})["apns-id"] for job in (one, other, again)]
        assert ids[0] == ids[2] != ids[1]
        assert uuid.UUID(ids[0]).version == 5

    def test_apns_id_is_uuid5_of_the_notification_and_delivery(self):
        for delivery_id in (*range(0, 2000, 7), 2**40, 2**63 - 1):
            job = make_job()._replace(delivery_id=delivery_id)
            expected = uuid.uuid5(APNS_ID_NAMESPACE, f"{job.notification_sid}/{delivery_id}")
            assert apns_id(job) == str(expected)


class TestNormalisePem:
    def test_single_line_certificate_and_key(self):
        certificate, private_key = apns_certificate(CERT_UID)
        assert normalise_pem(one_line(certificate)) == certificate
        assert normalise_pem(one_line(private_key)) == private_key
        assert normalise_pem(certificate) == certificate

    def test_escaped_and_spaced_line_breaks(self):
        certificate, _ = apns_certificate(CERT_UID)
        assert normalise_pem(certificate.replace("\n", "\\n")) == certificate
        assert normalise_pem("  " + certificate.replace("\n", " ")) == certificate

    def test_chain_keeps_every_block(self):
        first, _ = apns_certificate(CERT_UID)
        second, _ = apns_certificate("com.example.intermediate")
        assert normalise_pem(one_line(first + second)) == first + second

    def test_not_pem(self):
        with pytest.raises(ValueError):
            normalise_pem("MIIF...")


class TestClientSslContext:
    """The TLS client certificate of certificate auth (also exercised over TLS in TestTls)."""

    def test_single_line_pair_loads(self):
        certificate, private_key = apns_certificate(CERT_UID)
        context = client_ssl_context(
            normalise_pem(one_line(certificate)), normalise_pem(private_key)
        )
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True

    def test_mismatched_key(self):
        certificate, _ = apns_certificate(CERT_UID)
        _, other_key = apns_certificate(CERT_UID)
        with pytest.raises(ssl.SSLError):
            client_ssl_context(certificate, other_key)


class TestProviderToken:
    def test_cached_then_refreshed_after_50_minutes(self, fakes, settings):
        now = [1000.0]
        channel = ApnsChannel(
            settings.model_copy(update={"apns_sandbox_url": fakes.sandbox.url}),
            clock=lambda: now[0],
        )
        credential = CredentialSecrets(
            "CR" + "a" * 32,
            "apn",
            True,
            {"token_key": TOKEN_KEY, "key_id": KEY_ID, "team_id": TEAM_ID, "bundle_id": BUNDLE_ID},
        )
        job = make_job(body="b")._replace(credential=credential)

        async def send_three() -> list[Outcome]:
            outcomes = [(await channel.send(job)).outcome]
            now[0] += apns.TOKEN_REFRESH_SECONDS - 1
            outcomes.append((await channel.send(job)).outcome)
            now[0] += 1
            outcomes.append((await channel.send(job)).outcome)
            await channel.aclose()
            return outcomes

        assert asyncio.run(send_three()) == [Outcome.SENT] * 3
        tokens = [r.headers["authorization"] for r in fakes.sandbox.requests]
        assert tokens[0] == tokens[1] != tokens[2]
        assert len({r.connection for r in fakes.sandbox.requests}) == 1

    def test_transport_error_is_retry(self, settings):
        closed = f"http://127.0.0.1:{free_port()}"
        channel = ApnsChannel(settings.model_copy(update={"apns_production_url": closed}))
        credential = CredentialSecrets(
            "CR" + "a" * 32,
            "apn",
            False,
            {"token_key": TOKEN_KEY, "key_id": KEY_ID, "team_id": TEAM_ID, "bundle_id": BUNDLE_ID},
        )
        job = make_job(body="b")._replace(credential=credential)

        async def send() -> Any:
            try:
                return await channel.send(job)
            finally:
                await channel.aclose()

        result = asyncio.run(send())
        assert result.outcome is Outcome.RETRY
        assert result.error_message.startswith("APNs unreachable: ConnectError")
        assert not result.unregistered
