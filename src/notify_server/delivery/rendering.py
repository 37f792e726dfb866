"""The request each provider receives, or would receive, for one delivery: the one place that
knows the wire formats of APNs, FCM HTTP v1 and the SMS Messages API.

The adapters (apns.py, fcm.py, sms.py) build what they send with these functions, and
`provider_request` puts the same pieces together for the Deliveries listing and the log
channel, with a placeholder where a secret goes (the provider token, the OAuth access token,
HTTP Basic), so what is shown cannot drift from what is sent.

    {"provider": "apns" | "fcm" | "sms" | "facebook-messenger" | "alexa",
     "channel": "apns" | "fcm" | "sms" | "log" | "retired",   # who handles the delivery
     "method": "POST" | None, "url": str | None, "headers": {name: value},
     "body": JSON object (APNs, FCM) | [[name, value], ...] (the SMS form, in order) | None,
     "notes": [what is unknown, or why nothing is sent]}

A JSON body goes on the wire as its compact JSON in key order; the SMS form URL-encoded in order.
"""

import functools
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.x509.oid import NameOID

from notify_server.config import Settings
from notify_server.credentials.schemas import GOOGLE_PROJECT_ID
from notify_server.delivery.channels import CredentialSecrets, Job, channel_name
from notify_server.json_input import read_json
from notify_server.wire import quote_segment

# Where a secret goes on the wire; never the secret itself.
APNS_PROVIDER_TOKEN = "<provider token>"
FCM_ACCESS_TOKEN = "<access token>"
SMS_BASIC_AUTH = "Basic <NOTIFY_SMS_ACCOUNT_SID:NOTIFY_SMS_AUTH_TOKEN>"


class Unsendable(ValueError):
    """A delivery that cannot succeed as configured; the message says why."""


# APNs


# apns-id is derived from the outbox row, so every attempt at one delivery carries the same id.
APNS_ID_NAMESPACE = uuid.UUID("4f0c6d0e-8a47-5c31-9a52-2b1e0a6f7d13")
_APNS_ID_PREFIX = APNS_ID_NAMESPACE.bytes


