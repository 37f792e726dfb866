"""Pydantic at the edge: PascalCase form fields in, Twilio's 400s out."""

import re
from datetime import date
from functools import cache
from types import NoneType
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from notify_server.errors import InvalidParameter, MissingParameter
from notify_server.wire import FormData

FormModel = TypeVar("FormModel", bound="Form")


class Form(BaseModel):
    model_config = ConfigDict(populate_by_name=False, extra="ignore", frozen=True)

    @classmethod
    def parse(cls: type[FormModel], form: FormData) -> FormModel:
        values: dict[str, Any] = {}
        for alias, is_list, allows_none in _fields_of(cls):
            if alias not in form:
                continue
            if is_list:
                value: Any = form.all(alias)
            else:
                value = form.first(alias)
                # Twilio's forms treat an empty value as "not given" (on an update: cleared).
                if value == "" and allows_none:
                    value = None
            if any("\x00" in v for v in (value if is_list else [value or ""])):
                # PostgreSQL cannot store NUL in text; no client means to send one.
                raise InvalidParameter(f"Parameter '{alias}' is invalid: contains a NUL character")
            values[alias] = value
        return cls.validate_values(values)

    @classmethod
    def validate_values(cls: type[FormModel], values: dict[str, Any]) -> FormModel:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _to_twilio_error(exc) from None


@cache
def _fields_of(cls: type[Form]) -> tuple[tuple[str, bool, bool], ...]:
    """(form name, repeatable, may be None) of each field, worked out once per form."""
    return tuple(
        (field.alias or name, _is_list(field.annotation), _allows_none(field.annotation))
        for name, field in cls.model_fields.items()
    )


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(_is_list(a) for a in get_args(annotation))


def _allows_none(annotation: Any) -> bool:
    return NoneType in get_args(annotation)


def _to_twilio_error(exc: ValidationError) -> InvalidParameter:
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "body"
    if error["type"] == "missing":
        return MissingParameter(name)
    message = error["msg"].removeprefix("Value error, ")
    return InvalidParameter(f"Parameter '{name}' is invalid: {message}")


def _parse_bool(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError("must be true or false")
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _parse_date(value: Any) -> Any:
    # Exactly YYYY-MM-DD, as the SDK sends it: no timestamps, no datetimes.
    if isinstance(value, str) and not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date in the form YYYY-MM-DD")
    return value


def sid_pattern(prefix: str) -> str:
    return rf"^{prefix}[0-9a-fA-F]{{32}}$"


def _lower_sid(value: str) -> str:
    # Stored SIDs are lower-case; Twilio's patterns accept upper-case hex too, so a SID that
    # is looked up is normalised here, at the edge.
    return value[:2] + value[2:].lower()


_HTTP_URL = TypeAdapter(AnyHttpUrl)


def _check_http_url(value: Any) -> Any:
    if isinstance(value, str):
        try:
            _HTTP_URL.validate_python(value)
        except ValueError:
            raise ValueError("must be an absolute http or https URL") from None
    return value


Boolean = Annotated[bool, BeforeValidator(_parse_bool)]
# A callback URL: kept as the text given, checked to be an absolute http(s) URL.
HttpUrl = Annotated[str, StringConstraints(max_length=2048), BeforeValidator(_check_http_url)]
IsoDate = Annotated[date, BeforeValidator(_parse_date)]
CredentialSid = Annotated[
    str, StringConstraints(pattern=sid_pattern("CR")), AfterValidator(_lower_sid)
]
# Never looked up here (it names a resource in Twilio's Messaging): kept as given.
MessagingServiceSid = Annotated[str, StringConstraints(pattern=sid_pattern("MG"))]
PageToken = Annotated[str, StringConstraints(max_length=64)]


Text64 = Annotated[str, StringConstraints(max_length=64)]
Text128 = Annotated[str, StringConstraints(max_length=128)]
Text256 = Annotated[str, StringConstraints(max_length=256)]
Text1024 = Annotated[str, StringConstraints(max_length=1024)]
Text2048 = Annotated[str, StringConstraints(max_length=2048)]
Text4096 = Annotated[str, StringConstraints(max_length=4096)]


class ListQuery(Form):
    """Paging parameters every list takes; subclasses add their filters."""

    page_size: int = Field(default=50, ge=1, le=1000, alias="PageSize")
    # Only echoed back ("simply for client state"), but it must fit the JSON we answer.
    page: int = Field(default=0, ge=0, le=2**53, alias="Page")
    page_token: PageToken | None = Field(default=None, alias="PageToken")

    def filters(self) -> dict[str, str | list[str]]:
        """The filters as given, for the paging URLs."""
        return {}
