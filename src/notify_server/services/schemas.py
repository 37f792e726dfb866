from pydantic import BaseModel, Field

from notify_server.forms import (
    Boolean,
    CredentialSid,
    Form,
    HttpUrl,
    ListQuery,
    MessagingServiceSid,
    Text64,
    Text128,
)
from notify_server.wire import format_date


class ServiceForm(Form):
    """Create and update take the same fields; update changes only those given."""

    friendly_name: Text64 | None = Field(default=None, alias="FriendlyName")
    apn_credential_sid: CredentialSid | None = Field(default=None, alias="ApnCredentialSid")
    gcm_credential_sid: CredentialSid | None = Field(default=None, alias="GcmCredentialSid")
    fcm_credential_sid: CredentialSid | None = Field(default=None, alias="FcmCredentialSid")
    messaging_service_sid: MessagingServiceSid | None = Field(
        default=None, alias="MessagingServiceSid"
    )
    facebook_messenger_page_id: Text64 | None = Field(default=None, alias="FacebookMessengerPageId")
    alexa_skill_id: Text128 | None = Field(default=None, alias="AlexaSkillId")
    default_apn_notification_protocol_version: Text64 | None = Field(
        default=None, alias="DefaultApnNotificationProtocolVersion"
    )
    default_gcm_notification_protocol_version: Text64 | None = Field(
        default=None, alias="DefaultGcmNotificationProtocolVersion"
    )
    default_fcm_notification_protocol_version: Text64 | None = Field(
        default=None, alias="DefaultFcmNotificationProtocolVersion"
    )
    default_alexa_notification_protocol_version: Text64 | None = Field(
        default=None, alias="DefaultAlexaNotificationProtocolVersion"
    )
    log_enabled: Boolean | None = Field(default=None, alias="LogEnabled")
    delivery_callback_url: HttpUrl | None = Field(default=None, alias="DeliveryCallbackUrl")
    delivery_callback_enabled: Boolean | None = Field(default=None, alias="DeliveryCallbackEnabled")

    def given(self) -> dict:
        """The fields the request named, by column name."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class ServiceListQuery(ListQuery):
    friendly_name: Text64 | None = Field(default=None, alias="FriendlyName")


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
    # Every SDK fixture since 2017 carries it, always "S"; its meaning is not documented.
    type: str
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
        return cls(**values, type="S", url=url, links=links).model_dump()
