"""Twilio's wire formats: SIDs, dates, form bodies, paging envelopes."""

import os
import random
import re
from collections.abc import Iterable, KeysView, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlencode

import orjson

SID_HEX = re.compile(r"[0-9a-fA-F]{32}")


def new_sid(prefix: str) -> str:
    # Twilio SIDs are a two-letter prefix and 32 lower-case hex digits (128 random bits).
    return prefix + os.urandom(16).hex()


def new_request_id() -> str:
    """A Twilio-Request-Id (RQ + 32 hex digits) for every response. Not from os.urandom, as
    stored SIDs are: os.urandom releases the GIL, so the event loop, which makes one of these
    per request, handed the GIL to a waiting database thread each time and then waited to get
    it back. A request id names a log line and guards nothing: Python's own generator
    (reseeded in every forked child) will do."""
    return f"RQ{random.getrandbits(128):032x}"


def is_sid(value: str | None, prefix: str) -> bool:
    return (
        value is not None
        and len(value) == 34
        and value.startswith(prefix)
        and SID_HEX.fullmatch(value, 2) is not None
    )


def utcnow() -> datetime:
    # Stored naive in UTC, to the second: that is all the wire shows.
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def utcnow_precise() -> datetime:
    # For scheduling (leases, backoff), where a second's rounding would delay retries.
    return datetime.now(UTC).replace(tzinfo=None)


def format_date(value: datetime) -> str:
    # twilio-python parses only YYYY-MM-DDTHH:MM:SSZ; anything else stays a raw string.
    return value.isoformat(timespec="seconds") + "Z"


# What a datetime left in a response body becomes: format_date's YYYY-MM-DDTHH:MM:SSZ, by
# orjson (a binding list page has a hundred of them).
JSON_DATES = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS


class FormData:
    """A form body or query string: repeated keys kept in order."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items: dict[str, list[str]] = {}
        for key, value in items:
            self._items.setdefault(key, []).append(value)

    @classmethod
    def parse(cls, raw: bytes | str) -> "FormData":
        """Raises UnicodeDecodeError unless every byte and %-escape is UTF-8."""
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return cls(parse_qsl(text, keep_blank_values=True, errors="strict"))

    def first(self, key: str) -> str | None:
        values = self._items.get(key)
        return values[0] if values else None

    def all(self, key: str) -> list[str]:
        return self._items.get(key, [])

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def names(self) -> KeysView[str]:
        """Each parameter name once, in the order the client first sent it."""
        return self._items.keys()


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def quote_segment(value: str) -> str:
    # Most identities need no quoting; the check is a tenth of quote()'s cost.
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


def page_envelope(
    *,
    key: str,
    records: list[dict],
    page_url: str,
    filters: Mapping[str, str | list[str]],
    page: int,
    page_size: int,
    page_token: str | None,
    next_token: str | None,
    previous_token: str | None,
) -> dict:
    """The v1 list envelope; its URLs keep the filters and point at this server."""

    def url(page_number: int, token: str | None) -> str:
        params: list[tuple[str, str]] = []
        for name, value in filters.items():
            params.extend((name, v) for v in (value if isinstance(value, list) else [value]))
        params += [("PageSize", str(page_size)), ("Page", str(page_number))]
        if token:
            params.append(("PageToken", token))
        return f"{page_url}?{urlencode(params)}"

    return {
        key: records,
        "meta": {
            "page": page,
            "page_size": page_size,
            "first_page_url": url(0, None),
            "previous_page_url": url(page - 1, previous_token) if previous_token else None,
            "url": url(page, page_token),
            "next_page_url": url(page + 1, next_token) if next_token else None,
            "key": key,
        },
    }
