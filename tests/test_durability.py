"""What a server acknowledged survives `kill -9`: the next server on that database has it."""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from tests.servers import LiveServer, live_server, start_server

# Both servers render the same absolute URLs, so bodies compare byte for byte.
PUBLIC_URL = "https://notify.example.test"
ENV = {"NOTIFY_PUBLIC_URL": PUBLIC_URL}


@pytest.fixture
def doomed(database_url: str) -> Iterator[LiveServer]:
    server = start_server(database_url, env=ENV)
    yield server
    if server.process.poll() is None:
        server.kill()


def binding_form(i: int) -> dict:
    return {
        "Identity": f"user-{i % 4}",
        "BindingType": "apn",
        "Address": f"device-{i}",
        "Tag": [f"tag-{i}", "durable"],
    }


def create_service(client: httpx.Client) -> str:
    response = client.post("/v1/Services", data={"FriendlyName": "durable"})
    assert response.status_code == 201, response.text
    return response.json()["sid"]


class TestSigkill:
    def test_acknowledged_writes_survive(self, doomed, database_url, account):
        with httpx.Client(base_url=doomed.base_url, auth=account.auth) as client:
            service_sid = create_service(client)
            path = f"/v1/Services/{service_sid}/Bindings"
            acknowledged = {}
            for i in range(30):
                response = client.post(path, data=binding_form(i))
                assert response.status_code == 201, response.text
                acknowledged[response.json()["sid"]] = response.json()
            # An in-place update and a delete are acknowledged writes too.
            removed = next(iter(acknowledged))
            assert client.delete(f"{path}/{removed}").status_code == 204
            del acknowledged[removed]
            updated = client.post(path, data={**binding_form(29), "Tag": "changed"})
            assert updated.status_code == 201
            assert updated.json()["tags"] == ["changed"]
            acknowledged[updated.json()["sid"]] = updated.json()
            doomed.kill()

        with (
            live_server(database_url, env=ENV) as again,
            httpx.Client(base_url=again.base_url, auth=account.auth) as client,
        ):
            for sid, body in acknowledged.items():
                fetched = client.get(f"{path}/{sid}")
                assert (fetched.status_code, fetched.json()) == (200, body)
            gone = client.get(f"{path}/{removed}")
            assert gone.status_code == 404
            listed = client.get(path, params={"PageSize": 100}).json()["bindings"]
            assert listed == list(acknowledged.values())
            tagged = client.get(path, params={"Tag": "durable", "PageSize": 100}).json()
            assert [b["sid"] for b in tagged["bindings"]] == list(acknowledged)[:-1]

    def test_killed_in_the_middle_of_concurrent_writes(self, doomed, database_url, account, engine):
        # Kill while requests are in flight: every 201 that reached a client is stored whole;
        # writes cut off before their answer may or may not be, but never half.
        acknowledged: dict[str, dict] = {}
        lock = threading.Lock()
        enough = threading.Event()
        with httpx.Client(base_url=doomed.base_url, auth=account.auth) as client:
            service_sid = create_service(client)
        path = f"/v1/Services/{service_sid}/Bindings"

        def write(worker: int) -> str | None:
            """Writes until the server is gone; returns the first answer that was not a 201."""
            with httpx.Client(base_url=doomed.base_url, auth=account.auth, timeout=30) as client:
                for i in range(worker, 10_000, 4):
                    try:
                        response = client.post(path, data=binding_form(i) | {"Identity": str(i)})
                    except httpx.TransportError:
                        return None
                    if response.status_code != 201:
                        enough.set()
                        return f"{response.status_code} {response.text}"
                    with lock:
                        acknowledged[response.json()["sid"]] = response.json()
                        if len(acknowledged) >= 40:
                            enough.set()
            return "the server outlived 10,000 writes"

        with ThreadPoolExecutor(max_workers=4) as pool:
            writers = [pool.submit(write, n) for n in range(4)]
            assert enough.wait(timeout=60)
            doomed.kill()
            assert [w.result() for w in writers] == [None] * 4

        with (
            live_server(database_url, env=ENV) as again,
            httpx.Client(base_url=again.base_url, auth=account.auth) as client,
        ):
            for sid, body in acknowledged.items():
                fetched = client.get(f"{path}/{sid}")
                assert (fetched.status_code, fetched.json()) == (200, body)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM bindings")).scalar_one()
            tags = conn.execute(text("SELECT count(*) FROM binding_tags")).scalar_one()
        assert stored >= len(acknowledged)
        # Each binding carries exactly its two tags: no write was half applied.
        assert tags == 2 * stored
