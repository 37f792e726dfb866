"""The HTTP/2 client the push channels send with (APNs, FCM v1): the `jh2` state machine on
an asyncio Protocol, one multiplexed connection per origin.

Why not httpx: its layers (anyio, the connection pool, per-request locks, events and response
objects) cost about 1,200 µs of CPU per push where this costs under 200 (bench/H2_SENDERS.md).
Why jh2: it is h2 (same API, same state machine) with HPACK in Rust: decoding an answer's
headers costs 2 µs where hpack's pure Python took 21 (bench/H2_SENDERS.md).

What it does: TLS with ALPN h2 for https:// (h2 with prior knowledge for http://, which the
tests' fakes speak); waits for the server's SETTINGS before the first request and keeps within
its SETTINGS_MAX_CONCURRENT_STREAMS (further requests wait for a free stream); sends bodies
within the flow-control windows, resuming on WINDOW_UPDATE; on GOAWAY the streams the server
kept finish and the others (never processed) are retried on a new connection, as are streams
refused with REFUSED_STREAM; a lost connection fails its requests (they may have been
processed: the caller decides) and the next request reconnects. A connection silent for
`ping_interval` gets a PING and is dropped without an answer within `ping_timeout` (so is one
whose request timed out); one unused for `idle_timeout` is closed. Response bodies are bounded.

Provider URLs come from the operator's settings (NOTIFY_APNS_*, NOTIFY_FCM_URL), never from a
tenant, so like the httpx clients before it this client does not go through the outbound
policy (notify_server.outbound), which guards tenant-given callback URLs.
"""

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jh2.config
import jh2.connection
import jh2.errors
import jh2.events
import jh2.exceptions
import jh2.settings
from jh2.hpack import NeverIndexedHeaderTuple

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
# Header values unique to one request (APNs' apns-id): indexing them in HPACK's 4 kB table only
# evicts what repeats (the ~200-byte provider token above all), which then goes in full again.
DEFAULT_NEVER_INDEXED = frozenset({"apns-id"})
_REFUSED_STREAM = jh2.errors.ErrorCodes.REFUSED_STREAM
_CANCEL = jh2.errors.ErrorCodes.CANCEL
# Requests the server never processed are retried on a new connection this many times.
_UNPROCESSED_RETRIES = 2


class H2Error(Exception):
    """The request got no HTTP answer."""


class ConnectError(H2Error):
    """No connection: refused, unresolvable, TLS failed, or the server does not speak HTTP/2."""


class ConnectionLost(H2Error):
    """The connection broke while the request was in flight: it may have been processed."""


class StreamReset(H2Error):
    def __init__(self, code: int) -> None:
        name = getattr(jh2.errors._error_code_from_int(code), "name", code)
        super().__init__(f"the server reset the stream ({name})")
        self.code = code


class RequestTimeout(H2Error):
    """No answer within the request's timeout."""


class ResponseTooLarge(H2Error):
    pass


class MalformedResponse(H2Error):
    pass


class _Unprocessed(H2Error):
    """Never processed by the server (GOAWAY above it, REFUSED_STREAM): safe to retry."""


class _NotSent(_Unprocessed):
    """The connection closed while the request waited for a stream: it never left."""


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The header's value; None without one, or for one with control characters (h2's
        checks of inbound headers are off: these are the provider's bytes, bound for the
        database)."""
        wanted = name.encode()
        for key, value in self.headers:
            if key == wanted:
                text = value.decode("latin-1")
                return text if text.isprintable() else None
        return None

    def text(self, limit: int) -> str | None:
        """The body's first `limit` characters as text (None if empty)."""
        return self.body.decode(errors="replace")[:limit] or None


