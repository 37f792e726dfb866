"""HTTP Basic (`AC…:auth_token` or `SK…:secret`) -> the caller's account SID."""

import base64
import hashlib
import time

from notify_server.accounts.operations import verify_credentials
from notify_server.db import Database
from notify_server.errors import AuthenticationFailed

_CACHE_LIMIT = 10_000


class Authenticator:
    """Verifies credentials, remembering good ones briefly so the hot path skips the database."""

    def __init__(self, database: Database, cache_seconds: float) -> None:
        self._database = database
        self._cache_seconds = cache_seconds
        # Keyed by a digest of the header, so no plain secret lingers in the cache.
        self._verified: dict[bytes, tuple[str, float]] = {}

    async def account_sid(self, authorization: str | None) -> str:
        if not authorization or authorization[:6].lower() != "basic ":
            raise AuthenticationFailed()
        key = hashlib.sha256(authorization.encode()).digest()
        now = time.monotonic()
        hit = self._verified.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except ValueError:  # not base64, not ASCII, or not UTF-8 underneath
            raise AuthenticationFailed() from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise AuthenticationFailed()
        account_sid = await self._database.read(
            lambda conn: verify_credentials(conn, username, password)
        )
        if account_sid is None:
            raise AuthenticationFailed()
        if self._cache_seconds > 0:
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[key] = (account_sid, now + self._cache_seconds)
        return account_sid
