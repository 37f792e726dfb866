"""Concurrent writers against live servers: one process, then three processes on one database.

Every client thread opens its connection first and then waits at a barrier, so the requests
really arrive together; the assertions are on what the database holds afterwards.
"""

import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.factories import Account
from tests.servers import live_server

LIMIT = 20
ATTEMPTS = 60
# Plain HTTP, but httpx builds a TLS context per client (~25 ms each) unless given one.
TLS = ssl.create_default_context()


@pytest.fixture(scope="module")
def one_process(database_url: str) -> Iterator[list[str]]:
    with live_server(database_url) as server:
        yield [server.base_url]


@pytest.fixture(scope="module")
def three_processes(database_url: str) -> Iterator[list[str]]:
    # Two uvicorn workers behind one port, plus a separate server: three processes, one database.
    with live_server(database_url, workers=2) as pair, live_server(database_url) as single:
        yield [pair.base_url, single.base_url]


@pytest.fixture(params=["one_process", "three_processes"])
def base_urls(request: pytest.FixtureRequest) -> list[str]:
    return request.getfixturevalue(request.param)


class Crowd:
    """Keep-alive clients, connected (and authenticated) up front, that POST at one instant."""

    def __init__(self, base_urls: list[str], account: Account, size: int) -> None:
        # Round-robin: each server holds some of the connections.
        self.clients = [
            httpx.Client(
                base_url=base_urls[i % len(base_urls)], auth=account.auth, timeout=60, verify=TLS
            )
            for i in range(size)
        ]
        self.pool = ThreadPoolExecutor(max_workers=size)
        # Connect, and fill each serving process's auth cache, before any burst.
        for response in self.pool.map(lambda c: c.get("/v1/Services?PageSize=1"), self.clients):
            assert response.status_code == 200, response.text

    def post_together(self, path: str, forms: list[dict]) -> list[httpx.Response]:
        barrier = threading.Barrier(len(forms))

        def post(index: int) -> httpx.Response:
            barrier.wait(timeout=30)
            return self.clients[index].post(path, data=forms[index])

        return list(self.pool.map(post, range(len(forms))))

    def close(self) -> None:
        self.pool.shutdown()
        for client in self.clients:
            client.close()


@contextmanager
def crowd(base_urls: list[str], account: Account, size: int) -> Iterator[Crowd]:
    together = Crowd(base_urls, account, size)
    try:
        yield together
    finally:
        together.close()


def post_together(
    base_urls: list[str], account: Account, path: str, forms: list[dict]
) -> list[httpx.Response]:
    with crowd(base_urls, account, len(forms)) as clients:
        return clients.post_together(path, forms)


