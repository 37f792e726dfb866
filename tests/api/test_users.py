"""The removed Users, User Bindings and Segments resources, served as a view of Bindings
(docs/behaviour.md, "Users and Segments"): the links we return lead somewhere."""

import hashlib
from datetime import datetime
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from notify_server.bindings.models import Binding
from tests.errors import UNAUTHENTICATED, assert_error, assert_invalid, assert_not_found
from tests.factories import Account, make_binding, make_service

BASE = "http://testserver"
UNKNOWN_SERVICE = "IS" + "0" * 32
SEGMENTS_NOT_KEPT = "Segments are not kept (Twilio deprecated them for Tag): tag the Bindings"


def relative(url: str) -> str:
    assert url.startswith(f"{BASE}/v1/"), url
    return url[len(BASE) :]


def users_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Users"


def user_path(service_sid: str, identity: str) -> str:
    return f"{users_path(service_sid)}/{quote(identity, safe='')}"


def user_sid(service_sid: str, identity: str) -> str:
    return "US" + hashlib.sha256(f"{service_sid}\x00{identity}".encode()).hexdigest()[:32]


def expected_user(account: Account, service_sid: str, identity: str, created, updated) -> dict:
    url = f"{BASE}{user_path(service_sid, identity)}"
    return {
        "account_sid": account.sid,
        "date_created": created,
        "date_updated": updated,
        "identity": identity,
        "links": {
            "bindings": f"{url}/Bindings",
            "segment_memberships": f"{url}/SegmentMemberships",
        },
        "segments": [],
        "service_sid": service_sid,
        "sid": user_sid(service_sid, identity),
        "url": url,
    }


def set_dates(engine: Engine, sid: str, created: datetime, updated: datetime) -> None:
    table = Binding.__table__
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.sid == sid)
            .values(date_created=created, date_updated=updated)
        )


def binding_sids(engine: Engine) -> set[str]:
    with engine.begin() as conn:
        return set(conn.execute(select(Binding.__table__.c.sid)).scalars())


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account)["sid"]


@pytest.fixture
def people(client, account, service_sid, engine) -> dict[str, dict]:
    """alice with two bindings (dated apart), bob with one, made in the order a1, b1, a2."""
    made = {
        "a1": make_binding(client, account, service_sid, Identity="alice", Address="a1", Tag="x"),
        "b1": make_binding(client, account, service_sid, Identity="bob", Address="b1"),
        "a2": make_binding(
            client, account, service_sid, Identity="alice", Address="a2", Tag=["x", "y"]
        ),
    }
    set_dates(engine, made["a1"]["sid"], datetime(2020, 1, 1, 8), datetime(2020, 1, 5, 9))
    set_dates(engine, made["b1"]["sid"], datetime(2020, 1, 2), datetime(2020, 1, 2))
    set_dates(engine, made["a2"]["sid"], datetime(2020, 1, 3), datetime(2020, 1, 4))
    return made


class TestFetchUser:
    def test_a_user_is_its_identitys_bindings(self, client, account, service_sid, people):
        response = client.get(user_path(service_sid, "alice"), auth=account.auth)

        assert response.status_code == 200, response.text
        # Created with its first binding, updated with its last.
        assert response.json() == expected_user(
            account, service_sid, "alice", "2020-01-01T08:00:00Z", "2020-01-05T09:00:00Z"
        )

    def test_the_sid_is_stable_and_differs_per_identity(self, client, account, service_sid, people):
        first = client.get(user_path(service_sid, "alice"), auth=account.auth).json()["sid"]
        again = client.get(user_path(service_sid, "alice"), auth=account.auth).json()["sid"]
        bob = client.get(user_path(service_sid, "bob"), auth=account.auth).json()["sid"]
        assert first == again != bob

    def test_a_bindings_links_user_answers(self, client, account, service_sid, people):
        link = people["b1"]["links"]["user"]

        response = client.get(relative(link), auth=account.auth)

        assert response.status_code == 200, response.text
        assert response.json()["identity"] == "bob"
        assert response.json()["url"] == link

    def test_an_identity_that_needs_escaping(self, client, account, service_sid):
        identity = "jo smith+1@example.com?x=1#y"
        binding = make_binding(client, account, service_sid, Identity=identity)

        response = client.get(relative(binding["links"]["user"]), auth=account.auth)

        assert response.status_code == 200, response.text
        assert response.json()["identity"] == identity
        assert response.json()["url"] == binding["links"]["user"]
        assert "%20" in response.json()["url"] and "%3F" in response.json()["url"]

    def test_an_identity_without_bindings_is_404(self, client, account, service_sid, people):
        response = client.get(user_path(service_sid, "carol"), auth=account.auth)
        assert_not_found(response, f"/Services/{service_sid}/Users/carol")

    @pytest.mark.parametrize("identity", ["a%00b", "i" * 257])
    def test_an_identity_no_binding_can_have_is_404(self, client, account, service_sid, identity):
        response = client.get(f"{users_path(service_sid)}/{identity}", auth=account.auth)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == 20404

    def test_another_accounts_service_is_404(self, client, other_account, service_sid, people):
        response = client.get(user_path(service_sid, "alice"), auth=other_account.auth)
        assert_not_found(response, f"/Services/{service_sid}/Users/alice")

    def test_unauthenticated_is_401(self, client, service_sid, people):
        response = client.get(user_path(service_sid, "alice"), auth=("AC" + "0" * 32, "x"))
        assert response.status_code == 401
        assert response.json() == UNAUTHENTICATED

    def test_a_malformed_service_sid_is_404(self, client, account):
        response = client.get("/v1/Services/IS123/Users/alice", auth=account.auth)
        assert_not_found(response, "/Services/IS123/Users/alice")


