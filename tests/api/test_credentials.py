"""Credentials over HTTP: write-only secrets, sealed at rest, account-scoped."""

import json
import re
from datetime import datetime

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from sqlalchemy import select

from notify_server.db import transaction
from notify_server.models import Credential
from tests.errors import assert_error, assert_invalid, assert_not_found, assert_recent
from tests.factories import make_binding, make_credential, make_service

CREDENTIAL_SID = re.compile(r"CR[0-9a-f]{32}")
UNKNOWN_CR = "CR" + "0" * 32
OLD = datetime(2020, 1, 2, 3, 4, 5)
OLD_WIRE = "2020-01-02T03:04:05Z"
RESOURCE_KEYS = {
    "sid",
    "account_sid",
    "friendly_name",
    "type",
    "sandbox",
    "date_created",
    "date_updated",
    "url",
}
# Distinctive enough that finding one in a response body can only mean a leak.
CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIcertificate+Zq7/secret==\n-----END CERTIFICATE-----"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIprivate+Kq9/secret==\n-----END RSA PRIVATE KEY-----"
)
API_KEY = "AIzaSy-gcm-api-key-7d1f0e"
SECRET = "fcm-server-secret-9c2b4a"
ALL_SECRETS = (CERTIFICATE, PRIVATE_KEY, API_KEY, SECRET)


