"""FCM HTTP v1 for fcm and gcm bindings (Google retired GCM and the legacy FCM API; both
binding types go through FCM v1).

Authentication: the credential's ServiceAccount (the Firebase service-account JSON key) signs
an RS256 JWT assertion {iss: client_email, scope: firebase.messaging, aud: Google's token URI,
iat, exp: iat + 3600}, exchanged at NOTIFY_FCM_TOKEN_URL (Google's by default) for an OAuth2
access token. The key's own token_uri is never followed: it is the tenant's text, and posting a
signed assertion wherever it points would let any account make us call its chosen address and
read the answer back. project_id must be a Google project id and is percent-encoded into the
send URL. The access token is cached per client_email (and private key: another
account's credential naming the same client_email must prove the key itself) until shortly
before it expires. Twilio's legacy credentials (ApiKey / Secret: a Firebase "server key")
cannot send any more: Google shut the legacy API down in 2024, so such a delivery fails
saying so.

The message, as Twilio rendered a notification for FCM/GCM:
    message.token             the binding's address
    message.data              twi_body, twi_title, twi_sound, twi_action from Body, Title,
                              Sound, Action (those given), then the notification's Data keys;
                              values that are not strings are JSON-encoded (FCM data values
                              must be strings)
    message.android.priority  Priority high -> "HIGH", low -> "NORMAL"
    message.android.ttl       Ttl seconds -> "<ttl>s"

Then the `Fcm` override (the `Gcm` override for gcm bindings) is merged last. Twilio's
overrides used the legacy FCM (HTTP) shape; each legacy key is mapped to its v1 place:
    notification.title/body/image      -> message.notification.title/body/image
    notification.<other key>           -> message.android.notification.<key>
                                          (android_channel_id -> channel_id; *_loc_args given as
                                          a JSON string are decoded to a list)
    data                               -> message.data (values stringified as above)
    priority "high" | "normal"         -> message.android.priority "HIGH" | "NORMAL"
    time_to_live (seconds)             -> message.android.ttl "<seconds>s"
    collapse_key                       -> message.android.collapse_key
    restricted_package_name            -> message.android.restricted_package_name
    direct_boot_ok                     -> message.android.direct_boot_ok
    content_available: true            -> message.apns.payload.aps["content-available"] = 1
    mutable_content: true              -> message.apns.payload.aps["mutable-content"] = 1
    dry_run: true                      -> the request's validate_only
The v1-native keys android, apns, webpush and fcm_options are deep-merged into the message
after the mapped ones (so they win). token, topic and condition are ignored (Notify addresses
the message itself), as is any other key: legacy FCM ignored unknown keys, while v1 would
reject the whole message.

Answers: 200 -> sent (provider_message_id = the response's "name"); UNREGISTERED (404 or 400)
or a 400 INVALID_ARGUMENT about the registration token -> failed, and the binding is deleted;
401 -> the cached access token is dropped and the delivery retried; 429, 5xx and transport
errors -> retried; any other 4xx -> failed with FCM's message.
"""

import asyncio
import functools
import hashlib
import json
import time
from http import HTTPStatus
from typing import Any

import httpx
import jwt

from notify_server.config import Settings
from notify_server.crypto import UNLOADABLE_KEY
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.h2client import H2Client, H2Error, Response
from notify_server.delivery.rendering import (
    Unsendable,
    fcm_body,
    fcm_headers,
    fcm_message,
    fcm_url,
    service_account,
)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 3600
# Renew a cached access token this long before Google says it expires.
TOKEN_MARGIN_SECONDS = 300
MAX_RESPONSE_CHARS = 2000
# What of the token endpoint's answer is shown in a delivery's error_message.
MAX_DETAIL_CHARS = 200


class FcmError(Unsendable):
    """A delivery that cannot succeed as configured; the message says why."""


class _TransientError(Exception):
    pass


