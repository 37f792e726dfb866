"""The removed Users, User Bindings and Segments resources, served as a view of Bindings.

A User is the Bindings of one Identity: it exists while the identity has one, and nothing
about it is stored apart from them. Segments were deprecated for tags (Twilio): none is kept,
so the list is empty and no user is in one.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import Connection

from notify_server.bindings import operations as bindings
from notify_server.bindings.repository import BindingRecord
from notify_server.bindings.schemas import BindingListQuery
from notify_server.errors import InvalidParameter, NotFound, TwilioError
from notify_server.forms import ListQuery
from notify_server.paging import Page, fetch_page
from notify_server.services.operations import get_service
from notify_server.users import repository
from notify_server.users.repository import StoredUser
from notify_server.users.schemas import UserBindingListQuery, UserForm, UserListQuery
from notify_server.wire import utcnow

SEGMENTS_NOT_KEPT = "Segments are not kept (Twilio deprecated them for Tag): tag the Bindings"


class NotServed(TwilioError):
    """An operation of the removed resources that this view cannot honour."""

    status, code = 405, 20004


@dataclass(frozen=True)
class UserRecord:
    id: int
    sid: str
    account_sid: str
    service_sid: str
    identity: str
    date_created: datetime
    date_updated: datetime


def user_sid(service_sid: str, identity: str) -> str:
    # Nothing is stored for a User: its SID is derived, the same on every request.
    return "US" + hashlib.sha256(f"{service_sid}\x00{identity}".encode()).hexdigest()[:32]


def _record(stored: StoredUser, account_sid: str, service_sid: str) -> UserRecord:
    return UserRecord(
        id=stored.id,
        sid=user_sid(service_sid, stored.identity),
        account_sid=account_sid,
        service_sid=service_sid,
        identity=stored.identity,
        date_created=stored.date_created,
        date_updated=stored.date_updated,
    )


def create_user(conn: Connection, account_sid: str, service_sid: str, form: UserForm) -> UserRecord:
    """Nothing to create: the User is there once a Binding names its identity. Accepted, so
    that a client that creates a User before its Bindings (as the removed SDK classes did)
    goes on to create them."""
    if form.segments:
        raise InvalidParameter(f"Parameter 'Segment' is invalid: {SEGMENTS_NOT_KEPT} instead")
    service = get_service(conn, account_sid, service_sid)
    stored = repository.summary(conn, service.id, form.identity)
    if stored is None:
        now = utcnow()
        stored = StoredUser(0, form.identity, now, now)
    return _record(stored, account_sid, service_sid)


def fetch_user(conn: Connection, account_sid: str, service_sid: str, identity: str) -> UserRecord:
    service = get_service(conn, account_sid, service_sid)
    stored = repository.summary(conn, service.id, identity)
    if stored is None:
        raise NotFound()
    return _record(stored, account_sid, service_sid)


def delete_user(conn: Connection, account_sid: str, service_sid: str, identity: str) -> None:
    """Deleting the User deletes what it is: every Binding of the identity."""
    service = get_service(conn, account_sid, service_sid)
    if repository.delete_bindings_of(conn, service.id, identity) == 0:
        raise NotFound()


def list_users(
    conn: Connection, account_sid: str, service_sid: str, query: UserListQuery
) -> Page[UserRecord]:
    service = get_service(conn, account_sid, service_sid)
    page = fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: (
            []
            if query.segments  # no user is in a segment
            else repository.page(
                conn,
                service.id,
                identities=query.identities,
                after_id=after_id,
                before_id=before_id,
                limit=limit,
            )
        ),
    )
    users = [_record(s, account_sid, service_sid) for s in page.items]
    return Page(users, page.next_token, page.previous_token)


def list_user_bindings(
    conn: Connection,
    account_sid: str,
    service_sid: str,
    identity: str,
    query: UserBindingListQuery,
) -> Page[BindingRecord]:
    fetch_user(conn, account_sid, service_sid, identity)  # a User with no Bindings is none
    as_binding_query = BindingListQuery.model_construct(
        page_size=query.page_size,
        page=query.page,
        page_token=query.page_token,
        start_date=query.start_date,
        end_date=query.end_date,
        identities=[identity],
        tags=query.tags,
    )
    return bindings.list_bindings(conn, account_sid, service_sid, as_binding_query)


def fetch_user_binding(
    conn: Connection, account_sid: str, service_sid: str, identity: str, sid: str
) -> BindingRecord:
    binding = bindings.fetch_binding(conn, account_sid, service_sid, sid)
    if binding.identity != identity:
        raise NotFound()  # another User's Binding is not under this one
    return binding


def delete_user_binding(
    conn: Connection, account_sid: str, service_sid: str, identity: str, sid: str
) -> None:
    fetch_user_binding(conn, account_sid, service_sid, identity, sid)
    bindings.delete_binding(conn, account_sid, service_sid, sid)


def create_segment_membership(conn: Connection, account_sid: str, service_sid: str) -> NoReturn:
    get_service(conn, account_sid, service_sid)  # an unknown service is 404, as everywhere
    raise NotServed(f"{SEGMENTS_NOT_KEPT} of this User instead")


def list_segments(
    conn: Connection, account_sid: str, service_sid: str, query: ListQuery
) -> Page[Any]:
    get_service(conn, account_sid, service_sid)
    return fetch_page(query.page_token, query.page_size, lambda after_id, before_id, limit: [])
