"""The outbound policy: a tenant's URLs never reach the operator's network.

Refused when the URL is stored (400/20001 naming the parameter) where that can be told from
the URL; refused at connect time, on the address actually connected to, where only the
resolver can tell (DNS rebinding); never followed through redirects; and a slow or dead
callback endpoint holds up nobody else."""

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, update

from notify_server import outbound
from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.crypto import SecretBox
from notify_server.notifications.models import Notification
from notify_server.outbound import DestinationRefused, OutboundPolicy
from notify_server.services.models import Service
from tests.errors import assert_invalid
from tests.factories import Account, make_account, make_binding, make_service
from tests.support.receiver import Receiver, serve_receiver

notifications: Table = Notification.__table__  # type: ignore[assignment]
services: Table = Service.__table__  # type: ignore[assignment]

INTERNAL_URLS = [
    "http://127.0.0.1:9/cb",
    "http://[::ffff:127.0.0.1]:9/cb",
    "http://2130706433:9/cb",
    "http://0x7f.1:9/cb",
    "http://127.1:9/cb",
    "http://017700000001:9/cb",
    "http://[::1]:9/cb",
    "http://[::127.0.0.1]:9/cb",
    "http://[64:ff9b::7f00:1]:9/cb",
    "http://[2002:7f00:1::]:9/cb",
    "http://localhost:9/cb",
    "http://LOCALHOST./cb",
    "http://api.localhost/cb",
    "http://10.0.0.5/cb",
    "http://172.16.0.1/cb",
    "http://192.168.1.1/cb",
    "http://100.64.0.1/cb",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/cb",
    "http://[fc00::1]/cb",
    "http://[fec0::1]/cb",
    "http://0.0.0.0:9/cb",
    "http://[::]:9/cb",
    "http://224.0.0.1/cb",
    "http://user:pass@hooks.example.com/cb",
    "http://user@hooks.example.com/cb",
    "ftp://hooks.example.com/cb",
    "file:///etc/passwd",
]
# Hosts no resolver can look up: Python's refuses them with a UnicodeError on every attempt.
UNUSABLE_HOST_URLS = [
    "http://xn--i-7iq.ws/cb",  # punycode for a character IDNA 2008 does not allow
    "http://xn--ls8h.la/",  # the same, an emoji
    "https://XN--LS8H.example.com:8443/cb",
    "http://a..b/cb",  # an empty label
    "http://.../cb",
    "http://" + "a" * 64 + ".com/cb",  # a label over 63 bytes
    "http://" + ".".join(["a" * 63] * 4) + "/cb",  # a name over 253 bytes
]


