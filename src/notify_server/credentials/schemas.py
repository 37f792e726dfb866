from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from notify_server.forms import Boolean, Form, Optional
from notify_server.wire import format_date

CredentialType = Literal["gcm", "apn", "fcm"]
Secret = Annotated[str | None, Optional, StringConstraints(max_length=65536)]
# The write-only fields, by the names they are sealed under.
SECRET_FIELDS = ("certificate", "private_key", "api_key", "secret")


class CredentialUpdateForm(Form):
    friendly_name: Annotated[str | None, StringConstraints(max_length=64)] = Field(
        default=None, alias="FriendlyName"
    )
    certificate: Secret = Field(default=None, alias="Certificate")
    private_key: Secret = Field(default=None, alias="PrivateKey")
    sandbox: Boolean | None = Field(default=None, alias="Sandbox")
    api_key: Secret = Field(default=None, alias="ApiKey")
    secret: Secret = Field(default=None, alias="Secret")

    def given(self) -> dict:
        return {name: getattr(self, name) for name in self.model_fields_set}

    # Never let a secret reach a log line or a traceback.
    def __repr_args__(self):  # type: ignore[no-untyped-def]
        return [(k, "***" if k in SECRET_FIELDS else v) for k, v in super().__repr_args__()]


class CredentialForm(CredentialUpdateForm):
    type: CredentialType = Field(alias="Type")


class CredentialListQuery(Form):
    page_size: int = Field(default=50, ge=1, le=1000, alias="PageSize")
    page: int = Field(default=0, ge=0, alias="Page")
    page_token: Annotated[str | None, Optional] = Field(default=None, alias="PageToken")

    def filters(self) -> dict[str, str | list[str]]:
        return {}


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
