"""Delivery is fair across accounts: the order in which workers claim rows.

Each account is one flow of a start-time fair queue: its new rows take consecutive keys from
where the queue's head is when it posts, so another account's single target is claimed within
the next batch however many targets the first account queued, while each account's own
notifications go out in the order it posted them."""

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Table, select, update

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.db import transaction
from notify_server.delivery import repository
from notify_server.notifications.models import Delivery
from notify_server.wire import utcnow_precise
from tests.factories import Account, make_account, make_service

deliveries: Table = Delivery.__table__  # type: ignore[assignment]
BATCH = 10


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """No worker: the test claims, as a worker would, and looks at the order."""
    app = create_app(settings.model_copy(update={"worker_enabled": False}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def service_with(api: TestClient, account: Account, targets: int) -> str:
    service_sid = make_service(api, account)["sid"]
    for i in range(targets):
        response = api.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": f"user-{i}", "BindingType": "apn", "Address": f"token-{i}"},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
    return service_sid


def notify_all(api: TestClient, account: Account, service_sid: str) -> str:
    response = api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={"Tag": "all", "Body": "x"},
        auth=account.auth,
    )
    assert response.status_code == 201, response.text
    return response.json()["sid"]


def claim_batches(engine: Engine, count: int) -> list[list[str]]:
    """The notification SID of each row claimed, batch by batch."""
    batches = []
    for _ in range(count):
        now = utcnow_precise()
        with transaction(engine, write=True) as conn:
            rows = repository.claim(
                conn, now=now, lease_until=now + timedelta(minutes=5), limit=BATCH
            )
        batches.append([row.notification_sid for row in rows])
    return batches


def first_batch_with(batches: list[list[str]], sid: str) -> int:
    return next(i for i, batch in enumerate(batches) if sid in batch)


def test_another_accounts_single_target_is_not_queued_behind_a_fan_out(api, engine):
    big, small = make_account(engine), make_account(engine)
    big_sid = notify_all(api, big, service_with(api, big, 120))
    small_sid = notify_all(api, small, service_with(api, small, 1))

    batches = claim_batches(engine, 3)

    # First come, first served would have put it in the 13th batch.
    assert first_batch_with(batches, small_sid) == 0
    assert batches[0].count(big_sid) == BATCH - 1


def test_an_account_with_many_notifications_has_one_share(api, engine):
    big, small = make_account(engine), make_account(engine)
    service_sid = service_with(api, big, 30)
    first, second, third = (notify_all(api, big, service_sid) for _ in range(3))
    small_sid = notify_all(api, small, service_with(api, small, 1))

    batches = claim_batches(engine, 10)
    order = [sid for batch in batches for sid in batch]

    assert first_batch_with(batches, small_sid) == 0
    # The account's own notifications, in the order it posted them.
    big_order = [sid for sid in order if sid != small_sid]
    assert big_order == [first] * 30 + [second] * 30 + [third] * 30


def test_a_later_post_joins_at_the_queue_head(api, engine):
    # Account A's clock ran far ahead on an old fan-out that has long been delivered; then B
    # queues 50 and A one more: A's new row must not wait behind B's 50 (nor B's behind A's
    # stale clock).
    a, b = make_account(engine), make_account(engine)
    a_service = service_with(api, a, 40)
    notify_all(api, a, a_service)
    with engine.begin() as conn:
        conn.execute(update(deliveries).values(status="sent"))
    b_sid = notify_all(api, b, service_with(api, b, 50))
    a_single = api.post(
        f"/v1/Services/{a_service}/Notifications",
        data={"Identity": "user-0", "Body": "x"},
        auth=a.auth,
    ).json()["sid"]

    batches = claim_batches(engine, 6)

    assert first_batch_with(batches, a_single) == 0
    assert first_batch_with(batches, b_sid) == 0


def test_retries_and_first_attempts_share_each_batch(api, engine):
    failing, fresh = make_account(engine), make_account(engine)
    retry_sid = notify_all(api, failing, service_with(api, failing, 40))
    # A wave of retries, all due at once (a provider that was down for a moment).
    with engine.begin() as conn:
        conn.execute(update(deliveries).values(attempts=1))
    fresh_sid = notify_all(api, fresh, service_with(api, fresh, 20))

    batches = claim_batches(engine, 6)

    assert batches[0].count(retry_sid) == BATCH // 2
    assert batches[0].count(fresh_sid) == BATCH // 2
    # When one kind runs out, the other takes the whole batch.
    assert [b.count(fresh_sid) for b in batches] == [5, 5, 5, 5, 0, 0]
    assert batches[4] == batches[5] == [retry_sid] * BATCH


def test_dead_workers_rows_come_first_then_retries_and_first_attempts_share_the_rest(api, engine):
    dead, failing, fresh = make_account(engine), make_account(engine), make_account(engine)
    dead_sid = notify_all(api, dead, service_with(api, dead, 3))
    with engine.begin() as conn:  # its worker died: sending, the lease over
        conn.execute(
            update(deliveries).values(
                status="sending", attempts=1, next_attempt_at=utcnow_precise()
            )
        )
    retry_sid = notify_all(api, failing, service_with(api, failing, 2))
    with engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.status == "pending").values(attempts=1))
    fresh_sid = notify_all(api, fresh, service_with(api, fresh, 20))

    batches = claim_batches(engine, 3)

    # 3 expired; of the 7 left, the 2 retries (fewer than half) and 5 first attempts.
    assert Counter(batches[0]) == {dead_sid: 3, retry_sid: 2, fresh_sid: 5}
    assert batches[1] == [fresh_sid] * BATCH
    assert batches[2] == [fresh_sid] * 5


def test_every_row_is_claimed_exactly_once(api, engine):
    accounts = [make_account(engine) for _ in range(3)]
    sids = [
        notify_all(api, a, service_with(api, a, n))
        for a, n in zip(accounts, (25, 7, 1), strict=True)
    ]

    claimed = [sid for batch in claim_batches(engine, 5) for sid in batch]

    assert sorted(claimed) == sorted([sids[0]] * 25 + [sids[1]] * 7 + [sids[2]])
    with engine.connect() as conn:
        statuses = set(conn.execute(select(deliveries.c.status)).scalars())
    assert statuses == {"sending"}