def app_client(settings: Settings, **update: Any) -> TestClient:
    app = create_app(settings.model_copy(update={"worker_poll_seconds": 0.05, **update}))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def strict(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """The server as shipped: no private destination allowed."""
    with app_client(settings, outbound_allow="") as client:
        yield client


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as recorder:
        yield recorder


@pytest.fixture
def signer(engine: Engine, settings: Settings) -> Account:
    return make_account(engine, SecretBox(settings.secret_key, settings.secret_key_file))


def store_callback_url(engine: Engine, notification_sid: str, url: str) -> None:
    """As a URL stored before these rules, or by an importer, would be."""
    with engine.begin() as conn:
        conn.execute(
            update(notifications)
            .where(notifications.c.sid == notification_sid)
            .values(delivery_callback_url=url)
        )


def deliveries(client: TestClient, account: Account, service_sid: str, sid: str) -> list[dict]:
    response = client.get(
        f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries", auth=account.auth
    )
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def wait_for(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


class TestRefusedWhenStored:
    @pytest.mark.parametrize("url", INTERNAL_URLS)
    def test_service_create(self, strict, account, url):
        response = strict.post("/v1/Services", data={"DeliveryCallbackUrl": url}, auth=account.auth)
        assert_invalid(response, "DeliveryCallbackUrl")
        assert strict.get("/v1/Services", auth=account.auth).json()["services"] == []

    @pytest.mark.parametrize("url", UNUSABLE_HOST_URLS)
    def test_a_host_no_resolver_can_look_up(self, strict, account, url):
        response = strict.post("/v1/Services", data={"DeliveryCallbackUrl": url}, auth=account.auth)
        assert_invalid(response, "DeliveryCallbackUrl")
        assert strict.get("/v1/Services", auth=account.auth).json()["services"] == []

    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("http://xn--ls8h.la/", "not a valid URL"),
            ("http://a..b/cb", "a..b is not a valid host name"),
        ],
    )
    def test_the_message_says_which_host(self, strict, account, url, why):
        response = strict.post("/v1/Services", data={"DeliveryCallbackUrl": url}, auth=account.auth)
        assert response.json()["message"] == f"Parameter 'DeliveryCallbackUrl' is invalid: {why}"

    @pytest.mark.parametrize("url", INTERNAL_URLS[:3] + INTERNAL_URLS[-4:] + UNUSABLE_HOST_URLS[:4])
    def test_service_update(self, strict, account, url):
        service = make_service(strict, account, DeliveryCallbackUrl="https://hooks.example.com/a")
        response = strict.post(
            f"/v1/Services/{service['sid']}", data={"DeliveryCallbackUrl": url}, auth=account.auth
        )
        assert_invalid(response, "DeliveryCallbackUrl")
        stored = strict.get(f"/v1/Services/{service['sid']}", auth=account.auth).json()
        assert stored["delivery_callback_url"] == "https://hooks.example.com/a"

    @pytest.mark.parametrize("url", INTERNAL_URLS[:3] + INTERNAL_URLS[-4:] + UNUSABLE_HOST_URLS[:4])
    def test_notification(self, strict, account, engine, url):
        service_sid = make_service(strict, account)["sid"]
        make_binding(strict, account, service_sid)
        response = strict.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "alice", "Body": "x", "DeliveryCallbackUrl": url},
            auth=account.auth,
        )
        assert_invalid(response, "DeliveryCallbackUrl")
        with engine.connect() as conn:
            assert conn.execute(notifications.select()).all() == []

    def test_the_message_says_why(self, strict, account):
        response = strict.post(
            "/v1/Services",
            data={"DeliveryCallbackUrl": "http://[::ffff:127.0.0.1]:8080/x"},
            auth=account.auth,
        )
        assert response.json()["message"] == (
            "Parameter 'DeliveryCallbackUrl' is invalid: ::ffff:7f00:1 is a loopback address"
            " (127.0.0.1 inside ::ffff:7f00:1)"
        )

    @pytest.mark.parametrize(
        "url",
        [
            "https://hooks.example.com/cb?x=1",
            "http://8.8.8.8/cb",
            "http://[2001:4860::8888]/",
            "https://bücher.example/cb",  # IDNA: sent as xn--bcher-kva.example
            "http://hooks.example.com./cb",
        ],
    )
    def test_public_destinations_are_accepted(self, strict, account, url):
        service = make_service(strict, account, DeliveryCallbackUrl=url)
        assert service["delivery_callback_url"] == url

    def test_the_operator_allows_private_destinations(self, settings, engine, account):
        allow = "10.1.0.0/16,hooks.internal"
        with app_client(settings, outbound_allow=allow) as client:
            for url in ("http://10.1.2.3/cb", "http://hooks.internal:8080/cb"):
                assert make_service(client, account, DeliveryCallbackUrl=url)
            for url in ("http://10.2.0.1/cb", "http://other.localhost/cb"):
                response = client.post(
                    "/v1/Services", data={"DeliveryCallbackUrl": url}, auth=account.auth
                )
                assert_invalid(response, "DeliveryCallbackUrl")

    @pytest.mark.parametrize("allow", ["10.0.0.0/33", "not a host", "http://x/"])
    def test_a_malformed_allow_list_is_refused_at_start_up(self, allow):
        with pytest.raises(ValueError, match="outbound_allow"):
            Settings(outbound_allow=allow)


