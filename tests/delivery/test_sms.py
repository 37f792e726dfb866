"""SMS delivery, end to end: notifications posted through the API, the worker running, a fake
Twilio Messages API on a local port receiving the requests."""

import base64
import json
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from notify_server.config import Settings
from notify_server.notifications.repository import deliveries
from tests.delivery.fake_sms import FakeSms, twilio_error
from tests.delivery.test_fcm import (
    app_client,
    binding_exists,
    delivered,
    notify,
    undated,
    wait_deliveries,
)
from tests.factories import Account, make_binding, make_service
from tests.servers import free_port

MG = "MG" + "a1" * 16
FROM = "+15005550006"
ALICE = "+15555550100"
BOB = "+15555550101"
MISSING_BODY = "sms needs Body or Sms.media_urls"


@pytest.fixture(scope="module")
def sms_server() -> Iterator[FakeSms]:
    fake = FakeSms().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(sms_server: FakeSms) -> FakeSms:
    sms_server.reset()
    return sms_server


def sms_settings(fake: FakeSms, **update: object) -> dict[str, object]:
    return {
        "sms_base_url": fake.url,
        "sms_account_sid": fake.account_sid,
        "sms_auth_token": fake.auth_token,
        "sms_from": FROM,
        **update,
    }


@pytest.fixture
def client(settings: Settings, engine, fake: FakeSms) -> Iterator[TestClient]:
    with app_client(settings, **sms_settings(fake)) as client:
        yield client


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("notify_server.delivery.worker.backoff", lambda attempt: timedelta(0))


def sms_binding(
    client: TestClient, account: Account, service_sid: str, address: str = ALICE, **form: str
) -> dict:
    return make_binding(
        client, account, service_sid, **{"BindingType": "sms", "Address": address, **form}
    )


def messaging_service(client: TestClient, account: Account) -> str:
    return make_service(client, account, MessagingServiceSid=MG)["sid"]


