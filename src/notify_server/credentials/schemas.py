import re
from typing import Annotated, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, Field, StringConstraints, field_validator

from notify_server.crypto import UNLOADABLE_KEY
from notify_server.forms import Boolean, Form, Text64, Text256
from notify_server.json_input import read_json
from notify_server.wire import format_date

CredentialType = Literal["gcm", "apn", "fcm"]
Secret = Annotated[str, StringConstraints(max_length=65536)]
# The write-only fields, by the names they are sealed under. The last five are our extension
# for today's providers: an APNs token key (.p8) with its ids, and an FCM service account.
SECRET_FIELDS = (
    "certificate",
    "private_key",
    "api_key",
    "secret",
    "token_key",
    "key_id",
    "team_id",
    "bundle_id",
    "service_account",
)
_SERVICE_ACCOUNT_KEYS = ("project_id", "client_email", "private_key")
# Google's project-id rules (6-30 characters: lower-case letters, digits, hyphens; a letter
# first, no hyphen last), with the legacy domain-scoped form "example.com:my-project". It
# goes into the FCM send URL's path.
GOOGLE_PROJECT_ID = re.compile(
    r"(?:[a-z0-9][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
)


class CredentialUpdateForm(Form):
    friendly_name: Text64 | None = Field(default=None, alias="FriendlyName")
    certificate: Secret | None = Field(default=None, alias="Certificate")
    private_key: Secret | None = Field(default=None, alias="PrivateKey")
    sandbox: Boolean | None = Field(default=None, alias="Sandbox")
    api_key: Secret | None = Field(default=None, alias="ApiKey")
    secret: Secret | None = Field(default=None, alias="Secret")
    token_key: Secret | None = Field(default=None, alias="TokenKey")
    key_id: Text64 | None = Field(default=None, alias="KeyId")
    team_id: Text64 | None = Field(default=None, alias="TeamId")
    bundle_id: Text256 | None = Field(default=None, alias="BundleId")
    service_account: Secret | None = Field(default=None, alias="ServiceAccount")

    @field_validator("service_account")
    @classmethod
    def service_account_is_json(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Its InvalidJson is a ValueError: pydantic reports it under 'ServiceAccount'.
        parsed = read_json(value)
        if not isinstance(parsed, dict) or not all(parsed.get(k) for k in _SERVICE_ACCOUNT_KEYS):
            raise ValueError(
                "must be a service account JSON key file with project_id, client_email and"
                " private_key"
            )
        if not isinstance(parsed["project_id"], str) or not GOOGLE_PROJECT_ID.fullmatch(
            parsed["project_id"]
        ):
            raise ValueError("its project_id is not a Google project id")
        return value

    @field_validator("token_key")
    @classmethod
    def token_key_is_pem(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            key = serialization.load_pem_private_key(value.encode(), password=None)
        except UNLOADABLE_KEY:
            key = None
        # APNs signs provider tokens with ES256 only: any other key could never send.
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("must be the PEM text of an APNs .p8 key (ES256, curve P-256)")
        return value

    def given(self) -> dict:
        return {name: getattr(self, name) for name in self.model_fields_set}

    # Never let a secret reach a log line or a traceback.
    def __repr_args__(self):  # type: ignore[no-untyped-def]
        return [(k, "***" if k in SECRET_FIELDS else v) for k, v in super().__repr_args__()]


class CredentialForm(CredentialUpdateForm):
    type: CredentialType = Field(alias="Type")


class CredentialResource(BaseModel):
    sid: str
    account_sid: str
    friendly_name: str | None
    type: str
    sandbox: str | None
    date_created: str
    date_updated: str
    url: str

    @classmethod
    def render(cls, row: object, base_url: str) -> dict:
        sandbox = getattr(row, "sandbox")  # noqa: B009
        return cls(
            sid=row.sid,  # type: ignore[attr-defined]
            account_sid=row.account_sid,  # type: ignore[attr-defined]
            friendly_name=row.friendly_name,  # type: ignore[attr-defined]
            type=row.type,  # type: ignore[attr-defined]
            # Twilio returns a string here ("True"/"False"), for APN credentials only.
            sandbox=None if sandbox is None else str(sandbox),
            date_created=format_date(row.date_created),  # type: ignore[attr-defined]
            date_updated=format_date(row.date_updated),  # type: ignore[attr-defined]
            url=f"{base_url}/v1/Credentials/{row.sid}",  # type: ignore[attr-defined]
        ).model_dump()
