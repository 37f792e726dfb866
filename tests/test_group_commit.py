"""db.GroupCommit: writes submitted in one event-loop turn share a transaction (on SQLite),
each under its own savepoint."""

import asyncio

import pytest
from sqlalchemy import func, insert, select

from notify_server.accounts.repository import accounts
from notify_server.db import GroupCommit
from notify_server.wire import new_sid, utcnow


class Refused(Exception):
    pass


def add_account(sid: str):
    def operation(conn):
        now = utcnow()
        conn.execute(
            insert(accounts).values(
                sid=sid, auth_token_hash="0" * 64, date_created=now, date_updated=now
            )
        )
        return sid

    return operation


def add_account_then_fail(sid: str):
    def operation(conn):
        add_account(sid)(conn)
        raise Refused(sid)

    return operation


def stored_sids(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(accounts.c.sid)).scalars())


class TestGroupCommit:
    def test_each_caller_gets_its_own_result_and_a_failure_undoes_only_itself(self, engine):
        group_commit = GroupCommit(engine)
        first, failing, last = new_sid("AC"), new_sid("AC"), new_sid("AC")

        async def submit_together():
            return await asyncio.gather(
                group_commit.run(add_account(first)),
                group_commit.run(add_account_then_fail(failing)),
                group_commit.run(add_account(last)),
                return_exceptions=True,
            )

        results = asyncio.run(submit_together())

        assert results[0] == first
        assert isinstance(results[1], Refused)
        assert results[2] == last
        assert stored_sids(engine) == {first, last}

    def test_later_operations_see_earlier_ones_in_the_same_batch(self, engine):
        group_commit = GroupCommit(engine)
        sid = new_sid("AC")

        def count_accounts(conn):
            return conn.execute(select(func.count()).select_from(accounts)).scalar_one()

        async def submit_together():
            return await asyncio.gather(
                group_commit.run(add_account(sid)), group_commit.run(count_accounts)
            )

        assert asyncio.run(submit_together()) == [sid, 1]

    def test_a_lone_failing_operation_stores_nothing(self, engine):
        group_commit = GroupCommit(engine)
        sid = new_sid("AC")
        with pytest.raises(Refused):
            asyncio.run(group_commit.run(add_account_then_fail(sid)))
        assert stored_sids(engine) == set()

    def test_batches_on_sqlite_only(self, engine):
        # PostgreSQL operations take advisory locks: batching them could deadlock.
        assert GroupCommit(engine)._batching == (engine.dialect.name == "sqlite")
