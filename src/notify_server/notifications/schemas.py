from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from notify_server.bindings.schemas import E164, BindingType, Identity, Tag
from notify_server.errors import InvalidParameter
from notify_server.forms import Form, HttpUrl, IsoDate, JsonObject, ListQuery, Text4096
from notify_server.json_input import InvalidJson, read_json
from notify_server.wire import format_date

MAX_IDENTITIES = 20
MAX_TAGS = 5
MAX_TO_BINDINGS = 10_000
MAX_TTL = 2_419_200  # four weeks, Twilio's default and maximum
# Keys an override may not set: Notify addresses the message itself (notes §7.1).
FORBIDDEN_OVERRIDE_KEYS = {
    "Fcm": {"to", "registration_ids", "condition", "notification_key"},
    "Gcm": {"to", "registration_ids", "notification_key"},
}
_RESERVED_PREFIX = "twi_"


class ToBinding(BaseModel):
    binding_type: BindingType
    address: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


_TO_BINDING = TypeAdapter(ToBinding)


class NotificationForm(Form):
    identities: list[Identity] = Field(
        default_factory=list, alias="Identity", max_length=MAX_IDENTITIES
    )
    tags: list[Tag] = Field(default_factory=list, alias="Tag", max_length=MAX_TAGS)
    segments: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        default_factory=list, alias="Segment"
    )
    to_bindings: list[str] = Field(
        default_factory=list, alias="ToBinding", max_length=MAX_TO_BINDINGS
    )
    body: Text4096 | None = Field(default=None, alias="Body")
    title: Text4096 | None = Field(default=None, alias="Title")
    sound: Text4096 | None = Field(default=None, alias="Sound")
    action: Text4096 | None = Field(default=None, alias="Action")
    priority: Annotated[Literal["high", "low"], BeforeValidator(lambda v: v or "high")] = Field(
        default="high", alias="Priority"
    )
    ttl: Annotated[int, BeforeValidator(lambda v: MAX_TTL if v == "" else v)] = Field(
        default=MAX_TTL, ge=0, le=MAX_TTL, alias="Ttl"
    )
    data: JsonObject = Field(default=None, alias="Data")
    apn: JsonObject = Field(default=None, alias="Apn")
    fcm: JsonObject = Field(default=None, alias="Fcm")
    gcm: JsonObject = Field(default=None, alias="Gcm")
    sms: JsonObject = Field(default=None, alias="Sms")
    facebook_messenger: JsonObject = Field(default=None, alias="FacebookMessenger")
    alexa: JsonObject = Field(default=None, alias="Alexa")
    delivery_callback_url: HttpUrl | None = Field(default=None, alias="DeliveryCallbackUrl")

    @model_validator(mode="after")
    def check(self) -> "NotificationForm":
        # InvalidParameter, not ValueError: pydantic would lose the parameter's name.
        if self.to_bindings and (self.identities or self.tags or self.segments):
            raise InvalidParameter(
                "Direct notifications and query notifications can not be requested together"
            )
        if not (self.to_bindings or self.identities or self.tags or self.segments):
            raise InvalidParameter(
                "A Notification needs a target: Identity, Tag, Segment or ToBinding"
            )
        if self.data and (reserved := _reserved_keys(self.data)):
            raise InvalidParameter(
                f"Parameter 'Data' is invalid: keys starting with 'twi_' are reserved: {reserved}"
            )
        for name in ("Apn", "Fcm", "Gcm", "Sms", "FacebookMessenger", "Alexa"):
            override = getattr(self, _FIELD_FOR_ALIAS[name])
            if override is None:
                continue
            # The Fcm/Gcm overrides nest their own data: Notify's twi_ keys live there too.
            nested = override.get("data")
            if reserved := _reserved_keys(override) + (
                _reserved_keys(nested) if isinstance(nested, dict) else []
            ):
                raise InvalidParameter(
                    f"Parameter '{name}' is invalid: keys starting with 'twi_' are reserved:"
                    f" {reserved}"
                )
            if forbidden := sorted(FORBIDDEN_OVERRIDE_KEYS.get(name, set()) & set(override)):
                raise InvalidParameter(
                    f"Parameter '{name}' is invalid: it may not set {', '.join(forbidden)}"
                )
        return self

    def targets(self) -> list[ToBinding]:
        """The ToBinding values, each a JSON object {"binding_type", "address"}."""
        parsed = []
        for raw in self.to_bindings:
            try:
                target = _TO_BINDING.validate_python(read_json(raw))
            except InvalidJson as exc:
                raise InvalidParameter(f"Parameter 'ToBinding' is invalid: {exc}") from None
            except ValueError:
                raise InvalidParameter(
                    "Parameter 'ToBinding' is invalid: each value must be a JSON object with"
                    ' "binding_type" (apn, gcm, sms, fcm, facebook-messenger, alexa) and "address"'
                ) from None
            if target.binding_type == "sms" and not E164.fullmatch(target.address):
                raise InvalidParameter(
                    f"Parameter 'ToBinding' is invalid: {target.address!r} is not an E.164"
                    " phone number"
                )
            parsed.append(target)
        return parsed

    def content(self) -> dict[str, Any]:
        """The fields the 201 echoes, and that every channel renders from."""
        return {
            "identities": self.identities,
            "tags": self.tags,
            "segments": self.segments,
            "priority": self.priority,
            "ttl": self.ttl,
            "title": self.title,
            "body": self.body,
            "sound": self.sound,
            "action": self.action,
            "data": self.data,
            "apn": self.apn,
            "fcm": self.fcm,
            "gcm": self.gcm,
            "sms": self.sms,
            "facebook_messenger": self.facebook_messenger,
            "alexa": self.alexa,
        }


