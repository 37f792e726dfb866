"""HTTP/2 sender candidates for APNs, side by side against the fast fake (issue 8).

One run measures, on this 2-core machine:

1. the fakes' own ceilings: h2load (C, nghttp2) against `bench/fake_apns_fast.mjs` (Node's
   http2) and against the Python fake of the behaviour tests (`tests/delivery/fake_apns.py`);
2. the senders, one process each pinned to CPU 0 while the fast fake is pinned to CPU 1, N
   APNs-shaped requests (`POST /3/device/<64 hex>`, apns-topic/-push-type/-priority/-expiration,
   apns-id, `authorization: bearer <ES256 JWT>`, the product's own ~150-byte JSON payload):
   (a) the product's send path, `ApnsChannel(settings).send(job)`, 64 concurrent tasks, of the
   baseline tree (`--baseline`, by default the last commit before the product's own HTTP/2
   client: httpx); (g) the same of the current tree (notify_server.delivery.h2client);
   (b) plain `httpx.AsyncClient(http2=True)`; (c) the raw `h2` + asyncio client below;
   (d) the same on uvloop; (e) httpcore directly, niquests and curl_cffi (these two in their own
   venv, so the project's venv is left alone); (f) h2load itself.

It prints requests/s (median of the repeats), CPU µs per request of the sender (and of the fake)
and each rate's ratio to (a). `--selftest` checks the raw client against the fast fake instead:
statuses, flow control, a low max-concurrent-streams and GOAWAY. See bench/H2_SENDERS.md.

    .venv/bin/python bench/h2_senders.py                 # everything, 3 repeats, N=50,000
    .venv/bin/python bench/h2_senders.py --only a-product c-raw-h2 g-product-h2 f-h2load \
        -n 10000 --repeats 3 --skip-ceilings
    .venv/bin/python bench/h2_senders.py --selftest
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import itertools
import json
import os
import re
import resource
import selectors
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    from hpack import NeverIndexedHeaderTuple as NeverIndexed
except ImportError:  # the extras' venv (niquests, curl_cffi) has no hpack: only raw h2 needs it
    NeverIndexed = tuple  # type: ignore[assignment,misc]

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FAST_FAKE = BENCH / "fake_apns_fast.mjs"
HOST = "127.0.0.1"
SENDER_CPU = 0
FAKE_CPU = 1
START_TIMEOUT = 30.0
BUSY_WAIT_SECONDS = 20 * 60
EXTRAS = ("niquests", "curl_cffi")
DEFAULT_EXTRAS_VENV = Path(tempfile.gettempdir(), "notify-h2senders-venv")
# The last commit whose ApnsChannel sent through httpx: (a) runs its tree, (g) the current one.
DEFAULT_BASELINE = "579a689"
PRODUCT_SENDERS = ("a-product", "g-product-h2")
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
BUNDLE_ID = "com.example.notify"
# The notification every request carries: alert + sound + custom data, Ttl set so that
# apns-expiration is a real timestamp (as most production pushes have).
CONTENT = {
    "title": "Your order shipped",
    "body": "Order 1234567 is on its way and arrives on Thursday.",
    "sound": "default",
    "priority": "high",
    "ttl": 3600,
    "data": {"order": "1234567", "kind": "shipping"},
}


# Requests: the same ones for every candidate.


def device_token(i: int) -> str:
    return hashlib.sha256(f"device {i}".encode()).hexdigest()  # 64 hex, as Apple's tokens


def request_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench/{i}"))


@dataclass(frozen=True)
class Spec:
    """What every candidate sends: the product's own headers and payload for CONTENT."""

    body: bytes
    headers: dict[str, str]  # without apns-id, which differs per request
    jwt: str

    def to_json(self) -> str:
        return json.dumps({"body": self.body.decode(), "headers": self.headers, "jwt": self.jwt})

    @classmethod
    def from_json(cls, text: str) -> Spec:
        data = json.loads(text)
        return cls(data["body"].encode(), data["headers"], data["jwt"])


def product_pieces(url: str) -> tuple[Any, Callable[[int], Any], Spec]:
    """The product's settings, a Job factory, and the Spec the product would send."""
    from datetime import UTC, datetime, timedelta

    import jwt
    import orjson

    from notify_server.config import Settings
    from notify_server.delivery.apns import build_headers, build_payload
    from notify_server.delivery.channels import CredentialSecrets, Job
    from tests.delivery.fake_apns import ec_key_pem

    key = ec_key_pem()
    credential = CredentialSecrets(
        sid="CR" + "c" * 32,
        type="apn",
        sandbox=True,
        secrets={"token_key": key, "key_id": KEY_ID, "team_id": TEAM_ID, "bundle_id": BUNDLE_ID},
    )
    settings = Settings(apns_sandbox_url=url, apns_production_url=url)
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)

    def job(i: int) -> Job:
        return Job(
            delivery_id=i,
            attempt=1,
            binding_type="apn",
            address=device_token(i),
            identity="alice",
            binding_sid="BS" + f"{i:032x}",
            expires_at=expires,
            notification_sid="NT" + "a" * 32,
            account_sid="AC" + "a" * 32,
            service_sid="IS" + "a" * 32,
            messaging_service_sid=None,
            content=CONTENT,
            credential=credential,
        )

    payload = build_payload(CONTENT)
    headers = build_headers(job(0), payload)
    headers.pop("apns-id")
    token = jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())},
        key,
        algorithm="ES256",
        headers={"kid": KEY_ID, "typ": None},
    )
    headers["apns-topic"] = BUNDLE_ID
    headers["authorization"] = f"bearer {token}"
    return settings, job, Spec(orjson.dumps(payload), headers, token)


