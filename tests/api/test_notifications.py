"""POST /v1/Services/{IS}/Notifications (Twilio's CreateNotification) and our extension
GET .../Notifications/{NT}/Deliveries: the 201 body, targeting, validation, access, and the
outbox rows the log channel delivers (no provider is configured here)."""

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.notifications.models import Delivery, Expansion, Notification
from tests.errors import UNAUTHENTICATED, assert_invalid, not_found, twilio_error
from tests.factories import Account, make_api_key, make_binding, make_service

NT_RE = re.compile(r"^NT[0-9a-f]{32}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
NOTIFICATION_KEYS = {
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
}
DELIVERY_KEYS = {
    "notification_sid",
    "binding_sid",
    "identity",
    "binding_type",
    "address",
    "status",
    "attempts",
    "provider_message_id",
    "provider_status",
    "provider_response",
    "error_message",
    "callback_error",
    "date_created",
    "date_updated",
    "provider_request",
}
JSON_FIELDS = {
    "Data": "data",
    "Apn": "apn",
    "Fcm": "fcm",
    "Gcm": "gcm",
    "Sms": "sms",
    "FacebookMessenger": "facebook_messenger",
    "Alexa": "alexa",
}
FINAL = ("sent", "failed")
UNKNOWN_SERVICE = "IS" + "0" * 32
UNKNOWN_NOTIFICATION = "NT" + "0" * 32
MIXED = "Direct notifications and query notifications can not be requested together"
NO_TARGET = "A Notification needs a target: Identity, Tag, Segment or ToBinding"


def notifications_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Notifications"


def deliveries_path(service_sid: str, notification_sid: str) -> str:
    return f"{notifications_path(service_sid)}/{notification_sid}/Deliveries"


def notify(client: TestClient, account: Account, service_sid: str, data):
    return client.post(notifications_path(service_sid), data=data, auth=account.auth)


def notify_ok(client: TestClient, account: Account, service_sid: str, data) -> dict:
    response = notify(client, account, service_sid, data)
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(
    client: TestClient, account: Account, service_sid: str, notification_sid: str
) -> list[dict]:
    response = client.get(
        deliveries_path(service_sid, notification_sid),
        params={"PageSize": 1000},
        auth=account.auth,
    )
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def final_deliveries(
    client: TestClient, account: Account, service_sid: str, notification_sid: str
) -> list[dict]:
    """The outbox rows once the worker has finished them all (10 s deadline)."""
    deadline = time.monotonic() + 10
    while True:
        rows = deliveries(client, account, service_sid, notification_sid)
        if all(row["status"] in FINAL for row in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def targeted(client: TestClient, account: Account, service_sid: str, data) -> list[str]:
    """POST a notification; the binding sids its outbox holds (one row each, sorted)."""
    notification = notify_ok(client, account, service_sid, data)
    rows = deliveries(client, account, service_sid, notification["sid"])
    sids = [row["binding_sid"] for row in rows]
    assert len(sids) == len(set(sids)), rows
    return sorted(sids)


def stored_counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        notifications = conn.execute(
            select(func.count()).select_from(Notification.__table__)
        ).scalar_one()
        outbox = conn.execute(select(func.count()).select_from(Delivery.__table__)).scalar_one()
    return notifications, outbox


def parse_date(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account, FriendlyName="notifications")["sid"]


@pytest.fixture
def bindings(client: TestClient, account: Account, service_sid: str) -> dict[str, str]:
    """A small population: name -> binding sid."""

    def make(identity: str, binding_type: str, address: str, *tags: str) -> str:
        return make_binding(
            client,
            account,
            service_sid,
            Identity=identity,
            BindingType=binding_type,
            Address=address,
            Tag=list(tags),
        )["sid"]

    return {
        "alice_apn": make("alice", "apn", "alice-apn", "vip", "eu"),
        "alice_fcm": make("alice", "fcm", "alice-fcm", "eu"),
        "alice_sms": make("alice", "sms", "+15550000001", "vip"),
        "bob_apn": make("bob", "apn", "bob-apn", "vip"),
        "bob_gcm": make("bob", "gcm", "bob-gcm"),
        "carol_sms": make("carol", "sms", "+15550000002", "vip", "eu"),
    }


class TestCreateNotification:
    def test_minimal_body_exactly(self, client, account, service_sid, bindings):
        before = datetime.now(UTC).replace(microsecond=0)
        response = notify(client, account, service_sid, {"Identity": "alice", "Body": "hi"})
        after = datetime.now(UTC)
        assert response.status_code == 201, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        notification = response.json()
        assert set(notification) == NOTIFICATION_KEYS
        assert NT_RE.fullmatch(notification["sid"])
        assert DATE_RE.fullmatch(notification["date_created"])
        assert before <= parse_date(notification["date_created"]) <= after
        assert notification == {
            "sid": notification["sid"],
            "account_sid": account.sid,
            "service_sid": service_sid,
            "date_created": notification["date_created"],
            "identities": ["alice"],
            "tags": [],
            "segments": [],
            "priority": "high",
            "ttl": 2419200,
            "title": None,
            "body": "hi",
            "sound": None,
            "action": None,
            "data": None,
            "apn": None,
            "fcm": None,
            "gcm": None,
            "sms": None,
            "facebook_messenger": None,
            "alexa": None,
        }

    def test_every_field_echoed(self, client, account, service_sid, bindings):
        overrides = {
            "Data": {"order": 42, "nested": {"a": [1, 2]}},
            "Apn": {"aps": {"badge": 3}},
            "Fcm": {"notification": {"color": "#ff0000"}},
            "Gcm": {"collapse_key": "news"},
            "Sms": {"body": "sms text", "media_urls": ["https://example.com/a.png"]},
            "FacebookMessenger": {"messaging_type": "UPDATE"},
            "Alexa": {"ttl": 60},
        }
        notification = notify_ok(
            client,
            account,
            service_sid,
            {
                "Identity": ["alice", "bob"],
                "Tag": ["vip", "all"],
                "Title": "Title ✓",
                "Body": "Body",
                "Sound": "ding.aiff",
                "Action": "OPEN",
                "Priority": "low",
                "Ttl": "60",
                **{name: json.dumps(value) for name, value in overrides.items()},
            },
        )
        assert set(notification) == NOTIFICATION_KEYS
        assert notification["identities"] == ["alice", "bob"]
        assert notification["tags"] == ["vip", "all"]
        assert notification["segments"] == []
        assert notification["priority"] == "low"
        assert notification["ttl"] == 60
        assert (
            notification["title"],
            notification["body"],
            notification["sound"],
            notification["action"],
        ) == ("Title ✓", "Body", "ding.aiff", "OPEN")
        for name, key in JSON_FIELDS.items():
            assert notification[key] == overrides[name], key

    def test_empty_optional_fields_count_as_not_given(self, client, account, service_sid):
        notification = notify_ok(
            client,
            account,
            service_sid,
            {
                "Identity": "alice",
                "Title": "",
                "Body": "",
                "Sound": "",
                "Action": "",
                "Priority": "",
                "Ttl": "",
                "DeliveryCallbackUrl": "",
                **{name: "" for name in JSON_FIELDS},
            },
        )
        assert notification["priority"] == "high"
        assert notification["ttl"] == 2419200
        for key in ("title", "body", "sound", "action", *JSON_FIELDS.values()):
            assert notification[key] is None, key

    def test_ttl_bounds_accepted(self, client, account, service_sid):
        for ttl in (0, 2419200):
            assert notify_ok(client, account, service_sid, {"Tag": "all", "Ttl": ttl})["ttl"] == ttl

    def test_each_notification_has_its_own_sid(self, client, account, service_sid):
        sids = {notify_ok(client, account, service_sid, {"Tag": "all"})["sid"] for _ in range(3)}
        assert len(sids) == 3

    def test_json_suffix(self, client, account, service_sid, bindings):
        response = client.post(
            f"{notifications_path(service_sid)}.json",
            data={"Identity": "bob"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        assert response.json()["identities"] == ["bob"]

    def test_api_key_auth(self, client, engine, account, service_sid):
        key = make_api_key(engine, account.sid)
        response = client.post(notifications_path(service_sid), data={"Tag": "all"}, auth=key)
        assert response.status_code == 201, response.text
        assert response.json()["account_sid"] == account.sid

    def test_direct_notification_body(self, client, account, service_sid):
        notification = notify_ok(
            client,
            account,
            service_sid,
            {"ToBinding": json.dumps({"binding_type": "sms", "address": "+15555555555"})},
        )
        # ToBindings are not echoed.
        assert set(notification) == NOTIFICATION_KEYS
        assert notification["identities"] == []
        assert notification["tags"] == []


class TestTargeting:
    def test_identity_is_any_of(self, client, account, service_sid, bindings):
        assert targeted(client, account, service_sid, {"Identity": ["alice", "carol"]}) == sorted(
            [bindings["alice_apn"], bindings["alice_fcm"], bindings["alice_sms"]]
            + [bindings["carol_sms"]]
        )

    def test_twenty_identities_accepted(self, client, account, service_sid, bindings):
        identities = ["bob"] + [f"nobody-{i}" for i in range(19)]
        assert targeted(client, account, service_sid, {"Identity": identities}) == sorted(
            [bindings["bob_apn"], bindings["bob_gcm"]]
        )

    def test_tag_is_all_of(self, client, account, service_sid, bindings):
        assert targeted(client, account, service_sid, {"Tag": ["vip", "eu"]}) == sorted(
            [bindings["alice_apn"], bindings["carol_sms"]]
        )
        assert targeted(client, account, service_sid, {"Tag": "vip"}) == sorted(
            [bindings[n] for n in ("alice_apn", "alice_sms", "bob_apn", "carol_sms")]
        )

    def test_all_is_every_binding_of_the_service(
        self, client, account, service_sid, bindings, other_account
    ):
        other_service = make_service(client, account)["sid"]
        make_binding(client, account, other_service, Identity="alice")
        foreign = make_service(client, other_account)["sid"]
        make_binding(client, other_account, foreign, Identity="alice")
        assert targeted(client, account, service_sid, {"Tag": "all"}) == sorted(bindings.values())

    def test_binding_type_tags(self, client, account, service_sid, bindings):
        assert targeted(client, account, service_sid, {"Tag": "sms"}) == sorted(
            [bindings["alice_sms"], bindings["carol_sms"]]
        )
        assert targeted(client, account, service_sid, {"Tag": "gcm"}) == [bindings["bob_gcm"]]
        assert targeted(client, account, service_sid, {"Tag": ["apn", "vip"]}) == sorted(
            [bindings["alice_apn"], bindings["bob_apn"]]
        )
        assert targeted(client, account, service_sid, {"Tag": ["all", "eu", "sms"]}) == [
            bindings["carol_sms"]
        ]
        # All of: no binding has two types.
        assert targeted(client, account, service_sid, {"Tag": ["apn", "fcm"]}) == []

    def test_identity_and_tag_both_must_match(self, client, account, service_sid, bindings):
        assert targeted(client, account, service_sid, {"Identity": "alice", "Tag": "vip"}) == (
            sorted([bindings["alice_apn"], bindings["alice_sms"]])
        )
        assert targeted(
            client, account, service_sid, {"Identity": ["alice", "bob"], "Tag": "apn"}
        ) == sorted([bindings["alice_apn"], bindings["bob_apn"]])
        assert targeted(client, account, service_sid, {"Identity": "bob", "Tag": "eu"}) == []

    def test_five_tags_accepted(self, client, account, service_sid, bindings):
        tags = ["all", "vip", "eu", "apn", "vip"]
        assert targeted(client, account, service_sid, {"Tag": tags}) == [bindings["alice_apn"]]

    def test_identity_without_bindings(self, client, engine, account, service_sid, bindings):
        notification = notify_ok(client, account, service_sid, {"Identity": "nobody"})
        assert notification["identities"] == ["nobody"]
        assert deliveries(client, account, service_sid, notification["sid"]) == []
        assert stored_counts(engine) == (1, 0)

    def test_segment_matches_nothing(self, client, account, service_sid, bindings):
        notification = notify_ok(client, account, service_sid, {"Segment": "old-segment"})
        assert notification["segments"] == ["old-segment"]
        assert deliveries(client, account, service_sid, notification["sid"]) == []

    def test_outbox_rows_describe_each_binding(self, client, account, service_sid, bindings):
        notification = notify_ok(client, account, service_sid, {"Identity": "carol"})
        [row] = deliveries(client, account, service_sid, notification["sid"])
        assert set(row) == DELIVERY_KEYS
        assert DATE_RE.fullmatch(row["date_created"])
        assert row["notification_sid"] == notification["sid"]
        assert (row["binding_sid"], row["identity"], row["binding_type"], row["address"]) == (
            bindings["carol_sms"],
            "carol",
            "sms",
            "+15550000002",
        )

    def test_log_channel_delivers_every_row(self, client, account, service_sid, bindings):
        notification = notify_ok(client, account, service_sid, {"Tag": "all", "Body": "hi"})
        rows = final_deliveries(client, account, service_sid, notification["sid"])
        assert sorted(row["binding_sid"] for row in rows) == sorted(bindings.values())
        for row in rows:
            assert row["status"] == "sent", row
            assert row["attempts"] == 1
            assert row["error_message"] is None
            assert row["provider_message_id"].startswith("log-")
        assert len({row["provider_message_id"] for row in rows}) == len(rows)

    def test_retired_channels_fail(self, client, account, service_sid, bindings):
        make_binding(
            client, account, service_sid, Identity="dave", BindingType="alexa", Address="dave-a"
        )
        make_binding(
            client,
            account,
            service_sid,
            Identity="dave",
            BindingType="facebook-messenger",
            Address="dave-fb",
        )
        make_binding(client, account, service_sid, Identity="dave", Address="dave-apn")
        notification = notify_ok(client, account, service_sid, {"Identity": "dave", "Body": "x"})
        rows = final_deliveries(client, account, service_sid, notification["sid"])
        by_type = {row["binding_type"]: row for row in rows}
        assert sorted(by_type) == ["alexa", "apn", "facebook-messenger"]
        assert by_type["apn"]["status"] == "sent"
        for binding_type in ("alexa", "facebook-messenger"):
            row = by_type[binding_type]
            assert row["status"] == "failed", row
            assert row["attempts"] == 1
            assert binding_type in row["error_message"]
            assert "retired" in row["error_message"]
            assert row["provider_message_id"] is None


class ExpandingClient(TestClient):
    """Answers a notification's POST once the workers have written all its targets."""

    engine: Engine

    def post(self, url, *args, **kwargs):  # type: ignore[override]
        response = super().post(url, *args, **kwargs)
        if str(url).endswith("/Notifications") and response.status_code == 201:
            deadline = time.monotonic() + 10
            while waiting_expansions(self.engine):
                assert time.monotonic() < deadline, "expansion did not finish"
                time.sleep(0.01)
        return response


def waiting_expansions(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Expansion.__table__)).scalar_one()


class TestTargetingInChunks(TestTargeting):
    """The same targets when the request writes only the first and the workers the rest,
    one binding per chunk: the query kept for the workers means what the request's did."""

    @pytest.fixture
    def client(self, settings: Settings, engine: Engine) -> Iterator[TestClient]:
        chunked = settings.model_copy(update={"fanout_chunk_size": 1})
        with ExpandingClient(create_app(chunked), raise_server_exceptions=False) as client:
            client.engine = engine
            yield client

    def test_the_request_writes_only_the_first_chunk(
        self, settings, engine, account, service_sid, bindings
    ):
        quiet = settings.model_copy(update={"fanout_chunk_size": 1, "worker_enabled": False})
        with TestClient(create_app(quiet)) as client:
            sid = notify_ok(client, account, service_sid, {"Tag": "vip"})["sid"]
            rows = deliveries(client, account, service_sid, sid)
        assert [row["binding_sid"] for row in rows] == [bindings["alice_apn"]]
        assert waiting_expansions(engine) == 1


class TestDirectNotification:
    def test_one_row_per_to_binding(self, client, account, service_sid, bindings):
        targets = [
            {"binding_type": "sms", "address": "+15555555555"},
            {"binding_type": "apn", "address": "device-token"},
            {"binding_type": "fcm", "address": "fcm-token", "ignored": "extra key"},
        ]
        notification = notify_ok(
            client,
            account,
            service_sid,
            {"ToBinding": [json.dumps(t) for t in targets], "Body": "hello"},
        )
        rows = final_deliveries(client, account, service_sid, notification["sid"])
        assert [(r["binding_type"], r["address"]) for r in rows] == [
            ("sms", "+15555555555"),
            ("apn", "device-token"),
            ("fcm", "fcm-token"),
        ]
        for row in rows:
            assert row["binding_sid"] is None
            assert row["identity"] is None
            assert row["status"] == "sent"

    @pytest.mark.parametrize(
        "value",
        [
            "not json",
            "[]",
            '"sms"',
            '{"binding_type": "sms"}',
            '{"address": "+15555555555"}',
            '{"binding_type": "email", "address": "a@example.com"}',
            '{"binding_type": "apn", "address": ""}',
            '{"binding_type": "sms", "address": "5555555555"}',
            '{"binding_type": "sms", "address": "+05555555555"}',
        ],
    )
    def test_bad_to_binding(self, client, engine, account, service_sid, value):
        good = json.dumps({"binding_type": "apn", "address": "token"})
        response = notify(client, account, service_sid, {"ToBinding": [good, value]})
        assert_invalid(response, "ToBinding")
        assert stored_counts(engine) == (0, 0)

    @pytest.mark.parametrize("query", [{"Identity": "alice"}, {"Tag": "all"}])
    def test_direct_and_query_together(self, client, engine, account, service_sid, query):
        to_binding = json.dumps({"binding_type": "sms", "address": "+15555555555"})
        response = notify(client, account, service_sid, {"ToBinding": to_binding, **query})
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, MIXED)
        assert stored_counts(engine) == (0, 0)


class TestNotificationValidation:
    def test_no_target(self, client, engine, account, service_sid):
        response = notify(client, account, service_sid, {"Body": "to whom?"})
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, NO_TARGET)
        assert stored_counts(engine) == (0, 0)

    def test_twenty_one_identities(self, client, engine, account, service_sid):
        response = notify(
            client, account, service_sid, {"Identity": [f"user-{i}" for i in range(21)]}
        )
        assert_invalid(response, "Identity")
        assert stored_counts(engine) == (0, 0)

    def test_six_tags(self, client, engine, account, service_sid):
        response = notify(client, account, service_sid, {"Tag": [f"t{i}" for i in range(6)]})
        assert_invalid(response, "Tag")
        assert stored_counts(engine) == (0, 0)

    @pytest.mark.parametrize("value", ["medium", "HIGHEST", "10"])
    def test_priority(self, client, account, service_sid, value):
        response = notify(client, account, service_sid, {"Tag": "all", "Priority": value})
        assert_invalid(response, "Priority")

    @pytest.mark.parametrize("value", ["-1", "2419201", "x", "1.5"])
    def test_ttl(self, client, account, service_sid, value):
        response = notify(client, account, service_sid, {"Tag": "all", "Ttl": value})
        assert_invalid(response, "Ttl")

    @pytest.mark.parametrize("name", sorted(JSON_FIELDS))
    @pytest.mark.parametrize("value", ["{not json", "[1, 2]", '"text"', "3", "null"])
    def test_json_fields_must_be_objects(self, client, engine, account, service_sid, name, value):
        response = notify(client, account, service_sid, {"Tag": "all", name: value})
        assert_invalid(response, name)
        assert stored_counts(engine) == (0, 0)

    def test_data_twi_keys(self, client, engine, account, service_sid):
        data = json.dumps({"ok": 1, "twi_body": "x"})
        response = notify(client, account, service_sid, {"Tag": "all", "Data": data})
        assert "twi_body" in assert_invalid(response, "Data")
        assert stored_counts(engine) == (0, 0)

    @pytest.mark.parametrize("name", sorted(set(JSON_FIELDS) - {"Data"}))
    def test_override_twi_keys(self, client, engine, account, service_sid, name):
        override = json.dumps({"fine": True, "twi_custom": 1})
        response = notify(client, account, service_sid, {"Tag": "all", name: override})
        assert "twi_custom" in assert_invalid(response, name)
        assert stored_counts(engine) == (0, 0)

    @pytest.mark.parametrize(
        ("name", "key"),
        [
            ("Fcm", "to"),
            ("Fcm", "registration_ids"),
            ("Fcm", "condition"),
            ("Fcm", "notification_key"),
            ("Gcm", "to"),
            ("Gcm", "registration_ids"),
            ("Gcm", "notification_key"),
        ],
    )
    def test_override_may_not_address_the_message(
        self, client, engine, account, service_sid, name, key
    ):
        override = json.dumps({"priority": "high", key: "x"})
        response = notify(client, account, service_sid, {"Tag": "all", name: override})
        assert key in assert_invalid(response, name)
        assert stored_counts(engine) == (0, 0)

    def test_gcm_may_set_condition(self, client, account, service_sid):
        # Only Fcm lists `condition` among the forbidden keys.
        override = {"condition": "'news' in topics"}
        notification = notify_ok(
            client, account, service_sid, {"Tag": "all", "Gcm": json.dumps(override)}
        )
        assert notification["gcm"] == override

    @pytest.mark.parametrize(
        "url", ["not a url", "ftp://example.com/cb", "/relative/path", "http://", "example.com"]
    )
    def test_delivery_callback_url(self, client, engine, account, service_sid, url):
        response = notify(client, account, service_sid, {"Tag": "all", "DeliveryCallbackUrl": url})
        assert_invalid(response, "DeliveryCallbackUrl")
        assert stored_counts(engine) == (0, 0)

    def test_delivery_callback_url_accepted(self, client, account, service_sid):
        for url in ("http://127.0.0.1:9/cb", "https://example.com/cb?x=1"):
            notify_ok(client, account, service_sid, {"Tag": "all", "DeliveryCallbackUrl": url})


class TestNotificationAccess:
    def test_no_credentials(self, client, engine, account, service_sid):
        response = client.post(notifications_path(service_sid), data={"Tag": "all"})
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"].startswith("Basic")
        assert stored_counts(engine) == (0, 0)

    def test_wrong_token(self, client, account, service_sid):
        response = client.post(
            notifications_path(service_sid), data={"Tag": "all"}, auth=(account.sid, "0" * 32)
        )
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED

    def test_unknown_service(self, client, account):
        response = notify(client, account, UNKNOWN_SERVICE, {"Tag": "all"})
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{UNKNOWN_SERVICE}/Notifications")

    @pytest.mark.parametrize("sid", ["IS123", "ISzz" + "0" * 30, "MG" + "0" * 32])
    def test_malformed_service_sid_even_without_credentials(self, client, sid):
        response = client.post(notifications_path(sid), data={"Tag": "all"})
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{sid}/Notifications")

    def test_service_of_another_account(self, client, engine, account, other_account):
        foreign = make_service(client, other_account)["sid"]
        make_binding(client, other_account, foreign)
        response = notify(client, account, foreign, {"Tag": "all"})
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{foreign}/Notifications")
        assert stored_counts(engine) == (0, 0)

    def test_wrong_method(self, client, account, service_sid):
        # GET lists them (our extension, tests/api/test_notification_list.py); Twilio had no
        # DELETE either.
        response = client.delete(notifications_path(service_sid), auth=account.auth)
        assert response.status_code == 405
        assert response.json() == twilio_error(405, 20004, "Method not allowed: DELETE")


class TestListDeliveries:
    def test_paging(self, client, account, service_sid):
        for i in range(5):
            make_binding(client, account, service_sid, Identity="pager", Address=f"token-{i}")
        notification = notify_ok(client, account, service_sid, {"Identity": "pager"})
        path = deliveries_path(service_sid, notification["sid"])
        base = f"http://testserver{path}"

        first = client.get(path, params={"PageSize": 2}, auth=account.auth)
        assert first.status_code == 200, first.text
        page = first.json()
        assert set(page) == {"deliveries", "meta"}
        assert [d["address"] for d in page["deliveries"]] == ["token-0", "token-1"]
        meta = page["meta"]
        assert meta["key"] == "deliveries"
        assert (meta["page"], meta["page_size"]) == (0, 2)
        assert meta["first_page_url"] == f"{base}?PageSize=2&Page=0"
        assert meta["url"] == f"{base}?PageSize=2&Page=0"
        assert meta["previous_page_url"] is None
        assert meta["next_page_url"].startswith(f"{base}?PageSize=2&Page=1&PageToken=PT")

        addresses = [d["address"] for d in page["deliveries"]]
        pages = 1
        while meta["next_page_url"]:
            response = client.get(meta["next_page_url"], auth=account.auth)
            assert response.status_code == 200, response.text
            meta = response.json()["meta"]
            addresses += [d["address"] for d in response.json()["deliveries"]]
            assert meta["previous_page_url"] is not None
            pages += 1
        assert pages == 3
        assert addresses == [f"token-{i}" for i in range(5)]

        back = client.get(meta["previous_page_url"], auth=account.auth)
        assert back.status_code == 200, back.text
        assert [d["address"] for d in back.json()["deliveries"]] == ["token-2", "token-3"]

    def test_only_this_notifications_rows(self, client, account, service_sid, bindings):
        first = notify_ok(client, account, service_sid, {"Identity": "bob"})
        second = notify_ok(client, account, service_sid, {"Identity": "carol"})
        assert {
            d["notification_sid"] for d in deliveries(client, account, service_sid, first["sid"])
        } == {first["sid"]}
        rows = deliveries(client, account, service_sid, second["sid"])
        assert [d["binding_sid"] for d in rows] == [bindings["carol_sms"]]

    @pytest.mark.parametrize(
        ("params", "name"),
        [
            ({"PageSize": "0"}, "PageSize"),
            ({"PageSize": "1001"}, "PageSize"),
            ({"PageSize": "x"}, "PageSize"),
            ({"Page": "-1"}, "Page"),
            ({"PageToken": "garbage"}, "PageToken"),
        ],
    )
    def test_bad_paging(self, client, account, service_sid, params, name):
        notification = notify_ok(client, account, service_sid, {"Tag": "all"})
        response = client.get(
            deliveries_path(service_sid, notification["sid"]), params=params, auth=account.auth
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == 20001
        assert f"'{name}'" in response.json()["message"]

    def test_unknown_notification(self, client, account, service_sid):
        path = deliveries_path(service_sid, UNKNOWN_NOTIFICATION)
        response = client.get(path, auth=account.auth)
        assert response.status_code == 404
        assert response.json() == not_found(path[3:])

    def test_notification_of_another_service(self, client, account, service_sid):
        notification = notify_ok(client, account, service_sid, {"Tag": "all"})
        other_service = make_service(client, account)["sid"]
        path = deliveries_path(other_service, notification["sid"])
        response = client.get(path, auth=account.auth)
        assert response.status_code == 404
        assert response.json() == not_found(path[3:])

    def test_notification_of_another_account(self, client, account, other_account):
        foreign = make_service(client, other_account)["sid"]
        notification = notify_ok(client, other_account, foreign, {"Tag": "all"})
        path = deliveries_path(foreign, notification["sid"])
        response = client.get(path, auth=account.auth)
        assert response.status_code == 404
        assert response.json() == not_found(path[3:])

    @pytest.mark.parametrize("sid", ["NT123", "NTzz" + "0" * 30, "BS" + "0" * 32])
    def test_malformed_notification_sid_even_without_credentials(self, client, service_sid, sid):
        path = deliveries_path(service_sid, sid)
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == not_found(path[3:])

    def test_no_credentials(self, client, account, service_sid):
        notification = notify_ok(client, account, service_sid, {"Tag": "all"})
        response = client.get(deliveries_path(service_sid, notification["sid"]))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED


class TestReservedKeysInNestedOverrideData:
    """An override's own `data` may not carry the keys Notify itself writes (twi_body, ...)."""

    def test_fcm_data_with_twi_key_is_refused(self, client, account):
        service = make_service(client, account)
        response = client.post(
            f"/v1/Services/{service['sid']}/Notifications",
            data={"Identity": "alice", "Fcm": '{"data": {"twi_body": "x"}}'},
            auth=account.auth,
        )
        assert response.status_code == 400
        assert response.json()["code"] == 20001
        assert "Fcm" in response.json()["message"]
        assert "twi_body" in response.json()["message"]

    def test_fcm_data_without_twi_keys_is_accepted(self, client, account):
        service = make_service(client, account)
        response = client.post(
            f"/v1/Services/{service['sid']}/Notifications",
            data={"Identity": "alice", "Fcm": '{"data": {"body": "x"}}'},
            auth=account.auth,
        )
        assert response.status_code == 201
        assert response.json()["fcm"] == {"data": {"body": "x"}}
