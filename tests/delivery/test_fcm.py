"""FCM HTTP v1 delivery, end to end: notifications posted through the API, the worker running,
a fake FCM (and Google OAuth token endpoint) on a local port receiving the requests."""

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import update

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.credentials.models import Credential
from notify_server.crypto import SecretBox
from tests.delivery.fake_fcm import (
    FakeFcm,
    Reply,
    google_error,
    invalid_registration_token,
    unregistered,
)
from tests.factories import Account, make_binding, make_credential, make_service
from tests.servers import free_port

credentials = Credential.__table__

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LEGACY_MESSAGE = (
    "Google retired FCM legacy server keys (the credential's ApiKey/Secret) in 2024; give"
    " credential {sid} a ServiceAccount (the Firebase service-account JSON key) to send"
    " through FCM HTTP v1"
)
DATES = ("date_created", "date_updated")


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fcm_server() -> Iterator[FakeFcm]:
    fake = FakeFcm().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fcm_server: FakeFcm) -> FakeFcm:
    fcm_server.reset()
    return fcm_server


@pytest.fixture(scope="module")
def rsa_keys() -> list[str]:
    return [private_key_pem() for _ in range(2)]


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account(
    private_key: str, project_id: str = "proj-one", token_uri: str = GOOGLE_TOKEN_URI
) -> dict[str, str]:
    """The shape of a Firebase service-account JSON key file."""
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": f"kid-{project_id}",
        "private_key": private_key,
        "client_email": f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


@pytest.fixture
def account_one(fake: FakeFcm, rsa_keys: list[str]) -> dict[str, str]:
    account = service_account(rsa_keys[0], "proj-one")
    fake.register(account)
    return account


@pytest.fixture
def account_two(fake: FakeFcm, rsa_keys: list[str]) -> dict[str, str]:
    account = service_account(rsa_keys[1], "proj-two")
    fake.register(account)
    return account


