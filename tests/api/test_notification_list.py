"""Our extensions of the Notification resource (issue 11): GET /v1/Services/{IS}/Notifications
(newest first, StartDate/EndDate, keyset paging), GET …/Notifications/{NT} with its delivery
summary, and the Deliveries listing's Status and BindingType filters."""

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from notify_server.notifications.models import Delivery, Notification
from tests.errors import UNAUTHENTICATED, assert_invalid, assert_not_found, not_found
from tests.factories import Account, make_binding, make_service

BASE = "http://testserver"
UNKNOWN_NOTIFICATION = "NT" + "0" * 32
FINAL = ("sent", "failed")
# Rows a test puts back to pending or sending are not due before the test ends.
LATER = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
CREATE_KEYS = {
    "sid", "account_sid", "service_sid", "date_created", "identities", "tags", "segments",
    "priority", "ttl", "title", "body", "sound", "action", "data", "apn", "fcm", "gcm", "sms",
    "facebook_messenger", "alexa",
}  # fmt: skip


def notifications_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Notifications"


def notification_path(service_sid: str, sid: str) -> str:
    return f"{notifications_path(service_sid)}/{sid}"


def deliveries_path(service_sid: str, sid: str) -> str:
    return f"{notification_path(service_sid, sid)}/Deliveries"


def notify(client: TestClient, account: Account, service_sid: str, **form) -> dict:
    response = client.post(notifications_path(service_sid), data=form, auth=account.auth)
    assert response.status_code == 201, response.text
    return response.json()


def listed(client: TestClient, account: Account, path: str, **params) -> dict:
    # No params=: httpx would drop the query a meta URL already has.
    response = client.get(path, params=params or None, auth=account.auth)
    assert response.status_code == 200, response.text
    return response.json()


