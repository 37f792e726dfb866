"""The notification listing, one notification's delivery summary and the filtered Deliveries
listing at scale (issue 11): one notification with 1,000,000 deliveries and a service with
100,000 notifications, each request timed through the real app (in-process ASGI, the worker
off), medians of --repeats.

    .venv/bin/python bench/listing_bench.py                       # a temporary SQLite file
    .venv/bin/python bench/listing_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/<db>

The PostgreSQL database is emptied first. Rows are written with one INSERT ... SELECT each, not
through the API: what is measured is the reading.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import DateTime, bindparam, text

from notify_server import migrate
from notify_server.accounts.operations import create_account
from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import make_engine, transaction
from notify_server.models import Base


def reset(url: str) -> None:
    if url.startswith("postgresql"):
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
    migrate.upgrade(url)


def numbers(url: str, count: int) -> str:
    """A subquery of n = 1..count."""
    if url.startswith("postgresql"):
        return f"(SELECT generate_series(1, {count}) AS n)"
    return (
        f"(WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {count})"
        " SELECT n FROM c)"
    )


def dates(*names: str) -> list:
    """Bound as the models' DateTime: SQLite compares the text SQLAlchemy writes."""
    return [bindparam(name, type_=DateTime) for name in names]


def padded_sid(url: str) -> str:
    if url.startswith("postgresql"):
        return "'NT' || lpad(n::text, 32, '0')"
    return "'NT' || substr('00000000000000000000000000000000' || n, -32)"


def populate(url: str, deliveries: int, notifications: int) -> tuple[str, str, str, str]:
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:
        account = create_account(conn, None)
    engine.dispose()
    settings = Settings(database_url=url, secret_key=KEY, worker_enabled=False)
    with TestClient(create_app(settings)) as client:
        auth = (account.sid, account.auth_token)
        service = client.post("/v1/Services", auth=auth).json()["sid"]
        big = client.post(
            f"/v1/Services/{service}/Notifications",
            data={"Identity": "nobody", "Title": "Big", "Body": "a million targets"},
            auth=auth,
        ).json()["sid"]
    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as conn:
        ids = conn.execute(
            text("SELECT n.id, n.service_id FROM notifications n WHERE n.sid = :sid"), {"sid": big}
        ).one()
        # 98 % sent, 1 % failed, 1 % pending; 90 % apn, 9 % fcm, 1 % sms.
        conn.execute(
            text(
                "INSERT INTO deliveries (notification_id, service_id, binding_sid, identity,"
                " binding_type, address, status, attempts, next_attempt_at, fair_key, expires_at,"
                " reported, date_created, date_updated)"
                " SELECT :nid, :sid, NULL, 'user-' || n,"
                " CASE WHEN n % 100 = 0 THEN 'sms' WHEN n % 10 = 0 THEN 'fcm' ELSE 'apn' END,"
                " 'token-' || n,"
                " CASE WHEN n % 100 = 1 THEN 'failed' WHEN n % 100 = 2 THEN 'pending'"
                " ELSE 'sent' END,"
                " 1, :later, n, :later, :reported, :now, :now"
                f" FROM {numbers(url, deliveries)} AS numbers"
            ).bindparams(*dates("later", "now")),
            {
                "nid": ids.id,
                "sid": ids.service_id,
                "later": datetime(2030, 1, 1),
                "now": datetime(2026, 12, 3),
                "reported": True,
            },
        )
        # Older notifications, one a minute going back.
        conn.execute(
            text(
                "INSERT INTO notifications (sid, account_sid, service_id, content,"
                " callback_sequence, date_created)"
                f" SELECT {padded_sid(url)}, :account, :sid, big.content, 0, :base"
                f" FROM {numbers(url, notifications)} AS numbers,"
                " (SELECT content FROM notifications WHERE id = :nid) AS big"
            ).bindparams(*dates("base")),
            {
                "account": account.sid,
                "sid": ids.service_id,
                "nid": ids.id,
                "base": datetime(2026, 1, 1),
            },
        )
        conn.execute(text("ANALYZE"))
    print(f"populated in {time.perf_counter() - started:.1f} s", flush=True)
    engine.dispose()
    return account.sid, account.auth_token, service, big


KEY = Fernet.generate_key().decode()


def timed(client: TestClient, auth: tuple[str, str], path: str, repeats: int) -> tuple[float, int]:
    samples = []
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path, auth=auth)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        size = len(response.content)
    return statistics.median(samples) * 1000, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url")
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.database_url or f"sqlite:///{Path(directory) / 'bench.db'}"
        reset(url)
        account_sid, token, service, big = populate(url, args.deliveries, args.notifications)
        auth = (account_sid, token)
        notifications = f"/v1/Services/{service}/Notifications"
        deliveries = f"{notifications}/{big}/Deliveries"
        middle = args.deliveries // 2
        cases = [
            ("Deliveries, first page (50)", deliveries),
            ("Deliveries, PageSize=1000", f"{deliveries}?PageSize=1000"),
            ("Deliveries, a page mid-way (token)", f"{deliveries}?PageToken=PT{middle}"),
            ("Deliveries, Status=failed (1 %)", f"{deliveries}?Status=failed"),
            (
                "Deliveries, Status=pending&BindingType=sms (none)",
                f"{deliveries}?Status=pending&BindingType=sms",
            ),  # fmt: skip
            ("Deliveries, BindingType=sms (1 %)", f"{deliveries}?BindingType=sms"),
            ("Notification + delivery_summary (1M rows)", f"{notifications}/{big}"),
            ("Notifications, first page (50)", notifications),
            (
                "Notifications, StartDate=EndDate=2026-01-01 (all old)",
                f"{notifications}?StartDate=2026-01-01&EndDate=2026-01-01",
            ),  # fmt: skip
            ("Notifications, EndDate=2025-12-31 (none)", f"{notifications}?EndDate=2025-12-31"),
        ]
        settings = Settings(database_url=url, secret_key=KEY, worker_enabled=False)
        print(f"{url.split(':')[0]}: {args.deliveries:,} deliveries in one notification,"
              f" {args.notifications:,} more notifications; median of {args.repeats}")  # fmt: skip
        with TestClient(create_app(settings)) as client:
            summary = client.get(f"{notifications}/{big}", auth=auth).json()["delivery_summary"]
            print(f"  (the big notification's delivery_summary: {summary})")
            for label, path in cases:
                median, size = timed(client, auth, path, args.repeats)
                print(f"  {label:55} {median:8.1f} ms  {size:>9,} bytes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