class TestRefusedWhenSending:
    """URLs that reached the database some other way, and names that resolve inward."""

    @pytest.mark.parametrize(
        "url_of",
        [
            lambda r: r.new_url(),  # loopback, not allowed by this server
            lambda r: r.new_url().replace("127.0.0.1", "[::ffff:127.0.0.1]"),
            lambda r: r.new_url().replace("http://", "http://user:secret-pw@"),
            lambda r: "http://xn--ls8h.la/cb",  # was a traceback every minute, for good
            lambda r: "http://a..b/cb",
        ],
    )
    def test_stored_internal_url(self, settings, engine, signer, receiver, caplog, url_of):
        url = url_of(receiver)
        with app_client(settings, outbound_allow="", worker_enabled=False) as client:
            service_sid = make_service(client, signer)["sid"]
            make_binding(client, signer, service_sid)
            notification = client.post(
                f"/v1/Services/{service_sid}/Notifications",
                data={
                    "Identity": "alice",
                    "Body": "x",
                    "DeliveryCallbackUrl": "https://hooks.example.com/cb",
                },
                auth=signer.auth,
            ).json()
        store_callback_url(engine, notification["sid"], url)
        with caplog.at_level(logging.DEBUG), app_client(settings, outbound_allow="") as client:
            [row] = wait_for(
                lambda: [
                    r
                    for r in deliveries(client, signer, service_sid, notification["sid"])
                    if r["callback_error"]
                ]
            )
        assert row["status"] == "sent"
        assert row["callback_error"].startswith("delivery callback not sent: ")
        assert receiver.received(url) == []
        assert "secret-pw" not in caplog.text

    def test_a_name_that_resolves_inward_is_refused_at_connect_time(
        self, settings, engine, signer, receiver, monkeypatch
    ):
        # DNS rebinding: "rebind.test" passes when stored (a public-looking name) and
        # resolves to 127.0.0.1 when the callback is sent.
        async def rebinding(host: str, port: int) -> list[str]:
            return ["127.0.0.1"] if host == "rebind.test" else []

        monkeypatch.setattr(outbound, "_system_resolver", rebinding)
        url = receiver.new_url().replace("127.0.0.1", "rebind.test")
        with app_client(settings, outbound_allow="") as client:
            service_sid = make_service(client, signer)["sid"]
            make_binding(client, signer, service_sid)
            response = client.post(
                f"/v1/Services/{service_sid}/Notifications",
                data={"Identity": "alice", "Body": "x", "DeliveryCallbackUrl": url},
                auth=signer.auth,
            )
            assert response.status_code == 201, response.text
            sid = response.json()["sid"]
            [row] = wait_for(
                lambda: [
                    r for r in deliveries(client, signer, service_sid, sid) if r["callback_error"]
                ]
            )
        assert row["callback_error"] == (
            "delivery callback not sent: rebind.test resolves to 127.0.0.1, a loopback address"
        )
        assert receiver.received(url) == []

    def test_the_connected_address_is_the_checked_one(self, receiver):
        # A name with an internal and an allowed address: only the allowed one is connected
        # to (and the receiver, there, gets the request).
        async def two(host: str, port: int) -> list[str]:
            return ["10.0.0.1", "127.0.0.1"]

        policy = OutboundPolicy("127.0.0.1/32", resolver=two)
        url = receiver.new_url()

        async def post() -> int:
            async with policy.client(timeout=httpx.Timeout(5), limits=httpx.Limits()) as client:
                response = await client.post(url.replace("127.0.0.1", "two.test"), data={"a": "b"})
                return response.status_code

        assert asyncio.run(post()) == 200
        assert len(receiver.received(url)) == 1
        with pytest.raises(
            DestinationRefused, match="two.test resolves to 127.0.0.1, a loopback address"
        ):
            asyncio.run(OutboundPolicy(resolver=two).addresses("two.test", 80))

    def test_redirects_are_not_followed(self, settings, engine, signer, receiver):
        target = receiver.new_url()
        url = receiver.new_url(redirect_to=target)
        with app_client(settings) as client:
            service_sid = make_service(client, signer)["sid"]
            make_binding(client, signer, service_sid)
            client.post(
                f"/v1/Services/{service_sid}/Notifications",
                data={"Identity": "alice", "Body": "x", "DeliveryCallbackUrl": url},
                auth=signer.auth,
            )
            wait_for(lambda: receiver.received(url))
            time.sleep(0.3)
        assert [p.status for p in receiver.received(url)][:1] == [307]
        assert receiver.received(target) == []


