"""GET /v1/Services/{IS}/Bindings: the envelope, filters and keyset paging."""

import re
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from notify_server.bindings.models import Binding
from tests.errors import UNAUTHENTICATED, assert_invalid, not_found, twilio_error
from tests.factories import Account, make_binding, make_service

BASE = "http://testserver"
UNKNOWN_SERVICE = "IS" + "0" * 32


def bindings_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Bindings"


def relative(url: str) -> str:
    """A meta URL as TestClient takes it: scheme and host off, the rest verbatim."""
    assert url.startswith(f"{BASE}/v1/"), url
    return url[len(BASE) :]


def get_list(client: TestClient, account: Account, service_sid: str, **params):
    return client.get(bindings_path(service_sid), params=params, auth=account.auth)


def listed(client: TestClient, account: Account, service_sid: str, **params) -> list[dict]:
    response = get_list(client, account, service_sid, PageSize=1000, **params)
    assert response.status_code == 200, response.text
    return response.json()["bindings"]


def sids(bindings: list[dict]) -> list[str]:
    return [b["sid"] for b in bindings]


def make_bindings(client: TestClient, account: Account, service_sid: str, count: int) -> list:
    return [
        make_binding(client, account, service_sid, Identity=f"user-{i}", Address=f"addr-{i}")
        for i in range(count)
    ]


def set_date_created(engine: Engine, sid: str, when: datetime) -> None:
    table = Binding.__table__
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.sid == sid).values(date_created=when))


def walk_forward(client: TestClient, account: Account, first_url: str) -> list[dict]:
    """Every page from `first_url`, following meta.next_page_url verbatim."""
    pages = []
    url: str | None = first_url
    while url:
        response = client.get(url, auth=account.auth)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        next_url = pages[-1]["meta"]["next_page_url"]
        url = relative(next_url) if next_url else None
        assert len(pages) < 100, "paging does not end"
    return pages


def walk_backward(client: TestClient, account: Account, last_page: dict) -> list[dict]:
    pages = [last_page]
    while pages[-1]["meta"]["previous_page_url"]:
        response = client.get(relative(pages[-1]["meta"]["previous_page_url"]), auth=account.auth)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        assert len(pages) < 100, "paging does not end"
    return pages


def meta_urls(page: dict) -> list[str]:
    meta = page["meta"]
    keys = ("first_page_url", "url", "next_page_url", "previous_page_url")
    return [meta[k] for k in keys if meta[k] is not None]


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account, FriendlyName="list")["sid"]


