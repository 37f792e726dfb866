"""Twilio's rules for Services, named after the spec's operationIds."""

from sqlalchemy import Connection, Row

from notify_server.credentials import repository as credentials
from notify_server.errors import InvalidParameter, NotFound
from notify_server.paging import Page, fetch_page
from notify_server.services import repository
from notify_server.services.schemas import ServiceForm, ServiceListQuery
from notify_server.wire import new_sid, utcnow

DEFAULT_PROTOCOL_VERSION = "3"
# Columns that fall back to a default when a form leaves them blank.
_DEFAULTS = {
    "default_apn_notification_protocol_version": DEFAULT_PROTOCOL_VERSION,
    "default_gcm_notification_protocol_version": DEFAULT_PROTOCOL_VERSION,
    "default_fcm_notification_protocol_version": DEFAULT_PROTOCOL_VERSION,
    "default_alexa_notification_protocol_version": DEFAULT_PROTOCOL_VERSION,
    "log_enabled": True,
    "delivery_callback_enabled": False,
}
_FORM_NAMES = {name: field.alias for name, field in ServiceForm.model_fields.items()}


def get_service(conn: Connection, account_sid: str, sid: str) -> Row:
    """The account's service, or 404: another account's SID is as unknown as a made-up one."""
    service = repository.by_sid(conn, account_sid, sid)
    if service is None:
        raise NotFound()
    return service


def _checked(conn: Connection, account_sid: str, values: dict) -> dict:
    for column in repository.CREDENTIAL_COLUMNS:
        sid = values.get(column)
        if sid is not None and not credentials.exists(conn, account_sid, sid):
            raise InvalidParameter(
                f"Parameter '{_FORM_NAMES[column]}' is invalid: Credential {sid} was not found"
            )
    return {
        column: _DEFAULTS[column] if value is None and column in _DEFAULTS else value
        for column, value in values.items()
    }


def create_service(conn: Connection, account_sid: str, form: ServiceForm) -> Row:
    now = utcnow()
    values = {**_DEFAULTS, **_checked(conn, account_sid, form.given())}
    sid = new_sid("IS")
    repository.insert_service(
        conn,
        {
            **values,
            "sid": sid,
            "account_sid": account_sid,
            "date_created": now,
            "date_updated": now,
        },
    )
    return get_service(conn, account_sid, sid)


def update_service(conn: Connection, account_sid: str, sid: str, form: ServiceForm) -> Row:
    service = get_service(conn, account_sid, sid)
    values = _checked(conn, account_sid, form.given())
    repository.update_service(conn, service.id, {**values, "date_updated": utcnow()})
    return get_service(conn, account_sid, sid)


def delete_service(conn: Connection, account_sid: str, sid: str) -> None:
    if not repository.delete_service(conn, account_sid, sid):
        raise NotFound()


def list_services(conn: Connection, account_sid: str, query: ServiceListQuery) -> Page[Row]:
    return fetch_page(
        query.page_token,
        query.page_size,
        lambda after_id, before_id, limit: repository.page(
            conn,
            account_sid,
            friendly_name=query.friendly_name,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        ),
    )