def create_service(base_url: str, account: Account) -> str:
    response = httpx.post(f"{base_url}/v1/Services", auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def scalar(engine: Engine, sql: str, **params: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def stored_bindings(engine: Engine, service_sid: str) -> list[tuple[str, str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT b.sid, b.identity, b.address, b.endpoint FROM bindings b"
                " JOIN services s ON s.id = b.service_id WHERE s.sid = :sid ORDER BY b.id"
            ),
            {"sid": service_sid},
        )
        return [tuple(row) for row in rows]


class TestIdentityLimitUnderConcurrency:
    def test_never_more_than_20_per_identity(self, base_urls, account, engine):
        service_sid = create_service(base_urls[0], account)
        forms = [
            {"Identity": "crowd", "BindingType": "apn", "Address": f"device-{i}", "Tag": "t"}
            for i in range(ATTEMPTS)
        ]

        responses = post_together(base_urls, account, f"/v1/Services/{service_sid}/Bindings", forms)

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: LIMIT, 400: ATTEMPTS - LIMIT}, [r.text for r in responses]
        for refused in (r for r in responses if r.status_code == 400):
            body = refused.json()
            assert body == {
                "code": 20001,
                "message": body["message"],
                "more_info": "https://www.twilio.com/docs/errors/20001",
                "status": 400,
            }
            assert "maximum of 20 Bindings" in body["message"]
        accepted = {r.json()["sid"]: r.json()["address"] for r in responses if r.status_code == 201}
        assert len(accepted) == LIMIT
        stored = stored_bindings(engine, service_sid)
        assert {sid: address for sid, _, address, _ in stored} == accepted
        assert {identity for _, identity, _, _ in stored} == {"crowd"}
        # Refused requests left no tags behind either.
        assert scalar(engine, "SELECT count(*) FROM binding_tags") == LIMIT
        listed = httpx.get(
            f"{base_urls[-1]}/v1/Services/{service_sid}/Bindings",
            params={"Identity": "crowd"},
            auth=account.auth,
        )
        assert sorted(b["sid"] for b in listed.json()["bindings"]) == sorted(accepted)

    def test_each_freed_place_goes_to_exactly_one(self, base_urls, account, engine):
        # One place left and a burst of requests that all see 19 bindings: only the lock keeps
        # a second one out. Freeing the place again and again repeats the race.
        service_sid = create_service(base_urls[0], account)
        path = f"/v1/Services/{service_sid}/Bindings"
        count = "SELECT count(*) FROM bindings WHERE identity = 'edge'"
        with httpx.Client(base_url=base_urls[0], auth=account.auth) as client:
            for i in range(LIMIT - 1):
                form = {"Identity": "edge", "BindingType": "gcm", "Address": f"early-{i}"}
                assert client.post(path, data=form).status_code == 201
            with crowd(base_urls, account, size=9) as together:
                for round_ in range(6):
                    forms = [
                        {"Identity": "edge", "BindingType": "apn", "Address": f"r{round_}-{i}"}
                        for i in range(9)
                    ]

                    responses = together.post_together(path, forms)

                    winners = [r.json()["sid"] for r in responses if r.status_code == 201]
                    assert len(winners) == 1, [r.text for r in responses]
                    assert [r.status_code for r in responses].count(400) == 8
                    assert scalar(engine, count) == LIMIT
                    deleted = client.delete(f"{path}/{winners[0]}")
                    assert deleted.status_code == 204

    def test_other_identities_are_not_held_back(self, base_urls, account, engine):
        service_sid = create_service(base_urls[0], account)
        forms = [
            {"Identity": f"user-{i % 3}", "BindingType": "gcm", "Address": f"device-{i}"}
            for i in range(ATTEMPTS)
        ]

        responses = post_together(base_urls, account, f"/v1/Services/{service_sid}/Bindings", forms)

        assert [r.status_code for r in responses] == [201] * ATTEMPTS
        assert len(stored_bindings(engine, service_sid)) == ATTEMPTS


class TestConcurrentUpserts:
    def test_same_identity_type_address_is_one_binding(self, base_urls, account, engine):
        service_sid = create_service(base_urls[0], account)
        forms = [
            {"Identity": "alice", "BindingType": "apn", "Address": "one-device", "Tag": f"t{i}"}
            for i in range(30)
        ]

        responses = post_together(base_urls, account, f"/v1/Services/{service_sid}/Bindings", forms)

        assert [r.status_code for r in responses] == [201] * len(forms), [r.text for r in responses]
        sids = {r.json()["sid"] for r in responses}
        assert len(sids) == 1
        assert {r.json()["date_created"] for r in responses} == {
            responses[0].json()["date_created"]
        }
        assert [sid for sid, *_ in stored_bindings(engine, service_sid)] == list(sids)
        # Tags were replaced each time, never accumulated.
        assert scalar(engine, "SELECT count(*) FROM binding_tags") == 1
        fetched = httpx.get(
            f"{base_urls[-1]}/v1/Services/{service_sid}/Bindings/{sids.pop()}", auth=account.auth
        ).json()
        assert fetched["tags"] in [[f"t{i}"] for i in range(len(forms))]

    def test_same_endpoint_is_one_binding(self, base_urls, account, engine):
        service_sid = create_service(base_urls[0], account)
        forms = [
            {
                "Identity": f"user-{i % 4}",
                "BindingType": "fcm",
                "Address": f"token-{i}",
                "Endpoint": "install-1",
            }
            for i in range(30)
        ]

        responses = post_together(base_urls, account, f"/v1/Services/{service_sid}/Bindings", forms)

        assert [r.status_code for r in responses] == [201] * len(forms), [r.text for r in responses]
        sids = {r.json()["sid"] for r in responses}
        assert len(sids) == 1
        stored = stored_bindings(engine, service_sid)
        assert len(stored) == 1
        sid, identity, address, endpoint = stored[0]
        assert (sid, endpoint) == (sids.pop(), "install-1")
        # The row is whole: one request's identity together with that request's address.
        assert {"Identity": identity, "Address": address} in [
            {"Identity": f["Identity"], "Address": f["Address"]} for f in forms
        ]
