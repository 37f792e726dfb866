"""The fan-out's second half: workers write the outbox rows of large query notifications.

The request writes a notification's first chunk of targets and, when more match, an
expansion record (notifications/models.py). Here a worker writes the rest, one chunk of
bindings per transaction on the database's writer thread: each chunk holds the writer only
a few milliseconds and the event loop not at all, and after each the delivery worker is woken
to send what was written.

After each chunk the Expander rests as long as the chunk took: it works at most half the
time. Flat out, the chunk's SQL (SQLite's writer thread, or the PostgreSQL backend beside
the writer) kept a core busy and the event loop waited for a CPU: 20-100 ms of every second
while expanding on PostgreSQL, against 1-5 ms idle, and most gaps over 20 ms were that
(bench/FANOUT.md). Half the pace is still several times what delivery takes.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection

from notify_server.db import Database
from notify_server.logs import RetryLog
from notify_server.notifications import repository
from notify_server.wire import utcnow_precise

log = logging.getLogger("notify_server.delivery")


class Expander:
    def __init__(
        self,
        database: Database,
        *,
        poll_seconds: float,
        chunk_size: int,
        on_chunk: Callable[[], None],
    ) -> None:
        self._database = database
        self._poll_seconds = poll_seconds
        self._on_chunk = on_chunk
        self._chunk_size = chunk_size
        self._wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retries = RetryLog(log)

    def wake(self) -> None:
        """A notification left targets to expand: skip the rest of the poll interval."""
        if self._wake_event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    async def run(self) -> None:
        """Until cancelled. A chunk cancelled mid-way still commits or rolls back whole."""
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        while True:
            started = time.monotonic()
            try:
                written = await self._database.transaction(self._next_chunk)
            except Exception as error:
                # e.g. a deadlock with a service being deleted: the chunk rolled back whole.
                self._retries.failed("expanding a notification's targets", error)
                written = None
            if written is None:
                await self._idle()
                continue
            if written:
                self._on_chunk()
            await asyncio.sleep(time.monotonic() - started)

    def _next_chunk(self, conn: Connection) -> int | None:
        return repository.expand_next(conn, limit=self._chunk_size, now=utcnow_precise())

    async def _idle(self) -> None:
        assert self._wake_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_event.wait(), self._poll_seconds)
        self._wake_event.clear()
