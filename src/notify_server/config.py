from functools import lru_cache
from typing import Annotated, Literal

import httpx
from pydantic import AfterValidator, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notify_server.outbound import parse_allow_list

# The longest duration a setting may name. Past it the values overflow deep inside the
# process (a lease of 1e12 s is past the last datetime; inf overflows timers), where they
# would fail every claim or kill a thread instead of stopping the start with one line.
ONE_YEAR = 365 * 24 * 3600


def _http_url(value: str) -> str:
    """A URL the server calls or writes into responses: found wrong at start-up, not in every
    delivery's error or every response body."""
    try:
        url = httpx.URL(value)
        usable = url.scheme in ("http", "https") and bool(url.host)
    except (httpx.InvalidURL, TypeError, ValueError):
        usable = False
    if not usable:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
# NOTIFY_X= with nothing after it, as compose files write it: unset.
UnsetIfEmpty = BeforeValidator(lambda value: value or None)


class Settings(BaseSettings):
    # inf and nan are floats too: no setting means either.
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", allow_inf_nan=False)

    database_url: str = "sqlite:///notify-server.db"
    # An account ensured at start-up: the zero-set-up way to run in a container or a test.
    account_sid: str | None = None
    auth_token: str | None = None
    # Base for `url`/`links`/paging URLs; default: the request's own scheme and host.
    public_url: Annotated[HttpUrl | None, UnsetIfEmpty] = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # Edge limits of `serve` (notify_server/http_protocol.py): the request line and headers
    # together, the time they may take from the request's first byte, and the longest pause
    # inside a body (which must also be complete within 6 such periods).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=ONE_YEAR)
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=ONE_YEAR)
    # Fernet key that encrypts auth tokens and push-credential secrets; one per deployment,
    # its fingerprint stored in the database and checked by every command (crypto.py).
    # Unset: read from (or generated once into) `secret_key_file`, whose default is
    # `notify-server.key` beside a SQLite database file, else
    # $XDG_DATA_HOME/notify-server/secret.key. PostgreSQL deployments should set it.
    secret_key: str | None = None
    secret_key_file: str | None = None
    # How long a verified Basic credential is remembered by one process.
    auth_cache_seconds: float = Field(default=30.0, ge=0, le=ONE_YEAR)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Annotated[
        Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(str.lower)
    ] = "info"
    # One JSON line per request (method, route, status, duration, account, request id).
    access_log: bool = True
    metrics_enabled: bool = True
    # /metrics needs `Authorization: Bearer <token>`; unset (or empty): the API port has no
    # /metrics at all and the metrics port answers anyone.
    metrics_token: str | None = None
    # A listener of its own for /metrics and /healthz (scrapes never queue behind requests).
    metrics_port: Annotated[int | None, UnsetIfEmpty] = Field(default=None, ge=1, le=65535)
    # Default: `host`.
    metrics_host: str | None = None
    # Label bindings by service SID: exposes every account's service SIDs to the scraper.
    metrics_per_service: bool = False
    # Database gauges are read in the background this often; a scrape reads the last values.
    metrics_refresh_seconds: float = Field(default=15.0, gt=0, le=ONE_YEAR)
    metrics_statement_timeout_seconds: float = Field(default=5.0, gt=0, le=ONE_YEAR)
    # Per account and per process; 0 turns rate limiting off (the embedded default).
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    # The web inspector at /console. Unset: on for the embedded SQLite mode, off on
    # PostgreSQL (a shared deployment turns it on deliberately).
    console_enabled: bool | None = None

    # Delivery. `serve` runs a worker in each process unless worker_enabled is false;
    # `notify-server worker` runs one on its own.
    worker_enabled: bool = True
    worker_concurrency: int = Field(default=64, ge=1)
    worker_poll_seconds: float = Field(default=0.5, gt=0, le=ONE_YEAR)
    # A claimed row whose worker died is claimed again after this long.
    delivery_lease_seconds: float = Field(default=30.0, gt=0, le=ONE_YEAR)
    delivery_timeout_seconds: float = Field(default=10.0, gt=0, le=ONE_YEAR)
    # Bindings per outbox chunk of a query notification: the request writes the first, the
    # workers the rest, one transaction each (delivery/expansion.py).
    fanout_chunk_size: int = Field(default=500, ge=1)
    callback_batch_size: int = Field(default=1000, ge=1, le=1000)
    # Delivery callbacks: a slow or dead endpoint delays only its own account's callbacks.
    callback_timeout_seconds: float = Field(default=5.0, gt=0, le=ONE_YEAR)
    callback_concurrency: int = Field(default=32, ge=1)
    callback_concurrency_per_host: int = Field(default=4, ge=1)
    # Private destinations a tenant's URLs may reach after all: comma-separated CIDRs and
    # host names (e.g. "10.1.0.0/16,hooks.internal"). Empty: public addresses only.
    outbound_allow: str = ""
    # Provider base URLs: configurable so tests run against local fakes.
    apns_production_url: HttpUrl = "https://api.push.apple.com"
    apns_sandbox_url: HttpUrl = "https://api.sandbox.push.apple.com"
    fcm_url: HttpUrl = "https://fcm.googleapis.com"
    # Where OAuth tokens for FCM are requested; never the uploaded key's own token_uri.
    fcm_token_url: HttpUrl = "https://oauth2.googleapis.com/token"
    # A Twilio-compatible Messages API for sms bindings; unset: the log channel.
    sms_base_url: HttpUrl = "https://api.twilio.com"
    sms_account_sid: str | None = None
    sms_auth_token: str | None = None
    # Used when the Service has no MessagingServiceSid.
    sms_from: str | None = None

    @property
    def console_on(self) -> bool:
        if self.console_enabled is not None:
            return self.console_enabled
        return self.database_url.startswith("sqlite")

    @field_validator("outbound_allow")
    @classmethod
    def _outbound_allow_parses(cls, value: str) -> str:
        parse_allow_list(value)
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