# The raw client: h2's state machine on an asyncio Protocol, one connection.


class Unprocessed(Exception):
    """The server never processed this request (GOAWAY below its stream id, REFUSED_STREAM or
    the connection closed before it was sent): safe to retry on a new connection."""


class NotSent(Unprocessed):
    """The connection closed while this request waited for a free stream: it never left."""


class StreamReset(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset with error code {code}")
        self.code = code


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class _Stream:
    future: asyncio.Future[Response]
    body: memoryview  # what is still to send
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)


class RawH2Connection(asyncio.Protocol):
    """One HTTP/2 connection that multiplexes requests: respects the server's
    SETTINGS_MAX_CONCURRENT_STREAMS (and our own cap), sends bodies within the flow-control
    windows (resuming on WINDOW_UPDATE), grants the server's data back, and on GOAWAY finishes
    the streams the server kept while failing the others with Unprocessed. Frames of every request
    made in one loop iteration go out in one write."""

    def __init__(self, authority: str, scheme: str, max_streams: int = 100) -> None:
        import h2.config
        import h2.connection

        self._authority = authority.encode()
        self._scheme = scheme.encode()
        self._max_streams = max_streams
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # We build every header ourselves, lower-case and valid: skip re-checking them.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: set[int] = set()  # streams whose body waits for window
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._flush_scheduled = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed: Exception | None = None  # set once no new stream may open
        self._last_stream_id: int | None = None  # GOAWAY's
        self._lost = self._loop.create_future()

    @classmethod
    async def open(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, max_streams: int = 100
    ) -> RawH2Connection:
        loop = asyncio.get_running_loop()
        scheme = "https" if tls else "http"
        _, protocol = await loop.create_connection(
            lambda: cls(f"{host}:{port}", scheme, max_streams),
            host,
            port,
            ssl=tls,
            server_hostname=host if tls else None,
        )
        return protocol

    @property
    def alpn(self) -> str | None:
        ssl_object = self._transport.get_extra_info("ssl_object") if self._transport else None
        return ssl_object.selected_alpn_protocol() if ssl_object else None

    @property
    def usable(self) -> bool:
        return self._closed is None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport  # type: ignore[assignment]
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(ConnectionError(f"HTTP/2 protocol error: {exc}"))
            self._flush()
            assert self._transport is not None
            self._transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.ResponseReceived:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.headers = event.headers
                    stream.status = int(next(v for k, v in event.headers if k == b":status"))
            elif kind is h2.events.DataReceived:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.received += event.data
                # Grant the bytes back at once (we keep whole bodies, they are small).
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is h2.events.StreamEnded:
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None:
                    self._blocked.discard(event.stream_id)
                    if not stream.future.done():
                        response = Response(stream.status, stream.headers, bytes(stream.received))
                        stream.future.set_result(response)
                    self._stream_closed()
            elif kind is h2.events.StreamReset:
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None:
                    self._blocked.discard(event.stream_id)
                    error: Exception = StreamReset(event.error_code)
                    if event.error_code == 7:  # REFUSED_STREAM: never processed
                        error = Unprocessed("REFUSED_STREAM")
                    if not stream.future.done():
                        stream.future.set_exception(error)
                    self._stream_closed()
            elif kind is h2.events.WindowUpdated:
                self._resume_bodies(event.stream_id)
            elif kind is h2.events.RemoteSettingsChanged:
                # A larger initial window may unblock bodies; a new stream limit, waiters.
                self._resume_bodies(0)
                self._wake_waiters()
            elif kind is h2.events.ConnectionTerminated:
                self._goaway(event.last_stream_id, event.error_code)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight may or may not have been processed: not Unprocessed.
        self._fail_all(ConnectionError(f"connection lost: {exc or 'closed'}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Requests

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> Response:
        while self._closed is None and len(self._streams) >= self._stream_limit():
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
        if self._closed is not None:
            raise NotSent(str(self._closed))
        if not self._writable.is_set():
            await self._writable.wait()
        stream_id = self._h2.get_next_available_stream_id()
        all_headers = [
            (b":method", method.encode()),
            (b":scheme", self._scheme),
            (b":authority", self._authority),
            # Unique per request: indexing it in HPACK's 4 kB table would only evict the
            # entries that repeat (the ~200-byte JWT above all), which then cost a re-encode.
            NeverIndexed(b":path", path.encode()),
            *headers,
        ]
        if body:
            all_headers.append((b"content-length", str(len(body)).encode()))
        stream = _Stream(self._loop.create_future(), memoryview(body))
        self._streams[stream_id] = stream
        self._h2.send_headers(stream_id, all_headers, end_stream=not body)
        if body:
            self._send_body(stream_id, stream)
        self._flush_soon()
        return await stream.future

    async def close(self) -> None:
        if self._transport is None:
            return
        if self._closed is None:
            self._closed = ConnectionError("closed by us")
            self._h2.close_connection()
            self._flush()
        self._transport.close()
        await self._lost

    # Internals

    def _stream_limit(self) -> int:
        return min(self._max_streams, self._h2.remote_settings.max_concurrent_streams)

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """As much of the body as the stream's and the connection's windows allow."""
        while stream.body:
            window = self._h2.local_flow_control_window(stream_id)
            size = min(window, self._h2.max_outbound_frame_size, len(stream.body))
            if size <= 0:
                self._blocked.add(stream_id)
                return
            chunk, stream.body = stream.body[:size], stream.body[size:]
            self._h2.send_data(stream_id, chunk.tobytes(), end_stream=not stream.body)
        self._blocked.discard(stream_id)

    def _resume_bodies(self, stream_id: int) -> None:
        targets = list(self._blocked) if stream_id == 0 else [stream_id]
        for blocked_id in targets:
            stream = self._streams.get(blocked_id)
            if stream is not None and blocked_id in self._blocked:
                self._send_body(blocked_id, stream)

    def _stream_closed(self) -> None:
        self._wake_waiters()
        if self._closed is not None and not self._streams and self._transport is not None:
            self._transport.close()  # after GOAWAY, once the kept streams are done

    def _wake_waiters(self) -> None:
        free = self._stream_limit() - len(self._streams)
        while self._waiters and (free > 0 or self._closed is not None):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _goaway(self, last_stream_id: int, error_code: int) -> None:
        self._closed = ConnectionError(f"GOAWAY (error code {error_code})")
        self._last_stream_id = last_stream_id
        for stream_id in [s for s in self._streams if s > last_stream_id]:
            stream = self._streams.pop(stream_id)
            self._blocked.discard(stream_id)
            if not stream.future.done():
                stream.future.set_exception(Unprocessed(f"GOAWAY above stream {last_stream_id}"))
        self._stream_closed()

    def _fail_all(self, error: Exception) -> None:
        if self._closed is None:
            self._closed = error
        streams, self._streams = self._streams, {}
        self._blocked.clear()
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)
        self._wake_waiters()

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class RawH2Sender:
    """The raw connection plus what a sender needs around it: a new connection after GOAWAY or
    a lost connection; requests the server never processed are retried there (twice at most;
    waiting for a stream on a connection that then closed does not count)."""

    def __init__(self, url: str, *, tls: ssl.SSLContext | None = None, max_streams: int = 100):
        parts = urlsplit(url)
        self._host = parts.hostname or HOST
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = tls if parts.scheme == "https" else None
        if parts.scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context()
        if self._tls is not None:
            self._tls.set_alpn_protocols(["h2"])  # APNs (and the fast fake) speak only h2
        self._max_streams = max_streams
        self._connection: RawH2Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self.connections = 0

    async def _current(self) -> RawH2Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None or not self._connection.usable:
                self._connection = await RawH2Connection.open(
                    self._host, self._port, tls=self._tls, max_streams=self._max_streams
                )
                self.connections += 1
            return self._connection

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        retries = 0
        while True:
            connection = await self._current()
            try:
                return await connection.request("POST", path, headers, body)
            except NotSent:
                continue
            except Unprocessed:
                retries += 1
                if retries > 2:
                    raise

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


# One sender run (in its own process).


async def drive(send: Callable[[int], Any], n: int, concurrency: int) -> dict[str, Any]:
    """`concurrency` tasks send requests 0..n-1; `send(i)` returns the HTTP status."""
    counter = itertools.count()
    statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()

    async def worker() -> None:
        for i in counter:
            if i >= n:
                return
            try:
                statuses[await send(i)] += 1
            except Exception as exc:  # counted, not fatal: the table shows them
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors.most_common(5)),
    }


