"""Engine set-up and the one transaction boundary per request."""

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, Connection, Engine, Integer, MetaData, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from notify_server import pgwire

_NO_PARAMS: Mapping[str, Any] = {}
Result = TypeVar("Result")
log = logging.getLogger("notify_server")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 64-bit ids on PostgreSQL; SQLite only aliases the rowid for INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str, *, background_checkpoints: bool = False) -> Engine:
    """With `background_checkpoints` (the server), SQLite's WAL is checkpointed by a
    Checkpointer thread instead of inside whichever commit crosses the threshold."""
    if url.startswith("sqlite"):
        # An in-memory database lives in one connection (SingletonThreadPool): no pool to size.
        in_memory = make_url(url).database in (None, "", ":memory:")
        pool = {} if in_memory else {"pool_size": 20, "max_overflow": 20}
        engine = create_engine(
            url, connect_args={"check_same_thread": False}, hide_parameters=True, **pool
        )
        _configure_sqlite(engine, background_checkpoints)
        return engine
    # No pre-ping: it costs a round trip per checkout; Database retries on a dead connection.
    if make_url(url).get_driver_name() != "psycopg":
        # hide_parameters: an error's text never carries a statement's values (sealed tokens).
        return create_engine(url, pool_size=20, max_overflow=20, hide_parameters=True)
    # The driver in autocommit: we send BEGIN ourselves (_configure_psycopg). psycopg prepares
    # nothing itself: the hot statements are prepared by pgwire, and psycopg, holding any of
    # its own, answers every ROLLBACK with DEALLOCATE ALL, which would take ours with them.
    engine = create_engine(
        url,
        pool_size=20,
        max_overflow=20,
        isolation_level="AUTOCOMMIT",
        hide_parameters=True,
        connect_args={"prepare_threshold": None},
    )
    _configure_psycopg(engine)
    return engine


_BEGIN_PENDING = "notify_server.begin_pending"


