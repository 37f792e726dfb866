"""The web inspector at /console through HTTP: sign-in and sessions, the headers every page
carries, CSRF and cross-site refusal, one account never seeing another's data, tenant values
escaped, the setting that turns it off, and the event stream (live server: it must end on
disconnect and let the server shut down promptly)."""

import asyncio
import base64
import contextlib
import re
import signal
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from notify_server.app import create_app
from notify_server.config import Settings
from notify_server.console import repository as watched
from notify_server.console.pages import POLICY
from notify_server.console.session import COOKIE
from notify_server.notifications import operations as notification_operations
from notify_server.notifications.models import Delivery, Notification
from notify_server.services.models import Service
from tests.factories import Account, make_api_key, make_binding, make_service
from tests.servers import live_server

XSS = "<script>alert(1)</script>"
STREAMS = 45
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client: TestClient, username: str, password: str, **headers: str) -> httpx.Response:
    return client.post(
        "/console/sign-in",
        data={"username": username, "password": password},
        headers=headers,
        follow_redirects=False,
    )


def signed_in(client: TestClient, account: Account) -> TestClient:
    response = sign_in(client, *account.auth)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/services"
    return client


def csrf_token(client: TestClient, path: str = "/console/services") -> str:
    match = CSRF.search(client.get(path).text)
    assert match, "no CSRF token on the page"
    return match[1]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # On whatever the database: its default is off on PostgreSQL (tested below).
    return settings.model_copy(update={"console_enabled": True})


@pytest.fixture
def browser(client: TestClient, account: Account) -> TestClient:
    return signed_in(client, account)


@pytest.fixture
def service(client: TestClient, account: Account) -> dict:
    return make_service(client, account, FriendlyName="Shop")


class TestSignIn:
    def test_account_sid_and_token_open_a_session_cookie_with_strict_flags(self, client, account):
        response = sign_in(client, *account.auth)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/console"} <= flags
        assert "secure" not in flags  # plain http here
        # The cookie carries no secret: not the token, nor anything it can be read back from.
        assert account.auth_token not in cookie
        assert client.get("/console/services").status_code == 200

    def test_over_https_the_cookie_is_secure(self, settings, engine, account):
        with TestClient(create_app(settings), base_url="https://testserver") as client:
            cookie = sign_in(client, *account.auth).headers["set-cookie"]
        assert "secure" in {part.strip().lower() for part in cookie.split(";")}

    def test_behind_a_proxy_that_says_https_the_cookie_is_secure(self, settings, engine, account):
        with TestClient(
            create_app(settings.model_copy(update={"public_url": "https://notify.example"}))
        ) as client:
            response = sign_in(client, *account.auth, Origin="https://notify.example")
        assert response.status_code == 303
        assert "secure" in response.headers["set-cookie"].lower()

    def test_an_api_key_signs_in_to_its_account(self, client, engine, account):
        key = make_api_key(engine, account.sid)
        assert sign_in(client, *key).status_code == 303
        assert account.sid in client.get("/console/services").text

    @pytest.mark.parametrize(
        "username, password",
        [
            ("{sid}", "wrong-token"),
            ("AC" + "0" * 32, "{token}"),
            ("", ""),
            ("not-a-sid", "{token}"),
        ],
    )
    def test_a_failed_sign_in_says_so_without_saying_which_part(
        self, client, account, username, password
    ):
        username = username.format(sid=account.sid)
        password = password.format(token=account.auth_token)
        response = sign_in(client, username, password)
        assert response.status_code == 401
        assert "Sign-in failed: those credentials were not accepted." in response.text
        assert "set-cookie" not in response.headers
        assert client.get("/console/services", follow_redirects=False).status_code == 303

    def test_repeated_failures_are_slowed_down(self, client, account):
        codes = [sign_in(client, account.sid, f"guess-{i}").status_code for i in range(12)]
        assert codes[:10] == [401] * 10
        assert codes[10:] == [429, 429]
        # Even the right token waits: the limit is on the name being tried.
        refused = sign_in(client, *account.auth)
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 6
        assert f"Too many sign-in attempts: try again in {wait} s." in refused.text

    def test_pages_without_a_session_send_to_sign_in(self, client, service):
        for path in (
            "/console",
            "/console/",
            "/console/services",
            f"/console/services/{service['sid']}/bindings",
        ):
            response = client.get(path, follow_redirects=False)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/console/sign-in"

    @pytest.mark.parametrize(
        "cookie",
        ["garbage", "a.b", "eyJ4IjoxfQ.AAAA", ""],
    )
    def test_a_forged_cookie_is_no_session(self, client, cookie):
        client.cookies.set(COOKIE, cookie, path="/console")
        response = client.get("/console/services", follow_redirects=False)
        assert response.status_code == 303

    @pytest.mark.parametrize("signature", ["\u00e9", "\u00e9\u00e9", "x\udcff"])
    def test_a_cookie_of_any_bytes_is_no_session(self, client, account, signature):
        # compare_digest refuses non-ASCII str: these were 500s, for anyone, with a traceback.
        signed_in(client, account)
        payload = client.cookies[COOKIE].split(".")[0]
        client.cookies.clear()
        for cookie in (f"{payload}.{signature}", f"x.{signature}"):
            raw = f"{COOKIE}={cookie}".encode("utf-8", "surrogateescape")
            for path in ("/console/services", "/console/sign-in"):
                response = client.get(path, headers={"cookie": raw}, follow_redirects=False)
                assert response.status_code in (200, 303), (path, response.text)
                assert "content-security-policy" in response.headers

    def test_a_tampered_cookie_is_no_session(self, client, account, other_account):
        signed_in(client, account)
        value = client.cookies[COOKIE]
        payload, signature = value.split(".")
        fields = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        fields[0] = other_account.sid
        forged = base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=").decode()
        client.cookies.clear()
        client.cookies.set(COOKIE, f"{forged}.{signature}", path="/console")
        assert client.get("/console/services", follow_redirects=False).status_code == 303

    def test_a_new_auth_token_ends_the_sessions_the_old_one_opened(self, client, engine, account):
        from notify_server.accounts.operations import ensure_account
        from notify_server.db import transaction

        signed_in(client, account)
        with transaction(engine, write=True) as conn:
            ensure_account(conn, None, account.sid, "a-brand-new-token")
        assert client.get("/console/services", follow_redirects=False).status_code == 303

    def test_sign_out_ends_the_session(self, browser):
        token = csrf_token(browser)
        response = browser.post(
            "/console/sign-out", data={"csrf_token": token}, follow_redirects=False
        )
        assert response.status_code == 303
        assert f'{COOKIE}=""' in response.headers["set-cookie"]
        assert browser.get("/console/services", follow_redirects=False).status_code == 303


