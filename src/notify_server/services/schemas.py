from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, Field, StringConstraints, TypeAdapter, field_validator

from notify_server.forms import Boolean, Form, Optional, SidPattern
from notify_server.wire import format_date

ProtocolVersion = Annotated[str | None, Optional, StringConstraints(max_length=64)]
CredentialSid = Annotated[str | None, Optional, Field(pattern=SidPattern["CR"])]
_HTTP_URL = TypeAdapter(AnyHttpUrl)


class ServiceForm(Form):
    """Create and update take the same fields; update changes only those given."""

    friendly_name: Annotated[str | None, StringConstraints(max_length=64)] = Field(
        default=None, alias="FriendlyName"
    )
    apn_credential_sid: CredentialSid = Field(default=None, alias="ApnCredentialSid")
    gcm_credential_sid: CredentialSid = Field(default=None, alias="GcmCredentialSid")
    fcm_credential_sid: CredentialSid = Field(default=None, alias="FcmCredentialSid")
    messaging_service_sid: Annotated[str | None, Optional, Field(pattern=SidPattern["MG"])] = Field(
        default=None, alias="MessagingServiceSid"
    )
    facebook_messenger_page_id: Annotated[
        str | None, Optional, StringConstraints(max_length=64)
    ] = Field(default=None, alias="FacebookMessengerPageId")
    alexa_skill_id: Annotated[str | None, Optional, StringConstraints(max_length=128)] = Field(
        default=None, alias="AlexaSkillId"
    )
    default_apn_notification_protocol_version: ProtocolVersion = Field(
        default=None, alias="DefaultApnNotificationProtocolVersion"
    )
    default_gcm_notification_protocol_version: ProtocolVersion = Field(
        default=None, alias="DefaultGcmNotificationProtocolVersion"
    )
    default_fcm_notification_protocol_version: ProtocolVersion = Field(
        default=None, alias="DefaultFcmNotificationProtocolVersion"
    )
    default_alexa_notification_protocol_version: ProtocolVersion = Field(
        default=None, alias="DefaultAlexaNotificationProtocolVersion"
    )
    log_enabled: Boolean | None = Field(default=None, alias="LogEnabled")
    delivery_callback_url: Annotated[str | None, Optional, StringConstraints(max_length=2048)] = (
        Field(default=None, alias="DeliveryCallbackUrl")
    )
    delivery_callback_enabled: Boolean | None = Field(default=None, alias="DeliveryCallbackEnabled")

    @field_validator("delivery_callback_url")
    @classmethod
    def callback_is_http_url(cls, url: str | None) -> str | None:
        if url is not None:
            try:
                _HTTP_URL.validate_python(url)
            except ValueError:
                raise ValueError("must be an absolute http or https URL") from None
        return url

    def given(self) -> dict:
        """The fields the request named, by column name."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class ServiceListQuery(Form):
    friendly_name: str | None = Field(default=None, alias="FriendlyName")
    page_size: int = Field(default=50, ge=1, le=1000, alias="PageSize")
    page: int = Field(default=0, ge=0, alias="Page")
    page_token: Annotated[str | None, Optional] = Field(default=None, alias="PageToken")

    def filters(self) -> dict[str, str | list[str]]:
        return {} if self.friendly_name is None else {"FriendlyName": self.friendly_name}


class ServiceResource(BaseModel):
    sid: str
    account_sid: str
    friendly_name: str | None
    date_created: str
    date_updated: str
    apn_credential_sid: str | None
    gcm_credential_sid: str | None
    fcm_credential_sid: str | None
    messaging_service_sid: str | None
    facebook_messenger_page_id: str | None
    default_apn_notification_protocol_version: str
    default_gcm_notification_protocol_version: str
    default_fcm_notification_protocol_version: str
    log_enabled: bool
    url: str
    links: dict[str, str]
    alexa_skill_id: str | None
    default_alexa_notification_protocol_version: str
    delivery_callback_url: str | None
    delivery_callback_enabled: bool

    @classmethod
    def render(cls, row: object, base_url: str) -> dict:
        values = {name: getattr(row, name) for name in cls.model_fields if hasattr(row, name)}
        url = f"{base_url}/v1/Services/{values['sid']}"
        values["date_created"] = format_date(values["date_created"])
        values["date_updated"] = format_date(values["date_updated"])
        links = {
            name: f"{url}/{name.title()}"
            for name in ("bindings", "notifications", "segments", "users")
        }
        return cls(**values, url=url, links=links).model_dump()
