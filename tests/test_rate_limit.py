"""Per-account rate limiting (a token bucket per account and process): Twilio's 429, its
Retry-After, other accounts untouched, refills over time, off by default, never before auth.

The limiter's clock is replaced by one the test moves, so nothing here sleeps.
"""

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from notify_server import ratelimit
from notify_server.app import create_app
from tests.factories import make_api_key, make_service

TOO_MANY = {
    "code": 20429,
    "message": "Too Many Requests",
    "more_info": "https://www.twilio.com/docs/errors/20429",
    "status": 429,
}
PER_SECOND = 2
BURST = 3


class Clock:
    """Stands in for time.monotonic() inside the limiter only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


METRICS_TOKEN = "scrape-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def limited_client(settings, **limits) -> TestClient:
    update = {"worker_enabled": False, "metrics_token": METRICS_TOKEN, **limits}
    app = create_app(settings.model_copy(update=update))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def limited(settings, engine, clock) -> Iterator[TestClient]:
    with limited_client(
        settings, rate_limit_per_second=PER_SECOND, rate_limit_burst=BURST
    ) as client:
        yield client


def assert_too_many(response, retry_after: int = 1) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == TOO_MANY
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == str(retry_after)
    assert response.headers["twilio-request-id"].startswith("RQ")
    assert response.headers["access-control-allow-origin"] == "*"


def statuses(client, auth, count: int, path: str = "/v1/Services", **kwargs) -> list[int]:
    return [client.get(path, auth=auth, **kwargs).status_code for _ in range(count)]


class TestLimit:
    def test_fourth_immediate_request_is_429(self, limited, account):
        assert statuses(limited, account.auth, BURST) == [200] * BURST
        assert_too_many(limited.get("/v1/Services", auth=account.auth))

    def test_every_operation_draws_from_the_same_bucket(self, limited, clock, account):
        service = limited.post("/v1/Services", auth=account.auth)
        assert service.status_code == 201
        sid = service.json()["sid"]
        assert limited.get(f"/v1/Services/{sid}", auth=account.auth).status_code == 200
        bindings = f"/v1/Services/{sid}/Bindings"
        assert limited.get(bindings, auth=account.auth).status_code == 200
        form = {"Identity": "alice", "BindingType": "apn", "Address": "a1"}
        limited_post = limited.post(bindings, data=form, auth=account.auth)
        assert_too_many(limited_post)
        # Nothing was stored by the refused request.
        clock.advance(1)
        assert limited.get(bindings, auth=account.auth).json()["bindings"] == []

    def test_failed_requests_of_an_authenticated_caller_count(self, limited, account):
        unknown = "/v1/Services/IS" + "0" * 32
        assert statuses(limited, account.auth, BURST, unknown) == [404] * BURST
        assert_too_many(limited.get("/v1/Services", auth=account.auth))

    def test_api_keys_share_their_accounts_bucket(self, limited, engine, account):
        key = make_api_key(engine, account.sid)
        assert statuses(limited, account.auth, 2) == [200, 200]
        assert limited.get("/v1/Services", auth=key).status_code == 200
        assert_too_many(limited.get("/v1/Services", auth=key))
        assert_too_many(limited.get("/v1/Services", auth=account.auth))

    def test_another_account_is_not_limited(self, limited, account, other_account):
        assert statuses(limited, account.auth, BURST + 2) == [200] * BURST + [429, 429]
        assert statuses(limited, other_account.auth, BURST) == [200] * BURST
        assert_too_many(limited.get("/v1/Services", auth=other_account.auth))

    def test_burst_is_the_limit_of_what_accumulates(self, limited, clock, account):
        clock.advance(3600)
        assert statuses(limited, account.auth, BURST + 1) == [200] * BURST + [429]


class TestRefill:
    def test_passes_again_after_retry_after(self, limited, clock, account):
        statuses(limited, account.auth, BURST)
        refused = limited.get("/v1/Services", auth=account.auth)
        assert_too_many(refused, retry_after=1)
        clock.advance(int(refused.headers["retry-after"]))
        # One second at 2 per second: two more, then refused again.
        assert statuses(limited, account.auth, 3) == [200, 200, 429]

    def test_one_token_per_interval(self, limited, clock, account):
        start = clock.now
        statuses(limited, account.auth, BURST)
        clock.now = start + 0.4
        assert_too_many(limited.get("/v1/Services", auth=account.auth), retry_after=1)
        clock.now = start + 0.5
        assert statuses(limited, account.auth, 2) == [200, 429]
        clock.now = start + 1.0
        assert statuses(limited, account.auth, 2) == [200, 429]

    def test_refused_requests_do_not_push_the_wait_back(self, limited, clock, account):
        start = clock.now
        statuses(limited, account.auth, BURST)
        for step in range(20):
            clock.now = start + step * 0.02
            assert_too_many(limited.get("/v1/Services", auth=account.auth))
        # 0.4 s spent refused; the token is due at 0.5 s all the same.
        clock.now = start + 0.5
        assert limited.get("/v1/Services", auth=account.auth).status_code == 200

    @pytest.mark.parametrize(
        ("per_second", "burst", "retry_after"),
        [(2, 3, 1), (0.5, 1, 2), (0.3, 1, 4), (0.1, 2, 10)],
    )
    def test_retry_after_is_whole_seconds_until_the_next_token(
        self, settings, engine, clock, account, per_second, burst, retry_after
    ):
        with limited_client(
            settings, rate_limit_per_second=per_second, rate_limit_burst=burst
        ) as client:
            start = clock.now
            assert statuses(client, account.auth, burst) == [200] * burst
            assert_too_many(client.get("/v1/Services", auth=account.auth), retry_after)
            # Just before the next token is due: still refused.
            clock.now = start + 1 / per_second - 0.01
            assert client.get("/v1/Services", auth=account.auth).status_code == 429
            clock.now = start + retry_after
            assert client.get("/v1/Services", auth=account.auth).status_code == 200


class TestNotLimited:
    def test_off_by_default(self, client, account, clock):
        service = make_service(client, account)
        path = f"/v1/Services/{service['sid']}/Bindings"
        assert set(statuses(client, account.auth, 250, path)) == {200}

    def test_unauthenticated_requests_are_401_and_draw_nothing(self, limited, account):
        wrong = (account.sid, "not-the-token")
        for auth in (None, wrong):
            for _ in range(BURST + 2):
                response = limited.get("/v1/Services", auth=auth)
                assert response.status_code == 401
                assert response.json()["code"] == 20003
                assert "retry-after" not in response.headers
        assert statuses(limited, account.auth, BURST) == [200] * BURST

    def test_a_limited_account_with_a_wrong_token_is_401(self, limited, account):
        statuses(limited, account.auth, BURST + 1)
        response = limited.get("/v1/Services", auth=(account.sid, "not-the-token"))
        assert response.status_code == 401
        assert response.json()["code"] == 20003

    def test_malformed_sids_are_404_before_the_limit(self, limited, account):
        statuses(limited, account.auth, BURST + 1)
        response = limited.get("/v1/Services/ISzz", auth=account.auth)
        assert response.status_code == 404
        assert response.json()["code"] == 20404

    def test_operational_endpoints_are_never_limited(self, limited, account):
        statuses(limited, account.auth, BURST + 1)
        for path in ("/healthz", "/readyz"):
            assert statuses(limited, account.auth, 10, path) == [200] * 10
        assert statuses(limited, None, 10, "/metrics", headers=METRICS_AUTH) == [200] * 10

    def test_429s_are_counted_in_the_metrics(self, limited, account):
        statuses(limited, account.auth, BURST + 2)
        families = text_string_to_metric_families(
            limited.get("/metrics", headers=METRICS_AUTH).text
        )
        counted = {
            (sample.labels["operation"], sample.labels["status"]): sample.value
            for family in families
            for sample in family.samples
            if sample.name == "notify_requests_total"
        }
        assert counted == {("list_services", "200"): 3, ("list_services", "429"): 2}


class TestChosenKeys:
    """The console's sign-in limiter is keyed by names a stranger picks: its buckets are capped."""

    def test_past_max_keys_made_up_keys_cannot_reset_a_limited_one(self, monkeypatch):
        now = [1000.0]
        monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
        limiter = ratelimit.RateLimiter(0.1, 2, max_keys=3)  # two tries, then one per 10 s
        for key in ("victim", "victim", "b", "c"):
            limiter.check(key)
        # Every bucket is holding its key back: a new key waits for the first to fill again.
        with pytest.raises(ratelimit.TooManyRequests) as refused:
            limiter.check("d")
        assert refused.value.retry_after == pytest.approx(10.0)
        now[0] += 5
        with pytest.raises(ratelimit.TooManyRequests):
            limiter.check("e")  # still no room: and no pass over the buckets to find none
        with pytest.raises(ratelimit.TooManyRequests):
            limiter.check("victim")  # the limited key was not forgotten
        now[0] += 5
        limiter.check("d")  # b and c have filled up again: forgotten, room for d
        assert set(limiter._buckets) == {"victim", "d"}
        limiter.check("victim")  # refilled by its own rate, not by a reset

    def test_without_max_keys_nothing_is_forgotten(self):
        limiter = ratelimit.RateLimiter(0.001, 1)
        for key in range(100):
            limiter.check(str(key))
        with pytest.raises(ratelimit.TooManyRequests):
            limiter.check("0")