async def run_sender(name: str, url: str, spec: Spec, n: int, warmup: int, concurrency: int):
    """Prepare everything outside the clock, warm up (connection, caches), then time n sends."""
    total = warmup + n
    paths = [f"/3/device/{device_token(i)}" for i in range(total)]
    ids = [request_id(i) for i in range(total)]
    close: Callable[[], Any]
    version_check: Callable[[], str] = lambda: "HTTP/2"  # noqa: E731

    if name in PRODUCT_SENDERS:
        settings, make_job, _ = product_pieces(url)
        from notify_server.delivery.apns import ApnsChannel
        from notify_server.delivery.channels import Outcome

        channel = ApnsChannel(settings)
        jobs = [make_job(i) for i in range(total)]

        async def send(i: int) -> int:
            result = await channel.send(jobs[i])
            if result.outcome is not Outcome.SENT:
                raise RuntimeError(result.error_message)
            return result.provider_status or 0

        close = channel.aclose
    elif name in ("b-httpx", "e-httpcore"):
        import httpcore
        import httpx

        headers = [(k, v) for k, v in spec.headers.items()]
        if name == "b-httpx":
            client = httpx.AsyncClient(http1=False, http2=True, timeout=30)
            seen: set[str] = set()

            async def send(i: int) -> int:
                response = await client.post(
                    url + paths[i], content=spec.body, headers=[*headers, ("apns-id", ids[i])]
                )
                seen.add(response.http_version)
                return response.status_code

            close = client.aclose
            version_check = lambda: ",".join(sorted(seen))  # noqa: E731
        else:
            pool = httpcore.AsyncConnectionPool(
                # httpcore's default trust is certifi's; this one honours SSL_CERT_FILE (--tls).
                ssl_context=ssl.create_default_context(),
                http1=False,
                http2=True,
                max_connections=1,
            )
            raw_headers = [(k.encode(), v.encode()) for k, v in headers]

            async def send(i: int) -> int:
                response = await pool.request(
                    "POST",
                    url + paths[i],
                    headers=[*raw_headers, (b"apns-id", ids[i].encode())],
                    content=spec.body,
                )
                return response.status

            close = pool.aclose
    elif name in ("c-raw-h2", "d-raw-h2-uvloop"):
        sender = RawH2Sender(url, max_streams=concurrency)
        raw_headers = [(k.encode(), v.encode()) for k, v in spec.headers.items()]
        raw_ids = [NeverIndexed(b"apns-id", i.encode()) for i in ids]  # unique too

        async def send(i: int) -> int:
            response = await sender.post(paths[i], [*raw_headers, raw_ids[i]], spec.body)
            return response.status

        close = sender.close
    elif name == "e-niquests":
        import niquests

        session = niquests.AsyncSession(disable_http1=True, pool_maxsize=1)
        # Per request: niquests' AsyncSession ignored `session.verify = path` (3.21).
        verify = os.environ.get("SSL_CERT_FILE") or True
        seen = set()

        async def send(i: int) -> int:
            response = await session.post(
                url + paths[i],
                data=spec.body,
                headers={**spec.headers, "apns-id": ids[i]},
                verify=verify,
            )
            seen.add(str(response.http_version))
            return int(response.status_code or 0)

        close = session.close
        version_check = lambda: ",".join(sorted(seen))  # noqa: E731
    elif name == "e-curl_cffi":
        from curl_cffi import CurlHttpVersion, CurlOpt
        from curl_cffi.requests import AsyncSession

        # PIPEWAIT: wait to multiplex on the one connection instead of opening a new one per
        # request (without it curl opened 100 connections here).
        session = AsyncSession(
            http_version=CurlHttpVersion.V2_PRIOR_KNOWLEDGE,
            max_clients=concurrency,
            curl_options={CurlOpt.PIPEWAIT: 1},
            verify=os.environ.get("SSL_CERT_FILE") or True,
        )

        async def send(i: int) -> int:
            response = await session.post(
                url + paths[i], data=spec.body, headers={**spec.headers, "apns-id": ids[i]}
            )
            return response.status_code

        close = session.close
    else:
        raise SystemExit(f"unknown sender {name}")

    if warmup:
        await drive(send, warmup, concurrency)
    offset = warmup
    cpu, wall = time.process_time(), time.perf_counter()
    result = await drive(lambda i: send(i + offset), n, concurrency)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    version = version_check()
    await close()
    return {**result, "seconds": wall, "cpu_seconds": cpu, "http_version": version}