def set_date_created(engine: Engine, sid: str, when: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(update(Notification).where(Notification.sid == sid).values(date_created=when))


def walk(client: TestClient, account: Account, url: str, key: str, link: str) -> list[dict]:
    """Every page from `url` following `link` (next_page_url or previous_page_url)."""
    pages = []
    while url:
        response = client.get(url, auth=account.auth)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = pages[-1]["meta"][link]
    return pages


def wait_final(client: TestClient, account: Account, service_sid: str, sid: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        rows = listed(client, account, deliveries_path(service_sid, sid), PageSize=1000)
        if rows["deliveries"] and all(d["status"] in FINAL for d in rows["deliveries"]):
            return rows["deliveries"]
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account)["sid"]


class TestListNotifications:
    def test_newest_first_as_created(self, client, account, service_sid):
        make_binding(client, account, service_sid, Identity="alice")
        created = [
            notify(client, account, service_sid, Identity="alice", Body=f"n{i}") for i in range(3)
        ]
        page = listed(client, account, notifications_path(service_sid))
        assert set(page) == {"notifications", "meta"}
        # Each item is the 201's body, exactly.
        assert page["notifications"] == list(reversed(created))
        assert set(page["notifications"][0]) == CREATE_KEYS
        path = f"{BASE}{notifications_path(service_sid)}"
        assert page["meta"] == {
            "page": 0,
            "page_size": 50,
            "first_page_url": f"{path}?PageSize=50&Page=0",
            "previous_page_url": None,
            "url": f"{path}?PageSize=50&Page=0",
            "next_page_url": None,
            "key": "notifications",
        }

    def test_empty(self, client, account, service_sid):
        assert listed(client, account, notifications_path(service_sid))["notifications"] == []

    def test_paging_both_ways(self, client, account, service_sid):
        sids = [notify(client, account, service_sid, Tag="all")["sid"] for _ in range(5)]
        newest_first = list(reversed(sids))
        first = f"{notifications_path(service_sid)}?PageSize=2"
        forward = walk(client, account, first, "notifications", "next_page_url")
        assert [[n["sid"] for n in p["notifications"]] for p in forward] == [
            newest_first[0:2],
            newest_first[2:4],
            newest_first[4:5],
        ]
        assert [p["meta"]["page"] for p in forward] == [0, 1, 2]
        assert forward[0]["meta"]["previous_page_url"] is None
        backward = walk(
            client, account, forward[-1]["meta"]["previous_page_url"], "notifications",
            "previous_page_url",
        )  # fmt: skip
        assert [[n["sid"] for n in p["notifications"]] for p in backward] == [
            newest_first[2:4],
            newest_first[0:2],
        ]
        # The first page reached going back has no page before it, and its next is page 2.
        assert backward[-1]["meta"]["previous_page_url"] is None
        again = listed(client, account, backward[-1]["meta"]["next_page_url"])
        assert [n["sid"] for n in again["notifications"]] == newest_first[2:4]

    def test_a_notification_posted_meanwhile_does_not_shift_the_pages(
        self, client, account, service_sid
    ):
        sids = [notify(client, account, service_sid, Tag="all")["sid"] for _ in range(3)]
        first = listed(client, account, notifications_path(service_sid), PageSize=2)
        notify(client, account, service_sid, Tag="all")
        second = listed(client, account, first["meta"]["next_page_url"])
        assert [n["sid"] for n in second["notifications"]] == [sids[0]]

    @pytest.fixture
    def dated(self, client, account, engine, service_sid) -> dict[str, str]:
        moments = {
            "d1": datetime(2020, 1, 1, 10, 0, 0),
            "d2": datetime(2020, 1, 2, 0, 0, 0),
            "d3": datetime(2020, 1, 2, 23, 59, 59),
            "d4": datetime(2020, 1, 3, 0, 0, 0),
        }
        made = {}
        for name, when in moments.items():
            sid = notify(client, account, service_sid, Tag="all", Body=name)["sid"]
            set_date_created(engine, sid, when)
            made[name] = sid
        return made

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({}, ["d4", "d3", "d2", "d1"]),
            ({"StartDate": "2020-01-02"}, ["d4", "d3", "d2"]),
            ({"EndDate": "2020-01-02"}, ["d3", "d2", "d1"]),
            ({"StartDate": "2020-01-02", "EndDate": "2020-01-02"}, ["d3", "d2"]),
            ({"StartDate": "2020-01-01", "EndDate": "2020-01-03"}, ["d4", "d3", "d2", "d1"]),
            ({"StartDate": "2020-01-03", "EndDate": "2020-01-02"}, []),
            ({"StartDate": "2019-12-31"}, ["d4", "d3", "d2", "d1"]),
            ({"EndDate": "2019-12-31"}, []),
            ({"StartDate": "2020-01-04"}, []),
        ],
    )
    def test_date_range_is_inclusive(self, client, account, service_sid, dated, params, expected):
        page = listed(client, account, notifications_path(service_sid), **params)
        assert [n["sid"] for n in page["notifications"]] == [dated[name] for name in expected]

    @pytest.mark.parametrize("name", ["StartDate", "EndDate"])
    @pytest.mark.parametrize(
        "value",
        [
            "2020-13-01",
            "2020-02-30",
            "01/02/2020",
            "yesterday",
            "2020-1-2",
            "20200102",
            "1577836800",
            "2020-01-02T00:00:00",
            "2020-01-02T00:00:00Z",
            "",
        ],
    )
    def test_bad_date(self, client, account, service_sid, name, value):
        response = client.get(
            notifications_path(service_sid), params={name: value}, auth=account.auth
        )
        assert_invalid(response, name)

    @pytest.mark.parametrize(
        ("params", "name"),
        [
            ({"PageSize": "0"}, "PageSize"),
            ({"PageSize": "1001"}, "PageSize"),
            ({"PageSize": "x"}, "PageSize"),
            ({"Page": "-1"}, "Page"),
            ({"PageToken": "garbage"}, "PageToken"),
            ({"PageToken": "PT99999999999999999999"}, "PageToken"),
        ],
    )
    def test_bad_paging(self, client, account, service_sid, params, name):
        response = client.get(notifications_path(service_sid), params=params, auth=account.auth)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == 20001
        assert f"'{name}'" in response.json()["message"]

    def test_filters_are_kept_in_every_meta_url(self, client, account, service_sid, dated):
        first = f"{notifications_path(service_sid)}?EndDate=2020-01-03&StartDate=2020-01-01"
        forward = walk(client, account, f"{first}&PageSize=1", "notifications", "next_page_url")
        assert [p["notifications"][0]["sid"] for p in forward] == [
            dated[n] for n in ("d4", "d3", "d2", "d1")
        ]
        backward = walk(
            client, account, forward[-1]["meta"]["previous_page_url"], "notifications",
            "previous_page_url",
        )  # fmt: skip
        assert [p["notifications"][0]["sid"] for p in backward] == [
            dated[n] for n in ("d2", "d3", "d4")
        ]
        for page in forward + backward:
            for link in ("first_page_url", "url", "next_page_url", "previous_page_url"):
                url = page["meta"][link]
                if url is None:
                    continue
                parts = urlsplit(url)
                assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
                    f"{BASE}{notifications_path(service_sid)}"
                )
                query = parse_qs(parts.query)
                # In the order the client sent them, as Twilio's fixtures show.
                assert list(query)[:3] == ["EndDate", "StartDate", "PageSize"], url
                assert query["StartDate"] == ["2020-01-01"]
                assert query["EndDate"] == ["2020-01-03"]

    def test_only_this_services(self, client, account, service_sid):
        mine = notify(client, account, service_sid, Tag="all")
        other_service = make_service(client, account)["sid"]
        notify(client, account, other_service, Tag="all")
        page = listed(client, account, notifications_path(service_sid))
        assert [n["sid"] for n in page["notifications"]] == [mine["sid"]]

    def test_service_of_another_account(self, client, account, other_account):
        foreign = make_service(client, other_account)["sid"]
        notify(client, other_account, foreign, Tag="all")
        response = client.get(notifications_path(foreign), auth=account.auth)
        assert_not_found(response, f"/Services/{foreign}/Notifications")

    def test_unknown_service(self, client, account):
        sid = "IS" + "0" * 32
        response = client.get(notifications_path(sid), auth=account.auth)
        assert_not_found(response, f"/Services/{sid}/Notifications")

    def test_no_credentials(self, client, service_sid):
        response = client.get(notifications_path(service_sid))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED

    def test_wrong_token(self, client, account, service_sid):
        response = client.get(notifications_path(service_sid), auth=(account.sid, "wrong"))
        assert response.status_code == 401

    def test_json_suffix(self, client, account, service_sid):
        sid = notify(client, account, service_sid, Tag="all")["sid"]
        page = listed(client, account, f"{notifications_path(service_sid)}.json")
        assert [n["sid"] for n in page["notifications"]] == [sid]


