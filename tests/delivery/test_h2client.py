"""The HTTP/2 client of the push channels (notify_server.delivery.h2client), on its own:
against the fast fake (bench/fake_apns_fast.mjs, Node's http2: load, max streams, GOAWAY, TLS)
and a scripted h2 server below, which does what a provider does on a bad day (never answers,
resets, refuses streams, drops the connection, stops reading, narrow flow-control windows)."""

import asyncio
import hashlib
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings
from hpack import NeverIndexedHeaderTuple

from notify_server.delivery import h2client
from notify_server.delivery.h2client import (
    ConnectError,
    ConnectionLost,
    H2Client,
    MalformedResponse,
    RequestTimeout,
    ResponseTooLarge,
)
from tests.delivery.fake_apns import self_signed
from tests.servers import free_port

FAST_FAKE = Path(__file__).resolve().parents[2] / "bench" / "fake_apns_fast.mjs"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")
# Answers the client takes apart itself (h2's own checks of inbound headers are off).
MALFORMED_STATUS = {
    "status-not-a-number": [(":status", "2x0")],
    "status-not-first": [("x-answer", "yes"), (":status", "200")],
    "status-missing": [("x-answer", "yes")],
    "status-too-long": [(":status", "2000")],
}
APNS_HEADERS = {"apns-topic": "com.example.notify", "apns-push-type": "alert"}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


# The fast fake (Node)


class NodeFake:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def stats(self) -> dict[str, Any]:
        import json

        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


