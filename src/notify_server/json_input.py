"""The one reader of JSON a client sends inside a parameter (Data, Apn, ToBinding,
ServiceAccount...). Whatever it accepts can be stored on either database, re-serialised by
orjson and delivered unchanged; whatever it refuses raises InvalidJson, and nothing else."""

import json
from typing import Any

import orjson

MAX_DEPTH = 64
# orjson re-serialises up to unsigned 64 bits, but PostgreSQL's bigint, JavaScript clients and
# most providers stop at signed 64: a wider integer would not arrive as it was sent.
_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1
_NON_NUMBERS = ("NaN", "Infinity", "-Infinity")
_WIDE_INTEGER = "has an integer outside the signed 64-bit range"
# Any integer literal outside signed 64 bits has at least 19 digits in a row. Found by mapping
# every digit to "0" and everything else to " ": six times faster than a regular expression.
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"0" * 19


class InvalidJson(ValueError):
    """The reason, worded to follow "Parameter 'X' is invalid: ". A ValueError, so a pydantic
    validator reports it under the parameter's name."""


def read_json(text: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(_reason(text, exc)) from None
    # orjson already refused NaN/Infinity, numbers that overflow a double, lone surrogates and
    # nesting past its own limit (1024). The rest is decided from the text when it can be, so
    # that a typical payload costs no more than json.loads did: fewer brackets than MAX_DEPTH,
    # no \u0000 escape (the only way JSON can spell NUL) and no 19-digit run break no rule.
    if (
        text.count("{") + text.count("[") <= MAX_DEPTH
        and "\\u0000" not in text
        # (Encoding cannot fail: orjson has refused any surrogate.)
        and _LONG_DIGITS not in text.encode().translate(_DIGITS_TO_ZERO)
    ):
        return value
    # Otherwise walk the value, without recursion.
    stack: list[tuple[Any, int]] = [(value, 1)]
    wide_float = False
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidJson("contains a NUL character")
        elif isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise InvalidJson(f"nested deeper than {MAX_DEPTH} levels")
            for key, member in item.items():
                if "\x00" in key:
                    raise InvalidJson("contains a NUL character")
                stack.append((member, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise InvalidJson(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((member, depth + 1) for member in item)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not _MIN_INT <= item <= _MAX_INT:
                raise InvalidJson(_WIDE_INTEGER)
        elif isinstance(item, float) and abs(item) >= 2**63:
            wide_float = True
    # orjson turns an integer literal beyond 64 bits into a float, silently losing digits.
    # Such a float may also have been written as one (1e300), so only then, and rarely, ask
    # the standard parser what the literal was (safe: the depth is known to be small).
    if wide_float:
        try:
            json.loads(text, parse_int=_checked_int)
        except InvalidJson:
            raise
        except ValueError:  # not expected: orjson is the stricter of the two
            raise InvalidJson("is not valid JSON") from None
    return value


def _checked_int(literal: str) -> int:
    # The length first: int() refuses literals past 4300 digits with a ValueError of its own.
    if len(literal.lstrip("-")) > 19 or not _MIN_INT <= (number := int(literal)) <= _MAX_INT:
        raise InvalidJson(_WIDE_INTEGER)
    return number


def _reason(text: str, exc: orjson.JSONDecodeError) -> str:
    message = exc.msg
    if "depth limit" in message:
        return f"nested deeper than {MAX_DEPTH} levels"
    if "surrogate" in message:
        return "contains a lone surrogate (\\ud800-\\udfff)"
    if "infinity" in message:
        return "has a number too large for a double"
    if text[exc.pos :].startswith(_NON_NUMBERS):
        return "NaN and Infinity are not JSON numbers"
    return f"is not valid JSON ({message} at line {exc.lineno} column {exc.colno})"
