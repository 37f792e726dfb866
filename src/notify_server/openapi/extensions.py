"""What notify-server serves beyond Twilio's Notify v1, as OpenAPI fragments merged into
Twilio's description. Every fragment carries `x-notify-server-extension: true`."""

from typing import Any

EXTENSION = "x-notify-server-extension"
DELIVERY_TAG = "NotifyServerDelivery"
NOTIFICATIONS_TAG = "NotifyServerNotifications"
OPERATIONS_TAG = "NotifyServerOperations"


def marked(fragment: dict[str, Any], description: str) -> dict[str, Any]:
    return {**fragment, EXTENSION: True, "description": f"notify-server extension: {description}"}


def _sid(prefix: str, *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": 34,
        "maxLength": 34,
        "pattern": f"^{prefix}[0-9a-fA-F]{{32}}$",
    }
    return {**schema, "nullable": True} if nullable else schema


def _text(*, nullable: bool = True, **more: Any) -> dict[str, Any]:
    return {"type": "string", "nullable": nullable, **more}


# The APNs token-auth and FCM v1 fields of CredentialUpdateForm (credentials/schemas.py).
CREDENTIAL_FIELDS: dict[str, dict[str, Any]] = {
    "TokenKey": marked(
        {"type": "string", "maxLength": 65536},
        "[APN only, token auth] The PEM text of an APNs auth key (.p8). With `KeyId` and"
        " `TeamId` it signs the provider token used instead of `Certificate`/`PrivateKey`.",
    ),
    "KeyId": marked(
        {"type": "string", "maxLength": 64},
        "[APN only, token auth] The Key ID Apple shows for the .p8 key.",
    ),
    "TeamId": marked(
        {"type": "string", "maxLength": 64},
        "[APN only, token auth] The Apple Developer Team ID that issued the key.",
    ),
    "BundleId": marked(
        {"type": "string", "maxLength": 256},
        "[APN only] The app's bundle id, sent as `apns-topic`; required with token auth.",
    ),
    "ServiceAccount": marked(
        {"type": "string", "maxLength": 65536},
        "[FCM only] A Google service account JSON key file (with `project_id`,"
        " `client_email` and `private_key`): notifications go out through FCM HTTP v1"
        " instead of the legacy `Secret`. Write-only, like every secret.",
    ),
}

DELIVERY_SCHEMA = marked(
    {
        "type": "object",
        "properties": {
            "notification_sid": _sid("NT"),
            "binding_sid": {
                **_sid("BS", nullable=True),
                "description": "Null for a `ToBinding` target.",
            },
            "identity": _text(),
            "binding_type": {"$ref": "#/components/schemas/binding_enum_binding_type"},
            "address": _text(nullable=False),
            "status": {"type": "string", "enum": ["pending", "sending", "sent", "failed"]},
            "attempts": {"type": "integer"},
            "provider_message_id": _text(),
            "provider_status": {"type": "integer", "nullable": True},
            "provider_response": _text(),
            "error_message": _text(),
            "callback_error": _text(
                description="Why no delivery callback reports this delivery, if none does."
            ),
            "date_created": _text(nullable=False, format="date-time"),
            "date_updated": _text(nullable=False, format="date-time"),
            "provider_request": {"$ref": "#/components/schemas/notify_server.provider_request"},
        },
    },
    "What happened to one target of a Notification.",
)