@dataclass(slots=True)
class _Stream:
    future: "asyncio.Future[Response]"
    body: memoryview  # what is still to send
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, client: "H2Client", authority: bytes, scheme: bytes) -> None:
        self._client = client
        self._authority = authority
        self._scheme = scheme
        config = jh2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # The channels build every header themselves, lower-case: not re-checked per request
            # (and not normalised: h2 would send `authorization` never-indexed, so the provider
            # token would go in full on every request).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            # Nor are the answers' headers run through h2's eight checking generators (~10 µs
            # an answer): only `:status` and `apns-id` are read, and checked here (_status,
            # Response.header).
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self._h2 = jh2.connection.H2Connection(config)
        self._h2.local_settings = jh2.settings.Settings(
            client=True,
            initial_values={
                jh2.settings.SettingCodes.ENABLE_PUSH: 0,
                jh2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: DEFAULT_MAX_RESPONSE_BYTES,
            },
        )
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: set[int] = set()  # streams whose body waits for window
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._flush_scheduled = False
        self._writable: asyncio.Future[None] | None = None  # set while the transport is paused
        self._closed: H2Error | None = None  # set once no new stream may open
        self.ready: asyncio.Future[None] = self._loop.create_future()  # the server's SETTINGS
        self.lost: asyncio.Future[None] = self._loop.create_future()
        now = self._loop.time()
        self._last_received = now
        self._last_request = now  # as of the last tick that saw _requests move
        self._requests = 0
        self._requests_at_tick = 0
        self._ping_sent_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stream_limit = client.max_streams  # and the server's, once its SETTINGS come

    @property
    def usable(self) -> bool:
        return self._closed is None

    @property
    def alpn(self) -> str | None:
        ssl_object = self._transport.get_extra_info("ssl_object") if self._transport else None
        return ssl_object.selected_alpn_protocol() if ssl_object else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._h2.initiate_connection()
        self._flush()
        self._timer = self._loop.call_later(self._client.ping_interval, self._tick)

    def data_received(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        try:
            events = self._h2.receive_data(data)
        except jh2.exceptions.ProtocolError as exc:
            self._fail_all(ConnectionLost(f"HTTP/2 protocol error: {exc}"))
            self._flush()
            self._abort()
            return
        for event in events:
            if isinstance(event, jh2.events.ConnectionTerminated):
                # First: the requests it leaves unprocessed then wake (and queue for the next
                # connection) before those woken by this read's answers send their next ones,
                # or a server whose GOAWAY stops short of the newest streams would refuse the
                # same retried requests on every new connection.
                self._goaway(event.last_stream_id or 0, event.error_code or 0)
        for event in events:
            if isinstance(event, jh2.events.ResponseReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    status = _status(event.headers)
                    if status is None:
                        malformed = MalformedResponse("the response has no valid :status first")
                        self._reset(event.stream_id, stream, malformed)
                    else:
                        stream.headers = event.headers
                        stream.status = status
            elif isinstance(event, jh2.events.DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.received += event.data
                    if len(stream.received) > self._client.max_response_bytes:
                        self._reset(
                            event.stream_id,
                            stream,
                            ResponseTooLarge(
                                f"the response body is over {self._client.max_response_bytes} bytes"
                            ),
                        )
            elif isinstance(event, jh2.events.StreamEnded):
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None:
                    self._blocked.discard(event.stream_id)
                    if not stream.future.done():
                        response = Response(stream.status, stream.headers, bytes(stream.received))
                        stream.future.set_result(response)
                    self._stream_closed()
            elif isinstance(event, jh2.events.StreamReset):
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None:
                    self._blocked.discard(event.stream_id)
                    error: H2Error = StreamReset(event.error_code)
                    if event.error_code == _REFUSED_STREAM:
                        error = _Unprocessed("the server refused the stream (REFUSED_STREAM)")
                    if not stream.future.done():
                        stream.future.set_exception(error)
                    self._stream_closed()
            elif isinstance(event, jh2.events.WindowUpdated):
                self._resume_bodies(event.stream_id)
            elif isinstance(event, jh2.events.RemoteSettingsChanged):
                # A larger initial window may unblock bodies; a new stream limit, waiters.
                remote_limit = self._h2.remote_settings.max_concurrent_streams
                self._stream_limit = min(self._client.max_streams, remote_limit)
                self._resume_bodies(0)
                self._wake_waiters()
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(event, jh2.events.PingAckReceived):
                self._ping_sent_at = None
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests in flight may or may not have been processed: not _Unprocessed.
        self._fail_all(ConnectionLost(f"connection lost: {exc or 'closed by the server'}"))
        if self._timer is not None:
            self._timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectError("closed before HTTP/2 SETTINGS"))
            self.ready.exception()  # retrieved: the opener may be gone
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # Requests

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deadline: float,
        seconds: float,
    ) -> Response:
        """One request, answered by `deadline` (loop time) or failed with RequestTimeout."""
        self._requests += 1
        if self._closed is None and (
            len(self._streams) >= self._stream_limit or self._writable is not None
        ):
            try:
                async with asyncio.timeout_at(deadline):
                    await self._stream_free()
            except TimeoutError:
                raise RequestTimeout(
                    f"no free stream on {self._authority.decode()} within {seconds} s"
                ) from None
        if self._closed is not None:
            raise _NotSent(str(self._closed))
        all_headers = [
            (b":method", method),
            (b":scheme", self._scheme),
            (b":authority", self._authority),
            NeverIndexedHeaderTuple(b":path", path),  # unique per request, like apns-id
            *headers,
        ]
        if body:
            all_headers.append((b"content-length", str(len(body)).encode()))
        try:
            stream_id = self._h2.get_next_available_stream_id()
            self._h2.send_headers(stream_id, all_headers, end_stream=not body)
        except jh2.exceptions.H2Error as exc:  # e.g. stream ids used up: a new connection
            self._closed = _NotSent(f"no new stream: {exc}")
            self._close_when_idle()
            raise self._closed from None
        stream = _Stream(self._loop.create_future(), memoryview(body))
        self._streams[stream_id] = stream
        if body:
            self._send_body(stream_id, stream)
        self._flush_soon()
        # A timer, not asyncio.timeout: a third of the CPU of a cancel scope per request.
        timer = self._loop.call_at(deadline, self._expire, stream_id, stream, seconds)
        try:
            return await stream.future
        except asyncio.CancelledError:  # shutdown, or the caller's own timeout: free the stream
            if self._streams.get(stream_id) is stream:
                self._reset(stream_id, stream, None)
            raise
        finally:
            timer.cancel()

    async def _stream_free(self) -> None:
        while self._closed is None and len(self._streams) >= self._stream_limit:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiters()  # pass the slot we were given on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        while self._writable is not None and self._closed is None:
            await asyncio.shield(self._writable)

    def _expire(self, stream_id: int, stream: _Stream, seconds: float) -> None:
        if self._streams.get(stream_id) is stream:
            error = RequestTimeout(f"no answer from {self._authority.decode()} within {seconds} s")
            self._reset(stream_id, stream, error)
            self.probe()

    def probe(self) -> None:
        """A request got no answer in time: PING, and drop the connection if that gets none."""
        if self._ping_sent_at is None and self._closed is None:
            self._ping()
            self._loop.call_later(self._client.ping_timeout, self._check_ping)

    async def close(self) -> None:
        if self._transport is None:
            return
        if self._closed is None:
            self._closed = ConnectionLost("closed by us")
            self._h2.close_connection()
            self._flush()
        self._transport.close()
        await self.lost

    # Internals

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

    def _reset(self, stream_id: int, stream: _Stream, error: H2Error | None) -> None:
        """We give up on a stream: RST_STREAM (CANCEL), and it no longer counts."""
        self._streams.pop(stream_id, None)
        self._blocked.discard(stream_id)
        with contextlib.suppress(jh2.exceptions.H2Error):  # already closed on h2's side
            self._h2.reset_stream(stream_id, _CANCEL)
        if error is not None and not stream.future.done():
            stream.future.set_exception(error)
        self._flush_soon()
        self._stream_closed()

    def _stream_closed(self) -> None:
        self._wake_waiters()
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if self._closed is not None and not self._streams and self._transport is not None:
            self._flush()
            self._transport.close()  # after GOAWAY, once the kept streams are done

    def _wake_waiters(self) -> None:
        free = self._stream_limit - len(self._streams)
        while self._waiters and (free > 0 or self._closed is not None):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _goaway(self, last_stream_id: int, error_code: int) -> None:
        if self._closed is None:
            self._closed = ConnectionLost(f"GOAWAY (error code {error_code})")
        for stream_id in [s for s in self._streams if s > last_stream_id]:
            stream = self._streams.pop(stream_id)
            self._blocked.discard(stream_id)
            if not stream.future.done():
                stream.future.set_exception(_Unprocessed(f"GOAWAY above stream {last_stream_id}"))
        self._stream_closed()

    def _fail_all(self, error: H2Error) -> None:
        if self._closed is None:
            self._closed = error
        streams, self._streams = self._streams, {}
        self._blocked.clear()
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)
        self._wake_waiters()

    def _tick(self) -> None:
        """Every ping_interval: close if unused, PING if silent, drop if a PING went unanswered."""
        if self._closed is not None:
            return
        now = self._loop.time()
        client = self._client
        if self._requests != self._requests_at_tick:
            self._requests_at_tick = self._requests
            self._last_request = now
        if not self._streams and now - self._last_request >= client.idle_timeout:
            self._closed = ConnectionLost("idle")
            self._h2.close_connection()
            self._close_when_idle()
            return
        if self._ping_sent_at is not None:
            self._check_ping()
        elif now - self._last_received >= client.ping_interval:
            self._ping()
        if self._closed is None:
            self._timer = self._loop.call_later(client.ping_interval, self._tick)

    def _ping(self) -> None:
        self._ping_sent_at = self._loop.time()
        self._h2.ping(b"notify\0\0")
        self._flush()

    def _check_ping(self) -> None:
        sent = self._ping_sent_at
        if sent is not None and self._loop.time() - sent >= self._client.ping_timeout * 0.99:
            self._fail_all(ConnectionLost("no answer to PING: the connection is dead"))
            self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class _Origin:
    """scheme://host:port: its one connection, or the task opening it."""

    def __init__(self, scheme: str, authority: str) -> None:
        self.scheme = scheme
        self.authority = authority
        host, _, port = authority.rpartition(":")
        if not host or not port.isdigit() or authority.endswith("]"):
            host, port = authority, ("443" if scheme == "https" else "80")
        self.host = host.strip("[]")
        self.port = int(port)
        self.connection: _Connection | None = None
        self.connecting: asyncio.Task[_Connection] | None = None


