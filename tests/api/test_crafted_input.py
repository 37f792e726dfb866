"""Crafted input through HTTP: every JSON-valued parameter goes through one strict reader
(depth, surrogates, NUL, non-numbers, wide numbers), multipart fields must be UTF-8, and SIDs
with upper-case hex find the lower-case resource. Never a 500; a refusal stores nothing."""

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from notify_server.models import Credential
from notify_server.notifications.models import Delivery, Notification
from tests.errors import assert_invalid, not_found, twilio_error
from tests.factories import Account, make_binding, make_credential, make_service

DEPTH = "nested deeper than 64 levels"
SURROGATE = "contains a lone surrogate (\\ud800-\\udfff)"
NUL = "contains a NUL character"
NON_NUMBER = "NaN and Infinity are not JSON numbers"
OVERFLOW = "has a number too large for a double"
WIDE_INTEGER = "has an integer outside the signed 64-bit range"
NOT_UTF8 = "not valid UTF-8"

OVERRIDES = {
    "Data": "data",
    "Apn": "apn",
    "Fcm": "fcm",
    "Gcm": "gcm",
    "Sms": "sms",
    "FacebookMessenger": "facebook_messenger",
    "Alexa": "alexa",
}
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "notify-crafted",
    "client_email": "push@notify-crafted.iam.gserviceaccount.com",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIcrafted\n-----END PRIVATE KEY-----\n",
}


def nested_list(levels: int) -> str:
    return "[" * levels + "]" * levels


def nested_object(levels: int) -> str:
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


# JSON fragments, each placed one level inside its parameter's object (so a fragment of
# depth 63 makes a parameter of depth 64), and the reason each refusal must give.
REFUSED = {
    "depth 65": (nested_list(64), DEPTH),
    "objects 65 deep": (nested_object(64), DEPTH),
    "500 deep": (nested_object(500), DEPTH),
    "5,000 deep": (nested_list(5_000), DEPTH),
    "100,000 deep": (nested_list(100_000), DEPTH),
    "lone high surrogate": ('"\\ud800"', SURROGATE),
    "lone low surrogate": ('"x\\udc00y"', SURROGATE),
    "surrogate in a key": ('{"\\ud800": 1}', SURROGATE),
    "NUL in a value": ('"a\\u0000b"', NUL),
    "NUL in a key": ('{"k\\u0000": 1}', NUL),
    "NUL deep down": ("[" * 30 + '"\\u0000"' + "]" * 30, NUL),
    "NaN": ("NaN", NON_NUMBER),
    "Infinity": ("[1, Infinity]", NON_NUMBER),
    "-Infinity": ("-Infinity", NON_NUMBER),
    "1e999999": ("1e999999", OVERFLOW),
    "-1e999999": ("-1e999999", OVERFLOW),
    "2**63": (str(2**63), WIDE_INTEGER),
    "-(2**63)-1": (str(-(2**63) - 1), WIDE_INTEGER),
    "2**64 - 1": (str(2**64 - 1), WIDE_INTEGER),
    # orjson would quietly turn this into a float, losing digits.
    "10**20": (str(10**20), WIDE_INTEGER),
    "wide integer beside a big float": (f"[1e300, {10**25}]", WIDE_INTEGER),
}
# Fragments that must be accepted and come back exactly as json.loads reads them.
ACCEPTED = {
    "depth 64": nested_list(63),
    "objects 64 deep": nested_object(63),
    "largest int64": str(2**63 - 1),
    "smallest int64": str(-(2**63)),
    "largest double": "1.7976931348623157e308",
    "big float": "1e300",
    "a float with 20 digits": "12345678901234567890.5",
    "digits in a string": '"123456789012345678901234567890"',
    "brackets in a string": json.dumps("[" * 100 + "{" * 100),
    "an escaped backslash before u0000": '"\\\\u0000"',
    "BMP text": json.dumps("ünïcödé ✓ 中文 ﬁ", ensure_ascii=False),
    "emoji": json.dumps("📦😀👩‍👩‍👧", ensure_ascii=False),
    "emoji as a surrogate pair escape": '"\\ud83d\\ude00"',
    "escaped BMP": '"\\u00e9\\u4e2d"',
}