_FIELD_FOR_ALIAS = {f.alias: name for name, f in NotificationForm.model_fields.items()}


def _reserved_keys(values: dict[str, Any]) -> list[str]:
    return sorted(k for k in values if k.startswith(_RESERVED_PREFIX))


class NotificationListQuery(ListQuery):
    start_date: IsoDate | None = Field(default=None, alias="StartDate")
    end_date: IsoDate | None = Field(default=None, alias="EndDate")


DeliveryStatus = Literal["pending", "sending", "sent", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = DeliveryStatus.__args__  # type: ignore[attr-defined]


class DeliveryListQuery(ListQuery):
    status: DeliveryStatus | None = Field(default=None, alias="Status")
    binding_type: BindingType | None = Field(default=None, alias="BindingType")


class NotificationResource(BaseModel):
    sid: str
    account_sid: str
    service_sid: str
    date_created: str
    identities: list[str]
    tags: list[str]
    segments: list[str]
    priority: str
    ttl: int
    title: str | None
    body: str | None
    sound: str | None
    action: str | None
    data: dict[str, Any] | None
    apn: dict[str, Any] | None
    fcm: dict[str, Any] | None
    gcm: dict[str, Any] | None
    sms: dict[str, Any] | None
    facebook_messenger: dict[str, Any] | None
    alexa: dict[str, Any] | None

    @classmethod
    def render(cls, notification: Any) -> dict[str, Any]:
        return cls(
            sid=notification.sid,
            account_sid=notification.account_sid,
            service_sid=notification.service_sid,
            date_created=format_date(notification.date_created),
            **notification.content,
        ).model_dump()


def notification_detail(notification: Any, base_url: str) -> dict[str, Any]:
    """Our extension, GET …/Notifications/NT…: the notification as created, its deliveries
    counted per status, and where they are listed."""
    path = f"/v1/Services/{notification.service_sid}/Notifications/{notification.sid}"
    return {
        **NotificationResource.render(notification),
        "delivery_summary": dict(notification.delivery_summary),
        "links": {"deliveries": f"{base_url}{path}/Deliveries"},
    }


class DeliveryResource(BaseModel):
    """Our extension: what happened to each target of a notification."""

    notification_sid: str
    binding_sid: str | None
    identity: str | None
    binding_type: str
    address: str
    status: str
    attempts: int
    provider_message_id: str | None
    provider_status: int | None
    provider_response: str | None
    error_message: str | None
    # Why no delivery callback reports this row (e.g. the URL leads to a private address).
    callback_error: str | None
    date_created: str
    date_updated: str
    # The request the provider received, or would receive (delivery/rendering.py).
    provider_request: dict[str, Any]

    @classmethod
    def render(cls, delivery: Any, base_url: str) -> dict[str, Any]:
        return cls(
            notification_sid=delivery.notification_sid,
            binding_sid=delivery.binding_sid,
            identity=delivery.identity,
            binding_type=delivery.binding_type,
            address=delivery.address,
            status=delivery.status,
            attempts=delivery.attempts,
            provider_message_id=delivery.provider_message_id,
            provider_status=delivery.provider_status,
            provider_response=delivery.provider_response,
            error_message=delivery.error_message,
            callback_error=delivery.callback_error,
            date_created=format_date(delivery.date_created),
            date_updated=format_date(delivery.date_updated),
            provider_request=delivery.provider_request,
        ).model_dump()