PROVIDER_REQUEST_SCHEMA = marked(
    {
        "type": "object",
        "properties": {
            "provider": {
                "type": "string",
                "description": "The API the request is for: apns, fcm (fcm and gcm bindings,"
                " FCM HTTP v1), sms (a Twilio-compatible Messages API); a retired binding"
                " type's name.",
            },
            "channel": {
                "type": "string",
                "enum": ["apns", "fcm", "sms", "log", "retired"],
                "description": "Who handles the delivery: `log` when no provider is"
                " configured (nothing leaves the machine), `retired` for facebook-messenger"
                " and alexa.",
            },
            "method": {"type": "string", "nullable": True, "enum": ["POST"]},
            "url": _text(
                description="`<...>` marks what is unknown without a credential or setting."
            ),
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Secrets are placeholders: `bearer <provider token>`,"
                " `Bearer <access token>`, `Basic <NOTIFY_SMS_ACCOUNT_SID:...>`.",
            },
            "body": {
                "nullable": True,
                "description": "APNs and FCM: the JSON object, sent as compact JSON in this"
                " key order. SMS: the form as [name, value] pairs, URL-encoded in this order."
                " Null when nothing is sent.",
            },
            "notes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What is unknown, or why nothing is sent; empty when the"
                " request is exactly what the provider gets.",
            },
        },
    },
    "the exact request a provider receives, or would receive, for one delivery.",
)

NOTIFICATION_DETAIL_SCHEMA = marked(
    {
        "allOf": [
            {"$ref": "#/components/schemas/notify.v1.service.notification"},
            {
                "type": "object",
                "properties": {
                    "delivery_summary": {
                        "type": "object",
                        "properties": {
                            status: {"type": "integer"}
                            for status in ("pending", "sending", "sent", "failed")
                        },
                    },
                    "links": {
                        "type": "object",
                        "properties": {"deliveries": {"type": "string", "format": "uri"}},
                    },
                },
            },
        ]
    },
    "a Notification as created, its deliveries counted per status.",
)


def _path_sid(name: str, prefix: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "description": f"The SID of the {what}.",
        "schema": _sid(prefix),
        "required": True,
    }


def _paging_parameters(twilio: dict[str, Any]) -> list[dict[str, Any]]:
    # The same PageSize/Page/PageToken as every Twilio list.
    listing = twilio["paths"]["/v1/Credentials"]["get"]
    return [p for p in listing["parameters"] if p["name"] in ("PageSize", "Page", "PageToken")]


def _page_meta(twilio: dict[str, Any]) -> dict[str, Any]:
    listing = twilio["paths"]["/v1/Credentials"]["get"]
    response = listing["responses"]["200"]["content"]["application/json"]["schema"]
    meta: dict[str, Any] = response["properties"]["meta"]
    return meta