@dataclass(frozen=True)
class Family:
    """A JSON-valued parameter: how to send a fragment in it, and how to read it back."""

    name: str
    send: Callable[["Ctx", str], object]
    echoed: Callable[["Ctx", object], object]


@dataclass(frozen=True)
class Ctx:
    client: TestClient
    engine: Engine
    account: Account
    service_sid: str
    secret_key: str


def notifications_path(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Notifications"


def _send_override(name: str) -> Callable[[Ctx, str], object]:
    def send(ctx: Ctx, fragment: str) -> object:
        return ctx.client.post(
            notifications_path(ctx.service_sid),
            data={"Tag": "all", name: '{"k": ' + fragment + "}"},
            auth=ctx.account.auth,
        )

    return send


def _echoed_override(field: str) -> Callable[[Ctx, object], object]:
    def echoed(ctx: Ctx, response) -> object:  # type: ignore[no-untyped-def]
        return response.json()[field]["k"]

    return echoed


def _send_to_binding(ctx: Ctx, fragment: str) -> object:
    # A string is the address, which the Deliveries list echoes; anything else goes in a
    # member ToBinding ignores, which the reader checks all the same.
    if fragment.startswith('"'):
        target = '{"binding_type": "apn", "address": ' + fragment + "}"
    else:
        target = '{"binding_type": "apn", "address": "token", "extra": ' + fragment + "}"
    return ctx.client.post(
        notifications_path(ctx.service_sid), data={"ToBinding": target}, auth=ctx.account.auth
    )


def _echoed_to_binding(ctx: Ctx, response) -> object:  # type: ignore[no-untyped-def]
    rows = ctx.client.get(
        f"{notifications_path(ctx.service_sid)}/{response.json()['sid']}/Deliveries",
        auth=ctx.account.auth,
    ).json()["deliveries"]
    (row,) = rows
    return row["address"]


def _send_service_account(ctx: Ctx, fragment: str) -> object:
    text = json.dumps(SERVICE_ACCOUNT)[:-1] + ', "k": ' + fragment + "}"
    return ctx.client.post(
        "/v1/Credentials", data={"Type": "fcm", "ServiceAccount": text}, auth=ctx.account.auth
    )


def _echoed_service_account(ctx: Ctx, response) -> object:  # type: ignore[no-untyped-def]
    # Write-only: read back what was sealed, which must be the very text sent.
    credentials = Credential.__table__
    with ctx.engine.connect() as conn:
        sealed = conn.execute(
            select(credentials.c.encrypted_secrets).where(
                credentials.c.sid == response.json()["sid"]
            )
        ).scalar_one()
    secrets = json.loads(Fernet(ctx.secret_key.encode()).decrypt(sealed.encode()))
    return json.loads(secrets["service_account"])["k"]


FAMILIES = [
    *(Family(name, _send_override(name), _echoed_override(f)) for name, f in OVERRIDES.items()),
    Family("ToBinding", _send_to_binding, _echoed_to_binding),
    Family("ServiceAccount", _send_service_account, _echoed_service_account),
]


def stored(engine: Engine) -> tuple[int, int, int]:
    """Notifications, outbox rows and credentials: a refusal changes none of them."""
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()
            for model in (Notification, Delivery, Credential)
        )


@pytest.fixture
def service_sid(client: TestClient, account: Account) -> str:
    return make_service(client, account, FriendlyName="crafted")["sid"]


@pytest.fixture
def ctx(client, engine, account, service_sid, secret_key) -> Ctx:
    return Ctx(client, engine, account, service_sid, secret_key)


