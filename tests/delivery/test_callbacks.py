"""Delivery callbacks to a local HTTP receiver: the parameters Twilio documents, batches of at
most callback_batch_size, IsFinal on the last, X-Twilio-Signature checked with the official
twilio RequestValidator, which URL is used, and a receiver's 500 answered by a later retry."""

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, select, update
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.notifications.models import Delivery, Notification
from notify_server.wire import utcnow
from tests.factories import Account, make_account, make_binding, make_service
from tests.support.receiver import Post, Receiver, serve_receiver

notifications: Table = Notification.__table__  # type: ignore[assignment]
deliveries: Table = Delivery.__table__  # type: ignore[assignment]
BATCH_SIZE = 3
CALLBACK_KEYS = {
    "NotificationSid",
    "AccountSid",
    "ServiceSid",
    "Count",
    "SequenceId",
    "IsFinal",
    "DeliveryState",
}
STATE_KEYS = {
    "sid",
    "status",
    "binding_sid",
    "binding_type",
    "identity",
    "address",
    "error_message",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as recorder:
        yield recorder


@pytest.fixture
def callback_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"worker_poll_seconds": 0.05, "callback_batch_size": BATCH_SIZE}
    )


@pytest.fixture
def api(callback_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The app with its worker running in the TestClient's loop (log channel delivers)."""
    with TestClient(create_app(callback_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def signer(engine: Engine, callback_settings: Settings) -> Account:
    """An account whose token is also kept sealed, so its callbacks can be signed."""
    box = SecretBox(callback_settings.secret_key, callback_settings.secret_key_file)
    return make_account(engine, box)


@pytest.fixture
def service_sid(api: TestClient, signer: Account) -> str:
    return make_service(api, signer)["sid"]


def make_bindings(api: TestClient, account: Account, service_sid: str, count: int) -> list[str]:
    return [
        make_binding(api, account, service_sid, Identity=f"user-{i}", Address=f"token-{i}")["sid"]
        for i in range(count)
    ]


def notify(api: TestClient, account: Account, service_sid: str, **form) -> dict:
    response = api.post(f"/v1/Services/{service_sid}/Notifications", data=form, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()


def final_rows(api: TestClient, account: Account, service_sid: str, sid: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        response = api.get(
            f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries",
            params={"PageSize": 1000},
            auth=account.auth,
        )
        assert response.status_code == 200, response.text
        rows = response.json()["deliveries"]
        if all(row["status"] in ("sent", "failed") for row in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def wait_for_posts(
    receiver: Receiver, url: str, done: Callable[[list[Post]], bool], timeout: float = 10.0
) -> list[Post]:
    deadline = time.monotonic() + timeout
    while True:
        posts = receiver.received(url)
        if done(posts):
            return posts
        assert time.monotonic() < deadline, posts
        time.sleep(0.02)


def unreported_ids(engine: Engine, notification_id: int) -> list[int]:
    with engine.connect() as conn:
        statement = select(deliveries.c.id).where(
            deliveries.c.notification_id == notification_id, deliveries.c.reported.is_(False)
        )
        return list(conn.execute(statement).scalars())


def final_accepted(posts: list[Post]) -> bool:
    return any(p.status == 200 and p.one("IsFinal") == "true" for p in posts)


def expected_state(row: dict) -> dict:
    return {
        "sid": row["provider_message_id"],
        "status": "SENT" if row["status"] == "sent" else "FAILED",
        "binding_sid": row["binding_sid"],
        "binding_type": row["binding_type"],
        "identity": row["identity"],
        "address": row["address"],
        "error_message": row["error_message"],
    }


def canonical(states: list[dict]) -> Counter[str]:
    return Counter(json.dumps(s, sort_keys=True) for s in states)


def check_callbacks(
    posts: list[Post],
    *,
    url: str,
    account: Account,
    service_sid: str,
    notification_sid: str,
    rows: list[dict],
) -> list[Post]:
    """Every post well formed and signed; the accepted ones numbered 0, 1, ... with IsFinal
    only on the last, and together reporting every delivery exactly once."""
    validator = RequestValidator(account.auth_token)
    for post in posts:
        assert post.url == url
        assert post.headers["content-type"] == "application/x-www-form-urlencoded"
        assert {name for name, _ in post.items} == CALLBACK_KEYS
        assert post.one("NotificationSid") == notification_sid
        assert post.one("AccountSid") == account.sid
        assert post.one("ServiceSid") == service_sid
        states = post.states
        assert 1 <= len(states) <= BATCH_SIZE
        assert int(post.one("Count")) == len(states)
        for state in states:
            assert set(state) == STATE_KEYS
        assert validator.validate(url, post.form, post.headers["x-twilio-signature"])

    accepted = [p for p in posts if p.status == 200]
    assert [int(p.one("SequenceId")) for p in accepted] == list(range(len(accepted)))
    assert [p.one("IsFinal") for p in accepted] == ["false"] * (len(accepted) - 1) + ["true"]
    # A refused batch is sent again under the same SequenceId.
    for index, post in enumerate(posts):
        if post.status != 200:
            assert posts[index + 1].one("SequenceId") == post.one("SequenceId")
    reported = [state for p in accepted for state in p.states]
    assert canonical(reported) == canonical([expected_state(row) for row in rows])
    return accepted


class TestDeliveryCallbacks:
    def test_sent_and_failed_states(self, api, receiver, signer, service_sid):
        apn = make_binding(api, signer, service_sid, Identity="alice", Address="alice-apn")
        alexa = make_binding(
            api, signer, service_sid, Identity="alice", BindingType="alexa", Address="alice-a"
        )
        url = receiver.new_url()
        notification = notify(
            api, signer, service_sid, Identity="alice", Body="hi", DeliveryCallbackUrl=url
        )
        rows = final_rows(api, signer, service_sid, notification["sid"])
        posts = wait_for_posts(receiver, url, final_accepted)
        check_callbacks(
            posts,
            url=url,
            account=signer,
            service_sid=service_sid,
            notification_sid=notification["sid"],
            rows=rows,
        )
        states = {s["binding_type"]: s for p in posts for s in p.states}
        assert states["apn"]["status"] == "SENT"
        assert states["apn"]["sid"].startswith("log-")
        assert states["apn"]["binding_sid"] == apn["sid"]
        assert (states["apn"]["identity"], states["apn"]["address"]) == ("alice", "alice-apn")
        assert states["apn"]["error_message"] is None
        assert states["alexa"]["status"] == "FAILED"
        assert states["alexa"]["sid"] is None
        assert states["alexa"]["binding_sid"] == alexa["sid"]
        assert "retired" in states["alexa"]["error_message"]

    def test_signature_is_the_accounts(self, api, receiver, signer, service_sid, other_account):
        make_bindings(api, signer, service_sid, 2)
        url = receiver.new_url()
        notify(api, signer, service_sid, Tag="all", DeliveryCallbackUrl=url)
        post = wait_for_posts(receiver, url, final_accepted)[0]
        signature = post.headers["x-twilio-signature"]
        assert RequestValidator(signer.auth_token).validate(url, post.form, signature)
        assert not RequestValidator(other_account.auth_token).validate(url, post.form, signature)
        tampered = [(k, "9" if k == "Count" else v) for k, v in post.items]
        assert not RequestValidator(signer.auth_token).validate(
            url, ImmutableMultiDict(tampered), signature
        )
        assert not RequestValidator(signer.auth_token).validate(
            url.replace("token=abc", "token=abd"), post.form, signature
        )

    def test_batches_of_at_most_the_batch_size(self, api, receiver, signer, service_sid):
        make_bindings(api, signer, service_sid, 8)
        url = receiver.new_url()
        notification = notify(api, signer, service_sid, Tag="all", DeliveryCallbackUrl=url)
        rows = final_rows(api, signer, service_sid, notification["sid"])
        assert len(rows) == 8
        posts = wait_for_posts(receiver, url, final_accepted)
        accepted = check_callbacks(
            posts,
            url=url,
            account=signer,
            service_sid=service_sid,
            notification_sid=notification["sid"],
            rows=rows,
        )
        assert len(accepted) >= 3

    def test_refused_batch_is_sent_again(self, api, engine, receiver, signer, service_sid):
        make_bindings(api, signer, service_sid, 7)
        url = receiver.new_url(fail={2})
        notification = notify(api, signer, service_sid, Tag="all", DeliveryCallbackUrl=url)
        rows = final_rows(api, signer, service_sid, notification["sid"])
        posts = wait_for_posts(receiver, url, lambda posts: len(posts) >= 2)
        assert [p.status for p in posts[:2]] == [200, 500]
        assert posts[1].one("SequenceId") == "1"
        # The refused batch stays unreported, and the notification waits before trying again:
        # its 60 s sending lease becomes a shorter retry delay once the 500 is recorded.
        deadline = time.monotonic() + 5
        while True:
            with engine.connect() as conn:
                stored = conn.execute(
                    select(notifications).where(notifications.c.sid == notification["sid"])
                ).one()
            if stored.callback_locked_until < utcnow() + timedelta(seconds=45):
                break
            assert time.monotonic() < deadline, stored
            time.sleep(0.02)
        assert stored.callback_sequence == 1
        assert stored.callback_locked_until > utcnow() + timedelta(seconds=10)
        assert len(unreported_ids(engine, stored.id)) == 7 - int(posts[0].one("Count"))
        assert len(receiver.received(url)) == 2
        # Instead of waiting out the retry delay: the notification is free now.
        with engine.begin() as conn:
            conn.execute(
                update(notifications)
                .where(notifications.c.id == stored.id)
                .values(callback_locked_until=utcnow() - timedelta(seconds=1))
            )
        posts = wait_for_posts(receiver, url, final_accepted)
        assert posts[2].status == 200
        assert posts[2].one("SequenceId") == "1"
        check_callbacks(
            posts,
            url=url,
            account=signer,
            service_sid=service_sid,
            notification_sid=notification["sid"],
            rows=rows,
        )
        # The last answer is recorded just after the receiver saw it.
        deadline = time.monotonic() + 5
        while unreported_ids(engine, stored.id):
            assert time.monotonic() < deadline, "batches stayed unreported"
            time.sleep(0.02)

    def test_failing_receivers_do_not_starve_the_others(self, api, receiver, signer, service_sid):
        # More notifications than one reporting round takes, all waiting to retry a refused
        # callback: a newer notification's callbacks still go out.
        make_bindings(api, signer, service_sid, 1)
        broken = receiver.new_url(fail=set(range(1, 100)))
        for _ in range(25):
            notify(api, signer, service_sid, Tag="all", DeliveryCallbackUrl=broken)
        wait_for_posts(receiver, broken, lambda posts: len(posts) >= 20)
        url = receiver.new_url()
        notification = notify(api, signer, service_sid, Tag="all", DeliveryCallbackUrl=url)
        rows = final_rows(api, signer, service_sid, notification["sid"])
        posts = wait_for_posts(receiver, url, final_accepted, timeout=5)
        check_callbacks(
            posts,
            url=url,
            account=signer,
            service_sid=service_sid,
            notification_sid=notification["sid"],
            rows=rows,
        )


class TestCallbackUrl:
    def test_service_url_only_when_enabled(self, api, receiver, signer):
        disabled_url = receiver.new_url()
        disabled = make_service(
            api, signer, DeliveryCallbackUrl=disabled_url, DeliveryCallbackEnabled="false"
        )["sid"]
        enabled_url = receiver.new_url()
        enabled = make_service(
            api, signer, DeliveryCallbackUrl=enabled_url, DeliveryCallbackEnabled="true"
        )["sid"]
        make_bindings(api, signer, disabled, 2)
        make_bindings(api, signer, enabled, 2)

        quiet = notify(api, signer, disabled, Tag="all")
        final_rows(api, signer, disabled, quiet["sid"])
        reported = notify(api, signer, enabled, Tag="all")
        rows = final_rows(api, signer, enabled, reported["sid"])
        posts = wait_for_posts(receiver, enabled_url, final_accepted)
        check_callbacks(
            posts,
            url=enabled_url,
            account=signer,
            service_sid=enabled,
            notification_sid=reported["sid"],
            rows=rows,
        )
        # The disabled service's notification finished first and reported nothing.
        assert receiver.received(disabled_url) == []

    def test_request_url_wins_over_the_services(self, api, receiver, signer):
        service_url = receiver.new_url()
        service = make_service(
            api, signer, DeliveryCallbackUrl=service_url, DeliveryCallbackEnabled="true"
        )["sid"]
        make_bindings(api, signer, service, 2)
        request_url = receiver.new_url()
        notification = notify(api, signer, service, Tag="all", DeliveryCallbackUrl=request_url)
        rows = final_rows(api, signer, service, notification["sid"])
        posts = wait_for_posts(receiver, request_url, final_accepted)
        check_callbacks(
            posts,
            url=request_url,
            account=signer,
            service_sid=service,
            notification_sid=notification["sid"],
            rows=rows,
        )
        assert receiver.received(service_url) == []

    def test_request_url_on_a_service_with_callbacks_disabled(self, api, receiver, signer):
        service = make_service(api, signer, DeliveryCallbackEnabled="false")["sid"]
        make_bindings(api, signer, service, 1)
        url = receiver.new_url()
        notification = notify(api, signer, service, Tag="all", DeliveryCallbackUrl=url)
        rows = final_rows(api, signer, service, notification["sid"])
        posts = wait_for_posts(receiver, url, final_accepted)
        assert len(posts) == 1
        check_callbacks(
            posts,
            url=url,
            account=signer,
            service_sid=service,
            notification_sid=notification["sid"],
            rows=rows,
        )