class TestListBindings:
    def test_empty_result_envelope(self, client, account, service_sid):
        response = get_list(client, account, service_sid)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        url = f"{BASE}{bindings_path(service_sid)}?PageSize=50&Page=0"
        assert response.json() == {
            "bindings": [],
            "meta": {
                "page": 0,
                "page_size": 50,
                "first_page_url": url,
                "previous_page_url": None,
                "url": url,
                "next_page_url": None,
                "key": "bindings",
            },
        }

    def test_bindings_are_listed_as_created_in_creation_order(self, client, account, service_sid):
        created = [
            make_binding(client, account, service_sid, Identity="zed", Tag=["t"]),
            make_binding(client, account, service_sid, BindingType="sms", Address="+15555550100"),
            make_binding(client, account, service_sid, Identity="adam", Endpoint="e"),
        ]
        response = get_list(client, account, service_sid)
        assert response.status_code == 200
        assert response.json()["bindings"] == created

    def test_json_suffix(self, client, account, service_sid):
        created = make_binding(client, account, service_sid)
        response = client.get(f"{bindings_path(service_sid)}.json", auth=account.auth)
        assert response.status_code == 200
        body = response.json()
        assert body["bindings"] == [created]
        assert body["meta"]["url"] == f"{BASE}{bindings_path(service_sid)}?PageSize=50&Page=0"

    def test_only_the_services_own_bindings(self, client, account, service_sid):
        mine = make_binding(client, account, service_sid)
        other_sid = make_service(client, account)["sid"]
        theirs = make_binding(client, account, other_sid)
        assert listed(client, account, service_sid) == [mine]
        assert listed(client, account, other_sid) == [theirs]

    def test_default_page_size_is_50(self, client, account, service_sid):
        created = make_bindings(client, account, service_sid, 51)
        first = get_list(client, account, service_sid).json()
        assert first["bindings"] == created[:50]
        assert first["meta"]["page_size"] == 50
        next_url = first["meta"]["next_page_url"]
        assert re.fullmatch(
            rf"{BASE}{bindings_path(service_sid)}\?PageSize=50&Page=1&PageToken=PT\d+", next_url
        )
        second = client.get(relative(next_url), auth=account.auth).json()
        assert second["bindings"] == created[50:]
        assert second["meta"]["page"] == 1
        assert second["meta"]["next_page_url"] is None

    @pytest.mark.parametrize("page_size", [1, 1000])
    def test_page_size_bounds_accepted(self, client, account, service_sid, page_size):
        created = make_bindings(client, account, service_sid, 2)
        body = get_list(client, account, service_sid, PageSize=page_size).json()
        assert body["meta"]["page_size"] == page_size
        assert body["bindings"] == created[:page_size]
        assert body["meta"]["url"] == (
            f"{BASE}{bindings_path(service_sid)}?PageSize={page_size}&Page=0"
        )

    @pytest.mark.parametrize("page_size", ["0", "1001", "-1", "abc", "", "2.5", "1e3"])
    def test_page_size_out_of_bounds(self, client, account, service_sid, page_size):
        response = get_list(client, account, service_sid, PageSize=page_size)
        assert_invalid(response, "PageSize")

    @pytest.mark.parametrize("page", ["-1", "abc"])
    def test_bad_page(self, client, account, service_sid, page):
        assert_invalid(get_list(client, account, service_sid, Page=page), "Page")

    def test_paging_forward_follows_next_page_url_verbatim(self, client, account, service_sid):
        created = make_bindings(client, account, service_sid, 7)
        first_url = f"{bindings_path(service_sid)}?PageSize=2"
        pages = walk_forward(client, account, first_url)
        assert [len(p["bindings"]) for p in pages] == [2, 2, 2, 1]
        assert [b for p in pages for b in p["bindings"]] == created
        first_page_url = f"{BASE}{bindings_path(service_sid)}?PageSize=2&Page=0"
        for number, page in enumerate(pages):
            meta = page["meta"]
            assert meta["page"] == number
            assert meta["page_size"] == 2
            assert meta["key"] == "bindings"
            assert meta["first_page_url"] == first_page_url
            assert (meta["previous_page_url"] is None) == (number == 0)
            assert (meta["next_page_url"] is None) == (number == len(pages) - 1)
        assert pages[0]["meta"]["url"] == first_page_url
        # Each page's `url` is the link that led to it.
        for before, after in zip(pages, pages[1:], strict=False):
            assert after["meta"]["url"] == before["meta"]["next_page_url"]
            assert re.search(r"&Page=\d+&PageToken=PT\d+$", after["meta"]["url"])
        # first_page_url leads back to the start.
        again = client.get(relative(pages[-1]["meta"]["first_page_url"]), auth=account.auth)
        assert again.json()["bindings"] == created[:2]

    def test_previous_page_url_walks_back(self, client, account, service_sid):
        created = make_bindings(client, account, service_sid, 7)
        forward = walk_forward(client, account, f"{bindings_path(service_sid)}?PageSize=2")
        backward = walk_backward(client, account, forward[-1])
        assert [p["bindings"] for p in backward] == [p["bindings"] for p in reversed(forward)]
        assert [p["meta"]["page"] for p in backward] == [3, 2, 1, 0]
        assert backward[-1]["meta"]["previous_page_url"] is None
        # A page reached backwards leads forward again.
        middle = backward[2]
        assert middle["bindings"] == created[2:4]
        onward = client.get(relative(middle["meta"]["next_page_url"]), auth=account.auth)
        assert onward.json()["bindings"] == created[4:6]
        assert onward.json()["meta"]["page"] == 2

    def test_rows_inserted_while_paging_are_neither_skipped_nor_duplicated(
        self, client, account, service_sid
    ):
        created = make_bindings(client, account, service_sid, 5)
        first = get_list(client, account, service_sid, PageSize=2).json()
        second = client.get(relative(first["meta"]["next_page_url"]), auth=account.auth).json()
        added = [
            make_binding(client, account, service_sid, Identity=f"late-{i}", Address=f"late-{i}")
            for i in range(3)
        ]
        rest = walk_forward(client, account, relative(second["meta"]["next_page_url"]))
        seen = [b for p in [first, second, *rest] for b in p["bindings"]]
        assert seen == created + added

    def test_deleting_the_last_row_of_a_page_while_paging(self, client, account, service_sid):
        created = make_bindings(client, account, service_sid, 6)
        first = get_list(client, account, service_sid, PageSize=2).json()
        assert first["bindings"] == created[:2]
        deleted = client.delete(
            f"{bindings_path(service_sid)}/{created[1]['sid']}", auth=account.auth
        )
        assert deleted.status_code == 204
        rest = walk_forward(client, account, relative(first["meta"]["next_page_url"]))
        assert [b for p in rest for b in p["bindings"]] == created[2:]

    def test_empty_page_token_counts_as_not_given(self, client, account, service_sid):
        created = make_bindings(client, account, service_sid, 3)
        body = get_list(client, account, service_sid, PageSize=2, PageToken="").json()
        assert body["bindings"] == created[:2]
        assert body["meta"]["previous_page_url"] is None

    @pytest.mark.parametrize(
        "token",
        [
            "abc",
            "PT",
            "PB",
            "PX12",
            "PT-1",
            "PT1a",
            "pt1",
            " PT1",
            "PT1 ",
            "PT１",  # a full-width digit
            "BS" + "0" * 32,
            "PT" + "9" * 20,
            # Fits the pattern but no row id can be this large (above 2**63 - 1).
            "PT" + "9" * 19,
            "PB" + "9" * 19,
        ],
    )
    def test_bad_page_token(self, client, account, service_sid, token):
        make_bindings(client, account, service_sid, 1)
        response = get_list(client, account, service_sid, PageToken=token)
        assert response.status_code == 400, response.text
        assert response.json() == twilio_error(400, 20001, "Parameter 'PageToken' is invalid")

    def test_unknown_service(self, client, account):
        response = get_list(client, account, UNKNOWN_SERVICE)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{UNKNOWN_SERVICE}/Bindings")

    def test_service_of_another_account(self, client, account, other_account):
        theirs = make_service(client, other_account)["sid"]
        make_binding(client, other_account, theirs)
        response = get_list(client, account, theirs)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{theirs}/Bindings")

    @pytest.mark.parametrize("service_sid", ["IS" + "z" * 32, "IS1", "CR" + "0" * 32])
    def test_malformed_service_sid_without_credentials(self, client, service_sid):
        response = client.get(bindings_path(service_sid))
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{service_sid}/Bindings")

    def test_without_credentials(self, client, service_sid):
        response = client.get(bindings_path(service_sid))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED
        assert response.headers["www-authenticate"].startswith("Basic ")

    def test_wrong_token(self, client, account, service_sid):
        response = client.get(bindings_path(service_sid), auth=(account.sid, "nope"))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED


