"""What the Deliveries listing's indexes (migration 0006: (notification_id, status, id) and
(notification_id, binding_type, id)) cost the worker: every claim and every recorded answer
changes a row's status, so each update also moves an entry of the status index.

Per run: a fresh database with N pending outbox rows of one notification, then the worker's own
statements (delivery/repository.py: claim, then record_outcomes as sent) in batches of
--batch, one transaction each, until every row is sent. Runs alternate with and without the
two indexes; medians of --repeats.

    .venv/bin/python bench/outbox_index_cost.py
    .venv/bin/python bench/outbox_index_cost.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/<db>
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import DateTime, bindparam, text

from notify_server import migrate
from notify_server.accounts.operations import create_account
from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import make_engine, transaction
from notify_server.delivery import repository
from notify_server.delivery.channels import Outcome, Result
from notify_server.delivery.worker import outcome_of
from notify_server.models import Base

KEY = Fernet.generate_key().decode()
NEW_INDEXES = (
    "ix_deliveries_notification_id_status_id",
    "ix_deliveries_notification_id_binding_type_id",
)


def fresh(url: str, rows: int, with_indexes: bool) -> None:
    engine = make_engine(url)
    if url.startswith("postgresql"):
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    now = datetime(2026, 12, 3)
    numbers = (
        f"(SELECT generate_series(1, {rows}) AS n)"
        if url.startswith("postgresql")
        else f"(WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {rows})"
        " SELECT n FROM c)"
    )
    with transaction(engine, write=True) as conn:
        account = create_account(conn, None)
    settings = Settings(database_url=url, secret_key=KEY, worker_enabled=False)
    with TestClient(create_app(settings)) as client:
        auth = (account.sid, account.auth_token)
        service = client.post("/v1/Services", auth=auth).json()["sid"]
        created = client.post(
            f"/v1/Services/{service}/Notifications", data={"Identity": "nobody"}, auth=auth
        )
        assert created.status_code == 201, created.text
    with transaction(engine, write=True) as conn:
        if not with_indexes:
            for name in NEW_INDEXES:
                conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(
            text(
                "INSERT INTO deliveries (notification_id, service_id, binding_type, address,"
                " status, attempts, next_attempt_at, fair_key, expires_at, reported,"
                " date_created, date_updated)"
                " SELECT (SELECT id FROM notifications), (SELECT id FROM services), 'apn',"
                " 'token-' || n, 'pending', 0, :now, n, :later, true, :now, :now"
                f" FROM {numbers} AS numbers"
            ).bindparams(bindparam("now", type_=DateTime), bindparam("later", type_=DateTime)),
            {"now": now, "later": now + timedelta(days=30)},
        )
        conn.execute(text("ANALYZE"))
    engine.dispose()


def deliver_all(url: str, batch: int) -> tuple[float, int]:
    engine = make_engine(url)
    now = datetime(2026, 12, 3, 0, 0, 1)
    done = 0
    started = time.perf_counter()
    while True:
        with transaction(engine, write=True) as conn:
            claimed = repository.claim(
                conn, now=now, lease_until=now + timedelta(seconds=30), limit=batch
            )
        if not claimed:
            break
        outcomes = [
            outcome_of(row, Result(Outcome.SENT, f"apns-{row.id}", provider_status=200), now)
            for row in claimed
        ]
        with transaction(engine, write=True) as conn:
            repository.record_outcomes(conn, outcomes, [])
        done += len(claimed)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for with_indexes in order:
                url = (
                    args.database_url
                    or f"sqlite:///{Path(directory) / f'{repeat}-{with_indexes}.db'}"
                )
                fresh(url, args.rows, with_indexes)
                elapsed, done = deliver_all(url, args.batch)
                assert done == args.rows, done
                results[with_indexes].append(done / elapsed)
                label = "with" if with_indexes else "without"
                print(f"  {label:8} the indexes: {done / elapsed:9,.0f} rows/s", flush=True)
    without, with_ = statistics.median(results[False]), statistics.median(results[True])
    kind = (args.database_url or "sqlite").split(":")[0]
    print(
        f"{kind}: {args.rows:,} rows, claim + record in batches of {args.batch}: medians"
        f" without {without:,.0f} rows/s, with {with_:,.0f} rows/s ({with_ / without:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
