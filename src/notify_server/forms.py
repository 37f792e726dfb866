"""Pydantic at the edge: PascalCase form fields in, Twilio's 400s out."""

import re
from datetime import date
from functools import cache
from types import NoneType
from typing import Annotated, Any, ClassVar, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from notify_server.errors import InvalidParameter, MissingParameter
from notify_server.json_input import read_json
from notify_server.wire import FormData

FormModel = TypeVar("FormModel", bound="Form")


class Form(BaseModel):
    model_config = ConfigDict(populate_by_name=False, extra="ignore", frozen=True)
    # Whether `X=` means "X not given" for a field that is not text (a date, a number, a
    # boolean). Twilio's forms treat it so; a query filter of a type must be of that type.
    blank_typed_value_is_absent: ClassVar[bool] = True

    @classmethod
    def parse(cls: type[FormModel], form: FormData) -> FormModel:
        _refuse_brackets(cls, form)
        values: dict[str, Any] = {}
        for alias, is_list, blank_is_absent in _fields_of(cls):
            if alias not in form:
                continue
            if is_list:
                value: Any = form.all(alias)
            else:
                value = form.first(alias)
                # Twilio's forms treat an empty value as "not given" (on an update: cleared).
                if value == "" and blank_is_absent:
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
    """(form name, repeatable, an empty value means not given) of each field, worked out once
    per form."""
    return tuple(
        (
            field.alias or name,
            _is_list(field.annotation),
            _allows_none(field.annotation)
            and (cls.blank_typed_value_is_absent or _is_text(field.annotation)),
        )
        for name, field in cls.model_fields.items()
    )


@cache
def _field_by_alias(cls: type[Form]) -> dict[str, str]:
    return {field.alias or name: name for name, field in cls.model_fields.items()}


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(_is_list(a) for a in get_args(annotation))


def _allows_none(annotation: Any) -> bool:
    return NoneType in get_args(annotation)


def _is_text(annotation: Any) -> bool:
    """str, or an Annotated str, possibly in a union with None."""
    if annotation is str:
        return True
    if get_origin(annotation) is Annotated:
        return _is_text(get_args(annotation)[0])
    return any(_is_text(a) for a in get_args(annotation) if a is not NoneType)


def _refuse_brackets(cls: type[Form], form: FormData) -> None:
    """`Tag[]=a` and `Tag[0]=a` (PHP's http_build_query, hand-written clients) name no
    parameter of Twilio's: refused, rather than ignored as an unknown name would be, since the
    client meant one of ours and would otherwise get a 201 without it."""
    for sent in form.names():
        if "[" not in sent:
            continue
        name = sent.split("[", 1)[0]
        field = _field_by_alias(cls).get(name)
        if field is None:
            continue
        if _is_list(cls.model_fields[field].annotation):
            how = f"a list is sent by repeating {name}= ({name}=a&{name}=b), not as {name}[]"
        else:
            how = f"send {name}= without brackets"
        raise InvalidParameter(f"Parameter '{name}' is invalid: {how}")


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


def _json_object(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a JSON object")
    # Its InvalidJson is a ValueError: pydantic reports it under the parameter's name.
    parsed = read_json(value)
    if parsed == []:
        # twilio-php's Serialize::jsonObject json_encode()s a PHP array, and PHP's empty
        # array, its only spelling of an empty map, encodes as [].
        return {}
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    return parsed


# A parameter whose value is a JSON object (Data, Apn, Fcm...).
JsonObject = Annotated[dict[str, Any] | None, BeforeValidator(_json_object)]


_PAGING = frozenset(("PageSize", "Page", "PageToken"))


class ListQuery(Form):
    """Paging parameters every list takes; subclasses add their filters."""

    blank_typed_value_is_absent = False

    page_size: int = Field(default=50, ge=1, le=1000, alias="PageSize")
    # Only echoed back ("simply for client state"), but it must fit the JSON we answer.
    page: int = Field(default=0, ge=0, le=2**53, alias="Page")
    page_token: PageToken | None = Field(default=None, alias="PageToken")

    _sent_order: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def parse(cls: type[FormModel], form: FormData) -> FormModel:
        query = super().parse(form)
        query._sent_order = tuple(form.names())  # type: ignore[attr-defined]
        return query

    def filters(self) -> dict[str, str | list[str]]:
        """The filters given, in the order the client sent them, for the paging URLs
        (Twilio's fixtures: `?Tag=tag&Identity=identity&PageSize=50&Page=0`)."""
        fields = _field_by_alias(type(self))
        kept: dict[str, str | list[str]] = {}
        for alias in self._sent_order:
            name = fields.get(alias)
            if name is None or alias in _PAGING:
                continue
            value = getattr(self, name)
            if isinstance(value, list):
                if value:
                    kept[alias] = [_query_text(v) for v in value]
            elif value is not None:
                kept[alias] = _query_text(value)
        return kept


def _query_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)
