"""Engine set-up and the one transaction boundary per request."""

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BigInteger, Connection, Engine, Integer, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

_NO_PARAMS: Mapping[str, Any] = {}
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
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine, background_checkpoints)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


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
        cursor.execute("PRAGMA busy_timeout=10000")
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
    """Checkpoints SQLite's WAL from a thread of its own.

    Left automatic, the checkpoint (and its fsync) runs inside the commit that crosses the
    threshold, on the event loop, stalling every request in flight: we measured stalls up to
    64 ms. sqlite3 releases the GIL while it writes, so here it costs the loop nothing.
    """

    # Every 5 s: each checkpoint is a stall of the writer's disk; fewer is better (p99 measured
    # 54.6 ms at 1 s, 47.9 ms at 5 s under bench/http_bench.py's create load).
    def __init__(self, engine: Engine, interval: float = 5.0) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        if self._engine.dialect.name == "sqlite":
            self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join()
            self._checkpoint()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            with self._engine.connect() as connection:
                driver_connection(connection).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:
            log.exception("WAL checkpoint failed; retrying")


Result = TypeVar("Result")


class GroupCommit:
    """Writes that arrive together share one transaction and one commit (on SQLite).

    A commit is the costly part of a small write (its WAL pages and their writeback). Each
    operation submitted during one turn of the event loop runs in the same transaction under a
    SAVEPOINT of its own, in arrival order: one that fails is rolled back alone, the others
    still commit. Every caller is answered only after the commit, so a 201 still means stored.
    Operations see each other's writes as if they had run one by one.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        # Only on SQLite, whose write transaction locks the whole database: there a batch can
        # never wait on a lock another batch holds. On PostgreSQL each operation takes advisory
        # locks, and two batches taking them in different orders would deadlock.
        self._batching = engine.dialect.name == "sqlite"

    async def run(self, operation: Callable[[Connection], Result]) -> Result:
        if not self._batching:
            with transaction(self._engine, write=True) as connection:
                return operation(connection)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._pending:
            # A millisecond's wait gathers the writes of every connection then in flight:
            # measured, it turns 0.91x of the bare endpoint's throughput into 1.03x.
            loop.call_later(0.001, self._commit_pending)
        self._pending.append((operation, future))
        return await future

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            with transaction(self._engine, write=True) as connection:
                if len(batch) == 1:  # alone, its failure may roll back the whole transaction
                    operation, future = batch[0]
                    outcomes.append((future, operation(connection), None))
                else:
                    outcomes = _run_each_in_a_savepoint(connection, batch)
        except Exception as error:  # the lone operation, or the commit, failed: none stored
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for future, result, outcome_error in outcomes:
            if future.done():  # its request was cancelled (the client went away)
                continue
            if outcome_error is None:
                future.set_result(result)
            else:
                future.set_exception(outcome_error)


def _run_each_in_a_savepoint(
    connection: Connection,
    batch: list[tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]],
) -> list[tuple["asyncio.Future[Any]", Any, BaseException | None]]:
    driver = driver_connection(connection)
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for operation, future in batch:
        driver.execute("SAVEPOINT operation")
        try:
            result = operation(connection)
        except Exception as error:
            driver.execute("ROLLBACK TO SAVEPOINT operation")
            outcomes.append((future, None, error))
        else:
            outcomes.append((future, result, None))
        driver.execute("RELEASE SAVEPOINT operation")
    return outcomes


def driver_connection(connection: Connection) -> Any:
    return connection.connection.driver_connection


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no transaction (one statement sees one snapshot)."""
    with engine.connect() as connection:
        yield connection


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """The request's single commit point: commits on success, rolls back on any error."""
    with engine.connect() as connection:
        if write:
            connection = connection.execution_options(write=True)
        with connection.begin():
            yield connection


# How SQLAlchemy stores a DateTime in SQLite; Prepared statements write the same text.
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


class Prepared:
    """A Core statement compiled once per dialect and run straight on the driver's connection.

    On the hot paths SQLAlchemy's execution layer (context, result and row objects) cost more
    than the queries themselves (bench/README.md). The SQL is still written as Core, so it
    stays dialect-neutral; what comes back is the driver's rows (tuples in the order of the
    statement's columns; on SQLite, dates as the text SQLAlchemy stores).
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            sql = cast(SQLCompiler, self.statement.compile(dialect=dialect))
            positional = dialect.paramstyle in ("qmark", "numeric", "format")
            names = tuple(sql.positiontup or ()) if positional else None
            compiled = self._compiled[dialect.name] = (sql.string, names)
        return compiled

    def execute(self, conn: Connection, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """The driver's cursor, executed."""
        sql, names = self._for(conn.dialect)
        if names is not None:  # SQLite: positional, dates as SQLAlchemy's text
            ordered = [_sqlite_value(params[name]) for name in names]
            return driver_connection(conn).execute(sql, ordered)
        return driver_connection(conn).execute(sql, params)

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        sql, names = self._for(conn.dialect)
        cursor = driver_connection(conn).cursor()
        if names is not None:
            cursor.executemany(sql, [[_sqlite_value(row[n]) for n in names] for row in rows])
        else:
            cursor.executemany(sql, rows)

    def one(self, conn: Connection, params: Mapping[str, Any] = _NO_PARAMS) -> Any:
        """The first row, or None."""
        return self.execute(conn, params).fetchone()


def _sqlite_value(value: Any) -> Any:
    # isoformat(" ", "microseconds") writes SQLITE_DATETIME, several times faster.
    return value.isoformat(" ", "microseconds") if isinstance(value, datetime) else value


def stored_datetime(value: datetime | str) -> datetime:
    """A DateTime column's value as Prepared reads it: SQLite gives SQLAlchemy's text."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value
