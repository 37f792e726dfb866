"""Twilio's rules for Bindings, named after the spec's operationIds."""

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from notify_server.bindings import repository
from notify_server.bindings.repository import BindingRecord
from notify_server.bindings.schemas import BINDING_TYPES, BindingForm, BindingListQuery
from notify_server.errors import InvalidParameter, LimitExceeded, NotFound
from notify_server.paging import Page, fetch_page
from notify_server.services.operations import get_service
from notify_server.wire import new_sid, utcnow

MAX_BINDINGS_PER_IDENTITY = 20
# What Twilio's own samples show for channels whose payload format is fixed.
FIXED_FORMAT_VERSION = "default"


def create_binding(
    conn: Connection, account_sid: str, service_sid: str, form: BindingForm
) -> BindingRecord:
    """Create a binding, or replace in place the one this registration repeats.

    The same Endpoint, or else the same identity + type + address, names the same binding:
    it keeps its sid and date_created. At most 20 bindings per identity, counted under a
    lock so concurrent requests and several processes cannot overshoot. On PostgreSQL this
    is two round trips: the locks with the probe, then the writes with the COMMIT.
    """
    address_key = repository.digest(form.identity, form.binding_type, form.address)
    endpoint_key = _endpoint_key(form.endpoint)
    probe = repository.lock_and_probe(
        conn,
        account_sid=account_sid,
        service_sid=service_sid,
        identity=form.identity,
        address_key=address_key,
        endpoint_key=endpoint_key,
        credential_sid=form.credential_sid,
    )
    if probe is None:
        raise NotFound()
    if form.credential_sid and not probe.credential_found:
        raise InvalidParameter(
            f"Parameter 'CredentialSid' is invalid: Credential {form.credential_sid} was not found"
        )
    service = probe.service
    now = utcnow()
    values = {
        "identity": form.identity,
        "binding_type": form.binding_type,
        "address": form.address,
        "address_key": address_key,
        "endpoint": form.endpoint,
        "endpoint_key": endpoint_key,
        "credential_sid": form.credential_sid,
        "notification_protocol_version": form.notification_protocol_version
        or service.protocol_versions.get(form.binding_type, FIXED_FORMAT_VERSION),
        "tags": form.tags,
        "date_updated": now,
    }
    same_address = probe.same_address
    existing = probe.same_endpoint or same_address
    if existing is not None and form.endpoint is None:
        # A re-registration that names no Endpoint keeps the one the binding has.
        values["endpoint"] = existing.endpoint
        values["endpoint_key"] = _endpoint_key(existing.endpoint)
    if existing is not None:
        if same_address is not None and same_address.id != existing.id:
            # The endpoint's binding takes over this identity+type+address: one device, one binding.
            repository.delete_by_id(conn, same_address.id)
        elif existing.identity != form.identity:
            _check_identity_room(form.identity, probe.identity_bindings)
        repository.update_binding(conn, existing.id, existing.sid, values)
        return _new_record(
            existing.sid, account_sid, service_sid, existing.date_created, values, existing.id
        )

    _check_identity_room(form.identity, probe.identity_bindings)
    sid = new_sid("BS")
    repository.insert_binding(
        conn,
        service.service_id,
        {**values, "sid": sid, "account_sid": account_sid, "date_created": now},
    )
    return _new_record(sid, account_sid, service_sid, now, values)


def _new_record(
    sid: str,
    account_sid: str,
    service_sid: str,
    date_created: datetime,
    values: dict,
    binding_id: int = 0,
) -> BindingRecord:
    return BindingRecord(
        sid=sid,
        account_sid=account_sid,
        service_sid=service_sid,
        identity=values["identity"],
        binding_type=values["binding_type"],
        address=values["address"],
        endpoint=values["endpoint"],
        credential_sid=values["credential_sid"],
        notification_protocol_version=values["notification_protocol_version"],
        tags=values["tags"],
        date_created=date_created,
        date_updated=values["date_updated"],
        id=binding_id,
    )


def _endpoint_key(endpoint: str | None) -> str | None:
    return repository.digest(endpoint) if endpoint is not None else None


def _check_identity_room(identity: str, bindings_so_far: int) -> None:
    if bindings_so_far >= MAX_BINDINGS_PER_IDENTITY:
        raise LimitExceeded(
            f"Identity '{identity}' already has the maximum of {MAX_BINDINGS_PER_IDENTITY}"
            " Bindings in this Service"
        )


def fetch_binding(conn: Connection, account_sid: str, service_sid: str, sid: str) -> BindingRecord:
    binding = repository.fetch(conn, account_sid, service_sid, sid)
    if binding is None:
        raise NotFound()
    return binding


def delete_binding(conn: Connection, account_sid: str, service_sid: str, sid: str) -> None:
    service = get_service(conn, account_sid, service_sid)
    if not repository.delete_by_sid(conn, service.id, sid):
        raise NotFound()


def split_tags(tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """(binding types, stored tags): `all` selects everything, a type name selects that type."""
    binding_types = [t for t in tags if t in BINDING_TYPES]
    stored_tags = [t for t in tags if t != "all" and t not in BINDING_TYPES]
    return binding_types, stored_tags


def list_bindings(
    conn: Connection, account_sid: str, service_sid: str, query: BindingListQuery
) -> Page[BindingRecord]:
    binding_types, stored_tags = split_tags(query.tags)
    page = fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.page(
            conn,
            account_sid,
            service_sid,
            identities=query.identities,
            tags=stored_tags,
            binding_types=binding_types,
            start_date=query.start_date,
            end_date=query.end_date,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        ),
    )
    if not page.items:  # an empty page, or no such service: only then is it worth asking
        get_service(conn, account_sid, service_sid)
    return page
