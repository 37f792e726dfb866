"""Per-account request rate limiting: a token bucket per account, in each process."""

import math
import time

from notify_server.errors import TwilioError


class TooManyRequests(TwilioError):
    status, code = 429, 20429

    def __init__(self, retry_after: float) -> None:
        super().__init__("Too Many Requests")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class RateLimiter:
    def __init__(self, per_second: float, burst: int) -> None:
        self._rate = per_second
        self._burst = float(max(burst, 1))
        # account sid -> (tokens left, when last refilled)
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, account_sid: str) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        tokens, then = self._buckets.get(account_sid, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[account_sid] = (tokens, now)
            raise TooManyRequests((1.0 - tokens) / self._rate)
        self._buckets[account_sid] = (tokens - 1.0, now)
