from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore")

    database_url: str = "sqlite:///notify-server.db"
    # An account ensured at start-up: the zero-set-up way to run in a container or a test.
    account_sid: str | None = None
    auth_token: str | None = None
    # Base for `url`/`links`/paging URLs; default: the request's own scheme and host.
    public_url: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # Fernet key that encrypts push-credential secrets. Unset: a key is generated once
    # into `secret_key_file` (fine for one host; set it explicitly when scaling out).
    secret_key: str | None = None
    secret_key_file: str = "notify-server.key"
    # How long a verified Basic credential is remembered by one process.
    auth_cache_seconds: float = Field(default=30.0, ge=0)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # One JSON line per request (method, route, status, duration, account, request id).
    access_log: bool = True
    metrics_enabled: bool = True
    # Per account and per process; 0 turns rate limiting off (the embedded default).
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)

    # Delivery. `serve` runs a worker in each process unless worker_enabled is false;
    # `notify-server worker` runs one on its own.
    worker_enabled: bool = True
    worker_concurrency: int = Field(default=64, ge=1)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    # A claimed row whose worker died is claimed again after this long.
    delivery_lease_seconds: float = Field(default=30.0, gt=0)
    delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    callback_batch_size: int = Field(default=1000, ge=1, le=1000)
    # Provider base URLs: configurable so tests run against local fakes.
    apns_production_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    fcm_url: str = "https://fcm.googleapis.com"
    # Overrides the service account's token_uri (tests point it at a fake).
    fcm_token_url: str | None = None
    # A Twilio-compatible Messages API for sms bindings; unset: the log channel.
    sms_base_url: str = "https://api.twilio.com"
    sms_account_sid: str | None = None
    sms_auth_token: str | None = None
    # Used when the Service has no MessagingServiceSid.
    sms_from: str | None = None


@lru_cache
def get_settings() -> Settings:
    return Settings()
