"""db.Prepared statements on PostgreSQL, run on libpq itself through psycopg's `pq` layer.

Through a psycopg cursor one statement cost ~90 µs of CPU here and a pipeline of four
~300 µs: a create's eight statements spent more in the driver than the rest of the request
did (bench/README.md, bench/pg_driver_bench.py). On `Connection.pgconn` a prepared statement costs a
few µs besides the round trip. psycopg still converts the values both ways (its
Transformer, so every type adapts as it does elsewhere), raises its own error classes, and
owns the connection for everything else; libpq releases the GIL while it waits.

Statements are prepared on each connection the first time it runs them (in the same round
trip), named after their Prepared object; several sent together go in one pipeline.
"""

import re
import select
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import count
from typing import Any

import psycopg
from psycopg import abc, pq
from psycopg.adapt import PyFormat, Transformer

_names = count()
_STATE = "notify_server.pgwire"
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC


class ConnectionLost(psycopg.OperationalError):
    """The server went away mid-exchange: this connection is dead (db.Database retries)."""


class Statement:
    """One Prepared's SQL as libpq takes it: `$n` placeholders and their parameters' names."""

    __slots__ = ("name", "sql", "names", "fixed", "formats")

    def __init__(self, sql: str, names: Sequence[str], fixed: Mapping[str, Any]) -> None:
        self.name = f"ns_{next(_names)}".encode()
        self.sql = sql.encode()
        self.names = tuple(names)
        self.fixed = fixed  # parameters the compiler gave a value of its own
        self.formats = [PyFormat.TEXT] * len(self.names)

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        if self.fixed:
            params = {**self.fixed, **params}
        return [params[name] for name in self.names]


_PYFORMAT = re.compile(r"%%|%\((\w+)\)s")


def statement_from_pyformat(sql: str, fixed: Mapping[str, Any]) -> Statement:
    """A statement compiled for psycopg (`%(name)s`, `%%`), numbered as libpq takes it."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return Statement(_PYFORMAT.sub(number, sql), names, fixed)


class Rows:
    """What a cursor gave the callers: fetchone, fetchall, iteration and rowcount."""

    __slots__ = ("_rows", "_next", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


def run(
    driver: psycopg.Connection,
    info: dict[str, Any],
    batch: Sequence[tuple[Statement, Mapping[str, Any]]],
) -> list[Rows]:
    """Every statement of `batch` in order, in one round trip; their results, in order.

    `info` is the pooled connection's dict (it remembers what this connection prepared).
    The first failure is raised once the exchange is over, as psycopg would raise it; the
    statements after it were not run (and a transaction they were in is aborted).
    """
    pgconn = driver.pgconn
    state = _state_of(driver, info)
    prepared, transformer = state.prepared, state.transformer
    # Converted before anything is sent: a value that cannot be fails alone.
    values = [
        transformer.dump_sequence(statement.values(params), statement.formats)
        for statement, params in batch
    ]
    # What each answer is for: a statement's run, its Parse, or (None) the DEALLOCATE.
    expected: list[tuple[Statement | None, bool]] = []
    try:
        pgconn.enter_pipeline_mode()
        if state.replan_due() and pgconn.transaction_status == pq.TransactionStatus.IDLE:
            pgconn.send_query_params(b"DEALLOCATE ALL", None)
            expected.append((None, True))
            state.replanned()
        for (statement, _), statement_values in zip(batch, values, strict=True):
            if statement.name not in prepared:
                pgconn.send_prepare(statement.name, statement.sql)
                prepared.add(statement.name)  # once, however often the batch runs it
                expected.append((statement, True))
            pgconn.send_query_prepared(statement.name, statement_values)
            expected.append((statement, False))
        pgconn.pipeline_sync()
        answers = _exchange(pgconn)
        pgconn.exit_pipeline_mode()
    except psycopg.OperationalError as error:
        # The exchange broke off: what the connection holds now is unknown.
        pgconn.finish()
        raise ConnectionLost(f"the database connection was lost: {error}") from None
    results: list[Rows] = []
    failure: psycopg.Error | None = None
    for (sent, preparing), answer in zip(expected, answers, strict=True):
        if answer.status not in _OK and preparing and sent is not None:
            prepared.discard(sent.name)  # not prepared after all
        if answer.status == _FATAL:
            failure = failure or psycopg.errors.error_from_result(answer, driver.info.encoding)
        elif answer.status in _OK and not preparing:
            results.append(_rows(transformer, answer))
    if isinstance(failure, _OUT_OF_STEP):
        state.lost_track()  # statements deallocated behind our back (DISCARD ALL), or kept
    if failure is not None:
        raise failure
    return results


# A generic plan PostgreSQL caches for a prepared statement is not replanned when the table's
# statistics change (ANALYZE invalidates nothing). Planned on a near-empty table, the create's
# probe took an index on service_id alone and read every binding of the service on each
# create, slower and slower (bench/README.md). So each connection prepares its statements
# afresh this often: a few plannings a connection every so many seconds.
REPLAN_SECONDS = 10.0
_OUT_OF_STEP = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)


class _ConnectionState:
    """What a connection has prepared (and since when), and its Transformer, whose caches of
    dumpers and loaders are worth keeping. Kept with the libpq connection it belongs to: a
    reconnect starts afresh."""

    __slots__ = ("pgconn", "prepared", "transformer", "since", "out_of_step")

    def __init__(self, driver: psycopg.Connection) -> None:
        self.pgconn = driver.pgconn
        self.prepared: set[bytes] = set()
        self.transformer = Transformer(driver)
        self.since = time.monotonic()
        self.out_of_step = False

    def replan_due(self) -> bool:
        stale = bool(self.prepared) and time.monotonic() - self.since > REPLAN_SECONDS
        return stale or self.out_of_step

    def replanned(self) -> None:
        self.prepared.clear()
        self.since = time.monotonic()
        self.out_of_step = False

    def lost_track(self) -> None:
        self.out_of_step = True  # DEALLOCATE ALL before the next batch, then start afresh


def _state_of(driver: psycopg.Connection, info: dict[str, Any]) -> _ConnectionState:
    state = info.get(_STATE)
    if state is None or state.pgconn is not driver.pgconn:
        state = info[_STATE] = _ConnectionState(driver)
    return state


def _rows(transformer: abc.Transformer, answer: pq.abc.PGresult) -> Rows:
    tuples = answer.ntuples
    if answer.status == pq.ExecStatus.TUPLES_OK and tuples:
        transformer.set_pgresult(answer)
        return Rows(transformer.load_rows(0, tuples, tuple), tuples)
    affected = answer.command_tuples
    return Rows([], tuples if affected is None else affected)


def _exchange(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Send what is queued, then read every answer up to the pipeline's sync."""
    fileno = pgconn.socket
    while pgconn.flush():  # the socket is full: take in answers meanwhile, as libpq asks
        if _wait(fileno, select.POLLIN | select.POLLOUT) & select.POLLIN:
            pgconn.consume_input()
    answers: list[pq.abc.PGresult] = []
    while True:
        while pgconn.is_busy():
            _wait(fileno, select.POLLIN)
            pgconn.consume_input()
        answer = pgconn.get_result()
        if answer is None:  # between one statement's results and the next
            continue
        if answer.status == _SYNC:
            return answers
        answers.append(answer)


def _wait(fileno: int, events: int) -> int:
    """Until the socket is ready for `events` (poll: a descriptor past 1024 is fine)."""
    poller = select.poll()
    poller.register(fileno, events)
    try:
        return poller.poll()[0][1]
    except OSError as error:
        raise psycopg.OperationalError(str(error)) from None
