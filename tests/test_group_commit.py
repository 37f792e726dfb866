"""db.Database: statements run off the event loop; on SQLite, writes that arrive while one
commits share the next transaction, each under its own savepoint."""

import asyncio
import threading
import time

import pytest
from sqlalchemy import bindparam, create_engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from notify_server.accounts.repository import accounts
from notify_server.db import Database, Prepared, defer
from notify_server.wire import new_sid, utcnow


class Refused(Exception):
    pass


def account_values(sid: str) -> dict:
    now = utcnow()
    return {
        "sid": sid,
        "auth_token_hash": "0" * 64,
        "fair_clock": 0,
        "date_created": now,
        "date_updated": now,
    }


def insert_account() -> Prepared:
    return Prepared(insert(accounts).values({k: bindparam(k) for k in account_values("")}))


def add_account(sid: str):
    def operation(conn):
        conn.execute(insert(accounts).values(**account_values(sid)))
        return sid

    return operation


def add_account_then_fail(sid: str):
    def operation(conn):
        add_account(sid)(conn)
        raise Refused(sid)

    return operation


def count_accounts(conn) -> int:
    return conn.execute(select(func.count()).select_from(accounts)).scalar_one()


def stored_sids(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(accounts.c.sid)).scalars())


@pytest.fixture
def database(engine):
    database = Database(engine)
    yield database
    database.close()


def run_behind_a_busy_writer(database: Database, *operations):
    """Submit `operations` while the writer commits something else, so they form one batch
    (on SQLite); their results in order, exceptions returned."""
    release = threading.Event()

    def hold(conn):
        release.wait(5)

    async def submit():
        first = asyncio.ensure_future(database.write(hold))
        await asyncio.sleep(0.05)  # the writer is now inside `hold`
        rest = [asyncio.ensure_future(database.write(op)) for op in operations]
        await asyncio.sleep(0)
        release.set()
        await first
        return await asyncio.gather(*rest, return_exceptions=True)

    return asyncio.run(submit())


class TestWrites:
    def test_each_caller_gets_its_own_result_and_a_failure_undoes_only_itself(
        self, engine, database
    ):
        first, failing, last = new_sid("AC"), new_sid("AC"), new_sid("AC")
        results = run_behind_a_busy_writer(
            database, add_account(first), add_account_then_fail(failing), add_account(last)
        )
        assert results[0] == first
        assert isinstance(results[1], Refused)
        assert results[2] == last
        assert stored_sids(engine) == {first, last}

    def test_later_operations_see_earlier_ones_in_the_same_batch(self, engine, database):
        if engine.dialect.name != "sqlite":
            pytest.skip("PostgreSQL runs each write as its own transaction, side by side")
        sid = new_sid("AC")
        assert run_behind_a_busy_writer(database, add_account(sid), count_accounts) == [sid, 1]

    def test_a_lone_failing_operation_stores_nothing(self, engine, database):
        sid = new_sid("AC")
        with pytest.raises(Refused):
            asyncio.run(database.write(add_account_then_fail(sid)))
        assert stored_sids(engine) == set()

    def test_a_failure_after_a_prepared_statement_undoes_it(self, engine, database):
        # On PostgreSQL the transaction's BEGIN travels with its first statement: a Prepared
        # one here; without it, that statement would have committed on its own.
        sid = new_sid("AC")

        def operation(conn):
            insert_account().execute(conn, account_values(sid))
            raise Refused(sid)

        with pytest.raises(Refused):
            asyncio.run(database.transaction(operation))
        assert stored_sids(engine) == set()

    def test_the_event_loop_runs_while_the_database_works(self, database):
        def slow(conn):
            time.sleep(0.5)
            return count_accounts(conn)

        async def measure():
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.ensure_future(tick())
            await asyncio.gather(database.write(slow), database.read(slow))
            ticker.cancel()
            return ticks

        # Inline, the loop would not have ticked at all during the second.
        assert asyncio.run(measure()) >= 20


class TestDeferred:
    def test_deferred_rows_are_written_with_the_commit(self, engine, database):
        sid = new_sid("AC")
        statement = insert_account()

        def operation(conn):
            defer(conn, statement, [account_values(sid)])
            return count_accounts(conn)  # not yet written

        assert asyncio.run(database.write(operation)) == 0
        assert stored_sids(engine) == {sid}

    def test_a_failing_deferred_row_fails_the_whole_transaction(self, engine, database):
        kept, duplicate = new_sid("AC"), new_sid("AC")
        asyncio.run(database.write(add_account(kept)))
        statement = insert_account()

        def operation(conn):
            add_account(duplicate)(conn)
            defer(conn, statement, [account_values(kept)])  # already there: unique violation

        with pytest.raises(Exception) as raised:
            asyncio.run(database.write(operation))
        assert "unique" in str(raised.value).lower() or isinstance(raised.value, IntegrityError)
        assert stored_sids(engine) == {kept}


def terminate_backends(engine, pids) -> None:
    # From a connection of its own: one from the pool may be among those it kills.
    admin = create_engine(engine.url, poolclass=NullPool)
    with admin.connect() as conn:
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
    admin.dispose()


class TestLostConnections:
    def test_a_read_on_a_connection_the_server_closed_is_retried_once(self, engine, database):
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite has no server to lose")

        def backend_pid(conn):
            return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

        pid = asyncio.run(database.read(backend_pid))
        terminate_backends(engine, {pid})
        time.sleep(0.1)
        # Every pooled connection may be the dead one: each read still answers.
        for _ in range(5):
            assert asyncio.run(database.read(count_accounts)) == 0

    def test_a_write_before_commit_is_retried_once(self, engine, database):
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite has no server to lose")

        def backend_pid(conn):
            return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

        pids = {asyncio.run(database.transaction(backend_pid)) for _ in range(3)}
        terminate_backends(engine, pids)
        time.sleep(0.1)
        sid = new_sid("AC")
        assert asyncio.run(database.write(add_account(sid))) == sid
        assert stored_sids(engine) == {sid}