class TestFetchNotification:
    def test_the_created_body_and_its_delivery_summary(self, client, account, service_sid):
        make_binding(client, account, service_sid, Identity="alice", Address="a1")
        make_binding(client, account, service_sid, Identity="bob", Address="b1")
        make_binding(
            client, account, service_sid, Identity="carol", BindingType="alexa", Address="x"
        )
        created = notify(client, account, service_sid, Tag="all", Title="Hi", Body="there")
        # Delivered by the app's own worker through the log channel; alexa is retired.
        wait_final(client, account, service_sid, created["sid"])
        path = notification_path(service_sid, created["sid"])
        response = client.get(path, auth=account.auth)
        assert response.status_code == 200, response.text
        assert response.json() == {
            **created,
            "delivery_summary": {"pending": 0, "sending": 0, "sent": 2, "failed": 1},
            "links": {"deliveries": f"{BASE}{path}/Deliveries"},
        }
        assert listed(client, account, f"{path}/Deliveries")["deliveries"]

    def test_counts_every_status(self, client, account, engine, service_sid):
        for i in range(4):
            make_binding(client, account, service_sid, Identity=f"u{i}", Address=f"t{i}")
        created = notify(client, account, service_sid, Tag="all")
        rows = wait_final(client, account, service_sid, created["sid"])
        assert len(rows) == 4
        ids = sorted_ids(engine, created["sid"])
        with engine.begin() as conn:  # as workers mid-way leave them; not due for a day
            statuses = ("pending", "sending", "sending", "failed")
            for delivery_id, status in zip(ids, statuses, strict=True):
                conn.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id)
                    .values(status=status, next_attempt_at=LATER)
                )
        body = listed(client, account, notification_path(service_sid, created["sid"]))
        assert body["delivery_summary"] == {"pending": 1, "sending": 2, "sent": 0, "failed": 1}

    def test_a_notification_without_targets(self, client, account, service_sid):
        created = notify(client, account, service_sid, Identity="nobody")
        body = listed(client, account, notification_path(service_sid, created["sid"]))
        assert body["delivery_summary"] == {"pending": 0, "sending": 0, "sent": 0, "failed": 0}

    def test_upper_case_sid(self, client, account, service_sid):
        created = notify(client, account, service_sid, Tag="all")
        sid = "NT" + created["sid"][2:].upper()
        assert listed(client, account, notification_path(service_sid, sid))["sid"] == created["sid"]

    def test_unknown(self, client, account, service_sid):
        path = notification_path(service_sid, UNKNOWN_NOTIFICATION)
        assert_not_found(client.get(path, auth=account.auth), path[3:])

    def test_of_another_service(self, client, account, service_sid):
        created = notify(client, account, service_sid, Tag="all")
        other = make_service(client, account)["sid"]
        path = notification_path(other, created["sid"])
        assert_not_found(client.get(path, auth=account.auth), path[3:])

    def test_of_another_account(self, client, account, other_account):
        foreign = make_service(client, other_account)["sid"]
        created = notify(client, other_account, foreign, Tag="all")
        path = notification_path(foreign, created["sid"])
        assert_not_found(client.get(path, auth=account.auth), path[3:])
        # Nor through the caller's own service.
        mine = make_service(client, account)["sid"]
        path = notification_path(mine, created["sid"])
        assert_not_found(client.get(path, auth=account.auth), path[3:])

    @pytest.mark.parametrize("sid", ["NT123", "NTzz" + "0" * 30, "BS" + "0" * 32])
    def test_malformed_sid_even_without_credentials(self, client, service_sid, sid):
        path = notification_path(service_sid, sid)
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == not_found(path[3:])

    def test_no_credentials(self, client, account, service_sid):
        created = notify(client, account, service_sid, Tag="all")
        response = client.get(notification_path(service_sid, created["sid"]))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED

    def test_wrong_method(self, client, account, service_sid):
        created = notify(client, account, service_sid, Tag="all")
        response = client.delete(notification_path(service_sid, created["sid"]), auth=account.auth)
        assert response.status_code == 405
        assert response.json()["code"] == 20004