def basic(fake: FakeSms) -> str:
    pair = f"{fake.account_sid}:{fake.auth_token}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class TestSmsMessage:
    def test_through_the_services_messaging_service(self, client, account, fake):
        service_sid = messaging_service(client, account)
        binding = sms_binding(client, account, service_sid)

        rows = delivered(client, account, service_sid, Identity="alice", Body="Hello")

        [request] = fake.requests
        assert request.method == "POST"
        assert request.path == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
        assert request.headers["authorization"] == basic(fake)
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert request.form() == [("To", ALICE), ("MessagingServiceSid", MG), ("Body", "Hello")]
        [sid] = fake.message_sids
        assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
        assert [undated(row) for row in rows] == [
            {
                "notification_sid": rows[0]["notification_sid"],
                "binding_sid": binding["sid"],
                "identity": "alice",
                "binding_type": "sms",
                "address": ALICE,
                "status": "sent",
                "attempts": 1,
                "provider_message_id": sid,
                "provider_status": 201,
                "provider_response": rows[0]["provider_response"],
                "error_message": None,
                "callback_error": None,
            }
        ]
        assert json.loads(rows[0]["provider_response"])["sid"] == sid

    def test_from_the_configured_number_without_a_messaging_service(self, client, account, fake):
        service_sid = make_service(client, account)["sid"]
        sms_binding(client, account, service_sid)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="Hello")

        assert (row["status"], row["provider_message_id"]) == ("sent", fake.message_sids[0])
        assert [r.form() for r in fake.requests] == [
            [("To", ALICE), ("From", FROM), ("Body", "Hello")]
        ]

    def test_the_sms_override(self, client, account, fake):
        service_sid = messaging_service(client, account)
        sms_binding(client, account, service_sid)
        override = {
            "body": "Short version",
            "media_urls": ["https://example.com/a.jpg", "https://example.com/b.png"],
            "status_callback": "https://example.com/status",
            "max_price": 0.5,
        }

        [row] = delivered(
            client, account, service_sid, Identity="alice", Body="Long version", Sms=override
        )

        assert row["status"] == "sent"
        assert [r.form() for r in fake.requests] == [
            [
                ("To", ALICE),
                ("MessagingServiceSid", MG),
                ("Body", "Short version"),
                ("MediaUrl", "https://example.com/a.jpg"),
                ("MediaUrl", "https://example.com/b.png"),
                ("StatusCallback", "https://example.com/status"),
                ("MaxPrice", "0.5"),
            ]
        ]

    def test_media_without_a_body(self, client, account, fake):
        service_sid = messaging_service(client, account)
        sms_binding(client, account, service_sid)

        [row] = delivered(
            client,
            account,
            service_sid,
            Identity="alice",
            Title="not for sms",
            Sms={"media_urls": ["https://example.com/a.jpg"]},
        )

        assert row["status"] == "sent"
        assert [r.form() for r in fake.requests] == [
            [("To", ALICE), ("MessagingServiceSid", MG), ("MediaUrl", "https://example.com/a.jpg")]
        ]

    def test_direct_to_bindings(self, client, account, fake):
        service_sid = messaging_service(client, account)
        targets = [json.dumps({"binding_type": "sms", "address": a}) for a in (ALICE, BOB)]

        rows = delivered(client, account, service_sid, ToBinding=targets, Body="Hi")

        assert sorted((r["address"], r["status"], r["binding_sid"]) for r in rows) == [
            (ALICE, "sent", None),
            (BOB, "sent", None),
        ]
        assert sorted(r.form()[0][1] for r in fake.requests) == [ALICE, BOB]

    @pytest.mark.parametrize(
        "form",
        [
            {"Title": "only a title"},
            {"Sms": {"body": ""}},
            {"Sms": {"media_urls": []}},
            {"Body": "", "Data": {"k": "v"}},
        ],
    )
    def test_neither_body_nor_media_fails(self, client, account, fake, form):
        service_sid = messaging_service(client, account)
        binding = sms_binding(client, account, service_sid)

        [row] = delivered(client, account, service_sid, Identity="alice", **form)

        assert (row["status"], row["attempts"], row["error_message"]) == (
            "failed",
            1,
            MISSING_BODY,
        )
        assert (row["provider_status"], row["provider_message_id"]) == (None, None)
        assert fake.requests == []
        assert binding_exists(client, account, service_sid, binding["sid"])

    @pytest.mark.parametrize("body", [{"a": 1}, ["x"], True, 5])
    def test_the_overrides_body_must_be_a_string(self, client, account, fake, body):
        service_sid = messaging_service(client, account)
        sms_binding(client, account, service_sid)

        [row] = delivered(
            client, account, service_sid, Identity="alice", Body="x", Sms={"body": body}
        )

        assert (row["status"], row["attempts"], row["error_message"]) == (
            "failed",
            1,
            "Sms.body must be a string",
        )
        assert fake.requests == []

    def test_media_urls_must_be_urls(self, client, account, fake):
        service_sid = messaging_service(client, account)
        sms_binding(client, account, service_sid)

        [row] = delivered(
            client, account, service_sid, Identity="alice", Body="x", Sms={"media_urls": [1]}
        )

        assert (row["status"], row["error_message"]) == (
            "failed",
            "Sms.media_urls must be a JSON array of URLs",
        )
        assert fake.requests == []

    def test_no_sender_fails(self, settings, engine, account, fake):
        with app_client(settings, **sms_settings(fake, sms_from=None)) as client:
            service_sid = make_service(client, account)["sid"]
            sms_binding(client, account, service_sid)

            [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["error_message"]) == (
            "failed",
            "sms needs the Service's MessagingServiceSid or a sender in NOTIFY_SMS_FROM",
        )
        assert fake.requests == []