class TestStrictJson:
    @pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
    @pytest.mark.parametrize(("fragment", "reason"), REFUSED.values(), ids=REFUSED.keys())
    def test_refused_naming_the_parameter(self, ctx, family, fragment, reason):
        if family.name == "ServiceAccount" and len(fragment) > 65_536:
            reason = "String should have at most 65536 characters"  # refused before parsing
        before = stored(ctx.engine)
        response = family.send(ctx, fragment)
        assert_invalid(response, family.name, reason)
        assert stored(ctx.engine) == before

    @pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
    @pytest.mark.parametrize("fragment", ACCEPTED.values(), ids=ACCEPTED.keys())
    def test_accepted_and_kept_exactly(self, ctx, family, fragment):
        response = family.send(ctx, fragment)
        assert response.status_code == 201, response.text
        expected = json.loads(fragment)
        if family.name == "ToBinding" and not isinstance(expected, str):
            expected = "token"  # sent beside the address
        assert family.echoed(ctx, response) == expected

    def test_nul_in_a_to_binding_address_is_refused(self, ctx):
        # On PostgreSQL this reached the text column and failed there with a 500.
        before = stored(ctx.engine)
        response = ctx.client.post(
            notifications_path(ctx.service_sid),
            data={"ToBinding": '{"binding_type": "apn", "address": "tok\\u0000en"}'},
            auth=ctx.account.auth,
        )
        assert_invalid(response, "ToBinding", NUL)
        assert stored(ctx.engine) == before

    def test_every_to_binding_value_is_read_strictly(self, ctx):
        good = json.dumps({"binding_type": "apn", "address": "a"})
        bad = '{"binding_type": "apn", "address": "b", "x": NaN}'
        response = ctx.client.post(
            notifications_path(ctx.service_sid),
            data={"ToBinding": [good, good.replace('"a"', '"c"'), bad]},
            auth=ctx.account.auth,
        )
        assert_invalid(response, "ToBinding", NON_NUMBER)
        assert stored(ctx.engine) == (0, 0, 0)

    def test_nan_is_no_longer_stored_as_null(self, ctx):
        response = ctx.client.post(
            notifications_path(ctx.service_sid),
            data={"Tag": "all", "Data": '{"a": NaN, "b": Infinity, "c": 1e999999}'},
            auth=ctx.account.auth,
        )
        assert_invalid(response, "Data", NON_NUMBER)
        assert stored(ctx.engine) == (0, 0, 0)

    def test_service_account_on_update(self, ctx):
        sid = make_credential(ctx.client, ctx.account, Type="fcm")["sid"]
        response = ctx.client.post(
            f"/v1/Credentials/{sid}",
            data={"ServiceAccount": nested_list(5_000)},
            auth=ctx.account.auth,
        )
        assert_invalid(response, "ServiceAccount", DEPTH)

    def test_invalid_json_still_names_the_parameter(self, ctx):
        for family in FAMILIES:
            response = family.send(ctx, "{oops")
            reason = assert_invalid(response, family.name)
            if family.name != "ToBinding":
                assert reason.startswith("is not valid JSON ("), reason

    def test_a_whole_one_kilobyte_data_round_trips(self, ctx):
        data = {
            "order": "A-102938475",
            "items": [{"sku": f"SKU-{i}", "qty": i, "price": 19.99 + i} for i in range(8)],
            "customer": {"id": 2**53 + 1, "locale": "fr-FR", "opt_in": True, "note": None},
            "message": "Votre commande a été expédiée — suivez-la 📦",
        }
        response = ctx.client.post(
            notifications_path(ctx.service_sid),
            data={"Tag": "all", "Data": json.dumps(data, ensure_ascii=False)},
            auth=ctx.account.auth,
        )
        assert response.status_code == 201, response.text
        assert response.json()["data"] == data


def multipart(fields: list[tuple[bytes, bytes]], boundary: bytes = b"crafted-b0undary") -> dict:
    """A multipart body built by hand, so that any byte can go into a field."""
    body = (
        b"".join(
            b"--"
            + boundary
            + b"\r\nContent-Disposition: form-data; "
            + disposition
            + b"\r\n\r\n"
            + value
            + b"\r\n"
            for disposition, value in fields
        )
        + b"--"
        + boundary
        + b"--\r\n"
    )
    return {
        "content": body,
        "headers": {"content-type": "multipart/form-data; boundary=" + boundary.decode()},
    }