def sender_main(args: argparse.Namespace) -> int:
    spec = Spec.from_json(Path(args.spec).read_text())
    runner = asyncio.run
    if args.sender == "d-raw-h2-uvloop":
        import uvloop

        runner = uvloop.run
    result = runner(run_sender(args.sender, args.url, spec, args.n, args.warmup, args.concurrency))
    print(json.dumps(result), flush=True)
    return 0


# The Python fake of the behaviour tests, served for h2load (counts only, like the bench's).


def python_fake_main() -> int:
    from tests.delivery.fake_apns import OK, Answer, ApnsRequest, FakeApns

    class CountingFake(FakeApns):
        """Counts instead of keeping every request (200,000 of them are needless memory)."""

        count = 0

        def _answer_for(self, request: ApnsRequest) -> Answer:
            self.count += 1
            return OK

    fake = CountingFake().start()
    print(fake.url, flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            stats = {"requests": fake.count, "connections": fake._connections, "cpu_seconds": cpu}
            print(json.dumps(stats), flush=True)
        elif command == "quit":
            break
    fake.stop()
    return 0


# Processes


class Fake:
    def __init__(self, process: subprocess.Popen[str], url: str, label: str) -> None:
        self.process, self.url, self.label = process, url, label

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return json.loads(read_line(self.process, 30))


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or an error after `timeout` (never a hang)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"no answer from pid {process.pid} in {timeout:.0f} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {process.pid} exited with {process.poll()}")
    return line.strip()


def pinned(cpu: int, argv: list[str], pin: bool) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if pin else argv