class FcmChannel:
    name = "fcm"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._token_url = settings.fcm_token_url
        # The sends go over one multiplexed HTTP/2 connection; the rare token exchanges stay
        # on httpx.
        self._sender = H2Client(timeout=settings.delivery_timeout_seconds)
        self._client = httpx.AsyncClient(http2=True, timeout=settings.delivery_timeout_seconds)
        # (client_email, key digest) -> (access token, monotonic time to renew it)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._sender.aclose()
        await self._client.aclose()

    async def send(self, job: Job) -> Result:
        try:
            account = service_account(job.credential)
            body = fcm_body(fcm_message(job))
        except Unsendable as error:
            return Result(Outcome.FAILED, error_message=str(error))
        try:
            token = await self._access_token(account)
        except Unsendable as error:
            return Result(Outcome.FAILED, error_message=str(error))
        except _TransientError as error:
            return Result(Outcome.RETRY, error_message=str(error))
        url = fcm_url(self._settings, account["project_id"])
        try:
            response = await self._sender.request("POST", url, fcm_headers(token), body)
        except H2Error as error:
            return Result(Outcome.RETRY, error_message=f"FCM unreachable: {error!r}")
        if response.status == 401:
            # Revoked or expired early: fetch a new one on the next attempt (unless a
            # concurrent delivery already did).
            key = _cache_key(account)
            cached = self._tokens.get(key)
            if cached is not None and cached[0] == token:
                del self._tokens[key]
        return answer(response)

    async def _access_token(self, account: dict[str, str]) -> str:
        key = _cache_key(account)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            token, expires_in = await self._exchange(account)
            margin = min(TOKEN_MARGIN_SECONDS, expires_in / 2)
            self._tokens[key] = (token, time.monotonic() + expires_in - margin)
            return token

    async def _exchange(self, account: dict[str, str]) -> tuple[str, float]:
        now = int(time.time())
        claims = {
            "iss": account["client_email"],
            "scope": SCOPE,
            # Google's endpoint even when NOTIFY_FCM_TOKEN_URL is a proxy (or a test's fake).
            "aud": DEFAULT_TOKEN_URI,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": account["private_key_id"]} if account.get("private_key_id") else None
        try:
            assertion = jwt.encode(claims, account["private_key"], "RS256", headers=headers)
        except (*UNLOADABLE_KEY, jwt.PyJWTError):
            raise FcmError(
                "The credential's ServiceAccount private_key is not a PEM RSA private key"
            ) from None
        try:
            response = await self._client.post(
                self._token_url, data={"grant_type": GRANT_TYPE, "assertion": assertion}
            )
        except httpx.HTTPError as error:
            raise _TransientError(f"FCM OAuth token endpoint unreachable: {error!r}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _TransientError(f"FCM OAuth token endpoint answered {response.status_code}")
        body = _json(response.content)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            detail = ""
            if isinstance(body, dict):
                # OAuth's error code and a short description, never the whole body.
                code, description = body.get("error"), body.get("error_description")
                detail = ": ".join(str(v) for v in (code, description) if isinstance(v, str))
                detail = detail[:MAX_DETAIL_CHARS]
            raise FcmError(
                f"FCM OAuth token request for {account['client_email']} failed"
                f" ({response.status_code}){': ' + detail if detail else ''}"
            )
        try:
            expires_in = float(body.get("expires_in", ASSERTION_LIFETIME))
        except (TypeError, ValueError):
            expires_in = float(ASSERTION_LIFETIME)
        return token, max(expires_in, 0.0)


def _cache_key(account: dict[str, str]) -> tuple[str, str]:
    """Per client_email, and per key: a token obtained with one account's real key must never
    serve another account's credential that merely names the same client_email."""
    digest = hashlib.sha256(account["private_key"].encode()).hexdigest()
    return (account["client_email"], digest)


def answer(response: Response) -> Result:
    """An FCM v1 answer as a delivery result."""
    status = response.status
    text = response.text(MAX_RESPONSE_CHARS)
    body = _json(response.body)
    if status == 200:
        name = body.get("name") if isinstance(body, dict) else None
        return Result(
            Outcome.SENT,
            provider_message_id=name if isinstance(name, str) else None,
            provider_status=status,
            provider_response=text,
        )
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    error_status = str(error.get("status") or "")
    message = str(error.get("message") or _reason_phrase(status))
    codes = _error_codes(error)
    label = next(iter(codes), error_status)
    summary = f"FCM {status}" + (f" {label}" if label else "") + (f": {message}" if message else "")
    provider = functools.partial(Result, provider_status=status, provider_response=text)
    if status in (400, 404) and ("UNREGISTERED" in codes or _bad_token(status, error, codes)):
        return provider(Outcome.FAILED, error_message=summary, unregistered=True)
    if status == 401 or status == 429 or status >= 500:
        return provider(Outcome.RETRY, error_message=summary)
    return provider(Outcome.FAILED, error_message=summary)


def _error_codes(error: dict[str, Any]) -> list[str]:
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [str(d["errorCode"]) for d in details if isinstance(d, dict) and d.get("errorCode")]


def _bad_token(status: int, error: dict[str, Any], codes: list[str]) -> bool:
    """FCM's "The registration token is not a valid FCM registration token" (400)."""
    if status != 400:
        return False
    if not ("INVALID_ARGUMENT" in codes or error.get("status") == "INVALID_ARGUMENT"):
        return False
    if "registration token" in str(error.get("message", "")).lower():
        return True
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        violations = detail.get("fieldViolations") if isinstance(detail, dict) else None
        for violation in violations if isinstance(violations, list) else []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return False


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
