"""Twilio's rules for Credentials, named after the spec's operationIds."""

from sqlalchemy import Connection, Row

from notify_server.bindings import repository as bindings
from notify_server.credentials import repository
from notify_server.credentials.schemas import (
    SECRET_FIELDS,
    CredentialForm,
    CredentialUpdateForm,
)
from notify_server.crypto import SecretBox
from notify_server.errors import NotFound
from notify_server.forms import ListQuery
from notify_server.paging import Page, fetch_page
from notify_server.services import repository as services
from notify_server.wire import new_sid, utcnow


def get_credential(conn: Connection, account_sid: str, sid: str) -> Row:
    credential = repository.by_sid(conn, account_sid, sid)
    if credential is None:
        raise NotFound()
    return credential


def _sandbox(credential_type: str, given: bool | None) -> bool | None:
    # Sandbox is an APN notion; APN credentials default to production.
    return (given or False) if credential_type == "apn" else None


def create_credential(
    conn: Connection, account_sid: str, form: CredentialForm, box: SecretBox
) -> Row:
    now = utcnow()
    sid = new_sid("CR")
    secrets = {k: v for k in SECRET_FIELDS if (v := getattr(form, k)) is not None}
    repository.insert_credential(
        conn,
        {
            "sid": sid,
            "account_sid": account_sid,
            "type": form.type,
            "friendly_name": form.friendly_name,
            "sandbox": _sandbox(form.type, form.sandbox),
            "encrypted_secrets": box.seal(secrets) if secrets else None,
            "date_created": now,
            "date_updated": now,
        },
    )
    return get_credential(conn, account_sid, sid)


def update_credential(
    conn: Connection, account_sid: str, sid: str, form: CredentialUpdateForm, box: SecretBox
) -> Row:
    credential = get_credential(conn, account_sid, sid)
    given = form.given()
    values: dict = {"date_updated": utcnow()}
    if "friendly_name" in given:
        values["friendly_name"] = given["friendly_name"]
    if "sandbox" in given and credential.type == "apn":
        values["sandbox"] = _sandbox(credential.type, given["sandbox"])
    changed_secrets = {k: given[k] for k in SECRET_FIELDS if k in given}
    if changed_secrets:
        stored = box.open(credential.encrypted_secrets) if credential.encrypted_secrets else {}
        merged = {k: v for k, v in {**stored, **changed_secrets}.items() if v is not None}
        values["encrypted_secrets"] = box.seal(merged) if merged else None
    repository.update_credential(conn, credential.id, values)
    return get_credential(conn, account_sid, sid)


def delete_credential(conn: Connection, account_sid: str, sid: str) -> None:
    if not repository.delete_credential(conn, account_sid, sid):
        raise NotFound()
    # Services and bindings that named it fall back to no credential.
    now = utcnow()
    services.forget_credential(conn, account_sid, sid, now)
    bindings.forget_credential(conn, account_sid, sid, now)


def list_credentials(conn: Connection, account_sid: str, query: ListQuery) -> Page[Row]:
    return fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.page(
            conn, account_sid, after_id=after_id, before_id=before_id, limit=limit
        ),
    )
