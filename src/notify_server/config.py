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


@lru_cache
def get_settings() -> Settings:
    return Settings()
