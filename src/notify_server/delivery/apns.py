"""APNs: Apple's HTTP/2 provider API, with a notification mapped onto it as Twilio Notify did
(Title/Body -> aps.alert, Sound -> aps.sound, Action -> aps.category, Data at the top level,
the Apn override deep-merged last)."""

import hashlib
import logging
import re
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
from cryptography import x509
from cryptography.x509.oid import NameOID

from notify_server.config import Settings
from notify_server.delivery.channels import CredentialSecrets, Job, Outcome, Result
from notify_server.delivery.h2client import H2Client, H2Error, Response

log = logging.getLogger("notify_server.delivery")

# Apple refuses provider tokens older than an hour and refreshes more often than every 20 minutes.
TOKEN_REFRESH_SECONDS = 50 * 60
RESPONSE_LIMIT = 1000
# Notifications whose rendered payload and headers are kept: a notification's deliveries come
# in runs, and rendering them again each time was a tenth of a push's CPU.
RENDERED_NOTIFICATIONS = 64
# The device token is dead (410 Unregistered) or not this app's: the binding is deleted.
UNREGISTERED_REASONS = frozenset(("BadDeviceToken", "DeviceTokenNotForTopic"))
# apns-id is derived from the outbox row, so every attempt at one delivery carries the same id.
APNS_ID_NAMESPACE = uuid.UUID("4f0c6d0e-8a47-5c31-9a52-2b1e0a6f7d13")
_APNS_ID_PREFIX = APNS_ID_NAMESPACE.bytes
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


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


def certificate_topic(certificate: x509.Certificate) -> str | None:
    """An APNs certificate names its app in the subject's UID (0.9.2342.19200300.100.1.1)."""
    values = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(values[0].value) if values else None


def client_ssl_context(certificate: str, private_key: str) -> ssl.SSLContext:
    """The TLS context of certificate auth: httpx's trust (certifi, or SSL_CERT_FILE) plus the
    credential's client certificate. OpenSSL loads the chain from files only: they live in a
    private temporary directory for the duration of the call."""
    context = httpx.create_ssl_context()
    with tempfile.TemporaryDirectory(prefix="notify-apns-") as directory:
        cert_path = Path(directory, "certificate.pem")
        key_path = Path(directory, "private_key.pem")
        cert_path.write_text(certificate)
        key_path.write_text(private_key)
        context.load_cert_chain(cert_path, key_path)
    return context


def _unix(value: datetime) -> int:
    if value.tzinfo is None:  # stored naive, in UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _reason(response: Response) -> str | None:
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason) if reason is not None else None


def _failed(message: str) -> Result:
    return Result(Outcome.FAILED, error_message=message)


class _CertificateAuth:
    def __init__(self, certificate: str, private_key: str, digest: str) -> None:
        self.certificate = normalise_pem(certificate)
        self.private_key = normalise_pem(private_key)
        parsed = x509.load_pem_x509_certificate(self.certificate.encode())
        self.topic = certificate_topic(parsed)
        self.not_after = parsed.not_valid_after_utc
        # Names the client (connection pool) without keeping the secrets as a dict key.
        self.digest = digest