class TestSmsAnswers:
    @pytest.mark.parametrize(
        ("code", "message"),
        [
            (21211, "The 'To' number +15555550100 is not a valid phone number."),
            (21614, "'To' number is not a valid mobile number"),
        ],
    )
    def test_an_unreachable_number_deletes_the_binding(self, client, account, fake, code, message):
        service_sid = messaging_service(client, account)
        dead = sms_binding(client, account, service_sid, ALICE)
        alive = sms_binding(client, account, service_sid, BOB)
        reply = twilio_error(400, code, message)
        fake.script(ALICE, reply)

        rows = delivered(client, account, service_sid, Identity="alice", Body="x")

        by_address = {row["address"]: row for row in rows}
        assert undated(by_address[ALICE]) == {
            "notification_sid": rows[0]["notification_sid"],
            "binding_sid": dead["sid"],
            "identity": "alice",
            "binding_type": "sms",
            "address": ALICE,
            "status": "failed",
            "attempts": 1,
            "provider_message_id": None,
            "provider_status": 400,
            "provider_response": json.dumps(reply.body, separators=(",", ":")),
            "error_message": f"SMS API 400 error {code}: {message}",
            "callback_error": None,
        }
        assert by_address[BOB]["status"] == "sent"
        assert not binding_exists(client, account, service_sid, dead["sid"])
        assert binding_exists(client, account, service_sid, alive["sid"])

    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (
                twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"),
                "SMS API 400 error 21610: Attempt to send to unsubscribed recipient",
            ),
            (
                twilio_error(400, 21606, "The From phone number is not a valid number"),
                "SMS API 400 error 21606: The From phone number is not a valid number",
            ),
            (
                twilio_error(403, 20003, "Permission Denied"),
                "SMS API 403 error 20003: Permission Denied",
            ),
        ],
    )
    def test_other_client_errors_fail_and_keep_the_binding(
        self, client, account, fake, reply, message
    ):
        service_sid = messaging_service(client, account)
        binding = sms_binding(client, account, service_sid)
        fake.script(ALICE, reply)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"], row["provider_status"], row["error_message"]) == (
            "failed",
            1,
            reply.status,
            message,
        )
        assert binding_exists(client, account, service_sid, binding["sid"])
        assert len(fake.requests) == 1

    def test_a_wrong_auth_token_fails(self, settings, engine, account, fake):
        with app_client(settings, **sms_settings(fake, sms_auth_token="wrong")) as client:
            service_sid = messaging_service(client, account)
            binding = sms_binding(client, account, service_sid)

            [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

            assert (row["status"], row["provider_status"], row["error_message"]) == (
                "failed",
                401,
                "SMS API 401 error 20003: Authenticate",
            )
            assert binding_exists(client, account, service_sid, binding["sid"])

    @pytest.mark.parametrize(
        "reply",
        [
            twilio_error(500, 20500, "Internal Server Error"),
            twilio_error(503, 20503, "Service Unavailable"),
            twilio_error(429, 20429, "Too Many Requests"),
        ],
    )
    def test_transient_errors_are_retried(self, client, account, fake, fast_retry, reply):
        service_sid = messaging_service(client, account)
        sms_binding(client, account, service_sid)
        fake.script(ALICE, reply)

        [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        assert (row["status"], row["attempts"], row["error_message"]) == ("sent", 2, None)
        assert row["provider_message_id"] == fake.message_sids[0]
        [first, second] = fake.requests
        assert (
            first.form()
            == second.form()
            == [
                ("To", ALICE),
                ("MessagingServiceSid", MG),
                ("Body", "x"),
            ]
        )

    def test_an_unreachable_api_is_retried(self, settings, engine, account, fake):
        closed = f"http://127.0.0.1:{free_port()}"
        with app_client(settings, **sms_settings(fake, sms_base_url=closed)) as client:
            service_sid = messaging_service(client, account)
            sms_binding(client, account, service_sid)
            nt = notify(client, account, service_sid, Identity="alice", Body="x")

            [row] = wait_deliveries(
                client,
                account,
                service_sid,
                nt,
                until=lambda rows: bool(rows) and rows[0]["error_message"] is not None,
            )

        assert (row["status"], row["attempts"], row["provider_status"]) == ("pending", 1, None)
        assert row["error_message"].startswith("SMS API unreachable: ConnectError")


class TestSmsUnconfigured:
    @pytest.mark.parametrize("missing", ["sms_account_sid", "sms_auth_token"])
    def test_goes_to_the_log_channel(self, settings, engine, account, fake, missing):
        with app_client(settings, **sms_settings(fake, **{missing: None})) as client:
            service_sid = messaging_service(client, account)
            sms_binding(client, account, service_sid)

            [row] = delivered(client, account, service_sid, Identity="alice", Body="x")

        with engine.connect() as conn:
            [delivery_id] = conn.execute(select(deliveries.c.id)).scalars()
        assert (row["status"], row["attempts"], row["error_message"]) == ("sent", 1, None)
        assert row["provider_message_id"] == f"log-{delivery_id}"
        assert fake.requests == []