class TestListUsers:
    def test_users_in_order_of_their_first_binding(self, client, account, service_sid, people):
        response = client.get(users_path(service_sid), auth=account.auth)

        assert response.status_code == 200, response.text
        url = f"{BASE}{users_path(service_sid)}?PageSize=50&Page=0"
        assert response.json() == {
            "users": [
                expected_user(
                    account, service_sid, "alice", "2020-01-01T08:00:00Z", "2020-01-05T09:00:00Z"
                ),
                expected_user(
                    account, service_sid, "bob", "2020-01-02T00:00:00Z", "2020-01-02T00:00:00Z"
                ),
            ],
            "meta": {
                "page": 0,
                "page_size": 50,
                "first_page_url": url,
                "previous_page_url": None,
                "url": url,
                "next_page_url": None,
                "key": "users",
            },
        }

    def test_the_services_links_users_answers(self, client, account, service_sid, people):
        service = client.get(f"/v1/Services/{service_sid}", auth=account.auth).json()
        response = client.get(relative(service["links"]["users"]), auth=account.auth)
        assert response.status_code == 200, response.text
        assert [u["identity"] for u in response.json()["users"]] == ["alice", "bob"]

    def test_paging_walks_every_user_once(self, client, account, service_sid, people):
        carol = make_binding(client, account, service_sid, Identity="carol", Address="c1")
        assert carol["identity"] == "carol"
        seen, url = [], f"{users_path(service_sid)}?PageSize=1"
        previous = None
        while url:
            page = client.get(url, auth=account.auth).json()
            assert len(page["users"]) == 1
            seen += [u["identity"] for u in page["users"]]
            previous = page["meta"]["previous_page_url"]
            url = page["meta"]["next_page_url"] and relative(page["meta"]["next_page_url"])
        assert seen == ["alice", "bob", "carol"]
        back = client.get(relative(previous), auth=account.auth).json()
        assert [u["identity"] for u in back["users"]] == ["bob"]

    def test_identity_filter_is_any_of(self, client, account, service_sid, people):
        make_binding(client, account, service_sid, Identity="carol", Address="c1")
        response = client.get(
            f"{users_path(service_sid)}?Identity=carol&Identity=alice&Identity=nobody",
            auth=account.auth,
        )
        assert [u["identity"] for u in response.json()["users"]] == ["alice", "carol"]
        assert response.json()["meta"]["url"] == (
            f"{BASE}{users_path(service_sid)}"
            "?Identity=carol&Identity=alice&Identity=nobody&PageSize=50&Page=0"
        )

    def test_no_user_is_in_a_segment(self, client, account, service_sid, people):
        response = client.get(f"{users_path(service_sid)}?Segment=premium", auth=account.auth)
        assert response.status_code == 200, response.text
        assert response.json()["users"] == []
        assert response.json()["meta"]["url"].endswith("?Segment=premium&PageSize=50&Page=0")

    def test_other_services_users_are_not_listed(self, client, account, service_sid, people):
        other = make_service(client, account)["sid"]
        make_binding(client, account, other, Identity="zed")
        response = client.get(users_path(service_sid), auth=account.auth)
        assert [u["identity"] for u in response.json()["users"]] == ["alice", "bob"]

    @pytest.mark.parametrize("query", ["PageSize=", "PageSize=0", "Page=", "Identity="])
    def test_bad_parameters_are_400(self, client, account, service_sid, query):
        response = client.get(f"{users_path(service_sid)}?{query}", auth=account.auth)
        assert_invalid(response, query.split("=")[0])

    def test_unknown_service_is_404(self, client, account):
        response = client.get(users_path(UNKNOWN_SERVICE), auth=account.auth)
        assert_not_found(response, f"/Services/{UNKNOWN_SERVICE}/Users")


