"""SQLite's WAL stays bounded while a large fan-out is delivered under concurrent reads.

PASSIVE checkpoints alone never reach the end of a WAL that readers always hold, so the file
only grew (237 MB for one 10,000-target notification). The test samples the -wal file's size
from the POST until every delivery is final, with readers listing bindings all along.
"""

import json
import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import insert, select, text

from notify_server import migrate
from notify_server.bindings.repository import binding_tags, bindings, digest
from notify_server.db import Checkpointer, make_engine
from notify_server.services.models import Service
from notify_server.wire import utcnow
from tests.servers import live_server

TARGETS = 10_000
WAL_BOUND = 64 * 1024 * 1024
READERS = 3
DEADLINE = 300.0


def seed(database_url: str, account_sid: str, service_sid: str) -> None:
    """TARGETS sms bindings tagged `all`, straight into the tables: the fan-out is what is
    measured here, and 10,000 create-binding calls would only make the test slow."""
    engine = make_engine(database_url)
    now = utcnow()
    try:
        with engine.begin() as conn:
            service_id = conn.execute(
                select(Service.id).where(Service.sid == service_sid)
            ).scalar_one()
            rows = [
                {
                    "sid": "BS" + uuid.uuid4().hex,
                    "account_sid": account_sid,
                    "service_id": service_id,
                    "identity": f"user-{n:05d}",
                    "binding_type": "sms",
                    "address": f"+1555{n:07d}",
                    "address_key": digest(f"user-{n:05d}", "sms", f"+1555{n:07d}"),
                    "endpoint": None,
                    "endpoint_key": None,
                    "credential_sid": None,
                    "notification_protocol_version": "3",
                    "tags": json.dumps(["all"]),
                    "date_created": now,
                    "date_updated": now,
                }
                for n in range(TARGETS)
            ]
            statement = insert(bindings).returning(bindings.c.id, sort_by_parameter_order=True)
            ids = [row.id for row in conn.execute(statement, rows)]
            conn.execute(
                insert(binding_tags),
                [{"binding_id": i, "tag": "all", "service_id": service_id} for i in ids],
            )
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        engine.dispose()


def open_deliveries(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')"
            return int(conn.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


def test_the_wal_stays_bounded_during_a_large_fan_out(tmp_path: Path) -> None:
    if os.environ.get("NOTIFY_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip("PostgreSQL has no WAL file of ours to bound")
    path = tmp_path / "wal.db"
    database_url = f"sqlite:///{path}"
    migrate.upgrade(database_url)
    account = ("AC" + uuid.uuid4().hex, uuid.uuid4().hex)
    env = {
        "NOTIFY_ACCOUNT_SID": account[0],
        "NOTIFY_AUTH_TOKEN": account[1],
        "NOTIFY_SECRET_KEY": Fernet.generate_key().decode(),
        "NOTIFY_ACCESS_LOG": "false",
    }
    wal = Path(f"{path}-wal")
    sizes: list[int] = []
    stop = threading.Event()
    reads = [0] * READERS
    failures: list[str] = []

    def sample() -> None:
        while not stop.is_set():
            sizes.append(wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.05)

    def read(base_url: str, service_sid: str, number: int) -> None:
        with httpx.Client(base_url=base_url, auth=account, timeout=30) as http:
            while not stop.is_set():
                response = http.get(
                    f"/v1/Services/{service_sid}/Bindings", params={"Tag": "all", "PageSize": 100}
                )
                if response.status_code != 200:
                    failures.append(response.text)
                reads[number] += 1

    with (
        live_server(database_url, env=env) as server,
        httpx.Client(base_url=server.base_url, auth=account, timeout=60) as http,
    ):
        service = http.post("/v1/Services", data={"FriendlyName": "wal"}).json()
        seed(database_url, account[0], service["sid"])
        threads = [threading.Thread(target=sample)] + [
            threading.Thread(target=read, args=(server.base_url, service["sid"], n))
            for n in range(READERS)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        try:
            posted = http.post(
                f"/v1/Services/{service['sid']}/Notifications",
                data={"Tag": "all", "Body": "to everyone"},
            )
            assert posted.status_code == 201, posted.text
            while open_deliveries(database_url) and time.monotonic() - started < DEADLINE:
                time.sleep(0.5)
            remaining = open_deliveries(database_url)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        seconds = time.monotonic() - started

    largest = max(sizes)
    print(
        f"\nWAL during a {TARGETS:,}-target fan-out ({seconds:.1f} s, {sum(reads):,} concurrent"
        f" list reads): largest {largest / 2**20:.1f} MB, last {sizes[-1] / 2**20:.1f} MB"
    )
    assert remaining == 0, f"{remaining} deliveries still open after {DEADLINE} s"
    assert failures == []
    assert min(reads) > 0  # the readers did read throughout
    assert largest < WAL_BOUND, f"the WAL reached {largest / 2**20:.1f} MB"


def test_the_wal_stays_bounded_while_one_writer_never_stops(tmp_path: Path) -> None:
    """Writes alone hold the log too: each appends while the PASSIVE pass copies, so the pass
    never quite reaches the end and the log never starts again (the file grew to 344 MB in
    one create-binding bench). The RESTART pass after it is what bounds the file."""
    if os.environ.get("NOTIFY_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip("PostgreSQL has no WAL file of ours to bound")
    path = tmp_path / "writes.db"
    engine = make_engine(f"sqlite:///{path}", background_checkpoints=True)
    limit = 256 * 1024
    checkpointer = Checkpointer(engine, interval=0.05, truncate_bytes=limit, poll=0.02)
    wal = Path(f"{path}-wal")
    written = 0
    sizes: list[int] = []
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE filler (id INTEGER PRIMARY KEY, data BLOB)"))
    checkpointer.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with engine.connect() as conn, conn.begin():
                # About 100 KB a transaction, every page new: the WAL grows at full speed.
                rows = [{"data": os.urandom(4000)} for _ in range(25)]
                conn.execute(text("INSERT INTO filler (data) VALUES (:data)"), rows)
            written += 25 * 4000
            sizes.append(wal.stat().st_size)
    finally:
        checkpointer.stop()
        engine.dispose()

    largest, bound = max(sizes), 32 * limit  # the limit, and what comes between two polls
    print(f"\nWAL under {written / 2**20:.0f} MB of writes: largest {largest / 2**20:.1f} MB")
    assert written > 4 * bound  # enough that an unbounded log would show
    assert largest < bound, f"the WAL reached {largest / 2**20:.1f} MB"