def sorted_ids(engine: Engine, notification_sid: str) -> list[int]:
    with engine.connect() as conn:
        notification_id = (
            conn.execute(
                Notification.__table__.select().where(Notification.sid == notification_sid)
            )
            .one()
            .id
        )
        return sorted(
            conn.scalars(
                Delivery.__table__.select()
                .with_only_columns(Delivery.id)
                .where(Delivery.notification_id == notification_id)
            )
        )


class TestListDeliveriesFilters:
    @pytest.fixture
    def mixed(self, client, account, engine, service_sid) -> dict:
        """Six targets: apn a0..a2, fcm f0, f1, sms s0; delivered, then a0 and f1 marked
        failed and s0 pending (as a retry waiting)."""
        for i in range(3):
            make_binding(client, account, service_sid, Identity="u", Address=f"a{i}")
        for i in range(2):
            make_binding(
                client, account, service_sid, Identity="u", BindingType="fcm", Address=f"f{i}"
            )
        make_binding(
            client, account, service_sid, Identity="u", BindingType="sms", Address="+15550000001"
        )
        created = notify(client, account, service_sid, Identity="u", Body="hi")
        rows = wait_final(client, account, service_sid, created["sid"])
        by_address = {row["address"]: row for row in rows}
        assert len(by_address) == 6
        with engine.begin() as conn:
            marked = (("a0", "failed"), ("f1", "failed"), ("+15550000001", "pending"))
            for address, status in marked:
                conn.execute(
                    update(Delivery)
                    .where(Delivery.address == address)
                    .values(status=status, next_attempt_at=LATER)
                )
        return {"sid": created["sid"], "rows": by_address}

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({}, ["a0", "a1", "a2", "f0", "f1", "+15550000001"]),
            ({"Status": "failed"}, ["a0", "f1"]),
            ({"Status": "sent"}, ["a1", "a2", "f0"]),
            ({"Status": "pending"}, ["+15550000001"]),
            ({"Status": "sending"}, []),
            ({"BindingType": "apn"}, ["a0", "a1", "a2"]),
            ({"BindingType": "fcm"}, ["f0", "f1"]),
            ({"BindingType": "gcm"}, []),
            ({"BindingType": "apn", "Status": "sent"}, ["a1", "a2"]),
            ({"Status": "failed", "BindingType": "fcm"}, ["f1"]),
        ],
    )
    def test_filters(self, client, account, service_sid, mixed, params, expected):
        page = listed(client, account, deliveries_path(service_sid, mixed["sid"]), **params)
        assert [d["address"] for d in page["deliveries"]] == expected
        for delivery in page["deliveries"]:
            assert delivery["status"] == params.get("Status", delivery["status"])
            assert delivery["binding_type"] == params.get("BindingType", delivery["binding_type"])

    @pytest.mark.parametrize("name", ["Status", "BindingType"])
    @pytest.mark.parametrize("value", ["", "SENT", "unknown", "apn ", "all"])
    def test_bad_values(self, client, account, service_sid, mixed, name, value):
        response = client.get(
            deliveries_path(service_sid, mixed["sid"]), params={name: value}, auth=account.auth
        )
        assert_invalid(response, name)

    def test_paging_keeps_the_filters(self, client, account, service_sid, mixed):
        path = deliveries_path(service_sid, mixed["sid"])
        first = f"{path}?BindingType=apn&Status=sent&PageSize=1"
        forward = walk(client, account, first, "deliveries", "next_page_url")
        assert [p["deliveries"][0]["address"] for p in forward] == ["a1", "a2"]
        backward = walk(
            client, account, forward[-1]["meta"]["previous_page_url"], "deliveries",
            "previous_page_url",
        )  # fmt: skip
        assert [p["deliveries"][0]["address"] for p in backward] == ["a1"]
        for page in forward + backward:
            for link in ("first_page_url", "url", "next_page_url", "previous_page_url"):
                url = page["meta"][link]
                if url is None:
                    continue
                query = parse_qs(urlsplit(url).query)
                assert list(query)[:3] == ["BindingType", "Status", "PageSize"], url
                assert (query["BindingType"], query["Status"]) == (["apn"], ["sent"])

    def test_filters_of_another_accounts_notification(self, client, account, other_account):
        foreign = make_service(client, other_account)["sid"]
        created = notify(client, other_account, foreign, Tag="all")
        path = deliveries_path(foreign, created["sid"])
        response = client.get(path, params={"Status": "sent"}, auth=account.auth)
        assert_not_found(response, path[3:])