def _pkcs8(der_base64: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{der_base64}\n-----END PRIVATE KEY-----\n"


def _pem(key: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# TokenKeys APNs could never sign with. The PKCS#8 ones are well-formed keys OpenSSL does not
# support: loading them raises UnsupportedAlgorithm or InternalError, which were 500s.
UNUSABLE_TOKEN_KEYS = {
    "not-pem": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----",
    "unknown-key-type": _pkcs8("MC4CAQAwBQYDKgMEBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    "gost": _pkcs8("MDICAQAwCQYHKoUDAgITAQQiBCAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="),
    "unknown-curve": _pkcs8(
        "MD8CAQAwEQYHKoZIzj0CAQYGK4EEAAoABCcwJQIBAQQgAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    ),
    "ed448-of-the-wrong-length": _pkcs8("MBMCAQAwBQYDK2VxBAcEBQAAAAAA"),
    "x25519": _pem(x25519.X25519PrivateKey.generate()),
    "secp256k1": _pem(ec.generate_private_key(ec.SECP256K1())),
    "p384": _pem(ec.generate_private_key(ec.SECP384R1())),
}
TOKEN_KEY_REASON = "must be the PEM text of an APNs .p8 key (ES256, curve P-256)"
MALFORMED_CR = ["CRzz", "CR" + "0" * 31, "CR" + "0" * 33, "XR" + "0" * 32, "CR" + "g" * 32]


def assert_no_secret(response) -> None:
    text = response.text
    for secret in ALL_SECRETS:
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text  # nor JSON-escaped
    # The distinctive middles too, should a secret be reformatted.
    for fragment in ("MIIcertificate", "MIIprivate", "gcm-api-key", "fcm-server-secret"):
        assert fragment not in text


def stored_row(engine, sid: str):
    credentials = Credential.__table__
    with engine.connect() as conn:
        return conn.execute(select(credentials).where(credentials.c.sid == sid)).one()


def stored_secrets(engine, secret_key: str, sid: str) -> dict | None:
    sealed = stored_row(engine, sid).encrypted_secrets
    if sealed is None:
        return None
    for secret in ALL_SECRETS:
        assert secret not in sealed
    return json.loads(Fernet(secret_key.encode()).decrypt(sealed.encode()))


def backdate(engine, sid: str) -> None:
    credentials = Credential.__table__
    with transaction(engine, write=True) as conn:
        conn.execute(
            credentials.update()
            .where(credentials.c.sid == sid)
            .values(date_created=OLD, date_updated=OLD)
        )


def expected(sid: str, account_sid: str, date: str, **fields) -> dict:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "friendly_name": None,
        "type": "apn",
        "sandbox": "False",
        "date_created": date,
        "date_updated": date,
        "url": f"http://testserver/v1/Credentials/{sid}",
        **fields,
    }


class TestCreateCredential:
    def test_apn_with_every_field(self, client, account, engine, secret_key):
        response = client.post(
            "/v1/Credentials",
            data={
                "Type": "apn",
                "FriendlyName": "iOS prod",
                "Certificate": CERTIFICATE,
                "PrivateKey": PRIVATE_KEY,
                "Sandbox": "true",
            },
            auth=account.auth,
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert CREDENTIAL_SID.fullmatch(body["sid"])
        assert_recent(body["date_created"])
        assert body == expected(
            body["sid"],
            account.sid,
            body["date_created"],
            friendly_name="iOS prod",
            sandbox="True",
        )
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, body["sid"]) == {
            "certificate": CERTIFICATE,
            "private_key": PRIVATE_KEY,
        }

    def test_apn_token_auth_takes_a_p256_key(self, client, account, engine, secret_key):
        token_key = _pem(ec.generate_private_key(ec.SECP256R1()))
        form = {"Type": "apn", "TokenKey": token_key, "KeyId": "ABC123DEFG", "TeamId": "T1"}
        response = client.post("/v1/Credentials", data=form, auth=account.auth)
        assert response.status_code == 201, response.text
        assert stored_secrets(engine, secret_key, response.json()["sid"])["token_key"] == token_key

    @pytest.mark.parametrize("token_key", UNUSABLE_TOKEN_KEYS.values(), ids=UNUSABLE_TOKEN_KEYS)
    def test_apn_token_key_apns_cannot_sign_with_is_400(self, client, account, token_key):
        form = {"Type": "apn", "TokenKey": token_key, "KeyId": "ABC123DEFG", "TeamId": "T1"}
        response = client.post("/v1/Credentials", data=form, auth=account.auth)
        assert_invalid(response, "TokenKey", TOKEN_KEY_REASON)
        assert client.get("/v1/Credentials", auth=account.auth).json()["credentials"] == []

    def test_gcm_stores_its_api_key(self, client, account, engine, secret_key):
        response = client.post(
            "/v1/Credentials",
            data={"Type": "gcm", "FriendlyName": "android", "ApiKey": API_KEY},
            auth=account.auth,
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == expected(
            body["sid"],
            account.sid,
            body["date_created"],
            type="gcm",
            friendly_name="android",
            sandbox=None,
        )
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, body["sid"]) == {"api_key": API_KEY}

    def test_fcm_stores_its_secret(self, client, account, engine, secret_key):
        response = client.post(
            "/v1/Credentials", data={"Type": "fcm", "Secret": SECRET}, auth=account.auth
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body == expected(
            body["sid"], account.sid, body["date_created"], type="fcm", sandbox=None
        )
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, body["sid"]) == {"secret": SECRET}

    def test_every_secret_at_once_is_sealed_and_never_echoed(
        self, client, account, engine, secret_key
    ):
        response = client.post(
            "/v1/Credentials",
            data={
                "Type": "apn",
                "Certificate": CERTIFICATE,
                "PrivateKey": PRIVATE_KEY,
                "ApiKey": API_KEY,
                "Secret": SECRET,
            },
            auth=account.auth,
        )

        assert response.status_code == 201, response.text
        assert set(response.json()) == RESOURCE_KEYS
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, response.json()["sid"]) == {
            "certificate": CERTIFICATE,
            "private_key": PRIVATE_KEY,
            "api_key": API_KEY,
            "secret": SECRET,
        }

    def test_without_secrets_stores_none(self, client, account, engine, secret_key):
        body = make_credential(client, account)

        assert body == expected(body["sid"], account.sid, body["date_created"])
        assert stored_secrets(engine, secret_key, body["sid"]) is None

    def test_empty_secrets_count_as_not_given(self, client, account, engine, secret_key):
        response = client.post(
            "/v1/Credentials",
            data={"Type": "apn", "Certificate": "", "PrivateKey": "", "ApiKey": "", "Secret": ""},
            auth=account.auth,
        )

        assert response.status_code == 201, response.text
        assert stored_secrets(engine, secret_key, response.json()["sid"]) is None

    @pytest.mark.parametrize(
        ("credential_type", "sandbox", "shown"),
        [
            ("apn", None, "False"),
            ("apn", "true", "True"),
            ("apn", "TRUE", "True"),
            ("apn", "false", "False"),
            ("apn", "False", "False"),
            ("gcm", None, None),
            ("gcm", "true", None),
            ("fcm", None, None),
            ("fcm", "true", None),
            ("fcm", "false", None),
        ],
    )
    def test_sandbox(self, client, account, credential_type, sandbox, shown):
        data = {"Type": credential_type}
        if sandbox is not None:
            data["Sandbox"] = sandbox

        response = client.post("/v1/Credentials", data=data, auth=account.auth)

        assert response.status_code == 201, response.text
        assert response.json()["sandbox"] == shown

    def test_friendly_name_of_64_characters(self, client, account):
        assert make_credential(client, account, FriendlyName="ü" * 64)["friendly_name"] == "ü" * 64

    def test_missing_type_is_400(self, client, account):
        response = client.post("/v1/Credentials", data={"FriendlyName": "x"}, auth=account.auth)

        assert_error(response, 400, 20001, "Missing required parameter Type in the post body")
        assert client.get("/v1/Credentials", auth=account.auth).json()["credentials"] == []

    @pytest.mark.parametrize("credential_type", ["APN", "voip", "", "apn ", "sms"])
    def test_bad_type_is_400(self, client, account, credential_type):
        response = client.post("/v1/Credentials", data={"Type": credential_type}, auth=account.auth)

        assert_invalid(response, "Type")
        assert client.get("/v1/Credentials", auth=account.auth).json()["credentials"] == []

    @pytest.mark.parametrize(
        ("form", "name", "message"),
        [
            ({"FriendlyName": "x" * 65}, "FriendlyName", None),
            ({"Sandbox": "yes"}, "Sandbox", "must be true or false"),
            ({"Sandbox": "1"}, "Sandbox", "must be true or false"),
            ({"Certificate": "x" * 65537}, "Certificate", None),
        ],
    )
    def test_bad_field_is_400(self, client, account, form, name, message):
        response = client.post("/v1/Credentials", data={"Type": "apn", **form}, auth=account.auth)

        assert_invalid(response, name, message)
        assert client.get("/v1/Credentials", auth=account.auth).json()["credentials"] == []


class TestListCredentials:
    def test_empty(self, client, account):
        response = client.get("/v1/Credentials", auth=account.auth)

        assert response.status_code == 200
        assert response.json() == {
            "credentials": [],
            "meta": {
                "page": 0,
                "page_size": 50,
                "first_page_url": "http://testserver/v1/Credentials?PageSize=50&Page=0",
                "previous_page_url": None,
                "url": "http://testserver/v1/Credentials?PageSize=50&Page=0",
                "next_page_url": None,
                "key": "credentials",
            },
        }

    def test_pages_through_own_credentials_without_secrets(self, client, account, other_account):
        created = [
            make_credential(
                client,
                account,
                Type=("apn", "gcm", "fcm")[i % 3],
                Certificate=CERTIFICATE,
                PrivateKey=PRIVATE_KEY,
                ApiKey=API_KEY,
                Secret=SECRET,
            )
            for i in range(5)
        ]
        make_credential(client, other_account)

        seen: list[dict] = []
        url = "/v1/Credentials?PageSize=2"
        pages = []
        while url:
            response = client.get(url, auth=account.auth)
            assert response.status_code == 200
            assert_no_secret(response)
            body = response.json()
            pages.append(body["meta"])
            seen += body["credentials"]
            url = body["meta"]["next_page_url"]

        assert seen == created
        assert [m["page"] for m in pages] == [0, 1, 2]
        assert pages[0]["previous_page_url"] is None
        assert pages[1]["next_page_url"].startswith(
            "http://testserver/v1/Credentials?PageSize=2&Page=2&PageToken="
        )
        back = client.get(pages[2]["previous_page_url"], auth=account.auth).json()
        assert back["credentials"] == created[2:4]

    @pytest.mark.parametrize("query", ["PageSize=0", "PageSize=1001", "Page=-1", "PageSize=x"])
    def test_bad_paging_is_400(self, client, account, query):
        response = client.get(f"/v1/Credentials?{query}", auth=account.auth)
        assert response.status_code == 400
        assert response.json()["code"] == 20001

    def test_bad_page_token_is_400(self, client, account):
        response = client.get("/v1/Credentials?PageToken=CR123", auth=account.auth)
        assert_error(response, 400, 20001, "Parameter 'PageToken' is invalid")


class TestFetchCredential:
    def test_returns_it_without_secrets(self, client, account):
        created = make_credential(
            client, account, FriendlyName="f", Certificate=CERTIFICATE, PrivateKey=PRIVATE_KEY
        )

        response = client.get(f"/v1/Credentials/{created['sid']}", auth=account.auth)

        assert response.status_code == 200
        assert response.json() == created
        assert_no_secret(response)

    def test_unknown_is_404(self, client, account):
        response = client.get(f"/v1/Credentials/{UNKNOWN_CR}", auth=account.auth)
        assert_not_found(response, f"/Credentials/{UNKNOWN_CR}")

    def test_another_accounts_is_404(self, client, account, other_account):
        theirs = make_credential(client, other_account)

        response = client.get(f"/v1/Credentials/{theirs['sid']}", auth=account.auth)

        assert_not_found(response, f"/Credentials/{theirs['sid']}")

    @pytest.mark.parametrize("sid", MALFORMED_CR)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.get(f"/v1/Credentials/{sid}")
        assert_not_found(response, f"/Credentials/{sid}")


class TestUpdateCredential:
    def test_changes_friendly_name_and_keeps_secrets(self, client, account, engine, secret_key):
        created = make_credential(
            client, account, Certificate=CERTIFICATE, PrivateKey=PRIVATE_KEY, Sandbox="true"
        )
        backdate(engine, created["sid"])

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"FriendlyName": "new"}, auth=account.auth
        )

        assert response.status_code == 200, response.text
        body = response.json()
        assert_recent(body["date_updated"])
        assert body == {
            **created,
            "friendly_name": "new",
            "date_created": OLD_WIRE,
            "date_updated": body["date_updated"],
        }
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, created["sid"]) == {
            "certificate": CERTIFICATE,
            "private_key": PRIVATE_KEY,
        }

    def test_merges_secrets(self, client, account, engine, secret_key):
        created = make_credential(client, account, Certificate=CERTIFICATE, PrivateKey="old key")

        response = client.post(
            f"/v1/Credentials/{created['sid']}",
            data={"PrivateKey": PRIVATE_KEY},
            auth=account.auth,
        )

        assert response.status_code == 200, response.text
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, created["sid"]) == {
            "certificate": CERTIFICATE,
            "private_key": PRIVATE_KEY,
        }

    @pytest.mark.parametrize(
        "token_key", [UNUSABLE_TOKEN_KEYS["unknown-key-type"], UNUSABLE_TOKEN_KEYS["x25519"]]
    )
    def test_a_token_key_apns_cannot_sign_with_is_400_and_changes_nothing(
        self, client, account, engine, secret_key, token_key
    ):
        created = make_credential(client, account, Certificate=CERTIFICATE, PrivateKey="old key")

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"TokenKey": token_key}, auth=account.auth
        )

        assert_invalid(response, "TokenKey", TOKEN_KEY_REASON)
        assert stored_secrets(engine, secret_key, created["sid"]) == {
            "certificate": CERTIFICATE,
            "private_key": "old key",
        }

    def test_adds_secrets_to_a_credential_without_any(self, client, account, engine, secret_key):
        created = make_credential(client, account, Type="gcm")

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"ApiKey": API_KEY}, auth=account.auth
        )

        assert response.status_code == 200, response.text
        assert_no_secret(response)
        assert stored_secrets(engine, secret_key, created["sid"]) == {"api_key": API_KEY}

    def test_empty_secret_removes_only_that_secret(self, client, account, engine, secret_key):
        created = make_credential(client, account, Certificate=CERTIFICATE, PrivateKey=PRIVATE_KEY)

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"PrivateKey": ""}, auth=account.auth
        )

        assert response.status_code == 200, response.text
        assert stored_secrets(engine, secret_key, created["sid"]) == {"certificate": CERTIFICATE}

    @pytest.mark.parametrize(
        ("credential_type", "sandbox", "shown"),
        [
            ("apn", "true", "True"),
            ("apn", "TRUE", "True"),
            ("apn", "false", "False"),
            ("gcm", "true", None),
            ("fcm", "false", None),
        ],
    )
    def test_sandbox(self, client, account, credential_type, sandbox, shown):
        created = make_credential(client, account, Type=credential_type)

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"Sandbox": sandbox}, auth=account.auth
        )

        assert response.status_code == 200, response.text
        assert response.json()["sandbox"] == shown

    def test_sandbox_is_kept_when_not_given(self, client, account):
        created = make_credential(client, account, Sandbox="true")

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"FriendlyName": "x"}, auth=account.auth
        )

        assert response.json()["sandbox"] == "True"

    def test_type_cannot_change(self, client, account):
        created = make_credential(client, account, Type="apn")

        response = client.post(
            f"/v1/Credentials/{created['sid']}", data={"Type": "gcm"}, auth=account.auth
        )

        assert response.status_code == 200
        assert response.json()["type"] == "apn"
        assert response.json()["sandbox"] == "False"

    @pytest.mark.parametrize(
        ("form", "name"),
        [({"FriendlyName": "x" * 65}, "FriendlyName"), ({"Sandbox": "maybe"}, "Sandbox")],
    )
    def test_bad_field_is_400_and_changes_nothing(
        self, client, account, engine, secret_key, form, name
    ):
        created = make_credential(client, account, FriendlyName="before", Certificate=CERTIFICATE)

        response = client.post(
            f"/v1/Credentials/{created['sid']}",
            data={"Certificate": "replaced", **form},
            auth=account.auth,
        )

        assert_invalid(response, name)
        assert client.get(f"/v1/Credentials/{created['sid']}", auth=account.auth).json() == created
        assert stored_secrets(engine, secret_key, created["sid"]) == {"certificate": CERTIFICATE}

    def test_unknown_is_404(self, client, account):
        response = client.post(
            f"/v1/Credentials/{UNKNOWN_CR}", data={"FriendlyName": "x"}, auth=account.auth
        )
        assert_not_found(response, f"/Credentials/{UNKNOWN_CR}")

    def test_another_accounts_is_404_and_unchanged(
        self, client, account, other_account, engine, secret_key
    ):
        theirs = make_credential(client, other_account, FriendlyName="theirs", Secret=SECRET)

        response = client.post(
            f"/v1/Credentials/{theirs['sid']}",
            data={"FriendlyName": "mine", "Secret": "stolen"},
            auth=account.auth,
        )

        assert_not_found(response, f"/Credentials/{theirs['sid']}")
        fetched = client.get(f"/v1/Credentials/{theirs['sid']}", auth=other_account.auth)
        assert fetched.json() == theirs
        assert stored_secrets(engine, secret_key, theirs["sid"]) == {"secret": SECRET}

    @pytest.mark.parametrize("sid", MALFORMED_CR)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.post(f"/v1/Credentials/{sid}", data={"FriendlyName": "x"})
        assert_not_found(response, f"/Credentials/{sid}")


