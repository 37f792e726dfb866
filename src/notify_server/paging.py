"""Keyset paging shared by every list: PageToken carries the id to continue from."""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement

from notify_server.errors import InvalidParameter

_TOKEN = re.compile(r"P([TB])([0-9]{1,19})")
_MAX_ID = 2**63 - 1


class HasId(Protocol):
    @property
    def id(self) -> int: ...


Item = TypeVar("Item")
Row = TypeVar("Row", bound=HasId)


@dataclass(frozen=True)
class Page(Generic[Item]):
    items: list[Item]
    next_token: str | None
    previous_token: str | None


def fetch_page(
    page_token: str | None,
    page_size: int,
    fetch: Callable[[int | None, int | None, int], Sequence[Row]],
    *,
    descending: bool = False,
) -> Page[Row]:
    """`fetch(after_id, before_id, limit)` returns rows in the listing's order (the reverse
    when going back): ids ascending, or descending (newest first) with `descending`, where
    "after" is further along the listing, i.e. a smaller id (see `keyset`).

    One row more than the page is asked for, to know whether another page follows; the
    cost of a page is the same at page 1 and page 10,000.
    """
    after_id = before_id = None
    if page_token is not None:
        match = _TOKEN.fullmatch(page_token)
        if match is None or int(match[2]) > _MAX_ID:
            raise InvalidParameter("Parameter 'PageToken' is invalid")
        if match[1] == "T":
            after_id = int(match[2])
        else:
            before_id = int(match[2])
    rows = list(fetch(after_id, before_id, page_size + 1))
    more = len(rows) > page_size
    rows = rows[:page_size]
    next_token: str | None
    previous_token: str | None
    if before_id is not None:
        rows.reverse()
        # Nothing before it: the next page starts at the token's own row.
        step = 1 if descending else -1
        next_token = f"PT{rows[-1].id}" if rows else f"PT{before_id + step}"
        previous_token = f"PB{rows[0].id}" if more else None
    else:
        next_token = f"PT{rows[-1].id}" if more else None
        previous_token = f"PB{rows[0].id}" if after_id is not None and rows else None
    return Page(rows, next_token, previous_token)


def keyset(
    id_column: ColumnElement[int],
    after_id: int | None,
    before_id: int | None,
    *,
    descending: bool = False,
) -> tuple[list[ColumnElement[bool]], ColumnElement[int]]:
    """The WHERE conditions and ORDER BY of one keyset page over `id_column`, in ascending
    id order or (`descending`) newest first."""
    conditions = []
    if after_id is not None:
        conditions.append(id_column < after_id if descending else id_column > after_id)
    if before_id is not None:
        conditions.append(id_column > before_id if descending else id_column < before_id)
    backwards = before_id is not None
    return conditions, (id_column.desc() if backwards != descending else id_column)