def _configure_psycopg(engine: Engine) -> None:
    """BEGIN sent by us, in the same round trip as the transaction's first statement.

    Left to itself psycopg sends BEGIN alone and waits for its answer: a round trip per
    write transaction. So the driver runs in autocommit, and a transaction SQLAlchemy begins
    only marks BEGIN as owed; the first statement sends it: a Prepared one in the same
    round trip, any other just before it. Reads (`autocommit_read`) owe none.
    """

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        if not connection.get_execution_options().get("autocommit_read"):
            connection.info[_BEGIN_PENDING] = True

    @event.listens_for(engine, "before_cursor_execute")
    def before_cursor_execute(connection: Connection, cursor: Any, *_: Any) -> None:
        if connection.info.pop(_BEGIN_PENDING, False):
            cursor.execute("BEGIN")

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def on_end(connection: Connection) -> None:
        if not connection.invalidated:  # (.info of an invalidated one would reconnect)
            connection.info.pop(_BEGIN_PENDING, None)  # a transaction that sent nothing

    @event.listens_for(engine.pool, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info.pop(_BEGIN_PENDING, None)


BUSY_TIMEOUT_MS = 10000
# The WAL file is cut back to this once it grows past it (Checkpointer, journal_size_limit).
WAL_TRUNCATE_BYTES = 16 * 1024 * 1024
# How long a RESTART checkpoint may hold writers back waiting for readers to move on.
RESTART_WAIT_MS = 200


def _configure_sqlite(engine: Engine, background_checkpoints: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL + synchronous=NORMAL: a committed write survives the process being killed;
        # only an OS crash can lose the last transactions.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Whenever the log restarts, a file grown past this is cut back to it.
        cursor.execute(f"PRAGMA journal_size_limit={WAL_TRUNCATE_BYTES}")
        if background_checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A writer takes the database lock up front, so two processes never deadlock
        # upgrading a read lock; readers stay deferred and run beside it.
        write = connection.get_execution_options().get("write")
        driver_connection(connection).execute("BEGIN IMMEDIATE" if write else "BEGIN")


class Checkpointer:
    """Checkpoints SQLite's WAL from a thread of its own, and keeps the file bounded.

    Left automatic, the checkpoint (and its fsync) runs inside the commit that crosses the
    threshold, on the event loop, stalling every request in flight: we measured stalls up to
    64 ms. sqlite3 releases the GIL while it writes, so here it costs the loop nothing.

    A PASSIVE checkpoint never waits, so the log never restarts while something always holds
    it: readers (a large fan-out delivered under load: 176 MB for one 10,000-target
    notification, tests/test_wal.py), or writes, which append to the log while the checkpoint
    copies it, so that it has never quite reached the end. Past `truncate_bytes` a RESTART
    checkpoint follows the PASSIVE one: it waits, at most RESTART_WAIT_MS, for the readers to
    move on to the newest snapshot, so that the next writer starts the log again from its
    beginning; that commit cuts the file back to `truncate_bytes` (journal_size_limit).
    Writers wait meanwhile, so it comes after the PASSIVE pass has copied the bulk, and gives
    up (to try again a moment later) rather than stall them longer.

    RESTART, not TRUNCATE, which also empties the file: under bench/http_bench.py's create
    load (a RESTART every ~0.5 s) writers then waited 40% less in all, create's p99 fell from
    39-41 to 32-33 ms, and the server idled 2-3% of the time instead of 4%; the file's
    largest size was the same, 30-35 MB.
    """

    # Every 5 s: each checkpoint is a stall of the writer's disk; fewer is better (p99 measured
    # 54.6 ms at 1 s, 47.9 ms at 5 s under bench/http_bench.py's create load). The file's size
    # is looked at more often: a stat costs nothing.
    def __init__(
        self,
        engine: Engine,
        interval: float = 5.0,
        truncate_bytes: int = WAL_TRUNCATE_BYTES,
        poll: float = 0.5,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._truncate_bytes = truncate_bytes
        self._poll = poll
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._wal: str | None = None

    def start(self) -> None:
        if self._engine.dialect.name == "sqlite":
            self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join()
            self._checkpoint()

    def _run(self) -> None:
        self._locate()
        last = time.monotonic()
        while not self._stopping.wait(self._poll):
            if (
                time.monotonic() - last >= self._interval
                or self._wal_bytes() > self._truncate_bytes
            ):
                self._checkpoint()
                last = time.monotonic()

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self._wal).st_size if self._wal else 0
        except OSError:
            return 0

    def _locate(self) -> None:
        try:
            with self._engine.connect() as connection:
                main = driver_connection(connection).execute("PRAGMA database_list").fetchone()
            # "" for an in-memory database: no file, nothing to bound.
            self._wal = f"{main[2]}-wal" if main[2] else ""
        except Exception:
            log.exception("cannot find the WAL file; its size is looked at after a checkpoint")

    def _checkpoint(self) -> None:
        if self._wal is None:
            self._locate()
        try:
            with self._engine.connect() as connection:
                driver = driver_connection(connection)
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if self._wal_bytes() > self._truncate_bytes:
                    driver.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                    try:
                        busy = driver.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
                    finally:
                        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                    if busy:
                        log.debug(
                            "WAL of %d bytes not restarted yet: readers still in it",
                            self._wal_bytes(),
                        )
        except Exception:
            log.exception("WAL checkpoint failed; retrying")


Operation = Callable[[Connection], Result]

# Threads that read (each holds a pooled connection while it runs) and, on PostgreSQL, that
# write; SQLite has one writer thread, as the database has one writer at a time anyway.
READ_THREADS = 8
WRITE_THREADS = 8


class Threads:
    """A few threads that run calls for the event loop, cheaply.

    `loop.run_in_executor` costs ~30 µs of CPU per call (a future chained to a future, a
    wake-up of the loop per result); here results that finish while the loop is busy are
    handed over together, in one wake-up: ~7 µs per call (measured with 32 callers).
    """

    def __init__(self, count: int, name: str) -> None:
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None]
        self._calls = deque()
        self._ready = threading.Condition()
        self._done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._done_lock = threading.Lock()
        self._handover_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., Result], *args: Any) -> "asyncio.Future[Result]":
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        with self._ready:
            self._calls.append((function, args, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        with self._ready:
            self._calls.extend([None] * len(self._threads))
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._calls:
                    self._ready.wait()
                call = self._calls.popleft()
            if call is None:
                return
            function, args, future = call
            try:
                outcome: tuple[asyncio.Future[Any], Any, BaseException | None]
                outcome = (future, function(*args), None)
            except BaseException as error:  # handed to the awaiting caller
                outcome = (future, None, error)
            with self._done_lock:
                self._done.append(outcome)
                if self._handover_pending:
                    continue
                self._handover_pending = True
            try:
                future.get_loop().call_soon_threadsafe(self._hand_over)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._done_lock:
                    self._done.clear()
                    self._handover_pending = False

    def _hand_over(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
            self._handover_pending = False
        for future, result, error in done:
            if future.done():  # its request was cancelled (the client went away)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class Database:
    """The event loop's only way to the database: every statement runs on a thread of ours.

    A request awaits its statements; the loop meanwhile serves everything else, so a database
    that is slow, locked or gone stalls only the requests that need it (`/healthz`, metrics,
    401s and 404s of malformed SIDs keep flowing).

    On SQLite all writes go through one thread that commits together whatever arrived while it
    was busy (group commit): a commit is the costly part of a small write. Each write runs
    under a SAVEPOINT of its own, in arrival order: one that fails is rolled back alone, the
    others still commit. Every caller is answered only after the commit, so a 201 still means
    stored. On PostgreSQL each write is its own transaction on a pool of threads (batches
    would hold advisory locks across requests and could deadlock).

    Reads run in autocommit (one statement sees one snapshot), so a fetch is one round trip:
    no pre-ping, no BEGIN, no ROLLBACK. A connection found dead is dropped and the operation
    run once more on a fresh one (for a write only when the failure came before COMMIT).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._read_engine = (
            engine if self._sqlite else engine.execution_options(autocommit_read=True)
        )
        self._readers = Threads(READ_THREADS, "db-read")
        self._writers = Threads(1 if self._sqlite else WRITE_THREADS, "db-write")
        self._pending: list[tuple[Operation[Any], asyncio.Future[Any]]] = []
        self._committing = False

    async def read(self, operation: Operation[Result]) -> Result:
        return await self._readers.run(self._read, operation)

    async def transaction(self, operation: Operation[Result]) -> Result:
        """`operation` alone in a write transaction, committed before this returns."""
        return await self._writers.run(self._transaction, operation)

    async def write(self, operation: Operation[Result]) -> Result:
        """A request's write: committed together with its neighbours' on SQLite."""
        if not self._sqlite:
            return await self.transaction(operation)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        if not self._committing:
            self._commit_pending()
        return await future

    def close(self) -> None:
        self._readers.close()
        self._writers.close()

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._committing = True
        self._writers.run(_commit_batch, self, batch)  # it answers its callers itself

    def _batch_done(
        self, outcomes: "list[tuple[asyncio.Future[Any], Any, BaseException | None]]"
    ) -> None:
        """On the loop, in one callback: every caller answered, then the next batch started
        (what arrived meanwhile, all together). One callback, so no loop can see its callers
        answered yet the writer still marked busy."""
        for future, result, error in outcomes:
            if future.done():  # its request was cancelled (the client went away)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        self._committing = False
        if self._pending:
            self._commit_pending()

    def _read(self, operation: Operation[Result]) -> Result:
        for attempt in (1, 2):
            try:
                with self._read_engine.connect() as connection:
                    return operation(connection)
            except Exception as error:
                if attempt == 2 or not self._is_disconnect(error):
                    raise
                log.warning("database connection lost; retrying once on a new one")
        raise AssertionError("unreachable")

    def _transaction(self, operation: Operation[Result]) -> Result:
        for attempt in (1, 2):
            committing = False
            try:
                with self.engine.connect() as connection:
                    connection = connection.execution_options(write=True)
                    with connection.begin() as outer:
                        result = operation(connection)
                        committing = True
                        flush_deferred(connection)
                        outer.commit()
                    return result
            except Exception as error:
                if committing or attempt == 2 or not self._is_disconnect(error):
                    raise
                log.warning("database connection lost; retrying once on a new one")
        raise AssertionError("unreachable")

    def _is_disconnect(self, error: BaseException) -> bool:
        if isinstance(error, DBAPIError):
            return bool(error.connection_invalidated)
        dialect = self.engine.dialect
        return isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(
            error, None, None
        )


def _commit_batch(
    database: Database, batch: list[tuple[Operation[Any], "asyncio.Future[Any]"]]
) -> None:
    """On the writer thread: one transaction for the batch, then every caller answered."""
    loop = batch[0][1].get_loop()
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    try:
        with transaction(database.engine, write=True) as connection:
            if len(batch) == 1:  # alone, its failure may roll back the whole transaction
                operation, future = batch[0]
                outcomes = [(future, operation(connection), None)]
            else:
                outcomes = _run_each_in_a_savepoint(connection, batch)
    except Exception as error:  # the lone operation, or the commit, failed: none stored
        outcomes = [(future, None, error) for _, future in batch]
    loop.call_soon_threadsafe(database._batch_done, outcomes)


def _run_each_in_a_savepoint(
    connection: Connection,
    batch: list[tuple[Operation[Any], "asyncio.Future[Any]"]],
) -> list[tuple["asyncio.Future[Any]", Any, BaseException | None]]:
    driver = driver_connection(connection)
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for operation, future in batch:
        driver.execute("SAVEPOINT operation")
        try:
            result = operation(connection)
            flush_deferred(connection)  # inside its savepoint: its failure is its own
        except Exception as error:
            connection.info.pop(_DEFERRED, None)
            driver.execute("ROLLBACK TO SAVEPOINT operation")
            outcomes.append((future, None, error))
        else:
            outcomes.append((future, result, None))
        driver.execute("RELEASE SAVEPOINT operation")
    return outcomes


_DEFERRED = "notify_server.deferred"


def defer(connection: Connection, statement: "Prepared", rows: Sequence[Mapping[str, Any]]) -> None:
    """Run `statement` for `rows` at commit, sent together with the COMMIT.

    For a transaction's last writes, whose results nobody reads: on PostgreSQL they and the
    COMMIT go together, one round trip. A failure among them fails the commit.
    """
    if rows:
        connection.info.setdefault(_DEFERRED, []).append((statement, rows))


def flush_deferred(connection: Connection) -> None:
    deferred = connection.info.pop(_DEFERRED, None)
    if not deferred:
        return
    if connection.dialect.name != "postgresql":
        for statement, rows in deferred:
            statement.execute_many(connection, rows)
        return
    # The statements and the COMMIT: one round trip.
    rows = [(statement, row) for statement, statement_rows in deferred for row in statement_rows]
    send_together(connection, [*rows, (COMMIT, _NO_PARAMS)])


def send_together(
    conn: Connection, batch: Sequence[tuple["Prepared", Mapping[str, Any]]]
) -> list[Any]:
    """Each statement's cursor, the statements run in order: in one round trip on
    PostgreSQL (with the BEGIN the transaction owes). The first failure is raised."""
    if conn.dialect.name != "postgresql":
        return [statement.execute(conn, params) for statement, params in batch]
    try:
        return _run_on_libpq(conn, [(s._on_libpq(conn), params) for s, params in batch])
    except conn.dialect.loaded_dbapi.Error as error:
        raise _as_sqlalchemy_error(conn, error) from error


def _run_on_libpq(
    conn: Connection, batch: list[tuple[pgwire.Statement, Mapping[str, Any]]]
) -> list[pgwire.Rows]:
    owed = conn.info.pop(_BEGIN_PENDING, False)
    if owed:
        batch = [(_BEGIN._on_libpq(conn), _NO_PARAMS), *batch]
    results = pgwire.run(driver_connection(conn), conn.info, batch)
    return results[1:] if owed else results


def driver_connection(connection: Connection) -> Any:
    return connection.connection.driver_connection


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One write (or read) transaction outside the server's Database (the CLI, the
    importer, tests): commits on success, rolls back on any error."""
    with engine.connect() as connection:
        if write:
            connection = connection.execution_options(write=True)
        with connection.begin():
            yield connection
            flush_deferred(connection)


# How SQLAlchemy stores a DateTime in SQLite; Prepared statements write the same text.
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


class Prepared:
    """A Core statement compiled once per dialect and run straight on the driver's connection.

    On the hot paths SQLAlchemy's execution layer (context, result and row objects) cost more
    than the queries themselves (bench/README.md), and on PostgreSQL so did psycopg's cursor:
    there the statement runs on libpq itself (`pgwire`), prepared on each connection. The SQL
    is still written as Core, so it stays dialect-neutral; what comes back is a cursor of the
    driver's rows (tuples in the order of the statement's columns; on SQLite, dates as the
    text SQLAlchemy stores).
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}
        self._libpq: pgwire.Statement | None = None

    def _for(self, dialect: Dialect) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            sql = cast(SQLCompiler, self.statement.compile(dialect=dialect))
            positional = dialect.paramstyle in ("qmark", "numeric", "format")
            names = tuple(sql.positiontup or ()) if positional else None
            # Parameters the compiler added with a value of its own (SQLite's OFFSET -1).
            fixed = {name: bind.value for name, bind in sql.binds.items() if not bind.required}
            compiled = self._compiled[dialect.name] = (sql.string, names, fixed)
        return compiled

    def _on_libpq(self, conn: Connection) -> pgwire.Statement:
        if self._libpq is None:
            sql, _, fixed = self._for(conn.dialect)
            self._libpq = pgwire.statement_from_pyformat(sql, fixed)
        return self._libpq

    def execute(self, conn: Connection, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """The statement's cursor (fetchone, fetchall, iteration, rowcount)."""
        if conn.dialect.name == "postgresql":
            return send_together(conn, [(self, params)])[0]
        sql, names, fixed = self._for(conn.dialect)
        if fixed:
            params = {**fixed, **params}
        values = [_sqlite_value(params[name]) for name in names or ()]
        try:
            return driver_connection(conn).execute(sql, values)
        except conn.dialect.loaded_dbapi.Error as error:
            raise _as_sqlalchemy_error(conn, error) from error

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if conn.dialect.name == "postgresql":
            send_together(conn, [(self, row) for row in rows])
            return
        sql, names, fixed = self._for(conn.dialect)
        if fixed:
            rows = [{**fixed, **row} for row in rows]
        values = [[_sqlite_value(row[n]) for n in names or ()] for row in rows]
        try:
            driver_connection(conn).cursor().executemany(sql, values)
        except conn.dialect.loaded_dbapi.Error as error:
            raise _as_sqlalchemy_error(conn, error) from error

    def one(self, conn: Connection, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """The first row, or None."""
        return self.execute(conn, params).fetchone()


_BEGIN = Prepared(text("BEGIN"))
COMMIT = Prepared(text("COMMIT"))


def _as_sqlalchemy_error(conn: Connection, error: Exception) -> Exception:
    """What conn.execute would have raised: one set of handlers maps both (a database that
    went away answers 503, a dead connection is retried by Database)."""
    lost = isinstance(error, pgwire.ConnectionLost)
    if lost:  # as SQLAlchemy does: the pool drops it rather than try to reset it
        conn.invalidate(error)
    return DBAPIError.instance(
        None,
        None,
        error,
        conn.dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )


def _sqlite_value(value: Any) -> Any:
    # isoformat(" ", "microseconds") writes SQLITE_DATETIME, several times faster.
    return value.isoformat(" ", "microseconds") if isinstance(value, datetime) else value


def stored_datetime(value: datetime | str) -> datetime:
    """A DateTime column's value as Prepared reads it: SQLite gives SQLAlchemy's text."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value