class H2Client:
    """`await request(method, url, headers, body, timeout) -> Response`; `aclose()`.

    `ssl_context` is used for https:// (the default: httpx's trust, so SSL_CERT_FILE works as
    before); give one with a client certificate for APNs certificate auth."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        max_streams: int = 1000,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        never_indexed: Iterable[str] = DEFAULT_NEVER_INDEXED,
        ping_interval: float = 60.0,
        ping_timeout: float = 10.0,
        idle_timeout: float = 600.0,
    ) -> None:
        self._ssl_context = ssl_context
        self.timeout = timeout
        self.connect_timeout = connect_timeout or timeout
        self.max_streams = max_streams
        self.max_response_bytes = max_response_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.idle_timeout = idle_timeout
        self._never_indexed = frozenset(never_indexed)
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        self.connections_opened = 0

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        scheme, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if not sep or scheme not in ("http", "https") or not authority:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key = f"{scheme}://{authority}"
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(scheme, authority)
        never_indexed = self._never_indexed
        raw_headers: list[tuple[bytes, bytes]] = [
            NeverIndexedHeaderTuple(name.encode(), value.encode())
            if name in never_indexed
            else (name.encode(), value.encode())
            for name, value in (headers or {}).items()
        ]
        raw_path = ("/" + path if slash else "/").encode()
        raw_method = method.encode()
        seconds = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + seconds
        retries = 0
        while True:
            connection = origin.connection
            if connection is None or not connection.usable:
                try:
                    async with asyncio.timeout_at(deadline):
                        connection = await self._connection(origin)
                except TimeoutError:
                    raise RequestTimeout(f"no connection to {key} within {seconds} s") from None
            try:
                return await connection.request(
                    raw_method, raw_path, raw_headers, body, deadline, seconds
                )
            except _NotSent:
                continue  # it never left: not a retry
            except _Unprocessed as exc:
                retries += 1
                if retries > _UNPROCESSED_RETRIES:
                    raise ConnectionLost(f"{exc}, {retries} times") from None

    async def _connection(self, origin: _Origin) -> _Connection:
        if self._closed:
            raise ConnectError("the client is closed")
        if origin.connecting is None:
            origin.connecting = asyncio.get_running_loop().create_task(self._connect(origin))
            origin.connecting.add_done_callback(_retrieve)
        # Shielded: one caller's timeout must not cancel the others' connection attempt.
        return await asyncio.shield(origin.connecting)

    async def _connect(self, origin: _Origin) -> _Connection:
        try:
            loop = asyncio.get_running_loop()
            tls = self._tls() if origin.scheme == "https" else None
            scheme = origin.scheme.encode()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self, origin.authority.encode(), scheme),
                        origin.host,
                        origin.port,
                        ssl=tls,
                        server_hostname=origin.host if tls else None,
                    )
                    if tls is not None and connection.alpn != "h2":
                        await connection.close()
                        raise ConnectError(f"{origin.host} did not offer HTTP/2 (ALPN h2)")
                    await connection.ready
            except TimeoutError:
                raise ConnectError(f"no connection to {origin.authority} in time") from None
            except (OSError, ssl.SSLError) as exc:  # refused, unresolvable, TLS refused
                raise ConnectError(f"{origin.authority}: {exc}") from None
            self.connections_opened += 1
            origin.connection = connection
            return connection
        finally:
            origin.connecting = None

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            import httpx  # its trust store: certifi, or SSL_CERT_FILE / SSL_CERT_DIR

            self._ssl_context = httpx.create_ssl_context()
        self._ssl_context.set_alpn_protocols(["h2"])
        return self._ssl_context

    async def aclose(self) -> None:
        self._closed = True
        origins, self._origins = list(self._origins.values()), {}
        for origin in origins:
            if origin.connecting is not None:
                origin.connecting.cancel()
            if origin.connection is not None:
                await origin.connection.close()


def _status(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A final response's status: its first header, three digits (h2 routes 1xx elsewhere)."""
    if headers and headers[0][0] == b":status":
        value = headers[0][1]
        if len(value) == 3 and value.isdigit() and value[0] in b"2345":
            return int(value)
    return None


def _retrieve(task: "asyncio.Task[Any]") -> None:
    if not task.cancelled():
        task.exception()  # the callers see it; nobody may be left to
