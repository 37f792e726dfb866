"""Accounts and API keys: created from the command line, used by HTTP Basic auth."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection

from notify_server.accounts import repository
from notify_server.crypto import SecretBox
from notify_server.wire import is_sid, new_sid, utcnow


class UnknownAccount(Exception):
    pass


class InvalidAccountSid(ValueError):
    pass


@dataclass(frozen=True)
class NewAccount:
    sid: str
    auth_token: str


@dataclass(frozen=True)
class NewApiKey:
    sid: str
    secret: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _sealed(box: SecretBox | None, auth_token: str) -> str | None:
    # Kept encrypted (besides the hash) because delivery callbacks are signed with it.
    return box.seal({"auth_token": auth_token}) if box is not None else None


def create_account(
    conn: Connection, box: SecretBox | None, friendly_name: str | None = None
) -> NewAccount:
    account = NewAccount(sid=new_sid("AC"), auth_token=secrets.token_hex(16))
    repository.insert_account(
        conn,
        sid=account.sid,
        friendly_name=friendly_name,
        token_hash=hash_secret(account.auth_token),
        token_sealed=_sealed(box, account.auth_token),
        now=utcnow(),
    )
    return account


def ensure_account(conn: Connection, box: SecretBox | None, sid: str, auth_token: str) -> None:
    """The account named in configuration exists and answers to this token."""
    if not is_sid(sid, "AC"):
        raise InvalidAccountSid(f"NOTIFY_ACCOUNT_SID must match ^AC[0-9a-fA-F]{{32}}$: {sid!r}")
    token_hash = hash_secret(auth_token)
    current = repository.account_token_hash(conn, sid)
    if current is None:
        repository.insert_account(
            conn,
            sid=sid,
            friendly_name=None,
            token_hash=token_hash,
            token_sealed=_sealed(box, auth_token),
            now=utcnow(),
        )
    elif current != token_hash or repository.account_token_sealed(conn, sid) is None:
        repository.set_account_token(conn, sid, token_hash, _sealed(box, auth_token), utcnow())


def create_api_key(
    conn: Connection, account_sid: str, friendly_name: str | None = None
) -> NewApiKey:
    if not repository.account_exists(conn, account_sid):
        raise UnknownAccount(account_sid)
    key = NewApiKey(sid=new_sid("SK"), secret=secrets.token_hex(16))
    repository.insert_api_key(
        conn,
        sid=key.sid,
        account_sid=account_sid,
        friendly_name=friendly_name,
        secret_hash=hash_secret(key.secret),
        now=utcnow(),
    )
    return key


def verify_credentials(conn: Connection, username: str, password: str) -> str | None:
    """The account SID these Basic credentials belong to, or None."""
    if is_sid(username, "AC"):
        account_sid: str | None = username
        stored = repository.account_token_hash(conn, username)
    elif is_sid(username, "SK"):
        found = repository.api_key_secret_hash(conn, username)
        account_sid, stored = found if found else (None, None)
    else:
        return None
    # Compare in constant time, and hash even when the user is unknown.
    matches = hmac.compare_digest(hash_secret(password), stored or "0" * 64)
    return account_sid if matches and stored is not None else None


def credential_stamp(conn: Connection, username: str) -> str | None:
    """A digest of the stored hash of an account's token or an API key's secret: a console
    session remembers it, so a rotated token or a deleted key ends the sessions it opened.
    None: no such account or key."""
    if is_sid(username, "AC"):
        stored = repository.account_token_hash(conn, username)
    elif is_sid(username, "SK"):
        found = repository.api_key_secret_hash(conn, username)
        stored = found[1] if found else None
    else:
        return None
    return None if stored is None else hashlib.sha256(stored.encode()).hexdigest()[:32]