class TestMultipart:
    @pytest.mark.parametrize(
        "value", [b"caf\xe9", b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80"], ids=repr
    )
    def test_non_utf8_field_is_refused_by_name(self, client, engine, account, service_sid, value):
        response = client.post(
            notifications_path(service_sid),
            auth=account.auth,
            **multipart([(b'name="Tag"', b"all"), (b'name="Body"', value)]),
        )
        assert_invalid(response, "Body", NOT_UTF8)
        assert stored(engine) == (0, 0, 0)

    def test_non_utf8_json_parameter(self, client, engine, account, service_sid):
        response = client.post(
            notifications_path(service_sid),
            auth=account.auth,
            **multipart([(b'name="Tag"', b"all"), (b'name="Data"', b'{"a": "\xe9"}')]),
        )
        assert_invalid(response, "Data", NOT_UTF8)
        assert stored(engine) == (0, 0, 0)

    def test_non_utf8_credential_field(self, client, engine, account):
        response = client.post(
            "/v1/Credentials",
            auth=account.auth,
            **multipart([(b'name="Type"', b"apn"), (b'name="FriendlyName"', b"\xe9t\xe9")]),
        )
        assert_invalid(response, "FriendlyName", NOT_UTF8)
        assert stored(engine) == (0, 0, 0)

    def test_non_utf8_field_name(self, client, engine, account, service_sid):
        response = client.post(
            notifications_path(service_sid),
            auth=account.auth,
            **multipart([(b'name="Tag"', b"all"), (b'name="B\xf6dy"', b"x")]),
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(
            400, 20001, "The request's parameters are not valid UTF-8"
        )
        assert stored(engine) == (0, 0, 0)

    def test_valid_multipart_works_and_files_are_ignored(self, client, account, service_sid):
        body = "Grüße ✓ 中文 📦😀"
        response = client.post(
            notifications_path(service_sid),
            auth=account.auth,
            **multipart(
                [
                    (b'name="Tag"', b"all"),
                    (b'name="Body"', body.encode()),
                    (b'name="Data"', json.dumps({"e": "😀"}, ensure_ascii=False).encode()),
                    # An upload is not a parameter: its bytes need not be text.
                    (b'name="Title"; filename="t.bin"', b"\xff\xfe\x00binary"),
                ]
            ),
        )
        assert response.status_code == 201, response.text
        assert response.json()["body"] == body
        assert response.json()["data"] == {"e": "😀"}
        assert response.json()["title"] is None

    def test_repeated_fields_keep_their_order(self, client, account, service_sid):
        response = client.post(
            notifications_path(service_sid),
            auth=account.auth,
            **multipart([(b'name="Tag"', b"b"), (b'name="Tag"', b"a")]),
        )
        assert response.status_code == 201, response.text
        assert response.json()["tags"] == ["b", "a"]

    @pytest.mark.parametrize(
        ("content", "content_type", "message"),
        [
            (b"--x\r\n", "multipart/form-data", "The request's multipart body has no boundary"),
            (
                b"--b\r\ngarbage",
                "multipart/form-data; boundary=b",
                "The request's multipart body is malformed",
            ),
            (
                b'--b\r\nContent-Disposition: form-data; name="Tag"\r\n\r\nall',
                "multipart/form-data; boundary=b",
                "The request's multipart body is malformed",
            ),
            (
                b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
                "multipart/form-data; boundary=b",
                "A part of the request's multipart body has no name",
            ),
        ],
        ids=["no boundary", "garbage", "cut short", "no name"],
    )
    def test_malformed_multipart(
        self, client, account, service_sid, content, content_type, message
    ):
        response = client.post(
            notifications_path(service_sid),
            content=content,
            headers={"content-type": content_type},
            auth=account.auth,
        )
        assert response.status_code == 400
        assert response.json() == twilio_error(400, 20001, message)


def upper(sid: str) -> str:
    return sid[:2] + sid[2:].upper()


class TestUpperCaseSids:
    def test_service_in_the_path(self, client, account, service_sid):
        response = client.get(f"/v1/Services/{upper(service_sid)}", auth=account.auth)
        assert response.status_code == 200, response.text
        assert response.json()["sid"] == service_sid

    def test_notification_to_an_upper_case_service(self, client, engine, account, service_sid):
        response = client.post(
            notifications_path(upper(service_sid)),
            data={"ToBinding": json.dumps({"binding_type": "apn", "address": "tok"})},
            auth=account.auth,
        )
        assert response.status_code == 201, response.text
        notification = response.json()
        assert notification["service_sid"] == service_sid
        # And its deliveries, with both SIDs upper-cased.
        response = client.get(
            f"{notifications_path(upper(service_sid))}/{upper(notification['sid'])}/Deliveries",
            auth=account.auth,
        )
        assert response.status_code == 200, response.text
        assert [row["address"] for row in response.json()["deliveries"]] == ["tok"]
        assert response.json()["meta"]["url"].startswith(
            f"http://testserver{notifications_path(service_sid)}/{notification['sid']}/"
        )

    def test_binding_in_the_path(self, client, account, service_sid):
        binding = make_binding(client, account, service_sid)
        path = f"/v1/Services/{upper(service_sid)}/Bindings/{upper(binding['sid'])}"
        response = client.get(path, auth=account.auth)
        assert response.status_code == 200, response.text
        assert response.json() == binding
        assert client.delete(path, auth=account.auth).status_code == 204
        assert client.get(path, auth=account.auth).status_code == 404

    def test_credential_in_the_path(self, client, account):
        credential = make_credential(client, account, FriendlyName="c")
        path = f"/v1/Credentials/{upper(credential['sid'])}"
        response = client.post(path, data={"FriendlyName": "d"}, auth=account.auth)
        assert response.status_code == 200, response.text
        assert response.json()["sid"] == credential["sid"]
        assert response.json()["friendly_name"] == "d"

    def test_credential_sid_of_a_binding(self, client, account, service_sid):
        credential = make_credential(client, account)
        binding = make_binding(client, account, service_sid, CredentialSid=upper(credential["sid"]))
        assert binding["credential_sid"] == credential["sid"]

    @pytest.mark.parametrize(
        ("name", "field"),
        [
            ("ApnCredentialSid", "apn_credential_sid"),
            ("GcmCredentialSid", "gcm_credential_sid"),
            ("FcmCredentialSid", "fcm_credential_sid"),
        ],
    )
    def test_credential_sids_of_a_service(self, client, account, service_sid, name, field):
        credential = make_credential(client, account)
        created = make_service(client, account, **{name: upper(credential["sid"])})
        assert created[field] == credential["sid"]
        response = client.post(
            f"/v1/Services/{service_sid}", data={name: upper(credential["sid"])}, auth=account.auth
        )
        assert response.status_code == 200, response.text
        assert response.json()[field] == credential["sid"]

    def test_unknown_upper_case_sid_is_404_naming_the_path_as_sent(self, client, account):
        sid = "IS" + "ABCDEF" + "0" * 26
        response = client.get(f"/v1/Services/{sid}", auth=account.auth)
        assert response.status_code == 404
        assert response.json() == not_found(f"/Services/{sid}")

    def test_the_prefix_stays_case_sensitive(self, client, account, service_sid):
        response = client.get(f"/v1/Services/is{service_sid[2:]}", auth=account.auth)
        assert response.status_code == 404
        # The form rule is the same.
        response = client.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={
                "Identity": "a",
                "BindingType": "apn",
                "Address": "x",
                "CredentialSid": "cr" + "0" * 32,
            },
            auth=account.auth,
        )
        assert_invalid(response, "CredentialSid")

    def test_basic_auth_sid_is_compared_exactly(self, client, account):
        response = client.get("/v1/Services", auth=(upper(account.sid), account.auth_token))
        assert response.status_code == 401