@contextmanager
def fake(kind: str, pin: bool, extra: list[str] | None = None) -> Iterator[Fake]:
    if kind == "node":
        argv = ["node", str(FAST_FAKE), *(extra or [])]
    else:
        argv = [sys.executable, __file__, "--python-fake"]
    process = subprocess.Popen(
        pinned(FAKE_CPU, argv, pin),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        yield Fake(process, read_line(process, START_TIMEOUT), kind)
    finally:
        with suppress(Exception):
            assert process.stdin is not None
            process.stdin.write("quit\n")
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def h2load(url: str, n: int, clients: int, streams: int, spec: Spec, pin: bool, body: Path):
    """h2load's rate and its own CPU time (from the children's rusage around the run)."""
    argv = ["h2load", "-n", str(n), "-c", str(clients), "-m", str(streams), "-d", str(body)]
    for name, value in spec.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"{url}/3/device/{device_token(0)}")
    cpu = children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        pinned(SENDER_CPU, argv, pin), capture_output=True, text=True, timeout=n / 100 + 120
    )
    wall = time.perf_counter() - started
    cpu = children_cpu() - cpu
    out = done.stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if done.returncode != 0 or not rate or not counts or not codes:
        raise RuntimeError(f"h2load failed ({done.returncode}): {out[-800:]} {done.stderr[-400:]}")
    return {
        "rate": float(rate.group(1)),
        "seconds": wall,
        "cpu_seconds": cpu,
        "ok": int(codes.group(1)),
        "statuses": {"200": int(codes.group(1))},
        "errors": {} if int(counts.group(1)) == n else {"not succeeded": n - int(counts.group(1))},
    }


def sender(name: str, url: str, args: argparse.Namespace, spec_path: Path) -> dict[str, Any]:
    python = sys.executable
    if name in ("e-niquests", "e-curl_cffi"):
        python = str(Path(args.extras_venv, "bin", "python"))
    concurrency = args.product_tasks if name in PRODUCT_SENDERS else args.streams
    argv = [python, __file__, "--sender", name, "--url", url, "--spec", str(spec_path)]
    argv += ["-n", str(args.n), "--warmup", str(args.warmup), "--concurrency", str(concurrency)]
    # (a) imports notify_server from the baseline tree; everything else from this one.
    source = args.baseline_tree if name == "a-product" else REPO
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(source, "src")), str(REPO)])}
    done = subprocess.run(
        pinned(SENDER_CPU, argv, args.pin),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=args.n / 50 + 300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rate"] = args.n / result["seconds"]
    result["ok"] = result["statuses"].get("200", 0)
    return result


# Machine state


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


_wait_budget: list[float] = []


def wait_for_quiet(limit: float) -> float:
    """Wait until no fairness_bench runs (two benches on 2 cores measure little): before every
    measured run, but `limit` seconds in all per invocation, so a bench that never ends costs
    one wait, not one per run."""
    if not _wait_budget:
        _wait_budget.append(limit)
    started = time.monotonic()
    while True:
        found = subprocess.run(["pgrep", "-f", "fairness_bench"], capture_output=True, text=True)
        waited = time.monotonic() - started
        if not found.stdout.strip():
            break
        if waited >= _wait_budget[0]:
            print("  fairness_bench is running (wait budget spent): measuring anyway", flush=True)
            break
        time.sleep(5)
    _wait_budget[0] = max(_wait_budget[0] - waited, 0.0)
    return waited


def busy_cpu_seconds() -> float:
    """All CPUs' busy time so far (from /proc/stat), to say how much others used."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# Set-up


def setup(args: argparse.Namespace) -> list[str]:
    """h2load from Debian, the extra clients in their own venv; returns what is unavailable."""
    missing = []
    if shutil.which("h2load") is None:
        print("installing nghttp2-client (h2load) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "nghttp2-client"], capture_output=True)
        if shutil.which("h2load") is None:
            missing.append("f-h2load")
    if shutil.which("node") is None:
        raise SystemExit("node (20+) is needed for bench/fake_apns_fast.mjs")
    extras = [name for name in args.only if name in ("e-niquests", "e-curl_cffi")]
    if extras:
        venv = Path(args.extras_venv)
        python = venv / "bin" / "python"
        if not python.exists():
            print(f"creating {venv} for {', '.join(EXTRAS)} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        probe = subprocess.run(
            [str(python), "-c", "import niquests, curl_cffi"], capture_output=True
        )
        if probe.returncode != 0:
            pip = [str(venv / "bin" / "pip"), "install", "-q", *EXTRAS]
            subprocess.run(pip, capture_output=True)
        for name, module in (("e-niquests", "niquests"), ("e-curl_cffi", "curl_cffi")):
            if subprocess.run([str(python), "-c", f"import {module}"]).returncode != 0:
                missing.append(name)
    if "d-raw-h2-uvloop" in args.only:
        probe = subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True)
        if probe.returncode != 0:
            missing.append("d-raw-h2-uvloop")
    return missing


# The run


SENDERS = (
    "a-product",
    "b-httpx",
    "c-raw-h2",
    "d-raw-h2-uvloop",
    "e-httpcore",
    "e-niquests",
    "e-curl_cffi",
    "f-h2load",
    "g-product-h2",
)


def baseline_tree(ref: str, directory: Path) -> Path:
    """`ref`'s src/ exported into `directory` (git archive: the work tree is left alone)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def versions(extras_python: Path) -> dict[str, str]:
    from importlib.metadata import version

    found = {}
    for package in ("h2", "httpx", "httpcore", "uvloop"):
        with suppress(Exception):
            found[package] = version(package)
    if extras_python.exists():
        probe = subprocess.run(
            [
                str(extras_python),
                "-c",
                "from importlib.metadata import version as v; "
                "print(v('niquests'), v('urllib3-future'), v('curl_cffi'))",
            ],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            niquests, urllib3_future, curl = probe.stdout.split()
            found |= {"niquests": niquests, "urllib3-future": urllib3_future, "curl_cffi": curl}
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    h2load_version = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    found["node"] = node
    found["h2load"] = h2load_version.stdout.strip().split("\n")[0]
    found["python"] = sys.version.split()[0]
    return found


def measured(label: str, run: Callable[[], dict[str, Any]], fake_: Fake, args) -> dict[str, Any]:
    waited = wait_for_quiet(args.busy_wait)
    before_fake, before_busy = fake_.stats(), busy_cpu_seconds()
    result = run()
    after_fake, after_busy = fake_.stats(), busy_cpu_seconds()
    served = after_fake["requests"] - before_fake["requests"]
    fake_cpu = after_fake["cpu_seconds"] - before_fake["cpu_seconds"]
    result["fake_cpu_us"] = fake_cpu / served * 1e6 if served else None
    result["fake_connections"] = after_fake["connections"] - before_fake["connections"]
    # Busy CPU beyond what the sender and the fake used: the other engineers' share.
    others = (after_busy - before_busy) - result["cpu_seconds"] - fake_cpu
    result["others_cores"] = max(others, 0.0) / result["seconds"]
    result["waited"] = waited
    errors = f" errors {result['errors']}" if result["errors"] else ""
    cpu_us = result["cpu_seconds"] / max(result["ok"], 1) * 1e6
    print(
        f"  {label:<22} {result['rate']:>9,.0f} req/s  {cpu_us:>6.0f} µs/req"
        f"  fake {result['fake_cpu_us'] or 0:>5.0f} µs/req  conns {result['fake_connections']}"
        f"  others {result['others_cores']:.2f} cores  {result['statuses']}{errors}",
        flush=True,
    )
    return result


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "rate": med("rate"),
        "cpu_us": statistics.median(r["cpu_seconds"] / max(r["ok"], 1) * 1e6 for r in runs),
        "fake_cpu_us": statistics.median(r["fake_cpu_us"] or 0 for r in runs),
        "others": med("others_cores"),
        "rates": [r["rate"] for r in runs],
        "waited_seconds": sum(r["waited"] for r in runs),  # for fairness_bench to end
        "all_ok": all(not r["errors"] and r["ok"] == sum(r["statuses"].values()) for r in runs),
    }


def tls_options(directory: Path, tls: bool) -> list[str]:
    """With --tls: a self-signed P-256 certificate for 127.0.0.1 made with openssl, which every
    sender trusts through SSL_CERT_FILE (inherited by the sender processes)."""
    if not tls:
        return []
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
        + ["-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"],
        check=True,
        capture_output=True,
    )
    os.environ["SSL_CERT_FILE"] = str(cert)
    return ["--tls", "--cert", str(cert), "--key", str(key)]


