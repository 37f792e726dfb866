"""db.Prepared on PostgreSQL runs on libpq itself (notify_server.pgwire): values convert as
psycopg converts them, several statements go in one round trip, failures are psycopg's (as
SQLAlchemy wraps them), and the statements a connection prepared stay prepared."""

from datetime import datetime

import pytest
from sqlalchemy import Engine, bindparam, cast, literal, select, text
from sqlalchemy.exc import DataError, ProgrammingError
from sqlalchemy.types import Boolean, DateTime, Integer, String

from notify_server import pgwire
from notify_server.db import Prepared, send_together

ECHO = Prepared(
    select(
        cast(bindparam("text"), String),
        cast(bindparam("number"), Integer),
        cast(bindparam("moment"), DateTime),
        cast(bindparam("flag"), Boolean),
        cast(bindparam("missing"), String),
        literal("100%"),
    )
)
VALUES = {
    "text": "zoë / ü 🚀 '\"; --",
    "number": 2**31 - 1,
    "moment": datetime(2026, 12, 3, 14, 5, 6, 789000),
    "flag": True,
    "missing": None,
}
DIVIDE = Prepared(select(literal(1) / cast(bindparam("by"), Integer)))
PID = Prepared(select(text("pg_backend_pid()")))


@pytest.fixture
def postgresql(engine: Engine) -> Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("libpq is PostgreSQL's")
    return engine


def test_values_come_back_as_they_went(postgresql: Engine) -> None:
    with postgresql.connect() as conn:
        assert ECHO.one(conn, VALUES) == (*VALUES.values(), "100%")


def test_statements_sent_together_answer_in_order(postgresql: Engine) -> None:
    with postgresql.connect() as conn:
        results = send_together(conn, [(DIVIDE, {"by": 1}), (ECHO, VALUES), (DIVIDE, {"by": 1})])
        assert [r.fetchall() for r in results] == [[(1,)], [(*VALUES.values(), "100%")], [(1,)]]


def test_the_first_failure_is_raised_and_its_transaction_stores_nothing(
    postgresql: Engine,
) -> None:
    mark = Prepared(text("INSERT INTO marks VALUES (:n)"))
    with postgresql.connect() as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE marks (n int)")
        conn.commit()
        with pytest.raises(DataError, match="division by zero"):
            send_together(conn, [(mark, {"n": 1}), (DIVIDE, {"by": 0}), (mark, {"n": 2})])
        conn.rollback()
        assert conn.exec_driver_sql("SELECT n FROM marks").all() == []
        mark.execute(conn, {"n": 3})  # the connection is fine
        conn.commit()
        assert conn.exec_driver_sql("SELECT n FROM marks").all() == [(3,)]


def test_a_rollback_keeps_what_the_connection_prepared(postgresql: Engine) -> None:
    """psycopg's own prepared statements made it send DEALLOCATE ALL after any ROLLBACK,
    which took ours too ("prepared statement ns_1 does not exist" in the worker)."""
    with postgresql.connect() as conn:
        pid = PID.one(conn)[0]
        for _ in range(10):  # past psycopg's default prepare_threshold
            conn.execute(select(literal(1))).all()
        conn.rollback()
        assert PID.one(conn) == (pid,)


def test_a_statement_deallocated_behind_our_back_is_prepared_again(postgresql: Engine) -> None:
    with postgresql.connect() as conn:
        DIVIDE.one(conn, {"by": 1})
        conn.exec_driver_sql("DEALLOCATE ALL")
        with pytest.raises(ProgrammingError, match="does not exist"):
            DIVIDE.one(conn, {"by": 1})
        conn.rollback()  # that one transaction fails; the next prepares it afresh
        assert DIVIDE.one(conn, {"by": 1}) == (1,)


def test_a_batch_larger_than_the_sockets_buffers(postgresql: Engine) -> None:
    """8 MB each way: sending waits on a full socket while the server waits to send its
    answers, so answers are taken in meanwhile (as PQflush's documentation asks)."""
    big = {**VALUES, "text": "x" * 4096}
    with postgresql.connect() as conn:
        results = send_together(conn, [(ECHO, big)] * 2000)
        assert [r.fetchone()[0] for r in results] == ["x" * 4096] * 2000


PREPARED_AT = text("SELECT prepare_time FROM pg_prepared_statements WHERE name = :name")


def test_statements_are_prepared_afresh_after_a_while(
    postgresql: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached generic plan outlives the statistics it was made from (ANALYZE invalidates
    nothing): planned on a near-empty table, the create's probe read a whole service per
    create. So a connection re-prepares its statements every REPLAN_SECONDS."""
    with postgresql.connect() as conn:
        DIVIDE.one(conn, {"by": 1})
        name = {"name": DIVIDE._on_libpq(conn).name.decode()}
        first = conn.execute(PREPARED_AT, name).scalar_one()
        conn.rollback()
        DIVIDE.one(conn, {"by": 1})
        assert conn.execute(PREPARED_AT, name).scalar_one() == first  # within REPLAN_SECONDS
        conn.rollback()
        monkeypatch.setattr(pgwire, "REPLAN_SECONDS", 0.0)
        DIVIDE.one(conn, {"by": 1})
        assert conn.execute(PREPARED_AT, name).scalar_one() > first