class TestNoisyNeighbours:
    def test_a_stored_url_no_resolver_can_look_up_holds_up_nobody_else(
        self, settings, engine, signer, receiver
    ):
        def notify(client: TestClient, service_sid: str, url: str) -> str:
            response = client.post(
                f"/v1/Services/{service_sid}/Notifications",
                data={"Identity": "alice", "Body": "x", "DeliveryCallbackUrl": url},
                auth=signer.auth,
            )
            assert response.status_code == 201, response.text
            return response.json()["sid"]

        live = receiver.new_url()
        with app_client(settings, worker_enabled=False) as client:
            service_sid = make_service(client, signer)["sid"]
            make_binding(client, signer, service_sid)
            unusable = notify(client, service_sid, "https://hooks.example.com/cb")
            notify(client, service_sid, live)
        # As an importer, or a release before the host check, could have stored it. It comes
        # first: looking at its host used to raise, and no callback of anyone's went out.
        store_callback_url(engine, unusable, "http://xn--ls8h.la/cb")
        with app_client(settings) as client:
            assert wait_for(lambda: receiver.received(live))
            [row] = wait_for(
                lambda: [
                    r
                    for r in deliveries(client, signer, service_sid, unusable)
                    if r["callback_error"]
                ]
            )
        assert row["callback_error"] == "delivery callback not sent: not a valid URL"

    def test_a_dead_callback_endpoint_holds_up_nobody_else(
        self, settings, engine, signer, receiver
    ):
        other = make_account(engine)
        dead = receiver.new_url(hang=True)
        fast_settings = {"callback_timeout_seconds": 30.0, "callback_concurrency_per_host": 2}
        with app_client(settings, **fast_settings) as client:
            noisy_service = make_service(client, signer)["sid"]
            make_binding(client, signer, noisy_service)
            for _ in range(8):
                client.post(
                    f"/v1/Services/{noisy_service}/Notifications",
                    data={"Identity": "alice", "Body": "x", "DeliveryCallbackUrl": dead},
                    auth=signer.auth,
                )
            wait_for(lambda: receiver.waiting >= 2)

            # Another account's notification, and another destination's callbacks, go out
            # while the dead endpoint holds its connections.
            quiet_service = make_service(client, other)["sid"]
            make_binding(client, other, quiet_service, Identity="bob")
            started = time.monotonic()
            sid = client.post(
                f"/v1/Services/{quiet_service}/Notifications",
                data={"Identity": "bob", "Body": "y"},
                auth=other.auth,
            ).json()["sid"]
            wait_for(
                lambda: [
                    r
                    for r in deliveries(client, other, quiet_service, sid)
                    if r["status"] == "sent"
                ]
            )
            delivered_after = time.monotonic() - started

            with serve_receiver("127.0.0.2") as elsewhere:
                live = elsewhere.new_url()
                client.post(
                    f"/v1/Services/{noisy_service}/Notifications",
                    data={"Identity": "alice", "Body": "z", "DeliveryCallbackUrl": live},
                    auth=signer.auth,
                )
                assert wait_for(lambda: elsewhere.received(live), timeout=5)
        # Before: callbacks were sent one at a time inside the delivery loop, so this waited
        # for every hung callback's timeout in turn.
        assert delivered_after < 3, delivered_after
        assert receiver.most_waiting == 2  # the per-destination bound