class ApnsChannel:
    name = "apns"

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        # One HTTP/2 client per (base URL, client certificate digest or None).
        self._clients: dict[tuple[str, str | None], H2Client] = {}
        # Provider tokens per (key id, team id, key digest): (jwt, monotonic time made).
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._certificates: dict[str, _CertificateAuth] = {}
        # notification sid -> (payload, the headers but apns-id): they depend on nothing else.
        self._rendered: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._sandbox_base = settings.apns_sandbox_url.rstrip("/")
        self._production_base = settings.apns_production_url.rstrip("/")

    async def send(self, job: Job) -> Result:
        credential = job.credential
        if credential is None or credential.type != "apn":
            kind = "no credential" if credential is None else f"a {credential.type} credential"
            target = f"binding {job.binding_sid}" if job.binding_sid else f"address {job.address}"
            return _failed(f"APNs: {target} has {kind}")
        base = self._sandbox_base if credential.sandbox else self._production_base
        body, notification_headers = self._render(job)
        headers = {"apns-id": apns_id(job), **notification_headers}

        authenticated = self._authenticate(credential, base, headers)
        if isinstance(authenticated, Result):
            return authenticated
        client, token_cache_key = authenticated

        url = f"{base}/3/device/{quote(job.address, safe='')}"
        try:
            response = await client.request("POST", url, headers, body)
        except H2Error as exc:
            return Result(
                Outcome.RETRY, error_message=f"APNs unreachable: {type(exc).__name__}: {exc}"
            )
        log.debug("APNs answered %s for delivery %s", response.status, job.delivery_id)
        return self._answer(response, token_cache_key)

    def _render(self, job: Job) -> tuple[bytes, dict[str, str]]:
        rendered = self._rendered.get(job.notification_sid)
        if rendered is None:
            payload = build_payload(job.content)
            headers = build_headers(job, payload)
            del headers["apns-id"]
            rendered = (orjson.dumps(payload), headers)
            if len(self._rendered) >= RENDERED_NOTIFICATIONS:
                del self._rendered[next(iter(self._rendered))]  # the oldest
            self._rendered[job.notification_sid] = rendered
        return rendered

    def _authenticate(
        self, credential: CredentialSecrets, base: str, headers: dict[str, str]
    ) -> tuple[H2Client, tuple[str, str, str] | None] | Result:
        """Token auth (a JWT in `authorization`) or certificate auth (a TLS client certificate):
        adds the auth and topic headers; returns the client to send with and the token's cache
        key, or the failure."""
        secrets = credential.secrets
        if _has_token_auth(secrets):
            bundle_id = secrets.get("bundle_id")
            if not bundle_id:
                return _failed(
                    f"APNs credential {credential.sid} has no BundleId: token auth needs it as"
                    " the apns-topic"
                )
            cache_key = (secrets["key_id"], secrets["team_id"], _digest(secrets["token_key"]))
            try:
                token = self._provider_token(cache_key, secrets["token_key"])
            except (ValueError, TypeError, jwt.PyJWTError):
                return _failed(
                    f"APNs credential {credential.sid}: TokenKey is not an ES256 (P-256) key"
                )
            headers["authorization"] = f"bearer {token}"
            headers["apns-topic"] = bundle_id
            return self._client(base, None), cache_key
        if secrets.get("certificate") and secrets.get("private_key"):
            try:
                auth = self._certificate_auth(secrets["certificate"], secrets["private_key"])
            except ValueError:
                return _failed(
                    f"APNs credential {credential.sid}: Certificate and PrivateKey could not be"
                    " loaded as a PEM certificate and its private key"
                )
            if auth.not_after < datetime.now(UTC):
                return _failed(
                    f"APNs credential {credential.sid}: the Certificate expired on"
                    f" {auth.not_after:%Y-%m-%dT%H:%M:%SZ}"
                )
            try:
                client = self._client(base, auth)
            except (ssl.SSLError, OSError):
                return _failed(
                    f"APNs credential {credential.sid}: Certificate and PrivateKey could not be"
                    " loaded as a PEM certificate and its private key"
                )
            topic = secrets.get("bundle_id") or auth.topic
            if topic:
                headers["apns-topic"] = topic
            return client, None
        return _failed(_missing_auth_message(credential))

    def _answer(self, response: Response, token_cache_key: tuple[str, str, str] | None) -> Result:
        status = response.status
        text = response.body[:RESPONSE_LIMIT].decode(errors="replace") or None
        if status == 200:
            return Result(
                Outcome.SENT,
                provider_message_id=response.header("apns-id"),
                provider_status=status,
                provider_response=text,
            )
        reason = _reason(response)
        message = f"APNs answered {status} {reason}" if reason else f"APNs answered {status}"
        unregistered = status == 410 or (status == 400 and reason in UNREGISTERED_REASONS)
        if status == 403 and reason == "ExpiredProviderToken":
            if token_cache_key is not None:
                self._tokens.pop(token_cache_key, None)
            outcome = Outcome.RETRY
        elif status == 429 or status >= 500:
            outcome = Outcome.RETRY
        else:
            outcome = Outcome.FAILED
        return Result(
            outcome,
            provider_status=status,
            provider_response=text,
            error_message=message,
            unregistered=unregistered,
        )

    def _provider_token(self, cache_key: tuple[str, str, str], token_key: str) -> str:
        cached = self._tokens.get(cache_key)
        if cached is not None and self._clock() - cached[1] < TOKEN_REFRESH_SECONDS:
            return cached[0]
        key_id, team_id, _ = cache_key
        token = jwt.encode(
            {"iss": team_id, "iat": int(time.time())},
            token_key,
            algorithm="ES256",
            headers={"kid": key_id, "typ": None},  # Apple's header is exactly alg + kid
        )
        self._tokens[cache_key] = (token, self._clock())
        return token

    def _certificate_auth(self, certificate: str, private_key: str) -> _CertificateAuth:
        digest = _digest(f"{certificate}\0{private_key}")
        auth = self._certificates.get(digest)
        if auth is None:
            auth = self._certificates[digest] = _CertificateAuth(certificate, private_key, digest)
        return auth

    def _client(self, base: str, auth: _CertificateAuth | None = None) -> H2Client:
        digest = auth.digest if auth is not None else None
        client = self._clients.get((base, digest))
        if client is None:
            # https: TLS with ALPN h2, as APNs requires; http:// (tests): h2 prior knowledge.
            context = None
            if auth is not None:
                context = client_ssl_context(auth.certificate, auth.private_key)
            client = H2Client(ssl_context=context, timeout=self._settings.delivery_timeout_seconds)
            self._clients[(base, digest)] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _has_token_auth(secrets: dict[str, str]) -> bool:
    return all(secrets.get(k) for k in ("token_key", "key_id", "team_id"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _missing_auth_message(credential: CredentialSecrets) -> str:
    secrets = credential.secrets
    token_fields = {"TokenKey": "token_key", "KeyId": "key_id", "TeamId": "team_id"}
    given = [name for name, key in token_fields.items() if secrets.get(key)]
    if given:
        missing = ", ".join(name for name in token_fields if name not in given)
        return f"APNs credential {credential.sid} is missing {missing} for token auth"
    if secrets.get("certificate") or secrets.get("private_key"):
        missing = "PrivateKey" if secrets.get("certificate") else "Certificate"
        return f"APNs credential {credential.sid} is missing {missing} for certificate auth"
    return (
        f"APNs credential {credential.sid} has neither a token key (TokenKey, KeyId, TeamId)"
        " nor a certificate (Certificate, PrivateKey)"
    )
