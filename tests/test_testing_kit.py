"""notify_server.testing used the way a user would: a test file of theirs, run by pytest with
the plugin the `pytest11` entry point loads, against the real server it starts."""

import time

import httpx
import pytest

from notify_server.testing import serve

pytest_plugins = ["pytester"]

USERS_TESTS = """
import pytest
from twilio.base.exceptions import TwilioRestException


def test_a_notification_reaches_each_binding(notify_server, notify_client):
    service = notify_client.notify.v1.services(notify_server.service_sid)
    service.bindings.create(identity="alice", binding_type="apn", address="token-1")
    service.bindings.create(identity="alice", binding_type="sms", address="+15551234567")
    notification = service.notifications.create(identity=["alice"], body="Hello")

    deliveries = notify_server.wait_for_deliveries(notification.sid, count=2, timeout=10)

    assert sorted((d["binding_type"], d["status"]) for d in deliveries) == [
        ("apn", "sent"),
        ("sms", "sent"),
    ]
    assert {d["notification_sid"] for d in deliveries} == {notification.sid}
    by_type = {d["binding_type"]: d["provider_request"] for d in deliveries}
    assert by_type["apn"]["body"] == {"aps": {"alert": {"body": "Hello"}}}
    assert by_type["apn"]["url"].endswith("/3/device/token-1")
    assert dict(by_type["sms"]["body"])["Body"] == "Hello"
    assert dict(by_type["sms"]["body"])["To"] == "+15551234567"


def test_the_session_shares_one_server(notify_server, notify_client):
    assert notify_server.base_url.startswith("http://127.0.0.1:")
    assert notify_server.account_sid.startswith("AC")
    assert notify_client.notify.v1.services(notify_server.service_sid).fetch().sid == (
        notify_server.service_sid
    )


def test_a_fresh_service_is_one_call_away(notify_server, notify_client):
    sid = notify_server.create_service(FriendlyName="mine")
    assert notify_client.notify.v1.services(sid).fetch().friendly_name == "mine"


def test_errors_are_twilios(notify_client):
    with pytest.raises(TwilioRestException) as caught:
        notify_client.notify.v1.services("IS" + "0" * 32).fetch()
    assert (caught.value.status, caught.value.code) == (404, 20404)
"""


USERS_FAILING_TEST = """
def test_waits(notify_server, notify_client):
    service = notify_client.notify.v1.services(notify_server.service_sid)
    service.bindings.create(identity="bob", binding_type="apn", address="token-2")
    notification = service.notifications.create(identity=["bob"], body="Hi")
    notify_server.wait_for_deliveries(notification.sid, count=2, timeout=0.5)
"""


def test_a_users_suite_passes_and_a_missing_delivery_fails_clearly(
    pytester: pytest.Pytester,
) -> None:
    # One run (one server start) for both files: the session shares the server.
    pytester.makepyfile(test_users_app=USERS_TESTS, test_users_failing=USERS_FAILING_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_users_app.py ....*"])
    result.stdout.re_match_lines(
        [
            r"E\s+AssertionError: expected 2 finished deliveries of NT[0-9a-f]{32} within 0.5 s,"
            r" 1 finished of 1: apn 'token-2' sent$",
            r"FAILED test_users_failing.py::test_waits - AssertionError: expected 2 fini",
        ]
    )


def test_fixtures_start_nothing_unless_asked(pytester: pytest.Pytester) -> None:
    # A suite that never names a fixture starts no server (and so takes no port or time).
    pytester.makepyfile(
        test_plain="""
import notify_server.testing


def test_plain(request):
    # Loaded by its entry point, not by this file's import.
    assert request.config.pluginmanager.has_plugin("notify_server")
    assert "notify_server" not in request.fixturenames
"""
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "--setup-show")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*(fixtures used: request)*"])
    result.stdout.no_fnmatch_line("*SETUP    S notify_server*")


def test_the_context_manager_outside_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's own settings stay out: were these used, the SMS below would go to a
    # provider that is not there and fail.
    monkeypatch.setenv("NOTIFY_SMS_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NOTIFY_SMS_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("NOTIFY_SMS_AUTH_TOKEN", "token")
    monkeypatch.setenv("NOTIFY_SMS_FROM", "+15550000000")
    with serve() as server:
        # Another account's credentials are refused: the kit's account is a real one.
        response = httpx.get(f"{server.base_url}/v1/Services", auth=("AC" + "0" * 32, "x"))
        assert response.status_code == 401
        unknown = "NT" + "0" * 32
        with pytest.raises(AssertionError, match=rf"answered 404 for .*{unknown}"):
            server.wait_for_deliveries(unknown, timeout=0.1)
        service = server.client().notify.v1.services(server.service_sid)
        notification = service.notifications.create(
            to_binding=['{"binding_type":"sms","address":"+15550001"}'], body="hi"
        )
        [delivery] = server.wait_for_deliveries(notification.sid, timeout=10)
        assert delivery["status"] == "sent", delivery
        assert delivery["provider_message_id"].startswith("log-")
        # More deliveries than asked for fail at once, without waiting out the timeout.
        started = time.monotonic()
        with pytest.raises(AssertionError, match="expected 0 deliveries of NT.*there are 1"):
            server.wait_for_deliveries(notification.sid, count=0, timeout=30)
        assert time.monotonic() - started < 10
        base_url, process_log = server.base_url, server.log_file
    # Stopped and cleaned up on exit.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/healthz", timeout=1)
    assert not process_log.exists()
