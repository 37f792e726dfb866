"""Pydantic at the edge: PascalCase form fields in, Twilio's 400s out."""

from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from notify_server.errors import InvalidParameter, MissingParameter
from notify_server.wire import FormData

FormModel = TypeVar("FormModel", bound="Form")


class Form(BaseModel):
    model_config = ConfigDict(populate_by_name=False, extra="ignore", frozen=True)

    @classmethod
    def parse(cls: type[FormModel], form: FormData) -> FormModel:
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            alias = field.alias or name
            if alias not in form:
                continue
            values[alias] = form.all(alias) if _is_list(field.annotation) else form.first(alias)
        return cls.validate_values(values)

    @classmethod
    def validate_values(cls: type[FormModel], values: dict[str, Any]) -> FormModel:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _to_twilio_error(exc) from None


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(_is_list(a) for a in get_args(annotation))


def _to_twilio_error(exc: ValidationError) -> InvalidParameter:
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "body"
    if error["type"] == "missing":
        return MissingParameter(name)
    message = error["msg"].removeprefix("Value error, ")
    return InvalidParameter(f"Parameter '{name}' is invalid: {message}")


def _blank_to_none(value: Any) -> Any:
    # Twilio's forms treat an empty value as "not given".
    return None if value == "" else value


def _parse_bool(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError("must be true or false")
    return value


Optional = BeforeValidator(_blank_to_none)
Boolean = Annotated[bool, BeforeValidator(_parse_bool)]
SidPattern = {
    prefix: rf"^{prefix}[0-9a-fA-F]{{32}}$" for prefix in ("AC", "BS", "CR", "IS", "MG", "SK")
}
