from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StringConstraints

from notify_server.bindings.schemas import (
    MAX_IDENTITY_FILTERS,
    MAX_TAG_FILTERS,
    Identity,
    Tag,
    binding_resource,
)
from notify_server.forms import Form, IsoDate, ListQuery
from notify_server.wire import format_date, quote_segment

if TYPE_CHECKING:
    from notify_server.bindings.repository import BindingRecord
    from notify_server.users.operations import UserRecord

Segment = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class UserForm(Form):
    identity: Identity = Field(alias="Identity")
    segments: list[Segment] = Field(default_factory=list, alias="Segment")


class UserListQuery(ListQuery):
    identities: list[Identity] = Field(
        default_factory=list, alias="Identity", max_length=MAX_IDENTITY_FILTERS
    )
    segments: list[Segment] = Field(default_factory=list, alias="Segment")


class UserBindingListQuery(ListQuery):
    """A Binding list's filters less Identity, which the path gives."""

    start_date: IsoDate | None = Field(default=None, alias="StartDate")
    end_date: IsoDate | None = Field(default=None, alias="EndDate")
    tags: list[Tag] = Field(default_factory=list, alias="Tag", max_length=MAX_TAG_FILTERS)


def user_url(base_url: str, service_sid: str, identity: str) -> str:
    return f"{base_url}/v1/Services/{service_sid}/Users/{quote_segment(identity)}"


def user_resource(user: "UserRecord", base_url: str) -> dict[str, Any]:
    """The removed User resource's keys (twilio-python 6.15's fixtures)."""
    url = user_url(base_url, user.service_sid, user.identity)
    return {
        "account_sid": user.account_sid,
        "date_created": format_date(user.date_created),
        "date_updated": format_date(user.date_updated),
        "identity": user.identity,
        "links": {
            "bindings": f"{url}/Bindings",
            "segment_memberships": f"{url}/SegmentMemberships",
        },
        "segments": [],
        "service_sid": user.service_sid,
        "sid": user.sid,
        "url": url,
    }


def user_binding_resource(record: "BindingRecord", base_url: str) -> dict[str, Any]:
    """A Binding seen from its User: the same keys, its url under the User."""
    body = binding_resource(record, base_url)
    body["url"] = f"{body['links']['user']}/Bindings/{record.sid}"
    return body