class TestListBindingsFilters:
    @pytest.fixture
    def population(self, client, account, service_sid) -> dict[str, dict]:
        def make(identity: str, binding_type: str, tags: list[str]) -> dict:
            address = "+15555550100" if binding_type == "sms" else f"{identity}-{binding_type}"
            return make_binding(
                client,
                account,
                service_sid,
                Identity=identity,
                BindingType=binding_type,
                Address=address,
                Tag=tags,
            )

        return {
            "a1": make("alice", "apn", ["news", "sports"]),
            "a2": make("alice", "sms", ["news"]),
            "b1": make("bob", "fcm", ["sports"]),
            "c1": make("carol", "apn", []),
            "c2": make("carol", "gcm", ["news", "sports", "weather"]),
        }

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"Identity": "alice"}, ["a1", "a2"]),
            ({"Identity": ["alice", "bob"]}, ["a1", "a2", "b1"]),
            ({"Identity": ["bob", "alice", "nobody"]}, ["a1", "a2", "b1"]),
            ({"Identity": "nobody"}, []),
            ({"Identity": "Alice"}, []),
            ({"Tag": "news"}, ["a1", "a2", "c2"]),
            ({"Tag": ["news", "sports"]}, ["a1", "c2"]),
            ({"Tag": ["news", "sports", "weather"]}, ["c2"]),
            ({"Tag": "News"}, []),
            ({"Tag": "unknown"}, []),
            ({"Tag": "all"}, ["a1", "a2", "b1", "c1", "c2"]),
            ({"Tag": ["all", "news"]}, ["a1", "a2", "c2"]),
            ({"Tag": "apn"}, ["a1", "c1"]),
            ({"Tag": "sms"}, ["a2"]),
            ({"Tag": "facebook-messenger"}, []),
            ({"Tag": ["apn", "sports"]}, ["a1"]),
            ({"Tag": ["apn", "sms"]}, []),
            ({"Tag": ["all", "news", "sports", "weather", "gcm"]}, ["c2"]),
            ({"Identity": ["alice", "carol"], "Tag": "sports"}, ["a1", "c2"]),
            ({"Identity": "carol", "Tag": "apn"}, ["c1"]),
            ({"Identity": "bob", "Tag": "news"}, []),
        ],
    )
    def test_filter(self, client, account, service_sid, population, params, expected):
        result = listed(client, account, service_sid, **params)
        assert result == [population[name] for name in expected]

    def test_more_than_five_tags(self, client, account, service_sid, population):
        tags = ["all", "news", "sports", "weather", "gcm", "extra"]
        assert_invalid(get_list(client, account, service_sid, Tag=tags), "Tag")

    @pytest.mark.parametrize("tag", ["t" * 65, "a\x00b"])
    def test_invalid_tag(self, client, account, service_sid, tag):
        assert_invalid(get_list(client, account, service_sid, Tag=tag), "Tag")

    @pytest.mark.parametrize("identity", ["i" * 257, "a\x00b"])
    def test_invalid_identity(self, client, account, service_sid, identity):
        assert_invalid(get_list(client, account, service_sid, Identity=identity), "Identity")

    @pytest.mark.parametrize("name", ["Identity", "Tag"])
    def test_non_utf8_query_is_refused(self, client, account, service_sid, name):
        response = client.get(f"{bindings_path(service_sid)}?{name}=%FF", auth=account.auth)
        assert response.status_code == 400, response.text
        body = response.json()
        assert body == twilio_error(400, 20001, body["message"])

    def test_identity_filter_limit(self, client, account, service_sid, population):
        many = [f"id-{i}" for i in range(999)] + ["bob"]
        assert sids(listed(client, account, service_sid, Identity=many)) == [
            population["b1"]["sid"]
        ]
        assert_invalid(get_list(client, account, service_sid, Identity=[*many, "x"]), "Identity")

    @pytest.fixture
    def dated(self, client, account, engine, service_sid) -> dict[str, dict]:
        moments = {
            "d1": datetime(2020, 1, 1, 10, 0, 0),
            "d2": datetime(2020, 1, 2, 0, 0, 0),
            "d3": datetime(2020, 1, 2, 23, 59, 59),
            "d4": datetime(2020, 1, 3, 0, 0, 0),
        }
        made = {}
        for name, when in moments.items():
            binding = make_binding(
                client,
                account,
                service_sid,
                Identity="alice" if name in ("d1", "d3") else "bob",
                Address=name,
                Tag=["even"] if name in ("d2", "d4") else ["odd"],
            )
            set_date_created(engine, binding["sid"], when)
            made[name] = {**binding, "date_created": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return made

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"StartDate": "2020-01-02"}, ["d2", "d3", "d4"]),
            ({"EndDate": "2020-01-02"}, ["d1", "d2", "d3"]),
            ({"StartDate": "2020-01-02", "EndDate": "2020-01-02"}, ["d2", "d3"]),
            ({"StartDate": "2020-01-01", "EndDate": "2020-01-03"}, ["d1", "d2", "d3", "d4"]),
            ({"StartDate": "2020-01-03", "EndDate": "2020-01-02"}, []),
            ({"StartDate": "2019-12-31"}, ["d1", "d2", "d3", "d4"]),
            ({"EndDate": "2019-12-31"}, []),
            ({"StartDate": "2020-01-04"}, []),
            ({"StartDate": "2020-01-02", "Identity": "alice"}, ["d3"]),
            ({"EndDate": "2020-01-02", "Tag": "even"}, ["d2"]),
            (
                {
                    "StartDate": "2020-01-01",
                    "EndDate": "2020-01-02",
                    "Identity": ["alice", "bob"],
                    "Tag": ["odd", "apn"],
                },
                ["d1", "d3"],
            ),
        ],
    )
    def test_date_range_is_inclusive(self, client, account, service_sid, dated, params, expected):
        result = listed(client, account, service_sid, **params)
        assert result == [dated[name] for name in expected]

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
            # Empty is not "not given": Twilio's description types the filter as a date.
            "",
        ],
    )
    def test_bad_date(self, client, account, service_sid, name, value):
        assert_invalid(get_list(client, account, service_sid, **{name: value}), name)

    def test_filters_are_kept_in_every_meta_url(self, client, account, service_sid, dated):
        params = {
            "StartDate": "2020-01-01",
            "EndDate": "2020-01-03",
            "Identity": ["alice", "bob"],
            "Tag": ["all", "apn"],
        }
        first_url = client.build_request(
            "GET", bindings_path(service_sid), params={**params, "PageSize": 1}
        ).url
        forward = walk_forward(client, account, f"{first_url.path}?{first_url.query.decode()}")
        backward = walk_backward(client, account, forward[-1])
        assert [b["sid"] for p in forward for b in p["bindings"]] == [
            dated[n]["sid"] for n in ("d1", "d2", "d3", "d4")
        ]
        assert len(backward) == 4
        expected = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
        for page in forward + backward:
            for url in meta_urls(page):
                parts = urlsplit(url)
                assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
                    f"{BASE}{bindings_path(service_sid)}"
                )
                query = parse_qs(parts.query, keep_blank_values=True)
                assert {k: query[k] for k in expected} == expected, url
                assert query["PageSize"] == ["1"]

    def test_paging_a_filtered_list(self, client, account, service_sid, population):
        pages = walk_forward(client, account, f"{bindings_path(service_sid)}?Tag=sports&PageSize=1")
        assert [b for p in pages for b in p["bindings"]] == [
            population["a1"],
            population["b1"],
            population["c2"],
        ]
        assert pages[-1]["meta"]["next_page_url"] is None
