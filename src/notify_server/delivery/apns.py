"""APNs: Apple's HTTP/2 provider API, with a notification mapped onto it as Twilio Notify did
(Title/Body -> aps.alert, Sound -> aps.sound, Action -> aps.category, Data at the top level,
the Apn override deep-merged last)."""

import hashlib
import logging
import ssl
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import orjson
from cryptography import x509

from notify_server.config import Settings
from notify_server.crypto import UNLOADABLE_KEY
from notify_server.delivery.channels import CredentialSecrets, Job, Outcome, Result
from notify_server.delivery.h2client import H2Client, H2Error, Response

# The wire format: rendering.py, shared with the Deliveries listing (bench/h2_senders.py still
# imports build_payload and build_headers from here, in older trees too).
from notify_server.delivery.rendering import (
    apns_base,
    apns_headers,
    apns_token_auth,
    apns_topic,
    apns_url,
    build_headers,
    build_payload,
    certificate_topic,
    normalise_pem,
)

log = logging.getLogger("notify_server.delivery")

# Apple refuses provider tokens older than an hour and refreshes more often than every 20 minutes.
TOKEN_REFRESH_SECONDS = 50 * 60
RESPONSE_LIMIT = 1000
# Notifications whose rendered payload and headers are kept: a notification's deliveries come
# in runs, and rendering them again each time was a tenth of a push's CPU.
RENDERED_NOTIFICATIONS = 64
# The device token is dead (410 Unregistered) or not this app's: the binding is deleted.
UNREGISTERED_REASONS = frozenset(("BadDeviceToken", "DeviceTokenNotForTopic"))


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
        self._sandbox_base = apns_base(settings, sandbox=True)
        self._production_base = apns_base(settings, sandbox=False)

    async def send(self, job: Job) -> Result:
        credential = job.credential
        if credential is None or credential.type != "apn":
            kind = "no credential" if credential is None else f"a {credential.type} credential"
            target = f"binding {job.binding_sid}" if job.binding_sid else f"address {job.address}"
            return _failed(f"APNs: {target} has {kind}")
        base = self._sandbox_base if credential.sandbox else self._production_base
        body, notification_headers = self._render(job)

        authenticated = self._authenticate(credential, base)
        if isinstance(authenticated, Result):
            return authenticated
        client, token_cache_key, token, topic = authenticated
        headers = apns_headers(job, notification_headers, token, topic)
        try:
            response = await client.request("POST", apns_url(base, job.address), headers, body)
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
        self, credential: CredentialSecrets, base: str
    ) -> tuple[H2Client, tuple[str, str, str] | None, str | None, str | None] | Result:
        """Token auth (a JWT in `authorization`) or certificate auth (a TLS client certificate):
        the client to send with, the token's cache key, the provider token (token auth) and
        the apns-topic; or the failure."""
        secrets = credential.secrets
        if apns_token_auth(secrets):
            bundle_id = apns_topic(secrets, None)
            if not bundle_id:
                return _failed(
                    f"APNs credential {credential.sid} has no BundleId: token auth needs it as"
                    " the apns-topic"
                )
            cache_key = (secrets["key_id"], secrets["team_id"], _digest(secrets["token_key"]))
            try:
                token = self._provider_token(cache_key, secrets["token_key"])
            except (*UNLOADABLE_KEY, jwt.PyJWTError):
                return _failed(
                    f"APNs credential {credential.sid}: TokenKey is not an ES256 (P-256) key"
                )
            return self._client(base, None), cache_key, token, bundle_id
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
            return client, None, None, apns_topic(secrets, auth.topic)
        return _failed(_missing_auth_message(credential))

    def _answer(self, response: Response, token_cache_key: tuple[str, str, str] | None) -> Result:
        status = response.status
        text = response.text(RESPONSE_LIMIT)
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