class TestHeaders:
    def test_every_console_page_has_a_strict_policy(self, client, browser, service):
        paths = [
            "/console/sign-in",
            "/console/services",
            f"/console/services/{service['sid']}/bindings",
            "/console/services/IS" + "0" * 32 + "/bindings",  # a 404 page too
            "/console/static/console.js",
        ]
        for path in paths:
            response = browser.get(path)
            assert response.headers["content-security-policy"] == POLICY, path
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self';" in POLICY and "frame-ancestors 'none'" in POLICY
        assert "unsafe-inline" not in POLICY

    def test_no_inline_script_or_style_in_any_page(self, browser, service):
        for path in ("/console/services", f"/console/services/{service['sid']}/bindings"):
            html = browser.get(path).text
            assert re.findall(r"<script[^>]*>", html) == [
                '<script src="/console/static/console.js" defer>'
            ]
            assert "style=" not in html and "<style" not in html
            assert not re.search(r"<[^>]+\son[a-z]+=", html)

    def test_unknown_static_file_is_404(self, browser):
        assert browser.get("/console/static/../config.py").status_code == 404
        assert browser.get("/console/static/nope.js").status_code == 404


class TestCsrf:
    def test_delete_without_the_token_is_refused_and_nothing_is_deleted(
        self, browser, account, service
    ):
        binding = make_binding(browser, account, service["sid"])
        path = f"/console/services/{service['sid']}/bindings/{binding['sid']}/delete"
        for data in ({}, {"csrf_token": "forged"}):
            response = browser.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403
            assert "not sent from a page of this console" in response.text
        api = browser.get(
            f"/v1/Services/{service['sid']}/Bindings/{binding['sid']}", auth=account.auth
        )
        assert api.status_code == 200

    def test_a_cross_site_post_is_refused_even_with_the_token(self, browser, account, service):
        binding = make_binding(browser, account, service["sid"])
        token = csrf_token(browser)
        path = f"/console/services/{service['sid']}/bindings/{binding['sid']}/delete"
        for headers in (
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            response = browser.post(
                path, data={"csrf_token": token}, headers=headers, follow_redirects=False
            )
            assert response.status_code == 403, headers
        api = browser.get(
            f"/v1/Services/{service['sid']}/Bindings/{binding['sid']}", auth=account.auth
        )
        assert api.status_code == 200

    def test_delete_with_the_token_from_the_same_origin_deletes(self, browser, account, service):
        binding = make_binding(browser, account, service["sid"])
        token = csrf_token(browser)
        response = browser.post(
            f"/console/services/{service['sid']}/bindings/{binding['sid']}/delete",
            data={"csrf_token": token},
            headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
            follow_redirects=False,
        )
        assert response.status_code == 303
        api = browser.get(
            f"/v1/Services/{service['sid']}/Bindings/{binding['sid']}", auth=account.auth
        )
        assert api.status_code == 404

    def test_a_cross_site_sign_in_is_refused(self, client, account):
        response = sign_in(client, *account.auth, Origin="https://evil.example")
        assert response.status_code == 403
        assert "set-cookie" not in response.headers

    def test_another_sessions_token_does_not_do(self, settings, engine, account, service):
        with TestClient(create_app(settings)) as other:
            token = csrf_token(signed_in(other, account))
        with TestClient(create_app(settings)) as client:
            signed_in(client, account)
            binding = make_binding(client, account, service["sid"])
            response = client.post(
                f"/console/services/{service['sid']}/bindings/{binding['sid']}/delete",
                data={"csrf_token": token},
                follow_redirects=False,
            )
        assert response.status_code == 403


class TestTenants:
    def test_another_accounts_service_is_neither_listed_nor_reachable(
        self, client, account, other_account
    ):
        theirs = make_service(client, other_account, FriendlyName="Theirs")
        make_binding(client, other_account, theirs["sid"], Identity="their-user")
        mine = make_service(client, account, FriendlyName="Mine")
        signed_in(client, account)
        listing = client.get("/console/services").text
        assert mine["sid"] in listing and theirs["sid"] not in listing and "Theirs" not in listing
        for path in (
            f"/console/services/{theirs['sid']}/bindings",
            f"/console/services/{theirs['sid']}/bindings?identity=their-user",
            f"/console/services/{theirs['sid']}/events",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "their-user" not in response.text

    def test_another_accounts_binding_cannot_be_deleted(self, client, account, other_account):
        theirs = make_service(client, other_account)
        binding = make_binding(client, other_account, theirs["sid"])
        signed_in(client, account)
        token = csrf_token(client)
        response = client.post(
            f"/console/services/{theirs['sid']}/bindings/{binding['sid']}/delete",
            data={"csrf_token": token},
        )
        assert response.status_code == 404
        api = client.get(
            f"/v1/Services/{theirs['sid']}/Bindings/{binding['sid']}", auth=other_account.auth
        )
        assert api.status_code == 200


class TestBindings:
    def test_search_by_identity_tag_and_type(self, browser, account, service):
        sid = service["sid"]
        make_binding(
            browser, account, sid, Identity="alice", BindingType="apn", Address="a-1", Tag=["vip"]
        )
        make_binding(browser, account, sid, Identity="alice", BindingType="fcm", Address="a-2")
        make_binding(
            browser,
            account,
            sid,
            Identity="bob",
            BindingType="sms",
            Address="+15555550100",
            Tag=["vip"],
        )

        def identities(**params) -> list[str]:
            html = browser.get(f"/console/services/{sid}/bindings", params=params).text
            return re.findall(r'<td class="identity">([^<]*)</td>', html)

        assert sorted(identities()) == ["alice", "alice", "bob"]
        assert identities(identity="alice") == ["alice", "alice"]
        assert sorted(identities(tag="vip")) == ["alice", "bob"]
        assert identities(type="sms") == ["bob"]
        assert identities(tag="vip", type="apn") == ["alice"]
        assert identities(identity="nobody") == []

    def test_bad_filters_are_explained_on_the_page(self, browser, service):
        response = browser.get(
            f"/console/services/{service['sid']}/bindings", params={"type": "pigeon"}
        )
        assert response.status_code == 400 and "Unknown binding type" in response.text
        response = browser.get(
            f"/console/services/{service['sid']}/bindings", params={"page": "nope"}
        )
        assert response.status_code == 400 and "PageToken" in response.text

    def test_keyset_pages_of_fifty(self, browser, account, service):
        for i in range(55):
            make_binding(
                browser, account, service["sid"], Identity=f"user-{i:02}", Address=f"addr-{i}"
            )
        first = browser.get(f"/console/services/{service['sid']}/bindings?identity=").text
        assert first.count('<td class="identity">') == 50
        next_link = re.search(r'href="\?([^"]*page=PT\d+)"', first)
        assert next_link
        second = browser.get(
            f"/console/services/{service['sid']}/bindings?{next_link[1].replace('&amp;', '&')}"
        ).text
        assert re.findall(r'<td class="identity">([^<]*)</td>', second) == [
            f"user-{i}" for i in range(50, 55)
        ]

    def test_stored_values_are_escaped(self, browser, account, service):
        make_binding(browser, account, service["sid"], Identity=XSS, Address=f'"><img src=x>{XSS}')
        html = browser.get(f"/console/services/{service['sid']}/bindings").text
        assert XSS not in html and "<img src=x>" not in html
        assert ESCAPED in html


def post_notification(client: TestClient, account: Account, service_sid: str, **form) -> dict:
    response = client.post(
        f"/v1/Services/{service_sid}/Notifications", data=form, auth=account.auth
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestNotifications:
    def test_newest_first_with_stored_values_escaped(self, browser, account, service):
        make_binding(browser, account, service["sid"], Identity=XSS)
        first = post_notification(browser, account, service["sid"], Identity=XSS, Body="one")
        second = post_notification(
            browser,
            account,
            service["sid"],
            Identity=XSS,
            Title=XSS,
            Body="two",
            Data='{"html": "</pre><script>alert(2)</script>"}',
        )
        listing = browser.get(f"/console/services/{service['sid']}/notifications").text
        assert listing.index(second["sid"]) < listing.index(first["sid"])
        page = browser.get(f"/console/services/{service['sid']}/notifications/{second['sid']}")
        assert page.status_code == 200
        for html in (listing, page.text):
            assert "<script>alert" not in html
            assert ESCAPED in html
        assert "&lt;/pre&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page.text

    def test_another_accounts_notification_is_not_found(self, client, account, other_account):
        theirs = make_service(client, other_account)
        make_binding(client, other_account, theirs["sid"], Identity="their-user")
        notification = post_notification(
            client, other_account, theirs["sid"], Identity="their-user", Body="secret"
        )
        mine = make_service(client, account)
        signed_in(client, account)
        for path in (
            f"/console/services/{theirs['sid']}/notifications",
            f"/console/services/{theirs['sid']}/notifications/{notification['sid']}",
            # Their notification under my service: still nobody's.
            f"/console/services/{mine['sid']}/notifications/{notification['sid']}",
            f"/console/services/{mine['sid']}/events?notification={notification['sid']}",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "secret" not in response.text

    @pytest.mark.parametrize("page", ["notifications", "notification"])
    def test_a_delivery_that_moves_on_while_the_page_is_read_still_refreshes_it(
        self, browser, account, service, engine, monkeypatch, page
    ):
        """On PostgreSQL a page's reads are separate snapshots (autocommit): a delivery
        recorded between them must leave the page a stamp older than what it shows, never
        newer, or the event stream never sends a different one and the page stays stale (seen
        in CI: `sending` for good)."""
        make_binding(
            browser,
            account,
            service["sid"],
            Identity="bob",
            BindingType="sms",
            Address="+15555550100",
        )
        sent = post_notification(browser, account, service["sid"], Identity="bob", Body="hi")
        with engine.connect() as conn:
            notification_id = conn.execute(
                select(Notification.id).where(Notification.sid == sent["sid"])
            ).scalar_one()

        def statuses() -> set[str]:
            with engine.connect() as conn:
                found = conn.execute(
                    select(Delivery.status).where(Delivery.notification_id == notification_id)
                )
                return set(found.scalars())

        deadline = time.monotonic() + 10
        while statuses() & {"pending", "sending"}:  # the worker is done with it
            assert time.monotonic() < deadline, statuses()
            time.sleep(0.05)

        reads: list[str] = []

        def moving_on(module, name):
            read = getattr(module, name)

            def wrapped(*args, **kwargs):
                result = read(*args, **kwargs)
                reads.append(name)
                if len(reads) == 1:  # between the page's stamp and its content, either order
                    with engine.begin() as conn:
                        conn.execute(
                            update(Delivery)
                            .where(Delivery.notification_id == notification_id)
                            .values(status="failed")
                        )
                return result

            monkeypatch.setattr(module, name, wrapped)

        path = f"/console/services/{service['sid']}/notifications"
        if page == "notifications":
            moving_on(watched, "service_stamp")
            moving_on(watched, "delivery_summaries")
        else:
            path = f"{path}/{sent['sid']}"
            moving_on(watched, "notification_stamp")
            moving_on(notification_operations, "list_deliveries")
        html = browser.get(path).text
        assert len(reads) == 2, reads
        monkeypatch.undo()  # the stamp of now, read unwrapped
        with engine.connect() as conn:
            if page == "notifications":
                service_id = conn.execute(
                    select(Service.id).where(Service.sid == service["sid"])
                ).scalar_one()
                now = watched.service_stamp(conn, service_id)
            else:
                now = watched.notification_stamp(conn, notification_id)
        shown = re.search(r'data-stamp="([0-9a-f]+)"', html)
        assert shown, html
        assert 'class="status failed"' in html or shown[1] != now

    def test_the_send_form_uses_the_apis_rules_and_shows_their_errors(
        self, browser, account, service
    ):
        make_binding(browser, account, service["sid"], Identity="alice")
        token = csrf_token(browser)
        path = f"/console/services/{service['sid']}/notifications"
        refused = browser.post(
            path,
            data={
                "csrf_token": token,
                "target_kind": "Identity",
                "target": "alice",
                "title": "Hi",
                "data": "[1, 2]",
            },
        )
        assert refused.status_code == 400
        assert "Parameter &#39;Data&#39; is invalid" in refused.text
        assert 'value="Hi"' in refused.text  # what was typed is kept
        sent = browser.post(
            path,
            data={
                "csrf_token": token,
                "target_kind": "Tag",
                "target": "all",
                "body": "to everyone",
                "data": '{"a": 1}',
            },
            follow_redirects=False,
        )
        assert sent.status_code == 303
        sid = sent.headers["location"].rsplit("/", 1)[1]
        api = browser.get(f"/v1/Services/{service['sid']}/Notifications/{sid}", auth=account.auth)
        assert api.status_code == 200
        assert (api.json()["tags"], api.json()["body"], api.json()["data"]) == (
            ["all"],
            "to everyone",
            {"a": 1},
        )

    @pytest.mark.parametrize("token", ["\u00e9", "x" * 5000])
    def test_a_csrf_token_of_any_text_is_refused(self, browser, account, service, token):
        response = browser.post(
            f"/console/services/{service['sid']}/notifications",
            data={"target_kind": "Tag", "target": "all", "body": "x", "csrf_token": token},
        )
        assert response.status_code == 403
        signed_out = browser.post("/console/sign-out", data={"csrf_token": token})
        assert signed_out.status_code == 403
        listed = browser.get(f"/v1/Services/{service['sid']}/Notifications", auth=account.auth)
        assert listed.json()["notifications"] == []

    def test_the_send_form_needs_the_csrf_token(self, browser, account, service):
        response = browser.post(
            f"/console/services/{service['sid']}/notifications",
            data={"target_kind": "Tag", "target": "all", "body": "x"},
        )
        assert response.status_code == 403
        listed = browser.get(f"/v1/Services/{service['sid']}/Notifications", auth=account.auth)
        assert listed.json()["notifications"] == []


class TestDisabled:
    def test_off_by_setting_is_a_twilio_404(self, settings, engine, account):
        with TestClient(
            create_app(settings.model_copy(update={"console_enabled": False}))
        ) as client:
            for path in ("/console", "/console/", "/console/sign-in", "/console/static/console.js"):
                response = client.get(path)
                assert response.status_code == 404
                assert response.json()["code"] == 20404
            assert sign_in(client, *account.auth).status_code == 404

    def test_default_is_on_for_sqlite_and_off_for_postgresql(self):
        assert Settings(database_url="sqlite:///x.db").console_on
        assert not Settings(database_url="postgresql+psycopg://u@h/db").console_on
        assert Settings(database_url="postgresql+psycopg://u@h/db", console_enabled=True).console_on
        assert not Settings(database_url="sqlite:///x.db", console_enabled=False).console_on

    def test_the_environment_variable_turns_it_on(self, monkeypatch):
        monkeypatch.setenv("NOTIFY_CONSOLE_ENABLED", "true")
        assert Settings(database_url="postgresql+psycopg://u@h/db").console_on


def read_event(lines: Iterator[str], deadline: float) -> tuple[str, str]:
    """The next `event:`/`data:` pair of a server-sent event stream (comments skipped)."""
    event = data = ""
    for line in lines:
        assert time.monotonic() < deadline, "no event in time"
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            return event, data
    raise AssertionError("the stream ended")


def requests_counted(base_url: str, operation: str) -> float:
    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": "Bearer console-test"}).text
    found = re.findall(
        rf'notify_requests_total{{[^}}]*operation="{operation}"[^}}]*}} ([0-9.e+]+)', text
    )
    return sum(float(value) for value in found)


class TestLiveEvents:
    """A real server: the stream, a notification showing up in it, its end on disconnect,
    and a prompt shutdown with a stream open."""

    @pytest.fixture
    def server(self, database_url: str, engine: Engine):
        env = {"NOTIFY_CONSOLE_ENABLED": "true", "NOTIFY_METRICS_TOKEN": "console-test"}
        with live_server(database_url, env=env) as server:
            yield server

    @pytest.fixture
    def http(self, server, account: Account) -> Iterator[httpx.Client]:
        with httpx.Client(base_url=server.base_url, timeout=10, follow_redirects=True) as http:
            response = http.post(
                "/console/sign-in", data={"username": account.sid, "password": account.auth_token}
            )
            assert response.status_code == 200 and "Services" in response.text
            yield http

    def test_a_new_notification_changes_the_stream_within_a_second(self, http, account):
        service = http.post("/v1/Services", auth=account.auth).json()
        http.post(
            f"/v1/Services/{service['sid']}/Bindings",
            auth=account.auth,
            data={"Identity": "alice", "BindingType": "apn", "Address": "token-1"},
        )
        with http.stream("GET", f"/console/services/{service['sid']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["content-security-policy"] == POLICY
            lines = stream.iter_lines()
            event, first = read_event(lines, time.monotonic() + 5)
            assert event == "change"
            posted = time.monotonic()
            created = http.post(
                f"/v1/Services/{service['sid']}/Notifications",
                auth=account.auth,
                data={"Identity": "alice", "Body": "hi"},
            )
            assert created.status_code == 201
            event, second = read_event(lines, posted + 5)
            assert event == "change" and second != first
            assert time.monotonic() - posted < 1.0

    def test_the_stream_needs_a_session_and_the_accounts_own_service(
        self, server, http, account, other_account
    ):
        theirs = httpx.post(f"{server.base_url}/v1/Services", auth=other_account.auth).json()
        assert http.get(f"/console/services/{theirs['sid']}/events").status_code == 404
        mine = http.post("/v1/Services", auth=account.auth).json()
        anonymous = httpx.get(f"{server.base_url}/console/services/{mine['sid']}/events")
        assert anonymous.status_code == 401

    def test_the_stream_ends_when_the_client_goes(self, server, http, account):
        service = http.post("/v1/Services", auth=account.auth).json()
        before = requests_counted(server.base_url, "events")
        with http.stream("GET", f"/console/services/{service['sid']}/events") as stream:
            read_event(stream.iter_lines(), time.monotonic() + 5)
        # The server finishes (and counts) the request only when its stream has ended.
        deadline = time.monotonic() + 5
        while requests_counted(server.base_url, "events") <= before:
            assert time.monotonic() < deadline, "the stream kept running after the client left"
            time.sleep(0.1)

    def test_idle_streams_hold_no_database_connection(self, server, http, account):
        # More open streams than the engine's pool has connections (20 + 20 overflow): were a
        # stream to keep one between polls, the API behind them would wait for the pool.
        service = http.post("/v1/Services", auth=account.auth).json()
        path = f"/console/services/{service['sid']}/events"

        async def open_streams() -> float:
            limits = httpx.Limits(max_connections=STREAMS + 1)
            async with (
                httpx.AsyncClient(
                    base_url=server.base_url, cookies=http.cookies, timeout=10, limits=limits
                ) as client,
                contextlib.AsyncExitStack() as streams,
            ):
                for _ in range(STREAMS):
                    stream = await streams.enter_async_context(client.stream("GET", path))
                    assert stream.status_code == 200
                started = time.monotonic()
                listed = await client.get("/v1/Services", auth=account.auth)
                assert listed.status_code == 200
                return time.monotonic() - started

        assert asyncio.run(open_streams()) < 2.0

    def test_an_open_stream_does_not_hold_up_shutdown(self, server, http, account):
        service = http.post("/v1/Services", auth=account.auth).json()
        with http.stream("GET", f"/console/services/{service['sid']}/events") as stream:
            lines = stream.iter_lines()
            read_event(lines, time.monotonic() + 5)
            stopped = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=5) == 0
            assert time.monotonic() - stopped < 3.0