def main_run(args: argparse.Namespace) -> int:
    unavailable = setup(args)
    print(f"machine: {os.cpu_count()} CPUs; {uptime()}", flush=True)
    print(f"versions: {versions(Path(args.extras_venv, 'bin', 'python'))}", flush=True)
    report: dict[str, Any] = {"uptime_before": uptime(), "ceilings": {}, "senders": {}}
    with (
        tempfile.TemporaryDirectory(prefix="h2-senders-") as tmp,
        fake("node", args.pin, tls_options(Path(tmp), args.tls)) as node_fake,
    ):
        settings_url = node_fake.url
        args.baseline_tree = REPO
        if "a-product" in args.only:
            args.baseline_tree = baseline_tree(args.baseline, Path(tmp))
            print(f"(a) a-product: the tree of {args.baseline}", flush=True)
        _, _, spec = product_pieces(settings_url)
        spec_path = Path(tmp, "spec.json")
        spec_path.write_text(spec.to_json())
        body_path = Path(tmp, "body.json")
        body_path.write_bytes(spec.body)
        print(f"fast fake: {node_fake.url}", flush=True)
        print(f"request: body {len(spec.body)} bytes: {spec.body.decode()}", flush=True)

        if not args.skip_ceilings:
            print("\nfake ceilings under h2load (h2load on CPU 0, fake on CPU 1):", flush=True)
            for kind in ("node",) if args.tls else ("node", "python"):  # Python's: h2c only
                n = args.ceiling_n if kind == "node" else args.python_ceiling_n
                for clients in (1, 4):
                    label = f"{kind} -c {clients} -m {args.streams} -n {n}"
                    runs = []
                    for _ in range(args.repeats):
                        if kind == "node":
                            f = node_fake
                            runs.append(
                                measured(
                                    label,
                                    lambda f=f, c=clients, n=n: h2load(
                                        f.url, n, c, args.streams, spec, args.pin, body_path
                                    ),
                                    f,
                                    args,
                                )
                            )
                        else:
                            with fake("python", args.pin) as f:
                                runs.append(
                                    measured(
                                        label,
                                        lambda f=f, c=clients, n=n: h2load(
                                            f.url,
                                            n,
                                            c,
                                            args.streams,
                                            spec,
                                            args.pin,
                                            body_path,
                                        ),
                                        f,
                                        args,
                                    )
                                )
                    report["ceilings"][label] = median_row(runs)

        print(
            f"\nsenders (CPU 0) -> fast fake (CPU 1), n={args.n} after {args.warmup} warm-up,"
            f" {args.streams} streams (product: {args.product_tasks} tasks),"
            f" {args.repeats} repeats:",
            flush=True,
        )
        names = [s for s in args.only if s not in unavailable]
        runs_by_name: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            # Every other repeat backwards, so drift over the run falls on all sides.
            for name in names if repeat % 2 == 0 else reversed(names):
                if name == "f-h2load":
                    run = lambda: h2load(  # noqa: E731
                        node_fake.url, args.n, 1, args.streams, spec, args.pin, body_path
                    )
                else:
                    run = lambda name=name: sender(name, node_fake.url, args, spec_path)  # noqa: E731
                try:
                    runs_by_name[name].append(measured(name, run, node_fake, args))
                except Exception as exc:
                    print(f"  {name}: FAILED {exc}", flush=True)
        for name, runs in runs_by_name.items():
            if runs:
                report["senders"][name] = median_row(runs)
    report["uptime_after"] = uptime()
    report["unavailable"] = unavailable
    print_tables(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_tables(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nbefore: {report['uptime_before']}\nafter:  {report['uptime_after']}")
    if report["ceilings"]:
        print("\n| fake under h2load | req/s (median) | runs | fake CPU µs/req | others (cores) |")
        print("|---|---:|---|---:|---:|")
        for label, row in report["ceilings"].items():
            runs = ", ".join(f"{r:,.0f}" for r in row["rates"])
            print(
                f"| {label} | {row['rate']:,.0f} | {runs} | {row['fake_cpu_us']:.0f} |"
                f" {row['others']:.2f} |"
            )
    senders = report["senders"]
    base = senders.get("a-product")
    raw = senders.get("c-raw-h2")
    print(
        "\n| sender | req/s (median) | runs | CPU µs/req | vs (a) rate | vs (a) CPU |"
        " CPU / (c)'s | fake CPU µs/req | all 200 | others (cores) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for name, row in senders.items():
        runs = ", ".join(f"{r:,.0f}" for r in row["rates"])
        rate_ratio = f"{row['rate'] / base['rate']:.2f}x" if base else "-"
        cpu_ratio = f"{base['cpu_us'] / row['cpu_us']:.2f}x" if base else "-"
        # How much more CPU a request costs than on the raw client: the target for (g).
        raw_ratio = f"{row['cpu_us'] / raw['cpu_us']:.2f}x" if raw else "-"
        print(
            f"| {name} | {row['rate']:,.0f} | {runs} | {row['cpu_us']:.0f} | {rate_ratio} |"
            f" {cpu_ratio} | {raw_ratio} | {row['fake_cpu_us']:.0f} |"
            f" {'yes' if row['all_ok'] else 'NO'} | {row['others']:.2f} |"
        )
    if report["unavailable"]:
        print(f"\nnot run (could not be installed): {', '.join(report['unavailable'])}")


# Self-test of the raw client against the fast fake


def selftest(args: argparse.Namespace) -> int:
    """The raw client's correctness where the bench alone would not show it."""

    async def check(url: str, name: str, coro: Callable[[RawH2Sender], Any], **kw) -> None:
        sender = RawH2Sender(url, **kw)
        try:
            await asyncio.wait_for(coro(sender), 60)
        finally:
            await sender.close()
        print(f"  ok: {name}", flush=True)

    headers = [(b"apns-topic", BUNDLE_ID.encode()), (b"apns-push-type", b"alert")]

    async def statuses(sender: RawH2Sender) -> None:
        ok = await sender.post(
            f"/3/device/{device_token(1)}", [*headers, (b"apns-id", b"x1")], b"{}"
        )
        assert ok.status == 200 and ok.header(b"apns-id") == b"x1", ok
        dead = await sender.post("/3/device/dead" + "0" * 60, headers, b"{}")
        assert dead.status == 410 and json.loads(dead.body)["reason"] == "Unregistered", dead
        bad = await sender.post("/3/device/bad0" + "0" * 60, headers, b"{}")
        assert bad.status == 400 and json.loads(bad.body) == {"reason": "BadDeviceToken"}, bad
        missing = await sender.post(f"/3/device/{device_token(1)}", [], b"{}")
        assert missing.status == 400 and b"MissingTopic" in missing.body, missing

    async def flow_control(sender: RawH2Sender) -> None:
        # 300 kB bodies on 20 streams at once: far past the 64 kB initial windows, so the
        # bodies only get through if WINDOW_UPDATEs resume them. The fake reads them whole.
        big = b"x" * 300_000
        answers = await asyncio.gather(
            *(sender.post(f"/3/device/{device_token(i)}", headers, big) for i in range(20))
        )
        assert [a.status for a in answers] == [413] * 20, [a.status for a in answers]

    async def many(sender: RawH2Sender, count: int = 3000) -> list[Response]:
        return await asyncio.gather(
            *(sender.post(f"/3/device/{device_token(i)}", headers, b"{}") for i in range(count))
        )

    async def stream_limit(sender: RawH2Sender) -> None:
        # The fake allows 10 concurrent streams; opening more would get REFUSED_STREAM or a
        # PROTOCOL_ERROR GOAWAY from nghttp2. Every answer must be a 200 on one connection.
        answers = await many(sender)
        assert all(a.status == 200 for a in answers) and sender.connections == 1

    async def goaway(sender: RawH2Sender) -> None:
        # GOAWAY after every 500th answer: requests above its last stream id are retried on a
        # new connection, the others finish on the old one. Exactly 3000 answers, all 200.
        answers = await many(sender)
        assert all(a.status == 200 for a in answers), collections.Counter(a.status for a in answers)
        assert sender.connections >= 6, sender.connections

    prefixes = ["--unregistered-prefix", "dead", "--bad-prefix", "bad0"]
    with fake("node", False, prefixes) as f:
        asyncio.run(check(f.url, "statuses and bodies (200, 410, 400)", statuses))
        asyncio.run(check(f.url, "flow control (20 x 300 kB bodies)", flow_control))
    with fake("node", False, ["--max-streams", "10"]) as f:
        asyncio.run(check(f.url, "server max concurrent streams 10, 3000 requests", stream_limit))
        assert f.stats()["requests"] == 3000
    with fake("node", False, ["--goaway-after", "500"]) as f:
        asyncio.run(check(f.url, "GOAWAY every 500 answers, 3000 requests", goaway))
        served = f.stats()
        assert served["requests"] == 3000, served  # none lost, none sent twice
        print(f"  ok: the fake answered each exactly once over {served['connections']} connections")
    with fake("node", False) as f:
        # Our own cap below the server's: never more than max_streams in flight.
        async def capped(sender: RawH2Sender) -> None:
            connection = await sender._current()
            peak = 0

            async def one(i: int) -> None:
                nonlocal peak
                task = asyncio.ensure_future(
                    connection.request("POST", f"/3/device/{device_token(i)}", headers, b"{}")
                )
                await asyncio.sleep(0)
                peak = max(peak, len(connection._streams))
                assert (await task).status == 200

            await asyncio.gather(*(one(i) for i in range(500)))
            assert peak <= 7, peak

        asyncio.run(check(f.url, "our own cap of 7 streams", capped, max_streams=7))
    with tempfile.TemporaryDirectory(prefix="h2-selftest-") as tmp:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        from tests.delivery.fake_apns import self_signed

        certificate, key = self_signed([x509.NameAttribute(NameOID.COMMON_NAME, HOST)], ip=HOST)
        Path(tmp, "cert.pem").write_text(certificate)
        Path(tmp, "key.pem").write_text(key)
        tls = ["--tls", "--cert", f"{tmp}/cert.pem", "--key", f"{tmp}/key.pem"]
        with fake("node", False, tls) as f:
            assert f.url.startswith("https://"), f.url
            trust = ssl.create_default_context(cafile=f"{tmp}/cert.pem")

            async def over_tls(sender: RawH2Sender) -> None:
                answers = await many(sender, 500)
                assert all(a.status == 200 for a in answers)
                connection = await sender._current()
                assert connection.alpn == "h2", connection.alpn

            asyncio.run(check(f.url, "TLS with ALPN h2, certificate verified", over_tls, tls=trust))

            async def untrusted(sender: RawH2Sender) -> None:
                try:
                    await sender.post(f"/3/device/{device_token(1)}", headers, b"{}")
                except ssl.SSLCertVerificationError:
                    return
                raise AssertionError("a self-signed certificate was accepted without trust")

            asyncio.run(check(f.url, "TLS refuses an untrusted certificate", untrusted))
    print("selftest passed", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50_000, help="requests per sender run")
    parser.add_argument("--warmup", type=int, default=2_000, help="un-timed requests first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams (not (a))")
    parser.add_argument("--only", nargs="+", default=list(SENDERS), choices=SENDERS)
    parser.add_argument("--ceiling-n", type=int, default=200_000, help="h2load -n on the fast fake")
    parser.add_argument(
        "--python-ceiling-n", type=int, default=30_000, help="h2load -n on the Python fake"
    )
    parser.add_argument("--skip-ceilings", action="store_true")
    parser.add_argument("--busy-wait", type=float, default=BUSY_WAIT_SECONDS)
    parser.add_argument("--extras-venv", default=str(DEFAULT_EXTRAS_VENV))
    parser.add_argument("--tls", action="store_true", help="TLS with ALPN h2 instead of h2c")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--json", help="write the medians and machine state here")
    parser.add_argument(
        "--baseline", default=DEFAULT_BASELINE, help="the commit whose ApnsChannel (a) runs"
    )
    parser.add_argument(
        "--product-tasks",
        type=int,
        default=64,
        help="concurrent sends of (a) and (g) (64: worker_concurrency's default)",
    )
    parser.add_argument("--selftest", action="store_true")
    # Internal: one sender, or the Python fake, in its own process.
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--python-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.python_fake:
        sys.path.insert(0, str(REPO))
        return python_fake_main()
    if args.sender:
        return sender_main(args)
    sys.path[:0] = [str(REPO / "src"), str(REPO)]
    if args.selftest:
        return selftest(args)
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