class TestDeleteCredential:
    def test_204_then_gone(self, client, account):
        created = make_credential(client, account)
        path = f"/v1/Credentials/{created['sid']}"

        response = client.delete(path, auth=account.auth)

        assert response.status_code == 204
        assert response.content == b""
        assert_not_found(client.get(path, auth=account.auth), f"/Credentials/{created['sid']}")
        assert_not_found(client.delete(path, auth=account.auth), f"/Credentials/{created['sid']}")
        assert client.get("/v1/Credentials", auth=account.auth).json()["credentials"] == []

    def test_clears_references_from_services_and_bindings(self, client, account):
        doomed = make_credential(client, account, Type="fcm")
        kept = make_credential(client, account, Type="gcm")
        service = make_service(
            client,
            account,
            ApnCredentialSid=doomed["sid"],
            GcmCredentialSid=kept["sid"],
            FcmCredentialSid=doomed["sid"],
        )
        other_service = make_service(client, account, GcmCredentialSid=kept["sid"])
        bound = make_binding(client, account, service["sid"], CredentialSid=doomed["sid"])
        kept_binding = make_binding(
            client, account, service["sid"], Identity="bob", CredentialSid=kept["sid"]
        )

        response = client.delete(f"/v1/Credentials/{doomed['sid']}", auth=account.auth)

        assert response.status_code == 204
        fetched = client.get(f"/v1/Services/{service['sid']}", auth=account.auth).json()
        assert fetched["apn_credential_sid"] is None
        assert fetched["fcm_credential_sid"] is None
        assert fetched["gcm_credential_sid"] == kept["sid"]
        assert fetched == {
            **service,
            "apn_credential_sid": None,
            "fcm_credential_sid": None,
            "date_updated": fetched["date_updated"],
        }
        other = client.get(f"/v1/Services/{other_service['sid']}", auth=account.auth)
        assert other.json() == other_service
        binding_path = f"/v1/Services/{service['sid']}/Bindings"
        fetched_binding = client.get(f"{binding_path}/{bound['sid']}", auth=account.auth).json()
        assert fetched_binding == {
            **bound,
            "credential_sid": None,
            "date_updated": fetched_binding["date_updated"],
        }
        untouched = client.get(f"{binding_path}/{kept_binding['sid']}", auth=account.auth)
        assert untouched.json() == kept_binding

    def test_deleted_credential_can_no_longer_be_named(self, client, account):
        doomed = make_credential(client, account)
        service = make_service(client, account, ApnCredentialSid=doomed["sid"])
        client.delete(f"/v1/Credentials/{doomed['sid']}", auth=account.auth)

        stale = client.post(
            f"/v1/Services/{service['sid']}",
            data={"ApnCredentialSid": doomed["sid"]},
            auth=account.auth,
        )

        assert_invalid(stale, "ApnCredentialSid", f"Credential {doomed['sid']} was not found")

    def test_unknown_is_404(self, client, account):
        response = client.delete(f"/v1/Credentials/{UNKNOWN_CR}", auth=account.auth)
        assert_not_found(response, f"/Credentials/{UNKNOWN_CR}")

    def test_another_accounts_is_404_and_kept(self, client, account, other_account):
        theirs = make_credential(client, other_account)
        their_service = make_service(client, other_account, ApnCredentialSid=theirs["sid"])

        response = client.delete(f"/v1/Credentials/{theirs['sid']}", auth=account.auth)

        assert_not_found(response, f"/Credentials/{theirs['sid']}")
        assert client.get(f"/v1/Credentials/{theirs['sid']}", auth=other_account.auth).json() == (
            theirs
        )
        service = client.get(f"/v1/Services/{their_service['sid']}", auth=other_account.auth)
        assert service.json()["apn_credential_sid"] == theirs["sid"]

    @pytest.mark.parametrize("sid", MALFORMED_CR)
    def test_malformed_sid_is_404_even_without_credentials(self, client, sid):
        response = client.delete(f"/v1/Credentials/{sid}")
        assert_not_found(response, f"/Credentials/{sid}")
