"""uvicorn's httptools protocol with the edge limits it lacks: a cap on the request head
(request line + header lines) and read timeouts for the head and the body.

httptools (llhttp) has no header-size limit and uvicorn adds none, so one endless header
line is buffered whole; and uvicorn times out only idle keep-alive connections, so a request
that is half sent stays open for ever. Both are enforced here, per connection, with one
counter and at most one `call_later` handle at a time; the app never sees these requests.
"""

import asyncio
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from notify_server.config import get_settings
from notify_server.edge import CORS_HEADERS
from notify_server.errors import TwilioError
from notify_server.wire import new_request_id

log = logging.getLogger("notify_server")

# A body may trickle, but not for ever: it must be complete within this many idle timeouts.
BODY_TOTAL_TIMEOUTS = 6
# After an error answer we half-close and read (and drop) what the client is still sending,
# so that our close does not become a reset that destroys the answer before it is read.
LINGER_SECONDS = 2.0


class HeadersTooLarge(TwilioError):
    status, code = 431, 20001

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request headers too large: at most {limit} bytes")


class RequestTimeout(TwilioError):
    status, code = 408, 20001


class MalformedRequest(TwilioError):
    status, code = 400, 20001

    def __init__(self) -> None:
        super().__init__("Invalid HTTP request: it could not be parsed as HTTP/1.1")


def seconds(value: float) -> str:
    return f"{value:g} second" + ("" if value == 1 else "s")


# Set when this process's server begins its graceful shutdown: long-lived responses (the
# console's event streams) end themselves rather than hold the shutdown until its timeout.
_shutting_down = False


def shutting_down() -> bool:
    return _shutting_down


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    body_total_timeout: float


@cache
def edge_limits() -> EdgeLimits:
    # Once per process: every uvicorn worker process imports this module afresh.
    settings = get_settings()
    return EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        body_total_timeout=settings.body_timeout_seconds * BODY_TOTAL_TIMEOUTS,
    )


class EdgeLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = edge_limits()
        self.max_head = limits.max_header_bytes
        self.head_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.body_total_timeout = limits.body_total_timeout
        # The current request: is its head still arriving, how many more bytes may it take,
        # and has its first byte arrived (then the head timer runs)?
        self.in_head = True
        self.head_room = self.max_head
        self.head_begun = False
        self.head_timer: asyncio.TimerHandle | None = None
        # Its body: one lazily re-armed timer checks these instead of one timer per chunk.
        self.body_timer: asyncio.TimerHandle | None = None
        self.body_started = 0.0
        self.body_seen = 0.0
        self.body_checked = 0.0
        # Set once we have answered (or given up on) the connection: read nothing more.
        self.refused = False
        self.linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response, so a connection that never
        # sends a byte would stay open for ever: treat it as idle from the start.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        global _shutting_down
        _shutting_down = True
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.in_head:
            size = len(data)
            if size > self.head_room:
                self._feed_to_limit(data)
                return
            self.head_room -= size
        else:
            self.body_seen = self.loop.time()
        super().data_received(data)
        # Arm a timer only for what is still incomplete after this read (inline: hot path).
        # head_room below the limit with no message begun: llhttp skipped what came (CRLFs
        # between requests), which must not trickle in for ever either.
        if self.in_head:
            if self.head_timer is None and (self.head_begun or self.head_room < self.max_head):
                self._arm_head_timer()
        elif self.body_timer is None:
            self._arm_body_timer()

    def _feed_to_limit(self, data: bytes) -> None:
        """Feed the parser only what the head may still take, so a head over the limit is
        never buffered; if the head ends inside that, feed the rest as usual."""
        room = self.head_room
        self.head_room = 0
        view = memoryview(data)
        if room:
            # httptools reads any buffer: slicing a memoryview copies nothing.
            super().data_received(cast(bytes, view[:room]))
        if self.refused or self.transport.is_closing():
            return
        if self.in_head and self.head_room == 0:
            # Still in the same head (a message that ended inside resets head_room).
            self._reject_head(HeadersTooLarge(self.max_head))
            return
        self.data_received(cast(bytes, view[room:]))

    def _arm_head_timer(self) -> None:
        if not self.refused:
            self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        if not self.refused:
            now = self.loop.time()
            self.body_started = self.body_seen = self.body_checked = now
            self.body_timer = self.loop.call_later(self.body_timeout, self._check_body)

    def _cancel_timers(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_begun = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What follows in this connection is the next request's head. (Where it began inside
        # the read that ended this message, that part of it went uncounted: a pipelined head
        # may so reach twice the limit, no more. llhttp tells no offsets to count it exactly.)
        self.in_head = True
        self.head_room = self.max_head
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the websocket protocol; none of our limits apply.
        self.refused = True
        self._cancel_timers()
        super().handle_websocket_upgrade()

    # Timers
    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # uvicorn stopped reading (pipelined requests queue behind a slow one): the rest
            # of this head cannot arrive, which is not the client's doing.
            self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
            return
        self._reject_head(
            RequestTimeout(
                f"Request timed out: headers not received within {seconds(self.head_timeout)}"
            )
        )

    def _check_body(self) -> None:
        self.body_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # We are holding the body up (the app has not read what came, or the client
            # waits for our 100 Continue): neither the stall nor the time is the client's.
            self.body_started += now - self.body_checked
            self.body_seen = now
        self.body_checked = now
        idle_deadline = self.body_seen + self.body_timeout
        total_deadline = self.body_started + self.body_total_timeout
        if now < idle_deadline and now < total_deadline:
            self.body_timer = self.loop.call_later(
                min(idle_deadline, total_deadline) - now, self._check_body
            )
            return
        if now >= idle_deadline:
            message = f"Request timed out: body stalled for {seconds(self.body_timeout)}"
        else:
            total = seconds(self.body_total_timeout)
            message = f"Request timed out: body not received within {total}"
        self._reject_body(RequestTimeout(message))

    # Answers
    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer when llhttp cannot parse the request (bad bytes in the request line,
        # a malformed Content-Length or chunk size, ...): Twilio's JSON and headers, like every
        # other answer. In a body, the app reading it is told the client went away.
        if self.in_head:
            self._reject_head(MalformedRequest())
        else:
            self._reject_body(MalformedRequest())

    def _reject_head(self, error: TwilioError) -> None:
        """The current request's head is refused. It has no response cycle yet; the one in
        `self.cycle`, if any, is an earlier request on this connection."""
        self.refused = True
        self._cancel_timers()
        earlier = self.cycle
        if earlier is None or earlier.response_complete:
            self._answer(error)
        else:
            # An earlier (pipelined) request is still being answered: let it finish, then
            # hang up instead of writing into the middle of its response.
            earlier.keep_alive = False
            self.flow.pause_reading()
            self._log(error, answered=False)

    def _reject_body(self, error: TwilioError) -> None:
        self.refused = True
        self._cancel_timers()
        cycle = self.cycle
        answerable = not cycle.response_started and not self.pipeline
        # The app's receive() now returns http.disconnect and its send() does nothing.
        cycle.disconnected = True
        cycle.message_event.set()
        if answerable:
            self._answer(error)
        else:
            self._log(error, answered=False)
            self.transport.close()

    def _answer(self, error: TwilioError) -> None:
        request_id = new_request_id()
        body = orjson.dumps(error.body())
        content = [STATUS_LINE[error.status]]
        # The headers every other response carries (the Edge middleware adds them there).
        for name, value in [
            *self.server_state.default_headers,
            *CORS_HEADERS,
            (b"twilio-request-id", request_id.encode()),
        ]:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self._log(error, answered=True, request_id=request_id)
        if self.transport.can_write_eof():
            # Half-close and keep draining for a moment: closing with unread data in the
            # socket sends a reset, which can destroy the answer before the client reads it.
            self.transport.write_eof()
            self.flow.resume_reading()
            self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _log(self, error: TwilioError, *, answered: bool, request_id: str | None = None) -> None:
        log.warning(
            "request refused at the edge",
            extra={
                "status": error.status,
                "reason": error.message,
                "answered": answered,
                "request_id": request_id,
            },
        )