class TestCreateUser:
    def test_accepted_and_nothing_is_stored(self, client, account, service_sid, engine):
        response = client.post(
            users_path(service_sid), data={"Identity": "dana"}, auth=account.auth
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == expected_user(
            account, service_sid, "dana", body["date_created"], body["date_created"]
        )
        assert binding_sids(engine) == set()
        # Until a Binding names the identity there is no User to fetch.
        assert client.get(user_path(service_sid, "dana"), auth=account.auth).status_code == 404

    def test_then_its_bindings_make_the_user(self, client, account, service_sid):
        client.post(users_path(service_sid), data={"Identity": "dana"}, auth=account.auth)
        created = client.post(
            f"{user_path(service_sid, 'dana')}/Bindings",
            data={"BindingType": "fcm", "Address": "tok"},
            auth=account.auth,
        )
        assert created.status_code == 201, created.text
        fetched = client.get(user_path(service_sid, "dana"), auth=account.auth)
        assert fetched.status_code == 200
        assert fetched.json()["date_created"] == created.json()["date_created"]

    def test_of_an_existing_user_answers_its_view(self, client, account, service_sid, people):
        response = client.post(
            users_path(service_sid), data={"Identity": "alice"}, auth=account.auth
        )
        assert response.status_code == 201
        assert response.json() == expected_user(
            account, service_sid, "alice", "2020-01-01T08:00:00Z", "2020-01-05T09:00:00Z"
        )

    def test_segments_are_refused(self, client, account, service_sid):
        response = client.post(
            users_path(service_sid),
            data={"Identity": "dana", "Segment": "premium"},
            auth=account.auth,
        )
        assert_invalid(response, "Segment", f"{SEGMENTS_NOT_KEPT} instead")

    def test_identity_is_required(self, client, account, service_sid):
        response = client.post(users_path(service_sid), auth=account.auth)
        assert_error(response, 400, 20001, "Missing required parameter Identity in the post body")

    def test_unknown_service_is_404(self, client, account):
        response = client.post(
            users_path(UNKNOWN_SERVICE), data={"Identity": "x"}, auth=account.auth
        )
        assert_not_found(response, f"/Services/{UNKNOWN_SERVICE}/Users")


class TestDeleteUser:
    def test_deletes_every_binding_of_the_identity(self, client, account, service_sid, people):
        response = client.delete(user_path(service_sid, "alice"), auth=account.auth)

        assert response.status_code == 204
        assert response.content == b""
        remaining = client.get(f"/v1/Services/{service_sid}/Bindings", auth=account.auth)
        assert [b["sid"] for b in remaining.json()["bindings"]] == [people["b1"]["sid"]]
        assert client.get(user_path(service_sid, "alice"), auth=account.auth).status_code == 404
        # Their tags went with them: the tag no longer selects anything.
        tagged = client.get(f"/v1/Services/{service_sid}/Bindings?Tag=x", auth=account.auth)
        assert tagged.json()["bindings"] == []

    def test_unknown_identity_is_404(self, client, account, service_sid, people, engine):
        response = client.delete(user_path(service_sid, "carol"), auth=account.auth)
        assert_not_found(response, f"/Services/{service_sid}/Users/carol")
        assert len(binding_sids(engine)) == 3

    def test_another_account_cannot(self, client, other_account, service_sid, people, engine):
        response = client.delete(user_path(service_sid, "alice"), auth=other_account.auth)
        assert response.status_code == 404
        assert len(binding_sids(engine)) == 3


class TestListUserBindings:
    def test_only_the_users_bindings_with_urls_under_it(self, client, account, service_sid, people):
        response = client.get(f"{user_path(service_sid, 'alice')}/Bindings", auth=account.auth)

        assert response.status_code == 200, response.text
        body = response.json()
        user_url = f"{BASE}{user_path(service_sid, 'alice')}"
        expected = [
            {
                **people[name],
                "date_created": body["bindings"][i]["date_created"],
                "date_updated": body["bindings"][i]["date_updated"],
                "url": f"{user_url}/Bindings/{people[name]['sid']}",
            }
            for i, name in enumerate(["a1", "a2"])
        ]
        assert body["bindings"] == expected
        assert body["meta"]["key"] == "bindings"
        assert body["meta"]["url"] == f"{user_url}/Bindings?PageSize=50&Page=0"

    def test_the_users_links_bindings_answers(self, client, account, service_sid, people):
        user = client.get(user_path(service_sid, "bob"), auth=account.auth).json()
        response = client.get(relative(user["links"]["bindings"]), auth=account.auth)
        assert [b["sid"] for b in response.json()["bindings"]] == [people["b1"]["sid"]]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("StartDate=2020-01-02", ["a2"]),
            ("EndDate=2020-01-01", ["a1"]),
            ("Tag=y", ["a2"]),
            ("Tag=x&Tag=apn", ["a1", "a2"]),
            ("Tag=fcm", []),
            # Identity is the path's: one in the query is not a filter of this list.
            ("Identity=bob", ["a1", "a2"]),
        ],
    )
    def test_filters(self, client, account, service_sid, people, query, expected):
        response = client.get(
            f"{user_path(service_sid, 'alice')}/Bindings?{query}", auth=account.auth
        )
        assert response.status_code == 200, response.text
        assert [b["sid"] for b in response.json()["bindings"]] == [
            people[n]["sid"] for n in expected
        ]

    def test_paging_keeps_the_filters(self, client, account, service_sid, people):
        path = f"{user_path(service_sid, 'alice')}/Bindings"
        first = client.get(f"{path}?Tag=x&StartDate=2020-01-01&PageSize=1", auth=account.auth)
        next_url = first.json()["meta"]["next_page_url"]
        assert next_url == (
            f"{BASE}{path}?Tag=x&StartDate=2020-01-01&PageSize=1&Page=1"
            f"&PageToken=PT{next_url.rsplit('PT', 1)[1]}"
        )
        second = client.get(relative(next_url), auth=account.auth).json()
        assert [b["sid"] for b in second["bindings"]] == [people["a2"]["sid"]]
        assert second["meta"]["next_page_url"] is None

    @pytest.mark.parametrize("query", ["StartDate=", "EndDate=", "StartDate=2020-1-1", "Tag="])
    def test_bad_filters_are_400(self, client, account, service_sid, people, query):
        response = client.get(
            f"{user_path(service_sid, 'alice')}/Bindings?{query}", auth=account.auth
        )
        assert_invalid(response, query.split("=")[0])

    def test_a_user_without_bindings_is_404(self, client, account, service_sid):
        response = client.get(f"{user_path(service_sid, 'nobody')}/Bindings", auth=account.auth)
        assert_not_found(response, f"/Services/{service_sid}/Users/nobody/Bindings")


