"""Server-sent events for an open console page: the page's fingerprint (console/repository.py)
whenever it changes; the page's script then fetches the page again.

Polled, not pushed: a delivery may be recorded by any process (several `serve` workers, a
`notify-server worker`), and the database is what they share. Each poll borrows a connection
off the event loop for one short read and gives it back; between polls the stream holds
nothing but its socket. It ends when the client goes (Starlette cancels it), when the server
begins shutting down, and after STREAM_SECONDS (the browser reconnects by itself).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from starlette.responses import StreamingResponse

from notify_server.db import Database
from notify_server.errors import TwilioError
from notify_server.http_protocol import shutting_down

log = logging.getLogger("notify_server")

POLL_SECONDS = 0.3
MAX_PAUSE_SECONDS = 5.0
KEEP_ALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0
# How soon the browser reconnects after the stream ends (EventSource's `retry`).
RETRY_MILLISECONDS = 1000


async def _events(
    database: Database, stamp: Callable[[Connection], str], stopped: Callable[[], bool]
) -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
    last: str | None = None
    started = last_sent = time.monotonic()
    while not stopped() and time.monotonic() - started < STREAM_SECONDS:
        current: str | None
        polled = time.monotonic()
        try:
            current = await database.read(stamp)
        except TwilioError:  # the service or notification is gone (or the session is)
            yield b"event: gone\ndata: \n\n"
            return
        except OperationalError as error:
            log.warning("console events: database unavailable: %s", error.orig)
            current = last
        now = time.monotonic()
        # A page over a huge fan-out makes each read slow: then poll less often, so that one
        # open page never keeps the database more than a fifth busy.
        pause = max(POLL_SECONDS, 4 * (now - polled))
        if current != last and current is not None:
            yield f"event: change\ndata: {current}\n\n".encode()
            last, last_sent = current, now
        elif now - last_sent >= KEEP_ALIVE_SECONDS:
            yield b": keep-alive\n\n"  # proxies close silent connections
            last_sent = now
        wake = now + min(pause, MAX_PAUSE_SECONDS)
        while not stopped() and time.monotonic() < wake:
            await asyncio.sleep(min(POLL_SECONDS, wake - time.monotonic()))


def event_stream(
    database: Database, stamp: Callable[[Connection], str], headers: dict[str, str]
) -> StreamingResponse:
    return StreamingResponse(
        _events(database, stamp, shutting_down),
        media_type="text/event-stream",
        headers={**headers, "x-accel-buffering": "no"},
    )