@contextmanager
def app_client(settings: Settings, **update: Any) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"worker_poll_seconds": 0.05, **update}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(settings: Settings, engine, fake: FakeFcm) -> Iterator[TestClient]:
    with app_client(settings, fcm_url=fake.url, fcm_token_url=fake.token_url) as client:
        yield client


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries are due at once instead of after 1 s, 2 s, ..."""
    monkeypatch.setattr("notify_server.delivery.worker.backoff", lambda attempt: timedelta(0))


def fcm_credential(client: TestClient, account: Account, sa: dict[str, str]) -> str:
    return make_credential(client, account, Type="fcm", ServiceAccount=json.dumps(sa))["sid"]


def fcm_service(client: TestClient, account: Account, sa: dict[str, str], **form: str) -> str:
    credential_sid = fcm_credential(client, account, sa)
    return make_service(client, account, FcmCredentialSid=credential_sid, **form)["sid"]


def notify(client: TestClient, account: Account, service_sid: str, **form: Any) -> str:
    data = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in form.items()}
    response = client.post(
        f"/v1/Services/{service_sid}/Notifications", data=data, auth=account.auth
    )
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def all_final(rows: list[dict]) -> bool:
    return bool(rows) and all(row["status"] in ("sent", "failed") for row in rows)


def wait_deliveries(
    client: TestClient,
    account: Account,
    service_sid: str,
    notification_sid: str,
    until: Callable[[list[dict]], bool] = all_final,
) -> list[dict]:
    """Poll our Deliveries listing until `until` holds (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        response = client.get(
            f"/v1/Services/{service_sid}/Notifications/{notification_sid}/Deliveries",
            auth=account.auth,
        )
        assert response.status_code == 200, response.text
        rows = response.json()["deliveries"]
        if until(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries did not settle in time: {rows}")
        time.sleep(0.02)


def delivered(client: TestClient, account: Account, service_sid: str, **form: Any) -> list[dict]:
    """Post a notification and wait for all its deliveries to be final."""
    return wait_deliveries(
        client, account, service_sid, notify(client, account, service_sid, **form)
    )


def undated(row: dict) -> dict:
    """The row without its dates, nor its provider_request (test_provider_request.py's)."""
    return {k: v for k, v in row.items() if k not in (*DATES, "provider_request")}


def binding_exists(client: TestClient, account: Account, service_sid: str, sid: str) -> bool:
    response = client.get(f"/v1/Services/{service_sid}/Bindings/{sid}", auth=account.auth)
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def fcm_binding(
    client: TestClient, account: Account, service_sid: str, address: str, **form: str
) -> dict:
    return make_binding(
        client, account, service_sid, **{"BindingType": "fcm", "Address": address, **form}
    )


def sent_to(fake: FakeFcm, registration_token: str) -> list[dict]:
    return [r.json() for r in fake.sends if r.json()["message"]["token"] == registration_token]


# -- tests -------------------------------------------------------------------------------------


class TestFcmMessage:
    def test_the_exact_request_fcm_receives(self, client, account, fake, account_one):
        service_sid = fcm_service(client, account, account_one)
        binding = fcm_binding(client, account, service_sid, "tok-alice")
        data = {"k": "v", "n": 1, "nested": {"a": [1, True]}, "nothing": None}

        rows = delivered(
            client,
            account,
            service_sid,
            Identity="alice",
            Body="Hello",
            Title="Greetings",
            Sound="ding",
            Action="OPEN",
            Ttl="3600",
            Data=data,
        )

        [send] = fake.sends
        assert send.method == "POST"
        assert send.path == "/v1/projects/proj-one/messages:send"
        # The send over HTTP/2 (h2c to the fake), the token exchange over HTTP/1.1 (httpx).
        assert send.http_version == "2"
        assert [r.http_version for r in fake.token_requests] == ["1.1"]
        assert send.headers["authorization"] == "Bearer ya29.fake-1"
        assert send.headers["content-type"] == "application/json"
        assert send.json() == {
            "message": {
                "token": "tok-alice",
                "data": {
                    "twi_body": "Hello",
                    "twi_title": "Greetings",
                    "twi_sound": "ding",
                    "twi_action": "OPEN",
                    "k": "v",
                    "n": "1",
                    "nested": '{"a":[1,true]}',
                    "nothing": "null",
                },
                "android": {"priority": "HIGH", "ttl": "3600s"},
            }
        }
        name = "projects/proj-one/messages/0:1"
        assert [undated(row) for row in rows] == [
            {
                "notification_sid": rows[0]["notification_sid"],
                "binding_sid": binding["sid"],
                "identity": "alice",
                "binding_type": "fcm",
                "address": "tok-alice",
                "status": "sent",
                "attempts": 1,
                "provider_message_id": name,
                "provider_status": 200,
                "provider_response": json.dumps({"name": name}, separators=(",", ":")),
                "error_message": None,
                "callback_error": None,
            }
        ]

    def test_only_the_given_fields_low_priority_default_ttl(
        self, client, account, fake, account_one
    ):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x", Priority="low")

        assert row["status"] == "sent"
        assert [r.json() for r in fake.sends] == [
            {
                "message": {
                    "token": "tok-alice",
                    "data": {"twi_body": "x"},
                    "android": {"priority": "NORMAL", "ttl": "2419200s"},
                }
            }
        ]

    def test_direct_to_binding_uses_the_service_credential(
        self, client, account, fake, account_one
    ):
        service_sid = fcm_service(client, account, account_one)

        [row] = delivered(
            client,
            account,
            service_sid,
            ToBinding=json.dumps({"binding_type": "fcm", "address": "tok-direct"}),
            Body="hi",
        )

        assert (row["status"], row["binding_sid"], row["address"]) == ("sent", None, "tok-direct")
        [send] = fake.sends
        assert send.path == "/v1/projects/proj-one/messages:send"
        assert send.json()["message"]["token"] == "tok-direct"

    def test_tokens_and_keys_never_reach_the_log(self, client, account, fake, account_one, caplog):
        caplog.set_level(logging.DEBUG)
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "sent"
        assertion = dict(fake.token_requests[0].form())["assertion"]
        key_body = account_one["private_key"].splitlines()[1]
        for secret in ("ya29.fake-1", assertion, key_body):
            assert secret not in caplog.text


class TestFcmAccessToken:
    def test_the_token_exchange(self, client, account, fake, account_one):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")
        before = int(time.time())

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "sent"
        [request] = fake.token_requests
        assert (request.method, request.path) == ("POST", "/token")
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        form = request.form()
        assert [name for name, _ in form] == ["grant_type", "assertion"]
        assert dict(form)["grant_type"] == GRANT_TYPE
        # The fake verified the signature with the service account's public key.
        [claims] = fake.assertions
        assert claims["_header"] == {"alg": "RS256", "typ": "JWT", "kid": "kid-proj-one"}
        assert {k: v for k, v in claims.items() if k not in ("iat", "exp", "_header")} == {
            "iss": "firebase-adminsdk@proj-one.iam.gserviceaccount.com",
            "scope": SCOPE,
            "aud": GOOGLE_TOKEN_URI,
        }
        assert before - 5 <= claims["iat"] <= time.time() + 5
        assert claims["exp"] == claims["iat"] + 3600

    def test_the_key_files_token_uri_is_never_followed(
        self, settings, engine, account, fake, rsa_keys
    ):
        # The uploaded JSON is the tenant's: its token_uri pointed at an internal service
        # would have received our signed assertion, and its answer shown to the tenant.
        internal = f"{fake.url}/internal/anything"
        sa = service_account(rsa_keys[0], "proj-one", token_uri=internal)
        fake.register({**sa, "token_uri": GOOGLE_TOKEN_URI})
        with app_client(settings, fcm_url=fake.url, fcm_token_url=fake.token_url) as client:
            service_sid = fcm_service(client, account, sa)
            fcm_binding(client, account, service_sid, "tok-alice")

            [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "sent"
        assert [r.path for r in fake.token_requests] == ["/token"]
        assert fake.assertions[0]["aud"] == GOOGLE_TOKEN_URI

    def test_by_default_tokens_come_from_google(self):
        assert Settings().fcm_token_url == GOOGLE_TOKEN_URI

    @pytest.mark.parametrize(
        "project_id", ["../../../admin/x?y=1#", "proj-one/../x", "Proj-One", "p", "proj one"]
    )
    def test_a_project_id_that_is_not_googles_is_never_sent(
        self, settings, engine, account, fake, rsa_keys, project_id
    ):
        sa = service_account(rsa_keys[0], "proj-one")
        fake.register(sa)
        stored = {**sa, "project_id": project_id}
        with app_client(settings, fcm_url=fake.url, fcm_token_url=fake.token_url) as client:
            credential = client.post(
                "/v1/Credentials",
                auth=account.auth,
                data={"Type": "fcm", "ServiceAccount": json.dumps(stored)},
            )
            # Refused when uploaded; a key stored before that rule is refused when sending.
            assert credential.status_code == 400, credential.text
            assert "project_id" in credential.json()["message"]
            service_sid = fcm_service(client, account, sa)
            with engine.begin() as conn:
                conn.execute(
                    update(credentials).values(
                        encrypted_secrets=SecretBox(settings.secret_key, "unused").seal(
                            {"service_account": json.dumps(stored)}
                        )
                    )
                )
            fcm_binding(client, account, service_sid, "tok-alice")

            [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "failed"
        assert "project_id is not a Google project id" in row["error_message"]
        assert fake.sends == [] and fake.token_requests == []

    def test_one_token_serves_many_deliveries(self, client, account, fake, account_one):
        service_sid = fcm_service(client, account, account_one)
        for address in ("tok-1", "tok-2", "tok-3"):
            fcm_binding(client, account, service_sid, address, Identity="alice")

        # Three concurrent deliveries, then a second notification: one token request.
        first = delivered(client, account, service_sid, Identity="alice", Body="one")
        second = delivered(client, account, service_sid, Identity="alice", Body="two")

        assert [row["status"] for row in first + second] == ["sent"] * 6
        assert len(fake.token_requests) == 1
        assert [r.headers["authorization"] for r in fake.sends] == ["Bearer ya29.fake-1"] * 6

    def test_a_token_per_service_account(self, client, account, fake, account_one, account_two):
        one = fcm_service(client, account, account_one)
        two = fcm_service(client, account, account_two)
        fcm_binding(client, account, one, "tok-one")
        fcm_binding(client, account, two, "tok-two")

        delivered(client, account, one, Identity="alice", Body="x")
        delivered(client, account, two, Identity="alice", Body="x")

        assert [c["iss"] for c in fake.assertions] == [
            account_one["client_email"],
            account_two["client_email"],
        ]
        assert [(r.path, r.headers["authorization"]) for r in fake.sends] == [
            ("/v1/projects/proj-one/messages:send", "Bearer ya29.fake-1"),
            ("/v1/projects/proj-two/messages:send", "Bearer ya29.fake-2"),
        ]

    def test_a_401_drops_the_cached_token_and_retries(
        self, client, account, fake, account_one, fast_retry
    ):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")
        delivered(client, account, service_sid, Identity="alice", Body="one")
        fake.revoke_tokens()

        [row] = delivered(client, account, service_sid, Identity="alice", Body="two")

        assert (row["status"], row["attempts"], row["error_message"]) == ("sent", 2, None)
        assert len(fake.token_requests) == 2
        assert [(r.headers["authorization"], r.json()["message"]["data"]) for r in fake.sends] == [
            ("Bearer ya29.fake-1", {"twi_body": "one"}),
            ("Bearer ya29.fake-1", {"twi_body": "two"}),
            ("Bearer ya29.fake-2", {"twi_body": "two"}),
        ]

    def test_an_assertion_google_rejects_fails_the_delivery(
        self, client, account, fake, account_one, rsa_keys
    ):
        # Same client_email, another key: the signature does not verify.
        forged = {**account_one, "private_key": rsa_keys[1]}
        service_sid = fcm_service(client, account, forged)
        binding = fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert row["error_message"] == (
            "FCM OAuth token request for firebase-adminsdk@proj-one.iam.gserviceaccount.com"
            " failed (400): invalid_grant: Invalid JWT Signature."
        )
        assert fake.sends == []
        assert binding_exists(client, account, service_sid, binding["sid"])

    def test_a_cached_token_never_serves_another_key_naming_the_same_account(
        self, client, account, other_account, fake, account_one, rsa_keys
    ):
        genuine = fcm_service(client, account, account_one)
        fcm_binding(client, account, genuine, "tok-genuine")
        delivered(client, account, genuine, Identity="alice", Body="x")
        # Another tenant claims the same client_email and project with a key of its own.
        forged = fcm_service(client, other_account, {**account_one, "private_key": rsa_keys[1]})
        fcm_binding(client, other_account, forged, "tok-forged")

        [row] = delivered(client, other_account, forged, Identity="alice", Body="x")

        assert (row["status"], row["error_message"]) == (
            "failed",
            "FCM OAuth token request for firebase-adminsdk@proj-one.iam.gserviceaccount.com"
            " failed (400): invalid_grant: Invalid JWT Signature.",
        )
        assert [r.json()["message"]["token"] for r in fake.sends] == ["tok-genuine"]

    def test_a_token_endpoint_outage_is_retried(
        self, client, account, fake, account_one, fast_retry
    ):
        fake.script_token_endpoint(Reply(503, {"error": "backendError"}))
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"]) == ("sent", 2)
        assert len(fake.token_requests) == 2
        assert len(fake.sends) == 1

    def test_a_private_key_that_is_not_pem_fails(self, client, account, fake, account_one):
        broken = {**account_one, "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}
        service_sid = fcm_service(client, account, broken)
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["error_message"]) == (
            "failed",
            "The credential's ServiceAccount private_key is not a PEM RSA private key",
        )
        assert fake.requests == []

    @pytest.mark.parametrize(
        "der",
        [
            "MC4CAQAwBQYDKgMEBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # unknown type
            "MBMCAQAwBQYDK2VxBAcEBQAAAAAA",  # OpenSSL's InternalError
        ],
        ids=["unknown-key-type", "ed448-of-the-wrong-length"],
    )
    def test_a_private_key_openssl_does_not_support_fails_at_once(
        self, client, account, fake, account_one, der
    ):
        # It used to be taken for a transient error and retried until the TTL ran out.
        unsupported = f"-----BEGIN PRIVATE KEY-----\n{der}\n-----END PRIVATE KEY-----\n"
        service_sid = fcm_service(client, account, {**account_one, "private_key": unsupported})
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"], row["error_message"]) == (
            "failed",
            1,
            "The credential's ServiceAccount private_key is not a PEM RSA private key",
        )
        assert fake.requests == []


class TestFcmOverrides:
    def test_fcm_bindings_take_fcm_and_gcm_bindings_take_gcm(
        self, client, account, fake, account_one
    ):
        # A service with only an FCM credential serves gcm bindings too.
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-fcm")
        fcm_binding(client, account, service_sid, "tok-gcm", BindingType="gcm")

        rows = delivered(
            client,
            account,
            service_sid,
            Identity="alice",
            Body="Hi",
            Fcm={"data": {"via": "fcm"}},
            Gcm={"data": {"via": "gcm"}, "priority": "normal"},
        )

        assert sorted((row["binding_type"], row["status"]) for row in rows) == [
            ("fcm", "sent"),
            ("gcm", "sent"),
        ]
        assert sent_to(fake, "tok-fcm") == [
            {
                "message": {
                    "token": "tok-fcm",
                    "data": {"twi_body": "Hi", "via": "fcm"},
                    "android": {"priority": "HIGH", "ttl": "2419200s"},
                }
            }
        ]
        assert sent_to(fake, "tok-gcm") == [
            {
                "message": {
                    "token": "tok-gcm",
                    "data": {"twi_body": "Hi", "via": "gcm"},
                    "android": {"priority": "NORMAL", "ttl": "2419200s"},
                }
            }
        ]

    def test_the_legacy_shape_maps_into_v1(self, client, account, fake, account_one):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")
        override = {
            "notification": {
                "title": "T",
                "body": "B",
                "image": "https://example.com/i.png",
                "sound": "default",
                "click_action": "OPEN_CHAT",
                "android_channel_id": "chat",
                "body_loc_args": '["a", "b"]',
                "tag": "t1",
            },
            "data": {"n": 5, "s": "x", "twenty": {"k": [1]}},
            "priority": "normal",
            "time_to_live": 60,
            "collapse_key": "chat-1",
            "restricted_package_name": "com.example.app",
            "content_available": True,
            "mutable_content": True,
            "dry_run": True,
            # v1-native keys are deep-merged last, over the mapped ones.
            "android": {"notification": {"color": "#ff0000", "tag": "t2"}, "priority": "HIGH"},
            "apns": {"headers": {"apns-priority": "5"}, "payload": {"aps": {"badge": 3}}},
            "webpush": {"headers": {"Urgency": "low"}},
            "fcm_options": {"analytics_label": "campaign"},
            # Not addressable from an override; unknown legacy keys are dropped.
            "token": "someone-else",
            "topic": "news",
            "delay_while_idle": True,
        }

        [row] = delivered(
            client,
            account,
            service_sid,
            Identity="alice",
            Body="Hello",
            Data={"k": "v"},
            Fcm=override,
        )

        assert row["status"] == "sent"
        [send] = fake.sends
        assert send.json() == {
            "validate_only": True,
            "message": {
                "token": "tok-alice",
                "data": {"twi_body": "Hello", "k": "v", "n": "5", "s": "x", "twenty": '{"k":[1]}'},
                "notification": {"title": "T", "body": "B", "image": "https://example.com/i.png"},
                "android": {
                    "priority": "HIGH",
                    "ttl": "60s",
                    "collapse_key": "chat-1",
                    "restricted_package_name": "com.example.app",
                    "notification": {
                        "sound": "default",
                        "click_action": "OPEN_CHAT",
                        "channel_id": "chat",
                        "body_loc_args": ["a", "b"],
                        "tag": "t2",
                        "color": "#ff0000",
                    },
                },
                "apns": {
                    "headers": {"apns-priority": "5"},
                    "payload": {"aps": {"content-available": 1, "mutable-content": 1, "badge": 3}},
                },
                "webpush": {"headers": {"Urgency": "low"}},
                "fcm_options": {"analytics_label": "campaign"},
            },
        }

    def test_an_override_data_key_replaces_the_notification_data(
        self, client, account, fake, account_one
    ):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")

        delivered(
            client,
            account,
            service_sid,
            Identity="alice",
            Title="t",
            Data={"k": "from data", "only": "data"},
            Fcm={"data": {"k": "from override"}},
        )

        assert fake.sends[0].json()["message"]["data"] == {
            "twi_title": "t",
            "k": "from override",
            "only": "data",
        }

    @pytest.mark.parametrize(
        ("override", "message"),
        [
            ({"data": "x"}, "Override 'data' must be a JSON object"),
            ({"notification": ["x"]}, "Override 'notification' must be a JSON object"),
            ({"android": 1}, "Override 'android' must be a JSON object"),
            ({"time_to_live": "soon"}, "Override 'time_to_live' must be a number of seconds"),
            (
                {"notification": {"title_loc_args": "not json"}},
                "Override 'notification.title_loc_args' must be a JSON array",
            ),
            # JSON inside the string obeys the request's rules: these were retried until the
            # TTL (RecursionError, a surrogate FCM's body cannot encode) or sent, and each made
            # the Deliveries listing a 500.
            *(
                (
                    {"notification": {"body_loc_args": inner}},
                    "Override 'notification.body_loc_args' must be a JSON array",
                )
                for inner in (
                    "[" * 5000 + "]" * 5000,
                    '["\\ud800"]',
                    "[999999999999999999999999999999]",
                    "[NaN, 1e400]",
                )
            ),
        ],
    )
    def test_a_malformed_override_fails_without_a_request(
        self, client, account, fake, account_one, override, message
    ):
        service_sid = fcm_service(client, account, account_one)
        binding = fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x", Fcm=override)

        assert (row["status"], row["attempts"], row["error_message"]) == ("failed", 1, message)
        assert fake.requests == []
        assert binding_exists(client, account, service_sid, binding["sid"])


class TestFcmCredentials:
    def test_gcm_bindings_use_the_gcm_credential_when_the_service_has_one(
        self, client, account, fake, account_one, account_two
    ):
        service_sid = make_service(
            client,
            account,
            FcmCredentialSid=fcm_credential(client, account, account_one),
            GcmCredentialSid=fcm_credential(client, account, account_two),
        )["sid"]
        fcm_binding(client, account, service_sid, "tok-fcm")
        fcm_binding(client, account, service_sid, "tok-gcm", BindingType="gcm")

        delivered(client, account, service_sid, Identity="alice", Body="x")

        paths = {r.json()["message"]["token"]: r.path for r in fake.sends}
        assert paths == {
            "tok-fcm": "/v1/projects/proj-one/messages:send",
            "tok-gcm": "/v1/projects/proj-two/messages:send",
        }

    def test_a_bindings_own_credential_wins(self, client, account, fake, account_one, account_two):
        service_sid = fcm_service(client, account, account_one)
        own = fcm_credential(client, account, account_two)
        fcm_binding(client, account, service_sid, "tok-alice", CredentialSid=own)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "sent"
        assert [r.path for r in fake.sends] == ["/v1/projects/proj-two/messages:send"]

    @pytest.mark.parametrize(
        ("credential_type", "binding_type", "secret"),
        [("fcm", "fcm", {"Secret": "AAAA-legacy-server-key"}), ("gcm", "gcm", {"ApiKey": "AIza"})],
    )
    def test_a_legacy_server_key_fails_saying_why(
        self, client, account, fake, credential_type, binding_type, secret
    ):
        credential = make_credential(client, account, Type=credential_type, **secret)
        service_sid = make_service(
            client, account, **{f"{credential_type.capitalize()}CredentialSid": credential["sid"]}
        )["sid"]
        binding = fcm_binding(client, account, service_sid, "tok-alice", BindingType=binding_type)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert undated(row) == {
            "notification_sid": row["notification_sid"],
            "binding_sid": binding["sid"],
            "identity": "alice",
            "binding_type": binding_type,
            "address": "tok-alice",
            "status": "failed",
            "attempts": 1,
            "provider_message_id": None,
            "provider_status": None,
            "provider_response": None,
            "error_message": LEGACY_MESSAGE.format(sid=credential["sid"]),
            "callback_error": None,
        }
        assert fake.requests == []
        assert binding_exists(client, account, service_sid, binding["sid"])

    def test_a_credential_without_secrets_fails(self, client, account, fake):
        credential = make_credential(client, account, Type="fcm")
        service_sid = make_service(client, account, FcmCredentialSid=credential["sid"])["sid"]
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["error_message"]) == (
            "failed",
            f"Credential {credential['sid']} has no ServiceAccount (the Firebase"
            " service-account JSON key) to send through FCM HTTP v1",
        )
        assert fake.requests == []

    def test_without_a_credential_the_log_channel(self, client, account, fake):
        service_sid = make_service(client, account)["sid"]
        fcm_binding(client, account, service_sid, "tok-alice")

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert row["status"] == "sent"
        assert row["provider_message_id"].startswith("log-")
        assert fake.requests == []


class TestFcmAnswers:
    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (unregistered(404), "FCM 404 UNREGISTERED: Requested entity was not found."),
            (
                google_error(400, "Token gone", "INVALID_ARGUMENT", "UNREGISTERED"),
                "FCM 400 UNREGISTERED: Token gone",
            ),
            (
                invalid_registration_token(),
                "FCM 400 INVALID_ARGUMENT: The registration token is not a valid FCM"
                " registration token",
            ),
        ],
    )
    def test_a_dead_token_deletes_the_binding(
        self, client, account, fake, account_one, reply, message
    ):
        service_sid = fcm_service(client, account, account_one)
        dead = fcm_binding(client, account, service_sid, "tok-dead")
        alive = fcm_binding(client, account, service_sid, "tok-alive")
        fake.script("tok-dead", reply)

        rows = delivered(client, account, service_sid, Identity="alice", Body="x")

        by_address = {row["address"]: row for row in rows}
        assert undated(by_address["tok-dead"]) == {
            "notification_sid": rows[0]["notification_sid"],
            "binding_sid": dead["sid"],
            "identity": "alice",
            "binding_type": "fcm",
            "address": "tok-dead",
            "status": "failed",
            "attempts": 1,
            "provider_message_id": None,
            "provider_status": reply.status,
            "provider_response": json.dumps(reply.body, separators=(",", ":")),
            "error_message": message,
            "callback_error": None,
        }
        assert by_address["tok-alive"]["status"] == "sent"
        assert not binding_exists(client, account, service_sid, dead["sid"])
        assert binding_exists(client, account, service_sid, alive["sid"])

    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (
                google_error(400, "Invalid value at 'message.android.ttl'", "INVALID_ARGUMENT"),
                "FCM 400 INVALID_ARGUMENT: Invalid value at 'message.android.ttl'",
            ),
            (
                google_error(403, "SenderId mismatch", "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
                "FCM 403 SENDER_ID_MISMATCH: SenderId mismatch",
            ),
            # A 404 without UNREGISTERED (a wrong project, say) must not delete bindings.
            (
                google_error(404, "Requested entity was not found.", "NOT_FOUND"),
                "FCM 404 NOT_FOUND: Requested entity was not found.",
            ),
        ],
    )
    def test_other_client_errors_fail_and_keep_the_binding(
        self, client, account, fake, account_one, reply, message
    ):
        service_sid = fcm_service(client, account, account_one)
        binding = fcm_binding(client, account, service_sid, "tok-alice")
        fake.script("tok-alice", reply)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"], row["provider_status"]) == (
            "failed",
            1,
            reply.status,
        )
        assert row["error_message"] == message
        assert binding_exists(client, account, service_sid, binding["sid"])
        assert len(fake.sends) == 1

    @pytest.mark.parametrize(
        "reply",
        [
            google_error(500, "Internal error", "INTERNAL", "INTERNAL"),
            google_error(503, "Unavailable", "UNAVAILABLE", "UNAVAILABLE"),
            google_error(429, "Quota exceeded", "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        ],
    )
    def test_transient_errors_are_retried(
        self, client, account, fake, account_one, fast_retry, reply
    ):
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")
        fake.script("tok-alice", reply)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"], row["error_message"]) == ("sent", 2, None)
        assert row["provider_message_id"] == "projects/proj-one/messages/0:1"
        assert [r.json() for r in fake.sends] == [fake.sends[0].json()] * 2
        assert len(fake.token_requests) == 1

    def test_500_then_200_without_fast_retry(self, client, account, fake, account_one):
        """The worker's own backoff (about 1 s) brings the second attempt."""
        service_sid = fcm_service(client, account, account_one)
        fcm_binding(client, account, service_sid, "tok-alice")
        fake.script("tok-alice", google_error(500, "Internal error", "INTERNAL"))

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"]) == ("sent", 2)
        assert len(fake.sends) == 2

    def test_an_unreachable_fcm_is_retried(self, settings, engine, account, fake, account_one):
        closed = f"http://127.0.0.1:{free_port()}"
        with app_client(settings, fcm_url=closed, fcm_token_url=fake.token_url) as client:
            service_sid = fcm_service(client, account, account_one)
            fcm_binding(client, account, service_sid, "tok-alice")
            nt = notify(client, account, service_sid, Identity="alice", Body="x")

            [row] = wait_deliveries(
                client,
                account,
                service_sid,
                nt,
                until=lambda rows: bool(rows) and rows[0]["error_message"] is not None,
            )

        assert (row["status"], row["attempts"], row["provider_status"]) == ("pending", 1, None)
        assert row["error_message"].startswith("FCM unreachable: ConnectError")
        assert len(fake.token_requests) == 1
