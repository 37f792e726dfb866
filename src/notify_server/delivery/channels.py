"""What a channel adapter receives and answers; which adapter serves a delivery."""

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple, Protocol

from notify_server.config import Settings

# Twilio retired these channels: their deliveries fail, nothing is sent.
RETIRED_TYPES = frozenset(("facebook-messenger", "alexa"))


class Outcome(Enum):
    SENT = "sent"  # the provider accepted it
    FAILED = "failed"  # final: retrying cannot help
    RETRY = "retry"  # transient: try again later, while the TTL lasts


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    provider_message_id: str | None = None
    provider_status: int | None = None
    provider_response: str | None = None
    error_message: str | None = None
    # The provider says the address is dead (APNs 410/BadDeviceToken, FCM UNREGISTERED):
    # the binding is deleted.
    unregistered: bool = False


@dataclass(frozen=True)
class CredentialSecrets:
    """A Notify Credential as a channel needs it: type, sandbox, and the decrypted secrets
    (certificate, private_key, api_key, secret, token_key, key_id, team_id, bundle_id,
    service_account)."""

    sid: str
    type: str
    sandbox: bool
    secrets: dict[str, str]


class Job(NamedTuple):
    """One outbox row, claimed by a worker, with everything needed to send it (a tuple: one is
    made per push, in 0.9 µs where a frozen dataclass took 3.4)."""

    delivery_id: int
    attempt: int
    binding_type: str
    address: str
    identity: str | None
    binding_sid: str | None
    expires_at: datetime
    notification_sid: str
    account_sid: str
    service_sid: str
    messaging_service_sid: str | None
    # The notification's echoed fields: title, body, sound, action, priority, ttl, data,
    # and the per-channel overrides apn, fcm, gcm, sms, ...
    content: dict[str, Any]
    credential: CredentialSecrets | None = None


class Channel(Protocol):
    name: str

    async def send(self, job: Job) -> Result: ...

    async def aclose(self) -> None: ...


def channel_name(job: Job, settings: Settings) -> str:
    """Which channel serves `job`: apns, fcm, sms, log (no provider configured: local and CI
    use need none) or retired."""
    if job.binding_type in RETIRED_TYPES:
        return "retired"
    if job.binding_type == "sms":
        return "sms" if settings.sms_account_sid and settings.sms_auth_token else "log"
    if job.credential is None:
        return "log"
    return "apns" if job.binding_type == "apn" else "fcm"