class TestCreateUserBinding:
    def test_the_identity_is_the_paths(self, client, account, service_sid):
        response = client.post(
            f"{user_path(service_sid, 'erin')}/Bindings",
            data={"BindingType": "apn", "Address": "tok", "Identity": "mallory", "Tag": "t"},
            auth=account.auth,
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body["identity"] == "erin"
        assert body["tags"] == ["t"]
        assert body["url"] == f"{BASE}{user_path(service_sid, 'erin')}/Bindings/{body['sid']}"
        assert body["links"] == {"user": f"{BASE}{user_path(service_sid, 'erin')}"}
        plain = client.get(f"/v1/Services/{service_sid}/Bindings/{body['sid']}", auth=account.auth)
        assert plain.json()["identity"] == "erin"

    def test_validated_as_any_binding(self, client, account, service_sid):
        response = client.post(
            f"{user_path(service_sid, 'erin')}/Bindings",
            data={"BindingType": "sms", "Address": "not-a-number"},
            auth=account.auth,
        )
        assert_invalid(response, "Address")

    def test_a_bracketed_tag_is_refused(self, client, account, service_sid, engine):
        response = client.post(
            f"{user_path(service_sid, 'erin')}/Bindings",
            data={"BindingType": "apn", "Address": "tok", "Tag[]": "t"},
            auth=account.auth,
        )
        assert_invalid(response, "Tag")
        assert binding_sids(engine) == set()


class TestFetchUserBinding:
    def test_its_own_binding(self, client, account, service_sid, people):
        sid = people["a2"]["sid"]
        response = client.get(
            f"{user_path(service_sid, 'alice')}/Bindings/{sid}", auth=account.auth
        )
        assert response.status_code == 200, response.text
        assert response.json()["sid"] == sid
        assert response.json()["url"] == f"{BASE}{user_path(service_sid, 'alice')}/Bindings/{sid}"

    def test_another_users_binding_is_404(self, client, account, service_sid, people):
        sid = people["b1"]["sid"]
        response = client.get(
            f"{user_path(service_sid, 'alice')}/Bindings/{sid}", auth=account.auth
        )
        assert_not_found(response, f"/Services/{service_sid}/Users/alice/Bindings/{sid}")

    def test_a_malformed_binding_sid_is_404(self, client, account, service_sid, people):
        response = client.get(f"{user_path(service_sid, 'alice')}/Bindings/BS12", auth=account.auth)
        assert_not_found(response, f"/Services/{service_sid}/Users/alice/Bindings/BS12")


class TestDeleteUserBinding:
    def test_its_own_binding(self, client, account, service_sid, people, engine):
        sid = people["a1"]["sid"]
        response = client.delete(
            f"{user_path(service_sid, 'alice')}/Bindings/{sid}", auth=account.auth
        )
        assert response.status_code == 204
        assert sid not in binding_sids(engine)
        assert len(binding_sids(engine)) == 2

    def test_another_users_binding_is_404_and_kept(
        self, client, account, service_sid, people, engine
    ):
        sid = people["b1"]["sid"]
        response = client.delete(
            f"{user_path(service_sid, 'alice')}/Bindings/{sid}", auth=account.auth
        )
        assert_not_found(response, f"/Services/{service_sid}/Users/alice/Bindings/{sid}")
        assert sid in binding_sids(engine)


class TestCreateSegmentMembership:
    def test_refused(self, client, account, service_sid, people):
        response = client.post(
            f"{user_path(service_sid, 'alice')}/SegmentMemberships",
            data={"Segment": "premium"},
            auth=account.auth,
        )
        assert_error(response, 405, 20004, f"{SEGMENTS_NOT_KEPT} of this User instead")

    def test_unauthenticated_is_401(self, client, service_sid):
        response = client.post(f"{user_path(service_sid, 'alice')}/SegmentMemberships")
        assert response.status_code == 401

    def test_unknown_service_is_404(self, client, account):
        path = f"{user_path(UNKNOWN_SERVICE, 'alice')}/SegmentMemberships"
        assert_not_found(client.post(path, auth=account.auth), path[3:])

    def test_no_membership_is_found(self, client, account, service_sid, people):
        response = client.get(
            f"{user_path(service_sid, 'alice')}/SegmentMemberships/premium", auth=account.auth
        )
        assert response.status_code == 404


class TestListSegments:
    def test_empty(self, client, account, service_sid):
        service = client.get(f"/v1/Services/{service_sid}", auth=account.auth).json()

        response = client.get(relative(service["links"]["segments"]), auth=account.auth)

        assert response.status_code == 200, response.text
        url = f"{BASE}/v1/Services/{service_sid}/Segments?PageSize=50&Page=0"
        assert response.json() == {
            "segments": [],
            "meta": {
                "page": 0,
                "page_size": 50,
                "first_page_url": url,
                "previous_page_url": None,
                "url": url,
                "next_page_url": None,
                "key": "segments",
            },
        }

    @pytest.mark.parametrize("query", ["PageSize=", "PageSize=1001", "PageToken=garbage"])
    def test_bad_paging_is_400(self, client, account, service_sid, query):
        response = client.get(f"/v1/Services/{service_sid}/Segments?{query}", auth=account.auth)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == 20001

    def test_unknown_service_is_404(self, client, account):
        response = client.get(f"/v1/Services/{UNKNOWN_SERVICE}/Segments", auth=account.auth)
        assert_not_found(response, f"/Services/{UNKNOWN_SERVICE}/Segments")
