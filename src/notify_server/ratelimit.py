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
    def __init__(self, per_second: float, burst: int, max_keys: int | None = None) -> None:
        self._rate = per_second
        self._burst = float(max(burst, 1))
        # For keys a caller chooses (the console's sign-in names): past this many, buckets
        # that have filled up again are forgotten, so made-up keys cannot grow the process
        # without bound, nor wipe out a bucket that is holding a key back.
        self._max_keys = max_keys
        # account sid -> (tokens left, when last refilled)
        self._buckets: dict[str, tuple[float, float]] = {}
        # Before this, no bucket can have filled up: looking for room is pointless.
        self._no_room_until = 0.0

    def check(self, account_sid: str) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(account_sid)
        if bucket is None and self._max_keys is not None and len(self._buckets) >= self._max_keys:
            self._make_room(now)
        tokens, then = bucket or (self._burst, now)
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[account_sid] = (tokens, now)
            raise TooManyRequests((1.0 - tokens) / self._rate)
        self._buckets[account_sid] = (tokens - 1.0, now)

    def _make_room(self, now: float) -> None:
        """Forget the buckets that are full again (a new bucket would be the same); refuse a
        new key while every bucket is still holding one back."""
        if now >= self._no_room_until:
            full = [
                key
                for key, (tokens, then) in self._buckets.items()
                if tokens + (now - then) * self._rate >= self._burst
            ]
            for key in full:
                del self._buckets[key]
            if full:
                return
            self._no_room_until = min(
                then + (self._burst - tokens) / self._rate
                for tokens, then in self._buckets.values()
            )
        raise TooManyRequests(self._no_room_until - now)