def _json_answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _status_schema(*values: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": list(values)}},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _list_response(title: str, key: str, item: str, twilio: dict[str, Any]) -> dict[str, Any]:
    return _json_answer(
        {
            "type": "object",
            "title": title,
            "properties": {
                key: {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
                "meta": _page_meta(twilio),
            },
        },
        "OK",
    )


def list_notifications(twilio: dict[str, Any]) -> dict[str, Any]:
    """GET on Twilio's own Notifications path (Twilio answers 405 there)."""
    dates = [p for p in twilio["paths"]["/v1/Services/{ServiceSid}/Bindings"]["get"]["parameters"]
             if p["name"] in ("StartDate", "EndDate")]  # fmt: skip
    return marked(
        {
            "operationId": "ListNotification",
            "tags": [NOTIFICATIONS_TAG],
            "summary": "List a Service's Notifications, newest first",
            "security": [{"accountSid_authToken": []}],
            "parameters": [
                _path_sid("ServiceSid", "IS", "Service to read the Notifications from"),
                *dates,
                *_paging_parameters(twilio),
            ],
            "responses": {
                "200": _list_response(
                    "ListNotificationResponse",
                    "notifications",
                    "notify.v1.service.notification",
                    twilio,
                )
            },
        },
        "each item is the body the Notification's create answered; StartDate and EndDate"
        " are UTC days, both inclusive.",
    )


def paths(twilio: dict[str, Any]) -> dict[str, dict[str, Any]]:
    notification = marked(
        {
            "get": marked(
                {
                    "operationId": "FetchNotification",
                    "tags": [NOTIFICATIONS_TAG],
                    "summary": "Fetch a Notification and its delivery summary",
                    "security": [{"accountSid_authToken": []}],
                    "parameters": [
                        _path_sid("ServiceSid", "IS", "Service the Notification belongs to"),
                        _path_sid("Sid", "NT", "Notification"),
                    ],
                    "responses": {
                        "200": _json_answer(
                            {"$ref": "#/components/schemas/notify_server.notification_detail"},
                            "OK",
                        )
                    },
                },
                "the created body plus `delivery_summary` and `links.deliveries`.",
            )
        },
        "one Notification (Twilio could not fetch one).",
    )
    deliveries = marked(
        {
            "get": marked(
                {
                    "operationId": "ListDelivery",
                    "tags": [DELIVERY_TAG],
                    "summary": "List a Notification's deliveries",
                    "security": [{"accountSid_authToken": []}],
                    "parameters": [
                        _path_sid("ServiceSid", "IS", "Service the Notification belongs to"),
                        _path_sid("Sid", "NT", "Notification"),
                        _query(
                            "Status",
                            {"type": "string", "enum": ["pending", "sending", "sent", "failed"]},
                            "Only deliveries in this state.",
                        ),
                        _query(
                            "BindingType",
                            {"$ref": "#/components/schemas/binding_enum_binding_type"},
                            "Only deliveries to bindings of this type.",
                        ),
                        *_paging_parameters(twilio),
                    ],
                    "responses": {
                        "200": _list_response(
                            "ListDeliveryResponse", "deliveries", "notify_server.delivery", twilio
                        )
                    },
                },
                "one row per target, oldest first, in Twilio's paging envelope, each with the"
                " request its provider received or would receive.",
            )
        },
        "what happened to each target of a Notification (Twilio has no such resource).",
    )
    health = {
        "tags": [OPERATIONS_TAG],
        "security": [],
    }
    return {
        "/v1/Services/{ServiceSid}/Notifications/{Sid}": notification,
        "/v1/Services/{ServiceSid}/Notifications/{Sid}/Deliveries": deliveries,
        "/healthz": marked(
            {
                "get": marked(
                    {
                        **health,
                        "operationId": "Healthz",
                        "responses": {"200": _json_answer(_status_schema("ok"), "Alive")},
                    },
                    "the process answers (liveness); no database access.",
                )
            },
            "liveness probe.",
        ),
        "/readyz": marked(
            {
                "get": marked(
                    {
                        **health,
                        "operationId": "Readyz",
                        "responses": {
                            "200": _json_answer(_status_schema("ready"), "Ready"),
                            "503": _json_answer(
                                {
                                    **_status_schema("unavailable"),
                                    "properties": {
                                        "status": {"type": "string", "enum": ["unavailable"]},
                                        "reason": {"type": "string"},
                                    },
                                },
                                "Not ready, and why",
                            ),
                        },
                    },
                    "the database answers, is migrated and the secret key is checked.",
                )
            },
            "readiness probe.",
        ),
        "/metrics": marked(
            {
                "get": marked(
                    {
                        "tags": [OPERATIONS_TAG],
                        "operationId": "Metrics",
                        "security": [{"metricsToken": []}],
                        "responses": {
                            "200": {
                                "description": "Prometheus text exposition",
                                "content": {"text/plain": {"schema": {"type": "string"}}},
                            },
                            "404": {"description": "No `NOTIFY_METRICS_TOKEN` is set"},
                        },
                    },
                    "Prometheus metrics; on the API port only when NOTIFY_METRICS_TOKEN is set.",
                )
            },
            "Prometheus metrics.",
        ),
    }


USERS_TAG = "NotifyServerUsers"


def _identity() -> dict[str, Any]:
    return {
        "name": "Identity",
        "in": "path",
        "description": "The identity whose bindings the User is.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
        "required": True,
    }


def _users_operation(operation_id: str, parameters: list[dict[str, Any]], what: str) -> dict:
    answers: dict[str, Any] = {
        "204" if operation_id.startswith("Delete") else "200": {"description": "OK"},
        "401": {"description": "Unauthorized"},
        "404": {"description": "Not found"},
    }
    if operation_id.startswith("Create"):
        answers = {"201": {"description": "Created"}, **answers}
        answers.pop("200", None)
    return marked(
        {
            "operationId": operation_id,
            "tags": [USERS_TAG],
            "security": [{"accountSid_authToken": []}],
            "parameters": parameters,
            "responses": answers,
        },
        what,
    )


def users_paths(twilio: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Twilio's removed Users, User Bindings and Segments resources, served as a view of a
    service's bindings (docs/behaviour.md, issue 10)."""
    service = _path_sid("ServiceSid", "IS", "Service")
    paging = _paging_parameters(twilio)
    user = [service, _identity()]
    binding = [*user, _path_sid("Sid", "BS", "Binding")]
    removed = "a resource Twilio removed in 2018, served as a view of the identity's bindings."
    return {
        "/v1/Services/{ServiceSid}/Users": marked(
            {
                "get": _users_operation("ListUser", [service, *paging], "the identities."),
                "post": _users_operation("CreateUser", [service], "accepted, stores nothing."),
            },
            removed,
        ),
        "/v1/Services/{ServiceSid}/Users/{Identity}": marked(
            {
                "get": _users_operation("FetchUser", user, "one identity."),
                "delete": _users_operation("DeleteUser", user, "deletes its bindings."),
            },
            removed,
        ),
        "/v1/Services/{ServiceSid}/Users/{Identity}/Bindings": marked(
            {
                "get": _users_operation("ListUserBinding", [*user, *paging], "its bindings."),
                "post": _users_operation("CreateUserBinding", user, "a binding of it."),
            },
            removed,
        ),
        "/v1/Services/{ServiceSid}/Users/{Identity}/Bindings/{Sid}": marked(
            {
                "get": _users_operation("FetchUserBinding", binding, "one of its bindings."),
                "delete": _users_operation("DeleteUserBinding", binding, "one of its bindings."),
            },
            removed,
        ),
        "/v1/Services/{ServiceSid}/Users/{Identity}/SegmentMemberships": marked(
            {"post": _users_operation("CreateSegmentMembership", user, "refused: 405.")},
            removed,
        ),
        "/v1/Services/{ServiceSid}/Segments": marked(
            {"get": _users_operation("ListSegment", [service, *paging], "always empty.")},
            removed,
        ),
    }


def apply(description: dict[str, Any]) -> None:
    """Merge the extensions into Twilio's description, in place."""
    description["paths"].update(paths(description))
    description["paths"].update(users_paths(description))
    description["paths"]["/v1/Services/{ServiceSid}/Notifications"]["get"] = list_notifications(
        description
    )
    components = description["components"]
    components["schemas"]["notify_server.delivery"] = DELIVERY_SCHEMA
    components["schemas"]["notify_server.provider_request"] = PROVIDER_REQUEST_SCHEMA
    components["schemas"]["notify_server.notification_detail"] = NOTIFICATION_DETAIL_SCHEMA
    components["securitySchemes"]["metricsToken"] = marked(
        {"type": "http", "scheme": "bearer"}, "NOTIFY_METRICS_TOKEN, for /metrics."
    )
    for path, operation in (("/v1/Credentials", "post"), ("/v1/Credentials/{Sid}", "post")):
        body = description["paths"][path][operation]["requestBody"]
        form = body["content"]["application/x-www-form-urlencoded"]["schema"]
        form["properties"].update(CREDENTIAL_FIELDS)
    description["tags"].extend(
        [
            marked({"name": DELIVERY_TAG}, "deliveries of a Notification."),
            marked({"name": NOTIFICATIONS_TAG}, "the Notifications sent, and one of them."),
            marked({"name": OPERATIONS_TAG}, "probes and metrics for operators."),
            marked({"name": USERS_TAG}, "Twilio's removed Users and Segments, as a view."),
        ]
    )