def apns_id(job: Job) -> str:
    """uuid5(APNS_ID_NAMESPACE, "<notification sid>/<delivery id>"), without building a UUID
    object (it is per push: this is a third of uuid.uuid5's CPU)."""
    name = f"{job.notification_sid}/{job.delivery_id}".encode()
    digest = bytearray(hashlib.sha1(_APNS_ID_PREFIX + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` wins; objects present on both sides are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict):
            # Copied, never shared: the payload is adjusted after merging.
            base_value = merged.get(key)
            merged[key] = deep_merge(base_value if isinstance(base_value, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def build_payload(content: dict[str, Any]) -> dict[str, Any]:
    """Twilio's APNS mapping: aps.alert.{title,body}, aps.sound, aps.category, then Data at the
    top level, then the Apn override deep-merged last. Without an alert it is a background
    push, which Apple wants marked with content-available."""
    aps: dict[str, Any] = {}
    alert = {k: content[k] for k in ("title", "body") if content.get(k)}
    if alert:
        aps["alert"] = alert
    if content.get("sound"):
        aps["sound"] = content["sound"]
    if content.get("action"):
        aps["category"] = content["action"]
    payload = deep_merge({"aps": aps}, content.get("data") or {})
    payload = deep_merge(payload, content.get("apn") or {})
    merged_aps = payload.get("aps")
    if isinstance(merged_aps, dict) and "alert" not in merged_aps:
        merged_aps.setdefault("content-available", 1)
    return payload


def push_type(payload: dict[str, Any]) -> str:
    aps = payload.get("aps")
    return "alert" if isinstance(aps, dict) and "alert" in aps else "background"


def build_headers(job: Job, payload: dict[str, Any]) -> dict[str, str]:
    """The notification's own headers, apns-id first; auth and topic follow (apns_headers)."""
    kind = push_type(payload)
    # Apple: background pushes must go at priority 5 (10 is an error for them).
    high = job.content.get("priority", "high") == "high" and kind == "alert"
    ttl = int(job.content.get("ttl") or 0)
    return {
        "apns-id": apns_id(job),
        "apns-push-type": kind,
        "apns-priority": "10" if high else "5",
        # 0: deliver now or never. Otherwise the notification's own expiry (created + Ttl),
        # so a retry does not extend it.
        "apns-expiration": str(_unix(job.expires_at)) if ttl > 0 else "0",
    }


def apns_base(settings: Settings, sandbox: bool) -> str:
    return (settings.apns_sandbox_url if sandbox else settings.apns_production_url).rstrip("/")


def apns_url(base: str, address: str) -> str:
    return f"{base}/3/device/{quote(address, safe='')}"


def apns_headers(
    job: Job, notification_headers: dict[str, str], authorization: str | None, topic: str | None
) -> dict[str, str]:
    """Every header of one push: apns-id, the notification's (build_headers without apns-id),
    then the provider token (token auth) and the topic, when there is one."""
    headers = {"apns-id": apns_id(job), **notification_headers}
    if authorization is not None:
        headers["authorization"] = f"bearer {authorization}"
    if topic:
        headers["apns-topic"] = topic
    return headers


def apns_token_auth(secrets: dict[str, str]) -> bool:
    return all(secrets.get(k) for k in ("token_key", "key_id", "team_id"))


def apns_topic(secrets: dict[str, str], certificate_topic: str | None) -> str | None:
    """The credential's BundleId; with certificate auth, else the certificate's own app."""
    return secrets.get("bundle_id") or certificate_topic


def certificate_topic(certificate: x509.Certificate) -> str | None:
    """An APNs certificate names its app in the subject's UID (0.9.2342.19200300.100.1.1)."""
    values = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(values[0].value) if values else None


_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def normalise_pem(text: str) -> str:
    """Twilio's Certificate/PrivateKey fields took PEM text, often with its line breaks stripped
    ("-----BEGIN CERTIFICATE-----MIIF...A==-----END CERTIFICATE-----"): rebuild proper PEM."""
    text = text.replace("\\n", "\n")
    blocks = []
    for label, body in _PEM_BLOCK.findall(text):
        encoded = "".join(body.split())
        lines = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
        blocks.append(f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n")
    if not blocks:
        raise ValueError("no PEM block")
    return "".join(blocks)


@functools.lru_cache(maxsize=64)
def _certificate_facts(certificate: str) -> tuple[str | None, datetime]:
    """(the app it names, when it expires); ValueError when the text is no PEM certificate."""
    parsed = x509.load_pem_x509_certificate(normalise_pem(certificate).encode())
    return certificate_topic(parsed), parsed.not_valid_after_utc


def _unix(value: datetime) -> int:
    if value.tzinfo is None:  # stored naive, in UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _apns_request(job: Job, settings: Settings, channel: str) -> dict[str, Any]:
    payload = build_payload(job.content)
    notification_headers = build_headers(job, payload)
    del notification_headers["apns-id"]
    credential = job.credential
    notes: list[str] = []
    authorization = topic = None
    if credential is None:
        base = "<APNs sandbox or production: no credential says which>"
        authorization = "<provider token: no credential>"
        topic = "<apns-topic unknown: no credential>"
        notes.append(
            "No APNs credential: the log channel recorded this delivery and sent nothing; the"
            " host, the authentication and apns-topic depend on the credential"
        )
    else:
        base = apns_base(settings, credential.sandbox)
        secrets = credential.secrets
        if credential.type != "apn":
            notes.append(f"Credential {credential.sid} is a {credential.type} credential: not sent")
        elif apns_token_auth(secrets):
            authorization = APNS_PROVIDER_TOKEN
            topic = secrets.get("bundle_id")
            if not topic:
                notes.append(f"Credential {credential.sid} has no BundleId: not sent")
        elif secrets.get("certificate") and secrets.get("private_key"):
            # Certificate auth: the TLS client certificate authenticates, no header does.
            try:
                certificate_app, expires = _certificate_facts(secrets["certificate"])
            except ValueError:
                notes.append(f"Credential {credential.sid}'s Certificate is no PEM certificate")
            else:
                topic = apns_topic(secrets, certificate_app)
                if expires < datetime.now(UTC):
                    notes.append(f"Credential {credential.sid}'s Certificate expired: not sent")
        else:
            notes.append(f"Credential {credential.sid} has no usable auth: not sent")
    return _request(
        "apns",
        channel,
        apns_url(base, job.address),
        apns_headers(job, notification_headers, authorization, topic),
        payload,
        notes,
    )


# FCM HTTP v1


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


def fcm_url(settings: Settings, project_id: str) -> str:
    return _fcm_url(settings, quote_segment(project_id))


def _fcm_url(settings: Settings, project_segment: str) -> str:
    return f"{settings.fcm_url.rstrip('/')}/v1/projects/{project_segment}/messages:send"


def fcm_headers(access_token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {access_token}", "content-type": "application/json"}


def fcm_body(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def service_account(credential: CredentialSecrets | None) -> dict[str, str]:
    """The credential's service-account key, checked; Unsendable says what is wrong."""
    if credential is None:  # the channel set sends these to the log channel
        raise Unsendable("No FCM credential for this binding")
    secrets = credential.secrets
    raw = secrets.get("service_account")
    if not raw:
        if secrets.get("secret") or secrets.get("api_key"):
            raise Unsendable(_LEGACY_RETIRED.format(sid=credential.sid))
        raise Unsendable(
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
        raise Unsendable(
            f"Credential {credential.sid}'s ServiceAccount is not a service-account JSON key"
            " with project_id, client_email and private_key"
        )
    if not GOOGLE_PROJECT_ID.fullmatch(account["project_id"]):
        raise Unsendable(
            f"Credential {credential.sid}'s ServiceAccount project_id is not a Google project id"
        )
    return account


def fcm_message(job: Job) -> dict[str, Any]:
    """The messages:send request body for one job (fcm.py's docstring has the mapping)."""
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
        raise Unsendable("Override 'notification' must be a JSON object")
    data = override.get("data")
    if isinstance(data, dict):
        message["data"].update(_string_values(data))
    elif data is not None:
        raise Unsendable("Override 'data' must be a JSON object")
    if "priority" in override:
        priority = str(override["priority"])
        android["priority"] = {"high": "HIGH", "normal": "NORMAL"}.get(
            priority.lower(), priority.upper()
        )
    if "time_to_live" in override:
        try:
            android["ttl"] = f"{int(override['time_to_live'])}s"
        except (TypeError, ValueError):
            raise Unsendable("Override 'time_to_live' must be a number of seconds") from None
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
            message[key] = _fcm_deep_merge(message.get(key, {}), value)
        elif value is not None:
            raise Unsendable(f"Override '{key}' must be a JSON object")


def _fcm_deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _fcm_deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _string_values(values: dict[str, Any]) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in values.items()
    }


def _json_list(value: str, key: str) -> Any:
    # JSON inside a string of the override: the request's JSON rules were never applied to it
    # (json.loads took 5,000 levels into a RecursionError, lone surrogates, NaN, 2**100).
    try:
        parsed = read_json(value)
    except ValueError:
        raise Unsendable(f"Override 'notification.{key}' must be a JSON array") from None
    if not isinstance(parsed, list):
        raise Unsendable(f"Override 'notification.{key}' must be a JSON array")
    return parsed


def _fcm_request(job: Job, settings: Settings, channel: str) -> dict[str, Any]:
    notes: list[str] = []
    url = _fcm_url(settings, "<project_id: no FCM credential>")
    if job.credential is None:
        notes.append(
            "No FCM credential: the log channel recorded this delivery and sent nothing; the"
            " project in the URL comes from the credential's ServiceAccount"
        )
    else:
        try:
            url = fcm_url(settings, service_account(job.credential)["project_id"])
        except Unsendable as error:
            url = _fcm_url(settings, "<project_id: no usable ServiceAccount>")
            notes.append(f"{error}: not sent")
    body: dict[str, Any] | None
    try:
        body = fcm_message(job)
    except Unsendable as error:
        body = None
        notes.append(f"{error}: not sent")
    return _request("fcm", channel, url, fcm_headers(FCM_ACCESS_TOKEN), body, notes)


# SMS: a Twilio-compatible Messages API


SMS_HEADERS = {"content-type": "application/x-www-form-urlencoded"}


def sms_url(settings: Settings, account_sid: str | None = None) -> str:
    account = account_sid or settings.sms_account_sid
    return f"{settings.sms_base_url.rstrip('/')}/2010-04-01/Accounts/{account}/Messages.json"


def sms_form(job: Job, sender: str | None) -> list[tuple[str, str]]:
    """The Messages.json form, as (name, value) pairs in order; `sender` is NOTIFY_SMS_FROM."""
    override = job.content.get("sms") or {}
    form = [("To", job.address)]
    if job.messaging_service_sid:
        form.append(("MessagingServiceSid", job.messaging_service_sid))
    elif sender:
        form.append(("From", sender))
    else:
        raise Unsendable(
            "sms needs the Service's MessagingServiceSid or a sender in NOTIFY_SMS_FROM"
        )
    body = override.get("body") or job.content.get("body")
    if body is not None and not isinstance(body, str):
        # str() would send Python's spelling of it: {'a': 1}, True.
        raise Unsendable("Sms.body must be a string")
    media_urls = override.get("media_urls") or []
    if isinstance(media_urls, str):
        media_urls = [media_urls]
    if not isinstance(media_urls, list) or not all(
        isinstance(url, str) and url for url in media_urls
    ):
        raise Unsendable("Sms.media_urls must be a JSON array of URLs")
    if not body and not media_urls:
        raise Unsendable("sms needs Body or Sms.media_urls")
    if body:
        form.append(("Body", str(body)))
    form.extend(("MediaUrl", url) for url in media_urls)
    for key, field in (("status_callback", "StatusCallback"), ("max_price", "MaxPrice")):
        value = override.get(key)
        if value is not None and value != "":
            form.append((field, str(value)))
    return form


def _sms_request(job: Job, settings: Settings, channel: str) -> dict[str, Any]:
    notes: list[str] = []
    if channel == "log":
        notes.append(
            "No SMS API configured (NOTIFY_SMS_ACCOUNT_SID, NOTIFY_SMS_AUTH_TOKEN): the log"
            " channel recorded this delivery and sent nothing"
        )
    url = sms_url(settings, settings.sms_account_sid or "<NOTIFY_SMS_ACCOUNT_SID unset>")
    # The log channel needs no sender; shown, it is the one a configured server would use.
    sender = settings.sms_from or ("<From: NOTIFY_SMS_FROM unset>" if channel == "log" else None)
    body: list[list[str]] | None
    try:
        body = [[name, value] for name, value in sms_form(job, sender)]
    except Unsendable as error:
        body = None
        notes.append(f"{error}: not sent")
    headers = {**SMS_HEADERS, "authorization": SMS_BASIC_AUTH}
    return _request("sms", channel, url, headers, body, notes)


# Every channel


def provider_request(job: Job, settings: Settings) -> dict[str, Any]:
    """The exact request the provider receives, or would receive, for `job`; no secret in it."""
    channel = channel_name(job, settings)
    if channel == "retired":
        return {
            "provider": job.binding_type,
            "channel": channel,
            "method": None,
            "url": None,
            "headers": {},
            "body": None,
            "notes": [f"Twilio retired the {job.binding_type} channel: nothing is sent"],
        }
    if job.binding_type == "apn":
        return _apns_request(job, settings, channel)
    if job.binding_type == "sms":
        return _sms_request(job, settings, channel)
    return _fcm_request(job, settings, channel)


def _request(
    provider: str,
    channel: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    notes: list[str],
) -> dict[str, Any]:
    return {
        "provider": provider,
        "channel": channel,
        "method": "POST",
        "url": url,
        "headers": headers,
        "body": body,
        "notes": notes,
    }
