"""A PostgreSQL that goes away: requests answer Twilio's 503 (never a 500) while it is
unreachable, and succeed again once it is back; a pooled connection the server closed is
replaced without the client seeing it. Through the hot paths' statements (db.Prepared, run on
libpq) as well as SQLAlchemy's."""

import asyncio
import time

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from notify_server.accounts.repository import accounts
from notify_server.db import Database, Prepared, defer, send_together
from notify_server.wire import new_sid
from tests.factories import make_account
from tests.servers import DatabaseProxy, live_server
from tests.test_group_commit import account_values, insert_account, terminate_backends

UNAVAILABLE = {
    "code": 20503,
    "message": "Service is unavailable, please retry the request",
    "more_info": "https://www.twilio.com/docs/errors/20503",
    "status": 503,
}
COUNT_ACCOUNTS = Prepared(select(func.count()).select_from(accounts))
BACKEND_PID = Prepared(select(func.pg_backend_pid()))


INSERT_ACCOUNT = insert_account()


@pytest.fixture
def postgresql(engine: Engine) -> Engine:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to lose")
    return engine


def test_a_database_gone_away_answers_503_then_recovers(
    postgresql: Engine, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    account = make_account(postgresql)
    url = make_url(database_url)
    proxy = DatabaseProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with (
            live_server(proxied) as server,
            httpx.Client(base_url=server.base_url, auth=account.auth, timeout=30) as client,
        ):
            service = client.post("/v1/Services", data={}).json()["sid"]
            bindings = f"/v1/Services/{service}/Bindings"
            form = {"Identity": "alice", "BindingType": "apn", "Address": "a" * 64}
            created = client.post(bindings, data=form)
            assert created.status_code == 201
            binding = f"{bindings}/{created.json()['sid']}"
            assert client.get(binding).status_code == 200

            proxy.cut()
            gone = [
                client.get(binding),
                client.get(bindings),
                client.post(bindings, data={**form, "Identity": "bob"}),
                client.delete(binding),
            ]
            assert [r.status_code for r in gone] == [503] * 4
            assert all(r.json() == UNAVAILABLE for r in gone)
            assert client.get("/healthz").status_code == 200

            proxy.restore()
            assert client.get(binding).json()["identity"] == "alice"
            again = client.post(bindings, data={**form, "Identity": "bob", "Address": "b" * 64})
            assert again.status_code == 201
            assert client.get(f"{bindings}/{again.json()['sid']}").status_code == 200
    finally:
        proxy.close()
    logged = capfd.readouterr().err
    assert "Traceback" not in logged
    assert "database error on GET /v1/Services" in logged


def backend_pid(conn) -> int:
    return BACKEND_PID.one(conn)[0]


def test_a_prepared_read_on_a_connection_the_server_closed_is_retried_once(
    postgresql: Engine,
) -> None:
    database = Database(postgresql)
    try:
        pids = {asyncio.run(database.read(backend_pid))}
        terminate_backends(postgresql, pids)
        time.sleep(0.1)
        for _ in range(5):  # every pooled connection may be the dead one
            assert asyncio.run(database.read(lambda conn: COUNT_ACCOUNTS.one(conn)[0])) >= 0
    finally:
        database.close()


def test_a_prepared_write_before_commit_is_retried_once(postgresql: Engine) -> None:
    database = Database(postgresql)
    sid = new_sid("AC")

    def write(conn):
        # A statement before the commit (as a create's locks and probe), then a deferred row.
        send_together(conn, [(COUNT_ACCOUNTS, {}), (BACKEND_PID, {})])
        defer(conn, INSERT_ACCOUNT, [account_values(sid)])
        return sid

    try:
        pids = {
            asyncio.run(database.transaction(lambda c: BACKEND_PID.one(c)[0])) for _ in range(3)
        }
        terminate_backends(postgresql, pids)
        time.sleep(0.1)
        assert asyncio.run(database.write(write)) == sid
        stored = asyncio.run(
            database.read(
                lambda conn: conn.execute(select(accounts.c.sid).where(accounts.c.sid == sid)).all()
            )
        )
        assert stored == [(sid,)]
    finally:
        database.close()


def test_a_prepared_statement_raises_what_sqlalchemy_would(engine: Engine) -> None:
    """A unique violation through Prepared is SQLAlchemy's IntegrityError on both databases,
    and the transaction it was in stores nothing."""
    database = Database(engine)
    kept, fresh = new_sid("AC"), new_sid("AC")

    def duplicate(conn):
        INSERT_ACCOUNT.execute(conn, account_values(fresh))
        INSERT_ACCOUNT.execute_many(conn, [account_values(kept)])

    try:
        asyncio.run(database.write(lambda conn: INSERT_ACCOUNT.execute(conn, account_values(kept))))
        with pytest.raises(IntegrityError):
            asyncio.run(database.write(duplicate))
        sids = asyncio.run(
            database.read(lambda conn: set(conn.execute(select(accounts.c.sid)).scalars()))
        )
        assert kept in sids and fresh not in sids
    finally:
        database.close()