@contextmanager
def node_fake(*options: str) -> Iterator[NodeFake]:
    assert NODE is not None
    process = subprocess.Popen(
        [NODE, str(FAST_FAKE), "--port", "0", "--unregistered-prefix", "dead", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http"), url
        yield NodeFake(process, url)
    finally:
        process.kill()
        process.wait(timeout=10)


async def gather_requests(
    client: H2Client, url: str, count: int, concurrency: int, body: bytes = b"{}"
) -> Counter[int | str]:
    """`count` POSTs to url/<i>, `concurrency` at a time: statuses (or error names) counted."""
    outcomes: Counter[int | str] = Counter()
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            try:
                response = await client.request("POST", f"{url}/{i:064x}", APNS_HEADERS, body)
                outcomes[response.status] += 1
            except h2client.H2Error as error:
                outcomes[type(error).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


# A scripted h2 server, in the test's own event loop


class ScriptedServer:
    """Answers by path: /ok (200, echoing the body's length and sha256), /slow (200 after
    20 ms), /silent (never), /big (200 with a 60 kB body), /reset (RST_STREAM INTERNAL_ERROR),
    /refuse (REFUSED_STREAM), /refuse-once (refused the first time, then 200), /drop (the
    connection aborted), /blackhole (the server stops reading the connection: no answers, no
    PING acks). Counts what it sees."""

    def __init__(
        self, *, max_streams: int = 100, window: int | None = None, settings_delay: float = 0
    ) -> None:
        self.max_streams = max_streams
        self.window = window
        self.settings_delay = settings_delay  # before the server's SETTINGS go out
        self.connections = 0
        self.closed_connections = 0
        self.open_streams = 0
        self.peak_streams = 0
        self.paths: Counter[str] = Counter()
        self.client_resets: list[int] = []
        self.request_headers: list[list[tuple[bytes, bytes]]] = []
        self.goaways = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> "ScriptedServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        settings: dict[SettingCodes | int, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams
        }
        if self.window is not None:
            settings[SettingCodes.INITIAL_WINDOW_SIZE] = self.window
        conn.local_settings = Settings(client=False, initial_values=settings)
        conn.initiate_connection()
        await asyncio.sleep(self.settings_delay)
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[str, bytearray]] = {}
        pending: dict[int, bytes] = {}  # response bodies waiting for window
        refused_once: set[str] = set()

        def send_body(stream_id: int) -> None:
            body = pending[stream_id]
            while body:
                size = min(conn.local_flow_control_window(stream_id), 16384, len(body))
                if size <= 0:
                    break
                conn.send_data(stream_id, body[:size], end_stream=size == len(body))
                body = body[size:]
            if body:
                pending[stream_id] = body
            else:
                del pending[stream_id]

        async def answer_later(stream_id: int, status: int, delay: float) -> None:
            await asyncio.sleep(delay)
            self.open_streams -= 1
            conn.send_headers(stream_id, [(":status", str(status))], end_stream=True)
            writer.write(conn.data_to_send())

        try:
            while True:
                data = await reader.read(65535)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        headers = list(event.headers)
                        self.request_headers.append(headers)
                        path = dict(headers)[b":path"].decode().split("/")[1]
                        streams[event.stream_id] = (path, bytearray())
                        self.open_streams += 1
                        self.peak_streams = max(self.peak_streams, self.open_streams)
                    elif isinstance(event, DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, StreamReset):
                        self.client_resets.append(event.error_code)
                        if event.stream_id in streams:
                            del streams[event.stream_id]
                            self.open_streams -= 1
                    elif isinstance(event, WindowUpdated):
                        for stream_id in list(pending):
                            send_body(stream_id)
                    elif isinstance(event, ConnectionTerminated):
                        self.goaways += 1
                    elif isinstance(event, StreamEnded):
                        path, body = streams.pop(event.stream_id)
                        self.paths[path] += 1
                        sid = event.stream_id
                        if path == "slow":
                            asyncio.get_running_loop().create_task(answer_later(sid, 200, 0.02))
                            continue
                        if path == "silent":
                            continue
                        self.open_streams -= 1
                        if path == "drop":
                            writer.transport.abort()
                            return
                        if path == "blackhole":
                            writer.write(conn.data_to_send())
                            await asyncio.sleep(3600)
                        if path == "reset":
                            conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                        elif path == "refuse" or (
                            path == "refuse-once" and path not in refused_once
                        ):
                            refused_once.add(path)
                            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                        elif path in MALFORMED_STATUS:
                            conn.config.validate_outbound_headers = False
                            conn.send_headers(sid, MALFORMED_STATUS[path], end_stream=True)
                            conn.config.validate_outbound_headers = True
                        elif path == "big":
                            conn.send_headers(sid, [(":status", "200")])
                            pending[sid] = b"x" * 60_000
                            send_body(sid)
                        else:
                            digest = hashlib.sha256(body).hexdigest()
                            conn.send_headers(
                                sid,
                                [
                                    (":status", "200"),
                                    ("x-body-length", str(len(body))),
                                    ("x-body-sha256", digest),
                                ],
                                end_stream=True,
                            )
                writer.write(conn.data_to_send())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed_connections += 1
            writer.close()


async def with_server(
    test: Callable[[ScriptedServer, H2Client], Awaitable[None]],
    *,
    server: ScriptedServer | None = None,
    **client_options: Any,
) -> None:
    server = await (server or ScriptedServer()).start()
    client = H2Client(**client_options)
    try:
        await test(server, client)
    finally:
        await client.aclose()
        await server.stop()


# Load, on one connection


@needs_node
class TestAgainstTheFastFake:
    def test_many_concurrent_requests_share_one_connection(self):
        with node_fake() as fake:

            async def main() -> Counter[int | str]:
                client = H2Client()
                try:
                    return await gather_requests(client, f"{fake.url}/3/device", 3000, 200)
                finally:
                    await client.aclose()

            assert run(main()) == {200: 3000}
            stats = fake.stats()
            assert (stats["connections"], stats["requests"]) == (1, 3000)

    def test_the_servers_max_streams_is_respected(self):
        # Beyond its limit Node resets new streams: a client that ignored the limit would see
        # errors (or, refused 3 times over, give up).
        with node_fake("--max-streams", "3") as fake:

            async def main() -> tuple[Counter[int | str], int]:
                client = H2Client()
                try:
                    outcomes = await gather_requests(client, f"{fake.url}/3/device", 600, 100)
                    return outcomes, client.connections_opened
                finally:
                    await client.aclose()

            assert run(main()) == ({200: 600}, 1)

    def test_goaway_mid_load_answers_every_request_exactly_once(self):
        with node_fake("--goaway-after", "97") as fake:

            async def main() -> tuple[Counter[int | str], int]:
                client = H2Client()
                try:
                    outcomes = await gather_requests(client, f"{fake.url}/3/device", 2000, 100)
                    return outcomes, client.connections_opened
                finally:
                    await client.aclose()

            outcomes, opened = run(main())
            stats = fake.stats()
        assert outcomes == {200: 2000}
        # Each request answered once: the fake processed exactly as many as were sent.
        assert stats["requests"] == 2000
        assert stats["connections"] == opened >= 2000 // 97

    def test_a_body_bigger_than_the_window(self):
        # 200 kB against Node's 64 kB initial windows: sent only as WINDOW_UPDATEs come; the
        # fake answers 413 only once it has read the whole body.
        with node_fake() as fake:

            async def main() -> list[int]:
                client = H2Client()
                try:
                    big = b"x" * 200_000
                    url = f"{fake.url}/3/device/{'a' * 64}"
                    answers = await asyncio.gather(
                        *(client.request("POST", url, APNS_HEADERS, big) for _ in range(5)),
                        client.request("POST", url, APNS_HEADERS, b"{}"),
                    )
                    return [a.status for a in answers]
                finally:
                    await client.aclose()

            assert run(main()) == [413] * 5 + [200]

    def test_answers_are_parsed(self):
        with node_fake() as fake:

            async def main() -> Any:
                client = H2Client()
                try:
                    return await client.request(
                        "POST",
                        f"{fake.url}/3/device/dead{'0' * 60}",
                        {**APNS_HEADERS, "apns-id": "6f2c5a3e-0000-4000-8000-000000000001"},
                        b"{}",
                    )
                finally:
                    await client.aclose()

            response = run(main())
        assert response.status == 410
        assert response.header("apns-id") == "6f2c5a3e-0000-4000-8000-000000000001"
        assert response.header("content-type") == "application/json"
        assert response.header("no-such-header") is None
        assert b'"reason":"Unregistered"' in response.body


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: its own CA, trusted only where a test says."""
    directory = tmp_path_factory.mktemp("h2-tls")
    certificate, key = self_signed(
        [x509.NameAttribute(NameOID.COMMON_NAME, "fake provider")], ip="127.0.0.1"
    )
    (directory / "server.pem").write_text(certificate)
    (directory / "server.key").write_text(key)
    return directory / "server.pem", directory / "server.key"


@needs_node
class TestTls:
    def test_alpn_h2_with_a_certificate_from_the_test_ca(self, test_ca):
        certificate, key = test_ca
        with node_fake("--tls", "--cert", str(certificate), "--key", str(key)) as fake:

            async def main() -> Counter[int | str]:
                client = H2Client(ssl_context=ssl.create_default_context(cafile=certificate))
                try:
                    return await gather_requests(client, f"{fake.url}/3/device", 500, 50)
                finally:
                    await client.aclose()

            assert fake.url.startswith("https://")
            assert run(main()) == {200: 500}
            assert fake.stats()["connections"] == 1

    def test_a_certificate_nobody_vouches_for_is_refused(self, test_ca):
        certificate, key = test_ca
        with node_fake("--tls", "--cert", str(certificate), "--key", str(key)) as fake:

            async def main() -> None:
                client = H2Client()  # the default trust: certifi, which knows no test CA
                try:
                    with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        await client.request("POST", f"{fake.url}/3/device/{'a' * 64}")
                finally:
                    await client.aclose()

            run(main())
            assert fake.stats()["requests"] == 0

    def test_a_server_without_h2_in_alpn_is_refused(self, test_ca):
        certificate, key = test_ca
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        context.set_alpn_protocols(["http/1.1"])

        async def main() -> None:
            server = await ScriptedServer().start(tls=context)
            client = H2Client(ssl_context=ssl.create_default_context(cafile=certificate))
            try:
                with pytest.raises(ConnectError, match=r"did not offer HTTP/2 \(ALPN h2\)"):
                    await client.request("POST", f"{server.url}/ok")
            finally:
                await client.aclose()
                await server.stop()

        run(main())


class TestStreams:
    def test_max_streams_and_waiting_for_a_free_one(self):
        # The server's SETTINGS come late: the client must wait for them (until then HTTP/2
        # sets no limit) rather than open 40 streams where 5 are allowed.
        async def test(server: ScriptedServer, client: H2Client) -> None:
            answers = await asyncio.gather(
                *(client.request("POST", f"{server.url}/slow/{i}") for i in range(40))
            )
            assert [a.status for a in answers] == [200] * 40
            assert server.peak_streams == 5
            assert server.paths["slow"] == 40

        run(with_server(test, server=ScriptedServer(max_streams=5, settings_delay=0.1)))

    def test_our_own_stream_cap(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            await asyncio.gather(*(client.request("GET", f"{server.url}/slow") for _ in range(20)))
            assert server.peak_streams == 3

        run(with_server(test, max_streams=3))

    def test_a_body_bigger_than_the_windows_arrives_whole(self):
        # The server's stream window is 1,000 bytes and the connection's 65,535: 300 kB go out
        # as WINDOW_UPDATEs allow, several bodies at once.
        async def test(server: ScriptedServer, client: H2Client) -> None:
            bodies = [bytes([i]) * (300_000 + i) for i in range(3)]
            answers = await asyncio.gather(
                *(client.request("POST", f"{server.url}/ok", {}, body) for body in bodies)
            )
            for body, answer in zip(bodies, answers, strict=True):
                assert answer.header("x-body-length") == str(len(body))
                assert answer.header("x-body-sha256") == hashlib.sha256(body).hexdigest()

        run(with_server(test, server=ScriptedServer(window=1000)))

    def test_unique_values_are_never_indexed_and_the_token_is(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            headers = {"authorization": "bearer " + "t" * 200, "apns-id": "id-1"}
            for _ in range(2):
                await client.request("POST", f"{server.url}/ok/abc", headers, b"{}")
            for received in server.request_headers:
                kinds = {name: type(pair) for name, pair in ((p[0], p) for p in received)}
                assert kinds[b":path"] is NeverIndexedHeaderTuple
                assert kinds[b"apns-id"] is NeverIndexedHeaderTuple
                assert kinds[b"authorization"] is not NeverIndexedHeaderTuple

        run(with_server(test))

    def test_repeated_headers_reach_the_server_exactly_as_sent(self):
        """The encoder copies what a header encoded to while HPACK's table is unchanged: what
        the server decodes must still be each request's own headers, through new entries,
        evictions (a 4 kB table, many 300-byte values) and values that change."""

        async def test(server: ScriptedServer, client: H2Client) -> None:
            sent = []
            for i in range(300):
                headers = {
                    "authorization": f"bearer {'t' * 200}{i // 50}",  # a new token now and then
                    "apns-id": f"id-{i}",
                    "apns-topic": "com.example.app",
                    "apns-collapse-id": f"{'c' * 300}{i % 17}",  # 17 of them: the table churns
                    "apns-priority": "10" if i % 3 else "5",
                }
                body = b"x" * (i % 5)
                sent.append((f"/ok/{i}".encode(), headers, body))
            answers = await asyncio.gather(
                *(client.request("POST", f"{server.url}{p.decode()}", h, b) for p, h, b in sent)
            )
            assert [a.status for a in answers] == [200] * len(sent)
            received = {}
            for request in server.request_headers:
                decoded = {text(name): text(value) for name, value in request}
                received[decoded[":path"]] = decoded
            assert len(received) == len(sent)
            for path, headers, body in sent:
                got = received[path.decode()]
                assert {name: got[name] for name in headers} == headers
                assert got.get("content-length") == (str(len(body)) if body else None)

        run(with_server(test))


class TestFailures:
    def test_timeout_then_the_connection_goes_on(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="no answer .* within 0.2 s"):
                await client.request("POST", f"{server.url}/silent", timeout=0.2)
            assert 0.2 <= time.monotonic() - started < 1.0
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            # The abandoned stream was reset (CANCEL), so it no longer counts against the limit.
            assert server.client_resets == [ErrorCodes.CANCEL]
            assert server.connections == 1

        run(with_server(test))

    def test_the_clients_default_timeout(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            with pytest.raises(RequestTimeout, match="within 0.1 s"):
                await client.request("POST", f"{server.url}/silent")

        run(with_server(test, timeout=0.1))

    def test_a_cancelled_request_frees_its_stream(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            task = asyncio.create_task(client.request("POST", f"{server.url}/silent"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # One stream allowed: the next request gets it.
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            assert server.client_resets == [ErrorCodes.CANCEL]

        run(with_server(test, max_streams=1))

    def test_rst_stream_is_an_error(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            with pytest.raises(h2client.StreamReset, match="INTERNAL_ERROR") as caught:
                await client.request("POST", f"{server.url}/reset")
            assert caught.value.code == ErrorCodes.INTERNAL_ERROR
            assert server.paths["reset"] == 1  # not retried: it may have been processed

        run(with_server(test))

    def test_refused_stream_is_retried(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            assert (await client.request("POST", f"{server.url}/refuse-once")).status == 200
            assert server.paths["refuse-once"] == 2
            with pytest.raises(ConnectionLost, match="REFUSED_STREAM"):
                await client.request("POST", f"{server.url}/refuse")
            assert server.paths["refuse"] == 3

        run(with_server(test))

    def test_a_response_body_is_bounded(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            with pytest.raises(ResponseTooLarge, match="over 10000 bytes"):
                await client.request("GET", f"{server.url}/big")
            assert (await client.request("POST", f"{server.url}/ok")).status == 200

        run(with_server(test, max_response_bytes=10_000))

    @pytest.mark.parametrize("path", sorted(MALFORMED_STATUS))
    def test_an_answer_without_a_valid_status_fails_that_request_alone(self, path):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            with pytest.raises(MalformedResponse, match="no valid :status"):
                await client.request("POST", f"{server.url}/{path}")
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            assert server.connections == 1

        run(with_server(test))

    def test_a_dropped_connection_fails_its_requests_and_the_next_reconnects(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            slow = asyncio.create_task(client.request("POST", f"{server.url}/silent"))
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionLost):
                await client.request("POST", f"{server.url}/drop")
            with pytest.raises(ConnectionLost):
                await slow  # in flight on the same connection
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            assert (server.connections, client.connections_opened) == (2, 2)

        run(with_server(test))

    def test_server_gone_is_a_connect_error_then_it_comes_back(self):
        async def main() -> None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            client = H2Client()
            try:
                with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
                    await client.request("POST", f"{url}/ok")
                server = await ScriptedServer().start(port)
                assert (await client.request("POST", f"{url}/ok")).status == 200
                await server.stop()
                with pytest.raises((ConnectionLost, ConnectError)):
                    await client.request("POST", f"{url}/ok")
                server = await ScriptedServer().start(port)
                assert (await client.request("POST", f"{url}/ok")).status == 200
                await server.stop()
            finally:
                await client.aclose()

        run(main())

    def test_an_http1_server_is_a_connect_error(self):
        async def main() -> None:
            async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await reader.read(100)
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                writer.close()

            server = await asyncio.start_server(http1, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            client = H2Client()
            try:
                with pytest.raises(ConnectError):
                    await client.request("POST", f"http://127.0.0.1:{port}/ok")
            finally:
                await client.aclose()
                server.close()

        run(main())

    def test_a_dead_connection_is_found_by_ping(self):
        # The server stops reading: the request would wait for its 30 s timeout; the PING
        # that goes unanswered ends it (and the connection) within about two intervals.
        async def test(server: ScriptedServer, client: H2Client) -> None:
            started = time.monotonic()
            with pytest.raises(ConnectionLost, match="no answer to PING"):
                await client.request("POST", f"{server.url}/blackhole")
            assert time.monotonic() - started < 1.5
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            assert client.connections_opened == 2

        run(with_server(test, timeout=30, ping_interval=0.2, ping_timeout=0.2))

    def test_a_timed_out_request_probes_the_connection(self):
        # Not silent long enough for the interval's PING: the timeout's own probe finds it.
        async def test(server: ScriptedServer, client: H2Client) -> None:
            blackhole = asyncio.create_task(client.request("POST", f"{server.url}/blackhole"))
            with pytest.raises(RequestTimeout):
                await client.request("POST", f"{server.url}/silent", timeout=0.2)
            with pytest.raises(ConnectionLost, match="no answer to PING"):
                await blackhole
            assert (await client.request("POST", f"{server.url}/ok")).status == 200

        run(with_server(test, timeout=30, ping_interval=60, ping_timeout=0.2))

    def test_an_idle_connection_is_closed_and_reopened_on_demand(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            await asyncio.sleep(0.6)
            assert (server.goaways, server.closed_connections) == (1, 1)
            assert (await client.request("POST", f"{server.url}/ok")).status == 200
            assert client.connections_opened == 2

        run(with_server(test, ping_interval=0.1, idle_timeout=0.3))

    def test_a_busy_connection_answering_pings_stays(self):
        async def test(server: ScriptedServer, client: H2Client) -> None:
            for _ in range(8):
                await client.request("POST", f"{server.url}/ok")
                await asyncio.sleep(0.1)
            assert client.connections_opened == 1
            assert server.goaways == 0

        run(with_server(test, ping_interval=0.1, ping_timeout=0.1, idle_timeout=0.5))

    def test_not_an_http_url(self):
        async def main() -> None:
            client = H2Client()
            with pytest.raises(ValueError, match="not an http"):
                await client.request("GET", "ftp://example.com/x")

        run(main())
