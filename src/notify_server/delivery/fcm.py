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
from notify_server.credentials.schemas import GOOGLE_PROJECT_ID
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.h2client import H2Client, H2Error, Response
from notify_server.wire import quote_segment

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 3600
# Renew a cached access token this long before Google says it expires.
TOKEN_MARGIN_SECONDS = 300
MAX_RESPONSE_CHARS = 2000
# What of the token endpoint's answer is shown in a delivery's error_message.
MAX_DETAIL_CHARS = 200

_TWILIO_DATA_KEYS = (
    ("body", "twi_body"),
    ("title", "twi_title"),
    ("sound", "twi_sound"),
    ("action", "twi_action"),
)
_NOTIFICATION_KEYS = frozenset(("title", "body", "image"))
_NATIVE_KEYS = ("android", "apns", "webpush", "fcm_options")
_LEGACY_RETIRED = (
    "Google retired FCM legacy server keys (the credential's ApiKey/Secret) in 2024; "
    "give credential {sid} a ServiceAccount (the Firebase service-account JSON key) to "
    "send through FCM HTTP v1"
)


class FcmError(Exception):
    """A delivery that cannot succeed as configured; the message says why."""


class _TransientError(Exception):
    pass


class FcmChannel:
    name = "fcm"

    def __init__(self, settings: Settings) -> None:
        self._base_url = settings.fcm_url.rstrip("/")
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
            account = _service_account(job)
            request = render(job)
        except FcmError as error:
            return Result(Outcome.FAILED, error_message=str(error))
        try:
            token = await self._access_token(account)
        except FcmError as error:
            return Result(Outcome.FAILED, error_message=str(error))
        except _TransientError as error:
            return Result(Outcome.RETRY, error_message=str(error))
        url = f"{self._base_url}/v1/projects/{quote_segment(account['project_id'])}/messages:send"
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        body = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self._sender.request("POST", url, headers, body)
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
        except (ValueError, TypeError, jwt.PyJWTError):
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


def _service_account(job: Job) -> dict[str, str]:
    credential = job.credential
    if credential is None:  # the channel set sends these to the log channel
        raise FcmError("No FCM credential for this binding")
    secrets = credential.secrets
    raw = secrets.get("service_account")
    if not raw:
        if secrets.get("secret") or secrets.get("api_key"):
            raise FcmError(_LEGACY_RETIRED.format(sid=credential.sid))
        raise FcmError(
            f"Credential {credential.sid} has no ServiceAccount (the Firebase service-account"
            " JSON key) to send through FCM HTTP v1"
        )
    try:
        account = json.loads(raw)
    except (ValueError, RecursionError):
        account = None
    if not isinstance(account, dict) or not all(
        isinstance(account.get(k), str) and account.get(k)
        for k in ("project_id", "client_email", "private_key")
    ):
        raise FcmError(
            f"Credential {credential.sid}'s ServiceAccount is not a service-account JSON key"
            " with project_id, client_email and private_key"
        )
    if not GOOGLE_PROJECT_ID.fullmatch(account["project_id"]):
        raise FcmError(
            f"Credential {credential.sid}'s ServiceAccount project_id is not a Google project id"
        )
    return account


def render(job: Job) -> dict[str, Any]:
    """The messages:send request body for one job."""
    content = job.content
    data: dict[str, str] = {}
    for field, key in _TWILIO_DATA_KEYS:
        if content.get(field) is not None:
            data[key] = content[field]
    data.update(_string_values(content.get("data") or {}))
    message: dict[str, Any] = {
        "token": job.address,
        "data": data,
        "android": {
            "priority": "HIGH" if content.get("priority", "high") == "high" else "NORMAL",
            "ttl": f"{int(content.get('ttl', 0))}s",
        },
    }
    request: dict[str, Any] = {"message": message}
    override = content.get("gcm" if job.binding_type == "gcm" else "fcm")
    if override:
        _apply_override(request, override)
    return request


def _apply_override(request: dict[str, Any], override: dict[str, Any]) -> None:
    message = request["message"]
    android = message["android"]
    notification = override.get("notification")
    if isinstance(notification, dict):
        for key, value in notification.items():
            if key in _NOTIFICATION_KEYS:
                message.setdefault("notification", {})[key] = value
            else:
                android_key = "channel_id" if key == "android_channel_id" else key
                if key.endswith("_loc_args") and isinstance(value, str):
                    value = _json_list(value, key)
                android.setdefault("notification", {})[android_key] = value
    elif notification is not None:
        raise FcmError("Override 'notification' must be a JSON object")
    data = override.get("data")
    if isinstance(data, dict):
        message["data"].update(_string_values(data))
    elif data is not None:
        raise FcmError("Override 'data' must be a JSON object")
    if "priority" in override:
        priority = str(override["priority"])
        android["priority"] = {"high": "HIGH", "normal": "NORMAL"}.get(
            priority.lower(), priority.upper()
        )
    if "time_to_live" in override:
        try:
            android["ttl"] = f"{int(override['time_to_live'])}s"
        except (TypeError, ValueError):
            raise FcmError("Override 'time_to_live' must be a number of seconds") from None
    for key in ("collapse_key", "restricted_package_name", "direct_boot_ok"):
        if key in override:
            android[key] = override[key]
    for key, aps_key in (
        ("content_available", "content-available"),
        ("mutable_content", "mutable-content"),
    ):
        if override.get(key):
            apns = message.setdefault("apns", {})
            apns.setdefault("payload", {}).setdefault("aps", {})[aps_key] = 1
    if override.get("dry_run"):
        request["validate_only"] = True
    for key in _NATIVE_KEYS:
        value = override.get(key)
        if isinstance(value, dict):
            message[key] = _deep_merge(message.get(key, {}), value)
        elif value is not None:
            raise FcmError(f"Override '{key}' must be a JSON object")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _string_values(values: dict[str, Any]) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in values.items()
    }


def _json_list(value: str, key: str) -> Any:
    try:
        parsed = json.loads(value)
    except ValueError:
        raise FcmError(f"Override 'notification.{key}' must be a JSON array") from None
    if not isinstance(parsed, list):
        raise FcmError(f"Override 'notification.{key}' must be a JSON array")
    return parsed


def answer(response: Response) -> Result:
    """An FCM v1 answer as a delivery result."""
    status = response.status
    text = response.body.decode(errors="replace")[:MAX_RESPONSE_CHARS]
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
