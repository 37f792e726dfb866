import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from notify_server.errors import InvalidParameter
from notify_server.forms import CredentialSid, Form, IsoDate, ListQuery, Text64, Text1024
from notify_server.wire import quote_segment

if TYPE_CHECKING:
    from notify_server.bindings.repository import BindingRecord

BindingType = Literal["apn", "gcm", "sms", "fcm", "facebook-messenger", "alexa"]
BINDING_TYPES: tuple[str, ...] = BindingType.__args__  # type: ignore[attr-defined]
# `all` and each binding type select bindings implicitly; they are never stored as tags.
IMPLICIT_TAGS = frozenset(("all", *BINDING_TYPES))
E164 = re.compile(r"\+[1-9][0-9]{1,14}")

MAX_TAGS = 20
MAX_TAG_FILTERS = 5
MAX_IDENTITY_FILTERS = 1000

Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Identity = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class BindingForm(Form):
    identity: Identity = Field(alias="Identity")
    binding_type: BindingType = Field(alias="BindingType")
    address: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        alias="Address"
    )
    tags: list[Tag] = Field(default_factory=list, alias="Tag")
    notification_protocol_version: Text64 | None = Field(
        default=None, alias="NotificationProtocolVersion"
    )
    credential_sid: CredentialSid | None = Field(default=None, alias="CredentialSid")
    endpoint: Text1024 | None = Field(default=None, alias="Endpoint")

    @field_validator("tags")
    @classmethod
    def collapse_tags(cls, tags: list[str]) -> list[str]:
        kept = [tag for tag in dict.fromkeys(tags) if tag not in IMPLICIT_TAGS]
        if len(kept) > MAX_TAGS:
            raise ValueError(f"a Binding can have at most {MAX_TAGS} tags")
        return kept

    @model_validator(mode="after")
    def sms_address_is_e164(self) -> "BindingForm":
        if self.binding_type == "sms" and not E164.fullmatch(self.address):
            # Not a ValueError: pydantic would lose the parameter's name.
            raise InvalidParameter(
                "Parameter 'Address' is invalid: an sms Binding's Address must be a phone"
                " number in E.164 format"
            )
        return self


class BindingListQuery(ListQuery):
    start_date: IsoDate | None = Field(default=None, alias="StartDate")
    end_date: IsoDate | None = Field(default=None, alias="EndDate")
    identities: list[Identity] = Field(
        default_factory=list, alias="Identity", max_length=MAX_IDENTITY_FILTERS
    )
    tags: list[Tag] = Field(default_factory=list, alias="Tag", max_length=MAX_TAG_FILTERS)


def binding_resource(record: "BindingRecord", base_url: str) -> dict[str, Any]:
    """Twilio's Binding, exactly its keys. A plain dict: on the hot paths a Pydantic model
    here cost more than the database (bench/README.md)."""
    service_url = f"{base_url}/v1/Services/{record.service_sid}"
    return {
        "account_sid": record.account_sid,
        "address": record.address,
        "binding_type": record.binding_type,
        "credential_sid": record.credential_sid,
        "date_created": record.date_created,  # rendered by web.json_response (JSON_DATES)
        "date_updated": record.date_updated,
        "endpoint": record.endpoint,
        "identity": record.identity,
        "notification_protocol_version": record.notification_protocol_version,
        "service_sid": record.service_sid,
        "sid": record.sid,
        "tags": record.tags,
        "links": {"user": f"{service_url}/Users/{quote_segment(record.identity)}"},
        "url": f"{service_url}/Bindings/{record.sid}",
    }
